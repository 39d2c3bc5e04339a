//! A site of a vertical job (`[training] mode = "vertical"`): it holds some
//! columns about patients that other sites also know; the site whose file
//! has the job's label column is the label site.
//!
//! What leaves the site: at enrollment, whether it has the label column, its
//! feature column names and how many ids it has; its ids hashed to
//! ristretto255 and blinded with a key only it knows, shuffled (and other
//! sites' lists, blinded once more); once aligned, how many shared rows it
//! trains and validates on and its columns' means and standard deviations
//! over its training rows; per batch, a feature site's first-layer
//! pre-activations, the label site's gradient at the cut (through the max-norm
//! defence when the job asks for it); its first-layer block at the end of
//! each round; and the label site's validation metrics and leak measure.
//! Never a row, an id in the clear, or a label; and the label site's top
//! part (the layers after the first, trained on its labels) never: it keeps
//! it in its data directory ([`crate::kept_top`]) and sends its SHA-256.

use std::sync::{Arc, Mutex, MutexGuard};

use cohort_datasets::psi::{self, PsiKey};
use cohort_datasets::{
    DataSpec, Examples, LabelColumn, SiteTable, VerticalAlignment, VerticalSiteInfo,
};
use cohort_models::{BottomPart, LabelSiteReport, ModelSpec, TopPart, TrainConfig, VerticalLayout};
use cohort_protocol::v1::hospital_service_client::HospitalServiceClient;
use cohort_protocol::v1::{
    ResultHeader, SplitOpen, TaskHeader, VerticalBatch, VerticalDown, VerticalStep, VerticalTask,
    VerticalUp, vertical_down, vertical_up,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tokio::runtime::Runtime;
use tonic::transport::Channel;
use tracing::info;

use crate::TaskBody;
use crate::exchange::{BlockingExchange, ExchangeThread};
use crate::misbehave::Misbehave;
use crate::work::{Answer, Worker, parse};

/// This site's state in its current vertical job: its key and the order it
/// sent its ids in, then its aligned rows.
#[derive(Default)]
pub(crate) struct SiteState(Mutex<Option<Site>>);

struct Site {
    job_id: String,
    table: SiteTable,
    key: PsiKey,
    /// File row of each id, in the order the blinded ids were sent.
    sent_rows: Vec<usize>,
    aligned: Option<Arc<Aligned>>,
}

/// The shared rows, standardized, in the common order.
struct Aligned {
    train: Examples,
    validation: Examples,
}

impl SiteState {
    fn lock(&self) -> MutexGuard<'_, Option<Site>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Answers a VERTICAL task; any problem becomes a refusal with its reason.
pub(crate) async fn answer(
    worker: Arc<Worker>,
    exchanges: &ExchangeThread,
    session_id: String,
    task: TaskHeader,
    body: TaskBody,
) -> Answer {
    let started = std::time::Instant::now();
    let step = task.vertical.as_ref().map(VerticalTask::step);
    let answer = if step == Some(VerticalStep::Train) {
        // Training steps the exchange batch by batch: on the exchange thread.
        exchanges
            .run(move |runtime, grpc| {
                let result = match &task.vertical {
                    Some(vertical) => {
                        train(&worker, runtime, grpc, &session_id, &task, vertical, body)
                    }
                    None => Err("vertical task without its step".to_string()),
                };
                signed_answer(&worker, &task, result)
            })
            .await
            .unwrap_or_else(|e| Answer::refused(format!("vertical training failed: {e}")))
    } else {
        // The id steps are CPU work that talks to no one until it is done.
        tokio::task::spawn_blocking(move || {
            let result = match step {
                Some(VerticalStep::Enroll) => enroll(&worker, &task),
                Some(VerticalStep::Blind) => blind(&worker, &task, body),
                Some(VerticalStep::Align) => align(&worker, &task, body),
                Some(_) => Err("vertical task of unknown step".to_string()),
                None => Err("vertical task without its step".to_string()),
            };
            signed_answer(&worker, &task, result)
        })
        .await
        .unwrap_or_else(|e| Answer::refused(format!("vertical task crashed: {e}")))
    };
    let mut answer = answer;
    answer.header.compute_seconds = started.elapsed().as_secs_f64();
    answer
}

/// The answer to send for `result`, signed and recorded.
fn signed_answer(worker: &Worker, task: &TaskHeader, result: Result<Answer, String>) -> Answer {
    let mut answer = result.unwrap_or_else(Answer::refused);
    if let Some(kit) = worker.kit() {
        sign(kit, task, &mut answer);
    }
    worker.record_answer(task, &answer);
    answer
}

/// Signs what the site sends (blinded ids, its trained part) like an
/// update, with the kit's signing key: the coordinator checks it, and a
/// part's receipt on the ledger carries it.
fn sign(kit: &cohort_identity::Kit, task: &TaskHeader, answer: &mut Answer) {
    use sha2::Digest as _;
    if !answer.header.error.is_empty() || answer.masked.is_empty() {
        return;
    }
    let header = &mut answer.header;
    header.update_sha256 = hex::encode(sha2::Sha256::digest(&answer.masked));
    let statement = cohort_protocol::update_statement(
        &task.job_id,
        task.round,
        &task.task_id,
        header.num_examples,
        header.parameter_count,
        &header.update_sha256,
        &header.dataset_sha256,
    );
    match kit
        .signing_key
        .sign(cohort_protocol::UPDATE_SIGNATURE_CONTEXT, &statement)
    {
        Ok(signature) => header.update_signature = signature,
        Err(e) => tracing::warn!("could not sign the vertical answer: {e}"),
    }
}

/// An answer of a JSON report and bytes (sent as chunks).
fn bytes_answer(report: String, payload: Vec<u8>, num_examples: u64) -> Answer {
    Answer {
        header: ResultHeader {
            statistics_json: report,
            parameter_count: payload.len() as u64,
            num_examples,
            ..Default::default()
        },
        parameters: Vec::new(),
        masked: payload,
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| format!("encoding JSON: {e}"))
}

fn enroll(worker: &Worker, task: &TaskHeader) -> Result<Answer, String> {
    let spec: DataSpec = parse(&task.data_spec_json, "data spec")?;
    let id = spec
        .id
        .as_deref()
        .ok_or("the job names no id column ([data] id)")?;
    let label = LabelColumn {
        name: spec.label.clone(),
        positive: spec.positive.clone(),
    };
    let table = worker
        .table()
        .and_then(|table| SiteTable::from_table(&table, id, &label, &spec.drop))
        .map_err(|e| format!("local data {}: {e}", worker.data_source()))?;
    // At the label site only labelled rows can be trained on.
    let candidates: Vec<usize> = match &table.labels {
        Some(labels) => (0..table.ids.len())
            .filter(|&r| labels[r].is_some())
            .collect(),
        None => (0..table.ids.len()).collect(),
    };
    if table.labels.is_some() && worker.data_dir().is_none() {
        return Err(format!(
            "this site's file has the label column `{}`, so it is the label site, which keeps \
             the model's top part in its own data directory: start the client with --data-dir",
            spec.label
        ));
    }
    let ids: Vec<Option<String>> = candidates.iter().map(|&r| table.ids[r].clone()).collect();
    // The coordinator hears which rows are at fault, never the id itself.
    let (shuffled, order) = psi::prepare_ids(&ids).map_err(|e| match e {
        psi::PsiError::DuplicateId { first, second, .. } => format!(
            "duplicate ids: the id column `{id}` has the same value in data rows {} and {}",
            candidates[first] + 1,
            candidates[second] + 1
        ),
        psi::PsiError::MissingId(row) => format!(
            "data row {} has no value in the id column `{id}`",
            candidates[row] + 1
        ),
        other => other.to_string(),
    })?;
    let key = PsiKey::random();
    let blinded = key.blind_ids(task.job_id.as_bytes(), &shuffled);
    let info = VerticalSiteInfo {
        label_site: table.labels.is_some(),
        columns: table.columns.clone(),
        ids: blinded.len(),
    };
    info!(
        client = worker.name(),
        job = task.job_id,
        ids = blinded.len(),
        label_site = info.label_site,
        "vertical enrollment: ids blinded"
    );
    *worker.vertical_site().lock() = Some(Site {
        job_id: task.job_id.clone(),
        table,
        key,
        sent_rows: order.iter().map(|&p| candidates[p]).collect(),
        aligned: None,
    });
    let payload = blinded.iter().flatten().copied().collect();
    Ok(bytes_answer(to_json(&info)?, payload, 0))
}

fn payload(body: TaskBody, what: &str) -> Result<Vec<u8>, String> {
    match body {
        TaskBody::Bytes(b) => Ok(b),
        TaskBody::Parameters(p) if p.is_empty() => Ok(Vec::new()),
        TaskBody::Parameters(_) => Err(format!("{what} arrived as parameters")),
    }
}

fn blind(worker: &Worker, task: &TaskHeader, body: TaskBody) -> Result<Answer, String> {
    let bytes = payload(body, "a list to blind")?;
    if !bytes.len().is_multiple_of(32) {
        return Err(format!(
            "a list to blind of {} bytes is not whole 32-byte points",
            bytes.len()
        ));
    }
    let list: Vec<psi::Blinded> = bytes
        .chunks_exact(32)
        .map(|c| {
            let mut p = [0u8; 32];
            p.copy_from_slice(c);
            p
        })
        .collect();
    let guard = worker.vertical_site().lock();
    let site = guard
        .as_ref()
        .filter(|s| s.job_id == task.job_id)
        .ok_or("this site has not enrolled in the job")?;
    let blinded = site.key.blind(&list).map_err(|e| e.to_string())?;
    Ok(bytes_answer(
        String::new(),
        blinded.iter().flatten().copied().collect(),
        0,
    ))
}

fn align(worker: &Worker, task: &TaskHeader, body: TaskBody) -> Result<Answer, String> {
    let bytes = payload(body, "the shared positions")?;
    if !bytes.len().is_multiple_of(4) {
        return Err("the shared positions are not whole u32 values".into());
    }
    let mut guard = worker.vertical_site().lock();
    let site = guard
        .as_mut()
        .filter(|s| s.job_id == task.job_id)
        .ok_or("this site has not enrolled in the job")?;
    let mut seen = vec![false; site.sent_rows.len()];
    let mut rows = Vec::with_capacity(bytes.len() / 4);
    for c in bytes.chunks_exact(4) {
        let p = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
        if p >= seen.len() || std::mem::replace(&mut seen[p], true) {
            return Err(format!("shared position {p} is out of range or repeated"));
        }
        rows.push(site.sent_rows[p]);
    }
    if rows.is_empty() {
        return Err("the intersection is empty".into());
    }
    // The intersection's order follows blinded values that change with every
    // run's keys; every site can sort its shared ids, which makes the same
    // order, reproducible from the seed.
    let id_of = |r: usize| {
        site.table.ids[r]
            .as_deref()
            .map(str::trim)
            .unwrap_or_default()
    };
    rows.sort_by(|&a, &b| id_of(a).cmp(id_of(b)));
    let (train_pos, validation_pos) =
        cohort_datasets::vertical_holdout(rows.len(), task.validation_fraction, task.split_seed);
    let train_rows: Vec<usize> = train_pos.iter().map(|&p| rows[p]).collect();
    let validation_rows: Vec<usize> = validation_pos.iter().map(|&p| rows[p]).collect();
    let examples = |of: &[usize]| Examples {
        features: site.table.standardized(of, &train_rows),
        labels: match &site.table.labels {
            Some(labels) => of
                .iter()
                .map(|&r| f32::from(labels[r].unwrap_or(0)))
                .collect(),
            // A feature site has no labels; its examples carry zeros only so
            // that rows can be addressed.
            None => vec![0.0; of.len()],
        },
        n_features: site.table.n_features(),
    };
    let aligned = Aligned {
        train: examples(&train_rows),
        validation: examples(&validation_rows),
    };
    let report = VerticalAlignment {
        shared: rows.len(),
        train: train_rows.len(),
        validation: validation_rows.len(),
        transforms: site.table.column_transforms(&train_rows),
    };
    site.aligned = Some(Arc::new(aligned));
    Ok(bytes_answer(
        to_json(&report)?,
        Vec::new(),
        rows.len() as u64,
    ))
}

/// The blocking side of one exchange.
struct Exchange<'a>(BlockingExchange<'a, VerticalUp, VerticalDown>);

impl<'a> Exchange<'a> {
    fn open(
        runtime: &'a Runtime,
        mut grpc: HospitalServiceClient<Channel>,
        session_id: &str,
        exchange_id: &str,
    ) -> Result<Self, String> {
        let open = VerticalUp {
            frame: Some(vertical_up::Frame::Open(SplitOpen {
                session_id: session_id.to_string(),
                exchange_id: exchange_id.to_string(),
            })),
        };
        BlockingExchange::open(
            runtime,
            "vertical exchange",
            4,
            open,
            move |up| async move { grpc.vertical_exchange(up).await },
        )
        .map(Self)
    }

    fn finish(self) -> Result<(), String> {
        self.0.finish()
    }

    fn send(&mut self, frame: vertical_up::Frame) -> Result<(), String> {
        self.0.send(VerticalUp { frame: Some(frame) })
    }

    fn receive(
        &mut self,
        index: usize,
        rows: usize,
        width: usize,
    ) -> Result<(Vec<f32>, bool), String> {
        let down = self.0.receive()?;
        let (batch, activations) = match down.frame {
            Some(vertical_down::Frame::Activations(b)) => (b, true),
            Some(vertical_down::Frame::Gradients(b)) => (b, false),
            None => return Err("an empty frame in the vertical exchange".into()),
        };
        if batch.index as usize != index || batch.rows as usize != rows {
            return Err(format!(
                "batch {} of {} rows arrived where batch {index} of {rows} was due",
                batch.index, batch.rows
            ));
        }
        let values = cohort_models::parameters_from_bytes(&batch.values)
            .map_err(|e| format!("batch {index}: {e}"))?;
        if !values.is_empty() && values.len() != rows * width {
            return Err(format!(
                "batch {index} has {} values, {} expected",
                values.len(),
                rows * width
            ));
        }
        Ok((values, activations))
    }
}

fn batch_frame(index: usize, rows: usize, values: &[f32], loss: f64) -> VerticalBatch {
    VerticalBatch {
        index: index as u32,
        rows: rows as u32,
        values: cohort_models::parameters_to_bytes(values),
        loss,
    }
}

fn train(
    worker: &Worker,
    runtime: &Runtime,
    grpc: HospitalServiceClient<Channel>,
    session_id: &str,
    task: &TaskHeader,
    vertical: &VerticalTask,
    body: TaskBody,
) -> Result<Answer, String> {
    if worker.options().require_secure_aggregation {
        return Err("this hospital only sends updates under secure aggregation \
                    (--require-secure-aggregation); vertical learning sends activations"
            .to_string());
    }
    let TaskBody::Parameters(part) = body else {
        return Err("a vertical training task without its part".into());
    };
    let aligned = worker
        .vertical_site()
        .lock()
        .as_ref()
        .filter(|s| s.job_id == task.job_id)
        .and_then(|s| s.aligned.clone())
        .ok_or("this site has not been aligned for the job")?;
    let model: ModelSpec = parse(&task.model_spec_json, "model spec")?;
    let config: TrainConfig = parse(&task.train_config_json, "training configuration")?;
    config.validate().map_err(|e| e.to_string())?;
    let layout = VerticalLayout::new(&model).map_err(|e| e.to_string())?;
    let width = layout.cut_width;
    let n_features = aligned.train.n_features;
    if vertical.cut_width as usize != width || vertical.n_features as usize != n_features {
        return Err(format!(
            "the task's cut is {} wide over {} columns; this site's model is {width} over \
             {n_features}",
            vertical.cut_width, vertical.n_features
        ));
    }
    let own = layout.site_len(n_features);
    let label_site = vertical.label_site;
    let kept_dir = match (label_site, worker.data_dir()) {
        (true, None) => {
            return Err(
                "the label site keeps the top part in its data directory; this \
                        client has none (--data-dir)"
                    .to_string(),
            );
        }
        (true, Some(dir)) => Some(dir),
        (false, _) => None,
    };
    let start_top = match kept_dir {
        None if part.len() == own => None,
        None => {
            return Err(format!(
                "the part has {} values, {own} expected",
                part.len()
            ));
        }
        Some(dir) => Some(starting_top(dir, task, vertical, &layout, &part[..], own)?),
    };
    let mut bottom = BottomPart::vertical(
        &layout,
        n_features,
        &part[..own],
        &config.optimizer,
        label_site,
    )
    .map_err(|e| e.to_string())?;
    let mut top = match &start_top {
        Some(values) => {
            Some(TopPart::vertical(&layout, values, &config.optimizer).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let defence = (vertical.max_norm_defence > 0.0).then_some(vertical.max_norm_defence);
    let mut noise = rand::rng();
    let mut exchange = Exchange::open(runtime, grpc, session_id, &vertical.exchange_id)?;
    let train = &aligned.train;
    let validation = &aligned.validation;
    let n = train.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut index = 0usize;
    let (mut last_loss, mut sent, mut sent_labels) = (f64::NAN, Vec::new(), Vec::new());
    let mut leaks = Vec::with_capacity(config.epochs);
    let poison = worker.options().misbehave == Some(Misbehave::NanActivations);
    for epoch in 0..config.epochs {
        // The same shuffle at every site: the batches' rows line up.
        order.sort_unstable();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            config.seed.wrapping_add(epoch as u64),
        ));
        let mut loss_sum = 0.0;
        sent.clear();
        sent_labels.clear();
        for rows in order.chunks(config.batch_size) {
            let mut activations = bottom.forward(train, rows).map_err(|e| e.to_string())?;
            let gradient = match &mut top {
                None => {
                    if poison {
                        // Drill mode (`--misbehave nan-activations`).
                        activations[0] = f32::NAN;
                    }
                    exchange.send(vertical_up::Frame::Activations(batch_frame(
                        index,
                        rows.len(),
                        &activations,
                        0.0,
                    )))?;
                    let (gradient, _) = exchange.receive(index, rows.len(), width)?;
                    gradient
                }
                Some(top) => {
                    let (sum, is_activations) = exchange.receive(index, rows.len(), width)?;
                    if !is_activations || sum.len() != activations.len() {
                        return Err(format!(
                            "batch {index}: no activations from the other sites"
                        ));
                    }
                    for (a, s) in activations.iter_mut().zip(&sum) {
                        *a += s;
                    }
                    let labels: Vec<f32> = rows.iter().map(|&r| train.labels[r]).collect();
                    let step = top.step(&activations, &labels).map_err(|e| e.to_string())?;
                    let mut gradient = step.grad_at_cut;
                    if let Some(scale) = defence {
                        cohort_models::equalize_gradient_norms(
                            &mut gradient,
                            width,
                            scale,
                            &mut noise,
                        );
                    }
                    exchange.send(vertical_up::Frame::Gradients(batch_frame(
                        index,
                        rows.len(),
                        &gradient,
                        step.loss,
                    )))?;
                    loss_sum += step.loss * rows.len() as f64;
                    sent.extend_from_slice(&gradient);
                    sent_labels.extend(labels);
                    gradient
                }
            };
            bottom.backward(&gradient).map_err(|e| e.to_string())?;
            index += 1;
        }
        last_loss = loss_sum / n.max(1) as f64;
        if label_site {
            leaks.push(cohort_models::norm_leak_auc(&sent, width, &sent_labels));
        }
    }
    // The held-out shared rows, evaluated with the round's parts.
    let validation_rows: Vec<usize> = (0..validation.len()).collect();
    let mut logits = Vec::with_capacity(validation.len());
    for rows in validation_rows.chunks(config.batch_size) {
        let mut activations = bottom
            .predict(validation, rows)
            .map_err(|e| e.to_string())?;
        match &top {
            None => {
                exchange.send(vertical_up::Frame::Activations(batch_frame(
                    index,
                    rows.len(),
                    &activations,
                    0.0,
                )))?;
                exchange.receive(index, rows.len(), width)?;
            }
            Some(top) => {
                let (sum, _) = exchange.receive(index, rows.len(), width)?;
                if sum.len() != activations.len() {
                    return Err(format!(
                        "batch {index}: no activations from the other sites"
                    ));
                }
                for (a, s) in activations.iter_mut().zip(&sum) {
                    *a += s;
                }
                logits.extend(top.predict(&activations).map_err(|e| e.to_string())?);
                exchange.send(vertical_up::Frame::Gradients(batch_frame(
                    index,
                    rows.len(),
                    &[],
                    0.0,
                )))?;
            }
        }
        index += 1;
    }
    exchange.finish()?;
    let values = bottom.parameters().map_err(|e| e.to_string())?;
    let mut payload = cohort_models::parameters_to_bytes(&values);
    let report = match (&top, kept_dir) {
        (Some(top), Some(dir)) => {
            // The top stays here; the answer carries its digest, signed with
            // the block.
            let trained = top.parameters().map_err(|e| e.to_string())?;
            let sha256 =
                crate::kept_top::keep(dir, &task.job_id, task.round, &trained, worker.kit())
                    .map_err(|e| e.to_string())?;
            payload.extend(hex::decode(&sha256).map_err(|e| e.to_string())?);
            let evaluated = if validation.is_empty() {
                // Nothing held out: the metrics of the training rows' last
                // epoch are all there is.
                return Err("the label site has no held-out rows to evaluate on; raise \
                            data.validation_fraction"
                    .into());
            } else {
                cohort_models::metrics_from_logits(&logits, &validation.labels)
                    .map_err(|e| e.to_string())?
            };
            to_json(&LabelSiteReport {
                validation: evaluated,
                train_loss: last_loss,
                leak_auc: leaks.iter().sum::<f64>() / leaks.len().max(1) as f64,
                worst_leak_auc: leaks.iter().copied().fold(0.5, f64::max),
                defence,
            })?
        }
        _ => String::new(),
    };
    info!(
        client = worker.name(),
        job = task.job_id,
        round = task.round,
        batches = index,
        label_site,
        "vertical training done"
    );
    Ok(bytes_answer(report, payload, n as u64))
}

/// The label site's top part to start the round from: the one it kept under
/// the task's digest, or in round 1 the seeded initial top sent after the
/// block (the only top that ever comes from the coordinator: it holds nothing
/// learned).
fn starting_top(
    dir: &std::path::Path,
    task: &TaskHeader,
    vertical: &VerticalTask,
    layout: &VerticalLayout,
    part: &[f32],
    own: usize,
) -> Result<Vec<f32>, String> {
    let sha256 = vertical.top_sha256.as_str();
    if sha256.is_empty() {
        return Err("the task names no top part to start from".into());
    }
    if part.len() == own + layout.top_len() && task.round == 1 {
        let initial = part[own..].to_vec();
        let actual = cohort_models::parameters_sha256(&initial);
        if actual != sha256 {
            return Err(format!(
                "the initial top part's SHA-256 is {actual}, the task says {sha256}"
            ));
        }
        return Ok(initial);
    }
    if part.len() != own {
        return Err(format!(
            "the part has {} values, {own} expected (the top part stays at this site after \
             round 1)",
            part.len()
        ));
    }
    crate::kept_top::load(dir, &task.job_id, sha256).map_err(|e| e.to_string())
}
