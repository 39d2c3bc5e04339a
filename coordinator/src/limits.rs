//! Limits on what a peer can make the coordinator hold before it has
//! proved to be a useful client: connections, bytes per message, time to
//! finish the TLS handshake and the HTTP/2 preface, and silence on an open
//! connection.
//!
//! - [`WireLimits`]: the settings (`cohort coordinator --max-connections`,
//!   `--max-message-bytes`, `--handshake-timeout-secs`,
//!   `--keepalive-interval-secs`, `--keepalive-timeout-secs`), checked by
//!   [`WireLimits::check`].
//! - [`accept_plain`] / [`crate::security::tls_incoming`] hand tonic only
//!   connections that hold a slot of the connection cap; a connection over
//!   the cap is closed at once, so a flood of idle sockets cannot queue up
//!   in front of real clients.
//! - [`Limited`] wraps each connection: it gives its slot back when it
//!   closes, and ends a connection that has not sent the HTTP/2 preface and
//!   first frame within the handshake timeout (hyper itself waits forever).
//!   After that, HTTP/2 keepalive pings end half-open connections.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use cohort_protocol::{MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES};

use crate::lock;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::warn;

/// The client connection preface (24 bytes) and the header of the SETTINGS
/// frame that must follow it (9 bytes): a peer that has sent these speaks
/// HTTP/2, and from then on keepalive pings decide whether it is alive.
const PREFACE_AND_SETTINGS_HEADER: usize = 24 + 9;

/// A decode limit below this would refuse the coordinator's own upload
/// chunks.
pub const MIN_MESSAGE_BYTES: usize = MAX_CHUNK_BYTES + (64 << 10);

/// Wire-level limits of one coordinator. The defaults suit a consortium of
/// a few hundred hospitals and developers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest gRPC message the coordinator decodes; larger ones are
    /// refused with `OutOfRange` before they are buffered whole.
    pub max_message_bytes: usize,
    /// Connections open at once (TLS handshakes in progress included);
    /// more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a new connection has to finish the TLS handshake, and then
    /// again to send the HTTP/2 preface and its first frame.
    pub handshake_timeout: Duration,
    /// Silence on a connection after which the coordinator sends an HTTP/2
    /// ping.
    pub keepalive_interval: Duration,
    /// Time the peer has to answer that ping before the connection is
    /// closed.
    pub keepalive_timeout: Duration,
}

impl Default for WireLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitsError {
    #[error(
        "--max-message-bytes {0} is below {MIN_MESSAGE_BYTES}: clients upload models in chunks of up to {MAX_CHUNK_BYTES} bytes"
    )]
    MessageTooSmall(usize),
    #[error("--max-message-bytes {0} is above {MAX_MESSAGE_BYTES}, the most a Cohort peer sends")]
    MessageTooLarge(usize),
    #[error("--max-connections must be at least 1")]
    NoConnections,
    #[error("--{0} must be at least 1 second")]
    TooShort(&'static str),
    #[error("--developer-share must be a fraction above 0 and at most 1 (1: no limit), not {0}")]
    DeveloperShare(String),
}

impl WireLimits {
    pub fn check(&self) -> Result<(), LimitsError> {
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(LimitsError::MessageTooSmall(self.max_message_bytes));
        }
        if self.max_message_bytes > MAX_MESSAGE_BYTES {
            return Err(LimitsError::MessageTooLarge(self.max_message_bytes));
        }
        if self.max_connections == 0 {
            return Err(LimitsError::NoConnections);
        }
        for (value, flag) in [
            (self.handshake_timeout, "handshake-timeout-secs"),
            (self.keepalive_interval, "keepalive-interval-secs"),
            (self.keepalive_timeout, "keepalive-timeout-secs"),
        ] {
            if value < Duration::from_secs(1) {
                return Err(LimitsError::TooShort(flag));
            }
        }
        Ok(())
    }
}

