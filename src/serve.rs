//! `cohort coordinator` and `cohort client`: the two long-running
//! processes, configured from their flags.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cohort_identity::Role;
use cohort_protocol::Security;

use crate::pki::{resolve_connection, resolve_security};

/// Where the coordinator keeps its ledger.
#[derive(Debug, Clone)]
pub enum LedgerBackend {
    /// The Merkle log in the data directory alone.
    Embedded,
    /// The same log, each entry also anchored on an EVM chain.
    Evm {
        rpc_url: String,
        contract: String,
        evm_key: PathBuf,
    },
}

/// The `--ledger`, `--rpc-url`, `--contract` and `--evm-key` flags.
#[derive(Debug, Clone, Default)]
pub struct LedgerFlags {
    /// `--ledger evm`.
    pub evm: bool,
    pub rpc_url: Option<String>,
    pub contract: Option<String>,
    pub evm_key: Option<PathBuf>,
}

impl LedgerFlags {
    /// The backend the flags name, refusing EVM settings without `--ledger evm`.
    pub fn backend(self) -> Result<LedgerBackend> {
        match (self.evm, self.rpc_url, self.contract, self.evm_key) {
            (true, Some(rpc_url), Some(contract), Some(evm_key)) => Ok(LedgerBackend::Evm {
                rpc_url,
                contract,
                evm_key,
            }),
            (false, None, None, None) => Ok(LedgerBackend::Embedded),
            _ => bail!("--rpc-url, --contract and --evm-key go with --ledger evm"),
        }
    }
}

/// A coordinator's flags.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    pub listen: String,
    pub data_dir: PathBuf,
    /// `--database postgres://...`; `None`: SQLite in the data directory.
    pub database: Option<String>,
    /// `--lease-seconds`: how long the coordinator lease lasts unless
    /// renewed (PostgreSQL only).
    pub lease_ttl: Duration,
    pub object_store: Option<String>,
    pub poll_timeout: Duration,
    /// Startup kit directory (mutual TLS); `None` needs `insecure`.
    pub tls: Option<PathBuf>,
    pub crl: Option<PathBuf>,
    pub insecure: bool,
    pub request_timeout: Duration,
    pub max_calls_per_member: usize,
    pub max_streams_per_connection: u32,
    pub max_developer_calls: usize,
    /// `--developer-share`.
    pub developer_share: f64,
    /// `--update-memory-mb`, in bytes.
    pub upload_memory_bytes: u64,
    /// `--setup-ceremony`.
    pub setup_ceremonies: Vec<PathBuf>,
    /// `--max-message-bytes`, `--max-connections`, handshake and keepalive
    /// timeouts.
    pub wire: cohort_coordinator::WireLimits,
    pub ledger: LedgerFlags,
    /// The emission schedule of `[valuation]` jobs' rewards.
    pub rewards: cohort_coordinator::rewards::RewardsConfig,
    /// `--dashboard ADDR`: also serve the web dashboard there.
    pub dashboard: Option<String>,
}

