//! The gRPC services: what hospitals and developers may ask of the
//! coordinator. Every message from outside is checked here before anything
//! else sees it; a client that sends garbage gets an error and is dropped
//! from its step, and nothing stored is touched.

use std::pin::Pin;
use std::sync::Arc;

use cohort_datasets::{LocalStatistics, QualitySummary, ResolvedSchema};
use cohort_models::Metrics;
use cohort_protocol::v1::{
    self, Chunk, ClientInfo, GetJobRequest, GetModelRequest, Idle, JobEvent, JobStatus,
    ListClientsReply, ListClientsRequest, ListJobsReply, ListJobsRequest, ModelFrame, ModelHeader,
    PullTaskRequest, RegisterReply, RegisterRequest, ResultFrame, ResultHeader, RoundSummary,
    SubmitJobReply, SubmitJobRequest, SubmitResultReply, TaskFrame, TaskKind,
    developer_service_server::DeveloperService, hospital_service_server::HospitalService,
    model_frame, result_frame, task_frame,
};
use cohort_protocol::{
    ByteAssembler, MAX_CHUNK_BYTES, PROTOCOL_VERSION, ParameterAssembler, byte_chunks,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use cohort_identity::Role;
use sha2::Digest as _;

use crate::job::JobSpec;
use crate::registry::{Expect, Pending, Registry, TaskAnswer};
use crate::runner::{Runner, card_key, model_key};
use crate::security::{Authorizer, Caller};
use crate::store::{JobRow, JobState, Store, StoreError, UpdateReceipt, now};
use prost::Message as _;

type FrameStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;
pub(crate) type SplitDownStream = FrameStream<v1::SplitDown>;
pub(crate) type VerticalDownStream = FrameStream<v1::VerticalDown>;

pub struct Services {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub runner: Arc<Runner>,
    pub auth: Authorizer,
    pub ledger: Arc<crate::ledger::Ledger>,
    /// Admission of developer-service calls (`max_developer_calls`).
    pub developer_calls: Arc<tokio::sync::Semaphore>,
    /// Their share of the time while a job runs (`developer_share`).
    pub developer_share: Arc<crate::limits::DeveloperShare>,
    /// The cap on upload bytes being received at once.
    pub upload_memory: crate::limits::UploadMemory,
}

/// The bytes an upload of `expect` occupies once received, if it is one.
fn upload_bytes(expect: Expect) -> Option<u64> {
    match expect {
        Expect::Nothing => None,
        Expect::Update(count) => Some(count.saturating_mul(4)),
        // Received as one u64 per value, whatever the bit width.
        Expect::Masked { count, .. } => Some(count.saturating_mul(8)),
        Expect::Bytes(len) => Some(len),
        Expect::Commitments(count) => {
            Some(count.saturating_mul(cohort_proofs::committed::COMMITMENT_BYTES as u64))
        }
    }
}

const HOSPITALS: &[Role] = &[Role::Hospital];
const DEVELOPERS: &[Role] = &[Role::Developer];
const READERS: &[Role] = &[Role::Developer, Role::Validator];

/// Under mutual TLS a hospital's name is the one in its certificate; a
/// message or session claiming another name is refused.
pub(crate) fn check_claimed_name(caller: &Caller, claimed: &str, what: &str) -> Result<(), Status> {
    match caller.name() {
        Some(certified) if certified != claimed => Err(Status::permission_denied(format!(
            "the certificate names hospital `{certified}`, but {what} claims `{claimed}`; \
             a hospital's name comes from its certificate"
        ))),
        _ => Ok(()),
    }
}

/// The hospital a session belongs to, if the caller is that hospital.
pub(crate) fn session_client(
    registry: &Registry,
    caller: &Caller,
    session_id: &str,
) -> Result<String, Status> {
    let client = registry
        .client_for_session(session_id)
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    check_claimed_name(caller, &client, "the session")?;
    Ok(client)
}

/// Which ledger entries `caller` may read: validators (and everyone under
/// `--insecure`) all; a developer those of its own jobs, a hospital those of
/// the jobs it is enrolled in; both every entry that belongs to no job.
fn readable_entries(caller: &Caller, leaves: &[Vec<u8>]) -> Vec<bool> {
    use cohort_ledger::{Entry, Record};
    let principal = match caller {
        Caller::Member(p) if matches!(p.role, Role::Developer | Role::Hospital) => p,
        _ => return vec![true; leaves.len()],
    };
    let entries: Vec<Option<Entry>> = leaves.iter().map(|l| Entry::from_leaf(l).ok()).collect();
    // The caller's jobs, from the ledger itself: a developer's are those
    // it submitted, a hospital's those it was enrolled in.
    let own: std::collections::BTreeSet<&str> = entries
        .iter()
        .flatten()
        .filter_map(|e| match &e.record {
            Record::JobCreated {
                job_id,
                submitted_by,
                ..
            } if caller.may_read_job(submitted_by.as_deref()) => Some(job_id.as_str()),
            Record::ClientsEnrolled { job_id, .. }
                if principal.role == Role::Hospital
                    && e.record.enrolled_names().contains(&principal.name.as_str()) =>
            {
                Some(job_id.as_str())
            }
            _ => None,
        })
        .collect();
    entries
        .iter()
        .map(|e| {
            e.as_ref()
                .and_then(|e| e.record.job_id())
                .is_none_or(|job| own.contains(job))
        })
        .collect()
}

/// May `caller` read the sealed part that `opening` opens, in an entry it
/// reads? A hospital its own parts only: its co-participants' receipts and
/// ε stay sealed to it. Everyone else who reads the entry, every part.
fn may_open(caller: &Caller, opening: &cohort_ledger::Opening) -> bool {
    match caller {
        Caller::Member(p) if p.role == Role::Hospital => opening.name == p.name,
        _ => true,
    }
}

/// Job `job_id`, if it exists and `caller` may read it.
fn readable_job(store: &Store, caller: &Caller, job_id: &str) -> Result<JobRow, Status> {
    let job = store
        .job(job_id)
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("no job `{job_id}`")))?;
    if caller.may_read_job(job.submitted_by.as_deref()) {
        Ok(job)
    } else {
        Err(Status::permission_denied(format!(
            "job `{job_id}` was submitted by another developer; developers read their own jobs"
        )))
    }
}

