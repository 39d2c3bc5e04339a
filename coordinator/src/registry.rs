//! Live clients: sessions, per-client task queues and the answers the job
//! runners are waiting for.
//!
//! Hospitals cannot be dialled, so the coordinator never pushes: a runner
//! queues a task for a client and gets a receiver; the client's next
//! `PullTask` long-poll takes the task off the queue; its `SubmitResult`
//! resolves the receiver.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cohort_datasets::{LocalStatistics, ResolvedSchema};
use cohort_models::Metrics;
use cohort_protocol::v1::{TaskHeader, TaskKind};

use crate::store::UpdateReceipt;
use tokio::sync::{Notify, oneshot};

/// A task waiting in a client's queue.
#[derive(Debug, Clone)]
pub struct Task {
    pub header: TaskHeader,
    pub body: Option<TaskBody>,
}

/// What follows a task's header, in chunks: encoded once, then shared by
/// every hospital the task goes to (cloning it copies no data).
#[derive(Debug, Clone)]
pub enum TaskBody {
    /// Parameters (FIT, EVALUATE) in their wire form, little-endian f32.
    Parameters { count: u64, wire: bytes::Bytes },
    /// Opaque bytes (HE_DECRYPT: the summed ciphertext).
    Bytes(bytes::Bytes),
}

impl TaskBody {
    pub fn parameters(values: &[f32]) -> Self {
        Self::Parameters {
            count: values.len() as u64,
            wire: cohort_models::parameters_to_bytes(values).into(),
        }
    }

    pub fn bytes(bytes: Vec<u8>) -> Self {
        Self::Bytes(bytes.into())
    }

    /// The bytes that follow the header.
    pub fn wire(&self) -> &bytes::Bytes {
        match self {
            Self::Parameters { wire, .. } | Self::Bytes(wire) => wire,
        }
    }

    /// Announces the body's size in the task's header.
    pub fn describe(&self, header: &mut TaskHeader) {
        match self {
            Self::Parameters { count, .. } => header.parameter_count = *count,
            Self::Bytes(b) => header.payload_bytes = b.len() as u64,
        }
    }
}

/// A client's answer, already checked by the server against what the task
/// asked for.
#[derive(Debug)]
pub enum TaskAnswer {
    /// `statistics` is `None` when the task asked for the schema only
    /// (the statistics are then summed securely).
    Prepare {
        statistics: Option<LocalStatistics>,
        schema: ResolvedSchema,
    },
    Fit {
        delta: Vec<f32>,
        num_examples: u64,
        train_loss: Option<f64>,
        compute_seconds: f64,
        /// What was received, kept with the round for auditors.
        receipt: UpdateReceipt,
        /// Update proofs: the hospital's proof that `delta` is well formed
        /// (empty when it sent none).
        proof: Vec<u8>,
    },
    Evaluate {
        metrics: Metrics,
        /// A valued round: each candidate model's mean validation loss, in
        /// coalition order, over `metrics.examples` validation rows.
        candidate_losses: Vec<f64>,
        compute_seconds: f64,
    },
    /// Secure aggregation, stage 1: the client's key advertisement, its
    /// signature and the certificate it was checked against (empty without
    /// mutual TLS), to be relayed to its neighbours.
    SecAggAdvertise {
        advertisement: Vec<u8>,
        signature: Vec<u8>,
        certificate_der: Vec<u8>,
    },
    /// Stage 2: encrypted shares for the client's neighbours.
    SecAggShares(Vec<u8>),
    /// Stage 3: the masked, encoded update (integers mod 2^bits).
    MaskedFit {
        masked: Vec<u64>,
        train_loss: Option<f64>,
        compute_seconds: f64,
        receipt: UpdateReceipt,
    },
    /// Stage 3 with update proofs: the masked update as one Pedersen
    /// commitment per entry (`cohort_proofs::committed`), and the proof
    /// that they commit to a well-formed update.
    CommittedFit {
        commitments: Vec<u8>,
        proof: Vec<u8>,
        train_loss: Option<f64>,
        compute_seconds: f64,
        receipt: UpdateReceipt,
    },
    /// Stage 3 of a statistics session: the hospital's term of the pass's
    /// sum, masked.
    MaskedStatistics(Vec<u64>),
    /// Stage 4: the shares revealed for unmasking.
    SecAggReveal(Vec<u8>),
    /// Homomorphic aggregation, stage 1: the member's advert, its signature
    /// and the certificate it was checked against (empty without mutual
    /// TLS), to be relayed to every member.
    HeAdvert {
        advert: Vec<u8>,
        signature: Vec<u8>,
        certificate_der: Vec<u8>,
    },
    /// Stage 2: the encrypted update and the member's sealed Shamir shares
    /// (`cohort_privacy::he::frame_list`).
    HeFit {
        /// The ciphertext, followed under update proofs by the update's
        /// commitments.
        ciphertext: Vec<u8>,
        sealed: Vec<u8>,
        /// The proof about the commitments (empty without update proofs).
        proof: Vec<u8>,
        train_loss: Option<f64>,
        compute_seconds: f64,
        receipt: UpdateReceipt,
    },
    /// Stage 3: empty once the member's shares are open, then its
    /// decryption share.
    HeDecrypt(Vec<u8>),
    /// Vertical split learning (issue 18): a step's JSON report and its
    /// bytes (blinded ids, or a trained part's f32 values).
    Vertical {
        report_json: String,
        payload: Vec<u8>,
        /// Hex SHA-256 of `payload`, and the site's signature over it
        /// (`cohort_protocol::update_statement`; empty without mutual TLS).
        payload_sha256: String,
        signature: Vec<u8>,
        num_examples: u64,
        compute_seconds: f64,
    },
}

