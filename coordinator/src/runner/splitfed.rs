//! The fit stage of a SplitFed round (`[training] mode = "splitfed"`).
//!
//! Each selected hospital gets the global bottom part and a seat holding
//! a copy of the global top part ([`crate::split::SplitSeats`]). It trains
//! its bottom part batch by batch against its seat over `SplitExchange`,
//! then sends its bottom-part update as an ordinary signed FIT answer. Its
//! seat's top part, minus the global top part, completes the update: the
//! strategy sees full-length updates and averages bottoms and tops alike.
//!
//! Under secure or homomorphic aggregation the hospitals' part updates
//! go through the round's SecAgg+ session or encrypted sum instead (each
//! FIT task of the session names the hospital's seat), so the coordinator
//! learns only their weighted mean; it averages the seats' parts of the
//! same hospitals with the same weights and joins the two means. What the
//! seats hold the coordinator trains itself, so it is no secret from it.
//! Under client-level DP each part is clipped to `clip/√2` and noised with
//! `σ·clip`: the hospitals add distributed noise to theirs, the
//! coordinator central noise to the seats' (`distributed::per_part`), one
//! Gaussian mechanism of multiplier `σ` together.
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

use super::proofs::UpdateProofKeys;
use super::{Fitted, RunError, Runner, weighted_loss};
use crate::job::{Aggregation, JobSpec};
use crate::registry::{Expect, TaskAnswer, TaskBody};
use crate::split::{ClosedSeat, SeatStats};
use crate::store::{Enrollment, JobRow};
use crate::strategy::{ClientUpdate, UpdateFold};

/// How many parameters a SplitFed hospital's update has: what its
/// update proofs are made for.
pub(super) fn hospital_part_len(spec: &JobSpec, n_features: usize) -> Result<usize, RunError> {
    Cut::new(&spec.model, n_features, spec.training.u_shaped)
        .map(|cut| cut.hospital_len())
        .map_err(|e| RunError::Failed(e.to_string()))
}

/// Each selected hospital's split exchange, by name, for its FIT task.
pub(super) type SplitTasks = HashMap<String, SplitTask>;