/// A job with `[proofs] min_validators = k` publishes a round's model only
/// once k validators attested all of its proofs valid.
fn check_attested(store: &Store, job: &JobRow, round: u32) -> Result<(), Status> {
    let required = JobSpec::from_toml(&job.spec_toml)
        .map(|s| s.proofs.min_validators)
        .unwrap_or(0);
    if required == 0 || round == 0 {
        return Ok(());
    }
    let approving = crate::attest::approving_validators(store, &job.id, round).map_err(internal)?;
    if (approving.len() as u32) < required {
        return Err(Status::failed_precondition(format!(
            "round {round} of job `{}` is not published yet: {} of the {required} validator \
             attestations the job requires ({})",
            job.id,
            approving.len(),
            if approving.is_empty() {
                "none yet".to_string()
            } else {
                approving.join(", ")
            }
        )));
    }
    Ok(())
}

fn internal(e: StoreError) -> Status {
    warn!("storage error: {e}");
    Status::internal(format!("coordinator storage error: {e}"))
}

/// Client names become database keys and log fields: keep them boring.
pub fn check_client_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("client name must be 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "client name `{name}` may only contain letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl HospitalService for Services {
    type PullTaskStream = FrameStream<TaskFrame>;
    type SplitExchangeStream = SplitDownStream;

    async fn split_exchange(
        &self,
        request: Request<Streaming<v1::SplitUp>>,
    ) -> Result<Response<Self::SplitExchangeStream>, Status> {
        let caller = self.auth.authorize(&request, "SplitExchange", HOSPITALS)?;
        crate::split::serve_exchange(self.registry.clone(), &caller, request.into_inner()).await
    }

    type VerticalExchangeStream = VerticalDownStream;

    async fn vertical_exchange(
        &self,
        request: Request<Streaming<v1::VerticalUp>>,
    ) -> Result<Response<Self::VerticalExchangeStream>, Status> {
        let caller = self
            .auth
            .authorize(&request, "VerticalExchange", HOSPITALS)?;
        crate::vertical::serve_exchange(self.registry.clone(), &caller, request.into_inner()).await
    }

    /// Sets aside the memory of the task's answer before its upload starts
    /// (see [`crate::limits::UploadMemory`]).
    async fn admit_upload(
        &self,
        request: Request<v1::AdmitUploadRequest>,
    ) -> Result<Response<v1::AdmitUploadReply>, Status> {
        let caller = self.auth.authorize(&request, "AdmitUpload", HOSPITALS)?;
        let r = request.into_inner();
        let client = session_client(&self.registry, &caller, &r.session_id)?;
        let expect = self
            .registry
            .pending_expect(&r.task_id, &client)
            .map_err(Status::failed_precondition)?;
        if let Some(bytes) = upload_bytes(expect) {
            self.upload_memory.admit(&r.task_id, bytes).await;
        }
        Ok(Response::new(v1::AdmitUploadReply {
            held_ms: self.upload_memory.hold().as_millis() as u32,
        }))
    }

    type GetProvingKeyStream = FrameStream<Chunk>;

    /// Update proofs: the job's proving key, to hospitals with a session.
    async fn get_proving_key(
        &self,
        request: Request<v1::GetProvingKeyRequest>,
    ) -> Result<Response<Self::GetProvingKeyStream>, Status> {
        let caller = self.auth.authorize(&request, "GetProvingKey", HOSPITALS)?;
        let r = request.into_inner();
        session_client(&self.registry, &caller, &r.session_id)?;
        let key = crate::runner::proofs::proving_key_key(&r.job_id);
        if self.store.job(&r.job_id).map_err(internal)?.is_none() {
            return Err(Status::not_found(format!("job `{}` not found", r.job_id)));
        }
        let bytes = self
            .store
            .get_object(&key)
            .await
            .map_err(|_| Status::not_found(format!("job `{}` has no proving key", r.job_id)))?;
        let chunks: Vec<Result<Chunk, Status>> = byte_chunks(&bytes).map(Ok).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let caller = self.auth.authorize(&request, "Register", HOSPITALS)?;
        let r = request.into_inner();
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "client speaks protocol version {}, this coordinator speaks {PROTOCOL_VERSION}",
                r.protocol_version
            )));
        }
        check_client_name(&r.client_name).map_err(Status::invalid_argument)?;
        check_claimed_name(&caller, &r.client_name, "the registration")?;
        let summary: QualitySummary = serde_json::from_str(&r.quality_summary_json)
            .map_err(|e| Status::invalid_argument(format!("quality_summary_json: {e}")))?;
        let summary_json =
            serde_json::to_string(&summary).map_err(|e| Status::internal(e.to_string()))?;
        self.store
            .upsert_client(&r.client_name, &summary_json)
            .map_err(internal)?;
        let certificate = match &caller {
            Caller::Member(p) => Some(p.serial.as_str()),
            Caller::Anonymous => None,
        };
        let session_id = self.registry.register(&r.client_name, certificate);
        info!(
            client = r.client_name,
            rows = summary.rows,
            "client registered"
        );
        Ok(Response::new(RegisterReply {
            session_id,
            protocol_version: PROTOCOL_VERSION,
            poll_timeout_ms: self.registry.poll_timeout().as_millis() as u32,
        }))
    }

    async fn pull_task(
        &self,
        request: Request<PullTaskRequest>,
    ) -> Result<Response<Self::PullTaskStream>, Status> {
        let caller = self.auth.authorize(&request, "PullTask", HOSPITALS)?;
        let session = request.into_inner().session_id;
        if let Ok(client) = self.registry.client_for_session(&session) {
            check_claimed_name(&caller, &client, "the session")?;
        }
        let task = self
            .registry
            .next_task(&session)
            .await
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let Some(task) = task else {
            let idle = TaskFrame {
                frame: Some(task_frame::Frame::Idle(Idle {})),
            };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(idle)]))));
        };
        // Two chunks in flight bound the memory a slow client can pin.
        let (tx, rx) = mpsc::channel(2);
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let (job_id, round) = (task.header.job_id.clone(), task.header.round);
            let header = TaskFrame {
                frame: Some(task_frame::Frame::Header(task.header)),
            };
            let header_bytes = header.encoded_len() as u64;
            if tx.send(Ok(header)).await.is_err() {
                return;
            }
            let body_bytes = match &task.body {
                Some(body) => send_chunks(&tx, byte_chunks(body.wire())).await,
                None => 0,
            };
            registry
                .traffic
                .sent(&job_id, round, header_bytes + body_bytes);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn submit_result(
        &self,
        request: Request<Streaming<ResultFrame>>,
    ) -> Result<Response<SubmitResultReply>, Status> {
        let caller = self.auth.authorize(&request, "SubmitResult", HOSPITALS)?;
        let mut stream = Upload::new(request.into_inner());
        let header = match stream.next_frame().await? {
            Some(ResultFrame {
                frame: Some(result_frame::Frame::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first frame of a result must be its header",
                ));
            }
        };
        // Taken first, so that a share set aside for an answer that fails
        // goes back at once rather than after its hold.
        let admitted = self.upload_memory.take_admitted(&header.task_id);
        let client = session_client(&self.registry, &caller, &header.session_id)?;
        let pending = self
            .registry
            .take_pending(&header.task_id, &client)
            .map_err(Status::failed_precondition)?;
        // Held until the answer is handed to the round (the end of this call):
        // the share `AdmitUpload` set aside, or one taken now.
        let _memory = match upload_bytes(pending.expect) {
            Some(_) if admitted.is_some() => admitted,
            Some(bytes) if header.error.is_empty() => Some(self.upload_memory.reserve(bytes).await),
            _ => None,
        };
        let outcome = if !header.error.is_empty() {
            Err(format!("client refused the task: {}", header.error))
        } else {
            read_answer(pending.kind, pending.expect, &header, &mut stream)
                .await
                .and_then(|mut answer| {
                    if let (TaskAnswer::Fit { num_examples, .. }, Some(accuracy), Some(auc)) =
                        (&answer, header.train_accuracy, header.train_auc)
                    {
                        self.registry.train_metrics.report(
                            &pending.job_id,
                            pending.round,
                            &client,
                            *num_examples,
                            crate::train_metrics::TrainMetrics { accuracy, auc },
                        );
                    }
                    match &mut answer {
                        TaskAnswer::Fit { receipt, .. }
                        | TaskAnswer::MaskedFit { receipt, .. }
                        | TaskAnswer::CommittedFit { receipt, .. }
                        | TaskAnswer::HeFit { receipt, .. } => {
                            receipt.client = client.clone();
                            check_update_signature(
                                &caller,
                                &pending,
                                &header,
                                &receipt.update_sha256,
                            )?;
                        }
                        // Vertical split learning: a site signs what it
                        // sends (blinded ids, its trained part) like an update.
                        TaskAnswer::Vertical {
                            payload_sha256,
                            payload,
                            ..
                        } if !payload.is_empty() => {
                            check_update_signature(&caller, &pending, &header, payload_sha256)?;
                        }
                        // Relayed to the neighbours, who check the
                        // signature against it themselves.
                        TaskAnswer::SecAggAdvertise {
                            certificate_der, ..
                        }
                        | TaskAnswer::HeAdvert {
                            certificate_der, ..
                        } => {
                            if let Caller::Member(principal) = &caller {
                                certificate_der.clone_from(&principal.certificate_der);
                            }
                        }
                        _ => {}
                    }
                    Ok(answer)
                })
        };
        let reply = match &outcome {
            Ok(_) => SubmitResultReply {
                accepted: true,
                reason: String::new(),
            },
            Err(reason) => {
                warn!(client, task = header.task_id, "answer rejected: {reason}");
                SubmitResultReply {
                    accepted: false,
                    reason: reason.clone(),
                }
            }
        };
        self.registry
            .traffic
            .received(&pending.job_id, pending.round, stream.frame_bytes);
        let _ = pending.reply.send(outcome);
        Ok(Response::new(reply))
    }
}