/// The body an answer must carry, set when its task is dispatched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Expect {
    #[default]
    Nothing,
    /// An update of this many f32 values.
    Update(u64),
    /// A masked update of this many integers mod 2^bits.
    Masked { count: u64, bits: u32 },
    /// Exactly this many bytes (an encrypted update or decryption share).
    Bytes(u64),
    /// A masked update of this many entries as Pedersen commitments
    /// (`cohort_proofs::committed::COMMITMENT_BYTES` each), with its proof.
    Commitments(u64),
}

/// `Err` carries the reason a client refused a task or its answer was
/// rejected; it is logged and the client is left out of that step.
pub type TaskOutcome = Result<TaskAnswer, String>;

/// What the server needs to check an incoming answer.
#[derive(Debug)]
pub struct Pending {
    pub client: String,
    pub job_id: String,
    pub round: u32,
    pub kind: TaskKind,
    pub expect: Expect,
    pub reply: oneshot::Sender<TaskOutcome>,
}

struct ClientEntry {
    session_id: String,
    queue: VecDeque<Task>,
    notify: Arc<Notify>,
    last_seen: Instant,
    polling: usize,
    /// Serial of the certificate the session was opened with (mutual TLS).
    certificate: Option<String>,
}

#[derive(Default)]
struct Inner {
    clients: HashMap<String, ClientEntry>,
    sessions: HashMap<String, String>,
    pending: HashMap<String, Pending>,
}

/// A job running on this coordinator (see [`Registry::job_running`]).
pub struct RunningJob<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for RunningJob<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub struct Registry {
    inner: Mutex<Inner>,
    poll_timeout: Duration,
    running_jobs: std::sync::atomic::AtomicUsize,
    /// Split learning: where hospitals' bottom parts meet the top parts.
    pub split: crate::split::SplitSeats,
    /// Vertical split learning: the relays of running rounds.
    pub vertical: crate::vertical::VerticalRelays,
    /// Task and answer bytes of the rounds in progress (the dashboard's
    /// bytes per round).
    pub traffic: crate::traffic::TrafficTally,
    /// Training-split accuracy and AUC the hospitals reported with their
    /// updates, by round.
    pub train_metrics: crate::train_metrics::TrainMetricsTally,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unknown session; register again")]
pub struct UnknownSession;

impl Registry {
    pub fn new(poll_timeout: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            poll_timeout,
            running_jobs: Default::default(),
            split: crate::split::SplitSeats::default(),
            vertical: crate::vertical::VerticalRelays::default(),
            traffic: crate::traffic::TrafficTally::default(),
            train_metrics: crate::train_metrics::TrainMetricsTally::default(),
        }
    }

    pub fn poll_timeout(&self) -> Duration {
        self.poll_timeout
    }

