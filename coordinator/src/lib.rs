//! The Cohort coordinator: accepts jobs from model developers and runs them
//! as rounds of federated learning across the hospitals' clients.
//!
//! - [`job`]: the job file (parsing, validation);
//! - [`strategy`]: aggregation policies (FedAvg, FedProx, FedAdam, FedYogi);
//! - [`registry`]: live client sessions and task queues;
//! - [`runner`]: the job/round state machine;
//! - [`store`]: SQLite + object store persistence;
//! - [`server`]: the gRPC services;
//! - [`split`]: split learning (SplitFed) seats and job checks;
//! - [`security`]: mutual TLS, per-RPC authorization by role, limits.
//! - [`limits`]: wire limits (connections, message size, handshake and
//!   keepalive timeouts).

pub mod attest;
pub mod job;
pub mod lease;
pub mod ledger;
pub mod limits;
pub mod registry;
pub mod rewards;
pub mod runner;
pub mod security;
pub mod server;
pub mod setup;
pub mod split;
pub mod store;
pub mod strategy;
pub mod traffic;
pub mod train_metrics;
pub mod valuation;
pub mod vertical;
// The web dashboard's read-only view (issue 20).
pub mod view;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cohort_protocol::MAX_MESSAGE_BYTES;
use cohort_protocol::v1::developer_service_server::DeveloperServiceServer;
use cohort_protocol::v1::hospital_service_server::HospitalServiceServer;
pub use limits::{LimitsError, WireLimits};
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use security::TlsSettings;
use security::{Authorizer, GuardLayer};

pub use job::{JobError, JobSpec};
pub use store::{JobState, StoreError};

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub data_dir: PathBuf,
    /// `--database postgres://...`: the state in PostgreSQL; `None`:
    /// `DATA_DIR/coordinator.sqlite`.
    pub database_url: Option<String>,
    /// `None`: `DATA_DIR/objects` on the local disk.
    pub object_store_url: Option<String>,
    /// How long a client's `PullTask` is held open when there is no work.
    pub poll_timeout: Duration,
    /// `None`: plaintext gRPC (`--insecure`); nobody is authenticated.
    pub tls: Option<TlsSettings>,
    /// Longest a single call may take, uploads included.
    pub request_timeout: Duration,
    /// Calls one member may have in flight at once.
    pub max_calls_per_member: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Developer and validator calls (status, lists, models, the ledger)
    /// served at once, all members together; more wait their turn. Rounds
    /// never wait for these, so a crowd of dashboards and scripts cannot
    /// starve training of CPU.
    pub max_developer_calls: usize,
    /// While a job runs, the share of the coordinator's
    /// time developer and validator calls may take (0 < share ≤ 1; 1: no
    /// limit). Rounds lose about this much to a crowd of pollers; the
    /// pollers wait instead.
    pub developer_share: f64,
    /// Where the ledger is anchored besides the data directory (`--ledger
    /// evm`); `None`: the embedded log alone.
    pub anchor: Option<Arc<dyn cohort_ledger::Anchor>>,
    /// The emission schedule and validators' share of `[valuation]` jobs'
    /// rewards.
    pub rewards: rewards::RewardsConfig,
    /// Connections, message size, handshake and keepalive timeouts.
    pub wire: WireLimits,
    /// Bytes of hospitals' uploads received at once, at most; more wait.
    pub upload_memory_bytes: u64,
    /// The coordinator lease this process holds (PostgreSQL with
    /// standbys): every write checks it.
    pub lease: Option<Arc<lease::Fence>>,
    /// Finished Groth16 setup ceremonies (`--setup-ceremony`) for jobs
    /// with `[proofs] setup = "ceremony"`.
    pub setup_ceremonies: Vec<PathBuf>,
}

impl CoordinatorConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
            object_store_url: None,
            poll_timeout: Duration::from_secs(20),
            tls: None,
            request_timeout: Duration::from_secs(300),
            max_calls_per_member: 16,
            max_streams_per_connection: 32,
            max_developer_calls: 2,
            developer_share: 0.05,
            anchor: None,
            rewards: rewards::RewardsConfig::default(),
            wire: WireLimits::default(),
            upload_memory_bytes: 256 << 20,
            lease: None,
            setup_ceremonies: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Identity(#[from] cohort_identity::IdentityError),
    #[error(
        "this consortium's emission schedule is {initial} base units halving every {halving} rounds (fixed by its first payout); start the coordinator with --emission-initial {initial} --emission-halving {halving}"
    )]
    Schedule { initial: u64, halving: u64 },
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error(transparent)]
    Setup(#[from] setup::SetupError),
}

pub struct Coordinator {
    services: Arc<server::Services>,
    tls: Option<cohort_identity::tls::ServerTls>,
    config: CoordinatorConfig,
}

