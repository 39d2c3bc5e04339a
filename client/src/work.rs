//! Answering one task from local data. Plain synchronous code: the async
//! session loop runs it on a blocking thread.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cohort_datasets::{DataSpec, Examples, LocalDataset, Preprocessing};
use cohort_models::{ModelSpec, TrainConfig};
use cohort_protocol::v1::{ResultHeader, TaskHeader, TaskKind};
use serde::Serialize;
use tracing::info;

use crate::{ClientConfig, ClientError};

/// What goes back to the coordinator for one task.
pub struct Answer {
    pub header: ResultHeader,
    /// FIT: the update `local − global`, in the model's flat order.
    pub parameters: Vec<f32>,
}

impl Answer {
    pub fn refused(reason: impl Into<String>) -> Self {
        Self {
            header: ResultHeader {
                error: reason.into(),
                ..Default::default()
            },
            parameters: Vec::new(),
        }
    }
}

/// The local data prepared for one job: validated, preprocessed, split.
struct Prepared {
    key: String,
    /// Commitment to all preprocessed local rows (before the split).
    commitment: String,
    train: Examples,
    validation: Examples,
}

pub struct Worker {
    name: String,
    data: PathBuf,
    log: Option<PathBuf>,
    cache: Mutex<Option<Arc<Prepared>>>,
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
            log,
            cache: Mutex::new(None),
        })
    }

    /// Answers a task; any problem becomes a refusal with its reason.
    pub fn handle(&self, task: &TaskHeader, parameters: Vec<f32>) -> Answer {
        let kind = task.kind();
        let started = std::time::Instant::now();
        let answer = match kind {
            TaskKind::Prepare => self.prepare(task),
            TaskKind::Fit => self.fit(task, parameters),
            TaskKind::Evaluate => self.evaluate(task, &parameters),
            TaskKind::Unspecified => Err("task of unknown kind".to_string()),
        }
        .unwrap_or_else(Answer::refused);
        let mut answer = answer;
        answer.header.compute_seconds = started.elapsed().as_secs_f64();
        let outcome = if answer.header.error.is_empty() {
            "answered"
        } else {
            answer.header.error.as_str()
        };
        self.record(task, kind, outcome, answer.header.num_examples);
        answer
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

    fn load(&self, task: &TaskHeader) -> Result<LocalDataset, String> {
        let spec: DataSpec = parse(&task.data_spec_json, "data spec")?;
        LocalDataset::load(&self.data, &spec)
            .map_err(|e| format!("local data does not fit the job's schema: {e}"))
    }

    fn prepare(&self, task: &TaskHeader) -> Result<Answer, String> {
        let dataset = self.load(task)?;
        let header = ResultHeader {
            statistics_json: to_json(&dataset.statistics())?,
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
        })
    }

    /// Validated, preprocessed and split data for the task's job, cached
    /// while the job's preprocessing stays the same.
    fn prepared(&self, task: &TaskHeader) -> Result<Arc<Prepared>, String> {
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

    fn fit(&self, task: &TaskHeader, global: Vec<f32>) -> Result<Answer, String> {
        let model: ModelSpec = parse(&task.model_spec_json, "model spec")?;
        let config: TrainConfig = parse(&task.train_config_json, "training configuration")?;
        let data = self.prepared(task)?;
        check_model(&model, &data.train, &global)?;
        let outcome = cohort_models::train(&model, &global, &data.train, &config)
            .map_err(|e| format!("local training failed: {e}"))?;
        let delta: Vec<f32> = outcome
            .parameters
            .iter()
            .zip(&global)
            .map(|(w, g)| w - g)
            .collect();
        info!(
            client = self.name,
            job = task.job_id,
            round = task.round,
            loss = outcome.loss,
            "local training done"
        );
        Ok(Answer {
            header: ResultHeader {
                num_examples: outcome.examples as u64,
                parameter_count: delta.len() as u64,
                train_loss: outcome.loss,
                dataset_sha256: data.commitment.clone(),
                ..Default::default()
            },
            parameters: delta,
        })
    }

    fn evaluate(&self, task: &TaskHeader, global: &[f32]) -> Result<Answer, String> {
        let model: ModelSpec = parse(&task.model_spec_json, "model spec")?;
        let data = self.prepared(task)?;
        // With no validation split (validation_fraction = 0) the training
        // rows are all there is to report on.
        let examples = if data.validation.is_empty() {
            &data.train
        } else {
            &data.validation
        };
        check_model(&model, examples, global)?;
        let metrics = cohort_models::evaluate(&model, global, examples)
            .map_err(|e| format!("evaluation failed: {e}"))?;
        Ok(Answer {
            header: ResultHeader {
                metrics_json: to_json(&metrics)?,
                num_examples: metrics.examples,
                ..Default::default()
            },
            parameters: Vec::new(),
        })
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

fn parse<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<T, String> {
    serde_json::from_str(json).map_err(|e| format!("malformed {what} in task: {e}"))
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| format!("encoding JSON: {e}"))
}