    /// Marks a job as running until the guard is dropped.
    pub fn job_running(&self) -> RunningJob<'_> {
        self.running_jobs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RunningJob(&self.running_jobs)
    }

    /// Whether any job is running here (preparing, in a round, or between
    /// rounds).
    pub fn jobs_running(&self) -> bool {
        self.running_jobs.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a new session for `name`, ending any earlier one (a restarted
    /// client). Queued tasks stay queued for the new session. `certificate`
    /// is the serial of the client's certificate under mutual TLS.
    pub fn register(&self, name: &str, certificate: Option<&str>) -> String {
        let session_id = uuid::Uuid::new_v4().simple().to_string();
        let mut inner = self.lock();
        let entry = inner
            .clients
            .entry(name.to_string())
            .or_insert_with(|| ClientEntry {
                session_id: String::new(),
                queue: VecDeque::new(),
                notify: Arc::new(Notify::new()),
                last_seen: Instant::now(),
                polling: 0,
                certificate: None,
            });
        entry.certificate = certificate.map(str::to_string);
        let old = std::mem::replace(&mut entry.session_id, session_id.clone());
        entry.last_seen = Instant::now();
        inner.sessions.remove(&old);
        inner.sessions.insert(session_id.clone(), name.to_string());
        session_id
    }

    pub fn client_for_session(&self, session_id: &str) -> Result<String, UnknownSession> {
        self.lock()
            .sessions
            .get(session_id)
            .cloned()
            .ok_or(UnknownSession)
    }

    /// Clients polling now or within the last poll window (plus slack for
    /// the time between two polls).
    pub fn connected(&self) -> Vec<String> {
        let window = self.poll_timeout + Duration::from_secs(5);
        let mut names: Vec<String> = self
            .lock()
            .clients
            .iter()
            .filter(|(_, c)| c.polling > 0 || c.last_seen.elapsed() < window)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// Ends the sessions opened with a certificate for which `revoked` holds,
    /// and fails their outstanding tasks at once, so no runner waits for a
    /// member that can no longer answer. Returns the evicted names.
    pub fn evict_revoked(&self, revoked: impl Fn(&str) -> bool) -> Vec<String> {
        let mut inner = self.lock();
        let names: Vec<String> = inner
            .clients
            .iter()
            .filter(|(_, c)| c.certificate.as_deref().is_some_and(&revoked))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &names {
            if let Some(entry) = inner.clients.remove(name) {
                inner.sessions.remove(&entry.session_id);
                entry.notify.notify_waiters();
            }
            let tasks: Vec<String> = inner
                .pending
                .iter()
                .filter(|(_, p)| &p.client == name)
                .map(|(id, _)| id.clone())
                .collect();
            for id in tasks {
                if let Some(p) = inner.pending.remove(&id) {
                    let _ = p.reply.send(Err("its certificate was revoked".into()));
                }
            }
        }
        names
    }

    /// Queues `task` for `client` and returns where its answer will arrive.
    pub fn dispatch(&self, client: &str, task: Task) -> oneshot::Receiver<TaskOutcome> {
        let (reply, rx) = oneshot::channel();
        let mut inner = self.lock();
        let pending = Pending {
            client: client.to_string(),
            job_id: task.header.job_id.clone(),
            round: task.header.round,
            kind: task.header.kind(),
            expect: Expect::Nothing,
            reply,
        };
        inner.pending.insert(task.header.task_id.clone(), pending);
        match inner.clients.get_mut(client) {
            Some(entry) => {
                entry.queue.push_back(task);
                entry.notify.notify_one();
            }
            None => {
                // Not connected: answer at once so the runner does not wait.
                if let Some(p) = inner.pending.remove(&task.header.task_id) {
                    let _ = p.reply.send(Err("client is not connected".into()));
                }
            }
        }
        rx
    }

    /// Sets the body an answer must carry (FIT).
    pub fn expect(&self, task_id: &str, expect: Expect) {
        if let Some(p) = self.lock().pending.get_mut(task_id) {
            p.expect = expect;
        }
    }

    /// Waits up to the poll window for the session's next task.
    pub async fn next_task(&self, session_id: &str) -> Result<Option<Task>, UnknownSession> {
        let deadline = tokio::time::Instant::now() + self.poll_timeout;
        let name = self.client_for_session(session_id)?;
        let notify = {
            let mut inner = self.lock();
            let entry = inner.clients.get_mut(&name).ok_or(UnknownSession)?;
            entry.polling += 1;
            entry.notify.clone()
        };
        let result = loop {
            {
                let mut inner = self.lock();
                if !inner.sessions.contains_key(session_id) {
                    break Err(UnknownSession);
                }
                if let Some(entry) = inner.clients.get_mut(&name) {
                    entry.last_seen = Instant::now();
                    if let Some(task) = entry.queue.pop_front() {
                        break Ok(Some(task));
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notify.notified())
                .await
                .is_err()
            {
                break Ok(None);
            }
        };
        let mut inner = self.lock();
        if let Some(entry) = inner.clients.get_mut(&name) {
            entry.polling = entry.polling.saturating_sub(1);
            entry.last_seen = Instant::now();
        }
        result
    }

    /// What an answer to an open task will carry, for the client the task
    /// was sent to (the pending entry stays).
    pub fn pending_expect(&self, task_id: &str, client: &str) -> Result<Expect, String> {
        let inner = self.lock();
        open_for(&inner.pending, task_id, client).map(|p| p.expect)
    }

    /// Claims the pending entry for an incoming answer; only the client the
    /// task was sent to may answer it.
    pub fn take_pending(&self, task_id: &str, client: &str) -> Result<Pending, String> {
        let mut inner = self.lock();
        open_for(&inner.pending, task_id, client)?;
        inner
            .pending
            .remove(task_id)
            .ok_or_else(|| format!("task {task_id} is not open"))
    }

    /// Forgets tasks a runner stopped waiting for, queued or in flight.
    pub fn cancel(&self, task_ids: &[String]) {
        let mut inner = self.lock();
        for id in task_ids {
            inner.pending.remove(id);
        }
        for entry in inner.clients.values_mut() {
            entry
                .queue
                .retain(|t| !task_ids.contains(&t.header.task_id));
        }
    }
}

/// The pending entry of `task_id`, if it is open and was sent to `client`.
fn open_for<'a>(
    pending: &'a HashMap<String, Pending>,
    task_id: &str,
    client: &str,
) -> Result<&'a Pending, String> {
    match pending.get(task_id) {
        None => Err(format!(
            "task {task_id} is not open (answered, expired or unknown)"
        )),
        Some(p) if p.client != client => Err(format!("task {task_id} was not sent to {client}")),
        Some(p) => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Task {
        Task {
            header: TaskHeader {
                task_id: id.into(),
                kind: TaskKind::Prepare as i32,
                ..Default::default()
            },
            body: None,
        }
    }

    #[tokio::test]
    async fn dispatched_task_reaches_the_polling_client() {
        let reg = Arc::new(Registry::new(Duration::from_secs(5)));
        let session = reg.register("a", None);
        let poller = {
            let reg = reg.clone();
            tokio::spawn(async move { reg.next_task(&session).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _rx = reg.dispatch("a", task("t1"));
        let got = poller.await.unwrap().unwrap().unwrap();
        assert_eq!(got.header.task_id, "t1");
        // Its answer's size is asked for by its own client only, and
        // asking leaves it open.
        assert!(
            reg.pending_expect("t1", "b")
                .unwrap_err()
                .contains("not sent to b")
        );
        assert!(
            reg.pending_expect("t2", "a")
                .unwrap_err()
                .contains("not open")
        );
        assert_eq!(reg.pending_expect("t1", "a"), Ok(Expect::Nothing));
        assert!(reg.take_pending("t1", "b").is_err());
        assert!(reg.take_pending("t1", "a").is_ok());
        assert!(reg.take_pending("t1", "a").is_err());
    }

    #[tokio::test]
    async fn poll_times_out_and_old_sessions_die() {
        let reg = Registry::new(Duration::from_millis(30));
        let s1 = reg.register("a", None);
        assert!(reg.next_task(&s1).await.unwrap().is_none());
        let _s2 = reg.register("a", None);
        assert_eq!(reg.next_task(&s1).await.unwrap_err(), UnknownSession);
        assert_eq!(reg.connected(), vec!["a".to_string()]);
    }

    #[tokio::test]
    async fn unknown_client_is_answered_at_once_and_cancel_clears() {
        let reg = Registry::new(Duration::from_millis(30));
        let rx = reg.dispatch("ghost", task("t"));
        assert!(rx.await.unwrap().is_err());
        let s = reg.register("a", None);
        let _rx = reg.dispatch("a", task("t2"));
        reg.cancel(&["t2".to_string()]);
        assert!(reg.next_task(&s).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn revoked_members_are_evicted_and_their_tasks_fail_at_once() {
        let reg = Registry::new(Duration::from_secs(30));
        let a = reg.register("a", Some("aa"));
        let _b = reg.register("b", Some("bb"));
        let rx = reg.dispatch("a", task("t"));
        assert_eq!(reg.evict_revoked(|serial| serial == "aa"), ["a"]);
        assert_eq!(
            rx.await.unwrap().unwrap_err(),
            "its certificate was revoked"
        );
        assert_eq!(reg.connected(), ["b"]);
        assert_eq!(reg.next_task(&a).await.unwrap_err(), UnknownSession);
        assert!(reg.evict_revoked(|serial| serial == "aa").is_empty());
    }
}
