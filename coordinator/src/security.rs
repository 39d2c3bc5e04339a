//! Who may call what, and the limits that keep one client from hurting the
//! others.
//!
//! - [`tls_incoming`] terminates mutual TLS: a peer whose certificate is
//!   from another CA, expired or revoked never gets a connection, and the
//!   refusal is logged with its address and reason.
//! - [`Authorizer`] runs at the start of every RPC: it reads the caller's
//!   role and name from its certificate, re-checks revocation (so a
//!   connection opened before a revocation stops working too) and enforces
//!   the role table below.
//! - [`GuardLayer`] bounds the calls one member may have in flight and logs
//!   every call that ends in an error status.
//!
//! | RPC | hospital | developer | validator |
//! | --- | --- | --- | --- |
//! | Register, PullTask, SubmitResult, SplitExchange, VerticalExchange | yes | | |
//! | SubmitJob | | yes | |
//! | GetJob, ListJobs, GetModel, GetCommitments, GetSetupCeremony | | own jobs | all jobs |
//! | ListClients | | yes | yes |

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use cohort_identity::tls::RevocationWatch;
use cohort_identity::{Kit, Principal, Role};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};
use tracing::{info, warn};

use crate::limits::{Incoming, Limited, WireLimits, accept_within};
use crate::registry::Registry;

/// What the coordinator needs to serve mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// A coordinator startup kit.
    pub kit: Arc<Kit>,
    /// The revocation list to enforce; re-read whenever the file changes.
    pub crl: Option<PathBuf>,
}

/// How often the revocation list file is checked for changes.
pub const CRL_POLL: Duration = Duration::from_secs(2);

/// The authenticated caller of an RPC.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The coordinator runs with `--insecure`: nobody is authenticated and
    /// every RPC is open.
    Anonymous,
    Member(Principal),
}

impl Caller {
    /// May this caller see a job submitted by `submitter`? Developers see
    /// their own jobs; validators and anonymous callers see all.
    pub fn may_read_job(&self, submitter: Option<&str>) -> bool {
        match self {
            Caller::Anonymous => true,
            Caller::Member(p) => match p.role {
                Role::Validator => true,
                Role::Developer => submitter == Some(p.name.as_str()),
                Role::Hospital | Role::Coordinator => false,
            },
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::Member(p) => Some(&p.name),
        }
    }
}

#[derive(Clone)]
pub struct Authorizer {
    /// `None`: plaintext mode.
    revocation: Option<Arc<RevocationWatch>>,
}

impl Authorizer {
    pub fn insecure() -> Self {
        Self { revocation: None }
    }

    pub fn mutual_tls(revocation: Arc<RevocationWatch>) -> Self {
        Self {
            revocation: Some(revocation),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.revocation.is_some()
    }

    /// Identifies the caller of `rpc` and checks that its role may call it.
    pub fn authorize<T>(
        &self,
        request: &Request<T>,
        rpc: &str,
        allowed: &[Role],
    ) -> Result<Caller, Status> {
        let Some(revocation) = &self.revocation else {
            return Ok(Caller::Anonymous);
        };
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated(format!("{rpc} needs a client certificate (mutual TLS)"))
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated(format!("{rpc}: no client certificate")))?;
        let principal = Principal::from_certificate(leaf).map_err(|e| {
            Status::unauthenticated(format!("{rpc}: unusable client certificate: {e}"))
        })?;
        if revocation.is_revoked(&principal.serial) {
            return Err(Status::unauthenticated(format!(
                "the certificate of {principal} (serial {}) has been revoked",
                principal.serial
            )));
        }
        if !allowed.contains(&principal.role) {
            let roles: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
            return Err(Status::permission_denied(format!(
                "{principal} may not call {rpc}; it is open to the {} role{}",
                roles.join(" and "),
                if roles.len() > 1 { "s" } else { "" }
            )));
        }
        Ok(Caller::Member(principal))
    }
}

/// Accepts TCP connections and completes the TLS handshake off the accept
/// loop, so one slow or hostile peer cannot stall the others.
/// Connections over `limits.max_connections` are closed unread, and a peer
/// gets `limits.handshake_timeout` for the TLS handshake.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: WireLimits,
) -> Incoming<TlsStream<TcpStream>> {
    accept_within(listener, limits, move |tcp, peer, slot, tx| {
        let acceptor = acceptor.clone();
        async move {
            tokio::spawn(async move {
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let stream =
                            Limited::new(stream, slot, Some(peer), limits.handshake_timeout);
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => warn!(peer = %peer, "TLS handshake rejected: {e}"),
                    Err(_) => warn!(peer = %peer, "TLS handshake timed out"),
                }
            });
            true
        }
    })
}

