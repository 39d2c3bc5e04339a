//! Shared pieces of the integration tests: a coordinator and clients on
//! loopback (ephemeral ports), and a synthetic oncology CSV the project has
//! never seen, with categorical columns and missing values.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cohort::developer::{self, JobView};
use cohort_coordinator::{Coordinator, CoordinatorConfig};
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Stop(watch::Sender<bool>);

impl Stop {
    pub fn new() -> Self {
        Self(watch::channel(false).0)
    }
    pub fn signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

pub struct Running {
    pub url: String,
    pub stop: Stop,
    pub server: JoinHandle<()>,
}

/// A coordinator in this process on an ephemeral loopback port.
pub async fn start_coordinator(data_dir: &Path) -> Running {
    start_coordinator_with(data_dir, |_| {}).await
}

/// [`start_coordinator`] with settings changed by `configure`.
pub async fn start_coordinator_with(
    data_dir: &Path,
    configure: impl FnOnce(&mut CoordinatorConfig),
) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = CoordinatorConfig::new(data_dir);
    config.poll_timeout = Duration::from_secs(1);
    configure(&mut config);
    let coordinator = Coordinator::open(&config).unwrap();
    let stop = Stop::new();
    let signal = stop.signal();
    let server = tokio::spawn(async move {
        coordinator.serve(listener, signal).await.unwrap();
    });
    Running { url, stop, server }
}

pub fn start_client(url: &str, data: &Path, name: &str, stop: &Stop) -> JoinHandle<()> {
    let config = cohort_client::ClientConfig {
        coordinator: url.to_string(),
        security: cohort_protocol::Security::Insecure,
        data: data.to_path_buf().into(),
        name: name.to_string(),
        data_dir: None,
        options: cohort_client::ClientOptions::default(),
    };
    let signal = stop.signal();
    tokio::spawn(async move {
        cohort_client::run(config, signal).await.unwrap();
    })
}

