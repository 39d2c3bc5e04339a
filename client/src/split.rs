//! The hospital's side of SplitFed: its bottom part trains batch by batch
//! against the coordinator's top part over `SplitExchange`.
//!
//! What leaves the hospital per batch: the activations at the cut and the
//! batch's labels (SplitFed v1 sends labels; the top part needs them), and,
//! at the end of the round, the bottom part's update, signed like any
//! update. Never a row of features.
//!
//! Under secure or homomorphic aggregation (`[privacy] aggregation =
//! "secagg"` or `"he"`) the part's update leaves masked or encrypted, as a
//! FedAvg update would: the coordinator learns only the sum of the round's
//! parts. It still sees each batch's activations (and, SplitFed v1, labels).
//!
//! Under client-level DP (`[privacy.dp] level = "client"`) the hospital
//! admits the round against its privacy budget and records the spending
//! before its update leaves, as in FedAvg rounds. In plain mode the
//! coordinator clips each hospital's whole update (its part and its
//! seat's) and adds the noise to the sum; under secure or homomorphic
//! aggregation the hospital's part is clipped to `clip/√2` and carries
//! this hospital's share of distributed noise, and the coordinator clips
//! and noises the seats' parts alike (`cohort_privacy::distributed::
//! per_part`). Its training loss then stays here.
//!
//! U-shaped (`SplitTask.u_shaped`): the hospital also keeps the head (the
//! last layer) and its labels. Per batch the activations go up without
//! labels, the middle's activations come down, the head takes its step on
//! the labels here and its input gradient goes up, the gradient at the cut
//! comes down. What leaves: activations at the cut, the head's input
//! gradients, and the update of bottom and head. Never a label.

use std::sync::Arc;

use cohort_models::{BottomPart, ModelSpec, SplitLayout, TopPart, TrainConfig, UShapedLayout};
use cohort_protocol::v1::hospital_service_client::HospitalServiceClient;
use cohort_protocol::v1::{
    SplitBatch, SplitDown, SplitHeadGradient, SplitOpen, SplitTask, SplitUp, TaskHeader, split_up,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tokio::runtime::Runtime;
use tonic::transport::Channel;
use tracing::info;

use crate::exchange::{BlockingExchange, ExchangeThread};
use crate::work::{Answer, Trained, Worker, parse};
use cohort_privacy::dp::{DpLevel, HospitalPlan, JobDp};

/// Answers a FIT task that carries `split`: trains the bottom part from
/// `bottom` against the coordinator's seat and returns its update.
pub(crate) async fn fit(
    worker: Arc<Worker>,
    exchanges: &ExchangeThread,
    session_id: String,
    task: TaskHeader,
    bottom: Vec<f32>,
) -> Answer {
    let started = std::time::Instant::now();
    let answer = exchanges
        .run(move |runtime, grpc| {
            let result = match &task.split {
                Some(split) => answer(&worker, runtime, grpc, &session_id, &task, split, &bottom),
                None => Err("split fit task without its split description".to_string()),
            };
            let answer = result.unwrap_or_else(Answer::refused);
            worker.record_answer(&task, &answer);
            answer
        })
        .await
        .unwrap_or_else(|e| Answer::refused(format!("split training failed: {e}")));
    let mut answer = answer;
    answer.header.compute_seconds = started.elapsed().as_secs_f64();
    answer
}

/// The blocking side of one exchange: batches go up, gradients come down.
struct Exchange<'a>(BlockingExchange<'a, SplitUp, SplitDown>);

impl<'a> Exchange<'a> {
    fn open(
        runtime: &'a Runtime,
        mut grpc: HospitalServiceClient<Channel>,
        session_id: &str,
        exchange_id: &str,
    ) -> Result<Self, String> {
        let open = SplitUp {
            frame: Some(split_up::Frame::Open(SplitOpen {
                session_id: session_id.to_string(),
                exchange_id: exchange_id.to_string(),
            })),
        };
        BlockingExchange::open(runtime, "split exchange", 2, open, move |up| async move {
            grpc.split_exchange(up).await
        })
        .map(Self)
    }

