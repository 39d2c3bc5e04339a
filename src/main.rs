//! The `cohort` command line: parses arguments and calls the libraries.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use cohort::pki::resolve_connection;
use cohort::rewards::token;
use cohort::{audit, bench, ca, data, demo, developer, evaluate, jobs, models, privacy, serve};
use cohort_datasets::{PartitionScheme, SplitOptions};
use cohort_identity::Role;
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
    /// Vertical split learning on site files that hold different columns
    /// about overlapping patients, simulated in this process: ids aligned
    /// by private set intersection (ECDH on ristretto255), one bottom part
    /// per site, the top part and labels at the site whose file has the
    /// label column. Reports AUC against a centralized model and the label
    /// leakage of the gradients sent back.
    Vertical(VerticalArgs),
    /// Run a job on many virtual hospitals in this process, for algorithm
    /// research: the data file is dealt to --clients hospitals (IID or
    /// Dirichlet label skew) and a real coordinator and one real client per
    /// hospital train it over loopback gRPC (plaintext; no certificates).
    /// Prints each round as it completes (with --json, one JSON object per
    /// round, then a summary) with its wall time, metrics and this
    /// process's resident memory.
    Simulate(SimulateArgs),
    /// Measure Cohort itself (results go in docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Contribution values and halving rewards of `[valuation]` jobs, read
    /// from the coordinator's ledger.
    #[command(subcommand)]
    Rewards(RewardsCommand),
    /// Run a validator: re-check the update proofs of every finished round
    /// from the coordinator's ledger with this machine's own code and keys,
    /// and append a signed attestation (job, round, client, statement,
    /// verdict) to the ledger. Needs a validator kit
    /// (`cohort ca issue --role validator --name NAME`).
    Validator(ValidatorArgs),
    /// Export update proofs for other verifiers.
    #[command(subcommand)]
    Proof(ProofCommand),
    /// A multi-party setup ceremony for the Groth16 keys of update proofs
    /// (`[proofs] setup = "ceremony"`), so that no single party, the
    /// coordinator included, could forge proofs: one file passed from
    /// validator to validator. `new`, then each validator `contribute`s,
    /// then `seal`, then each validator `contribute`s again; `verify`
    /// checks it all; the coordinator takes it with --setup-ceremony FILE.
    /// One honest contributor in each phase suffices.
    #[command(subcommand)]
    Setup(SetupCommand),
    /// The web dashboard (`cohort coordinator --dashboard ADDR`): access tokens.
    #[command(subcommand)]
    Dashboard(DashboardCommand),
    /// Feed one of Cohort's parsers hostile input: its seed corpus, then
    /// seeded mutations of it (bit flips, boundary numbers, insertions,
    /// deletions, splices, truncations) for a number of inputs or a time.
    /// Inputs that panic are saved and reported; the CI test
    /// tests/hostile_input.rs runs every target this way for a few seconds
    /// and also checks that no input makes a parser allocate more than
    /// 256 MiB. For coverage-guided fuzzing see fuzz/README.md.
    Fuzz(FuzzArgs),
}