/// Re-reads the revocation list whenever its file changes, and ends the
/// sessions of members it revokes.
pub fn watch_revocations(
    watch: Arc<RevocationWatch>,
    registry: Arc<Registry>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CRL_POLL);
        loop {
            tick.tick().await;
            match watch.refresh() {
                Ok(Some(list)) => {
                    info!(
                        revoked = list.len(),
                        crl_number = list.number().unwrap_or_default(),
                        "revocation list reloaded"
                    );
                    let evicted = registry.evict_revoked(|serial| list.is_revoked(serial));
                    if !evicted.is_empty() {
                        warn!(members = ?evicted, "sessions of revoked members ended");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!("revocation list not reloaded, the previous one stays in force: {e}")
                }
            }
        }
    })
}

fn peer_of<B>(request: &http::Request<B>) -> (Option<SocketAddr>, Vec<u8>) {
    let ext = request.extensions();
    if let Some(tls) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
        let addr = tls.get_ref().remote_addr();
        let key = tls
            .peer_certs()
            .and_then(|c| c.first().map(|c| c.to_vec()))
            .unwrap_or_default();
        return (addr, key);
    }
    let addr = ext
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr);
    // Without certificates there are no members to tell apart: count per
    // connection, so many simulated clients on one machine (or behind one
    // NAT) do not share one budget.
    let key = addr.map(|a| a.to_string().into_bytes()).unwrap_or_default();
    (addr, key)
}

/// Bounds in-flight calls per member (per certificate with TLS, per
/// connection without) and logs every call that ends in an error status.
#[derive(Clone)]
pub struct GuardLayer {
    in_flight: Arc<Mutex<HashMap<Vec<u8>, usize>>>,
    max_per_member: usize,
}

impl GuardLayer {
    pub fn new(max_per_member: usize) -> Self {
        Self {
            in_flight: Arc::default(),
            max_per_member: max_per_member.max(1),
        }
    }
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

struct InFlight {
    table: Arc<Mutex<HashMap<Vec<u8>, usize>>>,
    key: Vec<u8>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = table.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.key);
            }
        }
    }
}

impl GuardLayer {
    fn admit(&self, key: Vec<u8>) -> Option<InFlight> {
        let mut table = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = table.entry(key.clone()).or_insert(0);
        if *n >= self.max_per_member {
            return None;
        }
        *n += 1;
        Some(InFlight {
            table: self.in_flight.clone(),
            key,
        })
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Guard<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let rpc = request.uri().path().to_string();
        let (peer, key) = peer_of(&request);
        let peer = peer.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
        let Some(in_flight) = self.layer.admit(key) else {
            let status = Status::resource_exhausted(format!(
                "too many calls in flight from this member (limit {})",
                self.layer.max_per_member
            ));
            warn!(peer, rpc, code = ?status.code(), "call rejected: {}", status.message());
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        // The clone that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            drop(in_flight);
            if let Some(status) = Status::from_header_map(response.headers())
                && status.code() != tonic::Code::Ok
            {
                warn!(peer, rpc, code = ?status.code(), "call rejected: {}", status.message());
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_layer::Layer;
    use tower_service::Service;

    /// A handler that holds every call open until released.
    #[derive(Clone)]
    struct Held(Arc<tokio::sync::Semaphore>);

    impl Service<http::Request<()>> for Held {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let gate = self.0.clone();
            Box::pin(async move {
                let _ = gate.acquire().await;
                Ok(http::Response::new(tonic::body::Body::empty()))
            })
        }
    }

    fn from(ip: [u8; 4]) -> http::Request<()> {
        let mut request = http::Request::new(());
        let info = TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(SocketAddr::from((ip, 1000))),
        };
        request.extensions_mut().insert(info);
        request
    }

    #[tokio::test]
    async fn one_member_cannot_hold_more_than_its_share_of_calls() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut guard = GuardLayer::new(2).layer(Held(gate.clone()));
        let first = tokio::spawn(guard.call(from([10, 0, 0, 1])));
        let second = tokio::spawn(guard.call(from([10, 0, 0, 1])));
        tokio::task::yield_now().await;
        let refused = guard.call(from([10, 0, 0, 1])).await.unwrap();
        let status = Status::from_header_map(refused.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        // Another member is unaffected.
        let other = tokio::spawn(guard.call(from([10, 0, 0, 2])));
        gate.add_permits(3);
        for call in [first, second, other] {
            let response = call.await.unwrap().unwrap();
            assert!(Status::from_header_map(response.headers()).is_none());
        }
        // Finished calls give their slots back.
        gate.add_permits(1);
        let again = guard.call(from([10, 0, 0, 1])).await.unwrap();
        assert!(Status::from_header_map(again.headers()).is_none());
    }
}