/// Streams a task's body; stops quietly when the client hangs up.
/// Returns the encoded bytes of the frames sent.
async fn send_chunks(
    tx: &mpsc::Sender<Result<TaskFrame, Status>>,
    chunks: impl Iterator<Item = Chunk>,
) -> u64 {
    let mut sent = 0;
    for chunk in chunks {
        let frame = TaskFrame {
            frame: Some(task_frame::Frame::Chunk(chunk)),
        };
        let bytes = frame.encoded_len() as u64;
        if tx.send(Ok(frame)).await.is_err() {
            break;
        }
        sent += bytes;
    }
    sent
}

/// An answer's frames as they arrive, with the encoded bytes read so far
/// (the round's answer bytes).
pub(crate) struct Upload {
    stream: Streaming<ResultFrame>,
    pub(crate) frame_bytes: u64,
}

impl Upload {
    fn new(stream: Streaming<ResultFrame>) -> Self {
        Self {
            stream,
            frame_bytes: 0,
        }
    }

    pub(crate) async fn next_frame(&mut self) -> Result<Option<ResultFrame>, Status> {
        let frame = self.stream.message().await?;
        if let Some(frame) = &frame {
            self.frame_bytes += frame.encoded_len() as u64;
        }
        Ok(frame)
    }
}

/// Under mutual TLS an update counts only if the hospital's signing key
/// (bound in its certificate) signed exactly the bytes that arrived, for
/// this job, round and task.
fn check_update_signature(
    caller: &Caller,
    pending: &Pending,
    header: &ResultHeader,
    received: &str,
) -> Result<(), String> {
    let Caller::Member(principal) = caller else {
        return Ok(());
    };
    if header.update_sha256 != received {
        return Err(format!(
            "the update's announced SHA-256 `{}` is not that of the bytes received ({received})",
            header.update_sha256
        ));
    }
    let statement = cohort_protocol::update_statement(
        &pending.job_id,
        pending.round,
        &header.task_id,
        header.num_examples,
        header.parameter_count,
        received,
        &header.dataset_sha256,
    );
    principal
        .signing_key
        .verify(
            cohort_protocol::UPDATE_SIGNATURE_CONTEXT,
            &statement,
            &header.update_signature,
        )
        .map_err(|e| format!("update rejected: {e}"))
}

/// Reads the chunks that follow an answer's header into `push`.
pub(crate) async fn read_chunks(
    stream: &mut Upload,
    mut push: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    while let Some(frame) = stream
        .next_frame()
        .await
        .map_err(|e| format!("upload interrupted: {e}"))?
    {
        match frame.frame {
            Some(result_frame::Frame::Chunk(Chunk { data })) => {
                if data.len() > MAX_CHUNK_BYTES {
                    return Err(format!(
                        "chunk of {} bytes exceeds {MAX_CHUNK_BYTES}",
                        data.len()
                    ));
                }
                push(&data)?;
            }
            _ => return Err("unexpected frame after the header".into()),
        }
    }
    Ok(())
}

/// The `parameter_count` bytes an answer announces, exactly as many as
/// `expect` asks for, from its chunks.
async fn read_bytes(
    stream: &mut Upload,
    expect: Expect,
    header: &ResultHeader,
    what: &str,
) -> Result<Vec<u8>, String> {
    let Expect::Bytes(len) = expect else {
        return Err(format!("the coordinator expected no {what} for this task"));
    };
    if header.parameter_count != len {
        return Err(format!(
            "{what} of {} bytes, the round expects {len}",
            header.parameter_count
        ));
    }
    read_exactly(stream, len, what).await
}

