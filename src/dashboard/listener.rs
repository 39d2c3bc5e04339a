//! The dashboard's listener: plain HTTP, or HTTPS with the coordinator's
//! own certificate where a consortium client certificate may stand in for
//! a token. Either way the number of open connections is capped (one over
//! the cap is closed unread), a TLS handshake must finish within a
//! deadline, and a connection that sends nothing for a while is closed, so
//! idle or stalled peers cannot hold every slot.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use cohort_coordinator::limits::{ConnectionSlots, accept_each};
use cohort_identity::Principal;
use cohort_identity::tls::RevocationWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The dashboard's connection limits.
#[derive(Debug, Clone, Copy)]
pub struct DashboardLimits {
    /// Open connections at most (a dashboard serves a few people).
    pub max_connections: usize,
    /// Time a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing this long is closed (browsers open
    /// a new one when they need it).
    pub idle_timeout: Duration,
}

impl Default for DashboardLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The consortium member whose client certificate the TLS handshake
    /// verified (against the consortium CA and the revocation list).
    pub member: Option<Principal>,
    /// The revocation list that verified it, re-checked on every request
    /// so that revoking a member ends its open connections' access too.
    pub revocation: Option<Arc<RevocationWatch>>,
}

impl Connected<IncomingStream<'_, GuardedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        stream.remote_addr().clone()
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An admitted connection: holds its slot of the cap until it closes.
pub struct Connection {
    stream: Stream,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
}

impl Connection {
    fn new(stream: Stream, slot: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        Self {
            stream,
            _slot: slot,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let next = tokio::time::Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(next);
            }
            Poll::Pending if this.idle.as_mut().poll(cx).is_ready() => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "dashboard connection idle",
                )));
            }
            _ => {}
        }
        read
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The TLS side of the listener.
#[derive(Clone)]
pub struct HttpsSettings {
    pub acceptor: TlsAcceptor,
    pub revocation: Arc<RevocationWatch>,
}

/// Accepts connections in the background (TLS handshakes run beside the
/// accept loop, so a slow one holds up nobody) and hands axum those that
/// were admitted.
pub struct GuardedListener {
    local: SocketAddr,
    admitted: mpsc::Receiver<(Connection, Peer)>,
}

impl GuardedListener {
    pub fn new(
        listener: TcpListener,
        https: Option<HttpsSettings>,
        limits: DashboardLimits,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, admitted) = mpsc::channel(16);
        accept_loop(listener, https, limits, tx);
        Ok(Self { local, admitted })
    }
}

fn accept_loop(
    listener: TcpListener,
    https: Option<HttpsSettings>,
    limits: DashboardLimits,
    tx: mpsc::Sender<(Connection, Peer)>,
) {
    let slots = ConnectionSlots::new(limits.max_connections, "the dashboard's connection cap");
    accept_each(listener, slots, tx, move |tcp, addr, slot, tx| {
        let https = https.clone();
        async move {
            let Some(https) = https else {
                let connection = Connection::new(Stream::Plain(tcp), slot, limits.idle_timeout);
                let peer = Peer {
                    addr,
                    member: None,
                    revocation: None,
                };
                return tx.send((connection, peer)).await.is_ok();
            };
            tokio::spawn(async move {
                if let Err(e) = https.revocation.refresh() {
                    tracing::warn!(
                        "revocation list not reloaded, the previous one stays in force: {e}"
                    );
                }
                let stream = match tokio::time::timeout(
                    limits.handshake_timeout,
                    https.acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %addr, "dashboard TLS handshake rejected: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(peer = %addr, "dashboard TLS handshake timed out");
                        return;
                    }
                };
                let member = match stream.get_ref().1.peer_certificates() {
                    Some([leaf, ..]) => match Principal::from_certificate(leaf) {
                        Ok(member) => Some(member),
                        Err(e) => {
                            tracing::warn!(peer = %addr, "dashboard: client certificate refused: {e}");
                            return;
                        }
                    },
                    _ => None,
                };
                let connection =
                    Connection::new(Stream::Tls(Box::new(stream)), slot, limits.idle_timeout);
                let peer = Peer {
                    addr,
                    member,
                    revocation: Some(https.revocation),
                };
                let _ = tx.send((connection, peer)).await;
            });
            true
        }
    })
}

impl axum::serve::Listener for GuardedListener {
    type Io = Connection;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.admitted.recv().await {
            Some(admitted) => admitted,
            // The accept loop only ends once this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            member: None,
            revocation: None,
        })
    }
}
