//! Split learning at the coordinator: the job checks of `[training] mode =
//! "splitfed"` and the seats where hospitals' bottom parts meet the
//! coordinator's copies of the top part.
//!
//! A round of SplitFed v1 (Thapa et al. 2022) opens one seat per selected
//! hospital, holding a fresh copy of the global top part. The hospital's
//! FIT task names its seat; while it trains, the hospital streams each
//! batch's cut-layer activations and labels over `SplitExchange`, and the
//! seat takes one step of its top part and streams the gradient at the cut
//! back. When the hospital's bottom-part update arrives, the runner closes
//! the seat and joins the two parts into one full-length update, so every
//! strategy averages split rounds like any other. Under secure or
//! homomorphic aggregation the hospitals' parts are summed by that
//! protocol instead and only the mean is joined (`runner/splitfed.rs`).
//!
//! Batches are checked before they touch the top part (shape, finite values,
//! labels 0 or 1, order, size); a bad batch ends that hospital's exchange and
//! leaves it out of the round, nothing else.
//!
//! U-shaped (`[training] u_shaped = true`): the hospital keeps the last
//! layer (the head) and its labels too, and the seat holds the middle: a
//! batch arrives without labels (one with labels is refused), the seat
//! answers with the middle's activations, the hospital's head takes its
//! step and sends the gradient at its input, and the seat answers with the
//! gradient at the cut. Two round trips per batch; no label, and no loss,
//! ever reaches the coordinator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cohort_models::{MiddlePart, SplitLayout, TopPart, TopStep, UShapedLayout};
use cohort_protocol::v1::{SplitBatch, SplitDown, SplitHeadGradient, SplitUp, split_up};

use crate::job::{JobError, JobSpec};
use crate::lock;

/// Largest batch of activations one `SplitBatch` may carry, so a batch
/// always fits a gRPC message with room to spare.
pub const MAX_BATCH_BYTES: usize = cohort_protocol::MAX_CHUNK_BYTES;

/// Checks what SplitFed needs of a job file, naming the key at fault.
pub fn check_job(spec: &JobSpec) -> Result<(), JobError> {
    let invalid = |key: &str, message: String| JobError::Invalid {
        key: key.to_string(),
        message,
    };
    let bottom_layers = spec
        .model
        .bottom_layers()
        .map_err(|e| invalid("model", e.to_string()))?;
    let cut_width = spec
        .model
        .layer_shapes(1)
        .get(bottom_layers - 1)
        .map_or(1, |&(_, width)| width);
    let head_width = if spec.training.u_shaped {
        // Checked on a one-feature model: the cut does not depend on the width.
        let layout = cohort_models::UShapedLayout::new(&spec.model, 1)
            .map_err(|e| invalid("training.u_shaped", e.to_string()))?;
        layout.head_width()
    } else {
        0
    };
    let batch_bytes =
        (spec.training.batch_size as usize).saturating_mul(cut_width.max(head_width) * 4);
    if batch_bytes > MAX_BATCH_BYTES {
        return Err(invalid(
            "training.batch_size",
            format!(
                "a batch of {} rows × {cut_width} activations is {batch_bytes} bytes, over the \
                 {MAX_BATCH_BYTES} a split batch may carry",
                spec.training.batch_size
            ),
        ));
    }
    if let Some(dp) = &spec.privacy.dp
        && dp.level != cohort_privacy::dp::DpLevel::Client
    {
        return Err(invalid(
            "privacy.dp",
            format!(
                "[privacy.dp] level = \"{}\" with [training] mode = \"splitfed\" is not \
                 supported: record-level DP would need DP-SGD across the cut (the activations \
                 sent every batch, not only the updates); use level = \"client\", where the \
                 coordinator clips each hospital's whole update and noises their sum",
                dp.level.as_str()
            ),
        ));
    }
    if spec.strategy.proximal_mu().is_some_and(|mu| mu > 0.0) {
        return Err(invalid(
            "strategy",
            "fedprox's proximal term is not applied to split parts; use fedavg, fedadam or \
             fedyogi"
                .into(),
        ));
    }
    Ok(())
}

/// What a seat counted while its hospital trained.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeatStats {
    pub batches: u64,
    pub samples: u64,
    /// Activations and labels received (U-shaped: activations and the
    /// head's gradients; never a label).
    pub bytes_in: u64,
    /// Gradients sent back.
    pub bytes_out: u64,
    pub loss_sum: f64,
}