/// Waits until `n` clients are connected, so a job's preparation sees them all.
/// A coordinator started as a separate process may not listen yet (its
/// startup can include an EVM node round trip), so connecting is retried too.
pub async fn wait_for_clients(url: &str, n: usize) {
    use cohort_protocol::v1::developer_service_client::DeveloperServiceClient;
    let mut connected = None;
    for _ in 0..300 {
        match DeveloperServiceClient::connect(url.to_string()).await {
            Ok(dev) => {
                connected = Some(dev);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut dev = connected.unwrap_or_else(|| panic!("the coordinator at {url} never listened"));
    for _ in 0..300 {
        let clients = dev
            .list_clients(cohort_protocol::v1::ListClientsRequest {})
            .await
            .unwrap()
            .into_inner()
            .clients;
        if clients.iter().filter(|c| c.connected).count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {n} clients connected");
}

pub async fn submit_and_wait(url: &str, job_toml: &str) -> JobView {
    let mut dev = developer::connect(url, &cohort_protocol::Security::Insecure)
        .await
        .unwrap();
    let id = developer::submit(&mut dev, job_toml).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(600),
        developer::wait(&mut dev, &id, false),
    )
    .await
    .expect("job did not finish in time")
    .unwrap()
}

fn normal(rng: &mut impl Rng) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A breast-cancer-recurrence-like table: numeric and categorical
/// predictors, ~5 % missing cells, a `recurrence` label (yes/no) drawn from
/// a known logistic model.
pub fn synthetic_oncology_csv(path: &Path, rows: usize, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = String::from(
        "patient_id,age,tumor_size_mm,nodes_positive,grade,er_status,histology,ki67,recurrence\n",
    );
    for i in 0..rows {
        let age = 60.0 + 11.0 * normal(&mut rng);
        let size = (3.0 + 0.5 * normal(&mut rng)).exp();
        let nodes = (rng.random::<f64>() * 4.0).powi(2).floor();
        let grade = ["I", "II", "III"][rng.random_range(0..3)];
        let er = if rng.random::<f64>() < 0.7 {
            "positive"
        } else {
            "negative"
        };
        let histology = ["ductal", "lobular", "other"][rng.random_range(0..3)];
        let ki67 = (20.0 + 12.0 * normal(&mut rng)).clamp(1.0, 95.0);
        let z = -1.2
            + 0.03 * (age - 60.0)
            + 0.04 * (size - 20.0)
            + 0.25 * nodes
            + match grade {
                "I" => -0.9,
                "II" => 0.0,
                _ => 1.0,
            }
            + if er == "negative" { 0.8 } else { -0.3 }
            + 0.03 * (ki67 - 20.0);
        let p = 1.0 / (1.0 + (-z).exp());
        let label = if rng.random::<f64>() < p { "yes" } else { "no" };
        let mut cell = |v: String| {
            if rng.random::<f64>() < 0.05 {
                String::new()
            } else {
                v
            }
        };
        let fields = [
            format!("S{i:05}"),
            cell(format!("{age:.0}")),
            cell(format!("{size:.1}")),
            format!("{nodes:.0}"),
            cell(grade.to_string()),
            er.to_string(),
            cell(histology.to_string()),
            cell(format!("{ki67:.1}")),
            label.to_string(),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    std::fs::File::create(path)
        .unwrap()
        .write_all(out.as_bytes())
        .unwrap();
}

/// A logistic job on the synthetic table.
pub fn oncology_job(rounds: u32, clients: u32) -> String {
    format!(
        r#"
name = "recurrence-logistic"

[data]
label = "recurrence"
positive = "yes"
negative = "no"
drop = ["patient_id"]
numeric = "*"
categorical = {{ grade = ["I", "II", "III"], er_status = ["positive", "negative"], histology = ["ductal", "lobular", "other"] }}
validation_fraction = 0.2

[model]
kind = "logistic"

[training]
rounds = {rounds}
min_clients = {clients}
clients_per_round = {clients}
local_epochs = 2
batch_size = 32
optimizer = {{ kind = "sgd", learning_rate = 0.05, momentum = 0.9 }}
round_timeout_secs = 60
seed = 3
"#
    )
}

/// A `[preprocessing]` table for `job_toml` from reference data the
/// model developer holds (`cohort data preprocessing`), to append to the
/// job: its hospitals then release no statistics.
pub fn reference_preprocessing(reference: &Path, job_toml: &str) -> String {
    let spec = cohort_coordinator::JobSpec::from_toml(job_toml).unwrap();
    let source = cohort_datasets::DataSource::File(reference.to_path_buf());
    "\n".to_string()
        + &cohort::data::reference_preprocessing_for(&source, &spec.data)
            .unwrap()
            .toml()
}

/// [`reference_preprocessing`] from a synthetic oncology cohort of the
/// developer's own (not any hospital's rows).
pub fn oncology_reference_preprocessing(job_toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference.csv");
    synthetic_oncology_csv(&reference, 2000, 999);
    reference_preprocessing(&reference, job_toml)
}

pub fn split(input: &Path, out: &Path, parts: usize, seed: u64) -> Vec<PathBuf> {
    let report = cohort_datasets::split_file(
        input,
        out,
        &cohort_datasets::SplitOptions {
            parts,
            label: Some("recurrence".into()),
            scheme: cohort_datasets::PartitionScheme::Iid,
            test_fraction: 0.25,
            seed,
        },
    )
    .unwrap();
    let mut files: Vec<PathBuf> = report.parts.into_iter().map(|p| p.file).collect();
    files.push(report.test.unwrap().file);
    files
}

/// Rewrites a coordinator's ledger as someone holding its signing key
/// could: every entry `edit` changes (returns true for) is re-signed, and
/// the checkpoint is re-signed over the new tree, so the log verifies on
/// its own and only an earlier checkpoint or an outside anchor can tell.
pub fn rewrite_ledger(
    data_dir: &Path,
    key: &cohort_identity::MessageSigningKey,
    mut edit: impl FnMut(&mut cohort_ledger::Record) -> bool,
) {
    use cohort_ledger::{Checkpoint, Entry, MerkleLog, hash_leaf, sign_checkpoint};
    let conn = rusqlite::Connection::open(data_dir.join("coordinator.sqlite")).unwrap();
    let leaves: Vec<Vec<u8>> = {
        let mut stmt = conn
            .prepare("SELECT entry FROM ledger ORDER BY idx")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut log = MerkleLog::new();
    for (i, leaf) in leaves.iter().enumerate() {
        let mut entry = Entry::from_leaf(leaf).unwrap();
        let mut bytes = leaf.clone();
        if edit(&mut entry.record) {
            bytes = Entry::sign(entry.record, entry.at, key)
                .unwrap()
                .to_leaf()
                .unwrap();
            conn.execute(
                "UPDATE ledger SET entry = ?1 WHERE idx = ?2",
                rusqlite::params![bytes, i as i64],
            )
            .unwrap();
        }
        log.append_leaf_hash(hash_leaf(&bytes));
    }
    let name: String = conn
        .query_row("SELECT key_name FROM ledger_checkpoint", [], |r| r.get(0))
        .unwrap();
    let note = sign_checkpoint(
        &Checkpoint::new(name.clone(), log.size(), log.current_root()).unwrap(),
        &name,
        key,
    )
    .unwrap();
    conn.execute("UPDATE ledger_checkpoint SET note = ?1", [note])
        .unwrap();
}

/// A hand-written hospital for adversarial tests: it registers and pulls
/// tasks like `cohort client`, answers through the real `Worker`, and lets
/// the test tamper with an answer (or the protocol) before it is sent.
pub struct RogueHospital {
    pub worker: cohort_client::Worker,
    pub grpc: cohort_protocol::v1::hospital_service_client::HospitalServiceClient<
        tonic::transport::Channel,
    >,
    pub session: String,
}

impl RogueHospital {
    pub async fn register(url: &str, data: &Path, name: &str) -> Self {
        use cohort_protocol::v1::RegisterRequest;
        let worker = cohort_client::Worker::new(&cohort_client::ClientConfig {
            coordinator: url.to_string(),
            security: cohort_protocol::Security::Insecure,
            data: data.to_path_buf().into(),
            name: name.to_string(),
            data_dir: None,
            options: cohort_client::ClientOptions::default(),
        })
        .unwrap();
        let summary = cohort_datasets::read_table(data).unwrap().quality();
        let mut grpc =
            cohort_protocol::v1::hospital_service_client::HospitalServiceClient::connect(
                url.to_string(),
            )
            .await
            .unwrap()
            .max_decoding_message_size(cohort_protocol::MAX_MESSAGE_BYTES);
        let session = grpc
            .register(RegisterRequest {
                protocol_version: cohort_protocol::PROTOCOL_VERSION,
                client_name: name.to_string(),
                quality_summary_json: serde_json::to_string(&summary).unwrap(),
                client_version: "evil".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .session_id;
        Self {
            worker,
            grpc,
            session,
        }
    }

    /// The next task's header and parameters; `None` once the coordinator
    /// is gone.
    pub async fn next_task(&mut self) -> Option<(cohort_protocol::v1::TaskHeader, Vec<f32>)> {
        use cohort_protocol::v1::{PullTaskRequest, task_frame};
        loop {
            let stream = self
                .grpc
                .pull_task(PullTaskRequest {
                    session_id: self.session.clone(),
                })
                .await
                .ok()?;
            let mut stream = stream.into_inner();
            let header = match stream.message().await {
                Ok(Some(f)) => match f.frame {
                    Some(task_frame::Frame::Header(h)) => h,
                    _ => continue,
                },
                _ => return None,
            };
            let mut assembler =
                cohort_protocol::ParameterAssembler::new(header.parameter_count).unwrap();
            while let Ok(Some(f)) = stream.message().await {
                if let Some(task_frame::Frame::Chunk(c)) = f.frame {
                    assembler.push(&c.data).unwrap();
                }
            }
            return Some((header, assembler.finish().unwrap()));
        }
    }

    /// Sends `answer` to `header`'s task; the coordinator's reply, if any.
    pub async fn submit(
        &mut self,
        header: &cohort_protocol::v1::TaskHeader,
        mut answer: cohort_client::Answer,
    ) -> Option<cohort_protocol::v1::SubmitResultReply> {
        use cohort_protocol::v1::{ResultFrame, result_frame};
        answer.header.session_id = self.session.clone();
        answer.header.task_id = header.task_id.clone();
        let mut frames = vec![ResultFrame {
            frame: Some(result_frame::Frame::Header(answer.header)),
        }];
        frames.extend(
            cohort_protocol::parameter_chunks(&answer.parameters).map(|c| ResultFrame {
                frame: Some(result_frame::Frame::Chunk(c)),
            }),
        );
        let reply = self.grpc.submit_result(futures::stream::iter(frames)).await;
        reply.ok().map(|r| r.into_inner())
    }
}

/// A child process that is killed when the test ends, pass or fail.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free a moment ago, for a process the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `cohort` binary this test crate was built with.
const COHORT_BIN: &str = env!("CARGO_BIN_EXE_cohort");

/// Runs `cohort ARGS` and returns what it did.
pub fn cohort_output(args: &[&str]) -> std::process::Output {
    std::process::Command::new(COHORT_BIN)
        .args(args)
        .output()
        .unwrap()
}

/// Runs `cohort ARGS` (with `--json`), which must succeed, and parses what
/// it printed.
pub fn cohort_json(args: &[&str]) -> serde_json::Value {
    let out = cohort_output(args);
    assert!(
        out.status.success(),
        "cohort {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "cohort {args:?}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
