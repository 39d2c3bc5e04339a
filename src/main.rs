//! The `cohort` command line: parses arguments and calls the libraries.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use cohort::{demo, developer, evaluate};
use cohort_datasets::{PartitionScheme, SplitOptions};

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
    /// Measure Cohort itself (results go in docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
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
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CoordinatorArgs {
    /// Address to listen on, e.g. 127.0.0.1:7070 or 0.0.0.0:7070.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Directory for the SQLite state file and (by default) stored models.
    #[arg(long)]
    data_dir: PathBuf,
    /// Object store for models: file:///path, memory:///, or s3://bucket/prefix
    /// (s3 needs the `s3` build feature) [default: DATA_DIR/objects].
    #[arg(long)]
    object_store: Option<String>,
    /// Seconds a client's task poll is held open when there is no work.
    #[arg(long, default_value_t = 20)]
    poll_timeout_secs: u64,
}

#[derive(Args)]
struct ClientArgs {
    /// Coordinator URL.
    #[arg(long, env = "COHORT_COORDINATOR")]
    coordinator: String,
    /// The hospital's local data (CSV or Parquet). It never leaves this machine.
    #[arg(long)]
    data: PathBuf,
    /// This hospital's name in the consortium.
    #[arg(long)]
    name: String,
    /// Directory for the client's own records (participation log).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct CoordinatorUrl {
    /// Coordinator URL.
    #[arg(
        long,
        env = "COHORT_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    coordinator: String,
}

#[derive(Subcommand)]
enum JobCommand {
    /// Submit a job file; prints the job id.
    Submit {
        /// The job file (TOML).
        job: PathBuf,
        #[command(flatten)]
        url: CoordinatorUrl,
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
        url: CoordinatorUrl,
        #[arg(long)]
        json: bool,
    },
    /// List all jobs.
    List {
        #[command(flatten)]
        url: CoordinatorUrl,
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
        url: CoordinatorUrl,
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

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
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
                ..Default::default()
            })
            .await?;
            if a.json {
                print_json(&report)?;
            } else {
                cohort::demo::print_report(&report);
            }
        }
        Command::Coordinator(a) => {
            init_logging("info");
            let addr = a.listen.trim_start_matches("http://");
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let mut config = cohort_coordinator::CoordinatorConfig::new(a.data_dir);
            config.object_store_url = a.object_store;
            config.poll_timeout = Duration::from_secs(a.poll_timeout_secs.max(1));
            let coordinator = cohort_coordinator::Coordinator::open(&config)?;
            tracing::info!("coordinator listening on http://{}", listener.local_addr()?);
            coordinator.serve(listener, shutdown_signal()).await?;
        }
        Command::Client(a) => {
            init_logging("info");
            cohort_client::run(
                cohort_client::ClientConfig {
                    coordinator: a.coordinator,
                    data: a.data,
                    name: a.name,
                    data_dir: a.data_dir,
                },
                shutdown_signal(),
            )
            .await?;
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
            let mut dev = developer::connect(&url.coordinator).await?;
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
            let mut dev = developer::connect(&url.coordinator).await?;
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
            let mut dev = developer::connect(&url.coordinator).await?;
            let view = developer::status(&mut dev, &job_id).await?;
            if json {
                print_json(&view)?;
            } else {
                print_status(&view);
            }
        }
        JobCommand::List { url, json } => {
            let mut dev = developer::connect(&url.coordinator).await?;
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
    for e in &v.events {
        println!("  note {}: {}", e.at, e.message);
    }
}