/// The upload's chunks, which must add up to exactly `len` bytes.
async fn read_exactly(stream: &mut Upload, len: u64, what: &str) -> Result<Vec<u8>, String> {
    let mut assembler = ByteAssembler::new(len as usize);
    read_chunks(stream, |data| {
        assembler.push(data).map_err(|e| format!("{what}: {e}"))
    })
    .await?;
    assembler.finish().map_err(|e| format!("{what}: {e}"))
}

/// A masked vector of exactly the values `expect` asks for, and the
/// SHA-256 of its packed bytes.
async fn read_masked(
    stream: &mut Upload,
    expect: Expect,
    header: &ResultHeader,
    what: &str,
) -> Result<(Vec<u64>, String), String> {
    let Expect::Masked { count, bits } = expect else {
        return Err(format!("the coordinator expected no {what} for this task"));
    };
    if header.parameter_count != count {
        return Err(format!(
            "{what} has {} values, the round expects {count}",
            header.parameter_count
        ));
    }
    let width = cohort_privacy::quantize::bytes_per_value(bits);
    let mut assembler = ByteAssembler::new(count as usize * width);
    read_chunks(stream, |data| {
        assembler.push(data).map_err(|e| format!("{what}: {e}"))
    })
    .await?;
    let packed = assembler.finish().map_err(|e| format!("{what}: {e}"))?;
    let sha256 = hex::encode(sha2::Sha256::digest(&packed));
    let masked = cohort_privacy::quantize::unpack(&packed, bits, count as usize)
        .map_err(|e| format!("{what}: {e}"))?;
    Ok((masked, sha256))
}

/// The receipt of an update answer, before the coordinator names its
/// client and attaches a checked proof.
fn update_receipt(header: &ResultHeader, update_sha256: String) -> UpdateReceipt {
    UpdateReceipt {
        client: String::new(),
        task_id: header.task_id.clone(),
        num_examples: header.num_examples,
        parameter_count: header.parameter_count,
        update_sha256,
        signature: hex::encode(&header.update_signature),
        dataset_sha256: header.dataset_sha256.clone(),
        dp_epsilon: reported_epsilon(header),
        proof: None,
    }
}

/// The training loss an answer reports, if it is a number.
fn reported_loss(header: &ResultHeader) -> Option<f64> {
    header.train_loss.is_finite().then_some(header.train_loss)
}

/// A secure-aggregation answer carries its payload in the header only.
fn secagg_payload(header: &ResultHeader) -> Result<Vec<u8>, String> {
    if header.secagg_payload.is_empty() {
        return Err("secure-aggregation answer without its payload".into());
    }
    Ok(header.secagg_payload.clone())
}

/// Parses and checks the body of an answer against what its task asked for.
async fn read_answer(
    kind: TaskKind,
    expect: Expect,
    header: &ResultHeader,
    stream: &mut Upload,
) -> Result<TaskAnswer, String> {
    match kind {
        TaskKind::Prepare => {
            let statistics: Option<LocalStatistics> = match header.statistics_json.as_str() {
                "" => None,
                json => {
                    Some(serde_json::from_str(json).map_err(|e| format!("statistics_json: {e}"))?)
                }
            };
            let schema: ResolvedSchema = serde_json::from_str(&header.schema_json)
                .map_err(|e| format!("schema_json: {e}"))?;
            Ok(TaskAnswer::Prepare { statistics, schema })
        }
        TaskKind::SecaggStatistics => {
            let (masked, _) = read_masked(stream, expect, header, "masked statistics").await?;
            Ok(TaskAnswer::MaskedStatistics(masked))
        }
        TaskKind::Fit if matches!(expect, Expect::Masked { .. }) => {
            let (masked, update_sha256) =
                read_masked(stream, expect, header, "masked update").await?;
            let train_loss = reported_loss(header);
            Ok(TaskAnswer::MaskedFit {
                masked,
                train_loss,
                compute_seconds: sane_seconds(header.compute_seconds),
                receipt: update_receipt(header, update_sha256),
            })
        }
        TaskKind::Fit if let Expect::Commitments(count) = expect => {
            if header.parameter_count != count {
                return Err(format!(
                    "committed update has {} entries, the round expects {count}",
                    header.parameter_count
                ));
            }
            let bytes = count.saturating_mul(cohort_proofs::committed::COMMITMENT_BYTES as u64);
            let commitments = read_exactly(stream, bytes, "committed update").await?;
            let train_loss = reported_loss(header);
            Ok(TaskAnswer::CommittedFit {
                receipt: update_receipt(header, hex::encode(sha2::Sha256::digest(&commitments))),
                commitments,
                proof: header.update_proof.clone(),
                train_loss,
                compute_seconds: sane_seconds(header.compute_seconds),
            })
        }
        TaskKind::Fit if matches!(expect, Expect::Bytes(_)) => {
            let ciphertext = read_bytes(stream, expect, header, "encrypted update").await?;
            let train_loss = reported_loss(header);
            Ok(TaskAnswer::HeFit {
                receipt: update_receipt(header, hex::encode(sha2::Sha256::digest(&ciphertext))),
                ciphertext,
                sealed: secagg_payload(header)?,
                proof: header.update_proof.clone(),
                train_loss,
                compute_seconds: sane_seconds(header.compute_seconds),
            })
        }
        TaskKind::Fit => {
            let Expect::Update(expected_parameters) = expect else {
                return Err("the coordinator expected no update for this task".into());
            };
            if header.parameter_count != expected_parameters {
                return Err(format!(
                    "update has {} values, the model has {expected_parameters}",
                    header.parameter_count
                ));
            }
            if header.num_examples == 0 {
                return Err("update reports zero training examples".into());
            }
            let mut assembler =
                ParameterAssembler::new(expected_parameters).map_err(|e| e.to_string())?;
            read_chunks(stream, |data| {
                assembler.push(data).map_err(|e| format!("update: {e}"))
            })
            .await?;
            let delta = assembler.finish().map_err(|e| format!("update: {e}"))?;
            if let Some(i) = delta.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "update contains a non-finite value ({}) at index {i}",
                    delta[i]
                ));
            }
            let train_loss = reported_loss(header);
            let receipt = update_receipt(header, cohort_models::parameters_sha256(&delta));
            Ok(TaskAnswer::Fit {
                delta,
                num_examples: header.num_examples,
                train_loss,
                compute_seconds: sane_seconds(header.compute_seconds),
                receipt,
                proof: header.update_proof.clone(),
            })
        }
        TaskKind::Evaluate => {
            let metrics: Metrics = serde_json::from_str(&header.metrics_json)
                .map_err(|e| format!("metrics_json: {e}"))?;
            let sane = [metrics.loss, metrics.accuracy, metrics.auc]
                .iter()
                .all(|v| v.is_finite())
                && (0.0..=1.0).contains(&metrics.accuracy)
                && (0.0..=1.0).contains(&metrics.auc);
            if !sane {
                return Err("evaluation metrics out of range".into());
            }
            if let Some(l) = header
                .candidate_losses
                .iter()
                .find(|l| !l.is_finite() || **l < 0.0)
            {
                return Err(format!(
                    "candidate loss {l} is not a finite non-negative number"
                ));
            }
            Ok(TaskAnswer::Evaluate {
                metrics,
                candidate_losses: header.candidate_losses.clone(),
                compute_seconds: sane_seconds(header.compute_seconds),
            })
        }
        TaskKind::SecaggAdvertise => Ok(TaskAnswer::SecAggAdvertise {
            advertisement: secagg_payload(header)?,
            signature: header.secagg_signature.clone(),
            certificate_der: Vec::new(),
        }),
        TaskKind::SecaggShare => Ok(TaskAnswer::SecAggShares(secagg_payload(header)?)),
        TaskKind::SecaggUnmask => Ok(TaskAnswer::SecAggReveal(secagg_payload(header)?)),
        TaskKind::HeKeygen => Ok(TaskAnswer::HeAdvert {
            advert: secagg_payload(header)?,
            signature: header.secagg_signature.clone(),
            certificate_der: Vec::new(),
        }),
        TaskKind::HeDecrypt => match expect {
            Expect::Bytes(_) => Ok(TaskAnswer::HeDecrypt(
                read_bytes(stream, expect, header, "decryption share").await?,
            )),
            _ => Ok(TaskAnswer::HeDecrypt(Vec::new())),
        },
        TaskKind::Vertical => crate::vertical::read_answer(header, stream).await,
        TaskKind::Unspecified => Err("answer to a task of unknown kind".into()),
    }
}