impl SeatStats {
    /// Adds another seat's counts (a round's totals).
    pub fn add(&mut self, other: &SeatStats) {
        self.batches += other.batches;
        self.samples += other.samples;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.loss_sum += other.loss_sum;
    }
}

/// Parameters × rows up to which a seat's step runs on the async worker
/// that received the batch (about 100 µs of arithmetic or less): handing
/// it to the blocking pool and back costs two thread wake-ups, more than a
/// step this small, and a SplitFed round is a chain of such steps. Larger
/// steps go to the blocking pool, so that they do not stall the worker's
/// other connections.
const SMALL_STEP: usize = 1 << 20;

/// What a seat trains: the top part, or, U-shaped, the middle.
enum Held {
    Top(Box<TopPart>),
    Middle(Box<MiddlePart>),
}

/// One hospital's copy of the top part (or middle) for one round attempt.
pub struct Seat {
    client: String,
    held: Held,
    /// A full batch's step is at most [`SMALL_STEP`] multiply-adds.
    small: bool,
    max_rows: usize,
    next_index: u32,
    /// Set while a `SplitExchange` stream holds the seat.
    streaming: bool,
    /// Why the exchange was cut off, if it was.
    failure: Option<String>,
    pub stats: SeatStats,
}

impl Seat {
    /// One batch: checked, one step of the top part, the gradient back.
    pub fn step(&mut self, batch: &SplitBatch) -> Result<SplitDown, String> {
        let result = self.try_step(batch);
        if let Err(reason) = &result {
            self.failure = Some(reason.clone());
        }
        result
    }

    fn try_step(&mut self, batch: &SplitBatch) -> Result<SplitDown, String> {
        if let Some(reason) = &self.failure {
            return Err(format!("the exchange already failed: {reason}"));
        }
        if batch.index != self.next_index {
            return Err(format!(
                "batch {} arrived where batch {} was due",
                batch.index, self.next_index
            ));
        }
        let rows = batch.rows as usize;
        if rows == 0 || rows > self.max_rows {
            return Err(format!(
                "batch {} has {rows} rows; 1 to {} allowed",
                batch.index, self.max_rows
            ));
        }
        let activations = cohort_models::parameters_from_bytes(&batch.activations)
            .map_err(|e| format!("batch {} activations: {e}", batch.index))?;
        let top = match &mut self.held {
            Held::Top(top) => top,
            Held::Middle(middle) => {
                if !batch.labels.is_empty() {
                    return Err(format!(
                        "batch {} carries labels; in a U-shaped split they stay at the hospital",
                        batch.index
                    ));
                }
                if middle.awaits_gradient() {
                    return Err(format!(
                        "batch {} arrived before the head's gradient of batch {}",
                        batch.index,
                        self.next_index.saturating_sub(1)
                    ));
                }
                let out = middle
                    .forward(rows, &activations)
                    .map_err(|e| format!("batch {}: {e}", batch.index))?;
                let middle_activations = cohort_models::parameters_to_bytes(&out);
                self.next_index += 1;
                self.stats.batches += 1;
                self.stats.samples += rows as u64;
                self.stats.bytes_in += batch.activations.len() as u64;
                self.stats.bytes_out += middle_activations.len() as u64;
                return Ok(SplitDown {
                    index: batch.index,
                    gradients: Vec::new(),
                    loss: 0.0,
                    middle_activations,
                });
            }
        };
        let labels = cohort_models::parameters_from_bytes(&batch.labels)
            .map_err(|e| format!("batch {} labels: {e}", batch.index))?;
        if labels.len() != rows {
            return Err(format!(
                "batch {} announces {rows} rows and carries {} labels",
                batch.index,
                labels.len()
            ));
        }
        let TopStep { loss, grad_at_cut } = top
            .step(&activations, &labels)
            .map_err(|e| format!("batch {}: {e}", batch.index))?;
        let gradients = cohort_models::parameters_to_bytes(&grad_at_cut);
        self.next_index += 1;
        self.stats.batches += 1;
        self.stats.samples += rows as u64;
        self.stats.bytes_in += (batch.activations.len() + batch.labels.len()) as u64;
        self.stats.bytes_out += gradients.len() as u64;
        self.stats.loss_sum += loss * rows as f64;
        Ok(SplitDown {
            index: batch.index,
            gradients,
            loss,
            middle_activations: Vec::new(),
        })
    }

