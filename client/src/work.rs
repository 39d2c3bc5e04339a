//! Answering one task from local data. Plain synchronous code: the async
//! session loop runs it on a blocking thread.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cohort_datasets::{
    DataError, DataSource, DataSpec, Examples, LocalDataset, Preprocessing, RawTable,
};
use cohort_models::{ModelSpec, TrainConfig};
use cohort_privacy::dp::{DpLevel, HospitalPlan, JobDp};
use cohort_protocol::v1::{ResultHeader, TaskHeader, TaskKind};
use serde::Serialize;
use tracing::info;

use crate::budget::Budget;
use crate::{ClientConfig, ClientError, ClientOptions};

/// What goes back to the coordinator for one task.
pub struct Answer {
    pub header: ResultHeader,
    /// FIT: the update `local − global`, in the model's flat order.
    pub parameters: Vec<f32>,
    /// FIT under secure aggregation: the masked update, packed
    /// (`cohort_privacy::quantize::pack`). `parameters` is then empty.
    pub masked: Vec<u8>,
}

impl Answer {
    pub fn refused(reason: impl Into<String>) -> Self {
        Self {
            header: ResultHeader {
                error: reason.into(),
                ..Default::default()
            },
            parameters: Vec::new(),
            masked: Vec::new(),
        }
    }
}

/// The local data prepared for one job: validated, preprocessed, split.
pub(crate) struct Prepared {
    key: String,
    /// Commitment to all preprocessed local rows (before the split).
    pub(crate) commitment: String,
    pub(crate) train: Examples,
    validation: Examples,
}

pub struct Worker {
    name: String,
    data: DataSource,
    /// A database's or an export's table, read once (see [`Worker::table`]).
    snapshot: Mutex<Option<Arc<RawTable>>>,
    log: Option<PathBuf>,
    cache: Mutex<Option<Arc<Prepared>>>,
    kit: Option<Arc<cohort_identity::Kit>>,
    options: ClientOptions,
    secagg: crate::secagg::Sessions<cohort_privacy::secagg::ClientRound>,
    he: crate::secagg::Sessions<cohort_privacy::he::HospitalRound>,
    budget: Budget,
    /// The last update trained under DP, resent as is when the coordinator
    /// retries the same round from the same model, also after this process
    /// restarted: sending it again costs no privacy, training again would.
    paid: crate::paid::PaidUpdate,
    /// Update proofs: the proving key of the current job.
    proving_keys: crate::proofs::KeyCache,
    /// Vertical split learning: this site's key and alignment.
    vertical: crate::vertical::SiteState,
    /// Where the client keeps its own records (`--data-dir`); a label site
    /// keeps its vertical top parts there.
    data_dir: Option<std::path::PathBuf>,
    /// Noisy statistics already released for the current DP job.
    released_statistics: crate::statistics::Released,
}

#[derive(Serialize)]
struct LogLine<'a> {
    at: String,
    job_id: &'a str,
    round: u32,
    task: &'a str,
    outcome: &'a str,
    examples: u64,
}