/// A cap on the bytes of hospitals' uploads (updates, masked updates,
/// ciphertexts) being received at once (`cohort coordinator
/// --update-memory-mb`). An upload takes its share before its first chunk
/// is read and gives it back once it is handed to the round, which folds
/// it at once where it can. One upload larger than the whole cap is let
/// through alone.
///
/// Hospitals ask for their share first (`AdmitUpload`, [`Self::admit`])
/// and start sending only once they have it: an upload that found the cap
/// reached after it had started would wait in HTTP/2 flow control with up
/// to a receive window of its data buffered, memory that grows with the
/// hospitals waiting. A share set aside that way is held for its task's
/// upload for [`ADMISSION_HOLD`], then given back.
#[derive(Debug, Clone)]
pub struct UploadMemory {
    kib: Arc<Semaphore>,
    total_kib: u32,
    /// Shares set aside by task id, with the admission's number (so that an
    /// expiry does not take a later admission of the same task).
    admitted: Arc<std::sync::Mutex<HashMap<String, (u64, OwnedSemaphorePermit)>>>,
    admissions: Arc<AtomicU64>,
    hold: Duration,
}

/// How long a share set aside by `AdmitUpload` waits for its upload.
pub const ADMISSION_HOLD: Duration = Duration::from_secs(30);

impl UploadMemory {
    pub fn new(bytes: u64) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            admitted: Default::default(),
            admissions: Default::default(),
            hold: ADMISSION_HOLD,
        }
    }

    /// How long a share set aside by [`Self::admit`] waits for its upload.
    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// Waits until `bytes` more may be held, then holds them for the upload
    /// of `task_id` ([`Self::take_admitted`]) for at most [`Self::hold`].
    pub async fn admit(&self, task_id: &str, bytes: u64) {
        let permit = self.reserve(bytes).await;
        let number = self.admissions.fetch_add(1, Ordering::Relaxed);
        lock(&self.admitted).insert(task_id.to_string(), (number, permit));
        let admitted = self.admitted.clone();
        let task_id = task_id.to_string();
        let hold = self.hold;
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            let mut admitted = lock(&admitted);
            if admitted.get(&task_id).is_some_and(|(n, _)| *n == number) {
                admitted.remove(&task_id);
            }
        });
    }

    /// The share set aside for `task_id`'s upload, if it is still held.
    pub fn take_admitted(&self, task_id: &str) -> Option<OwnedSemaphorePermit> {
        lock(&self.admitted)
            .remove(task_id)
            .map(|(_, permit)| permit)
    }

    /// Waits until `bytes` more may be held.
    pub async fn reserve(&self, bytes: u64) -> OwnedSemaphorePermit {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        self.kib
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the upload semaphore is never closed")
    }

    /// KiB not reserved right now.
    pub fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }
}

/// The share of the coordinator's time developer and validator calls may
/// take while a job runs (`--developer-share`), in the manner of
/// PostgreSQL's cost-based vacuum delay: each call is charged the time it
/// held its admission slot, the charges are repaid at `share`
/// seconds per second, and a call that finds the balance overdrawn waits
/// until it is repaid. Rounds then lose about `share` of their time to a
/// crowd of pollers, however many there are; the pollers wait longer
/// instead. With no job running nothing is charged and nobody waits.
#[derive(Debug)]
pub struct DeveloperShare {
    share: f64,
    state: std::sync::Mutex<ShareBalance>,
}

#[derive(Debug)]
struct ShareBalance {
    /// Seconds of call time still allowed (negative: overdrawn).
    credit: f64,
    at: std::time::Instant,
}

/// Call time a burst may take before the share applies: a few calls after
/// an idle spell go through at once, not enough to hold up a short round.
const SHARE_BURST_SECS: f64 = 0.01;

impl DeveloperShare {
    /// Refuses a share outside (0, 1].
    pub fn check(share: f64) -> Result<(), LimitsError> {
        match share.is_finite() && share > 0.0 && share <= 1.0 {
            true => Ok(()),
            false => Err(LimitsError::DeveloperShare(share.to_string())),
        }
    }

    /// `share` in (0, 1] (see [`DeveloperShare::check`]); 1 turns the
    /// limit off.
    pub fn new(share: f64) -> Self {
        Self {
            share: share.clamp(f64::MIN_POSITIVE, 1.0),
            state: std::sync::Mutex::new(ShareBalance {
                credit: SHARE_BURST_SECS,
                at: std::time::Instant::now(),
            }),
        }
    }