    /// U-shaped: the head's gradient for the batch the middle last ran,
    /// one step of the middle, the gradient at the cut back.
    pub fn head_gradient(&mut self, frame: &SplitHeadGradient) -> Result<SplitDown, String> {
        let result = self.try_head_gradient(frame);
        if let Err(reason) = &result {
            self.failure = Some(reason.clone());
        }
        result
    }

    fn try_head_gradient(&mut self, frame: &SplitHeadGradient) -> Result<SplitDown, String> {
        if let Some(reason) = &self.failure {
            return Err(format!("the exchange already failed: {reason}"));
        }
        let Held::Middle(middle) = &mut self.held else {
            return Err("a head gradient in a split that is not U-shaped".into());
        };
        let expected = self.next_index.checked_sub(1);
        if !middle.awaits_gradient() || expected != Some(frame.index) {
            return Err(format!(
                "the head's gradient of batch {} arrived where none was due",
                frame.index
            ));
        }
        let grad_out = cohort_models::parameters_from_bytes(&frame.gradients)
            .map_err(|e| format!("batch {} head gradient: {e}", frame.index))?;
        let grad_in = middle
            .backward(&grad_out)
            .map_err(|e| format!("batch {} head gradient: {e}", frame.index))?;
        let gradients = cohort_models::parameters_to_bytes(&grad_in);
        self.stats.bytes_in += frame.gradients.len() as u64;
        self.stats.bytes_out += gradients.len() as u64;
        Ok(SplitDown {
            index: frame.index,
            gradients,
            loss: 0.0,
            middle_activations: Vec::new(),
        })
    }
}

/// A seat as the runner gets it back when the round attempt is over.
pub struct ClosedSeat {
    pub client: String,
    /// The top part (U-shaped: the middle) after the hospital's batches.
    pub top: Result<Vec<f32>, String>,
    pub stats: SeatStats,
}

/// The open seats of every running split round, by exchange id.
#[derive(Default)]
pub struct SplitSeats {
    seats: Mutex<HashMap<String, Arc<Mutex<Seat>>>>,
}

impl SplitSeats {
    /// Opens a seat for `client` with a copy of the global top part.
    pub fn open(
        &self,
        layout: &SplitLayout,
        client: &str,
        top: &[f32],
        optimizer: &cohort_models::OptimizerSpec,
        batch_size: usize,
    ) -> Result<String, String> {
        let parameters = top.len();
        let top = TopPart::new(layout, top, optimizer).map_err(|e| e.to_string())?;
        Ok(self.insert(client, Held::Top(Box::new(top)), parameters, batch_size))
    }

    /// U-shaped: opens a seat for `client` with a copy of the global middle.
    pub fn open_middle(
        &self,
        layout: &UShapedLayout,
        client: &str,
        middle: &[f32],
        optimizer: &cohort_models::OptimizerSpec,
        batch_size: usize,
    ) -> Result<String, String> {
        let parameters = middle.len();
        let middle = MiddlePart::new(layout, middle, optimizer).map_err(|e| e.to_string())?;
        Ok(self.insert(
            client,
            Held::Middle(Box::new(middle)),
            parameters,
            batch_size,
        ))
    }

    fn insert(&self, client: &str, held: Held, parameters: usize, batch_size: usize) -> String {
        let exchange_id = uuid::Uuid::new_v4().simple().to_string();
        let seat = Seat {
            client: client.to_string(),
            held,
            small: parameters.saturating_mul(batch_size) <= SMALL_STEP,
            max_rows: batch_size,
            next_index: 0,
            streaming: false,
            failure: None,
            stats: SeatStats::default(),
        };
        lock(&self.seats).insert(exchange_id.clone(), Arc::new(Mutex::new(seat)));
        exchange_id
    }

    /// The seat `exchange_id`, for a stream of `client`'s; one stream at a
    /// time, and only the hospital the seat was opened for.
    pub fn claim(&self, exchange_id: &str, client: &str) -> Result<Arc<Mutex<Seat>>, String> {
        let seat = lock(&self.seats)
            .get(exchange_id)
            .cloned()
            .ok_or_else(|| format!("no open split exchange {exchange_id}"))?;
        {
            let mut s = lock(&seat);
            if s.client != client {
                return Err(format!("split exchange {exchange_id} is not {client}'s"));
            }
            if s.streaming {
                return Err(format!("split exchange {exchange_id} is already streaming"));
            }
            s.streaming = true;
        }
        Ok(seat)
    }