impl Runner {
    /// `None` when fewer than `min_clients` hospitals finished (the attempt
    /// is retried). Under secure aggregation every stage needs
    /// `min_clients` (a valuation group passes its size, so that its sum is
    /// exactly the group's).
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
        proof_keys: Option<&UpdateProofKeys>,
        min_clients: u32,
    ) -> Result<Option<Fitted>, RunError> {
        let t = &spec.training;
        let n_features = enrollment.preprocessing.n_features();
        let cut = Cut::new(&spec.model, n_features, t.u_shaped)
            .map_err(|e| RunError::Failed(format!("round {round}: {e}")))?;
        let (sent, top) = cut
            .split(global)
            .map_err(|e| RunError::Failed(format!("round {round}: {e}")))?;
        let sent = Arc::new(sent);
        let mut splits = SplitTasks::with_capacity(selected.len());
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
            splits.insert(
                client.clone(),
                SplitTask {
                    exchange_id: exchange_id.clone(),
                    cut_width: cut.cut_width() as u32,
                    u_shaped: t.u_shaped,
                    head_width: cut.head_width() as u32,
                },
            );
            exchanges.push((client.clone(), exchange_id));
        }
        let fit = TaskHeader {
            parameters_sha256: cohort_models::parameters_sha256(&sent),
            ..fit.clone()
        };
        let round_attempt = (round, attempt);
        let secured = match spec.privacy.aggregation {
            Aggregation::Plain => {
                return self
                    .plain_split_fit(
                        job,
                        spec,
                        &fit,
                        &sent,
                        &top,
                        &cut,
                        splits,
                        exchanges,
                        round_attempt,
                        proof_keys,
                    )
                    .await;
            }
            Aggregation::Secagg | Aggregation::He => {
                self.protected_fit(
                    job,
                    spec,
                    enrollment,
                    &fit,
                    &sent,
                    selected,
                    round_attempt,
                    min_clients,
                    &splits,
                    // SplitFed parts are proved in plain rounds only, so
                    // nobody is barred.
                    &mut Vec::new(),
                )
                .await
            }
        };
        // Every seat closes, whatever became of the attempt.
        let mut seats = self.close_seats(exchanges);
        let Some(mut fitted) = secured? else {
            return Ok(None);
        };
        // The hospitals' parts arrived as one mean; their seats' parts are
        // averaged here the same way: weighted by examples (a seat sees its
        // hospital's examples once an epoch), or under client-level DP
        // clipped, summed with noise and divided by their number.
        let dp = super::dp::encoded_noise(spec)?;
        let mut seat_updates = Vec::with_capacity(fitted.participants.len());
        let mut exchanged = SeatStats::default();
        let mut untrained = Vec::new();
        for client in &fitted.participants {
            match seats.remove(client) {
                Some(ClosedSeat {
                    top: Ok(after),
                    stats,
                    ..
                }) if stats.batches > 0 => {
                    exchanged.add(&stats);
                    seat_updates.push(ClientUpdate {
                        client: client.clone(),
                        delta: after.iter().zip(&top).map(|(a, b)| a - b).collect(),
                        num_examples: stats.samples,
                    });
                    continue;
                }
                Some(ClosedSeat {
                    top: Err(reason), ..
                }) => untrained.push((
                    client.clone(),
                    format!("its part is in the sum but its split exchange failed: {reason}"),
                )),
                _ => untrained.push((
                    client.clone(),
                    "its part is in the sum but its seat trained no batch".to_string(),
                )),
            }
            if dp.is_some() {
                // Counted like every hospital in the sum, with no change.
                seat_updates.push(ClientUpdate {
                    client: client.clone(),
                    delta: vec![0.0; top.len()],
                    num_examples: 0,
                });
            }
        }
        self.note_failures(&job.id, &format!("round {round}"), &untrained);
        if exchanged.samples == 0 {
            self.note(
                &job.id,
                format!(
                    "round {round} attempt {attempt}: no seat of the hospitals in the sum trained; retrying"
                ),
            );
            return Ok(None);
        }
        let top_mean = match dp {
            Some((clip, sigma)) => super::dp::noisy_mean(seat_updates, clip, sigma)?.delta,
            None => {
                let mut fold = UpdateFold::new(top.len());
                for u in &seat_updates {
                    fold.add(&u.client, &u.delta, u.num_examples)
                        .map_err(|e| RunError::Failed(format!("round {round}: {e}")))?;
                }
                fold.mean()
                    .map_err(|e| RunError::Failed(format!("round {round}: {e}")))?
            }
        };
        let Some(update) = fitted.updates.first_mut() else {
            return Err(RunError::Failed(format!(
                "round {round}: the {} sum of split parts is missing",
                spec.privacy.aggregation.as_str()
            )));
        };
        update.delta = cut.full_delta(&update.delta, &top_mean);
        let mut event = format!(
            "{}; the hospitals' parts summed under {}",
            cut.exchange_note(round, &exchanged),
            match spec.privacy.aggregation {
                Aggregation::He => "homomorphic aggregation",
                _ => "secure aggregation",
            }
        );
        if let Some((clip, sigma)) = dp {
            event.push_str(&format!(
                "; client-level DP: every part clipped to {clip:.4}, the seats' parts noised \
                 here with standard deviation {:.4}",
                clip * sigma
            ));
        }
        self.note_event(&job.id, event);
        Ok(Some(fitted))
    }

    /// Closes the round's seats, by hospital.
    fn close_seats(&self, exchanges: Vec<(String, String)>) -> HashMap<String, ClosedSeat> {
        exchanges
            .into_iter()
            .filter_map(|(client, id)| self.registry.split.close(&id).map(|s| (client, s)))
            .collect()
    }

    /// Plain aggregation: each hospital's part update arrives signed and is
    /// joined with its seat's into one full-length update.
    #[allow(clippy::too_many_arguments)]
    async fn plain_split_fit(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        fit: &TaskHeader,
        sent: &Arc<Vec<f32>>,
        top: &[f32],
        cut: &Cut,
        mut splits: SplitTasks,
        exchanges: Vec<(String, String)>,
        (round, attempt): (u32, u32),
        proof_keys: Option<&UpdateProofKeys>,
    ) -> Result<Option<Fitted>, RunError> {
        let t = &spec.training;
        let mut excluded = Vec::new();
        let tasks = exchanges
            .iter()
            .map(|(client, _)| {
                let header = TaskHeader {
                    split: splits.remove(client),
                    ..fit.clone()
                };
                (client.clone(), header)
            })
            .collect();
        let answers = self
            .gather_each(
                tasks,
                Some(TaskBody::parameters(sent)),
                Expect::Update(sent.len() as u64),
                t.round_timeout_secs,
                |client, a| match a {
                    TaskAnswer::Fit {
                        delta,
                        num_examples,
                        train_loss,
                        compute_seconds,
                        mut receipt,
                        proof,
                    } => {
                        if let Some(keys) = proof_keys {
                            let context = cohort_proofs::Context {
                                job_id: job.id.clone(),
                                round,
                                client: client.to_string(),
                            };
                            keys.admit(context, &delta, &proof, &mut receipt, &mut excluded)?;
                        }
                        Ok((delta, num_examples, train_loss, compute_seconds, receipt))
                    }
                    _ => Err("answered a split fit task with something else".into()),
                },
            )
            .await;
        let mut seats = self.close_seats(exchanges);

        let mut failed = answers.failed;
        let mut ok = Vec::new();
        let mut exchanged = SeatStats::default();
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
            exchanged.add(&seat.stats);
            let seat_delta: Vec<f32> = top_after.iter().zip(top).map(|(a, b)| a - b).collect();
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
        self.note_event(&job.id, cut.exchange_note(round, &exchanged));
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
            excluded,
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

    /// The job event of a round's exchanges.
    fn exchange_note(&self, round: u32, stats: &SeatStats) -> String {
        let SeatStats {
            samples,
            bytes_in,
            bytes_out,
            ..
        } = stats;
        match self {
            Cut::Plain(_) => format!(
                "round {round}: split exchange of {samples} samples, {bytes_in} bytes of \
                 activations and labels up, {bytes_out} bytes of gradients down"
            ),
            Cut::UShaped(_) => format!(
                "round {round}: U-shaped split exchange of {samples} samples, {bytes_in} bytes \
                 of activations and head gradients up (no labels), {bytes_out} bytes of middle \
                 activations and gradients down"
            ),
        }
    }

    /// Parameters the hospital trains and sends back (bottom, or bottom
    /// and head).
    fn hospital_len(&self) -> usize {
        match self {
            Cut::Plain(l) => l.bottom_len(),
            Cut::UShaped(l) => l.bottom_len() + l.head_len(),
        }
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
