//! A throwaway consortium on this machine for notebooks and tests: the
//! bundled WDBC data split into hospital files, a coordinator and one
//! client per hospital in this process on loopback (real gRPC, mutual TLS
//! with a fresh CA unless asked otherwise), left running until stopped. It
//! is what `cohort.demo()` starts; `cohort demo` runs one job on the same
//! parts and exits.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use cohort_coordinator::JobSpec;
use cohort_datasets::{PartitionScheme, SplitOptions};
use serde::Serialize;

use crate::local::{LocalFederation, LocalHospital};

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Where data, kits and coordinator state go; a new temporary
    /// directory (kept afterwards) when `None`.
    pub workdir: Option<PathBuf>,
    pub hospitals: usize,
    /// Dirichlet concentration of the label skew across hospitals.
    pub alpha: f64,
    pub seed: u64,
    /// Mutual TLS with a throwaway CA (`false`: plaintext).
    pub tls: bool,
    /// Options every hospital's client runs with (budget, policy).
    pub client: cohort_client::ClientOptions,
    /// The coordinator's emission schedule for `[valuation]` jobs.
    pub rewards: cohort_coordinator::rewards::RewardsConfig,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            workdir: None,
            hospitals: 3,
            alpha: 5.0,
            seed: 42,
            tls: true,
            client: Default::default(),
            rewards: Default::default(),
        }
    }
}

/// Where a running sandbox's parts are.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxInfo {
    pub url: String,
    pub workdir: PathBuf,
    /// The developer's startup kit (`None` without TLS).
    pub developer_kit: Option<PathBuf>,
    /// The consortium CA (`cohort ca revoke --ca DIR`); `None` without TLS.
    pub ca_dir: Option<PathBuf>,
    /// The coordinator's data directory (ledger, state).
    pub coordinator_dir: PathBuf,
    /// Hospital name and its data file.
    pub hospitals: Vec<(String, PathBuf)>,
    /// Held-out rows no hospital has.
    pub test_file: PathBuf,
    /// The demo job (`examples/wdbc-mlp.toml`) with `min_clients` and
    /// `clients_per_round` set to the number of hospitals.
    pub job_toml: String,
}

pub struct Sandbox {
    pub info: SandboxInfo,
    federation: Option<LocalFederation>,
}

impl Sandbox {
    pub async fn start(opts: SandboxOptions) -> Result<Self> {
        if opts.hospitals == 0 || opts.hospitals > 26 {
            anyhow::bail!("a sandbox has 1 to 26 hospitals, not {}", opts.hospitals);
        }
        let workdir = match &opts.workdir {
            Some(dir) => dir.clone(),
            None => tempfile::Builder::new()
                .prefix("cohort-sandbox-")
                .tempdir()?
                .keep(),
        };
        let split = cohort_datasets::split_bytes(
            crate::WDBC_CSV,
            &workdir.join("data"),
            &SplitOptions {
                parts: opts.hospitals,
                label: Some("diagnosis".into()),
                scheme: PartitionScheme::Dirichlet { alpha: opts.alpha },
                test_fraction: 0.25,
                seed: opts.seed,
            },
        )?;
        let test_file = split
            .test
            .as_ref()
            .context("the split wrote no test file")?
            .file
            .clone();
        let locals: Vec<LocalHospital> = split
            .parts
            .iter()
            .enumerate()
            .map(|(i, part)| LocalHospital {
                name: format!("hospital-{}", (b'a' + i as u8) as char),
                data: part.file.clone(),
                options: opts.client.clone(),
            })
            .collect();
        let mut spec = JobSpec::from_toml(crate::DEMO_JOB)?;
        spec.training.min_clients = opts.hospitals as u32;
        spec.training.clients_per_round = opts.hospitals as u32;
        let federation = LocalFederation::start_with_rewards(
            &workdir,
            &locals,
            opts.tls,
            Duration::from_secs(2),
            opts.rewards,
        )
        .await?;
        let pki = workdir.join("pki");
        Ok(Self {
            info: SandboxInfo {
                url: federation.url.clone(),
                developer_kit: opts.tls.then(|| pki.join("developer")),
                ca_dir: opts.tls.then(|| pki.join("ca")),
                coordinator_dir: workdir.join("coordinator"),
                hospitals: locals.into_iter().map(|h| (h.name, h.data)).collect(),
                test_file,
                job_toml: toml::to_string(&spec)?,
                workdir,
            },
            federation: Some(federation),
        })
    }

    pub fn is_running(&self) -> bool {
        self.federation.is_some()
    }

    /// Stops the clients and the coordinator; the files stay.
    pub async fn stop(&mut self) {
        if let Some(federation) = self.federation.take() {
            federation.shutdown().await;
        }
    }
}
