//! The fit stage of a SplitFed round (`[training] mode = "splitfed"`).
//!
//! Each selected hospital gets the global bottom part and a seat holding
//! a copy of the global top part ([`crate::split::SplitSeats`]). It trains
//! its bottom part batch by batch against its seat over `SplitExchange`,
//! then sends its bottom-part update as an ordinary signed FIT answer. Its
//! seat's top part, minus the global top part, completes the update: the
//! strategy sees full-length updates and averages bottoms and tops alike.
//!
//! A hospital whose exchange failed (bad batch, dropped stream) or that
//! sent no batch is left out of the round; the round is retried when too
//! few remain.
//!
//! U-shaped (`[training] u_shaped`): the hospital gets bottom ‖ head, the
//! seat holds the middle, and the hospital's update Δbottom ‖ Δhead is
//! completed with the seat's Δmiddle in between.

use std::collections::HashMap;
use std::sync::Arc;

use cohort_models::{SplitLayout, UShapedLayout};
use cohort_protocol::v1::{SplitTask, TaskHeader};

use super::{Fitted, RunError, Runner, weighted_loss};
use crate::job::JobSpec;
use crate::registry::{Expect, TaskAnswer, TaskBody};
use crate::split::ClosedSeat;
use crate::store::{Enrollment, JobRow};
use crate::strategy::ClientUpdate;

impl Runner {
    /// `None` when fewer than `min_clients` hospitals finished (the attempt
    /// is retried).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn splitfed_fit(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        enrollment: &Enrollment,
        fit: &TaskHeader,
        global: &Arc<Vec<f32>>,
        selected: &[String],
        (round, attempt): (u32, u32),
    ) -> Result<Option<Fitted>, RunError> {
        let t = &spec.training;
        let n_features = enrollment.preprocessing.n_features();
        let cut = Cut::new(&spec.model, n_features, t.u_shaped)
            .map_err(|e| RunError::Failed(format!("round {round}: {e}")))?;
        let (sent, top) = cut
            .split(global)
            .map_err(|e| RunError::Failed(format!("round {round}: {e}")))?;
        let sent = Arc::new(sent);
        let sent_sha256 = cohort_models::parameters_sha256(&sent);
        let mut tasks = Vec::with_capacity(selected.len());
        let mut exchanges = Vec::with_capacity(selected.len());
        for client in selected {
            let opened = match &cut {
                Cut::Plain(layout) => self.registry.split.open(
                    layout,
                    client,
                    &top,
                    &t.optimizer,
                    t.batch_size as usize,
                ),
                Cut::UShaped(layout) => self.registry.split.open_middle(
                    layout,
                    client,
                    &top,
                    &t.optimizer,
                    t.batch_size as usize,
                ),
            };
            let exchange_id =
                opened.map_err(|e| RunError::Failed(format!("round {round}: top part: {e}")))?;
            let header = TaskHeader {
                parameters_sha256: sent_sha256.clone(),
                split: Some(SplitTask {
                    exchange_id: exchange_id.clone(),
                    cut_width: cut.cut_width() as u32,
                    u_shaped: t.u_shaped,
                    head_width: cut.head_width() as u32,
                }),
                ..fit.clone()
            };
            tasks.push((client.clone(), header));
            exchanges.push((client.clone(), exchange_id));
        }
        let answers = self
            .gather_each(
                tasks,
                Some(TaskBody::parameters(&sent)),
                Expect::Update(sent.len() as u64),
                t.round_timeout_secs,
                |_, a| match a {
                    TaskAnswer::Fit {
                        delta,
                        num_examples,
                        train_loss,
                        compute_seconds,
                        receipt,
                        ..
                    } => Ok((delta, num_examples, train_loss, compute_seconds, receipt)),
                    _ => Err("answered a split fit task with something else".into()),
                },
            )
            .await;
        let mut seats: HashMap<String, ClosedSeat> = exchanges
            .into_iter()
            .filter_map(|(client, id)| self.registry.split.close(&id).map(|s| (client, s)))
            .collect();

        let mut failed = answers.failed;
        let mut ok = Vec::new();
        let (mut samples, mut bytes_in, mut bytes_out) = (0u64, 0u64, 0u64);
        for (client, (hospital_delta, num_examples, train_loss, seconds, receipt)) in answers.ok {
            let Some(seat) = seats.remove(&client) else {
                failed.push((client, "its split exchange was never opened".into()));
                continue;
            };
            let top_after = match seat.top {
                Ok(top_after) if seat.stats.batches > 0 => top_after,
                Ok(_) => {
                    failed.push((client, "sent an update without training a batch".into()));
                    continue;
                }
                Err(reason) => {
                    failed.push((client, format!("split exchange failed: {reason}")));
                    continue;
                }
            };
            samples += seat.stats.samples;
            bytes_in += seat.stats.bytes_in;
            bytes_out += seat.stats.bytes_out;
            let seat_delta: Vec<f32> = top_after.iter().zip(&top).map(|(a, b)| a - b).collect();
            let delta = cut.full_delta(&hospital_delta, &seat_delta);
            ok.push((client, delta, num_examples, train_loss, seconds, receipt));
        }
        self.note_failures(&job.id, &format!("round {round}"), &failed);
        if ok.len() < t.min_clients as usize {
            self.note(
                &job.id,
                format!(
                    "round {round} attempt {attempt}: {} of the required {} split updates; retrying",
                    ok.len(),
                    t.min_clients
                ),
            );
            return Ok(None);
        }
        // A job event for `job status` and the benchmark, not a warning.
        let exchanged = match cut {
            Cut::Plain(_) => format!(
                "round {round}: split exchange of {samples} samples, {bytes_in} bytes of \
                 activations and labels up, {bytes_out} bytes of gradients down"
            ),
            Cut::UShaped(_) => format!(
                "round {round}: U-shaped split exchange of {samples} samples, {bytes_in} bytes \
                 of activations and head gradients up (no labels), {bytes_out} bytes of middle \
                 activations and gradients down"
            ),
        };
        self.note_event(&job.id, exchanged);
        let total_examples = ok.iter().map(|(_, _, n, ..)| *n).sum();
        let train_loss = weighted_loss(ok.iter().map(|(_, _, n, l, ..)| (*n, *l)));
        let slowest_fit_secs = ok.iter().map(|(.., s, _)| *s).fold(0.0, f64::max);
        let participants = ok.iter().map(|(c, ..)| c.clone()).collect();
        let mut receipts = Vec::with_capacity(ok.len());
        let updates = ok
            .into_iter()
            .map(|(client, delta, num_examples, _, _, receipt)| {
                receipts.push(receipt);
                ClientUpdate {
                    client,
                    delta,
                    num_examples,
                }
            })
            .collect();
        Ok(Some(Fitted {
            participants,
            receipts,
            updates,
            total_examples,
            train_loss,
            slowest_fit_secs,
            aggregate_sha256: None,
            groups: Vec::new(),
            excluded: Vec::new(),
        }))
    }
}