    /// Sends one batch and waits for its gradient.
    fn round_trip(
        &mut self,
        index: u32,
        activations: &[f32],
        labels: &[f32],
        cut_width: usize,
    ) -> Result<(Vec<f32>, f64), String> {
        let batch = SplitBatch {
            index,
            rows: labels.len() as u32,
            activations: cohort_models::parameters_to_bytes(activations),
            labels: cohort_models::parameters_to_bytes(labels),
        };
        self.0.send(SplitUp {
            frame: Some(split_up::Frame::Batch(batch)),
        })?;
        let down = self.0.receive()?;
        if down.index != index {
            return Err(format!(
                "gradient of batch {} arrived for batch {index}",
                down.index
            ));
        }
        let gradients = cohort_models::parameters_from_bytes(&down.gradients)
            .map_err(|e| format!("gradient of batch {index}: {e}"))?;
        if gradients.len() != labels.len() * cut_width {
            return Err(format!(
                "gradient of batch {index} has {} values, {} expected",
                gradients.len(),
                labels.len() * cut_width
            ));
        }
        Ok((gradients, down.loss))
    }

    /// U-shaped, first half of a batch: activations up (no labels), the
    /// middle's activations down.
    fn forward(
        &mut self,
        index: u32,
        rows: usize,
        activations: &[f32],
        head_width: usize,
    ) -> Result<Vec<f32>, String> {
        self.0.send(SplitUp {
            frame: Some(split_up::Frame::Batch(SplitBatch {
                index,
                rows: rows as u32,
                activations: cohort_models::parameters_to_bytes(activations),
                labels: Vec::new(),
            })),
        })?;
        let down = self.0.receive()?;
        expect_values(
            down.index,
            index,
            &down.middle_activations,
            rows * head_width,
            "middle activations",
        )
    }

    /// U-shaped, second half: the head's input gradient up, the gradient
    /// at the cut down.
    fn backward(
        &mut self,
        index: u32,
        rows: usize,
        head_gradient: &[f32],
        cut_width: usize,
    ) -> Result<Vec<f32>, String> {
        self.0.send(SplitUp {
            frame: Some(split_up::Frame::HeadGradient(SplitHeadGradient {
                index,
                rows: rows as u32,
                gradients: cohort_models::parameters_to_bytes(head_gradient),
            })),
        })?;
        let down = self.0.receive()?;
        expect_values(
            down.index,
            index,
            &down.gradients,
            rows * cut_width,
            "gradient",
        )
    }
}

/// The values of a frame for batch `index`, checked: its index and length.
fn expect_values(
    got: u32,
    index: u32,
    bytes: &[u8],
    expected: usize,
    what: &str,
) -> Result<Vec<f32>, String> {
    if got != index {
        return Err(format!("{what} of batch {got} arrived for batch {index}"));
    }
    let values = cohort_models::parameters_from_bytes(bytes)
        .map_err(|e| format!("{what} of batch {index}: {e}"))?;
    if values.len() != expected {
        return Err(format!(
            "{what} of batch {index} has {} values, {expected} expected",
            values.len()
        ));
    }
    Ok(values)
}

/// Trains this hospital's part and answers in the task's aggregation mode:
/// the part's update itself, masked (secure aggregation) or encrypted
/// (homomorphic aggregation).
fn answer(
    worker: &Worker,
    runtime: &Runtime,
    grpc: HospitalServiceClient<Channel>,
    session_id: &str,
    task: &TaskHeader,
    split: &SplitTask,
    bottom: &[f32],
) -> Result<Answer, String> {
    let train = || train(worker, runtime, grpc, session_id, task, split, bottom);
    match (&task.secagg, &task.he) {
        (Some(secagg), _) => worker.masked_fit(task, secagg, train),
        (None, Some(he)) => worker.encrypted_fit(task, he, train),
        (None, None) => worker.plain_answer(task, train()?.into_answer()),
    }
}

