//! The `cohort` command line: parses arguments and calls the libraries.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use cohort::pki::{default_url, resolve_security};
use cohort::{demo, developer, evaluate};
use cohort_datasets::{PartitionScheme, SplitOptions};
use cohort_identity::{CertificateAuthority, IssueRequest, Role};
use cohort_protocol::Security;

/// Federated learning across hospitals: no patient record leaves its hospital.
///
/// Start with `cohort demo`: a coordinator and three hospitals train a
/// breast-cancer classifier on this machine over real gRPC.
#[derive(Parser)]
#[command(name = "cohort", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a coordinator and three hospital clients on loopback, train the
    /// bundled WDBC job, and compare with a centralized baseline.
    Demo(DemoArgs),
    /// Run the coordinator: accepts jobs and schedules their rounds.
    Coordinator(CoordinatorArgs),
    /// The consortium's certificate authority: create it, issue startup
    /// kits, revoke members.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run a hospital client next to its data (it only dials out).
    Client(ClientArgs),
    /// Submit and follow training jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Download trained models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Evaluate a downloaded model on a labelled CSV or Parquet file.
    Evaluate(EvaluateArgs),
    /// Prepare data files.
    #[command(subcommand)]
    Data(DataCommand),
    /// Read a coordinator's ledger: every job's story, signed entry by entry.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Check, without trusting the coordinator, what it recorded.
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Differential-privacy arithmetic, as a hospital's privacy officer runs
    /// it before agreeing to a job.
    #[command(subcommand)]
    Privacy(PrivacyCommand),
    /// Measure Cohort itself (results go in docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a validator: re-check the update proofs of every finished round
    /// from the coordinator's ledger with this machine's own code and keys,
    /// and append a signed attestation (job, round, client, statement,
    /// verdict) to the ledger. Needs a validator kit
    /// (`cohort ca issue --role validator --name NAME`).
    Validator(ValidatorArgs),
    /// Export update proofs for other verifiers.
    #[command(subcommand)]
    Proof(ProofCommand),
}

#[derive(clap::Args)]
struct ValidatorArgs {
    #[command(flatten)]
    connection: Connection,
    /// Seconds between passes over the ledger.
    #[arg(long, default_value_t = 5)]
    interval_secs: u64,
    /// One pass, then exit (fails if the pass fails).
    #[arg(long)]
    once: bool,
}