/// Client-reported timings are informational; keep nonsense out of the
/// database.
/// The epsilon a hospital reports having spent on the job, if it reports
/// one (0, negative or non-finite: none).
fn reported_epsilon(header: &ResultHeader) -> Option<String> {
    UpdateReceipt::epsilon_text(header.dp_epsilon)
}

fn sane_seconds(s: f64) -> f64 {
    if s.is_finite() && s >= 0.0 { s } else { 0.0 }
}

/// A developer call's admission (see [`Services::developer_turn`]).
struct DeveloperTurn<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    share: &'a crate::limits::DeveloperShare,
    registry: &'a Registry,
    started: std::time::Instant,
}

impl Drop for DeveloperTurn<'_> {
    fn drop(&mut self) {
        if self.registry.jobs_running() {
            self.share.charge(self.started.elapsed());
        }
    }
}

impl Services {
    /// Waits for a developer-service slot only: submissions (a job's own
    /// one-off work, its privacy calibration included) and validators'
    /// attestations (which a job may wait for) are not held to the share,
    /// so that one submission's second of work never makes the next status
    /// call wait twenty.
    async fn developer_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Status> {
        self.developer_calls
            .acquire()
            .await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))
    }

    /// Waits for a developer-service slot, then, while a job runs, for the
    /// calls' share of the time to allow another. The turn frees the slot,
    /// and charges the time it held it, when the call's handler returns.
    async fn developer_turn(&self) -> Result<DeveloperTurn<'_>, Status> {
        let permit = self.developer_slot().await?;
        loop {
            let wait = self.developer_share.wait();
            if wait.is_zero() || !self.registry.jobs_running() {
                break;
            }
            // Re-checked after a bounded sleep: a job that ends meanwhile
            // lifts the wait.
            tokio::time::sleep(wait.min(std::time::Duration::from_millis(100))).await;
        }
        Ok(DeveloperTurn {
            _permit: permit,
            share: &self.developer_share,
            registry: &self.registry,
            started: std::time::Instant::now(),
        })
    }

    /// A job's whole status (for in-process readers such as the
    /// dashboard; gRPC replies are paged, [`Services::job_status_page`]).
    pub(crate) fn job_status(&self, job: &JobRow) -> Result<JobStatus, StoreError> {
        self.job_status_page(job, 0, 0, &mut ReplyBudget::unlimited())
    }

    /// A job's whole status but its rounds.
    pub(crate) fn job_status_without_rounds(&self, job: &JobRow) -> Result<JobStatus, StoreError> {
        self.job_status_page(job, u32::MAX, 0, &mut ReplyBudget::unlimited())
    }

    /// A job's status with only the rounds after `rounds_after` and the
    /// events after the first `events_after`, as many of them in order as
    /// `budget` lets through (`more_rounds` / `more_events` say whether
    /// some were held back).
    fn job_status_page(
        &self,
        job: &JobRow,
        rounds_after: u32,
        events_after: u32,
        budget: &mut ReplyBudget,
    ) -> Result<JobStatus, StoreError> {
        let participants = job
            .enrollment
            .as_ref()
            .map(|e| e.participants.clone())
            .unwrap_or_default();
        budget.charge(participants.iter().map(|p| p.len() + 3).sum());
        let all_rounds = self.store.rounds_after(&job.id, rounds_after)?;
        let mut rounds: Vec<RoundSummary> = Vec::new();
        let mut more_rounds = false;
        for r in all_rounds.into_iter().filter(|r| r.round > 0) {
            let summary = round_summary(r);
            if !budget.take(summary.encoded_len()) {
                more_rounds = true;
                break;
            }
            rounds.push(summary);
        }
        let mut events = Vec::new();
        let mut more_events = false;
        for (at, message) in self.store.events_after(&job.id, events_after)? {
            let event = JobEvent { at, message };
            if !budget.take(event.encoded_len()) {
                more_events = true;
                break;
            }
            events.push(event);
        }
        Ok(JobStatus {
            job_id: job.id.clone(),
            name: job.name.clone(),
            state: job.state.as_str().to_string(),
            rounds_total: job.rounds_total,
            rounds_completed: job.rounds_completed,
            error: job.error.clone().unwrap_or_default(),
            rounds,
            created_at: job.created_at.clone(),
            participants,
            events,
            more_rounds,
            more_events,
        })
    }
}

/// What a reply may still carry of a job's rounds and events, in encoded
/// bytes. A job of a thousand hospitals carries about 200 KB of update
/// receipts a round, so its whole status passes the message limit within
/// a few dozen rounds; replies are paged instead.
pub(crate) struct ReplyBudget {
    left: usize,
    /// Whether the first item offered is taken whatever its size, so that
    /// a page always moves a reader on.
    take_first: bool,
}

