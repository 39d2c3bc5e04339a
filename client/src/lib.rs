//! The hospital client: runs next to the data, dials out to the
//! coordinator, pulls tasks, and answers them from local data.
//!
//! What leaves the hospital: the data-quality summary (counts), aggregate
//! statistics for preprocessing (per-column counts, means, variances,
//! medians, category counts), parameter updates and evaluation metrics.
//! Never a row.

pub mod budget;
mod exchange;
mod he;
pub mod kept_top;
pub mod misbehave;
mod paid;
mod proofs;
mod secagg;
mod split;
mod statistics;
mod vertical;
mod work;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cohort_protocol::v1::hospital_service_client::HospitalServiceClient;
use cohort_protocol::v1::{
    PullTaskRequest, RegisterRequest, ResultFrame, TaskHeader, result_frame, task_frame,
};
use cohort_protocol::{
    MAX_MESSAGE_BYTES, PROTOCOL_VERSION, ParameterAssembler, Security, endpoints,
};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use tracing::{info, warn};

pub use work::{Answer, Worker};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host:port` (mutual TLS) or `http://host:port` (insecure)
    /// of the coordinator.
    pub coordinator: String,
    pub security: Security,
    /// The hospital's data: a file, a database query or a FHIR export.
    pub data: cohort_datasets::DataSource,
    pub name: String,
    /// Where the client keeps its own records (participation log).
    pub data_dir: Option<PathBuf>,
    pub options: ClientOptions,
}

/// The hospital's policy and record-keeping choices.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Refuse to send an update except under secure aggregation.
    pub require_secure_aggregation: bool,
    /// Keep a copy of each encoded update contributed under secure
    /// aggregation in `data_dir/contributions/` (the hospital's own record;
    /// it never leaves the hospital).
    pub keep_contributions: bool,
    /// Fault injection for drills and tests: stop the client, as if the
    /// machine died, when a task of this stage arrives.
    pub vanish_at: Option<VanishAt>,
    /// The hospital's differential-privacy budget (`--max-epsilon`,
    /// `--delta`); `None` keeps the cap an earlier run set, if any.
    pub budget: Option<budget::BudgetLimit>,
    /// Drill mode (`--misbehave`, a testing aid): send a tampered update
    /// or proof in FIT tasks.
    pub misbehave: Option<misbehave::Misbehave>,
}

/// The secure-aggregation stage at which a client told to vanish stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VanishAt {
    /// Selected, but never advertises keys.
    Advertise,
    /// Advertised keys, never shares them.
    Share,
    /// Shared keys, never sends its masked update.
    MaskedFit,
    /// Sent its masked (or encrypted) update, never helps unmask (or
    /// decrypt).
    Unmask,
    /// Trained (and recorded its privacy spending), never sends the update:
    /// a crash between training and sending.
    BeforeSend,
    /// Shared keys of a preparation's statistics session, never sends its
    /// masked statistics.
    Statistics,
}

impl VanishAt {
    fn matches(self, task: &TaskHeader) -> bool {
        use cohort_protocol::v1::TaskKind;
        // The round stages are drilled in rounds only; preparation's
        // statistics sessions use the same stages.
        if task
            .secagg
            .as_ref()
            .is_some_and(|s| !s.statistics_json.is_empty())
        {
            return self == VanishAt::Statistics && task.kind() == TaskKind::SecaggStatistics;
        }
        let protected = task.secagg.is_some() || task.he.is_some();
        matches!(
            (self, task.kind(), protected),
            (
                VanishAt::Advertise,
                TaskKind::SecaggAdvertise | TaskKind::HeKeygen,
                _
            ) | (VanishAt::Share, TaskKind::SecaggShare, _)
                | (VanishAt::MaskedFit, TaskKind::Fit, true)
                | (
                    VanishAt::Unmask,
                    TaskKind::SecaggUnmask | TaskKind::HeDecrypt,
                    _
                )
        )
    }
}