#[derive(clap::Args)]
struct FuzzArgs {
    /// The parser: job_file, csv_table, parameters, protocol_messages,
    /// ledger_entry, checkpoint, secagg_messages, he_messages, proof_bytes,
    /// startup_kit, setup_ceremony.
    target: String,
    /// Seed corpus directory (one subdirectory per target).
    #[arg(long, default_value = "fuzz/corpus")]
    corpus: PathBuf,
    /// Where inputs that panic are written.
    #[arg(long, default_value = "fuzz/artifacts")]
    artifacts: PathBuf,
    /// Stop after this many inputs.
    #[arg(long, default_value_t = u64::MAX)]
    inputs: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Seed of the mutations (the same seed gives the same inputs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Issue 20: the web dashboard's access tokens.
#[derive(Subcommand)]
enum DashboardCommand {
    /// Print a dashboard access token signed with the coordinator's
    /// dashboard key (DATA_DIR/dashboard-token-key.pem, created on first
    /// use). Send it as `Authorization: Bearer TOKEN`, or open
    /// http://ADDR/?token=TOKEN once: the dashboard keeps it in an HttpOnly
    /// cookie. A developer sees the jobs it submitted (NAME as in its
    /// certificate), a hospital the jobs it took part in with only its own
    /// privacy budget and rewards, an operator everything.
    Token {
        /// The coordinator's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// What the holder may see (see above).
        #[arg(long, value_parser = ["developer", "hospital", "operator"])]
        role: String,
        /// The developer's or hospital's name; for an operator, who holds it.
        #[arg(long)]
        name: String,
        /// Lifetime in seconds (at most a year).
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
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
    /// Also check every proof with the job's Solidity verifier on this EVM
    /// node (deployed once per job from the ledger's verifying key); a
    /// proof either check rejects is attested invalid.
    #[arg(long, requires = "evm_key")]
    rpc_url: Option<String>,
    /// With --rpc-url: file holding the private key (hex) of the account
    /// that deploys the verifiers.
    #[arg(long, value_name = "FILE", requires = "rpc_url")]
    evm_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum SetupCommand {
    /// Start a ceremony for the update-norm circuit over ENTRIES parameters
    /// (a job's parameter count: a job that asks for a ceremony the
    /// coordinator lacks fails naming it).
    New {
        /// The parameter count of the jobs that will use the keys: weights
        /// and biases of the job's model (a logistic model on 12 features
        /// has 13).
        #[arg(long)]
        entries: usize,
        /// The ceremony file to create (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Add this validator's contribution to the open phase: fresh secrets
    /// from the operating system multiply the file's points and are then
    /// dropped, and the contribution is signed with the kit's key. The file
    /// is replaced atomically. At 10^4 parameters on two cores: about 80 s
    /// in the powers phase, 45 s in the circuit phase.
    Contribute {
        /// The ceremony file (`cohort setup new`), as the previous
        /// contributor left it.
        file: PathBuf,
        /// This validator's startup kit (`cohort ca issue --role validator`).
        #[arg(long, env = "COHORT_TLS", value_name = "DIR")]
        tls: PathBuf,
    },
    /// Close the powers phase (after checking it) and open the circuit
    /// phase, whose starting point anyone can recompute. Once per
    /// ceremony, and its slow step (FFTs over the curve groups): about
    /// 10 s at 100 parameters, 95 s at 1,000, 14 minutes at 10^4 on two
    /// cores. Anyone may run it; the validators then check it with
    /// `verify`.
    Seal {
        /// The ceremony file, with at least one powers contribution.
        file: PathBuf,
    },
    /// Download the ceremony file a job's keys came from, from the
    /// coordinator, and check it is the one the job's `proof_setup` ledger
    /// entry names (the ledger itself audited first). Then check it with
    /// `cohort setup verify FILE --tls KIT`.
    Fetch {
        job: String,
        /// Where to write the file (refused if it exists).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        connection: Connection,
    },
    /// Check every contribution (its proofs of knowledge and pairing
    /// checks, and that the final keys are the product of all of them),
    /// and with --tls that each was signed by a validator of that kit's
    /// consortium. Exits non-zero on any failure, naming it.
    Verify {
        /// The ceremony file.
        file: PathBuf,
        /// Any member's startup kit: check contributors against its CA.
        #[arg(long, env = "COHORT_TLS", value_name = "DIR")]
        tls: Option<PathBuf>,
        /// Print the report as JSON: entries, open_phase, sha256 (as the
        /// ledger records it), contributions (phase, index, contributor,
        /// signature) and verifying_key_sha256.
        #[arg(long)]
        json: bool,
    },
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
    /// Check every accepted update proof of a round with the job's Solidity
    /// verifier on an EVM chain (contracts/CohortUpdateVerifier.sol, the
    /// BN254 precompiles): deploys it from the ledger's verifying key
    /// unless --contract names one, and prints each verdict with its gas.
    /// Exits non-zero if any proof is rejected.
    Onchain {
        job: String,
        round: u32,
        /// JSON-RPC URL of the EVM node.
        #[arg(long)]
        rpc_url: String,
        /// File holding the private key (hex) of the account that deploys
        /// the verifier.
        #[arg(long, value_name = "FILE")]
        evm_key: PathBuf,
        /// A verifier this command deployed for the job before.
        #[arg(long)]
        contract: Option<String>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RewardsCommand {
    /// Each hospital's value and reward (all jobs, or one), and every paid
    /// round; optionally a per-round plot and rewards priced in a currency.
    Show {
        /// Only this job's rounds.
        job: Option<String>,
        /// The coordinator's data directory (read-only). Without it, the
        /// ledger is fetched from the running coordinator.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
        /// Also write values and rewards per round per hospital as SVG.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Report rewards in a reference currency too: a CSV of
        /// `height,price` lines (price of one token from that height on).
        #[arg(long, value_name = "FILE")]
        price_csv: Option<PathBuf>,
        /// Base units in one priced token.
        #[arg(long, default_value_t = 100_000_000)]
        price_unit: u64,
        #[arg(long)]
        json: bool,
    },
    /// Recompute every payout from the ledger alone: heights, the halving
    /// schedule, each split from the recorded values, and that no released
    /// group sum isolated one hospital. Exits non-zero on any mismatch.
    Verify {
        /// The coordinator's data directory (read-only). Without it, the
        /// ledger is fetched from the running coordinator.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// Deploy the ERC-20 rewards token on an EVM chain, with the
    /// coordinator's halving schedule (the token refuses any height's
    /// distributions beyond it); prints its address.
    Deploy {
        /// JSON-RPC URL of the EVM node.
        #[arg(long)]
        rpc_url: String,
        /// File holding the private key (hex) of the account that deploys
        /// and later publishes distributions.
        #[arg(long, value_name = "FILE")]
        evm_key: PathBuf,
        /// The coordinator's --emission-initial.
        #[arg(long, default_value_t = 5_000_000_000)]
        emission_initial: u64,
        /// The coordinator's --emission-halving.
        #[arg(long, default_value_t = 210_000)]
        emission_halving: u64,
        #[arg(long)]
        json: bool,
    },
    /// Publish the ledger's payouts to the token, each payout entry as one
    /// Merkle-rooted distribution (after `rewards verify` passes); those
    /// already published must match. Run it again after new rounds.
    Publish {
        #[command(flatten)]
        token: TokenArgs,
        #[arg(long)]
        json: bool,
    },
    /// Mint a hospital's or validator's published rewards to its address,
    /// with Merkle proofs built from the ledger (any funded key pays the
    /// gas; the tokens go to NAME's address).
    Claim {
        /// The hospital or validator, as the ledger names it.
        name: String,
        #[command(flatten)]
        token: TokenArgs,
        #[arg(long)]
        json: bool,
    },
}

/// Where the ledger and the rewards token are, and who pays.
#[derive(Args)]
struct TokenArgs {
    /// The coordinator's data directory (read-only). Without it, the
    /// ledger is fetched from the running coordinator.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    connection: Connection,
    /// JSON-RPC URL of the EVM node.
    #[arg(long)]
    rpc_url: String,
    /// The token's address (`cohort rewards deploy`).
    #[arg(long)]
    contract: String,
    /// File holding the private key (hex) of the account that sends the
    /// transactions (publish: the deployer).
    #[arg(long, value_name = "FILE")]
    evm_key: PathBuf,
    /// CSV of `name,address`: the EVM account of each hospital and
    /// validator. Payees without one are left out of the distributions.
    #[arg(long, value_name = "FILE")]
    addresses: PathBuf,
}

/// The update-proof statement `cohort bench proofs` measures.
#[derive(Clone, Copy, ValueEnum)]
enum ProofStatement {
    /// Groth16 over the update's hash (plain aggregation).
    Norm,
    /// Bulletproofs over Pedersen commitments (secure and homomorphic
    /// aggregation).
    Committed,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Update proofs (statement 1) at 16-bit entries. `--statement norm`
    /// (plain aggregation, Groth16 on BN254): constraints, setup time,
    /// proving-key size, prove time (a job's first proof, which builds the
    /// circuit's matrices, and a later one), proof size, hash and verify
    /// time, peak memory. `--statement committed` (secure and homomorphic
    /// aggregation, Bulletproofs over Pedersen commitments, 3 hospitals):
    /// gates, generators, prove and verify time, proof and commitment size,
    /// opening the sum (secagg), checking it against a decrypted sum (he),
    /// peak memory. Build with --release.
    Proofs {
        /// Parameter counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        sizes: Vec<usize>,
        /// Which statement: `norm` (plain mode) or `committed` (secagg, he).
        #[arg(long, value_enum, default_value_t = ProofStatement::Norm)]
        statement: ProofStatement,
        /// One JSON object per size.
        #[arg(long)]
        json: bool,
    },
    /// Split learning: PSI throughput (two sites, half the ids shared) at
    /// several sizes and thread counts; SplitFed against FedAvg on the
    /// bundled data (3 hospitals, real gRPC, mutual TLS): accuracy, round
    /// time, samples/s, bytes per round; vertical split learning over 3
    /// sites: epoch time, AUC against centralized, leak AUC without and
    /// with the max-norm defence.
    Split {
        /// Ids per site for the PSI runs.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        psi_ids: Vec<usize>,
        /// Thread counts for the PSI runs.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Rounds of each federated job.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// Aggregation modes of the FedAvg and SplitFed jobs, comma-separated
        /// (plain, secagg, he); each mode runs all three jobs.
        #[arg(long, value_delimiter = ',', default_value = "plain")]
        aggregation: Vec<cohort_coordinator::job::Aggregation>,
        /// Epochs of each vertical run.
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        /// One JSON object per line instead of tables.
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
    /// Hospital data from a FHIR Bulk Data export: a synthetic export of
    /// PATIENTS patients (Observations of the 30 WDBC features, re-measured
    /// at later dates, and Conditions) written to a temporary directory,
    /// then read through examples/fhir/wdbc-mapping.toml as `cohort client
    /// --fhir-mapping` reads it. Build with --release.
    Fhir {
        /// Patient counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,20000")]
        patients: Vec<usize>,
        /// Observations per patient.
        #[arg(long, default_value_t = 25)]
        observations: usize,
        /// One JSON object per configuration.
        #[arg(long)]
        json: bool,
    },
    /// Contribution valuation: stratified and permutation sampling (plain)
    /// and partition valuation (secagg) against exact Shapley on the same WDBC
    /// federation (Spearman, mean absolute error, candidates scored), then
    /// the round wall time a plain job spends with and without
    /// `[valuation]` at --overhead-hospitals.
    Valuation {
        #[arg(long, default_value_t = 8)]
        hospitals: usize,
        #[arg(long, default_value_t = 6)]
        rounds: u32,
        /// Permutations per round for plain permutation sampling.
        #[arg(long, default_value_t = 32)]
        permutations: u32,
        /// Orders per round for the middle positions of stratified
        /// sampling (the default method above `exact_up_to`); unset, the
        /// job's default (about 50 candidates a round).
        #[arg(long)]
        middle_orders: Option<u32>,
        /// Partition valuation's group size k.
        #[arg(long, default_value_t = 2)]
        group_size: u32,
        /// Secure-aggregation jobs to run for partition valuation: each job
        /// id seeds a different grouping, so its accuracy is reported as
        /// the mean and minimum over this many.
        #[arg(long, default_value_t = 5)]
        groupings: u32,
        /// 0 skips the overhead measurement.
        #[arg(long, default_value_t = 10)]
        overhead_hospitals: usize,
        /// Overhead measurement: jobs run without and with valuation,
        /// alternating; the medians are over all their rounds.
        #[arg(long, default_value_t = 3)]
        overhead_jobs: u32,
        /// Overhead measurement: a CSV with WDBC's columns to deal to the
        /// hospitals instead of the bundled WDBC (569 rows), to measure at
        /// a hospital size closer to a real one.
        #[arg(long, value_name = "FILE")]
        overhead_data: Option<PathBuf>,
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
    /// Developer API latency under load (issue 21): the same job runs alone
    /// and then while CALLERS developers, each on its own connection, send
    /// status, list and model-download calls back to back; prints the p50
    /// and p99 latency per call and how much slower the rounds ran.
    Load {
        /// Hospitals, all of them in every round.
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Concurrent developer callers.
        #[arg(long, default_value_t = 200)]
        callers: usize,
        /// Rounds of each job.
        #[arg(long, default_value_t = 10)]
        rounds: u32,
        /// Width of the job's one hidden layer: the hospitals' work per
        /// round (16: a round of a few milliseconds, nothing to hide the
        /// callers' cost behind; 1024: about 31,000 parameters).
        #[arg(long, default_value_t = 16)]
        hidden: usize,
        /// Local epochs per round: more work per round, the same calls.
        #[arg(long, default_value_t = 1)]
        local_epochs: u32,
        /// The coordinator's `--developer-share` (1: no limit).
        #[arg(long, default_value_t = 0.05, value_name = "FRACTION")]
        developer_share: f64,
        /// Pairs of jobs to run, each one alone then one under load back to
        /// back; the rounds of all pairs are pooled. On a shared machine
        /// round times drift from minute to minute: more pairs, less noise.
        #[arg(long, default_value_t = 3)]
        repeats: u32,
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
        #[arg(
            long,
            alias = "params",
            value_delimiter = ',',
            default_value = "10000,1000000"
        )]
        parameters: Vec<usize>,
        /// Rounds per configuration.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Keep the coordinator's state in PostgreSQL instead of SQLite:
        /// each configuration gets a fresh database created on this server
        /// (postgres://user:password@host:port/database; the user needs
        /// CREATEDB) and dropped when it ends.
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct SimulateArgs {
    /// The job file (TOML), as for `cohort job submit`.
    job: PathBuf,
    /// Virtual hospitals to deal the data to.
    #[arg(long)]
    clients: usize,
    /// CSV or Parquet file with the job's label column.
    #[arg(long)]
    data: PathBuf,
    /// Label skew: each class's rows are spread over the hospitals by
    /// proportions drawn from Dirichlet(ALPHA) (smaller is more skewed);
    /// without it, rows are dealt IID (stratified by label).
    #[arg(long)]
    alpha: Option<f64>,
    /// Seed of the deal.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the hospitals' files and the coordinator's state here
    /// [default: a temporary directory, removed afterwards].
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// One JSON object per round on stdout, then a summary object.
    #[arg(long)]
    json: bool,
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
    /// Split learning (SplitFed): each hospital trains the bottom of the
    /// network up to the first hidden layer and streams its activations to
    /// the coordinator, which trains the top; both are averaged each round.
    /// With --secure-aggregation or --homomorphic-encryption the hospitals'
    /// bottom parts are summed under that protocol (the coordinator sees
    /// their sum only, and still each batch's activations).
    #[arg(long, conflicts_with = "dp_epsilon")]
    splitfed: bool,
    /// With --splitfed: the U-shaped split, where the labels and the last
    /// layer stay at the hospitals and the coordinator trains only the
    /// middle layer.
    #[arg(long, requires = "splitfed")]
    u_shaped: bool,
    /// Vertical split learning instead, run by a coordinator over mutual
    /// TLS: WDBC's columns dealt to three site clients (one holds the
    /// diagnosis), aligned by private set intersection on patient ids
    /// relayed by the coordinator, then the job examples/wdbc-vertical.toml;
    /// beside it, the centralized model (`cohort vertical` runs the same
    /// algorithm in one process).
    #[arg(long, conflicts_with_all = ["splitfed", "secure_aggregation", "homomorphic_encryption", "dp_epsilon", "rounds", "alpha"])]
    vertical: bool,
    /// With --vertical: the max-norm defence against label leakage through
    /// the gradients the label site sends, with this noise scale (1 is
    /// the paper's heuristic).
    #[arg(long, value_name = "SCALE", requires = "vertical")]
    label_defence: Option<f64>,
    /// Serve the demo coordinator's web dashboard on ADDR [default:
    /// 127.0.0.1:8080] from the start, print its address with an operator
    /// token, and keep serving after the report until Ctrl-C.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8080", conflicts_with = "vertical")]
    dashboard: Option<String>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerticalArgs {
    /// A site's CSV or Parquet file (repeat: at least two).
    #[arg(long = "site", required = true)]
    sites: Vec<PathBuf>,
    /// The patient id column every site has.
    #[arg(long)]
    id: String,
    /// The label column (in exactly one site's file).
    #[arg(long)]
    label: String,
    /// The label value that counts as positive.
    #[arg(long)]
    positive: String,
    /// Columns no site uses.
    #[arg(long, value_delimiter = ',')]
    drop: Vec<String>,
    /// Hidden layer widths; `0` for logistic regression (one linear part per
    /// site, summed at the label site).
    #[arg(long, value_delimiter = ',', default_value = "32,16")]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 0.05)]
    learning_rate: f64,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Fraction of the shared patients held out for validation.
    #[arg(long, default_value_t = 0.25)]
    validation_fraction: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The max-norm defence against label leakage, with this noise scale.
    #[arg(long, value_name = "SCALE")]
    label_defence: Option<f64>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// List the ledger's entries (all, or one job's). Read from a running
    /// coordinator, a developer sees its own jobs' entries and a hospital
    /// those of the jobs it is enrolled in; the others are withheld (their
    /// leaf hashes only, which `cohort verify ledger` still checks). Within
    /// a job's entries a hospital reads its own row count and update
    /// receipts (with its ε); the other hospitals' show as `sealed_updates`
    /// / `sealed_participants`: a name and a commitment.
    Show {
        /// Only this job's entries.
        job: Option<String>,
        #[command(flatten)]
        state: StoredState,
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
    fn options(self) -> Option<audit::ChainOptions> {
        Some(audit::ChainOptions {
            rpc_url: self.rpc_url?,
            contract: self.contract?,
            require_anchored: self.require_anchored,
        })
    }
}

#[derive(Subcommand)]
enum VerifyCommand {
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
    /// Check every entry's signature, the Merkle tree against the signed
    /// checkpoint, and that the log extends the checkpoint this machine saw
    /// last time (so a rewritten history is caught).
    Ledger {
        /// The coordinator's data directory (read-only). Without it, the
        /// ledger is fetched from the running coordinator (--coordinator,
        /// --tls or --insecure).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The coordinator's PostgreSQL database (`cohort coordinator
        /// --database`), read in one read-only transaction, instead of a
        /// data directory.
        #[arg(long, value_name = "URL", conflicts_with = "data_dir")]
        database: Option<String>,
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
    /// Check a downloaded model: its files against model.sig, the signature
    /// against the coordinator's key and, with --data-dir or --database,
    /// that the verified ledger records this signature.
    Model {
        /// The model directory (`cohort model get --out DIR`).
        dir: PathBuf,
        /// The coordinator's public key, PEM (`cohort coordinator signing-key`).
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// The coordinator's state (its data directory, or its PostgreSQL
        /// database): take the key from its ledger and check that the
        /// ledger records this model.
        #[command(flatten)]
        stored: StoredState,
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

impl From<FractionalOrdersArg> for privacy::FractionalOrders {
    fn from(a: FractionalOrdersArg) -> Self {
        match a {
            FractionalOrdersArg::Exact => Self::Exact,
            FractionalOrdersArg::DpAccounting => Self::DpAccounting,
        }
    }
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

impl MechanismArgs {
    fn mechanism(&self) -> privacy::Mechanism {
        privacy::Mechanism {
            sampling_rate: self.sampling_rate,
            steps: self.steps,
            delta: self.delta,
            accountant: self.accountant.into(),
        }
    }
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

/// Where a command reads a coordinator's state itself: its data directory
/// or its PostgreSQL database, read-only.
#[derive(Args)]
struct StoredState {
    /// The coordinator's data directory (SQLite state).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Or its PostgreSQL database (postgres://...).
    #[arg(long, value_name = "URL", conflicts_with = "data_dir")]
    database: Option<String>,
}

impl StoredState {
    fn source(self) -> Result<audit::LedgerSource> {
        audit::LedgerSource::stored(self.data_dir, self.database)
    }

    /// [`StoredState::source`], or `None` when neither flag is given.
    fn source_if_given(self) -> Result<Option<audit::LedgerSource>> {
        if self.data_dir.is_none() && self.database.is_none() {
            return Ok(None);
        }
        self.source().map(Some)
    }
}

#[derive(Subcommand)]
enum CoordinatorAction {
    /// Print the public key (PEM) that signs this coordinator's ledger and
    /// models, as its ledger publishes it.
    SigningKey {
        #[command(flatten)]
        state: StoredState,
    },
    /// Which coordinator holds the lease on a shared PostgreSQL state (the
    /// active one; the others stand by), its epoch (takeovers so far) and
    /// when the lease expires unless renewed.
    Lease {
        /// The coordinators' database (or COHORT_DATABASE_URL).
        #[arg(
            long,
            env = "COHORT_DATABASE_URL",
            value_name = "URL",
            hide_env_values = true
        )]
        database: String,
        #[arg(long)]
        json: bool,
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
    /// Base units the consortium's first rewarded rounds emit each
    /// (`[valuation]` jobs); fixed by the first payout. Default: Bitcoin's.
    #[arg(long, default_value_t = 5_000_000_000)]
    emission_initial: u64,
    /// Rewarded rounds (all jobs together) between halvings of the emission.
    #[arg(long, default_value_t = 210_000)]
    emission_halving: u64,
    /// Parts per million of a round's emission paid to the validators that
    /// attested it (rounds without attestations pay the hospitals all).
    #[arg(long, default_value_t = 0)]
    validator_share_ppm: u64,
    /// Also serve the web dashboard on this address, e.g. 127.0.0.1:8080.
    /// Off unless given. With --tls it serves HTTPS with the coordinator's
    /// certificate and a consortium client certificate signs one in; with
    /// --insecure it is plain HTTP (keep it on loopback). `cohort
    /// dashboard token` prints access tokens.
    #[arg(long, value_name = "ADDR")]
    dashboard: Option<String>,
    /// Object store for models: file:///path, memory:///, or s3://bucket/prefix
    /// (s3 needs the `s3` build feature) [default: DATA_DIR/objects].
    #[arg(long)]
    object_store: Option<String>,
    /// Keep the coordinator's state (jobs, rounds, clients, the ledger) in
    /// this PostgreSQL database instead of DATA_DIR/coordinator.sqlite:
    /// postgres://user:password@host:port/database. The schema is created
    /// on first start. Prefer the environment variable, which keeps the
    /// password out of the process list.
    ///
    /// Several coordinators may share one database (each with its own
    /// --listen address and the same startup kit, models in a shared
    /// --object-store): one holds a lease in the database and serves; the
    /// others stand by, not listening, and the first to find the lease
    /// expired takes over, resuming the unfinished jobs. Give hospitals
    /// every address (`cohort client --coordinator URL1,URL2`).
    #[arg(
        long,
        env = "COHORT_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database: Option<String>,
    /// With --database: seconds the coordinator lease lasts unless renewed
    /// (every third of it). A standby takes over at most this long, plus
    /// a second, after the active coordinator stops renewing.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    lease_seconds: f64,
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
    /// HTTP/2 streams (calls) one connection may have open at once.
    #[arg(long, default_value_t = 32)]
    max_streams_per_connection: u32,
    /// Developer and validator calls (job status, lists, models, the
    /// ledger) served at once, all members together; more wait their turn.
    /// Hospitals' round traffic never waits for them, so dashboards and
    /// scripts polling in a crowd cannot starve training of CPU. Each takes
    /// about a millisecond: two at a time serve on the order of a thousand
    /// calls a second.
    #[arg(long, default_value_t = 2)]
    max_developer_calls: usize,
    /// While a job runs, the share of the coordinator's time that developer
    /// and validator reads (status, lists, models, the ledger) may take, all
    /// together (above 0, at most 1; 1: no limit; submissions and
    /// attestations are not held to it). Each call is charged the time it
    /// held its slot and, once the share is used up, the next waits until
    /// it is earned back: a crowd of pollers then slows rounds by about
    /// this much, and waits longer instead. Idle, calls never wait.
    #[arg(long, default_value_t = 0.05, value_name = "FRACTION")]
    developer_share: f64,
    /// MiB of hospitals' uploads (updates, masked updates, ciphertexts)
    /// received at once, at most; more wait in HTTP/2 flow control. Bounds
    /// the coordinator's memory for uploads whatever the number of
    /// hospitals: a plain round folds each update into the running sum as
    /// it arrives. At 10^6 parameters an update is 4 MB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    update_memory_mb: u64,
    /// Largest gRPC message accepted, in bytes (1,114,112 to 8,388,608;
    /// models travel in 256 KiB chunks, 1 MiB from earlier clients). Larger messages are refused with
    /// OutOfRange before they are buffered.
    #[arg(long, default_value_t = cohort_protocol::MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Connections open at once, TLS handshakes in progress included; more
    /// are closed as soon as they are accepted (keep below `ulimit -n`). A
    /// hospital holds one, and a second once it has trained in a split or
    /// vertical job (its batch exchanges have a connection of their own).
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a new connection has to finish the TLS handshake, and then
    /// to send the HTTP/2 preface; slower peers are dropped.
    #[arg(long, default_value_t = 10)]
    handshake_timeout_secs: u64,
    /// Seconds of silence on a connection before the coordinator pings it
    /// (HTTP/2 keepalive).
    #[arg(long, default_value_t = 30)]
    keepalive_interval_secs: u64,
    /// Seconds a peer has to answer that ping before its connection is
    /// closed (drops half-open connections).
    #[arg(long, default_value_t = 20)]
    keepalive_timeout_secs: u64,
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
    /// A finished Groth16 setup ceremony (`cohort setup`), for jobs with
    /// `[proofs] setup = "ceremony"` whose parameter count it was made for.
    /// Repeat for several sizes. Its contributors are checked against the
    /// consortium's CA when a job takes it.
    #[arg(long, value_name = "FILE")]
    setup_ceremony: Vec<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LedgerArg {
    /// The Merkle log in the data directory alone.
    Embedded,
    /// The same log, anchored on an EVM chain as well.
    Evm,
}

/// Where a hospital's table comes from: `--data` and its companions.
#[derive(Args)]
struct DataSourceArgs {
    /// The hospital's local data; it never leaves this machine. A CSV or
    /// Parquet file; a PostgreSQL database (`postgres://USER@HOST/DB`, e.g.
    /// an OMOP CDM instance) with --data-query; or the directory of a FHIR
    /// Bulk Data export (NDJSON) with --fhir-mapping.
    #[arg(long = "data", value_name = "FILE|URL|DIR")]
    data: String,
    /// With --data postgres://...: a file holding one SELECT that yields
    /// one row per patient with the job's columns (label included). It runs
    /// in a read-only transaction. The password is taken from the URL or
    /// from PGPASSWORD. See docs/DATA_SOURCES.md.
    #[arg(long, value_name = "FILE")]
    data_query: Option<PathBuf>,
    /// With --data DIR (a FHIR Bulk Data export): the TOML mapping from
    /// Patient, Condition, Observation, ... resources to one row per
    /// Patient. See docs/DATA_SOURCES.md.
    #[arg(long, value_name = "FILE")]
    fhir_mapping: Option<PathBuf>,
}

impl DataSourceArgs {
    fn source(&self) -> Result<cohort_datasets::DataSource> {
        Ok(cohort_datasets::DataSource::from_args(
            &self.data,
            self.data_query.as_deref(),
            self.fhir_mapping.as_deref(),
        )?)
    }
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct ClientArgs {
    #[command(subcommand)]
    command: Option<ClientCommand>,
    #[command(flatten)]
    connection: Connection,
    /// Where the hospital's table comes from (a database or an export is
    /// read once, when the client starts).
    #[command(flatten)]
    source: Option<DataSourceArgs>,
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
    /// aggregation task of this stage of a round arrives (advertise, share,
    /// masked-fit, unmask), after training and before sending its update
    /// (before-send), or when asked for its masked preprocessing statistics
    /// (statistics).
    #[arg(long, value_name = "STAGE")]
    vanish_at: Option<cohort_client::VanishAt>,
    /// Drill (a testing aid, never for production): misbehave in every FIT
    /// task, to check that the coordinator and validators catch it.
    /// boost:F sends the update times F with the honest update's proof;
    /// overbound:F multiplies by F and tries to prove that (the prover
    /// refuses, so no proof goes along); forge sends random proof bytes;
    /// freeride sends an all-zero update; nan-activations (a feature site of
    /// a vertical job) sends NaN activations in every batch; no-statistics
    /// refuses a secure job's preprocessing statistics, as a client from
    /// before them would, while staying connected.
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
    /// http://127.0.0.1:7070 with --insecure]. Several URLs, comma-separated,
    /// name an active coordinator and its standbys: a hospital moves on to
    /// the next whenever a session ends, a developer command uses the first
    /// that answers a health check.
    #[arg(long, env = "COHORT_COORDINATOR", value_name = "URL[,URL...]")]
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
        resolve_connection(
            self.coordinator.as_deref(),
            self.tls.as_deref(),
            self.insecure,
            allowed,
        )
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
    /// Write a downloaded model in another format. ONNX: input `features`
    /// (rows preprocessed as the model card says, in its feature order),
    /// output `probability`; runs in onnxruntime.
    Export {
        /// The model directory (`cohort model get --out DIR`).
        #[arg(long)]
        model: PathBuf,
        /// The format to write (ONNX: IR version 8, opset 13).
        #[arg(long, value_enum)]
        format: ExportFormatArg,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormatArg {
    /// ONNX, for onnxruntime and other runtimes.
    Onnx,
}

impl From<ExportFormatArg> for models::ExportFormat {
    fn from(f: ExportFormatArg) -> Self {
        match f {
            ExportFormatArg::Onnx => Self::Onnx,
        }
    }
}

#[derive(Args)]
struct EvaluateArgs {
    /// Directory holding model.safetensors and model.json.
    #[arg(long)]
    model: PathBuf,
    /// Labelled data to evaluate on (CSV or Parquet).
    #[arg(long)]
    data: PathBuf,
    /// Vertical jobs: the label site's client data directory (its
    /// --data-dir), which keeps the model's top part; the downloaded first
    /// layer is joined with it there. The top never leaves the label site,
    /// so a vertical model is evaluated at that site.
    #[arg(long, value_name = "DATA_DIR")]
    top_from: Option<PathBuf>,
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
    /// Read a hospital's data source as `cohort client` would (a file, a
    /// PostgreSQL/OMOP query or a FHIR export) and report rows, columns and
    /// missing cells, counts only; with --job, validate every cell the job
    /// uses against its [data] section. Run it before joining a consortium.
    Check {
        #[command(flatten)]
        source: DataSourceArgs,
        /// A job file whose [data] section the table must fit.
        #[arg(long, value_name = "JOB.toml")]
        job: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Split one CSV by columns into site files for vertical split
    /// learning: every site keeps the id column and a random share of the
    /// patients (so the sites' id sets overlap without being equal); the
    /// first site also keeps the label column; the other columns are dealt
    /// round-robin.
    SplitVertical {
        input: PathBuf,
        /// Number of site files.
        #[arg(long, default_value_t = 3)]
        sites: usize,
        #[arg(long)]
        out: PathBuf,
        /// The id column (patient identifier).
        #[arg(long)]
        id: String,
        /// The label column, kept at the first site only.
        #[arg(long)]
        label: String,
        /// Columns written to no site.
        #[arg(long, value_delimiter = ',')]
        drop: Vec<String>,
        /// Fraction of the patients each site keeps.
        #[arg(long, default_value_t = 0.9)]
        keep: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// A job's [preprocessing] table (every column's mean, standard
    /// deviation and fill) computed from reference data the model developer
    /// may publish: its own data or a public cohort, never a hospital's.
    /// With it in the job file no hospital computes or releases statistics,
    /// so a job under differential privacy spends nothing on them.
    Preprocessing {
        /// The reference data: a CSV or Parquet file with the job's columns.
        reference: PathBuf,
        /// The job file whose [data] section says which columns to describe.
        #[arg(long, value_name = "JOB.toml")]
        job: PathBuf,
        #[arg(long)]
        json: bool,
    },
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
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // arkworks' gadgets open an INFO span under the target `gr1cs` for every
    // call (`#[instrument]`), formatting each argument: enabled, that costs
    // a Groth16 setup or proof far more than its arithmetic (113 s against
    // 0.08 s for a 13-parameter setup). Off unless RUST_LOG names it.
    let named = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("gr1cs"));
    if !named {
        filter = filter.add_directive(
            "gr1cs=off"
                .parse()
                .expect("a constant, valid filter directive"),
        );
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `--json` prints the value; otherwise its text rendering.
fn report<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<()> {
    if json {
        print_json(value)
    } else {
        let text = text(value);
        if text.is_empty() || text.ends_with('\n') {
            print!("{text}");
        } else {
            println!("{text}");
        }
        Ok(())
    }
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// `cohort ... | head` closes stdout before the command is done: leave
/// quietly with the status a SIGPIPE gives (128 + 13), as Unix tools do,
/// instead of a panic report. SIGPIPE itself stays ignored (Rust's
/// default): the gRPC sockets of the same process need EPIPE as an error.
fn exit_quietly_when_stdout_closes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        // std's message: "failed printing to stdout: Broken pipe (os error 32)".
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info)
    }));
}

#[tokio::main]
async fn main() -> Result<()> {
    exit_quietly_when_stdout_closes();
    cohort::allocator::retain_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Vertical(a) => {
            init_logging("warn");
            let model = if a.hidden.is_empty() || a.hidden == [0] {
                cohort_models::ModelSpec::Logistic
            } else {
                cohort_models::ModelSpec::Mlp {
                    hidden: a.hidden,
                    cut: None,
                }
            };
            let options = cohort::vertical::VerticalOptions {
                sites: a.sites,
                id: a.id,
                label: a.label,
                positive: a.positive,
                drop: a.drop,
                model,
                epochs: a.epochs,
                batch_size: a.batch_size,
                optimizer: cohort_models::OptimizerSpec::Sgd {
                    learning_rate: a.learning_rate,
                    momentum: a.momentum,
                },
                validation_fraction: a.validation_fraction,
                seed: a.seed,
                defence: a.label_defence,
                progress: !a.json,
            };
            let result = cohort::vertical::run(&options)?;
            report(a.json, &result, cohort::vertical::render)?;
        }
        Command::Simulate(a) => {
            init_logging("warn");
            let options = cohort::simulate::SimulateOptions {
                job: a.job,
                clients: a.clients,
                data: a.data,
                partition: match a.alpha {
                    Some(alpha) => cohort::simulate::Partition::Dirichlet { alpha },
                    None => cohort::simulate::Partition::Iid,
                },
                seed: a.seed,
                workdir: a.workdir,
            };
            let json = a.json;
            let summary = cohort::simulate::simulate(&options, |line| {
                if json {
                    if let Ok(text) = serde_json::to_string(line) {
                        println!("{text}");
                    }
                } else {
                    eprintln!("{}", cohort::simulate::round_text(line));
                }
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("{}", cohort::simulate::summary_text(&summary));
            }
            if summary.state != "completed" {
                anyhow::bail!(
                    "job {} {}: {}",
                    summary.job_id,
                    summary.state,
                    summary.error.unwrap_or_default()
                );
            }
        }
        Command::Demo(a) if a.vertical => {
            init_logging("warn");
            let result =
                cohort::vertical_job::demo(a.workdir, a.seed, a.label_defence, !a.json).await?;
            report(a.json, &result, cohort::vertical_job::render)?;
        }
        Command::Demo(a) => {
            init_logging("warn");
            let (result, dashboard) = demo::run_with_dashboard(demo::DemoOptions {
                workdir: a.workdir,
                rounds: a.rounds,
                seed: a.seed,
                alpha: a.alpha,
                progress: !a.json,
                secure_aggregation: a.secure_aggregation,
                homomorphic_encryption: a.homomorphic_encryption,
                dp_epsilon: a.dp_epsilon,
                splitfed: a.splitfed,
                u_shaped: a.u_shaped,
                dashboard: a.dashboard,
                ..Default::default()
            })
            .await?;
            if a.json {
                print_json(&result)?;
            } else {
                demo::print_report(&result);
            }
            if let Some(dashboard) = dashboard {
                demo::serve_dashboard_until(dashboard, shutdown_signal()).await;
            }
        }
        Command::Coordinator(CoordinatorArgs {
            action: Some(CoordinatorAction::SigningKey { state }),
            ..
        }) => {
            init_logging("warn");
            let source = state.source()?;
            print!("{}", audit::coordinator_key_from(&source).await?.spki_pem());
        }
        Command::Coordinator(CoordinatorArgs {
            action: Some(CoordinatorAction::Lease { database, json }),
            ..
        }) => {
            init_logging("warn");
            let lease = serve::lease_status(&database).await?;
            report(json, &lease, serve::render_lease)?;
        }
        Command::Coordinator(a) => {
            init_logging("info");
            let data_dir = a.data_dir.context("--data-dir is required")?;
            let ledger = serve::LedgerFlags {
                evm: a.ledger == LedgerArg::Evm,
                rpc_url: a.rpc_url,
                contract: a.contract,
                evm_key: a.evm_key,
            };
            serve::run_coordinator(
                serve::CoordinatorOptions {
                    listen: a.listen,
                    data_dir,
                    database: a.database,
                    lease_ttl: serve::lease_ttl(a.lease_seconds)?,
                    object_store: a.object_store,
                    poll_timeout: Duration::from_secs(a.poll_timeout_secs),
                    tls: a.tls,
                    crl: a.crl,
                    insecure: a.insecure,
                    request_timeout: Duration::from_secs(a.request_timeout_secs),
                    max_calls_per_member: a.max_calls_per_member,
                    max_streams_per_connection: a.max_streams_per_connection,
                    max_developer_calls: a.max_developer_calls,
                    developer_share: a.developer_share,
                    upload_memory_bytes: a.update_memory_mb.max(1).saturating_mul(1 << 20),
                    setup_ceremonies: a.setup_ceremony,
                    wire: cohort_coordinator::WireLimits {
                        max_message_bytes: a.max_message_bytes,
                        max_connections: a.max_connections,
                        handshake_timeout: Duration::from_secs(a.handshake_timeout_secs),
                        keepalive_interval: Duration::from_secs(a.keepalive_interval_secs),
                        keepalive_timeout: Duration::from_secs(a.keepalive_timeout_secs),
                    },
                    ledger,
                    rewards: cohort_coordinator::rewards::RewardsConfig::new(
                        a.emission_initial,
                        a.emission_halving,
                        a.validator_share_ppm,
                    )?,
                    dashboard: a.dashboard,
                },
                shutdown_signal(),
            )
            .await?;
        }
        Command::Client(ClientArgs {
            command: Some(ClientCommand::Budget { data_dir, json }),
            ..
        }) => {
            init_logging("warn");
            let budget = cohort_client::budget::Budget::read_report(&data_dir)?;
            report(json, &budget, privacy::render_budget)?;
        }
        Command::Client(a) => {
            init_logging("info");
            let data = a.source.context("--data is required")?.source()?;
            serve::run_client(
                serve::ClientProcessOptions {
                    coordinator: a.connection.coordinator,
                    tls: a.connection.tls,
                    insecure: a.connection.insecure,
                    data,
                    name: a.name,
                    data_dir: a.data_dir,
                    budget: a.max_epsilon.zip(a.delta),
                    require_secure_aggregation: a.require_secure_aggregation,
                    keep_contributions: a.keep_contributions,
                    vanish_at: a.vanish_at,
                    misbehave: a.misbehave,
                },
                shutdown_signal(),
            )
            .await?;
        }
        Command::Fuzz(args) => {
            let fuzzed = cohort::fuzzing::run(
                &args.target,
                &args.corpus,
                &args.artifacts,
                (args.inputs, args.seconds, args.seed),
            )?;
            report(args.json, &fuzzed, cohort::fuzzing::FuzzReport::text)?;
            if !fuzzed.crashes.is_empty() {
                anyhow::bail!("{} inputs crashed {}", fuzzed.crashes.len(), fuzzed.target);
            }
        }
        Command::Dashboard(DashboardCommand::Token {
            data_dir,
            role,
            name,
            ttl_secs,
        }) => println!(
            "{}",
            cohort::dashboard::token_command(&data_dir, &role, &name, ttl_secs)?
        ),
        Command::Ca(cmd) => {
            init_logging("warn");
            run_ca_command(cmd)?;
        }
        Command::Ledger(LedgerCommand::Show { job, state, json }) => {
            init_logging("warn");
            let source = state.source()?;
            let (entries, withheld) = audit::readable_entries(&source, job.as_deref()).await?;
            if json {
                print_json(&entries)?;
            } else {
                print!("{}", audit::render_entries(&entries)?);
                if withheld > 0 {
                    println!(
                        "({withheld} entries of other tenants' jobs withheld: the coordinator sent their leaf hashes only)"
                    );
                }
            }
        }
        Command::Rewards(command) => run_rewards_command(command).await?,
        Command::Verify(VerifyCommand::Ledger {
            data_dir,
            database,
            connection,
            chain,
            state,
            json,
        }) => {
            init_logging("warn");
            let state = state.unwrap_or_else(audit::default_state_file);
            let chain = chain.options();
            let verified = async {
                let source = match (data_dir, database) {
                    (None, None) => {
                        let (url, security) = connection.resolve(&[
                            Role::Validator,
                            Role::Developer,
                            Role::Hospital,
                        ])?;
                        audit::LedgerSource::Coordinator { url, security }
                    }
                    (data_dir, database) => audit::LedgerSource::stored(data_dir, database)?,
                };
                audit::verify_ledger_from(&source, &state, chain.as_ref()).await
            }
            .await
            .context("ledger verification FAILED")?;
            report(json, &verified, audit::LedgerVerification::summary)?;
        }
        Command::Ledger(LedgerCommand::Deploy {
            rpc_url,
            evm_key,
            json,
        }) => {
            init_logging("warn");
            let deployment = audit::deploy_anchor(&rpc_url, &evm_key).await?;
            if json {
                print_json(&deployment)?;
            } else {
                eprintln!("{}", audit::deployment_summary(&deployment));
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
        Command::Setup(command) => {
            // The ceremony's stages, as periodic status lines on stderr.
            init_logging("warn,cohort_proofs::ceremony=info");
            match command {
                SetupCommand::New { entries, out } => cohort::setup::new(entries, &out)?,
                SetupCommand::Contribute { file, tls } => cohort::setup::contribute(&file, &tls)?,
                SetupCommand::Seal { file } => cohort::setup::seal(&file)?,
                SetupCommand::Fetch {
                    job,
                    out,
                    connection,
                } => {
                    let mut dev = connection.developer().await?;
                    cohort::setup::fetch(&mut dev, &job, &out).await?;
                }
                SetupCommand::Verify { file, tls, json } => {
                    let report = cohort::setup::verify(&file, tls.as_deref())?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    } else {
                        println!("{report}");
                    }
                }
            }
        }
        Command::Validator(a) => {
            init_logging("info");
            let (url, security) = a.connection.resolve(&[Role::Validator])?;
            let interval = std::time::Duration::from_secs(a.interval_secs.max(1));
            let onchain = match (a.rpc_url, a.evm_key) {
                (Some(rpc_url), Some(key)) => Some(cohort::validator::OnchainVerifiers::new(
                    rpc_url,
                    cohort_ledger_evm::EvmKey::from_file(&key)?,
                )),
                _ => None,
            };
            cohort::validator::run(&url, &security, interval, a.once, onchain).await?;
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
        Command::Proof(ProofCommand::Onchain {
            job,
            round,
            rpc_url,
            evm_key,
            contract,
            connection,
            json,
        }) => {
            init_logging("warn");
            let (url, security) =
                connection.resolve(&[Role::Validator, Role::Developer, Role::Hospital])?;
            let check = cohort::validator::onchain(
                &url,
                &security,
                (&job, round),
                &rpc_url,
                &evm_key,
                contract.as_deref(),
            )
            .await?;
            let rejected = check.proofs.iter().filter(|p| !p.valid).count();
            report(json, &check, |c| {
                c.proofs
                    .iter()
                    .map(|p| {
                        format!(
                            "{}: {} ({} gas)",
                            p.client,
                            if p.valid { "valid" } else { "REJECTED" },
                            p.gas
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
                    + &format!("\nverifier {}", c.contract)
            })?;
            if rejected > 0 {
                anyhow::bail!("{rejected} proofs of round {round} were rejected on chain");
            }
        }
        Command::Verify(VerifyCommand::Model {
            dir,
            public_key,
            stored,
            state,
            json,
        }) => {
            init_logging("warn");
            let state = state.unwrap_or_else(audit::default_state_file);
            let ledger = match stored.source_if_given()? {
                Some(source) => Some((source.read().await?, source.describe())),
                None => None,
            };
            let verified = audit::verify_model_against(&dir, public_key.as_deref(), ledger, &state)
                .context("model verification FAILED")?;
            report(json, &verified, audit::ModelVerification::summary)?;
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
            let model = models::get(&mut dev, &job_id, round, &out).await?;
            report(json, &model, models::DownloadedModel::summary)?;
        }
        Command::Model(ModelCommand::Export {
            model,
            format,
            out,
            json,
        }) => {
            init_logging("warn");
            let exported = models::export(&model, format.into(), &out)?;
            report(json, &exported, models::ExportedModel::summary)?;
        }
        Command::Evaluate(a) => {
            init_logging("warn");
            let (_, metrics) = evaluate::evaluate_model(&a.model, a.top_from.as_deref(), &a.data)?;
            report(a.json, &metrics, evaluate::render_metrics)?;
        }
        Command::Bench(cmd) => run_bench_command(cmd).await?,
        Command::Data(DataCommand::Check { source, job, json }) => {
            init_logging("warn");
            let check = data::check(&source.source()?, job.as_deref())?;
            report(json, &check, data::SourceCheck::summary)?;
        }
        Command::Data(DataCommand::Preprocessing {
            reference,
            job,
            json,
        }) => {
            init_logging("warn");
            let reference = data::reference_preprocessing(&reference, &job)?;
            report(json, &reference, data::ReferencePreprocessing::toml)?;
        }
        Command::Data(DataCommand::Commitment { data, model, json }) => {
            init_logging("warn");
            let commitment = data::commitment(&model, &data)?;
            report(json, &commitment, data::DataCommitment::summary)?;
        }
        Command::Data(DataCommand::SplitVertical {
            input,
            sites,
            out,
            id,
            label,
            drop,
            keep,
            seed,
            json,
        }) => {
            init_logging("warn");
            let options = cohort_datasets::VerticalSplitOptions {
                sites,
                id,
                label,
                drop,
                keep,
                seed,
            };
            let split = cohort_datasets::split_vertical_file(&input, &out, &options)?;
            report(json, &split, cohort::vertical::render_split)?;
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
            let split = data::split(
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
            report(json, &split, data::render_split)?;
        }
    }
    Ok(())
}

async fn run_rewards_command(cmd: RewardsCommand) -> Result<()> {
    init_logging("warn");
    let source = |data_dir: Option<PathBuf>, connection: Connection| -> Result<_> {
        Ok(match data_dir {
            Some(dir) => audit::LedgerSource::DataDir(dir),
            None => {
                let (url, security) =
                    connection.resolve(&[Role::Validator, Role::Developer, Role::Hospital])?;
                audit::LedgerSource::Coordinator { url, security }
            }
        })
    };
    match cmd {
        RewardsCommand::Show {
            job,
            data_dir,
            connection,
            plot,
            price_csv,
            price_unit,
            json,
        } => {
            let shown = cohort::rewards::show_from(
                &source(data_dir, connection)?,
                &cohort::rewards::ShowOptions {
                    job,
                    plot,
                    price_csv,
                    price_unit,
                },
            )
            .await?;
            report(json, &shown, cohort::rewards::Shown::summary)?;
        }
        RewardsCommand::Verify {
            data_dir,
            connection,
            json,
        } => {
            let verified = cohort::rewards::verify_from(&source(data_dir, connection)?)
                .await
                .context("rewards verification FAILED")?;
            report(json, &verified, cohort::rewards::verification_summary)?;
        }
        RewardsCommand::Deploy {
            rpc_url,
            evm_key,
            emission_initial,
            emission_halving,
            json,
        } => {
            let deployment =
                token::deploy(&rpc_url, &evm_key, emission_initial, emission_halving).await?;
            if json {
                print_json(&deployment)?;
            } else {
                eprintln!("{}", audit::deployment_summary(&deployment));
                println!("{}", deployment.address);
            }
        }
        RewardsCommand::Publish { token: t, json } => {
            let addresses = token::PayoutAddresses::read(&t.addresses)?;
            let published = token::publish(
                &source(t.data_dir, t.connection)?,
                &t.rpc_url,
                &t.contract,
                &t.evm_key,
                &addresses,
            )
            .await?;
            report(json, &published, |p| {
                format!(
                    "{} distributions on {} ({} published now)",
                    p.distributions.len(),
                    p.contract,
                    p.distributions
                        .iter()
                        .filter(|d| d.gas_used.is_some())
                        .count()
                )
            })?;
        }
        RewardsCommand::Claim {
            name,
            token: t,
            json,
        } => {
            let addresses = token::PayoutAddresses::read(&t.addresses)?;
            let claimed = token::claim(
                &source(t.data_dir, t.connection)?,
                &t.rpc_url,
                &t.contract,
                &t.evm_key,
                &addresses,
                &name,
            )
            .await?;
            report(json, &claimed, |c| {
                format!(
                    "{} claimed {} base units in {} distributions to {}; balance {}",
                    c.name,
                    c.claims.iter().map(|r| r.amount).sum::<u64>(),
                    c.claims.len(),
                    c.account,
                    c.balance
                )
            })?;
        }
    }
    Ok(())
}

async fn run_bench_command(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Proofs {
            sizes,
            statement,
            json,
        } => {
            init_logging("warn");
            match statement {
                ProofStatement::Committed => {
                    cohort::bench_proofs::run_committed(sizes, json)?;
                }
                ProofStatement::Norm => {
                    cohort::bench_proofs::run(sizes, json)?;
                }
            }
        }
        BenchCommand::Valuation {
            hospitals,
            rounds,
            permutations,
            middle_orders,
            group_size,
            groupings,
            overhead_hospitals,
            overhead_jobs,
            overhead_data,
        } => {
            init_logging("warn");
            let result = bench::valuation::valuation(
                hospitals,
                rounds,
                (middle_orders, permutations),
                (group_size, groupings),
                (overhead_hospitals, overhead_jobs),
                overhead_data.as_deref(),
            )
            .await?;
            print_json(&result)?;
        }
        BenchCommand::Split {
            psi_ids,
            threads,
            rounds,
            aggregation,
            epochs,
            json,
        } => {
            init_logging("error");
            cohort::split_bench::run_all(&psi_ids, &threads, rounds, &aggregation, epochs, json)
                .await?;
        }
        BenchCommand::Fhir {
            patients,
            observations,
            json,
        } => {
            init_logging("error");
            let mut results = Vec::new();
            for &n in &patients {
                eprintln!("writing and reading an export of {n} patients ...");
                let result = bench::fhir_export(n, observations)?;
                if json {
                    println!("{}", serde_json::to_string(&result)?);
                }
                results.push(result);
            }
            if !json {
                print!("{}", bench::render_fhir(&results));
            }
        }
        BenchCommand::Ledger {
            sizes,
            durable,
            json,
        } => {
            init_logging("error");
            let mut logs = Vec::new();
            for &size in &sizes {
                eprintln!("building a log of {size} entries ...");
                logs.push(bench::ledger(size)?);
            }
            eprintln!("timing {durable} durable appends ...");
            let durable_appends_per_sec = bench::durable_ledger_appends(durable.max(1))?;
            let result = bench::LedgerBenchReport {
                durable_appends_per_sec,
                logs,
            };
            report(json, &result, |r| {
                bench::render_ledger(&r.logs, r.durable_appends_per_sec)
            })?;
        }
        BenchCommand::Secagg {
            clients,
            entries,
            dropout,
            neighbours,
            threshold,
            bits,
            json,
        } => {
            init_logging("error");
            if !json {
                println!("{}", bench::SECAGG_HEADER);
            }
            for &e in &entries {
                for &c in &clients {
                    for &d in &dropout {
                        eprintln!("secure aggregation: {c} clients, {e} entries, {d} dropout ...");
                        let r = bench::secagg(c, e, d, neighbours, threshold, bits)?;
                        if json {
                            println!("{}", serde_json::to_string(&r)?);
                        } else {
                            println!("{}", r.row());
                        }
                    }
                }
            }
        }
        BenchCommand::He {
            params,
            hospitals,
            threshold,
            bits,
            json,
        } => {
            init_logging("error");
            for &p in &params {
                eprintln!("homomorphic aggregation: {hospitals} hospitals, {p} parameters ...");
                let r = bench::he(p, hospitals, threshold, bits)?;
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!("{}", r.summary());
                }
            }
        }
        BenchCommand::DpSgd {
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
        } => {
            init_logging("warn");
            let result = bench::dp_sgd(&bench::DpSgdBenchOptions {
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
                println!("{}", result.summary());
            }
        }
        BenchCommand::Load {
            clients,
            callers,
            rounds,
            hidden,
            local_epochs,
            developer_share,
            repeats,
            json,
        } => {
            init_logging("error");
            let load = bench::load::load(bench::load::LoadOptions {
                clients,
                callers,
                rounds,
                hidden,
                local_epochs,
                developer_share,
                repeats,
            })
            .await?;
            report(json, &load, bench::load::LoadBench::text)?;
        }
        BenchCommand::Rounds {
            clients,
            parameters,
            rounds,
            postgres,
            json,
        } => {
            init_logging("error");
            if !json {
                println!("{}", bench::rounds_header(rounds));
            }
            for &p in &parameters {
                for &c in &clients {
                    eprintln!("measuring {c} clients, ~{p} parameters ...");
                    let r = bench::round_overhead(c, p, rounds, postgres.as_deref()).await?;
                    // One JSON object per configuration, as each finishes.
                    if json {
                        println!("{}", serde_json::to_string(&r)?);
                    } else {
                        println!("{}", r.row());
                    }
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
            let text = jobs::read_job_file(&job)?;
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
            report(json, &view, jobs::render_status)?;
            if view.state != "completed" {
                anyhow::bail!("job {job_id} {}", view.state);
            }
        }
        JobCommand::Status { job_id, url, json } => {
            let mut dev = url.developer().await?;
            let view = developer::status(&mut dev, &job_id).await?;
            report(json, &view, jobs::render_status)?;
        }
        JobCommand::List { url, json } => {
            let mut dev = url.developer().await?;
            let list = developer::list(&mut dev).await?;
            report(json, &list, |l| jobs::render_list(l))?;
        }
    }
    Ok(())
}

fn run_privacy_command(cmd: PrivacyCommand) -> Result<()> {
    match cmd {
        PrivacyCommand::Epsilon {
            noise_multiplier,
            rdp_fractional_orders,
            mechanism,
        } => {
            let epsilon = privacy::epsilon(
                &mechanism.mechanism(),
                noise_multiplier,
                rdp_fractional_orders.into(),
            )?;
            report(mechanism.json, &epsilon, privacy::render_epsilon)?;
        }
        PrivacyCommand::Noise {
            target_epsilon,
            mechanism,
        } => {
            let noise = privacy::noise(&mechanism.mechanism(), target_epsilon)?;
            report(mechanism.json, &noise, privacy::render_noise)?;
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
        } => report(json, &ca::init(&consortium, &out)?, ca::CreatedCa::summary),
        CaCommand::Issue {
            ca: ca_dir,
            role,
            name,
            out,
            days,
            hosts,
            json,
        } => {
            let request = ca::KitRequest {
                role: role.into(),
                name,
                days,
                hosts,
            };
            report(
                json,
                &ca::issue(&ca_dir, &request, &out)?,
                ca::IssuedKit::summary,
            )
        }
        CaCommand::Revoke {
            ca: ca_dir,
            name,
            json,
        } => report(json, &ca::revoke(&ca_dir, &name)?, ca::Revocation::summary),
        CaCommand::List { ca: ca_dir, json } => {
            report(json, &ca::list(&ca_dir)?, |l| ca::render_list(l))
        }
    }
}