fn train(
    worker: &Worker,
    runtime: &Runtime,
    grpc: HospitalServiceClient<Channel>,
    session_id: &str,
    task: &TaskHeader,
    split: &SplitTask,
    bottom: &[f32],
) -> Result<Trained, String> {
    if worker.options().require_secure_aggregation {
        return Err("this hospital only sends updates under secure aggregation \
                    (--require-secure-aggregation); split learning sends activations"
            .to_string());
    }
    let model: ModelSpec = parse(&task.model_spec_json, "model spec")?;
    let config: TrainConfig = parse(&task.train_config_json, "training configuration")?;
    config.validate().map_err(|e| e.to_string())?;
    let data = worker.prepared(task)?;
    let train = &data.train;
    let private = client_level_plan(worker, task, train.len())?;
    if split.u_shaped {
        let layout = UShapedLayout::new(&model, train.n_features).map_err(|e| e.to_string())?;
        let exchange = Exchange::open(runtime, grpc, session_id, &split.exchange_id)?;
        let (delta, last_loss) = train_u_shaped(
            worker,
            exchange,
            task,
            split,
            (bottom, &layout),
            &config,
            &data,
        )?;
        return finish(
            worker,
            task,
            private,
            delta,
            (train.len(), last_loss),
            &data,
        );
    }
    let layout = SplitLayout::new(&model, train.n_features).map_err(|e| e.to_string())?;
    if split.cut_width as usize != layout.cut_width() {
        return Err(format!(
            "the task's cut is {} wide, the model's {}",
            split.cut_width,
            layout.cut_width()
        ));
    }
    let mut part =
        BottomPart::new(&layout, bottom, &config.optimizer).map_err(|e| e.to_string())?;
    let mut exchange = Exchange::open(runtime, grpc, session_id, &split.exchange_id)?;
    let n = train.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut index = 0u32;
    let mut last_loss = f64::NAN;
    for epoch in 0..config.epochs {
        // The same shuffle as whole-model training, so a round replays.
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(epoch as u64));
        order.sort_unstable();
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for rows in order.chunks(config.batch_size) {
            let activations = part.forward(train, rows).map_err(|e| e.to_string())?;
            let labels: Vec<f32> = rows.iter().map(|&r| train.labels[r]).collect();
            let (gradients, loss) =
                exchange.round_trip(index, &activations, &labels, layout.cut_width())?;
            part.backward(&gradients).map_err(|e| e.to_string())?;
            loss_sum += loss * rows.len() as f64;
            index += 1;
        }
        last_loss = loss_sum / n.max(1) as f64;
    }
    drop(exchange);
    let after = part.parameters().map_err(|e| e.to_string())?;
    let delta: Vec<f32> = after.iter().zip(bottom).map(|(a, b)| a - b).collect();
    info!(
        client = worker.name(),
        job = task.job_id,
        round = task.round,
        batches = index,
        "split training done"
    );
    finish(worker, task, private, delta, (n, last_loss), &data)
}

/// The job's client-level DP plan for this hospital, admitted against its
/// budget; `None` without DP. Record-level DP would need DP-SGD across the
/// cut, which split learning does not do (the job is refused at submit).
fn client_level_plan(
    worker: &Worker,
    task: &TaskHeader,
    train_rows: usize,
) -> Result<Option<(JobDp, HospitalPlan)>, String> {
    let Some(job) = worker.job_dp(task)? else {
        return Ok(None);
    };
    if job.policy.level != DpLevel::Client {
        return Err("split learning supports client-level differential privacy only".into());
    }
    let plan = worker.dp_plan(task, &job, train_rows)?;
    worker.budget().admit(&task.job_id, &plan, None)?;
    Ok(Some((job, plan)))
}

