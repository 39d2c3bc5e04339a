//! A model developer's view of a coordinator: submit jobs, follow them,
//! download their models.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cohort_models::{Metrics, ModelCard};
use cohort_protocol::v1::developer_service_client::DeveloperServiceClient;
use cohort_protocol::v1::{
    self, GetJobRequest, GetModelRequest, ListJobsRequest, SubmitJobRequest, model_frame,
};
use cohort_protocol::{MAX_MESSAGE_BYTES, Security};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tonic::transport::Channel;

pub type Developer = DeveloperServiceClient<Channel>;

/// Connects to the coordinator at `urls`: one URL, or several separated by
/// commas (an active coordinator and its standbys), tried in order.
pub async fn connect(urls: &str, security: &Security) -> Result<Developer> {
    let endpoints = cohort_protocol::endpoints(urls, security)?;
    let several = endpoints.len() > 1;
    let mut failures = Vec::new();
    let mut channel = None;
    for (url, endpoint) in endpoints {
        let connected = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{url}: {:#}", anyhow::Error::new(e)));
                continue;
            }
        };
        // Among several, a coordinator that accepts connections but does
        // not answer (frozen, or cut off from its database) is passed over.
        if several && let Err(e) = serving(connected.clone()).await {
            failures.push(format!("{url}: {e:#}"));
            continue;
        }
        channel = Some(connected);
        break;
    }
    let Some(channel) = channel else {
        bail!("cannot reach the coordinator at {}", failures.join("; "));
    };
    Ok(DeveloperServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Whether the coordinator on `channel` answers the standard gRPC health
/// check with SERVING within a few seconds.
async fn serving(channel: Channel) -> Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = tokio::time::timeout(
        Duration::from_secs(3),
        health.check(HealthCheckRequest::default()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer to a health check within 3 s"))?
    .map_err(status_error)?
    .into_inner();
    if reply.status() != ServingStatus::Serving {
        bail!("health check says {:?}", reply.status());
    }
    Ok(())
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// A job's state as printed by `cohort job status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub job_id: String,
    pub name: String,
    pub state: String,
    pub rounds_total: u32,
    pub rounds_completed: u32,
    pub error: Option<String>,
    pub created_at: String,
    pub participants: Vec<String>,
    pub rounds: Vec<RoundView>,
    pub events: Vec<EventView>,
    /// Under differential privacy: the epsilon each hospital reported
    /// having spent on the job so far (its latest receipt), by name.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub dp_epsilon: std::collections::BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundView {
    pub round: u32,
    pub participants: Vec<String>,
    pub metrics: Option<Metrics>,
    pub train_loss: Option<f64>,
    pub attempts: u32,
    pub duration_secs: f64,
    pub model_sha256: String,
    pub slowest_fit_secs: f64,
    pub slowest_evaluate_secs: f64,
    /// Each aggregated update as the coordinator received it (masked under
    /// secure aggregation).
    pub updates: Vec<UpdateView>,
    /// Under secure aggregation: SHA-256 of the recovered sum of the
    /// survivors' encoded updates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_sha256: Option<String>,
    /// Updates left out of the round (e.g. without a valid proof), and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<cohort_ledger::Exclusion>,
    /// Encoded bytes of the round's task frames the coordinator sent and
    /// answer frames it received (absent for rounds recorded before they
    /// were counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_bytes_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer_bytes_received: Option<u64>,
    /// Training-split accuracy and ROC AUC, example-weighted over the
    /// hospitals (plain aggregation without DP only; see docs/DASHBOARD.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_auc: Option<f64>,
}

/// An update receipt: which hospital sent what, and its signature (hex; empty
/// without mutual TLS), verifiable with `cohort_protocol::update_statement`.
pub type UpdateView = cohort_ledger::UpdateRecord;

#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub at: String,
    pub message: String,
}

impl JobView {
    /// The developer API's `JobStatus` as the CLI, the Python package and
    /// the dashboard show it.
    pub fn from_wire(s: v1::JobStatus) -> Result<Self> {
        let rounds = s
            .rounds
            .into_iter()
            .map(|r| {
                let metrics = if r.metrics_json.is_empty() {
                    None
                } else {
                    Some(
                        serde_json::from_str(&r.metrics_json)
                            .context("round metrics from the coordinator")?,
                    )
                };
                Ok(RoundView {
                    round: r.round,
                    participants: r.participants,
                    metrics,
                    train_loss: r.train_loss.is_finite().then_some(r.train_loss),
                    attempts: r.attempts,
                    duration_secs: r.duration_secs,
                    model_sha256: r.model_sha256,
                    slowest_fit_secs: r.slowest_fit_secs,
                    slowest_evaluate_secs: r.slowest_evaluate_secs,
                    aggregate_sha256: (!r.aggregate_sha256.is_empty())
                        .then_some(r.aggregate_sha256),
                    task_bytes_sent: r.task_bytes_sent,
                    answer_bytes_received: r.answer_bytes_received,
                    train_accuracy: r.train_accuracy,
                    train_auc: r.train_auc,
                    excluded: r
                        .excluded
                        .into_iter()
                        .map(|e| cohort_ledger::Exclusion {
                            client: e.client,
                            reason: e.reason,
                        })
                        .collect(),
                    updates: r
                        .updates
                        .into_iter()
                        .map(|u| UpdateView {
                            client: u.client,
                            task_id: u.task_id,
                            num_examples: u.num_examples,
                            parameter_count: u.parameter_count,
                            update_sha256: u.update_sha256,
                            signature: hex::encode(&u.signature),
                            dataset_sha256: u.dataset_sha256,
                            dp_epsilon: UpdateView::epsilon_text(u.dp_epsilon),
                            proof: serde_json::from_str(&u.proof_json).ok(),
                        })
                        .collect(),
                })
            })
            .collect::<Result<Vec<RoundView>>>()?;
        let mut dp_epsilon = std::collections::BTreeMap::<String, f64>::new();
        for update in rounds.iter().flat_map(|r| &r.updates) {
            if let Some(eps) = update.epsilon() {
                let spent = dp_epsilon.entry(update.client.clone()).or_insert(0.0);
                *spent = spent.max(eps);
            }
        }
        Ok(Self {
            dp_epsilon,
            job_id: s.job_id,
            name: s.name,
            state: s.state,
            rounds_total: s.rounds_total,
            rounds_completed: s.rounds_completed,
            error: (!s.error.is_empty()).then_some(s.error),
            created_at: s.created_at,
            participants: s.participants,
            rounds,
            events: s
                .events
                .into_iter()
                .map(|e| EventView {
                    at: e.at,
                    message: e.message,
                })
                .collect(),
        })
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "completed" | "failed")
    }

    /// Metrics of the last completed round.
    pub fn last_metrics(&self) -> Option<&Metrics> {
        self.rounds.last().and_then(|r| r.metrics.as_ref())
    }
}