    /// Lets another stream claim the seat (the hospital may reconnect).
    pub fn release(&self, seat: &Mutex<Seat>) {
        lock(seat).streaming = false;
    }

    /// Removes the seat; its top part (or middle) is what the hospital's
    /// batches made of it, or the reason the exchange failed.
    pub fn close(&self, exchange_id: &str) -> Option<ClosedSeat> {
        let seat = lock(&self.seats).remove(exchange_id)?;
        let seat = lock(&seat);
        let top = match (&seat.failure, &seat.held) {
            (Some(reason), _) => Err(reason.clone()),
            (None, Held::Middle(middle)) if middle.awaits_gradient() => {
                Err("the exchange ended before the last batch's head gradient".into())
            }
            (None, Held::Top(top)) => top.parameters().map_err(|e| e.to_string()),
            (None, Held::Middle(middle)) => middle.parameters().map_err(|e| e.to_string()),
        };
        Some(ClosedSeat {
            client: seat.client.clone(),
            top,
            stats: seat.stats.clone(),
        })
    }

    /// Number of open seats (for tests and status lines).
    pub fn open_count(&self) -> usize {
        lock(&self.seats).len()
    }
}

/// A frame a seat works on.
enum Up {
    Batch(SplitBatch),
    HeadGradient(SplitHeadGradient),
}