impl std::str::FromStr for VanishAt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "advertise" => Ok(VanishAt::Advertise),
            "share" => Ok(VanishAt::Share),
            "masked-fit" => Ok(VanishAt::MaskedFit),
            "unmask" => Ok(VanishAt::Unmask),
            "before-send" => Ok(VanishAt::BeforeSend),
            "statistics" => Ok(VanishAt::Statistics),
            other => Err(format!(
                "unknown stage `{other}` (expected advertise, share, masked-fit, unmask, \
                 before-send or statistics)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Url(#[from] cohort_protocol::EndpointError),
    #[error("local data {source_name}: {source}")]
    Data {
        source_name: String,
        // Boxed: a DataError is large and this is the rare path.
        source: Box<cohort_datasets::DataError>,
    },
    #[error("the coordinator refused this client: {0}")]
    Refused(String),
    #[error(transparent)]
    Budget(#[from] budget::BudgetError),
    #[error("client data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a session with the coordinator ended.
enum SessionEnd {
    /// Connection trouble or a coordinator restart: try again later.
    Retry(String),
    Fatal(ClientError),
    /// Fault injection (`ClientOptions::vanish_at`): stop at once.
    Vanished,
}

/// Runs the client until `shutdown` completes or a fatal error occurs.
pub async fn run(
    config: ClientConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    // Several addresses: an active coordinator and its standbys, tried in
    // turn whenever a session ends.
    let endpoints = endpoints(&config.coordinator, &config.security)?;
    let worker = Arc::new(Worker::new(&config)?);
    let table = worker.table().map_err(|source| ClientError::Data {
        source_name: config.data.to_string(),
        source: Box::new(source),
    })?;
    let summary = table.quality();
    drop(table);
    let summary_json = serde_json::to_string(&summary).unwrap_or_default();
    info!(
        client = config.name,
        rows = summary.rows,
        data = %config.data,
        coordinator = config.coordinator,
        "client starting"
    );
    if !config.data.is_file() {
        info!(
            "the data was read once and is kept in memory for every job; \
             restart the client to train on newer records"
        );
    }

    let main = async {
        let mut backoff = Duration::from_millis(250);
        // With standbys, one of them is serving within seconds of the
        // active coordinator's death: do not back off past it.
        let max_backoff = if endpoints.len() > 1 {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        let mut current = 0;
        loop {
            let (url, endpoint) = &endpoints[current];
            match session(endpoint, &config, &summary_json, &worker, &mut backoff).await {
                SessionEnd::Fatal(e) => return Err(e),
                SessionEnd::Vanished => {
                    warn!(
                        client = config.name,
                        "vanishing now, as configured (fault injection)"
                    );
                    return Ok(());
                }
                SessionEnd::Retry(reason) => {
                    current = (current + 1) % endpoints.len();
                    warn!(
                        client = config.name,
                        coordinator = url,
                        "{reason}; reconnecting to {} in {:.1} s",
                        endpoints[current].0,
                        backoff.as_secs_f64()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    };
    tokio::select! {
        r = main => r,
        () = shutdown => Ok(()),
    }
}

async fn session(
    endpoint: &Endpoint,
    config: &ClientConfig,
    summary_json: &str,
    worker: &Arc<Worker>,
    backoff: &mut Duration,
) -> SessionEnd {
    let channel: Channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            let detail = format!("{e:?}");
            if let Some(reason) = certificate_problem(&detail) {
                return SessionEnd::Fatal(ClientError::Refused(reason));
            }
            return SessionEnd::Retry(format!("cannot reach the coordinator: {e}"));
        }
    };
    let mut grpc = hospital_client(channel);
    let reply = match grpc
        .register(RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            client_name: config.name.clone(),
            quality_summary_json: summary_json.to_string(),
            client_version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s)
            if matches!(
                s.code(),
                Code::InvalidArgument
                    | Code::FailedPrecondition
                    | Code::PermissionDenied
                    | Code::Unauthenticated
            ) =>
        {
            return SessionEnd::Fatal(ClientError::Refused(s.message().to_string()));
        }
        Err(s) => {
            if let Some(reason) = certificate_problem(&format!("{s:?}")) {
                return SessionEnd::Fatal(ClientError::Refused(reason));
            }
            return SessionEnd::Retry(format!("registration failed: {}", s.message()));
        }
    };
    info!(client = config.name, "registered with the coordinator");
    *backoff = Duration::from_millis(250);
    let session_id = reply.session_id;
    // Started with the session's first split-learning task, and ended with
    // the session (its connection is to this coordinator).
    let mut exchange_thread: Option<exchange::ExchangeThread> = None;

    loop {
        let mut stream = match grpc
            .pull_task(PullTaskRequest {
                session_id: session_id.clone(),
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => return SessionEnd::Retry(format!("task poll failed: {}", s.message())),
        };
        let header = match stream.message().await {
            Ok(Some(frame)) => match frame.frame {
                Some(task_frame::Frame::Idle(_)) => continue,
                Some(task_frame::Frame::Header(h)) => h,
                _ => return SessionEnd::Retry("coordinator sent a task without a header".into()),
            },
            Ok(None) => continue,
            Err(s) => return SessionEnd::Retry(format!("task poll failed: {}", s.message())),
        };
        if config
            .options
            .vanish_at
            .is_some_and(|stage| stage.matches(&header))
        {
            return SessionEnd::Vanished;
        }
        let body = match receive_body(&header, &mut stream).await {
            Ok(p) => p,
            Err(Received::Broken(reason)) => return SessionEnd::Retry(reason),
            Err(Received::Malformed(reason)) => {
                let answer = Answer::refused(reason);
                if let Err(end) =
                    submit(&mut grpc, &session_id, &header, &config.security, answer).await
                {
                    return end;
                }
                continue;
            }
        };
        if let Err(reason) =
            proofs::ensure_proving_key(&mut grpc, &session_id, &header, worker.proving_keys()).await
        {
            let answer = Answer::refused(reason);
            if let Err(end) =
                submit(&mut grpc, &session_id, &header, &config.security, answer).await
            {
                return end;
            }
            continue;
        }
        let worker = worker.clone();
        let task_header = header.clone();
        let answer = match (header.split.is_some(), body) {
            (_, body) if header.vertical.is_some() => {
                match exchanges(&mut exchange_thread, endpoint, &config.name) {
                    Ok(exchanges) => {
                        vertical::answer(worker, exchanges, session_id.clone(), task_header, body)
                            .await
                    }
                    Err(reason) => Answer::refused(reason),
                }
            }
            (true, TaskBody::Parameters(bottom)) => {
                match exchanges(&mut exchange_thread, endpoint, &config.name) {
                    Ok(exchanges) => {
                        split::fit(worker, exchanges, session_id.clone(), task_header, bottom).await
                    }
                    Err(reason) => Answer::refused(reason),
                }
            }
            // Training is CPU-bound: keep it off the async runtime's threads.
            (_, body) => tokio::task::spawn_blocking(move || worker.handle(&task_header, body))
                .await
                .unwrap_or_else(|e| Answer::refused(format!("task crashed: {e}"))),
        };
        if config.options.vanish_at == Some(VanishAt::BeforeSend)
            && header.kind() == cohort_protocol::v1::TaskKind::Fit
            && answer.header.error.is_empty()
        {
            return SessionEnd::Vanished;
        }
        if let Err(end) = submit(&mut grpc, &session_id, &header, &config.security, answer).await {
            return end;
        }
    }
}

/// The session's exchange thread, started on first use.
fn exchanges<'a>(
    thread: &'a mut Option<exchange::ExchangeThread>,
    endpoint: &Endpoint,
    client: &str,
) -> Result<&'a exchange::ExchangeThread, String> {
    Ok(match thread {
        Some(running) => running,
        None => thread.insert(exchange::ExchangeThread::start(endpoint, client)?),
    })
}

/// A client of the coordinator's hospital service with the protocol's
/// message limits.
fn hospital_client(channel: Channel) -> HospitalServiceClient<Channel> {
    HospitalServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A TLS failure that retrying with the same kit cannot fix, recognised in
/// the error chain (rustls alert and error names), as a message for the
/// hospital's IT team.
fn certificate_problem(detail: &str) -> Option<String> {
    let ours = |why: &str| {
        Some(format!(
            "the coordinator refused this kit's certificate ({why}); ask the consortium \
             operator for a new kit"
        ))
    };
    if detail.contains("CertificateRevoked") {
        ours("revoked")
    } else if detail.contains("CertificateExpired") {
        ours("expired")
    } else if detail.contains("UnknownCA") || detail.contains("BadCertificate") {
        ours("not issued by the consortium's CA")
    } else if detail.contains("InvalidCertificate") {
        Some(format!(
            "the coordinator's certificate is not acceptable (wrong consortium, host name or \
             expired): {detail}"
        ))
    } else {
        None
    }
}

enum Received {
    /// The stream broke: a connection problem, not the task's fault.
    Broken(String),
    /// The task's parameters are malformed: refuse it with this reason.
    Malformed(String),
}

/// What followed a task's header.
pub enum TaskBody {
    /// The global parameters (FIT, EVALUATE; empty for other tasks).
    Parameters(Vec<f32>),
    /// Opaque bytes (HE_DECRYPT: the summed ciphertext).
    Bytes(Vec<u8>),
}

/// Largest byte body a client accepts (the same bound as for parameters).
const MAX_PAYLOAD_BYTES: u64 = cohort_protocol::MAX_PARAMETERS * 4;

async fn receive_body(
    header: &TaskHeader,
    stream: &mut tonic::Streaming<cohort_protocol::v1::TaskFrame>,
) -> Result<TaskBody, Received> {
    if header.payload_bytes > 0 {
        if header.payload_bytes > MAX_PAYLOAD_BYTES {
            return Err(Received::Malformed(format!(
                "a task body of {} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}",
                header.payload_bytes
            )));
        }
        let mut assembler = cohort_protocol::ByteAssembler::new(header.payload_bytes as usize);
        read_chunks(stream, "task body", |data| assembler.push(data)).await?;
        let payload = assembler
            .finish()
            .map_err(|e| Received::Malformed(format!("malformed task body: {e}")))?;
        return Ok(TaskBody::Bytes(payload));
    }
    let mut assembler = ParameterAssembler::new(header.parameter_count)
        .map_err(|e| Received::Malformed(e.to_string()))?;
    read_chunks(stream, "parameters", |data| assembler.push(data)).await?;
    let params = assembler
        .finish()
        .map_err(|e| Received::Malformed(format!("malformed parameters: {e}")))?;
    if !header.parameters_sha256.is_empty()
        && cohort_models::parameters_sha256(&params) != header.parameters_sha256
    {
        return Err(Received::Malformed(
            "parameters do not match their announced SHA-256".into(),
        ));
    }
    Ok(TaskBody::Parameters(params))
}

/// Feeds the chunks after a task's header to `push` until the stream ends.
/// A refused chunk makes the body malformed (the rest is drained so the
/// stream stays usable).
async fn read_chunks(
    stream: &mut tonic::Streaming<cohort_protocol::v1::TaskFrame>,
    what: &str,
    mut push: impl FnMut(&[u8]) -> Result<(), cohort_protocol::ProtocolError>,
) -> Result<(), Received> {
    let mut malformed: Option<String> = None;
    loop {
        match stream.message().await {
            Ok(Some(frame)) => match frame.frame {
                Some(task_frame::Frame::Chunk(c)) if malformed.is_none() => {
                    if let Err(e) = push(&c.data) {
                        malformed = Some(e.to_string());
                    }
                }
                Some(task_frame::Frame::Chunk(_)) => {}
                _ => malformed = Some("unexpected frame inside a task".into()),
            },
            Ok(None) => break,
            Err(s) => {
                return Err(Received::Broken(format!(
                    "task download failed: {}",
                    s.message()
                )));
            }
        }
    }
    match malformed {
        Some(reason) => Err(Received::Malformed(format!("malformed {what}: {reason}"))),
        None => Ok(()),
    }
}

/// Signs a FIT answer with the kit's signing key (mutual TLS only): over
/// the update's bytes, or the masked update's under secure aggregation.
fn sign_update(kit: &cohort_identity::Kit, task: &TaskHeader, answer: &mut Answer) {
    if task.kind() != cohort_protocol::v1::TaskKind::Fit || !answer.header.error.is_empty() {
        return;
    }
    let header = &mut answer.header;
    header.update_sha256 = if task.secagg.is_some() || task.he.is_some() {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&answer.masked))
    } else {
        cohort_models::parameters_sha256(&answer.parameters)
    };
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
        Err(e) => warn!("could not sign the update: {e}"),
    }
}

/// Answers at least this large wait for the coordinator to set their memory
/// aside before they are sent ([`admit_upload`]).
const ADMIT_UPLOADS_FROM: usize = 256 * 1024;

/// Asks the coordinator to set aside the memory of this task's answer, and
/// waits until it has: sent only then, the answer does not sit in the
/// coordinator's HTTP/2 buffers while others are received. Any failure (a
/// coordinator without the call, a task no longer open) is left to the
/// upload itself, which reserves the memory or reports the error.
async fn admit_upload(
    grpc: &mut HospitalServiceClient<Channel>,
    session_id: &str,
    task: &TaskHeader,
) {
    let request = cohort_protocol::v1::AdmitUploadRequest {
        session_id: session_id.to_string(),
        task_id: task.task_id.clone(),
    };
    if let Err(status) = grpc.admit_upload(request).await {
        tracing::debug!(
            job = task.job_id,
            round = task.round,
            "upload not admitted ahead ({}): sending it all the same",
            status.message()
        );
    }
}

async fn submit(
    grpc: &mut HospitalServiceClient<Channel>,
    session_id: &str,
    task: &TaskHeader,
    security: &Security,
    mut answer: Answer,
) -> Result<(), SessionEnd> {
    if let Some(kit) = security.kit() {
        sign_update(kit, task, &mut answer);
    }
    let mut header = answer.header;
    header.session_id = session_id.to_string();
    header.task_id = task.task_id.clone();
    if !header.error.is_empty() {
        warn!(
            job = task.job_id,
            round = task.round,
            "refusing task: {}",
            header.error
        );
    }
    // Plain updates are f32 little-endian; a masked update is already bytes.
    let body = if answer.masked.is_empty() {
        cohort_models::parameters_to_bytes(&answer.parameters)
    } else {
        answer.masked
    };
    let head = ResultFrame {
        frame: Some(result_frame::Frame::Header(header)),
    };
    if task.kind() == cohort_protocol::v1::TaskKind::Fit
        && cohort_protocol::crash::due("client-upload")
    {
        // Dies mid-upload: the header and half of the first chunk leave,
        // the stream stays open, and the process aborts once h2 has had
        // time to put them on the wire.
        let half = body.len() / 2;
        let partial = ResultFrame {
            frame: Some(result_frame::Frame::Chunk(cohort_protocol::v1::Chunk {
                data: body[..half].to_vec().into(),
            })),
        };
        let frames = futures::StreamExt::chain(
            futures::stream::iter([head, partial]),
            futures::stream::pending(),
        );
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cohort_protocol::crash::abort("client-upload");
        });
        // Whatever the coordinator answers, this process does nothing more.
        let _ = grpc.submit_result(frames).await;
        return futures::future::pending().await;
    }
    // Chunks share the body's memory, so a large update is not held twice.
    let body = bytes::Bytes::from(body);
    let chunks: Vec<_> = cohort_protocol::byte_chunks(&body)
        .map(|chunk| ResultFrame {
            frame: Some(result_frame::Frame::Chunk(chunk)),
        })
        .collect();
    let chunks = futures::stream::iter(chunks);
    use futures::StreamExt;
    let frames = futures::stream::iter([head]).chain(chunks);
    if body.len() >= ADMIT_UPLOADS_FROM {
        admit_upload(grpc, session_id, task).await;
    }
    match grpc.submit_result(frames).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            if !reply.accepted {
                warn!(
                    job = task.job_id,
                    round = task.round,
                    "coordinator rejected our answer: {}",
                    reply.reason
                );
            }
            Ok(())
        }
        Err(s) if s.code() == Code::Unauthenticated => {
            Err(SessionEnd::Retry("session expired".into()))
        }
        Err(s) if s.code() == Code::FailedPrecondition => {
            warn!(
                job = task.job_id,
                round = task.round,
                "answer not taken: {}",
                s.message()
            );
            Ok(())
        }
        Err(s) => Err(SessionEnd::Retry(format!(
            "sending the answer failed: {}",
            s.message()
        ))),
    }
}