impl Worker {
    pub fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        let log = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| ClientError::DataDir {
                    path: dir.clone(),
                    source,
                })?;
                Some(dir.join("participation.jsonl"))
            }
            None => None,
        };
        Ok(Self {
            name: config.name.clone(),
            data: config.data.clone(),
            snapshot: Mutex::new(None),
            log,
            cache: Mutex::new(None),
            kit: config.security.kit_arc(),
            options: config.options.clone(),
            secagg: crate::secagg::Sessions::default(),
            he: crate::secagg::Sessions::default(),
            budget: Budget::open(config.data_dir.as_deref(), config.options.budget)?,
            paid: crate::paid::PaidUpdate::new(config.data_dir.as_deref()),
            proving_keys: crate::proofs::KeyCache::new(config.data_dir.as_deref()),
            vertical: crate::vertical::SiteState::default(),
            data_dir: config.data_dir.clone(),
            released_statistics: Default::default(),
        })
    }

    /// Answers a task; any problem becomes a refusal with its reason.
    pub fn handle(&self, task: &TaskHeader, body: crate::TaskBody) -> Answer {
        let (parameters, payload) = match body {
            crate::TaskBody::Parameters(p) => (p, Vec::new()),
            crate::TaskBody::Bytes(b) => (Vec::new(), b),
        };
        let kind = task.kind();
        let started = std::time::Instant::now();
        let answer = match (kind, &task.secagg, &task.he) {
            (TaskKind::Prepare, ..) => self.prepare(task),
            (TaskKind::Fit, None, Some(he)) => {
                self.encrypted_fit(task, he, || self.train(task, &parameters))
            }
            (TaskKind::HeKeygen, _, Some(he)) => self.he_keygen(task, he),
            (TaskKind::HeDecrypt, _, Some(he)) => self.he_decrypt(task, he, &payload),
            (TaskKind::HeKeygen | TaskKind::HeDecrypt, _, None) => {
                Err("homomorphic-aggregation task without its round description".to_string())
            }
            (TaskKind::Fit, None, None) if self.options.require_secure_aggregation => {
                Err("this hospital only sends updates under secure aggregation \
                 (--require-secure-aggregation), and the task asks for a plain update"
                    .to_string())
            }
            (TaskKind::Fit, None, None) => self.plain_fit(task, parameters),
            (TaskKind::Fit, Some(secagg), _) => {
                self.masked_fit(task, secagg, || self.train(task, &parameters))
            }
            (TaskKind::SecaggAdvertise, Some(secagg), _) => self.advertise(task, secagg),
            (TaskKind::SecaggShare, Some(secagg), _) => self.share_keys(task, secagg),
            (TaskKind::SecaggUnmask, Some(secagg), _) => self.unmask(task, secagg),
            (TaskKind::SecaggStatistics, ..)
                if self.options.misbehave == Some(crate::misbehave::Misbehave::NoStatistics) =>
            {
                Err("task of unknown kind".to_string())
            }
            (TaskKind::SecaggStatistics, Some(secagg), _) => self.masked_statistics(task, secagg),
            (
                TaskKind::SecaggAdvertise
                | TaskKind::SecaggShare
                | TaskKind::SecaggUnmask
                | TaskKind::SecaggStatistics,
                None,
                _,
            ) => Err("secure-aggregation task without its round description".to_string()),
            (TaskKind::Evaluate, ..) => self.evaluate(task, &parameters),
            (TaskKind::Vertical, ..) => {
                Err("a vertical task needs the session's connection".to_string())
            }
            (TaskKind::Unspecified, ..) => Err("task of unknown kind".to_string()),
        }
        .unwrap_or_else(Answer::refused);
        let mut answer = answer;
        answer.header.compute_seconds = started.elapsed().as_secs_f64();
        self.record_answer(task, &answer);
        answer
    }

    /// Adds the answer to the hospital's participation log.
    pub(crate) fn record_answer(&self, task: &TaskHeader, answer: &Answer) {
        let outcome = if answer.header.error.is_empty() {
            "answered"
        } else {
            answer.header.error.as_str()
        };
        self.record(task, task.kind(), outcome, answer.header.num_examples);
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn kit(&self) -> Option<&cohort_identity::Kit> {
        self.kit.as_deref()
    }

    pub(crate) fn options(&self) -> &ClientOptions {
        &self.options
    }

    pub(crate) fn proving_keys(&self) -> &crate::proofs::KeyCache {
        &self.proving_keys
    }

    pub(crate) fn vertical_site(&self) -> &crate::vertical::SiteState {
        &self.vertical
    }

    /// The hospital's table. A file is read afresh for every task; a
    /// database or a FHIR export is read at the first call and kept, so that
    /// every round of every job sees the same rows.
    pub fn table(&self) -> Result<Arc<RawTable>, DataError> {
        if self.data.is_file() {
            return self.data.read().map(Arc::new);
        }
        let mut snapshot = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(table) = snapshot.as_ref() {
            return Ok(Arc::clone(table));
        }
        let table = Arc::new(self.data.read()?);
        *snapshot = Some(Arc::clone(&table));
        Ok(table)
    }

    /// The data source, for messages.
    pub(crate) fn data_source(&self) -> &DataSource {
        &self.data
    }

    pub(crate) fn released_statistics(&self) -> &crate::statistics::Released {
        &self.released_statistics
    }

    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }

    pub(crate) fn data_dir(&self) -> Option<&std::path::Path> {
        self.data_dir.as_deref()
    }

    /// A plain FIT: with a proof when the job asks for one; under
    /// `--misbehave` the drill's update.
    fn plain_fit(&self, task: &TaskHeader, global: Vec<f32>) -> Result<Answer, String> {
        let answer = self.fit(task, global)?;
        self.plain_answer(task, answer)
    }

    /// What leaves in plain mode once an update is trained (whole model,
    /// or a SplitFed part): with a proof that it is well formed when the
    /// job asks for one; under `--misbehave` the drill's update.
    pub(crate) fn plain_answer(&self, task: &TaskHeader, answer: Answer) -> Result<Answer, String> {
        if !task.proofs_json.is_empty() {
            let wanted: cohort_proofs::UpdateProofTask =
                parse(&task.proofs_json, "update-proof settings")?;
            return self.proved(task, answer, &wanted);
        }
        let mut answer = answer;
        if let Some(m) = self.options.misbehave {
            m.tamper(&mut answer.parameters);
        }
        Ok(answer)
    }

    pub(crate) fn sessions(&self) -> &crate::secagg::Sessions<cohort_privacy::secagg::ClientRound> {
        &self.secagg
    }

    pub(crate) fn he_sessions(
        &self,
    ) -> &crate::secagg::Sessions<cohort_privacy::he::HospitalRound> {
        &self.he
    }

    /// Where this hospital keeps its own records, if it has a data dir.
    pub(crate) fn records_dir(&self) -> Option<&std::path::Path> {
        self.log.as_deref().and_then(|p| p.parent())
    }

    /// The hospital's own record of what it took part in.
    fn record(&self, task: &TaskHeader, kind: TaskKind, outcome: &str, examples: u64) {
        let Some(path) = &self.log else { return };
        let line = LogLine {
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            job_id: &task.job_id,
            round: task.round,
            task: kind.as_str_name(),
            outcome,
            examples,
        };
        let written = serde_json::to_string(&line).map(|json| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{json}"))
        });
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(path = %path.display(), "could not write the participation log");
        }
    }

    pub(crate) fn load(&self, task: &TaskHeader) -> Result<LocalDataset, String> {
        let spec: DataSpec = parse(&task.data_spec_json, "data spec")?;
        let table = self
            .table()
            .map_err(|e| format!("local data {}: {e}", self.data))?;
        LocalDataset::from_table(&table, &spec)
            .map_err(|e| format!("local data does not fit the job's schema: {e}"))
    }

    fn prepare(&self, task: &TaskHeader) -> Result<Answer, String> {
        let dataset = self.load(task)?;
        // Admission: the split is not known yet, so the training rows are
        // estimated; training checks again with the exact count. The
        // statistics passes still to come count too.
        let job = self.job_dp(task)?;
        if let Some(job) = &job {
            let rows = dataset.n_rows();
            let held_out = (rows as f64 * task.validation_fraction).round() as usize;
            let plan = self.dp_plan(task, job, rows.saturating_sub(held_out))?;
            let statistics = job
                .noised_statistics
                .then(|| job.statistics_plan())
                .transpose()
                .map_err(|e| format!("cannot meet the job's DP settings: {e}"))?;
            self.budget
                .admit(&task.job_id, &plan, statistics.as_ref())?;
        }
        // Under secure aggregation the statistics follow as masked sums
        // (SECAGG_STATISTICS); a hospital that requires it never sends
        // them in the clear, nor does one in a job under DP. A job that
        // gives its preprocessing publicly asks for none.
        let statistics_json = if task.secure_statistics || task.public_preprocessing {
            String::new()
        } else if job.is_some() {
            return Err(
                "the job promises differential privacy and asks for this hospital's \
                 statistics in the clear; they leave only noised and summed"
                    .to_string(),
            );
        } else if self.options.require_secure_aggregation {
            return Err(
                "this hospital only shares its statistics under secure aggregation \
                 (--require-secure-aggregation), and the job asks for them in the clear"
                    .to_string(),
            );
        } else {
            to_json(&dataset.statistics())?
        };
        let header = ResultHeader {
            statistics_json,
            schema_json: to_json(dataset.schema())?,
            num_examples: dataset.n_rows() as u64,
            ..Default::default()
        };
        info!(
            client = self.name,
            job = task.job_id,
            rows = dataset.n_rows(),
            "data validated for job"
        );
        Ok(Answer {
            header,
            parameters: Vec::new(),
            masked: Vec::new(),
        })
    }

    /// Validated, preprocessed and split data for the task's job, cached
    /// while the job's preprocessing stays the same.
    pub(crate) fn prepared(&self, task: &TaskHeader) -> Result<Arc<Prepared>, String> {
        let key = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            task.job_id, task.preprocessing_json, task.split_seed, task.validation_fraction
        );
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.as_ref().filter(|p| p.key == key) {
            return Ok(p.clone());
        }
        let preprocessing: Preprocessing = parse(&task.preprocessing_json, "preprocessing")?;
        let dataset = self.load(task)?;
        let examples = dataset
            .preprocess(&preprocessing)
            .map_err(|e| format!("preprocessing local data: {e}"))?;
        let commitment = examples.commitment();
        let (train, validation) =
            examples.stratified_split(task.validation_fraction, task.split_seed);
        let prepared = Arc::new(Prepared {
            key,
            commitment,
            train,
            validation,
        });
        *cache = Some(prepared.clone());
        Ok(prepared)
    }

    /// Local training from the global parameters: the update `local −
    /// global` and what the answer reports about it.
    pub(crate) fn train(&self, task: &TaskHeader, global: &[f32]) -> Result<Trained, String> {
        let model: ModelSpec = parse(&task.model_spec_json, "model spec")?;
        let mut config: TrainConfig = parse(&task.train_config_json, "training configuration")?;
        let data = self.prepared(task)?;
        check_model(&model, &data.train, global)?;
        let job = self.job_dp(task)?;
        let retry_key = format!(
            "{}\u{0}{}\u{0}{}",
            task.job_id, task.round, task.parameters_sha256
        );
        let plan = match &job {
            Some(job) => {
                if let Some(trained) = self.paid.get(&retry_key) {
                    info!(
                        client = self.name,
                        job = task.job_id,
                        round = task.round,
                        "round retried: resending the update already paid for"
                    );
                    return Ok(trained);
                }
                let plan = self.dp_plan(task, job, data.train.len())?;
                if job.policy.level == DpLevel::Record {
                    check_record_plan(&plan, job, &config, data.train.len())?;
                }
                self.budget.admit(&task.job_id, &plan, None)?;
                if job.policy.level == DpLevel::Record {
                    config.dp = Some(cohort_models::DpSgdConfig {
                        noise_multiplier: plan.noise_multiplier,
                        max_grad_norm: job.policy.max_grad_norm,
                    });
                }
                Some(plan)
            }
            None => None,
        };
        let outcome = cohort_models::train(&model, global, &data.train, &config)
            .map_err(|e| format!("local training failed: {e}"))?;
        // Without DP the trained model's quality on the training split is
        // reported like its training loss; under DP neither leaves.
        let train_metrics = match &job {
            None => Some(
                cohort_models::evaluate(&model, &outcome.parameters, &data.train)
                    .map_err(|e| format!("scoring the trained model: {e}"))?,
            ),
            Some(_) => None,
        };
        // Spending reaches the disk before the update can leave.
        let dp_epsilon = match (&job, &plan) {
            (Some(job), Some(plan)) => {
                Some(
                    self.budget
                        .spend_round(&task.job_id, job, plan, task.round)?,
                )
            }
            _ => None,
        };
        let mut delta: Vec<f32> = outcome
            .parameters
            .iter()
            .zip(global)
            .map(|(w, g)| w - g)
            .collect();
        // Drill: a free rider trains (and reports its examples) but sends
        // nothing of it, in every aggregation mode.
        if self.options.misbehave == Some(crate::misbehave::Misbehave::Freeride) {
            delta.iter_mut().for_each(|v| *v = 0.0);
        }
        // Client level: what leaves the hospital is bounded by the clipping
        // norm; the noise is added to the sum (by the coordinator in plain
        // mode, by every hospital under secure aggregation).
        let client_level = match (&job, &plan) {
            (Some(job), Some(plan)) if job.policy.level == DpLevel::Client => {
                // With adaptive clipping only the coordinator knows the
                // round's bound (plain mode, where it is trusted anyway).
                if job.policy.clipping == cohort_privacy::dp::Clipping::Fixed {
                    clip_l2(&mut delta, job.policy.clipping_norm);
                }
                Some(plan.noise_multiplier)
            }
            _ => None,
        };
        info!(
            client = self.name,
            job = task.job_id,
            round = task.round,
            loss = outcome.loss,
            "local training done"
        );
        let trained = Trained {
            delta,
            examples: outcome.examples as u64,
            // Under DP the training loss is a statistic of the records that
            // the noise does not cover: it stays in the hospital.
            loss: if dp_epsilon.is_some() {
                f64::NAN
            } else {
                outcome.loss
            },
            commitment: data.commitment.clone(),
            dp_epsilon,
            client_level,
            train_metrics,
        };
        if dp_epsilon.is_some() {
            self.paid.keep(&retry_key, &trained)?;
        }
        Ok(trained)
    }

    /// The job's DP promise from the task; refuses a job without one when
    /// the hospital capped its privacy spending.
    pub(crate) fn job_dp(&self, task: &TaskHeader) -> Result<Option<JobDp>, String> {
        if task.dp_json.is_empty() {
            if self.budget.is_capped() {
                return Err(
                    "this hospital has a privacy budget (--max-epsilon) and only \
                     joins jobs with a [privacy.dp] table"
                        .to_string(),
                );
            }
            return Ok(None);
        }
        let job: JobDp = parse(&task.dp_json, "differential-privacy settings")?;
        job.policy
            .validate()
            .map_err(|(key, msg)| format!("malformed DP settings in task: {key}: {msg}"))?;
        Ok(Some(job))
    }

    /// This hospital's plan for a DP job: the one it already follows, or a
    /// new one from its training rows.
    pub(crate) fn dp_plan(
        &self,
        task: &TaskHeader,
        job: &JobDp,
        train_rows: usize,
    ) -> Result<HospitalPlan, String> {
        if let Some(plan) = self.budget.plan_of(&task.job_id) {
            return Ok(plan);
        }
        if job.policy.level == DpLevel::Client {
            return job
                .client_plan()
                .map_err(|e| format!("cannot meet the job's DP settings: {e}"));
        }
        let sgd = cohort_models::DpSgdPlan::new(train_rows, job.batch_size as usize);
        job.plan(sgd.sampling_rate, sgd.steps(job.local_epochs as usize))
            .map_err(|e| format!("cannot meet the job's DP settings: {e}"))
    }

    pub(crate) fn fit(&self, task: &TaskHeader, global: Vec<f32>) -> Result<Answer, String> {
        Ok(self.train(task, &global)?.into_answer())
    }

    /// The round's model on the validation split; in a valued round also
    /// every candidate model's loss (see [`Worker::score_coalitions`]).
    fn evaluate(&self, task: &TaskHeader, body: &[f32]) -> Result<Answer, String> {
        let model: ModelSpec = parse(&task.model_spec_json, "model spec")?;
        let data = self.prepared(task)?;
        // With no validation split (validation_fraction = 0) the training
        // rows are all there is to report on.
        let examples = if data.validation.is_empty() {
            &data.train
        } else {
            &data.validation
        };
        let (global, candidate_losses) = if task.valuation_coalitions.is_empty() {
            (body, Vec::new())
        } else {
            let players = task.valuation_player_examples.len();
            let per_model = body.len() / (players + 2);
            if players == 0 || players > 64 || per_model * (players + 2) != body.len() {
                return Err(format!(
                    "a valuation task of {players} players cannot carry {} parameters \
                     (the model, the starting model and one update per player)",
                    body.len()
                ));
            }
            let (global, rest) = body.split_at(per_model);
            let losses = self.score_coalitions(task, &model, examples, rest, per_model)?;
            (global, losses)
        };
        check_model(&model, examples, global)?;
        let metrics = cohort_models::evaluate(&model, global, examples)
            .map_err(|e| format!("evaluation failed: {e}"))?;
        Ok(Answer {
            header: ResultHeader {
                metrics_json: to_json(&metrics)?,
                num_examples: metrics.examples,
                candidate_losses,
                ..Default::default()
            },
            parameters: Vec::new(),
            masked: Vec::new(),
        })
    }
}