/// Serves one `SplitExchange` stream: the opening frame names the seat,
/// then every batch gets its gradient back in order. A bad batch ends the
/// stream with the reason (and leaves the hospital out of the round).
pub(crate) async fn serve_exchange(
    registry: Arc<crate::registry::Registry>,
    caller: &crate::security::Caller,
    mut stream: tonic::Streaming<SplitUp>,
) -> Result<tonic::Response<crate::server::SplitDownStream>, tonic::Status> {
    use tonic::Status;
    let open = match stream.message().await? {
        Some(SplitUp {
            frame: Some(split_up::Frame::Open(open)),
        }) => open,
        _ => {
            return Err(Status::invalid_argument(
                "the first frame of a split exchange must open it",
            ));
        }
    };
    let client = crate::server::session_client(&registry, caller, &open.session_id)?;
    let seat = registry
        .split
        .claim(&open.exchange_id, &client)
        .map_err(Status::failed_precondition)?;
    // Two gradients in flight: a hospital that stops reading stalls only
    // its own exchange.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let small = lock(&seat).small;
    tokio::spawn(async move {
        loop {
            let frame = match stream.message().await {
                Ok(Some(SplitUp {
                    frame: Some(split_up::Frame::Batch(batch)),
                })) => Up::Batch(batch),
                Ok(Some(SplitUp {
                    frame: Some(split_up::Frame::HeadGradient(gradient)),
                })) => Up::HeadGradient(gradient),
                Ok(None) => break,
                Ok(Some(_)) => {
                    let reason = "a split exchange was opened twice".to_string();
                    lock(&seat).failure = Some(reason.clone());
                    let _ = tx.send(Err(Status::invalid_argument(reason))).await;
                    break;
                }
                Err(status) => {
                    tracing::warn!(client, "split exchange broke: {}", status.message());
                    break;
                }
            };
            let step_seat = seat.clone();
            let work = move || match frame {
                Up::Batch(batch) => lock(&step_seat).step(&batch),
                Up::HeadGradient(gradient) => lock(&step_seat).head_gradient(&gradient),
            };
            let stepped = if small {
                // As the blocking pool would, a panic fails the batch, not
                // the coordinator's task.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                    .unwrap_or_else(|_| Err("the top part's step crashed".to_string()))
            } else {
                tokio::task::spawn_blocking(work)
                    .await
                    .unwrap_or_else(|e| Err(format!("the top part's step crashed: {e}")))
            };
            let down = stepped.map_err(|reason| {
                tracing::warn!(client, "split batch rejected: {reason}");
                Status::invalid_argument(reason)
            });
            let stop = down.is_err();
            if tx.send(down).await.is_err() || stop {
                break;
            }
        }
        registry.split.release(&seat);
    });
    Ok(tonic::Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_models::{ModelSpec, OptimizerSpec};

    fn seats() -> (SplitSeats, String, usize) {
        let spec = ModelSpec::Mlp {
            hidden: vec![4, 2],
            cut: None,
        };
        let layout = SplitLayout::new(&spec, 3).unwrap();
        let params = cohort_models::init_parameters(&spec, 3, 1);
        let (_, top) = layout.split(&params).unwrap();
        let seats = SplitSeats::default();
        let sgd = OptimizerSpec::Sgd {
            learning_rate: 0.1,
            momentum: 0.0,
        };
        let id = seats.open(&layout, "a", top, &sgd, 8).unwrap();
        (seats, id, layout.cut_width())
    }

    fn batch(index: u32, rows: usize, width: usize) -> SplitBatch {
        SplitBatch {
            index,
            rows: rows as u32,
            activations: cohort_models::parameters_to_bytes(&vec![0.25; rows * width]),
            labels: cohort_models::parameters_to_bytes(
                &(0..rows).map(|r| (r % 2) as f32).collect::<Vec<_>>(),
            ),
        }
    }

    #[test]
    fn only_small_steps_run_on_the_async_worker() {
        let sgd = OptimizerSpec::Sgd {
            learning_rate: 0.1,
            momentum: 0.0,
        };
        let small = |hidden: Vec<usize>, batch_size: usize| {
            let spec = ModelSpec::Mlp { hidden, cut: None };
            let layout = SplitLayout::new(&spec, 30).unwrap();
            let params = cohort_models::init_parameters(&spec, 30, 1);
            let (_, top) = layout.split(&params).unwrap();
            let seats = SplitSeats::default();
            let id = seats.open(&layout, "a", top, &sgd, batch_size).unwrap();
            lock(&seats.claim(&id, "a").unwrap()).small
        };
        // The demo's top part (32 → 16 → 1, 545 parameters) at batches of 32.
        assert!(small(vec![32, 16], 32));
        // 64 → 512 → 1 has 33,793 parameters: over 2^20 at 32 rows.
        assert!(!small(vec![64, 512], 32));
        assert!(small(vec![64, 512], 16));
    }

    #[test]
    fn a_seat_serves_its_hospital_batches_in_order() {
        let (seats, id, width) = seats();
        let refusal = |r: Result<Arc<Mutex<Seat>>, String>| r.err().unwrap_or_default();
        assert!(refusal(seats.claim(&id, "b")).contains("not b's"));
        let seat = seats.claim(&id, "a").unwrap();
        assert!(refusal(seats.claim(&id, "a")).contains("already streaming"));
        let down = lock(&seat).step(&batch(0, 4, width)).unwrap();
        assert_eq!(down.gradients.len(), 4 * width * 4);
        assert!(down.loss.is_finite());
        lock(&seat).step(&batch(1, 3, width)).unwrap();
        seats.release(&seat);
        let closed = seats.close(&id).unwrap();
        assert_eq!(closed.stats.batches, 2);
        assert_eq!(closed.stats.samples, 7);
        assert!(closed.top.is_ok());
        assert_eq!(seats.open_count(), 0);
        assert!(
            seats.claim(&id, "a").is_err(),
            "a closed seat cannot be claimed"
        );
    }

    /// A U-shaped seat: the middle between two round trips per batch; a
    /// batch with labels, or frames out of turn, fail the exchange.
    #[test]
    fn a_u_shaped_seat_runs_the_middle_and_refuses_labels() {
        let spec = ModelSpec::Mlp {
            hidden: vec![4, 3],
            cut: None,
        };
        let layout = UShapedLayout::new(&spec, 3).unwrap();
        let params = cohort_models::init_parameters(&spec, 3, 1);
        let (_, middle, _) = layout.split(&params).unwrap();
        let sgd = OptimizerSpec::Sgd {
            learning_rate: 0.1,
            momentum: 0.0,
        };
        let open = || {
            let seats = SplitSeats::default();
            let id = seats.open_middle(&layout, "a", middle, &sgd, 8).unwrap();
            let seat = seats.claim(&id, "a").unwrap();
            (seats, id, seat)
        };
        let (w, h) = (layout.cut_width(), layout.head_width());
        let unlabelled = move |index| SplitBatch {
            labels: Vec::new(),
            ..batch(index, 4, w)
        };
        let head = move |index, values: usize| SplitHeadGradient {
            index,
            rows: 4,
            gradients: cohort_models::parameters_to_bytes(&vec![0.1; values]),
        };

        let (seats, id, seat) = open();
        let down = lock(&seat).step(&unlabelled(0)).unwrap();
        assert_eq!(down.middle_activations.len(), 4 * h * 4);
        assert!(down.gradients.is_empty());
        let down = lock(&seat).head_gradient(&head(0, 4 * h)).unwrap();
        assert_eq!(down.gradients.len(), 4 * w * 4);
        lock(&seat).step(&unlabelled(1)).unwrap();
        lock(&seat).head_gradient(&head(1, 4 * h)).unwrap();
        let closed = seats.close(&id).unwrap();
        assert_eq!(closed.stats.batches, 2);
        // Activations and head gradients in, nothing else.
        assert_eq!(closed.stats.bytes_in, 2 * 4 * (w + h) as u64 * 4);
        assert_eq!(closed.top.unwrap().len(), layout.middle_len());

        type Drive = Box<dyn Fn(&mut Seat) -> Result<SplitDown, String>>;
        let cases: Vec<(Drive, &str)> = vec![
            (Box::new(move |s| s.step(&batch(0, 4, w))), "carries labels"),
            (
                Box::new(move |s| s.head_gradient(&head(0, 4 * h))),
                "where none was due",
            ),
            (
                Box::new(move |s| {
                    s.step(&unlabelled(0))?;
                    s.step(&unlabelled(1))
                }),
                "before the head's gradient",
            ),
            (
                Box::new(move |s| {
                    s.step(&unlabelled(0))?;
                    s.head_gradient(&head(0, 4 * h - 1))
                }),
                "gradient at the head",
            ),
        ];
        for (drive, expected) in cases {
            let (seats, id, seat) = open();
            let err = drive(&mut lock(&seat)).unwrap_err();
            assert!(err.contains(expected), "{err} (expected {expected})");
            assert!(seats.close(&id).unwrap().top.is_err());
        }
        // A hospital that stops after a batch's first half is not counted.
        let (seats, id, seat) = open();
        lock(&seat).step(&unlabelled(0)).unwrap();
        let err = seats.close(&id).unwrap().top.unwrap_err();
        assert!(
            err.contains("before the last batch's head gradient"),
            "{err}"
        );
    }

    #[test]
    fn bad_batches_fail_the_exchange_with_a_reason() {
        type MakeBatch = Box<dyn Fn(usize) -> SplitBatch>;
        let cases: Vec<(MakeBatch, &str)> = vec![
            (
                Box::new(|w| batch(1, 4, w)),
                "batch 1 arrived where batch 0",
            ),
            (Box::new(|w| batch(0, 9, w)), "1 to 8 allowed"),
            (
                Box::new(|w| SplitBatch {
                    rows: 3,
                    ..batch(0, 4, w)
                }),
                "announces 3 rows",
            ),
            (
                Box::new(|w| SplitBatch {
                    activations: cohort_models::parameters_to_bytes(&vec![0.0; 4 * w + 1]),
                    ..batch(0, 4, w)
                }),
                "activations for 4 rows",
            ),
            (
                Box::new(|w| {
                    let mut values = vec![0.0; 4 * w];
                    values[w] = f32::INFINITY;
                    SplitBatch {
                        activations: cohort_models::parameters_to_bytes(&values),
                        ..batch(0, 4, w)
                    }
                }),
                "row 1 is not finite",
            ),
            (
                Box::new(|w| SplitBatch {
                    labels: cohort_models::parameters_to_bytes(&[0.0, 1.0, 0.5, 1.0]),
                    ..batch(0, 4, w)
                }),
                "label of row 2",
            ),
            (
                Box::new(|w| SplitBatch {
                    activations: vec![0; 7],
                    ..batch(0, 4, w)
                }),
                "multiple of 4",
            ),
        ];
        for (make, expected) in cases {
            let (seats, id, width) = seats();
            let seat = seats.claim(&id, "a").unwrap();
            let err = lock(&seat).step(&make(width)).unwrap_err();
            assert!(err.contains(expected), "{err} (expected {expected})");
            // The seat stays failed: the hospital is left out of the round.
            assert!(lock(&seat).step(&batch(0, 4, width)).is_err());
            let closed = seats.close(&id).unwrap();
            assert!(closed.top.unwrap_err().contains(expected));
        }
    }
}