impl Coordinator {
    pub fn open(config: &CoordinatorConfig) -> Result<Self, CoordinatorError> {
        config.wire.check()?;
        limits::DeveloperShare::check(config.developer_share)?;
        let tls = match &config.tls {
            Some(settings) => Some(cohort_identity::tls::ServerTls::new(
                &settings.kit,
                settings.crl.as_deref(),
            )?),
            None => None,
        };
        let auth = match &tls {
            Some(tls) => Authorizer::mutual_tls(tls.revocation.clone()),
            None => Authorizer::insecure(),
        };
        let store = Arc::new(store::Store::open_with_database(
            &config.data_dir,
            config.database_url.as_deref(),
            config.object_store_url.as_deref(),
        )?);
        if let Some(fence) = &config.lease {
            store.set_fence(fence.clone())?;
        }
        info!(state = %store.location(), "coordinator state opened");
        if let Some((initial, halving)) = store.emission_schedule()? {
            let s = config.rewards.schedule;
            if (s.initial(), s.halving()) != (initial, halving) {
                return Err(CoordinatorError::Schedule { initial, halving });
            }
        }
        let signer = match &config.tls {
            Some(settings) => ledger::LedgerSigner::Kit(settings.kit.clone()),
            None => ledger::LedgerSigner::Own(Box::new(
                cohort_identity::MessageSigningKey::load_or_create(
                    &config.data_dir.join("ledger-signing-key.pem"),
                )?,
            )),
        };
        let ledger = Arc::new(ledger::Ledger::open(&store, signer)?);
        let registry = Arc::new(registry::Registry::new(config.poll_timeout));
        let ceremonies = setup::Ceremonies {
            paths: config.setup_ceremonies.clone(),
            kit: config.tls.as_ref().map(|t| t.kit.clone()),
            ..Default::default()
        };
        ceremonies.check_files()?;
        let runner = Arc::new(runner::Runner {
            store: store.clone(),
            registry: registry.clone(),
            ledger: ledger.clone(),
            rewards: config.rewards,
            ceremonies,
            job_values: Default::default(),
        });
        Ok(Self {
            services: Arc::new(server::Services {
                store,
                registry,
                runner,
                auth,
                ledger,
                developer_calls: Arc::new(tokio::sync::Semaphore::new(
                    config.max_developer_calls.max(1),
                )),
                developer_share: Arc::new(limits::DeveloperShare::new(config.developer_share)),
                upload_memory: limits::UploadMemory::new(config.upload_memory_bytes),
            }),
            tls,
            config: config.clone(),
        })
    }

    /// A read-only view of this coordinator's state for the dashboard.
    pub fn view(&self) -> view::CoordinatorView {
        view::CoordinatorView::new(self.services.clone())
    }

    /// Resumes every unfinished job, then serves gRPC on `listener` until
    /// `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), CoordinatorError> {
        let (stop_anchoring, anchoring_stopped) = tokio::sync::watch::channel(false);
        let anchoring = self.config.anchor.clone().map(|anchor| {
            ledger::spawn_anchoring(self.services.ledger.clone(), anchor, anchoring_stopped)
        });
        let served = self.serve_grpc(listener, shutdown).await;
        if let Some(mut task) = anchoring {
            stop_anchoring.send_replace(true);
            if tokio::time::timeout(Duration::from_secs(10), &mut task)
                .await
                .is_err()
            {
                task.abort();
                warn!("ledger anchoring still busy at shutdown; the next start catches up");
            }
        }
        served
    }

    async fn serve_grpc(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), CoordinatorError> {
        for job in self.services.store.jobs()? {
            if !job.state.is_finished() {
                info!(
                    job = job.id,
                    rounds = job.rounds_completed,
                    "resuming unfinished job"
                );
                let runner = self.services.runner.clone();
                tokio::spawn(async move { runner.run_job(&job.id).await });
            }
        }
        let hospitals = HospitalServiceServer::from_arc(self.services.clone())
            .max_decoding_message_size(self.config.wire.max_message_bytes)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let developers = DeveloperServiceServer::from_arc(self.services.clone())
            .max_decoding_message_size(self.config.wire.max_message_bytes)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        // The standard gRPC health protocol (`grpc.health.v1.Health`, overall
        // status ""): SERVING whenever this process serves at all, since a
        // standby does not listen. Load balancers and probes use it, and so
        // do developer tools given several coordinator addresses.
        let (_health, health) = tonic_health::server::health_reporter();
        let router = tonic::transport::Server::builder()
            .timeout(self.config.request_timeout)
            .max_concurrent_streams(self.config.max_streams_per_connection)
            .http2_keepalive_interval(Some(self.config.wire.keepalive_interval))
            .http2_keepalive_timeout(Some(self.config.wire.keepalive_timeout))
            .layer(GuardLayer::new(self.config.max_calls_per_member))
            .add_service(hospitals)
            .add_service(developers)
            .add_service(health);
        match self.tls {
            Some(tls) => {
                info!(
                    crl = ?tls.revocation.path(),
                    revoked = tls.revocation.list().len(),
                    "serving mutual TLS"
                );
                let watcher = security::watch_revocations(
                    tls.revocation.clone(),
                    self.services.registry.clone(),
                );
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
                let served = router
                    .serve_with_incoming_shutdown(
                        security::tls_incoming(listener, acceptor, self.config.wire),
                        shutdown,
                    )
                    .await;
                watcher.abort();
                served?;
            }
            None => {
                warn!(
                    "serving plaintext gRPC (--insecure): traffic can be read and altered, and callers are not authenticated"
                );
                router
                    .serve_with_incoming_shutdown(
                        limits::accept_plain(listener, self.config.wire),
                        shutdown,
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

/// A mutex's guard even if a holder panicked: the tables behind these
/// mutexes stay consistent between statements, so a panic elsewhere must not
/// stop the coordinator from serving.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