/// Where a SplitFed round cuts the model: what the hospital gets and sends
/// back, and what its seat holds.
enum Cut {
    /// Bottom at the hospital, top (and the labels' loss) at the seat.
    Plain(SplitLayout),
    /// Bottom and head at the hospital, the middle at the seat.
    UShaped(UShapedLayout),
}

impl Cut {
    fn new(
        spec: &cohort_models::ModelSpec,
        n_features: usize,
        u_shaped: bool,
    ) -> Result<Self, cohort_models::ModelError> {
        Ok(if u_shaped {
            Cut::UShaped(UShapedLayout::new(spec, n_features)?)
        } else {
            Cut::Plain(SplitLayout::new(spec, n_features)?)
        })
    }

    fn cut_width(&self) -> usize {
        match self {
            Cut::Plain(l) => l.cut_width(),
            Cut::UShaped(l) => l.cut_width(),
        }
    }

    fn head_width(&self) -> usize {
        match self {
            Cut::Plain(_) => 0,
            Cut::UShaped(l) => l.head_width(),
        }
    }

    /// The hospital's parameters (bottom, or bottom ‖ head) and the seat's
    /// (top, or middle).
    fn split(&self, global: &[f32]) -> Result<(Vec<f32>, Vec<f32>), cohort_models::ModelError> {
        match self {
            Cut::Plain(l) => {
                let (bottom, top) = l.split(global)?;
                Ok((bottom.to_vec(), top.to_vec()))
            }
            Cut::UShaped(l) => {
                let (bottom, middle, head) = l.split(global)?;
                Ok(([bottom, head].concat(), middle.to_vec()))
            }
        }
    }

    /// The whole model's update from the hospital's and its seat's, in the
    /// flat order.
    fn full_delta(&self, hospital: &[f32], seat: &[f32]) -> Vec<f32> {
        match self {
            Cut::Plain(_) => [hospital, seat].concat(),
            Cut::UShaped(l) => {
                let (bottom, head) = hospital.split_at(l.bottom_len().min(hospital.len()));
                [bottom, seat, head].concat()
            }
        }
    }
}