impl Worker {
    /// Contribution valuation: the mean validation loss of each candidate
    /// model the task's coalitions name, built here from the round's
    /// starting model and the players' updates (`start_and_updates`).
    fn score_coalitions(
        &self,
        task: &TaskHeader,
        model: &ModelSpec,
        examples: &Examples,
        start_and_updates: &[f32],
        per_model: usize,
    ) -> Result<Vec<f64>, String> {
        let (start, updates) = start_and_updates.split_at(per_model);
        check_model(model, examples, start)?;
        let players: Vec<(&[f32], u64)> = updates
            .chunks(per_model)
            .zip(&task.valuation_player_examples)
            .map(|(u, &n)| (u, n))
            .collect();
        let coalitions = &task.valuation_coalitions;
        if coalitions.len().saturating_mul(per_model) > cohort_models::MAX_CANDIDATE_VALUES {
            return Err(format!(
                "{} candidate models of {per_model} parameters exceed what a hospital scores \
                 in one task",
                coalitions.len()
            ));
        }
        cohort_models::coalition_losses(model, start, &players, coalitions, examples)
            .map_err(|e| format!("scoring candidate models failed: {e}"))
    }
}

/// The outcome of local training.
#[derive(Clone)]
pub(crate) struct Trained {
    pub delta: Vec<f32>,
    pub examples: u64,
    pub loss: f64,
    /// Commitment to the preprocessed rows (`Examples::commitment`).
    pub commitment: String,
    /// Under DP: the job's epsilon spent so far, this update included.
    pub dp_epsilon: Option<f64>,
    /// Client-level DP: the noise multiplier of the sum (`delta` is
    /// clipped; under secure aggregation this hospital adds its share).
    pub client_level: Option<f64>,
    /// Without DP: the trained model on the training split.
    pub train_metrics: Option<cohort_models::Metrics>,
}

