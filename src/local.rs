//! A coordinator and hospital clients in this process on loopback, as the
//! demo and the benchmarks run them: real gRPC over real sockets, with
//! mutual TLS unless asked otherwise.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use cohort_client::ClientConfig;
use cohort_coordinator::{Coordinator, CoordinatorConfig};
use cohort_protocol::Security;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::developer::{self, Developer};
use crate::pki::LocalConsortium;

pub struct LocalHospital {
    pub name: String,
    pub data: PathBuf,
    pub options: cohort_client::ClientOptions,
}

pub struct LocalFederation {
    pub url: String,
    /// What a developer connects with.
    pub developer: Security,
    /// The coordinator's state, read-only (the dashboard's source).
    pub view: cohort_coordinator::view::CoordinatorView,
    /// The coordinator's data directory.
    pub data_dir: PathBuf,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    clients: Vec<JoinHandle<()>>,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl LocalFederation {
    /// Starts a coordinator with its state in `workdir/coordinator` and one
    /// client per hospital (records in `workdir/clients/NAME`). With `tls`,
    /// a throwaway consortium is provisioned in `workdir/pki` first.
    pub async fn start(
        workdir: &Path,
        hospitals: &[LocalHospital],
        tls: bool,
        poll_timeout: Duration,
    ) -> Result<Self> {
        Self::start_with_rewards(workdir, hospitals, tls, poll_timeout, Default::default()).await
    }

    /// [`LocalFederation::start`] with the coordinator paying `[valuation]`
    /// jobs on `rewards`' schedule (a short halving interval shows halvings
    /// within one demo job).
    pub async fn start_with_rewards(
        workdir: &Path,
        hospitals: &[LocalHospital],
        tls: bool,
        poll_timeout: Duration,
        rewards: cohort_coordinator::rewards::RewardsConfig,
    ) -> Result<Self> {
        Self::start_configured(workdir, hospitals, tls, poll_timeout, |config| {
            config.rewards = rewards
        })
        .await
    }

    /// [`LocalFederation::start`] with the coordinator's state in the
    /// PostgreSQL database at `database_url` when one is given.
    pub async fn start_on_database(
        workdir: &Path,
        hospitals: &[LocalHospital],
        tls: bool,
        poll_timeout: Duration,
        database_url: Option<&str>,
    ) -> Result<Self> {
        Self::start_configured(workdir, hospitals, tls, poll_timeout, |config| {
            config.database_url = database_url.map(str::to_string)
        })
        .await
    }

    /// [`LocalFederation::start`] with the coordinator's configuration
    /// changed by `configure` first.
    pub async fn start_configured(
        workdir: &Path,
        hospitals: &[LocalHospital],
        tls: bool,
        poll_timeout: Duration,
        configure: impl FnOnce(&mut CoordinatorConfig),
    ) -> Result<Self> {
        let pki = if tls {
            let names: Vec<String> = hospitals.iter().map(|h| h.name.clone()).collect();
            Some(LocalConsortium::provision(
                &workdir.join("pki"),
                "local-consortium",
                &names,
            )?)
        } else {
            None
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr()?);
        let data_dir = workdir.join("coordinator");
        let mut config = CoordinatorConfig::new(&data_dir);
        config.poll_timeout = poll_timeout;
        config.tls = pki.as_ref().map(LocalConsortium::coordinator_tls);
        // A hospital in a split or vertical job holds a second connection
        // for its batch exchanges.
        config.wire.max_connections = config.wire.max_connections.max(2 * hospitals.len() + 16);
        configure(&mut config);
        let coordinator = Coordinator::open(&config)?;
        let view = coordinator.view();
        let (stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn({
            let signal = stopped(stop_rx.clone());
            async move {
                if let Err(e) = coordinator.serve(listener, signal).await {
                    tracing::error!("coordinator stopped: {e}");
                }
            }
        });
        let mut clients = Vec::new();
        for (i, hospital) in hospitals.iter().enumerate() {
            let security = match &pki {
                Some(pki) => Security::MutualTls(pki.hospitals[i].clone()),
                None => Security::Insecure,
            };
            let config = ClientConfig {
                coordinator: url.clone(),
                security,
                data: hospital.data.clone().into(),
                name: hospital.name.clone(),
                data_dir: Some(workdir.join("clients").join(&hospital.name)),
                options: hospital.options.clone(),
            };
            let signal = stopped(stop_rx.clone());
            clients.push(tokio::spawn(async move {
                if let Err(e) = cohort_client::run(config, signal).await {
                    tracing::error!("client stopped: {e}");
                }
            }));
        }
        let developer = match &pki {
            Some(pki) => Security::MutualTls(pki.developer.clone()),
            None => Security::Insecure,
        };
        Ok(Self {
            url,
            developer,
            view,
            data_dir,
            stop,
            server,
            clients,
        })
    }

    pub async fn developer(&self) -> Result<Developer> {
        developer::connect(&self.url, &self.developer).await
    }

    /// Stops the clients and the coordinator and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for c in self.clients {
            let _ = c.await;
        }
        let _ = self.server.await;
    }
}