/// Runs a coordinator until `shutdown` resolves.
pub async fn run_coordinator(
    options: CoordinatorOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let tls = match resolve_security(
        options.tls.as_deref(),
        options.insecure,
        &[Role::Coordinator],
    )? {
        Security::Insecure => None,
        Security::MutualTls(kit) => {
            let crl = options
                .crl
                .or_else(|| Some(kit.dir.join("crl.pem")).filter(|p| p.exists()));
            if crl.is_none() {
                tracing::warn!("no revocation list (--crl): no certificate can be revoked");
            }
            Some(cohort_coordinator::TlsSettings { kit, crl })
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let addr = options
        .listen
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_string();
    let mut shutdown = std::pin::pin!(shutdown);
    // On PostgreSQL, serve only while holding the lease: a standby does not
    // even listen, so that hospitals given several addresses find the
    // active one.
    let lease = match &options.database {
        Some(url) => {
            let acquiring = acquire_lease(url, &addr, options.lease_ttl);
            tokio::select! {
                lease = acquiring => Some(lease?),
                () = &mut shutdown => return Ok(()),
            }
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let mut config = cohort_coordinator::CoordinatorConfig::new(options.data_dir);
    config.database_url = options.database;
    config.lease = lease.as_ref().map(cohort_coordinator::lease::Lease::fence);
    config.object_store_url = options.object_store;
    config.poll_timeout = options.poll_timeout.max(Duration::from_secs(1));
    config.tls = tls;
    config.request_timeout = options.request_timeout.max(Duration::from_secs(1));
    config.max_calls_per_member = options.max_calls_per_member;
    config.max_streams_per_connection = options.max_streams_per_connection;
    config.max_developer_calls = options.max_developer_calls;
    config.developer_share = options.developer_share;
    config.upload_memory_bytes = options.upload_memory_bytes;
    config.setup_ceremonies = options.setup_ceremonies;
    config.wire = options.wire;
    config.wire.check()?;
    config.rewards = options.rewards;
    config.anchor = match options.ledger.backend()? {
        LedgerBackend::Evm {
            rpc_url,
            contract,
            evm_key,
        } => Some(evm_anchor(&rpc_url, &contract, &evm_key).await?),
        LedgerBackend::Embedded => None,
    };
    let coordinator = cohort_coordinator::Coordinator::open(&config)?;
    let dashboard = match &options.dashboard {
        Some(addr) => Some(
            crate::dashboard::start_for(addr, &coordinator, &config.data_dir, config.tls.as_ref())
                .await?,
        ),
        None => None,
    };
    tracing::info!(
        "coordinator listening on {scheme}://{}",
        listener.local_addr()?
    );
    let lost = async {
        match &lease {
            Some(lease) => Some(lease.lost().await),
            None => std::future::pending().await,
        }
    };
    let mut lost_reason = None;
    let stopping = async {
        tokio::select! {
            () = &mut shutdown => {}
            reason = lost => lost_reason = reason,
        }
    };
    let served = coordinator.serve(listener, stopping).await;
    if let Some(dashboard) = dashboard {
        dashboard.stop().await;
    }
    served?;
    if let Some(reason) = lost_reason {
        bail!(
            "stopped serving: lost the coordinator lease ({reason}). Only the lease's holder may \
             write the state; start this coordinator again to stand by"
        );
    }
    if let Some(lease) = lease {
        tokio::task::spawn_blocking(move || lease.release()).await?;
    }
    Ok(())
}

/// `--lease-seconds` as a duration: at least one second, so that renewals
/// (every third of it) are not a flood, and at most an hour.
pub fn lease_ttl(seconds: f64) -> Result<Duration> {
    if !(1.0..=3600.0).contains(&seconds) {
        bail!("--lease-seconds must be between 1 and 3600, not {seconds}");
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `cohort coordinator lease`: who holds the coordinator lease.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaseStatus {
    /// `None`: no coordinator has run on this database yet.
    pub holder: Option<cohort_coordinator::lease::Holder>,
    /// Whether the lease is current (its holder renews it).
    pub held: bool,
}

pub async fn lease_status(url: &str) -> Result<LeaseStatus> {
    let url = url.to_string();
    let holder =
        tokio::task::spawn_blocking(move || cohort_coordinator::lease::holder(&url)).await??;
    let held = holder.as_ref().is_some_and(|h| h.expires_in_secs > 0.0);
    Ok(LeaseStatus { holder, held })
}

pub fn render_lease(status: &LeaseStatus) -> String {
    match (&status.holder, status.held) {
        (None, _) => "no coordinator has held the lease on this database yet\n".into(),
        (Some(h), true) => format!(
            "active: {}\nepoch {} (takeovers so far: {}); renewed, expires in {:.1} s unless renewed again\n",
            h.holder,
            h.epoch,
            h.epoch - 1,
            h.expires_in_secs
        ),
        (Some(h), false) => format!(
            "no active coordinator: the lease of {} (epoch {}) expired {:.1} s ago; the next coordinator to start takes it\n",
            h.holder, h.epoch, -h.expires_in_secs
        ),
    }
}

/// Waits for the coordinator lease on the database at `url`, logging
/// who holds it while this coordinator stands by.
async fn acquire_lease(
    url: &str,
    listen: &str,
    ttl: Duration,
) -> Result<cohort_coordinator::lease::Lease> {
    use cohort_coordinator::lease::{Lease, LeaseSettings, holder_name};
    let settings = LeaseSettings {
        ttl,
        ..LeaseSettings::default()
    };
    let mut announced: Option<String> = None;
    let lease = Lease::acquire(url, holder_name(listen), settings, |held| {
        if announced.as_deref() != Some(held.holder.as_str()) {
            tracing::info!(
                holder = held.holder,
                epoch = held.epoch,
                expires_in_secs = format!("{:.1}", held.expires_in_secs),
                "standing by: another coordinator holds the lease; taking over when it expires"
            );
            announced = Some(held.holder.clone());
        }
    })
    .await?;
    if announced.is_some() {
        tracing::info!("took over as the active coordinator");
    }
    Ok(lease)
}

/// The coordinator's EVM anchor. What cannot fix itself (a wrong contract
/// or key) stops the start; a node that is down or an account without
/// funds only warns, and anchoring retries in the background.
async fn evm_anchor(
    rpc_url: &str,
    contract: &str,
    key: &Path,
) -> Result<Arc<dyn cohort_ledger::Anchor>> {
    let key = cohort_ledger_evm::EvmKey::from_file(key)?;
    let writer = cohort_ledger_evm::AnchorWriter::new(rpc_url, contract, key)?;
    match writer.check().await {
        Ok(chain_id) => tracing::info!(
            contract = %writer.contract().address(),
            chain_id,
            account = %writer.account(),
            "ledger entries will be anchored on an EVM chain"
        ),
        Err(e) => match cohort_ledger::AnchorError::from(e) {
            cohort_ledger::AnchorError::Retry(reason) => {
                tracing::warn!("{reason}; anchoring will retry in the background")
            }
            cohort_ledger::AnchorError::Fatal(reason) => {
                bail!("--ledger evm: {reason}")
            }
        },
    }
    Ok(Arc::new(writer))
}

/// A hospital client's flags.
#[derive(Debug, Clone)]
pub struct ClientProcessOptions {
    pub coordinator: Option<String>,
    pub tls: Option<PathBuf>,
    pub insecure: bool,
    pub data: cohort_datasets::DataSource,
    pub name: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// `--max-epsilon` with its `--delta`.
    pub budget: Option<(f64, f64)>,
    pub require_secure_aggregation: bool,
    pub keep_contributions: bool,
    pub vanish_at: Option<cohort_client::VanishAt>,
    /// `--misbehave`: a drill mode (testing aid).
    pub misbehave: Option<cohort_client::misbehave::Misbehave>,
}

/// Runs a hospital client until `shutdown` resolves.
pub async fn run_client(
    options: ClientProcessOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let budget = match options.budget {
        Some((epsilon, delta)) => Some(cohort_client::budget::BudgetLimit::new(epsilon, delta)?),
        None => None,
    };
    let (coordinator, security) = resolve_connection(
        options.coordinator.as_deref(),
        options.tls.as_deref(),
        options.insecure,
        &[Role::Hospital],
    )?;
    let name = match (security.kit(), options.name) {
        (Some(kit), Some(name)) if name != kit.principal.name => bail!(
            "--name {name} does not match the certificate, which names hospital `{}`",
            kit.principal.name
        ),
        (Some(kit), _) => kit.principal.name.clone(),
        (None, Some(name)) => name,
        (None, None) => {
            bail!("--insecure needs --name (with --tls the name comes from the certificate)")
        }
    };
    cohort_client::run(
        cohort_client::ClientConfig {
            coordinator,
            security,
            data: options.data,
            name,
            data_dir: options.data_dir,
            options: cohort_client::ClientOptions {
                require_secure_aggregation: options.require_secure_aggregation,
                keep_contributions: options.keep_contributions,
                vanish_at: options.vanish_at,
                budget,
                misbehave: options.misbehave,
            },
        },
        shutdown,
    )
    .await?;
    Ok(())
}