impl Trained {
    /// The plain answer: the update itself, signed when it is submitted.
    pub(crate) fn into_answer(self) -> Answer {
        Answer {
            header: ResultHeader {
                num_examples: self.examples,
                parameter_count: self.delta.len() as u64,
                train_loss: self.loss,
                dataset_sha256: self.commitment,
                dp_epsilon: self.dp_epsilon.unwrap_or(0.0),
                train_accuracy: self.train_metrics.as_ref().map(|m| m.accuracy),
                train_auc: self.train_metrics.as_ref().map(|m| m.auc),
                ..Default::default()
            },
            parameters: self.delta,
            masked: Vec::new(),
        }
    }
}

/// DP-SGD must run exactly the mechanism the hospital accounts for: the
/// task's training configuration has to match the job's DP promise, and
/// the rows must be those the plan was made for (a data file replaced in
/// the middle of a job would change the sampling rate).
fn check_record_plan(
    plan: &HospitalPlan,
    job: &JobDp,
    config: &TrainConfig,
    train_rows: usize,
) -> Result<(), String> {
    if config.epochs != job.local_epochs as usize || config.batch_size != job.batch_size as usize {
        return Err(format!(
            "the task trains {} epochs in batches of {}, but the job's DP promise was made for \
             {} and {}",
            config.epochs, config.batch_size, job.local_epochs, job.batch_size
        ));
    }
    let live = cohort_models::DpSgdPlan::new(train_rows, config.batch_size);
    if live.sampling_rate != plan.sampling_rate || live.steps(config.epochs) != plan.steps_per_round
    {
        return Err(format!(
            "the local training rows changed during the job ({train_rows} now): DP-SGD would \
             sample at rate {} instead of the {} this hospital accounts for",
            live.sampling_rate, plan.sampling_rate
        ));
    }
    Ok(())
}