pub async fn submit(dev: &mut Developer, job_toml: &str) -> Result<String> {
    // Same validation the coordinator does, so mistakes show up before any
    // network round trip.
    cohort_coordinator::JobSpec::from_toml(job_toml)?;
    let reply = dev
        .submit_job(SubmitJobRequest {
            job_toml: job_toml.to_string(),
        })
        .await
        .map_err(status_error)?;
    Ok(reply.into_inner().job_id)
}

pub async fn status(dev: &mut Developer, job_id: &str) -> Result<JobView> {
    status_after(dev, job_id, 0, 0).await
}

/// A job's status with only its rounds after `rounds_after` and its events
/// after the first `events_after`: what a caller following the job has not
/// seen yet, however long the job is.
pub async fn status_after(
    dev: &mut Developer,
    job_id: &str,
    rounds_after: u32,
    events_after: u32,
) -> Result<JobView> {
    let first = job_page(dev, job_id, rounds_after, events_after).await?;
    JobView::from_wire(with_later_pages(dev, first, rounds_after, events_after).await?)
}

/// One `GetJob` reply: the coordinator pages a long job's status.
async fn job_page(
    dev: &mut Developer,
    job_id: &str,
    rounds_after: u32,
    events_after: u32,
) -> Result<v1::JobStatus> {
    Ok(dev
        .get_job(GetJobRequest {
            job_id: job_id.to_string(),
            rounds_after: Some(rounds_after),
            events_after: Some(events_after),
        })
        .await
        .map_err(status_error)?
        .into_inner())
}

/// `status`, a page asked for from `rounds_after` and `events_after`, with
/// the pages after it appended; the job's state is the last page's.
async fn with_later_pages(
    dev: &mut Developer,
    mut status: v1::JobStatus,
    mut rounds_after: u32,
    mut events_after: u32,
) -> Result<v1::JobStatus> {
    let mut page_events = status.events.len();
    while status.more_rounds || status.more_events {
        if let Some(last) = status.rounds.last() {
            rounds_after = last.round;
        }
        events_after = events_after.saturating_add(u32::try_from(page_events)?);
        let page = job_page(dev, &status.job_id, rounds_after, events_after).await?;
        if page.rounds.is_empty()
            && page.events.is_empty()
            && (page.more_rounds || page.more_events)
        {
            bail!(
                "the coordinator's status of job {} stopped moving on after round {rounds_after}",
                status.job_id
            );
        }
        page_events = page.events.len();
        status.rounds.extend(page.rounds);
        status.events.extend(page.events);
        status = v1::JobStatus {
            rounds: std::mem::take(&mut status.rounds),
            events: std::mem::take(&mut status.events),
            ..page
        };
    }
    Ok(status)
}