#[derive(Subcommand)]
enum ProofCommand {
    /// Write one hospital's update proof of a round in another verifier's
    /// format: `--format snarkjs` writes verification_key.json, proof.json
    /// and public.json for `snarkjs groth16 verify` (curve bn128).
    Export {
        job: String,
        round: u32,
        client: String,
        #[arg(long, default_value = "snarkjs")]
        format: String,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Update proofs (statement 1, Groth16 on BN254) at 16-bit entries:
    /// constraints, setup time, proving-key size, prove time, proof size,
    /// hash and verify time, peak memory. Build with --release.
    Proofs {
        /// Parameter counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        sizes: Vec<usize>,
        /// One JSON object per size.
        #[arg(long)]
        json: bool,
    },
    /// The embedded ledger: in-memory appends per second, proof sizes and
    /// proof time at several log sizes, and durable (signed, committed)
    /// appends per second.
    Ledger {
        /// Log sizes to build.
        #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
        sizes: Vec<u64>,
        /// Durable appends to time.
        #[arg(long, default_value_t = 1000)]
        durable: u64,
        #[arg(long)]
        json: bool,
    },
    /// Secure aggregation (SecAgg+): client and server CPU time and bytes
    /// per client for one round, every party run in this process one after
    /// another. `scripts/bench_secagg.sh` runs it beside Flower's SecAgg+.
    Secagg {
        /// Numbers of clients to try.
        #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
        clients: Vec<u32>,
        /// Vector lengths (entries per update) to try.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        entries: Vec<usize>,
        /// Fractions of clients that vanish after sharing their keys.
        #[arg(long, value_delimiter = ',', default_value = "0,0.1")]
        dropout: Vec<f64>,
        /// Neighbours per client in the masking graph.
        #[arg(long, default_value_t = 8)]
        neighbours: u32,
        /// Fraction of each neighbourhood needed to rebuild a secret.
        #[arg(long, default_value_t = 0.66)]
        threshold: f64,
        /// Sum modulo 2^bits.
        #[arg(long, default_value_t = 32)]
        bits: u32,
        /// One JSON object per line (configuration) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// DP-SGD training throughput (samples/s) of an MLP on synthetic data:
    /// Poisson batches, per-example clipping, exact lattice noise, SGD.
    /// `scripts/bench_dp_sgd.sh` runs it beside Opacus with the same flags.
    DpSgd {
        #[arg(long, default_value_t = 30)]
        features: usize,
        /// Hidden layer widths.
        #[arg(long, value_delimiter = ',', default_value = "64,64")]
        hidden: Vec<usize>,
        /// Expected batch size (Poisson sampling rate batch/rows).
        #[arg(long, default_value_t = 256)]
        batch: usize,
        #[arg(long, default_value_t = 60000)]
        rows: usize,
        /// Timed steps (rounded up to whole epochs).
        #[arg(long, default_value_t = 300)]
        steps: u64,
        /// Untimed steps first.
        #[arg(long, default_value_t = 20)]
        warmup: u64,
        #[arg(long, default_value_t = 1.0)]
        max_grad_norm: f64,
        #[arg(long, default_value_t = 1.0)]
        noise_multiplier: f64,
        #[arg(long, default_value_t = 0.05)]
        learning_rate: f64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Threshold homomorphic aggregation: per-hospital key ceremony and
    /// encryption time, upload size, coordinator aggregation time,
    /// decryption-share time and size, for one round with every party in
    /// this process. `scripts/bench_he.sh` runs it beside TenSEAL CKKS at
    /// NVIDIA FLARE's defaults.
    He {
        /// Model sizes (parameters per update) to try.
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        params: Vec<usize>,
        /// Hospitals in the job (each encrypts one update).
        #[arg(long, default_value_t = 10)]
        hospitals: u32,
        /// Fraction of hospitals whose shares decrypt (at least 2).
        #[arg(long, default_value_t = 0.66)]
        threshold: f64,
        /// Quantization bits (the plaintext modulus is 2^bits).
        #[arg(long, default_value_t = 32)]
        bits: u32,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Coordinator per-round overhead: round wall time minus the slowest
    /// client's fit and evaluation time, over loopback gRPC in this process.
    Rounds {
        /// Numbers of clients to try.
        #[arg(long, value_delimiter = ',', default_value = "3,10,50")]
        clients: Vec<usize>,
        /// Approximate model sizes (parameters) to try.
        #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
        parameters: Vec<usize>,
        /// Rounds per configuration.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct DemoArgs {
    /// Directory for the data splits, coordinator state and model
    /// [default: a new temporary directory, kept afterwards].
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Number of federated rounds [default: the job file's 20].
    #[arg(long)]
    rounds: Option<u32>,
    /// Seed for the data split, model initialization and client selection.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Dirichlet concentration of the label skew across hospitals (smaller = more skewed).
    #[arg(long, default_value_t = 5.0)]
    alpha: f64,
    /// Aggregate under SecAgg+: the coordinator only ever sees the sum of the
    /// hospitals' masked updates.
    #[arg(long, conflicts_with = "homomorphic_encryption")]
    secure_aggregation: bool,
    /// Aggregate under threshold homomorphic encryption: updates are summed
    /// while encrypted, and any two thirds of the hospitals decrypt the sum.
    #[arg(long)]
    homomorphic_encryption: bool,
    /// Train with record-level differential privacy (DP-SGD in every
    /// hospital) at this epsilon per hospital over the whole job (delta
    /// 1e-5). Uses a DP-tuned recipe: logistic regression, batches of 96,
    /// 10 rounds of one epoch.
    #[arg(long, value_name = "EPSILON")]
    dp_epsilon: Option<f64>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// List the ledger's entries (all, or one job's).
    Show {
        /// Only this job's entries.
        job: Option<String>,
        /// The coordinator's data directory (read-only).
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Deploy the contract that anchors a coordinator's ledger on an EVM
    /// chain; prints its address, for `cohort coordinator --ledger evm
    /// --contract ADDR`. The key's account pays and becomes the only one
    /// that may append.
    Deploy {
        /// The node's JSON-RPC URL.
        #[arg(long)]
        rpc_url: String,
        /// File holding the deploying account's secp256k1 private key (hex).
        #[arg(long, value_name = "FILE")]
        evm_key: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// An anchor contract to check the ledger against.
#[derive(Args)]
struct ChainArgs {
    /// JSON-RPC URL of an EVM node: also check that every entry is anchored
    /// at its index on the --contract, and the chain's latest checkpoint.
    #[arg(long, requires = "contract")]
    rpc_url: Option<String>,
    /// The anchor contract's address (`cohort ledger deploy`).
    #[arg(long, requires = "rpc_url")]
    contract: Option<String>,
    /// Fail if some entries are not anchored yet (by default they are
    /// reported as pending: the coordinator anchors in the background).
    #[arg(long, requires = "contract")]
    require_anchored: bool,
}

impl ChainArgs {
    fn options(self) -> Option<cohort::audit::ChainOptions> {
        Some(cohort::audit::ChainOptions {
            rpc_url: self.rpc_url?,
            contract: self.contract?,
            require_anchored: self.require_anchored,
        })
    }
}

#[derive(Subcommand)]
enum VerifyCommand {
    /// Check every entry's signature, the Merkle tree against the signed
    /// checkpoint, and that the log extends the checkpoint this machine saw
    /// last time (so a rewritten history is caught).
    Ledger {
        /// The coordinator's data directory (read-only). Without it, the
        /// ledger is fetched from the running coordinator (--coordinator,
        /// --tls or --insecure).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        chain: ChainArgs,
        /// Where checkpoints seen earlier are remembered
        /// [default: $XDG_STATE_HOME/cohort/seen-checkpoints.json].
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Re-check a round's update proofs (with the verifying key on the
    /// ledger) and its validators' attestations (certificate, role,
    /// signature, and verdicts that agree with this machine's), from the
    /// coordinator's verified ledger.
    Round {
        job: String,
        round: u32,
        #[command(flatten)]
        connection: Connection,
        /// Print {"proofs": [{client, valid}], "attestations":
        /// [{validator, valid}], "excluded": [names]}.
        #[arg(long)]
        json: bool,
    },
    /// Check a downloaded model: its files against model.sig, the signature
    /// against the coordinator's key and, with --data-dir, that the verified
    /// ledger records this signature.
    Model {
        /// The model directory (`cohort model get --out DIR`).
        dir: PathBuf,
        /// The coordinator's public key, PEM (`cohort coordinator signing-key`).
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// The coordinator's data directory: take the key from its ledger and
        /// check the ledger records this model.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum AccountantArg {
    /// Privacy loss distributions composed by FFT: tight (the default).
    Pld,
    /// Rényi DP: a looser, classic upper bound.
    Rdp,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FractionalOrdersArg {
    Exact,
    DpAccounting,
}

impl From<AccountantArg> for cohort_privacy::dp::AccountantKind {
    fn from(a: AccountantArg) -> Self {
        match a {
            AccountantArg::Pld => Self::Pld,
            AccountantArg::Rdp => Self::Rdp,
        }
    }
}

#[derive(Subcommand)]
enum PrivacyCommand {
    /// The (ε, δ) guarantee of T steps of the Poisson-subsampled Gaussian
    /// mechanism (DP-SGD, or DP-FedAvg with client sampling).
    Epsilon {
        /// Noise standard deviation over the clipping norm (σ).
        #[arg(long)]
        noise_multiplier: f64,
        /// With --accountant rdp: how fractional orders are bounded. `exact`
        /// (default) sums the signed series of Mironov et al.; `dp-accounting`
        /// sums absolute values of the binomial terms as Google's
        /// dp_accounting 0.6 does, which is looser at large epsilon, to
        /// reproduce its numbers.
        #[arg(long, value_enum, default_value_t = FractionalOrdersArg::Exact)]
        rdp_fractional_orders: FractionalOrdersArg,
        #[command(flatten)]
        mechanism: MechanismArgs,
    },
    /// The smallest noise multiplier that keeps ε at or below a target.
    Noise {
        #[arg(long)]
        target_epsilon: f64,
        #[command(flatten)]
        mechanism: MechanismArgs,
    },
}

/// What both privacy commands need to know about the mechanism.
#[derive(Args)]
struct MechanismArgs {
    /// Probability q that a record (or client) is in a step's batch.
    #[arg(long)]
    sampling_rate: f64,
    /// Number of steps T.
    #[arg(long)]
    steps: u64,
    #[arg(long)]
    delta: f64,
    #[arg(long, value_enum, default_value_t = AccountantArg::Pld)]
    accountant: AccountantArg,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Hospital,
    Developer,
    Validator,
    Coordinator,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Hospital => Role::Hospital,
            RoleArg::Developer => Role::Developer,
            RoleArg::Validator => Role::Validator,
            RoleArg::Coordinator => Role::Coordinator,
        }
    }
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a consortium root CA (ECDSA P-256) in a new directory. Keep
    /// its ca.key offline; only ca.crt and crl.pem are ever shared.
    Init {
        /// The consortium's name (letters, digits, `-`, `_`, `.`).
        #[arg(long)]
        consortium: String,
        /// Directory for the CA (created; refused if it already holds one).
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Issue a member's startup kit: certificate with the role and name
    /// bound in it, private key (mode 600), the CA certificate, and a
    /// message-signing key bound to the certificate.
    Issue {
        /// The CA directory from `cohort ca init`.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The member's name; a hospital's name in every job and log.
        #[arg(long)]
        name: String,
        /// Directory for the kit (created; an existing key is never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate stays valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Coordinator only: a DNS name or IP address clients use to reach it
        /// (repeatable) [default: localhost and 127.0.0.1].
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke every certificate of a member and republish CA_DIR/crl.pem.
    /// A coordinator watching that file (--crl) refuses the member within
    /// seconds, without a restart.
    Revoke {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List the certificates this CA issued and whether they are revoked.
    List {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CoordinatorAction {
    /// Print the public key (PEM) that signs this coordinator's ledger and
    /// models, as its ledger publishes it.
    SigningKey {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct CoordinatorArgs {
    #[command(subcommand)]
    action: Option<CoordinatorAction>,
    /// Address to listen on, e.g. 127.0.0.1:7070 or 0.0.0.0:7070.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Directory for the SQLite state file and (by default) stored models.
    #[arg(long, required = true)]
    data_dir: Option<PathBuf>,
    /// Object store for models: file:///path, memory:///, or s3://bucket/prefix
    /// (s3 needs the `s3` build feature) [default: DATA_DIR/objects].
    #[arg(long)]
    object_store: Option<String>,
    /// Seconds a client's task poll is held open when there is no work.
    #[arg(long, default_value_t = 20)]
    poll_timeout_secs: u64,
    /// The coordinator's startup kit (`cohort ca issue --role coordinator`):
    /// serve mutual TLS and authorize every call by the caller's role.
    #[arg(long, env = "COHORT_TLS", value_name = "DIR")]
    tls: Option<PathBuf>,
    /// Revocation list to enforce, re-read whenever it changes
    /// [default: DIR/crl.pem of --tls].
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
    /// Serve plaintext, unauthenticated gRPC. For a laptop or a test only.
    #[arg(long)]
    insecure: bool,
    /// Longest a single call may take, uploads included (seconds).
    #[arg(long, default_value_t = 300)]
    request_timeout_secs: u64,
    /// Calls one member may have in flight at once.
    #[arg(long, default_value_t = 16)]
    max_calls_per_member: usize,
    /// Where the ledger is kept: in the data directory only, or also
    /// anchored on an EVM chain (each entry's leaf hash and the checkpoint
    /// root after it; needs --rpc-url, --contract and --evm-key).
    #[arg(long, value_enum, default_value_t = LedgerArg::Embedded)]
    ledger: LedgerArg,
    /// With --ledger evm: the node's JSON-RPC URL.
    #[arg(long, required_if_eq("ledger", "evm"))]
    rpc_url: Option<String>,
    /// With --ledger evm: the anchor contract (`cohort ledger deploy`).
    #[arg(long, required_if_eq("ledger", "evm"))]
    contract: Option<String>,
    /// With --ledger evm: file holding the private key (hex) of the account
    /// that deployed the contract; it pays for anchoring.
    #[arg(long, value_name = "FILE", required_if_eq("ledger", "evm"))]
    evm_key: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LedgerArg {
    /// The Merkle log in the data directory alone.
    Embedded,
    /// The same log, anchored on an EVM chain as well.
    Evm,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct ClientArgs {
    #[command(subcommand)]
    command: Option<ClientCommand>,
    #[command(flatten)]
    connection: Connection,
    /// The hospital's local data (CSV or Parquet). It never leaves this machine.
    #[arg(long, required = true)]
    data: Option<PathBuf>,
    /// This hospital's name. With --tls it is read from the certificate
    /// (and must match if given); with --insecure it is required.
    #[arg(long)]
    name: Option<String>,
    /// Directory for the client's own records (participation log, privacy
    /// budget ledger).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The hospital's total differential-privacy budget for its dataset:
    /// jobs whose worst case would take the total spent (all jobs composed,
    /// at --delta) past it are refused, as are jobs without [privacy.dp].
    /// Persists in DATA_DIR/privacy-budget.json; later runs without the flag
    /// keep it.
    #[arg(long, value_name = "EPSILON", requires_all = ["data_dir", "delta"])]
    max_epsilon: Option<f64>,
    /// The delta at which the budget is counted (e.g. 1e-5).
    #[arg(long, requires = "max_epsilon")]
    delta: Option<f64>,
    /// Refuse every job that asks for this hospital's update in the clear:
    /// send updates only under secure aggregation or homomorphic encryption.
    #[arg(long)]
    require_secure_aggregation: bool,
    /// Keep a copy of each encoded update contributed under secure or
    /// homomorphic aggregation in DATA_DIR/contributions/ and, under
    /// homomorphic aggregation, each round's secret key material in
    /// DATA_DIR/key-material/ (needs --data-dir), for the hospital's own
    /// audit. It never leaves this machine.
    #[arg(long, requires = "data_dir")]
    keep_contributions: bool,
    /// Drill: stop this client, as if its machine died, when a secure-
    /// aggregation task of this stage arrives (advertise, share, masked-fit,
    /// unmask), or after training and before sending its update
    /// (before-send).
    #[arg(long, value_name = "STAGE")]
    vanish_at: Option<cohort_client::VanishAt>,
    /// Drill (a testing aid, never for production): misbehave in every FIT
    /// task, to check that the coordinator and validators catch it.
    /// boost:F sends the update times F with the honest update's proof;
    /// overbound:F multiplies by F and tries to prove that (the prover
    /// refuses, so no proof goes along); forge sends random proof bytes;
    /// freeride sends an all-zero update.
    #[arg(long, value_name = "MODE")]
    misbehave: Option<cohort_client::misbehave::Misbehave>,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Show the hospital's differential-privacy budget: spent and remaining
    /// epsilon, and what each job spent.
    Budget {
        /// The client's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// How a command reaches the coordinator.
#[derive(Args)]
struct Connection {
    /// Coordinator URL [default: https://127.0.0.1:7070 with --tls,
    /// http://127.0.0.1:7070 with --insecure].
    #[arg(long, env = "COHORT_COORDINATOR")]
    coordinator: Option<String>,
    /// Startup kit directory (`cohort ca issue`): speak mutual TLS as the
    /// member it names.
    #[arg(long, env = "COHORT_TLS", value_name = "DIR")]
    tls: Option<PathBuf>,
    /// Plaintext, unauthenticated gRPC. For a laptop or a test only.
    #[arg(long)]
    insecure: bool,
}

impl Connection {
    fn resolve(&self, allowed: &[Role]) -> Result<(String, Security)> {
        let security = resolve_security(self.tls.as_deref(), self.insecure, allowed)?;
        let url = self
            .coordinator
            .clone()
            .unwrap_or_else(|| default_url(&security));
        Ok((url, security))
    }

    /// Connects as a developer or validator.
    async fn developer(&self) -> Result<developer::Developer> {
        let (url, security) = self.resolve(&[Role::Developer, Role::Validator])?;
        developer::connect(&url, &security).await
    }
}

#[derive(Subcommand)]
enum JobCommand {
    /// Submit a job file; prints the job id.
    Submit {
        /// The job file (TOML).
        job: PathBuf,
        #[command(flatten)]
        url: Connection,
        /// Follow the job with a progress bar until it ends.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show a job's state and per-round metrics.
    Status {
        job_id: String,
        #[command(flatten)]
        url: Connection,
        #[arg(long)]
        json: bool,
    },
    /// List all jobs.
    List {
        #[command(flatten)]
        url: Connection,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download a job's model as model.safetensors + model.json.
    Get {
        job_id: String,
        #[command(flatten)]
        url: Connection,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// A specific round [default: the latest].
        #[arg(long)]
        round: Option<u32>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct EvaluateArgs {
    /// Directory holding model.safetensors and model.json.
    #[arg(long)]
    model: PathBuf,
    /// Labelled data to evaluate on (CSV or Parquet).
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scheme {
    Iid,
    Dirichlet,
}

#[derive(Subcommand)]
enum DataCommand {
    /// A hospital's commitment to its data as a job's model saw it: SHA-256
    /// over the file's rows preprocessed with the model's card. Compare with
    /// the dataset_sha256 of that hospital's updates on the ledger.
    Commitment {
        /// The hospital's data file.
        #[arg(long)]
        data: PathBuf,
        /// A model of the job (`cohort model get --out DIR`).
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Split one CSV into hospital files (and a held-out test file) for
    /// demos and simulations.
    Split {
        input: PathBuf,
        /// Number of hospital files.
        #[arg(long)]
        parts: usize,
        #[arg(long)]
        out: PathBuf,
        /// Label column (stratifies the test split; required for dirichlet).
        #[arg(long)]
        label: Option<String>,
        #[arg(long, value_enum, default_value_t = Scheme::Iid)]
        scheme: Scheme,
        /// Dirichlet concentration (smaller = more label skew).
        #[arg(long, default_value_t = 1.0)]
        alpha: f64,
        /// Fraction of rows held out as test.csv.
        #[arg(long, default_value_t = 0.0)]
        test_fraction: f64,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn print_budget(r: &cohort_client::budget::BudgetReport) {
    match (r.max_epsilon, r.remaining) {
        (Some(max), Some(remaining)) => println!(
            "privacy budget: epsilon {:.4} spent of {max}, {remaining:.4} remaining (delta {:e})",
            r.spent, r.delta
        ),
        _ => println!(
            "no privacy budget set; epsilon {:.4} spent (delta {:e})",
            r.spent, r.delta
        ),
    }
    if r.jobs.is_empty() {
        println!("no job has spent anything yet");
        return;
    }
    println!(
        "{:<38} {:>9} {:>8} {:>8} {:>7} {:>8}",
        "job", "epsilon", "delta", "rounds", "sigma", "q"
    );
    for j in &r.jobs {
        println!(
            "{:<38} {:>9.4} {:>8.0e} {:>8} {:>7.3} {:>8.4}",
            j.job_id,
            j.epsilon,
            j.delta,
            format!("{}/{}", j.rounds.len(), j.planned_rounds),
            j.noise_multiplier,
            j.sampling_rate
        );
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The coordinator's EVM anchor. What cannot fix itself (a wrong contract
/// or key) stops the start; a node that is down or an account without
/// funds only warns, and anchoring retries in the background.
async fn evm_anchor(
    rpc_url: &str,
    contract: &str,
    key: &std::path::Path,
) -> Result<std::sync::Arc<dyn cohort_ledger::Anchor>> {
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
                anyhow::bail!("--ledger evm: {reason}")
            }
        },
    }
    Ok(std::sync::Arc::new(writer))
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(a) => {
            init_logging("warn");
            let report = demo::run(demo::DemoOptions {
                workdir: a.workdir,
                rounds: a.rounds,
                seed: a.seed,
                alpha: a.alpha,
                progress: !a.json,
                secure_aggregation: a.secure_aggregation,
                homomorphic_encryption: a.homomorphic_encryption,
                dp_epsilon: a.dp_epsilon,
                ..Default::default()
            })
            .await?;
            if a.json {
                print_json(&report)?;
            } else {
                cohort::demo::print_report(&report);
            }
        }
        Command::Coordinator(CoordinatorArgs {
            action: Some(CoordinatorAction::SigningKey { data_dir }),
            ..
        }) => {
            init_logging("warn");
            print!("{}", cohort::audit::coordinator_key(&data_dir)?.spki_pem());
        }
        Command::Coordinator(a) => {
            init_logging("info");
            let data_dir = a.data_dir.context("--data-dir is required")?;
            let tls = match resolve_security(a.tls.as_deref(), a.insecure, &[Role::Coordinator])? {
                Security::Insecure => None,
                Security::MutualTls(kit) => {
                    let crl = a
                        .crl
                        .or_else(|| Some(kit.dir.join("crl.pem")).filter(|p| p.exists()));
                    if crl.is_none() {
                        tracing::warn!("no revocation list (--crl): no certificate can be revoked");
                    }
                    Some(cohort_coordinator::TlsSettings { kit, crl })
                }
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let addr = a
                .listen
                .trim_start_matches("http://")
                .trim_start_matches("https://");
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let mut config = cohort_coordinator::CoordinatorConfig::new(data_dir);
            config.object_store_url = a.object_store;
            config.poll_timeout = Duration::from_secs(a.poll_timeout_secs.max(1));
            config.tls = tls;
            config.request_timeout = Duration::from_secs(a.request_timeout_secs.max(1));
            config.max_calls_per_member = a.max_calls_per_member;
            config.anchor = match (a.ledger, a.rpc_url, a.contract, a.evm_key) {
                (LedgerArg::Evm, Some(rpc_url), Some(contract), Some(key)) => {
                    Some(evm_anchor(&rpc_url, &contract, &key).await?)
                }
                (LedgerArg::Embedded, None, None, None) => None,
                _ => anyhow::bail!("--rpc-url, --contract and --evm-key go with --ledger evm"),
            };
            let coordinator = cohort_coordinator::Coordinator::open(&config)?;
            tracing::info!(
                "coordinator listening on {scheme}://{}",
                listener.local_addr()?
            );
            coordinator.serve(listener, shutdown_signal()).await?;
        }
        Command::Client(ClientArgs {
            command: Some(ClientCommand::Budget { data_dir, json }),
            ..
        }) => {
            init_logging("warn");
            let report = cohort_client::budget::Budget::read_report(&data_dir)?;
            if json {
                print_json(&report)?;
            } else {
                print_budget(&report);
            }
        }
        Command::Client(a) => {
            init_logging("info");
            let data = a.data.context("--data is required")?;
            let budget = match (a.max_epsilon, a.delta) {
                (Some(e), Some(d)) => Some(cohort_client::budget::BudgetLimit::new(e, d)?),
                _ => None,
            };
            let (coordinator, security) = a.connection.resolve(&[Role::Hospital])?;
            let name = match (security.kit(), a.name) {
                (Some(kit), Some(name)) if name != kit.principal.name => anyhow::bail!(
                    "--name {name} does not match the certificate, which names hospital `{}`",
                    kit.principal.name
                ),
                (Some(kit), _) => kit.principal.name.clone(),
                (None, Some(name)) => name,
                (None, None) => anyhow::bail!(
                    "--insecure needs --name (with --tls the name comes from the certificate)"
                ),
            };
            cohort_client::run(
                cohort_client::ClientConfig {
                    coordinator,
                    security,
                    data,
                    name,
                    data_dir: a.data_dir,
                    options: cohort_client::ClientOptions {
                        require_secure_aggregation: a.require_secure_aggregation,
                        keep_contributions: a.keep_contributions,
                        vanish_at: a.vanish_at,
                        budget,
                        misbehave: a.misbehave,
                    },
                },
                shutdown_signal(),
            )
            .await?;
        }
        Command::Ca(cmd) => {
            init_logging("warn");
            run_ca_command(cmd)?;
        }
        Command::Ledger(LedgerCommand::Show {
            job,
            data_dir,
            json,
        }) => {
            init_logging("warn");
            let entries = cohort::audit::ledger_entries(&data_dir, job.as_deref())?;
            if json {
                let list: Vec<_> = entries
                    .iter()
                    .map(|(index, entry)| serde_json::json!({ "index": index, "entry": entry }))
                    .collect();
                print_json(&list)?;
            } else {
                for (index, entry) in &entries {
                    println!(
                        "{index:>6}  {}  {}",
                        entry.at,
                        serde_json::to_string(&entry.record)?
                    );
                }
            }
        }
        Command::Verify(VerifyCommand::Ledger {
            data_dir,
            connection,
            chain,
            state,
            json,
        }) => {
            init_logging("warn");
            let state = state.unwrap_or_else(cohort::audit::default_state_file);
            let chain = chain.options();
            let verified = async {
                let contents = match data_dir {
                    Some(dir) => cohort::audit::read_ledger(&dir)?,
                    None => {
                        let (url, security) = connection.resolve(&[
                            Role::Validator,
                            Role::Developer,
                            Role::Hospital,
                        ])?;
                        let mut dev = developer::connect(&url, &security).await?;
                        cohort::audit::fetch_ledger(&mut dev).await?
                    }
                };
                cohort::audit::verify_contents_on_chain(contents, &state, chain.as_ref()).await
            }
            .await
            .context("ledger verification FAILED")?;
            let report = &verified.report;
            if json {
                print_json(&verified)?;
            } else {
                println!(
                    "ledger OK: {} entries, root {}, signed by {} (key {}…){}",
                    report.entries,
                    report.root,
                    report.origin,
                    &report.coordinator_key[..16],
                    report
                        .consistent_with
                        .map(|n| format!(", extends the {n}-entry checkpoint seen before"))
                        .unwrap_or_default()
                );
                if let Some(c) = &verified.chain {
                    println!(
                        "chain OK: {} entries anchored on contract {} (chain {}) match the log{}{}",
                        c.anchored_entries,
                        c.contract,
                        c.chain_id,
                        c.checkpoint
                            .as_ref()
                            .map(|k| format!(
                                ", and so does its checkpoint of {} entries",
                                k.tree_size
                            ))
                            .unwrap_or_default(),
                        c.first_pending
                            .as_ref()
                            .map(|p| format!(
                                "; {} pending, from entry {} ({})",
                                c.pending_entries, p.index, p.what
                            ))
                            .unwrap_or_default()
                    );
                }
            }
        }
        Command::Ledger(LedgerCommand::Deploy {
            rpc_url,
            evm_key,
            json,
        }) => {
            init_logging("warn");
            let key = cohort_ledger_evm::EvmKey::from_file(&evm_key)?;
            let deployment = cohort_ledger_evm::deploy(&rpc_url, &key)
                .await
                .context("deploying the ledger anchor contract")?;
            if json {
                print_json(&deployment)?;
            } else {
                eprintln!(
                    "deployed on chain {} in block {} (transaction {}, {} gas); only {} may append",
                    deployment.chain_id,
                    deployment.block,
                    deployment.transaction,
                    deployment.gas_used,
                    deployment.owner
                );
                println!("{}", deployment.address);
            }
        }
        Command::Verify(VerifyCommand::Round {
            job,
            round,
            connection,
            json,
        }) => {
            init_logging("warn");
            let (url, security) =
                connection.resolve(&[Role::Validator, Role::Developer, Role::Hospital])?;
            let check = cohort::validator::verify_round(&url, &security, &job, round).await?;
            cohort::validator::print_round(&check, json)?;
        }
        Command::Validator(a) => {
            init_logging("info");
            let (url, security) = a.connection.resolve(&[Role::Validator])?;
            let interval = std::time::Duration::from_secs(a.interval_secs.max(1));
            cohort::validator::run(&url, &security, interval, a.once).await?;
        }
        Command::Proof(ProofCommand::Export {
            job,
            round,
            client,
            format,
            out,
            connection,
        }) => {
            init_logging("warn");
            let (url, security) =
                connection.resolve(&[Role::Validator, Role::Developer, Role::Hospital])?;
            cohort::validator::export(&url, &security, (&job, round, &client), &format, &out)
                .await?;
        }
        Command::Verify(VerifyCommand::Model {
            dir,
            public_key,
            data_dir,
            state,
            json,
        }) => {
            init_logging("warn");
            let state = state.unwrap_or_else(cohort::audit::default_state_file);
            let report = cohort::audit::verify_model(
                &dir,
                public_key.as_deref(),
                data_dir.as_deref(),
                &state,
            )
            .context("model verification FAILED")?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "model OK: {} files signed by the coordinator{}",
                    report.files.len(),
                    match (&report.job_id, report.round, report.ledger_entry) {
                        (Some(job), Some(round), Some(entry)) => format!(
                            "; recorded on the ledger as {job} round {round} (entry {entry})"
                        ),
                        _ => String::new(),
                    }
                );
            }
        }
        Command::Privacy(cmd) => {
            init_logging("warn");
            run_privacy_command(cmd)?;
        }
        Command::Job(cmd) => {
            init_logging("warn");
            run_job_command(cmd).await?;
        }
        Command::Model(ModelCommand::Get {
            job_id,
            url,
            out,
            round,
            json,
        }) => {
            init_logging("warn");
            let mut dev = url.developer().await?;
            let card = developer::download_model(&mut dev, &job_id, round, &out).await?;
            if json {
                print_json(&serde_json::json!({
                    "job_id": card.job_id, "round": card.round, "dir": out,
                    "parameters_sha256": card.parameters_sha256, "metrics": card.metrics,
                }))?;
            } else {
                println!(
                    "model of {} round {} saved to {}",
                    card.job_id,
                    card.round,
                    out.display()
                );
            }
        }
        Command::Evaluate(a) => {
            init_logging("warn");
            let (_, m) = evaluate::evaluate_file(&a.model, &a.data)?;
            if a.json {
                print_json(&m)?;
            } else {
                println!(
                    "examples {}  accuracy {:.4}  auc {:.4}  loss {:.4}  (tp {} fp {} tn {} fn {})",
                    m.examples,
                    m.accuracy,
                    m.auc,
                    m.loss,
                    m.true_positives,
                    m.false_positives,
                    m.true_negatives,
                    m.false_negatives
                );
            }
        }
        Command::Bench(BenchCommand::Ledger {
            sizes,
            durable,
            json,
        }) => {
            init_logging("error");
            let mut results = Vec::new();
            for &size in &sizes {
                eprintln!("building a log of {size} entries ...");
                results.push(cohort::bench::ledger(size)?);
            }
            eprintln!("timing {durable} durable appends ...");
            let durable_per_sec = cohort::bench::durable_ledger_appends(durable.max(1))?;
            if json {
                print_json(&serde_json::json!({
                    "logs": results, "durable_appends_per_sec": durable_per_sec,
                }))?;
            } else {
                println!(
                    "entries  appends/s  inclusion proof (B)  consistency proof (B)  proof+verify (us)"
                );
                for r in &results {
                    println!(
                        "{:>7}  {:>9.0}  {:>19}  {:>21}  {:>17.1}",
                        r.entries,
                        r.appends_per_sec,
                        r.inclusion_proof_bytes,
                        r.consistency_proof_bytes,
                        r.inclusion_proof_micros
                    );
                }
                println!(
                    "durable appends (signed entry + signed checkpoint + SQLite commit): {durable_per_sec:.0}/s"
                );
            }
        }
        Command::Bench(BenchCommand::Secagg {
            clients,
            entries,
            dropout,
            neighbours,
            threshold,
            bits,
            json,
        }) => {
            init_logging("error");
            if !json {
                println!(
                    "clients  entries  dropout  client CPU mean (s)  server CPU (s)  sent/client (B)  received/client (B)  exact"
                );
            }
            for &e in &entries {
                for &c in &clients {
                    for &d in &dropout {
                        eprintln!("secure aggregation: {c} clients, {e} entries, {d} dropout ...");
                        let r = cohort::bench::secagg(c, e, d, neighbours, threshold, bits)?;
                        if json {
                            println!("{}", serde_json::to_string(&r)?);
                        } else {
                            println!(
                                "{:>7}  {:>7}  {:>7}  {:>19.4}  {:>14.4}  {:>15.0}  {:>19.0}  {}",
                                r.clients,
                                r.entries,
                                r.dropout,
                                r.client_cpu_secs_mean,
                                r.server_cpu_secs,
                                r.bytes_sent_per_client,
                                r.bytes_received_per_client,
                                r.sum_ok
                            );
                        }
                    }
                }
            }
        }
        Command::Bench(BenchCommand::He {
            params,
            hospitals,
            threshold,
            bits,
            json,
        }) => {
            init_logging("error");
            for &p in &params {
                eprintln!("homomorphic aggregation: {hospitals} hospitals, {p} parameters ...");
                let r = cohort::bench::he(p, hospitals, threshold, bits)?;
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!(
                        "{} parameters, {} hospitals (any {} decrypt), 2^{} plaintexts, N={}, log2 Q={}:\n  \
                         key ceremony {:.3} s/hospital; encrypt {:.3} s/hospital, upload {} B \
                         ({:.1} B/param); aggregate {:.3} s; decryption share {:.3} s, {} B; \
                         combine {:.3} s; exact sum: {}, max error {:.2e}",
                        r.params,
                        r.hospitals,
                        r.threshold,
                        r.bits,
                        r.degree,
                        r.log_modulus,
                        r.keygen_seconds_per_client,
                        r.encrypt_seconds_per_client,
                        r.upload_bytes_per_client,
                        r.upload_bytes_per_param,
                        r.aggregation_seconds,
                        r.decryption_share_seconds,
                        r.decryption_share_bytes,
                        r.combine_seconds,
                        r.sum_ok,
                        r.max_abs_error
                    );
                }
            }
        }
        Command::Bench(BenchCommand::Proofs { sizes, json }) => {
            init_logging("warn");
            cohort::bench_proofs::run(sizes, json)?;
        }
        Command::Bench(BenchCommand::DpSgd {
            features,
            hidden,
            batch,
            rows,
            steps,
            warmup,
            max_grad_norm,
            noise_multiplier,
            learning_rate,
            seed,
            json,
        }) => {
            init_logging("warn");
            let result = cohort::bench::dp_sgd(&cohort::bench::DpSgdBenchOptions {
                features,
                hidden,
                batch,
                rows,
                steps,
                warmup,
                max_grad_norm,
                noise_multiplier,
                learning_rate,
                seed,
            })?;
            if json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                println!(
                    "DP-SGD, MLP {:?} ({} parameters), batch {}: {:.0} samples/s \
                     ({} steps, {} samples, {:.2} s wall, {:.2} s CPU)",
                    result.hidden,
                    result.parameters,
                    result.batch,
                    result.samples_per_second,
                    result.steps,
                    result.samples,
                    result.seconds,
                    result.cpu_seconds
                );
            }
        }
        Command::Bench(BenchCommand::Rounds {
            clients,
            parameters,
            rounds,
            json,
        }) => {
            init_logging("error");
            let mut results = Vec::new();
            if !json {
                println!(
                    "clients  parameters  round(s)  slowest fit(s)  slowest eval(s)  overhead(s)  (medians over {rounds} rounds)"
                );
            }
            for &p in &parameters {
                for &c in &clients {
                    eprintln!("measuring {c} clients, ~{p} parameters ...");
                    let r = cohort::bench::round_overhead(c, p, rounds).await?;
                    if !json {
                        println!(
                            "{:>7}  {:>10}  {:>8.3}  {:>14.3}  {:>15.3}  {:>11.3}",
                            r.clients,
                            r.parameters,
                            r.median_round_secs,
                            r.median_slowest_fit_secs,
                            r.median_slowest_evaluate_secs,
                            r.median_overhead_secs
                        );
                    }
                    results.push(r);
                }
            }
            if json {
                print_json(&results)?;
            }
        }
        Command::Data(DataCommand::Commitment { data, model, json }) => {
            init_logging("warn");
            let (commitment, rows) = evaluate::dataset_commitment(&model, &data)?;
            if json {
                print_json(&serde_json::json!({ "dataset_sha256": commitment, "rows": rows }))?;
            } else {
                println!("{commitment}  ({rows} rows)");
            }
        }
        Command::Data(DataCommand::Split {
            input,
            parts,
            out,
            label,
            scheme,
            alpha,
            test_fraction,
            seed,
            json,
        }) => {
            init_logging("warn");
            let scheme = match scheme {
                Scheme::Iid => PartitionScheme::Iid,
                Scheme::Dirichlet => PartitionScheme::Dirichlet { alpha },
            };
            let report = cohort_datasets::split_file(
                &input,
                &out,
                &SplitOptions {
                    parts,
                    label,
                    scheme,
                    test_fraction,
                    seed,
                },
            )?;
            if json {
                print_json(&report)?;
            } else {
                for p in report.parts.iter().chain(report.test.iter()) {
                    println!(
                        "{}  {} rows  {:?}",
                        p.file.display(),
                        p.rows,
                        p.label_counts
                    );
                }
            }
        }
    }
    Ok(())
}

async fn run_job_command(cmd: JobCommand) -> Result<()> {
    match cmd {
        JobCommand::Submit {
            job,
            url,
            wait,
            json,
        } => {
            let text = std::fs::read_to_string(&job)
                .with_context(|| format!("reading {}", job.display()))?;
            // A broken job file fails here, before any connection is made.
            cohort_coordinator::JobSpec::from_toml(&text)
                .with_context(|| format!("{} was not submitted", job.display()))?;
            let mut dev = url.developer().await?;
            let job_id = developer::submit(&mut dev, &text).await?;
            if !wait {
                if json {
                    print_json(&serde_json::json!({ "job_id": job_id }))?;
                } else {
                    println!("{job_id}");
                }
                return Ok(());
            }
            if !json {
                println!("{job_id}");
            }
            let view = developer::wait(&mut dev, &job_id, !json).await?;
            if json {
                print_json(&view)?;
            } else {
                print_status(&view);
            }
            if view.state != "completed" {
                anyhow::bail!("job {job_id} {}", view.state);
            }
        }
        JobCommand::Status { job_id, url, json } => {
            let mut dev = url.developer().await?;
            let view = developer::status(&mut dev, &job_id).await?;
            if json {
                print_json(&view)?;
            } else {
                print_status(&view);
            }
        }
        JobCommand::List { url, json } => {
            let mut dev = url.developer().await?;
            let jobs = developer::list(&mut dev).await?;
            if json {
                print_json(&jobs)?;
            } else {
                for j in &jobs {
                    println!(
                        "{}  {:<20} {:<10} {}/{} rounds",
                        j.job_id, j.name, j.state, j.rounds_completed, j.rounds_total
                    );
                }
            }
        }
    }
    Ok(())
}

fn run_privacy_command(cmd: PrivacyCommand) -> Result<()> {
    use cohort_privacy::dp;
    match cmd {
        PrivacyCommand::Epsilon {
            noise_multiplier,
            rdp_fractional_orders,
            mechanism:
                MechanismArgs {
                    sampling_rate,
                    steps,
                    delta,
                    accountant,
                    json,
                },
        } => {
            let segment = dp::Segment::new(sampling_rate, noise_multiplier, steps)?;
            let report = match (accountant, rdp_fractional_orders) {
                (AccountantArg::Rdp, FractionalOrdersArg::DpAccounting) => {
                    let mut acc = dp::RdpAccountant::with_orders(
                        dp::rdp::default_orders(),
                        dp::FractionalOrderMethod::DpAccountingCompat,
                    )?;
                    acc.compose(&segment);
                    let (epsilon, order) = acc.epsilon(delta)?;
                    dp::EpsilonReport {
                        epsilon,
                        delta,
                        accountant: dp::AccountantKind::Rdp,
                        order: Some(order),
                    }
                }
                (AccountantArg::Pld, FractionalOrdersArg::DpAccounting) => {
                    anyhow::bail!("--rdp-fractional-orders applies to --accountant rdp only")
                }
                _ => dp::epsilon(accountant.into(), &[segment], delta)?,
            };
            if json {
                print_json(&report)?;
            } else {
                print!(
                    "epsilon {:.4} at delta {:e} ({:?} accountant",
                    report.epsilon, report.delta, report.accountant
                );
                match report.order {
                    Some(order) => println!(", order {order})"),
                    None => println!(")"),
                }
            }
        }
        PrivacyCommand::Noise {
            target_epsilon,
            mechanism:
                MechanismArgs {
                    sampling_rate,
                    steps,
                    delta,
                    accountant,
                    json,
                },
        } => {
            let report = dp::calibrate_noise(
                accountant.into(),
                sampling_rate,
                steps,
                delta,
                target_epsilon,
            )?;
            if json {
                print_json(&report)?;
            } else {
                println!(
                    "noise multiplier {:.4} gives epsilon {:.4} <= {} at delta {:e} ({:?} accountant)",
                    report.noise_multiplier,
                    report.epsilon,
                    report.target_epsilon,
                    report.delta,
                    report.accountant
                );
            }
        }
    }
    Ok(())
}

fn run_ca_command(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Init {
            consortium,
            out,
            json,
        } => {
            let ca = CertificateAuthority::init(&consortium, &out)?;
            if json {
                print_json(&serde_json::json!({
                    "consortium": ca.consortium(), "dir": out,
                    "ca_certificate": out.join("ca.crt"), "crl": ca.crl_path(),
                }))?;
            } else {
                println!(
                    "consortium `{}` root CA created in {}",
                    ca.consortium(),
                    out.display()
                );
                println!("  share:      {} and crl.pem", out.join("ca.crt").display());
                println!("  keep secret: {} (mode 600)", out.join("ca.key").display());
            }
        }
        CaCommand::Issue {
            ca,
            role,
            name,
            out,
            days,
            hosts,
            json,
        } => {
            let mut authority = CertificateAuthority::open(&ca)?;
            let mut request = IssueRequest::for_days(role.into(), &name, days.max(1));
            request.hosts = hosts;
            let kit = authority.issue(&request, &out)?;
            let p = &kit.principal;
            if json {
                print_json(&serde_json::json!({
                    "role": p.role, "name": p.name, "serial": p.serial, "dir": out,
                    "not_after": p.not_after, "signing_public_key": p.signing_key.to_hex(),
                }))?;
            } else {
                println!(
                    "startup kit for {} written to {} (serial {})",
                    p,
                    out.display(),
                    p.serial
                );
                println!("  hand the whole directory to its owner over a trusted channel");
            }
        }
        CaCommand::Revoke { ca, name, json } => {
            let mut authority = CertificateAuthority::open(&ca)?;
            let revoked = authority.revoke(&name)?;
            if json {
                print_json(&serde_json::json!({
                    "revoked": revoked, "crl": authority.crl_path(),
                }))?;
            } else {
                for r in &revoked {
                    println!("revoked {} `{}` (serial {})", r.role, r.name, r.serial);
                }
                println!(
                    "copy {} to the coordinator's --crl path; it is reloaded within seconds",
                    authority.crl_path().display()
                );
            }
        }
        CaCommand::List { ca, json } => {
            let authority = CertificateAuthority::open(&ca)?;
            if json {
                print_json(&authority.issued())?;
            } else {
                for r in authority.issued() {
                    println!(
                        "{:<12} {:<24} serial {}  until {}  {}",
                        r.role,
                        r.name,
                        r.serial,
                        r.not_after,
                        r.revoked_at
                            .as_ref()
                            .map(|at| format!("REVOKED {at}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

fn print_status(v: &developer::JobView) {
    println!(
        "job {} ({}): {}, {}/{} rounds",
        v.job_id, v.name, v.state, v.rounds_completed, v.rounds_total
    );
    if let Some(e) = &v.error {
        println!("error: {e}");
    }
    if !v.participants.is_empty() {
        println!("participants: {}", v.participants.join(", "));
    }
    for r in &v.rounds {
        match &r.metrics {
            Some(m) => println!(
                "  round {:>3}: {} clients  loss {:.4}  acc {:.4}  auc {:.4}  {:.2}s",
                r.round,
                r.participants.len(),
                m.loss,
                m.accuracy,
                m.auc,
                r.duration_secs
            ),
            None => println!(
                "  round {:>3}: {} clients  (no evaluation)",
                r.round,
                r.participants.len()
            ),
        }
    }
    if !v.dp_epsilon.is_empty() {
        let spent: Vec<String> = v
            .dp_epsilon
            .iter()
            .map(|(name, eps)| format!("{name} {eps:.3}"))
            .collect();
        println!("privacy spent (epsilon per hospital): {}", spent.join(", "));
    }
    for e in &v.events {
        println!("  note {}: {}", e.at, e.message);
    }
}