    fn balance(&self) -> std::sync::MutexGuard<'_, ShareBalance> {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let repaid = now.duration_since(b.at).as_secs_f64() * self.share;
        b.credit = (b.credit + repaid).min(SHARE_BURST_SECS);
        b.at = now;
        b
    }

    /// How long the next call must wait before it starts (zero: now).
    pub fn wait(&self) -> Duration {
        if self.share >= 1.0 {
            return Duration::ZERO;
        }
        let credit = self.balance().credit;
        match credit > 0.0 {
            true => Duration::ZERO,
            false => Duration::from_secs_f64(-credit / self.share),
        }
    }

    /// Charges a call that held its slot for `held`.
    pub fn charge(&self, held: Duration) {
        if self.share < 1.0 {
            self.balance().credit -= held.as_secs_f64();
        }
    }
}

/// The connection cap, shared by the accept loop and every connection.
#[derive(Clone)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
    limit: usize,
    refused: Arc<AtomicU64>,
    /// The listener, as the refusal is logged (e.g. the flag that sets it).
    listener: &'static str,
}

impl ConnectionSlots {
    pub fn new(limit: usize, listener: &'static str) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            refused: Arc::default(),
            listener,
        }
    }

    /// A slot for a connection from `peer`, or `None` (logged) when all are
    /// taken.
    pub fn admit(&self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                // One line per power of two keeps a flood from flooding the log.
                if refused.is_power_of_two() {
                    warn!(
                        peer = %peer,
                        refused,
                        "connection closed: all {} connection slots are taken ({})",
                        self.limit,
                        self.listener
                    );
                }
                None
            }
        }
    }
}

/// A connection holding one slot of the connection cap, which must send
/// the HTTP/2 preface within a deadline.
pub struct Limited<T> {
    inner: T,
    _slot: OwnedSemaphorePermit,
    peer: Option<SocketAddr>,
    /// Until the preface has arrived.
    preface_deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
}

impl<T> Limited<T> {
    pub(crate) fn new(
        inner: T,
        slot: OwnedSemaphorePermit,
        peer: Option<SocketAddr>,
        preface_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            _slot: slot,
            peer,
            preface_deadline: Some(Box::pin(tokio::time::sleep(preface_timeout))),
            received: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = &mut this.preface_deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.preface_deadline = None;
            let peer = this
                .peer
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into());
            warn!(
                peer,
                received = this.received,
                "connection closed: no HTTP/2 preface within the handshake timeout"
            );
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the handshake timeout",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &read {
            this.received += buf.filled().len() - before;
            if this.received >= PREFACE_AND_SETTINGS_HEADER {
                this.preface_deadline = None;
            }
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: Connected> Connected for Limited<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The connections a server reads: each admitted within the cap.
pub type Incoming<S> = ReceiverStream<Result<Limited<S>, io::Error>>;

/// Accepts TCP connections within the connection cap (one over it is closed
/// unread) and hands each admitted one, with its slot, to `admitted`, which
/// sends it on (or drops it) and answers `false` once nobody reads any more.
pub(crate) fn accept_within<S, F, Fut>(
    listener: TcpListener,
    limits: WireLimits,
    admitted: F,
) -> Incoming<S>
where
    S: Send + 'static,
    F: Fn(
            TcpStream,
            SocketAddr,
            OwnedSemaphorePermit,
            mpsc::Sender<Result<Limited<S>, io::Error>>,
        ) -> Fut
        + Send
        + 'static,
    Fut: Future<Output = bool> + Send,
{
    let slots = ConnectionSlots::new(limits.max_connections, "--max-connections");
    let (tx, rx) = mpsc::channel(64);
    accept_each(listener, slots, tx, admitted);
    ReceiverStream::new(rx)
}

/// The accept loop of every listener Cohort runs (gRPC, the dashboard), in
/// the background: each connection `slots` admits goes, with its slot and
/// nodelay set, to `admitted`, which passes it on through `tx` (or drops
/// it) and answers `false` to stop. The loop also stops when nobody reads
/// `tx` any more.
pub fn accept_each<T, F, Fut>(
    listener: TcpListener,
    slots: ConnectionSlots,
    tx: mpsc::Sender<T>,
    admitted: F,
) where
    T: Send + 'static,
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit, mpsc::Sender<T>) -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = slots.admit(peer) else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            if !admitted(tcp, peer, slot, tx.clone()).await {
                return;
            }
        }
    });
}