/// Every job the caller may read, each with all its rounds and events
/// (the list's reply leaves out what does not fit; `GetJob` pages it in).
pub async fn list(dev: &mut Developer) -> Result<Vec<JobView>> {
    let jobs = dev
        .list_jobs(ListJobsRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .jobs;
    let mut views = Vec::with_capacity(jobs.len());
    for job in jobs {
        views.push(JobView::from_wire(with_later_pages(dev, job, 0, 0).await?)?);
    }
    Ok(views)
}

/// Follows a job until it ends; with `progress`, draws a bar that advances
/// per round and shows the latest validation metrics.
pub async fn wait(dev: &mut Developer, job_id: &str, progress: bool) -> Result<JobView> {
    let bar = if progress {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} round {pos:>3}/{len:<3} [{bar:30}] {elapsed_precise} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    // Polls ask only for what is new, so that following a long job with
    // many hospitals stays cheap; the finished job is read whole once.
    let (mut seen_events, mut last_round, mut last_metrics) = (0u32, 0u32, None);
    loop {
        let view = status_after(dev, job_id, last_round, seen_events).await?;
        bar.set_length(u64::from(view.rounds_total));
        bar.set_position(u64::from(view.rounds_completed));
        for e in &view.events {
            bar.println(format!("  note: {}", e.message));
        }
        seen_events += view.events.len() as u32;
        if let Some(round) = view.rounds.last() {
            last_round = round.round;
            last_metrics = round.metrics.clone();
        }
        let message = match (view.state.as_str(), last_metrics.as_ref()) {
            ("pending", _) => "waiting for clients".to_string(),
            (_, Some(m)) => format!(
                "loss {:.4}  acc {:.3}  auc {:.3}",
                m.loss, m.accuracy, m.auc
            ),
            (state, None) if view.rounds_completed == 0 => format!("{state}: preparing"),
            (state, None) => state.to_string(),
        };
        bar.set_message(message);
        if view.is_finished() {
            bar.finish();
            return status(dev, job_id).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Downloads a job's model (latest round, or `round`) into `out` as
/// A hospital's committed update in a recorded round (update proofs under
/// secure aggregation): its Pedersen commitments, as the coordinator keeps
/// them. The caller checks them against the ledger's SHA-256.
pub async fn fetch_commitments(
    dev: &mut Developer,
    job_id: &str,
    round: u32,
    client: &str,
) -> Result<Vec<u8>> {
    // 32 bytes per parameter of models far larger than Cohort proves.
    const LIMIT: usize = 1 << 31;
    let stream = dev
        .get_commitments(v1::GetCommitmentsRequest {
            job_id: job_id.to_string(),
            round,
            client: client.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    collect_chunks(stream, LIMIT, "commitments").await
}

/// The bytes of a stream of chunks, refusing more than `limit` of `what`.
async fn collect_chunks(
    mut stream: tonic::Streaming<v1::Chunk>,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        bytes.extend_from_slice(&chunk.data);
        if bytes.len() > limit {
            bail!("the coordinator sent more than {limit} bytes of {what}");
        }
    }
    Ok(bytes)
}

/// The setup ceremony file a job's keys came from, as the coordinator
/// serves it. The caller checks it against the ledger's SHA-256.
pub async fn fetch_setup_ceremony(dev: &mut Developer, job_id: &str) -> Result<Vec<u8>> {
    // Far above a ceremony for 10^6 parameters (about 18 GiB is 10^7).
    const LIMIT: usize = 1 << 36;
    let stream = dev
        .get_setup_ceremony(v1::GetSetupCeremonyRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    collect_chunks(stream, LIMIT, "setup ceremony").await
}

/// `model.safetensors` + `model.json`, verifying its digest.
pub async fn download_model(
    dev: &mut Developer,
    job_id: &str,
    round: Option<u32>,
    out: &Path,
) -> Result<ModelCard> {
    let mut stream = dev
        .get_model(GetModelRequest {
            job_id: job_id.to_string(),
            round: round.unwrap_or(0),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let header = match stream
        .message()
        .await
        .map_err(status_error)?
        .and_then(|f| f.frame)
    {
        Some(model_frame::Frame::Header(h)) => h,
        _ => bail!("the coordinator's model stream did not start with a header"),
    };
    let card: ModelCard =
        serde_json::from_str(&header.card_json).context("model card from the coordinator")?;
    let expected = usize::try_from(header.safetensors_bytes).context("model size")?;
    let mut body = Vec::with_capacity(expected.min(1 << 30));
    while let Some(frame) = stream.message().await.map_err(status_error)? {
        match frame.frame {
            Some(model_frame::Frame::Chunk(c)) => body.extend_from_slice(&c.data),
            _ => bail!("unexpected frame in the model stream"),
        }
        if body.len() > expected {
            bail!("the coordinator sent more model bytes than announced");
        }
    }
    if body.len() != expected {
        bail!(
            "model download incomplete: {} of {expected} bytes",
            body.len()
        );
    }
    // Checked before anything is written: the parameters decode and match
    // the card.
    cohort_models::params_from_safetensors(&card, &body)?;
    // Written byte for byte as received, so the coordinator's signature
    // (model.sig) covers exactly these files.
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut files = vec![
        ("model.safetensors", body),
        ("model.json", header.card_json.into_bytes()),
    ];
    if !header.signature_bundle_json.is_empty() {
        files.push(("model.sig", header.signature_bundle_json.into_bytes()));
    }
    for (name, bytes) in files {
        let path = out.join(name);
        let tmp = out.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(card)
}