/// What a split round trained: the hospital's part update, after its DP
/// spending (if any) is on disk.
fn finish(
    worker: &Worker,
    task: &TaskHeader,
    private: Option<(JobDp, HospitalPlan)>,
    delta: Vec<f32>,
    (examples, loss): (usize, f64),
    data: &crate::work::Prepared,
) -> Result<Trained, String> {
    let dp_epsilon = match &private {
        Some((job, plan)) => Some(worker.budget().spend_round(
            &task.job_id,
            job,
            plan,
            task.round,
        )?),
        None => None,
    };
    // In plain mode the coordinator clips and noises whole updates; under
    // secure or homomorphic aggregation this hospital adds distributed noise
    // to its part, and the coordinator noises the seats' parts.
    let protected = task.secagg.is_some() || task.he.is_some();
    let client_level = match &private {
        Some((job, plan)) if protected => Some(
            cohort_privacy::distributed::per_part(job.policy.clipping_norm, plan.noise_multiplier)
                .1,
        ),
        _ => None,
    };
    Ok(Trained {
        delta,
        examples: examples as u64,
        // Under DP the training loss is a statistic of the records that
        // the noise does not cover: it stays in the hospital.
        loss: if dp_epsilon.is_some() { f64::NAN } else { loss },
        commitment: data.commitment.clone(),
        dp_epsilon,
        client_level,
        train_metrics: None,
    })
}

/// [`train`] of a U-shaped split: `sent` is bottom ‖ head; returns
/// Δbottom ‖ Δhead and the last epoch's loss. The labels and the loss stay
/// here.
fn train_u_shaped(
    worker: &Worker,
    mut exchange: Exchange<'_>,
    task: &TaskHeader,
    split: &SplitTask,
    (sent, layout): (&[f32], &UShapedLayout),
    config: &TrainConfig,
    data: &crate::work::Prepared,
) -> Result<(Vec<f32>, f64), String> {
    let (cut_width, head_width) = (layout.cut_width(), layout.head_width());
    if split.cut_width as usize != cut_width || split.head_width as usize != head_width {
        return Err(format!(
            "the task's cuts are {} and {} wide, the model's {cut_width} and {head_width}",
            split.cut_width, split.head_width
        ));
    }
    if sent.len() != layout.bottom_len() + layout.head_len() {
        return Err(format!(
            "the task sent {} values, bottom and head have {}",
            sent.len(),
            layout.bottom_len() + layout.head_len()
        ));
    }
    let train = &data.train;
    let (bottom_start, head_start) = sent.split_at(layout.bottom_len());
    let mut bottom = BottomPart::new(&layout.outer(), bottom_start, &config.optimizer)
        .map_err(|e| e.to_string())?;
    let mut head =
        TopPart::head(layout, head_start, &config.optimizer).map_err(|e| e.to_string())?;
    let n = train.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut index = 0u32;
    let mut last_loss = f64::NAN;
    for epoch in 0..config.epochs {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(epoch as u64));
        order.sort_unstable();
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for rows in order.chunks(config.batch_size) {
            let activations = bottom.forward(train, rows).map_err(|e| e.to_string())?;
            let middle = exchange.forward(index, rows.len(), &activations, head_width)?;
            let labels: Vec<f32> = rows.iter().map(|&r| train.labels[r]).collect();
            let step = head.step(&middle, &labels).map_err(|e| e.to_string())?;
            let gradients = exchange.backward(index, rows.len(), &step.grad_at_cut, cut_width)?;
            bottom.backward(&gradients).map_err(|e| e.to_string())?;
            loss_sum += step.loss * rows.len() as f64;
            index += 1;
        }
        last_loss = loss_sum / n.max(1) as f64;
    }
    drop(exchange);
    let mut after = bottom.parameters().map_err(|e| e.to_string())?;
    after.extend(head.parameters().map_err(|e| e.to_string())?);
    let delta: Vec<f32> = after.iter().zip(sent).map(|(a, b)| a - b).collect();
    info!(
        client = worker.name(),
        job = task.job_id,
        round = task.round,
        batches = index,
        "U-shaped split training done"
    );
    Ok((delta, last_loss))
}