/// Accepts plaintext TCP connections within the connection cap.
pub(crate) fn accept_plain(listener: TcpListener, limits: WireLimits) -> Incoming<TcpStream> {
    accept_within(listener, limits, move |tcp, peer, slot, tx| async move {
        let stream = Limited::new(tcp, slot, Some(peer), limits.handshake_timeout);
        tx.send(Ok(stream)).await.is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn developer_calls_overdraw_their_share_and_wait_it_back() {
        let share = DeveloperShare::new(0.1);
        assert_eq!(
            share.wait(),
            Duration::ZERO,
            "an idle coordinator admits at once"
        );
        // 0.21 s of calls with 0.01 s of credit: 0.2 s overdrawn, repaid at
        // 0.1 s per second.
        share.charge(Duration::from_millis(210));
        let wait = share.wait();
        assert!(
            wait > Duration::from_millis(1900) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        let unlimited = DeveloperShare::new(1.0);
        unlimited.charge(Duration::from_secs(10));
        assert_eq!(unlimited.wait(), Duration::ZERO);
    }

    #[tokio::test]
    async fn uploads_beyond_the_memory_cap_wait_their_turn() {
        let memory = UploadMemory::new(10 * 1024);
        let first = memory.reserve(6 * 1024).await;
        let second = memory.reserve(4 * 1024).await;
        assert_eq!(memory.available_kib(), 0);
        // A third waits until one of the first two is handed on.
        let waiting = tokio::spawn({
            let memory = memory.clone();
            async move { memory.reserve(3 * 1024).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(first);
        let third = waiting.await.unwrap();
        assert_eq!(memory.available_kib(), 3);
        // One larger than the whole cap goes through alone.
        drop((second, third));
        let huge = memory.reserve(1 << 30).await;
        assert_eq!(memory.available_kib(), 0);
        drop(huge);
        assert_eq!(memory.available_kib(), 10);
    }

    #[tokio::test]
    async fn an_admitted_share_waits_for_its_upload_then_goes_back() {
        const HOLD: Duration = Duration::from_secs(2);
        let memory = UploadMemory {
            hold: HOLD,
            ..UploadMemory::new(10 * 1024)
        };
        memory.admit("task-1", 6 * 1024).await;
        assert_eq!(memory.available_kib(), 4);
        // Taken once, by its own task only.
        assert!(memory.take_admitted("task-2").is_none());
        let share = memory.take_admitted("task-1").unwrap();
        assert!(memory.take_admitted("task-1").is_none());
        drop(share);
        assert_eq!(memory.available_kib(), 10);
        // Never taken: given back after the hold, but a later admission of
        // the same task is not cut short by the first one's expiry.
        memory.admit("task-3", 4 * 1024).await;
        tokio::time::sleep(HOLD / 2).await;
        // Admitted again: the new share replaces the old one.
        memory.admit("task-3", 4 * 1024).await;
        assert_eq!(memory.available_kib(), 6);
        tokio::time::sleep(HOLD / 2 + Duration::from_millis(200)).await;
        assert_eq!(
            memory.available_kib(),
            6,
            "the first expiry left the second"
        );
        tokio::time::sleep(HOLD / 2).await;
        assert_eq!(memory.available_kib(), 10);
        assert!(memory.take_admitted("task-3").is_none());
    }

    #[test]
    fn defaults_pass_and_unsafe_values_are_refused() {
        let ok = WireLimits::default();
        assert_eq!(ok.check(), Ok(()));
        let tiny = WireLimits {
            max_message_bytes: 1000,
            ..ok
        };
        assert_eq!(tiny.check(), Err(LimitsError::MessageTooSmall(1000)));
        assert!(tiny.check().unwrap_err().to_string().contains("chunks"));
        let none = WireLimits {
            max_connections: 0,
            ..ok
        };
        assert_eq!(none.check(), Err(LimitsError::NoConnections));
        let zero = WireLimits {
            keepalive_timeout: Duration::ZERO,
            ..ok
        };
        assert_eq!(
            zero.check(),
            Err(LimitsError::TooShort("keepalive-timeout-secs"))
        );
    }
}