/// Scales `values` down to L2 norm `bound` if it is longer.
fn clip_l2(values: &mut [f32], bound: f64) {
    let norm = values
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt();
    if norm > bound {
        let factor = (bound / norm) as f32;
        values.iter_mut().for_each(|v| *v *= factor);
    }
}

/// Refuses a model that does not fit the local feature layout, or whose
/// parameters are the wrong length or not finite.
fn check_model(model: &ModelSpec, data: &Examples, params: &[f32]) -> Result<(), String> {
    model
        .validate()
        .map_err(|e| format!("malformed model: {e}"))?;
    cohort_models::check_parameters(model, data.n_features, params)
        .map_err(|e| format!("malformed parameters: {e}"))
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<T, String> {
    serde_json::from_str(json).map_err(|e| format!("malformed {what} in task: {e}"))
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| format!("encoding JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_models::OptimizerSpec;
    use cohort_privacy::dp::DpPolicy;

    #[test]
    fn dp_sgd_runs_only_the_mechanism_that_was_accounted() {
        let job = JobDp {
            policy: DpPolicy::new(DpLevel::Record, Some(2.0), None),
            rounds: 3,
            local_epochs: 2,
            batch_size: 32,
            noised_statistics: true,
        };
        let sgd = cohort_models::DpSgdPlan::new(320, 32);
        let plan = job.plan(sgd.sampling_rate, sgd.steps(2)).unwrap();
        let mut config = TrainConfig {
            epochs: 2,
            batch_size: 32,
            optimizer: OptimizerSpec::Sgd {
                learning_rate: 0.1,
                momentum: 0.0,
            },
            seed: 1,
            proximal_mu: None,
            dp: None,
        };
        check_record_plan(&plan, &job, &config, 320).unwrap();
        let changed = check_record_plan(&plan, &job, &config, 300).unwrap_err();
        assert!(changed.contains("rows changed"), "{changed}");
        config.epochs = 5;
        let more = check_record_plan(&plan, &job, &config, 320).unwrap_err();
        assert!(more.contains("5 epochs"), "{more}");
    }
}