impl ReplyBudget {
    /// Half the message limit: the rest of a status is small.
    const PAGE_BYTES: usize = cohort_protocol::MAX_MESSAGE_BYTES / 2;

    fn unlimited() -> Self {
        Self {
            left: usize::MAX,
            take_first: true,
        }
    }

    /// One `GetJob` reply.
    fn page() -> Self {
        Self {
            left: Self::PAGE_BYTES,
            take_first: true,
        }
    }

    /// One `ListJobs` reply, shared by its jobs: a job may come without
    /// any of its rounds.
    fn list() -> Self {
        Self {
            left: Self::PAGE_BYTES,
            take_first: false,
        }
    }

    /// Counts what a reply carries in any case.
    fn charge(&mut self, len: usize) {
        self.left = self.left.saturating_sub(len);
    }

    /// Whether an item of `len` encoded bytes still fits; it is then
    /// counted. Once one does not fit the reader asks again from there, so
    /// no later item may slip in.
    fn take(&mut self, len: usize) -> bool {
        // A repeated field's tag and length prefix.
        let len = len + 6;
        if len > self.left && !self.take_first {
            self.left = 0;
            return false;
        }
        self.take_first = false;
        self.left = self.left.saturating_sub(len);
        true
    }
}

fn round_summary(r: crate::store::RoundRow) -> RoundSummary {
    RoundSummary {
        round: r.round,
        participants: r.participants,
        metrics_json: r
            .metrics
            .as_ref()
            .and_then(|m| serde_json::to_string(m).ok())
            .unwrap_or_default(),
        train_loss: r.train_loss.unwrap_or(f64::NAN),
        attempts: r.attempts,
        duration_secs: r.duration_secs,
        model_sha256: r.model_sha256,
        slowest_fit_secs: r.slowest_fit_secs,
        slowest_evaluate_secs: r.slowest_evaluate_secs,
        aggregate_sha256: r.aggregate_sha256.unwrap_or_default(),
        task_bytes_sent: r.traffic.map(|t| t.task_bytes_sent),
        train_accuracy: r.train_metrics.map(|m| m.accuracy),
        train_auc: r.train_metrics.map(|m| m.auc),
        answer_bytes_received: r.traffic.map(|t| t.answer_bytes_received),
        excluded: r
            .excluded
            .into_iter()
            .map(|e| v1::Exclusion {
                client: e.client,
                reason: e.reason,
            })
            .collect(),
        updates: r
            .updates
            .into_iter()
            .map(|u| v1::UpdateReceipt {
                dp_epsilon: u.epsilon().unwrap_or(0.0),
                proof_json: u
                    .proof
                    .as_ref()
                    .and_then(|p| serde_json::to_string(p).ok())
                    .unwrap_or_default(),
                client: u.client,
                task_id: u.task_id,
                num_examples: u.num_examples,
                parameter_count: u.parameter_count,
                update_sha256: u.update_sha256,
                signature: hex::decode(&u.signature).unwrap_or_default(),
                dataset_sha256: u.dataset_sha256,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl DeveloperService for Services {
    type GetModelStream = FrameStream<ModelFrame>;
    type GetLedgerStream = FrameStream<v1::LedgerFrame>;
    type GetCommitmentsStream = FrameStream<Chunk>;

    async fn get_ledger(
        &self,
        request: Request<v1::GetLedgerRequest>,
    ) -> Result<Response<Self::GetLedgerStream>, Status> {
        let caller = self.auth.authorize(
            &request,
            "GetLedger",
            &[Role::Hospital, Role::Developer, Role::Validator],
        )?;
        let _turn = self.developer_turn().await?;
        let mut contents = self.store.ledger().map_err(internal)?;
        let checkpoint = contents
            .checkpoint
            .take()
            .ok_or_else(|| Status::failed_precondition("the ledger has no checkpoint yet"))?;
        let head = v1::LedgerFrame {
            frame: Some(v1::ledger_frame::Frame::Checkpoint(v1::LedgerCheckpoint {
                key_name: checkpoint.key_name,
                note: checkpoint.note,
            })),
        };
        let readable = readable_entries(&caller, &contents.leaves);
        contents.retain_openings(|index, opening| {
            readable[index as usize] && may_open(&caller, opening)
        });
        let mut openings = std::mem::take(&mut contents.openings);
        let entries = contents
            .leaves
            .into_iter()
            .zip(readable)
            .enumerate()
            .flat_map(move |(index, (leaf, readable))| {
                let entry = match readable {
                    true => v1::ledger_frame::Frame::Entry(leaf),
                    false => v1::ledger_frame::Frame::WithheldLeafHash(
                        cohort_ledger::hash_leaf(&leaf).to_vec(),
                    ),
                };
                let opened = openings.remove(&(index as u64)).unwrap_or_default();
                std::iter::once(entry)
                    .chain(opened.into_iter().map(|o| {
                        v1::ledger_frame::Frame::Opening(v1::LedgerOpening {
                            name: o.name,
                            salt: o.salt,
                            body: o.body,
                        })
                    }))
                    .map(|frame| Ok(v1::LedgerFrame { frame: Some(frame) }))
            });
        let stream = futures::stream::iter(std::iter::once(Ok(head)).chain(entries));
        Ok(Response::new(stream.boxed()))
    }

    async fn get_commitments(
        &self,
        request: Request<v1::GetCommitmentsRequest>,
    ) -> Result<Response<Self::GetCommitmentsStream>, Status> {
        let caller = self.auth.authorize(&request, "GetCommitments", READERS)?;
        let _turn = self.developer_turn().await?;
        let r = request.into_inner();
        readable_job(&self.store, &caller, &r.job_id)?;
        check_client_name(&r.client).map_err(Status::invalid_argument)?;
        let bytes = self
            .store
            .get_object(&crate::runner::proofs::commitments_key(
                &r.job_id, r.round, &r.client,
            ))
            .await
            .map_err(|_| {
                Status::not_found(format!(
                    "job `{}` has no committed update of `{}` in round {}",
                    r.job_id, r.client, r.round
                ))
            })?;
        let chunks: Vec<Result<Chunk, Status>> = byte_chunks(&bytes).map(Ok).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    type GetSetupCeremonyStream = FrameStream<Chunk>;

    async fn get_setup_ceremony(
        &self,
        request: Request<v1::GetSetupCeremonyRequest>,
    ) -> Result<Response<Self::GetSetupCeremonyStream>, Status> {
        let caller = self.auth.authorize(&request, "GetSetupCeremony", READERS)?;
        let _turn = self.developer_turn().await?;
        let job_id = request.into_inner().job_id;
        readable_job(&self.store, &caller, &job_id)?;
        let Some(sha256) =
            crate::setup::recorded_ceremony(&self.store, &job_id).map_err(internal)?
        else {
            return Err(Status::not_found(format!(
                "job `{job_id}`'s keys did not come from a setup ceremony"
            )));
        };
        let ceremonies = self.runner.ceremonies.clone();
        let wanted = sha256.clone();
        let bytes = tokio::task::spawn_blocking(move || ceremonies.file_with_digest(&wanted))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "the setup ceremony {sha256} of job `{job_id}` is no longer among this                      coordinator's --setup-ceremony files (or was changed); ask its operator"
                ))
            })?;
        let bytes = bytes::Bytes::from(bytes);
        let chunks: Vec<Result<Chunk, Status>> = byte_chunks(&bytes).map(Ok).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn submit_attestation(
        &self,
        request: Request<v1::SubmitAttestationRequest>,
    ) -> Result<Response<v1::SubmitAttestationReply>, Status> {
        let caller = self
            .auth
            .authorize(&request, "SubmitAttestation", &[Role::Validator])?;
        let _turn = self.developer_slot().await?;
        let r = request.into_inner();
        let principal = match &caller {
            Caller::Member(p) => Some(p),
            Caller::Anonymous => None,
        };
        let index = crate::attest::accept(
            &self.store,
            &self.ledger,
            principal,
            &r.job_id,
            r.round,
            &r.verdicts_json,
            &r.signature,
        )
        .map_err(|e| match e {
            crate::attest::AttestError::Store(e) => internal(e),
            crate::attest::AttestError::NoSuchRound { .. } => Status::not_found(e.to_string()),
            crate::attest::AttestError::NotValidator(_) | crate::attest::AttestError::Anonymous => {
                Status::permission_denied(e.to_string())
            }
            _ => Status::invalid_argument(e.to_string()),
        })?;
        info!(
            job = r.job_id,
            round = r.round,
            index,
            "validator attestation recorded"
        );
        Ok(Response::new(v1::SubmitAttestationReply {
            ledger_index: index,
        }))
    }

    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobReply>, Status> {
        let caller = self.auth.authorize(&request, "SubmitJob", DEVELOPERS)?;
        let _turn = self.developer_slot().await?;
        let text = request.into_inner().job_toml;
        let spec =
            JobSpec::from_toml(&text).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let row = JobRow {
            id: id.clone(),
            name: spec.name.clone(),
            spec_toml: text,
            state: JobState::Pending,
            error: None,
            created_at: now(),
            rounds_total: spec.training.rounds,
            rounds_completed: 0,
            enrollment: None,
            submitted_by: caller.name().map(str::to_string),
        };
        let entry = cohort_ledger::Record::JobCreated {
            job_id: id.clone(),
            name: row.name.clone(),
            job_sha256: hex::encode(sha2::Sha256::digest(row.spec_toml.as_bytes())),
            submitted_by: row.submitted_by.clone(),
        };
        // The job's row and its ledger entry commit together.
        self.ledger
            .append(&self.store, entry, |tx| Store::insert_job_in(tx, &row))
            .map_err(internal)?;
        info!(
            job = id,
            name = spec.name,
            by = caller.name(),
            "job submitted"
        );
        let runner = self.runner.clone();
        let job_id = id.clone();
        tokio::spawn(async move { runner.run_job(&job_id).await });
        Ok(Response::new(SubmitJobReply { job_id: id }))
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<JobStatus>, Status> {
        let caller = self.auth.authorize(&request, "GetJob", READERS)?;
        let _turn = self.developer_turn().await?;
        let request = request.into_inner();
        let id = request.job_id;
        let job = readable_job(&self.store, &caller, &id)?;
        let status = self
            .job_status_page(
                &job,
                request.rounds_after.unwrap_or(0),
                request.events_after.unwrap_or(0),
                &mut ReplyBudget::page(),
            )
            .map_err(internal)?;
        Ok(Response::new(status))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsReply>, Status> {
        let caller = self.auth.authorize(&request, "ListJobs", READERS)?;
        let _turn = self.developer_turn().await?;
        let jobs = self
            .store
            .jobs()
            .map_err(internal)?
            .iter()
            .filter(|j| caller.may_read_job(j.submitted_by.as_deref()))
            // One budget for the whole list: a job past it comes with
            // `more_rounds` / `more_events` set, for GetJob to page through.
            .scan(ReplyBudget::list(), |budget, j| {
                Some(self.job_status_page(j, 0, 0, budget))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(internal)?;
        Ok(Response::new(ListJobsReply { jobs }))
    }

    async fn list_clients(
        &self,
        request: Request<ListClientsRequest>,
    ) -> Result<Response<ListClientsReply>, Status> {
        self.auth.authorize(&request, "ListClients", READERS)?;
        let _turn = self.developer_turn().await?;
        let connected = self.registry.connected();
        let clients = self
            .store
            .clients()
            .map_err(internal)?
            .into_iter()
            .map(|c| ClientInfo {
                connected: connected.contains(&c.name),
                name: c.name,
                quality_summary_json: c.quality_summary_json,
                last_seen: c.last_seen,
            })
            .collect();
        Ok(Response::new(ListClientsReply { clients }))
    }

    async fn get_model(
        &self,
        request: Request<GetModelRequest>,
    ) -> Result<Response<Self::GetModelStream>, Status> {
        let caller = self.auth.authorize(&request, "GetModel", READERS)?;
        let _turn = self.developer_turn().await?;
        let GetModelRequest { job_id, round } = request.into_inner();
        let job = readable_job(&self.store, &caller, &job_id)?;
        let rounds = self.store.rounds(&job_id).map_err(internal)?;
        let chosen = if round == 0 {
            rounds.last()
        } else {
            rounds.iter().find(|r| r.round == round)
        }
        .ok_or_else(|| {
            Status::not_found(format!("job `{job_id}` has no stored model for that round"))
        })?;
        check_attested(&self.store, &job, chosen.round)?;
        let card = self
            .store
            .get_object(&card_key(&job_id, chosen.round))
            .await
            .map_err(internal)?;
        let body = self
            .store
            .get_object(&model_key(&job_id, chosen.round))
            .await
            .map_err(internal)?;
        // Models stored before signing existed have no signature.
        let signature = self
            .store
            .get_object(&crate::runner::signature_key(&job_id, chosen.round))
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let header = ModelFrame {
            frame: Some(model_frame::Frame::Header(ModelHeader {
                card_json: String::from_utf8_lossy(&card).into_owned(),
                safetensors_bytes: body.len() as u64,
                signature_bundle_json: signature,
            })),
        };
        let chunks: Vec<_> = byte_chunks(&body)
            .map(|chunk| {
                Ok(ModelFrame {
                    frame: Some(model_frame::Frame::Chunk(chunk)),
                })
            })
            .collect();
        let stream = futures::stream::iter(std::iter::once(Ok(header)).chain(chunks));
        Ok(Response::new(stream.boxed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_identity::{CertificateAuthority, IssueRequest};

    /// A hospital reads the ledger entries of the jobs it is enrolled in,
    /// a developer those of the jobs it submitted, both those of no job; a
    /// validator reads every entry.
    #[test]
    fn a_hospital_reads_the_ledger_entries_of_its_own_jobs_only() {
        use cohort_ledger::{EnrolledClient, Entry, Record};
        let key = cohort_identity::MessageSigningKey::generate().unwrap();
        let leaf = |record: Record| {
            Entry::sign(record, "2026-12-06T00:00:00Z".into(), &key)
                .unwrap()
                .to_leaf()
                .unwrap()
        };
        let created = |job: &str| {
            leaf(Record::JobCreated {
                job_id: job.into(),
                name: job.into(),
                job_sha256: "00".into(),
                submitted_by: Some("lab".into()),
            })
        };
        // Sealed, as the ledger appends it: the names stay readable.
        let enrolled = |job: &str, hospital: &str| {
            let (record, _) = Record::ClientsEnrolled {
                job_id: job.into(),
                participants: vec![EnrolledClient {
                    name: hospital.into(),
                    rows: 10,
                    quality_summary_sha256: "00".into(),
                }],
                preprocessing_sha256: "00".into(),
                sealed_participants: Vec::new(),
            }
            .seal()
            .unwrap();
            leaf(record)
        };
        let leaves = vec![
            leaf(Record::CoordinatorKey {
                name: "c".into(),
                public_key: key.verifying_key().to_hex(),
            }),
            created("j1"),
            created("j2"),
            enrolled("j1", "h1"),
            enrolled("j2", "h2"),
        ];
        let member = |role: Role, name: &str| {
            Caller::Member(cohort_identity::Principal {
                role,
                name: name.into(),
                serial: "01".into(),
                signing_key: key.verifying_key(),
                not_after: i64::MAX,
                certificate_der: Vec::new(),
            })
        };
        assert_eq!(
            readable_entries(&member(Role::Hospital, "h1"), &leaves),
            [true, true, false, true, false]
        );
        assert_eq!(
            readable_entries(&member(Role::Hospital, "h3"), &leaves),
            [true, false, false, false, false]
        );
        assert_eq!(
            readable_entries(&member(Role::Developer, "lab"), &leaves),
            [true; 5]
        );
        assert_eq!(
            readable_entries(&member(Role::Developer, "rival"), &leaves),
            [true, false, false, false, false]
        );
        assert_eq!(
            readable_entries(&member(Role::Validator, "v"), &leaves),
            [true; 5]
        );
        // Of the sealed parts of the entries it reads, a hospital opens its
        // own only; developers and validators every one.
        let opening = |name: &str| cohort_ledger::Opening {
            name: name.into(),
            salt: String::new(),
            body: String::new(),
        };
        assert!(may_open(&member(Role::Hospital, "h1"), &opening("h1")));
        assert!(!may_open(&member(Role::Hospital, "h1"), &opening("h2")));
        assert!(may_open(&member(Role::Developer, "lab"), &opening("h2")));
        assert!(may_open(&member(Role::Validator, "v"), &opening("h2")));
    }

    fn sha(values: &[f32]) -> String {
        cohort_models::parameters_sha256(values)
    }

    fn signed_fit(kit: &cohort_identity::Kit, pending: &Pending, delta: &[f32]) -> ResultHeader {
        let mut header = ResultHeader {
            task_id: "task-1".into(),
            num_examples: 40,
            parameter_count: delta.len() as u64,
            update_sha256: cohort_models::parameters_sha256(delta),
            ..Default::default()
        };
        let statement = cohort_protocol::update_statement(
            &pending.job_id,
            pending.round,
            &header.task_id,
            header.num_examples,
            header.parameter_count,
            &header.update_sha256,
            &header.dataset_sha256,
        );
        header.update_signature = kit
            .signing_key
            .sign(cohort_protocol::UPDATE_SIGNATURE_CONTEXT, &statement)
            .unwrap();
        header
    }

    #[test]
    fn updates_count_only_with_the_senders_signature_over_these_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateAuthority::init("net", &dir.path().join("ca")).unwrap();
        let mut issue = |name: &str| {
            ca.issue(
                &IssueRequest::for_days(Role::Hospital, name, 1),
                &dir.path().join(name),
            )
            .unwrap()
        };
        let (a, b) = (issue("a"), issue("b"));
        let caller = Caller::Member(a.principal.clone());
        let pending = Pending {
            client: "a".into(),
            job_id: "job-1".into(),
            round: 3,
            kind: TaskKind::Fit,
            expect: Expect::Update(3),
            reply: tokio::sync::oneshot::channel().0,
        };
        let delta = [0.5f32, -1.0, 2.0];
        let header = signed_fit(&a, &pending, &delta);
        check_update_signature(&caller, &pending, &header, &sha(&delta)).unwrap();

        // Different bytes than announced.
        let err = check_update_signature(&caller, &pending, &header, &sha(&[0.5, -1.0, 2.5]));
        assert!(err.unwrap_err().contains("not that of the bytes received"));
        // Signed by another hospital's key.
        let forged = signed_fit(&b, &pending, &delta);
        let err = check_update_signature(&caller, &pending, &forged, &sha(&delta));
        assert!(err.unwrap_err().contains("signature does not verify"));
        // Replayed into another round, or with another FedAvg weight.
        let later = Pending {
            round: 4,
            reply: tokio::sync::oneshot::channel().0,
            client: pending.client.clone(),
            job_id: pending.job_id.clone(),
            kind: pending.kind,
            expect: pending.expect,
        };
        assert!(check_update_signature(&caller, &later, &header, &sha(&delta)).is_err());
        let mut heavier = header.clone();
        heavier.num_examples = 4000;
        assert!(check_update_signature(&caller, &pending, &heavier, &sha(&delta)).is_err());
        // Unsigned.
        let mut unsigned = header.clone();
        unsigned.update_signature.clear();
        assert!(check_update_signature(&caller, &pending, &unsigned, &sha(&delta)).is_err());
        // Plaintext mode has no identities to check.
        check_update_signature(&Caller::Anonymous, &pending, &unsigned, &sha(&delta)).unwrap();
    }
}
