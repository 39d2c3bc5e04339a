//! `cohort bench rounds`: coordinator per-round overhead, i.e. a round's
//! wall time minus the compute time of its slowest client (fit and
//! evaluation, as the clients report them), for several numbers of clients
//! and model sizes. Everything runs in this process over loopback gRPC with mutual TLS.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cohort_datasets::{PartitionScheme, SplitOptions};
use serde::Serialize;

use crate::developer;
use crate::local::{LocalFederation, LocalHospital};

pub mod load;
pub mod valuation;

#[derive(Debug, Clone, Serialize)]
pub struct RoundOverhead {
    pub clients: usize,
    pub parameters: usize,
    pub rounds: usize,
    /// Per round: wall time, slowest fit, slowest evaluation, overhead (s).
    pub round_secs: Vec<f64>,
    pub overhead_secs: Vec<f64>,
    pub median_round_secs: f64,
    pub median_slowest_fit_secs: f64,
    pub median_slowest_evaluate_secs: f64,
    pub median_overhead_secs: f64,
    /// The median round and overhead again, under the names scripts use.
    pub round_s: f64,
    pub overhead_s: f64,
    /// Peak resident memory of this process during the configuration
    /// (MiB): the coordinator *and* its in-process hospitals.
    pub peak_rss_mb: f64,
    /// Parameter bytes each hospital moves per round, computed from the
    /// protocol: the model down for FIT, the update up, the new model down
    /// for EVALUATE (4 bytes each); headers and TLS framing not counted.
    pub bytes_per_client: u64,
    /// Where the coordinator kept its state: `sqlite` or `postgres`
    /// (`--postgres`).
    pub state: &'static str,
    /// Submission to completion, divided by the rounds: unlike `round_s`
    /// (which ends when the round's model is aggregated) this includes
    /// each round's commit to the database, enrollment and round 0.
    pub job_s_per_round: f64,
}

/// Peak resident memory of this process (MiB): `VmHWM`, which
/// [`reset_peak_rss`] sets back to the current size, so that one
/// configuration of a benchmark is measured on its own.
pub fn peak_rss_mib() -> f64 {
    proc_status_mib("VmHWM:")
}

/// Resident memory of this process now (MiB): `VmRSS`.
pub fn rss_mib() -> f64 {
    proc_status_mib("VmRSS:")
}

/// A `kB` field of /proc/self/status in MiB (NaN where there is none).
fn proc_status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Starts a new peak for [`peak_rss_mib`] (Linux: writing 5 to
/// /proc/self/clear_refs); a no-op where that is not available.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Hidden width of a one-hidden-layer MLP on WDBC's 30 features with about
/// `parameters` parameters (30·h + h + h + 1).
pub fn hidden_width_for(parameters: usize) -> usize {
    (parameters.saturating_sub(1) / 32).max(1)
}

/// WDBC dealt IID to `clients` hospitals named `bench-000`, ... under `dir`.
pub(crate) fn iid_hospitals(dir: &std::path::Path, clients: usize) -> Result<Vec<LocalHospital>> {
    let split = cohort_datasets::split_bytes(
        crate::WDBC_CSV,
        &dir.join("data"),
        &SplitOptions {
            parts: clients,
            label: Some("diagnosis".into()),
            scheme: PartitionScheme::Iid,
            test_fraction: 0.0,
            seed: 1,
        },
    )?;
    Ok(split
        .parts
        .iter()
        .enumerate()
        .map(|(i, part)| LocalHospital {
            name: format!("bench-{i:03}"),
            data: part.file.clone(),
            options: Default::default(),
        })
        .collect())
}

/// The demo job with one hidden layer of `hidden`, one local epoch and
/// every one of `clients` hospitals in each of `rounds` rounds.
pub(crate) fn every_hospital_job(clients: usize, hidden: usize, rounds: u32) -> String {
    crate::DEMO_JOB
        .replace("hidden = [32, 16]", &format!("hidden = [{hidden}]"))
        .replace("rounds = 20", &format!("rounds = {rounds}"))
        .replace("min_clients = 3", &format!("min_clients = {clients}"))
        .replace(
            "clients_per_round = 3",
            &format!("clients_per_round = {clients}"),
        )
        .replace("local_epochs = 2", "local_epochs = 1")
        .replace("round_timeout_secs = 120", "round_timeout_secs = 600")
}

pub async fn round_overhead(
    clients: usize,
    parameters: usize,
    rounds: u32,
    postgres_server: Option<&str>,
) -> Result<RoundOverhead> {
    reset_peak_rss();
    let dir = tempfile::Builder::new().prefix("cohort-bench-").tempdir()?;
    let hidden = hidden_width_for(parameters);
    let job = every_hospital_job(clients, hidden, rounds);
    let hospitals = iid_hospitals(dir.path(), clients)?;
    // With a PostgreSQL server: a fresh database there for this
    // configuration, dropped when it ends.
    let database = postgres_server
        .map(|server| {
            cohort_coordinator::store::testing::TestDatabase::create(server, "bench_rounds")
        })
        .transpose()?;
    // Measured over mutual TLS, as a deployment runs.
    let federation = LocalFederation::start_on_database(
        dir.path(),
        &hospitals,
        true,
        Duration::from_secs(5),
        database.as_ref().map(|d| d.url()),
    )
    .await?;
    let submitted = std::time::Instant::now();
    let view = async {
        let mut dev = federation.developer().await?;
        let id = developer::submit(&mut dev, &job).await?;
        developer::wait(&mut dev, &id, false).await
    }
    .await;
    let job_secs = submitted.elapsed().as_secs_f64();
    federation.shutdown().await;
    let view = view?;
    if view.state != "completed" {
        bail!(
            "benchmark job {}: {}",
            view.state,
            view.error.unwrap_or_default()
        );
    }
    let round_secs: Vec<f64> = view.rounds.iter().map(|r| r.duration_secs).collect();
    let fit: Vec<f64> = view.rounds.iter().map(|r| r.slowest_fit_secs).collect();
    let eval: Vec<f64> = view
        .rounds
        .iter()
        .map(|r| r.slowest_evaluate_secs)
        .collect();
    let overhead_secs: Vec<f64> = view
        .rounds
        .iter()
        .map(|r| r.duration_secs - r.slowest_fit_secs - r.slowest_evaluate_secs)
        .collect();
    let parameters = 32 * hidden + 1;
    Ok(RoundOverhead {
        clients,
        parameters,
        rounds: view.rounds.len(),
        median_round_secs: median(&round_secs),
        median_slowest_fit_secs: median(&fit),
        median_slowest_evaluate_secs: median(&eval),
        median_overhead_secs: median(&overhead_secs),
        round_s: median(&round_secs),
        overhead_s: median(&overhead_secs),
        peak_rss_mb: peak_rss_mib(),
        bytes_per_client: 3 * 4 * parameters as u64,
        state: if database.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        job_s_per_round: job_secs / f64::from(rounds.max(1)),
        round_secs,
        overhead_secs,
    })
}

/// `cohort bench ledger`: the embedded log at a given size.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerBench {
    pub entries: u64,
    /// In-memory Merkle appends (leaf hashing and subtree caching).
    pub appends_per_sec: f64,
    /// Largest inclusion proof at this size, in bytes (32 per hash).
    pub inclusion_proof_bytes: usize,
    /// Consistency proof from half the log to all of it, in bytes.
    pub consistency_proof_bytes: usize,
    /// Median time to produce and verify one inclusion proof.
    pub inclusion_proof_micros: f64,
}

/// Builds a log of `entries` leaves of 512 bytes (about a round entry with
/// a few receipts) and measures appends, proof sizes and proof time.
pub fn ledger(entries: u64) -> Result<LedgerBench> {
    use cohort_ledger::{MerkleLog, hash_leaf, verify_inclusion};
    use std::time::Instant;
    if entries < 2 {
        bail!("a ledger benchmark needs at least 2 entries");
    }
    let mut leaf = vec![0u8; 512];
    let mut log = MerkleLog::new();
    let started = Instant::now();
    for i in 0..entries {
        leaf[..8].copy_from_slice(&i.to_le_bytes());
        log.append(&leaf);
    }
    let appends_per_sec = entries as f64 / started.elapsed().as_secs_f64();
    let size = log.size();
    let root = log.current_root();
    let inclusion_proof_bytes = (0..size.min(64))
        .map(|i| log.inclusion_proof(i, size).map(|p| p.len() * 32))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let consistency_proof_bytes = log.consistency_proof(size / 2, size)?.len() * 32;
    let mut micros = Vec::new();
    for k in 0..200u64 {
        let index = (k * 7_919) % size;
        let started = Instant::now();
        let proof = log.inclusion_proof(index, size)?;
        leaf[..8].copy_from_slice(&index.to_le_bytes());
        verify_inclusion(&hash_leaf(&leaf), index, size, &proof, &root)?;
        micros.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(LedgerBench {
        entries,
        appends_per_sec,
        inclusion_proof_bytes,
        consistency_proof_bytes,
        inclusion_proof_micros: median(&micros),
    })
}

/// Durable appends as the coordinator makes them: sign the entry, extend
/// the tree, sign the checkpoint, commit to SQLite (`synchronous = FULL`).
pub fn durable_ledger_appends(count: u64) -> Result<f64> {
    use std::time::Instant;
    let dir = tempfile::tempdir()?;
    let store = cohort_coordinator::store::Store::open(dir.path(), None)?;
    let key = cohort_identity::MessageSigningKey::generate()?;
    let ledger = cohort_coordinator::ledger::Ledger::open(
        &store,
        cohort_coordinator::ledger::LedgerSigner::Own(Box::new(key)),
    )?;
    let started = Instant::now();
    for i in 0..count {
        let record = cohort_ledger::Record::JobCreated {
            job_id: format!("job-{i:012}"),
            name: "bench".into(),
            job_sha256: "0".repeat(64),
            submitted_by: Some("developer".into()),
        };
        ledger.append(&store, record, |_| Ok(()))?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// One configuration of `cohort bench secagg`: the whole SecAgg+ protocol
/// run in this process (every client and the server, one after another on
/// one thread), so each party's CPU time is its own.
#[derive(Debug, Clone, Serialize)]
pub struct SecAggBench {
    pub implementation: String,
    pub clients: u32,
    pub entries: usize,
    /// Fraction of clients that vanish after sharing their keys, before
    /// sending their masked update (the costliest case for the server).
    pub dropout: f64,
    pub neighbours: u32,
    pub client_cpu_secs_mean: f64,
    pub client_cpu_secs_max: f64,
    pub server_cpu_secs: f64,
    pub bytes_sent_per_client: f64,
    pub bytes_received_per_client: f64,
    /// Whether the server recovered exactly the survivors' sum.
    pub sum_ok: bool,
}

pub fn secagg(
    clients: u32,
    entries: usize,
    dropout: f64,
    neighbours: u32,
    threshold: f64,
    bits: u32,
) -> Result<SecAggBench> {
    if !(0.0..1.0).contains(&dropout) {
        bail!("--dropout must be in [0, 1), got {dropout}");
    }
    let dropped = (f64::from(clients) * dropout).floor() as u32;
    // Spread the dropped clients over the id range.
    let drop_after_sharing = (0..dropped).map(|i| i * clients / dropped.max(1)).collect();
    let simulation = cohort_privacy::secagg::Simulation {
        clients,
        input_len: entries,
        neighbours,
        threshold,
        bits,
        drop_after_advertise: Vec::new(),
        drop_after_sharing,
        drop_after_masking: Vec::new(),
        seed: 7,
    };
    let report = simulation.run();
    let sum_ok = match &report.sum {
        Ok(sum) => *sum == report.expected,
        Err(e) => bail!("{clients} clients, {entries} entries: {e}"),
    };
    Ok(SecAggBench {
        implementation: format!("cohort {}", env!("CARGO_PKG_VERSION")),
        clients,
        entries,
        dropout,
        neighbours: neighbours.min(clients.saturating_sub(1)),
        client_cpu_secs_mean: report.client_secs_mean,
        client_cpu_secs_max: report.client_secs_max,
        server_cpu_secs: report.server_secs,
        bytes_sent_per_client: report.bytes_up_per_client_mean,
        bytes_received_per_client: report.bytes_down_per_client_mean,
        sum_ok,
    })
}

/// Settings of `cohort bench dp-sgd`, the same flags as
/// `scripts/bench_dp_sgd_opacus.py` takes.
#[derive(Debug, Clone)]
pub struct DpSgdBenchOptions {
    pub features: usize,
    pub hidden: Vec<usize>,
    pub batch: usize,
    pub rows: usize,
    pub steps: u64,
    pub warmup: u64,
    pub max_grad_norm: f64,
    pub noise_multiplier: f64,
    pub learning_rate: f64,
    pub seed: u64,
}

/// DP-SGD training throughput of one MLP: Poisson batches, per-example
/// clipping, OpenDP noise and the SGD step, all timed.
#[derive(Debug, Clone, Serialize)]
pub struct DpSgdBench {
    pub framework: String,
    pub version: String,
    pub features: usize,
    pub hidden: Vec<usize>,
    pub parameters: usize,
    pub batch: usize,
    pub rows: usize,
    pub steps: u64,
    pub samples: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub samples_per_second: f64,
    /// Cores the noise sampler spreads over (the gradient work runs on
    /// one).
    pub threads: usize,
    pub max_grad_norm: f64,
    pub noise_multiplier: f64,
    /// Mean training loss over the last epoch timed (a sanity check that
    /// training progresses; it stays on this machine).
    pub last_loss: f64,
}

/// Standard-normal features labelled by a random hyperplane plus noise.
fn synthetic_examples(rows: usize, features: usize, seed: u64) -> cohort_datasets::Examples {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = |rng: &mut rand_chacha::ChaCha8Rng| -> f32 {
        // Box–Muller: benchmark data, not privacy noise.
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        let v: f64 = rng.random();
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    };
    let w: Vec<f32> = (0..features).map(|_| normal(&mut rng)).collect();
    let mut data = Vec::with_capacity(rows * features);
    let mut labels = Vec::with_capacity(rows);
    for _ in 0..rows {
        let row: Vec<f32> = (0..features).map(|_| normal(&mut rng)).collect();
        let score: f32 = row.iter().zip(&w).map(|(x, w)| x * w).sum::<f32>() + normal(&mut rng);
        labels.push(if score > 0.0 { 1.0 } else { 0.0 });
        data.extend(row);
    }
    cohort_datasets::Examples {
        features: data,
        labels,
        n_features: features,
    }
}

pub(crate) fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

pub fn dp_sgd(o: &DpSgdBenchOptions) -> Result<DpSgdBench> {
    use cohort_models::{DpSgdConfig, DpSgdPlan, ModelSpec, OptimizerSpec, TrainConfig};
    if o.hidden.is_empty() || o.hidden.contains(&0) {
        bail!("--hidden needs at least one non-zero width");
    }
    if o.rows == 0 || o.batch == 0 || o.steps == 0 {
        bail!("--rows, --batch and --steps must be at least 1");
    }
    let spec = ModelSpec::Mlp {
        hidden: o.hidden.clone(),
        cut: None,
    };
    let data = synthetic_examples(o.rows, o.features, o.seed);
    let start = cohort_models::init_parameters(&spec, o.features, o.seed);
    let plan = DpSgdPlan::new(o.rows, o.batch);
    let config = |epochs: u64| TrainConfig {
        epochs: epochs.max(1) as usize,
        batch_size: o.batch,
        optimizer: OptimizerSpec::Sgd {
            learning_rate: o.learning_rate,
            momentum: 0.0,
        },
        seed: o.seed,
        proximal_mu: None,
        dp: Some(DpSgdConfig {
            noise_multiplier: o.noise_multiplier,
            max_grad_norm: o.max_grad_norm,
        }),
    };
    if o.warmup > 0 {
        // About `warmup` steps on a slice of the rows at the same rate.
        let rows = (o.warmup as usize * o.batch).min(o.rows);
        let warm = cohort_datasets::Examples {
            features: data.features[..rows * o.features].to_vec(),
            labels: data.labels[..rows].to_vec(),
            n_features: o.features,
        };
        cohort_models::train(&spec, &start, &warm, &config(1))?;
    }
    // Whole epochs: at least `steps` steps.
    let epochs = o.steps.div_ceil(plan.steps_per_epoch);
    let cpu = process_cpu_seconds();
    let wall = Instant::now();
    let outcome = cohort_models::train(&spec, &start, &data, &config(epochs))?;
    let seconds = wall.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds() - cpu;
    Ok(DpSgdBench {
        framework: "cohort".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        features: o.features,
        hidden: o.hidden.clone(),
        parameters: spec.num_parameters(o.features),
        batch: o.batch,
        rows: o.rows,
        steps: outcome.steps,
        samples: outcome.samples,
        seconds,
        cpu_seconds,
        samples_per_second: outcome.samples as f64 / seconds,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        max_grad_norm: o.max_grad_norm,
        noise_multiplier: o.noise_multiplier,
        last_loss: outcome.loss,
    })
}

/// One configuration of `cohort bench he`: a job's key ceremony and one
/// round of threshold homomorphic aggregation, every party in this process
/// one after another on one thread, each step timed on its own. The
/// measurements mirror `scripts/bench_he_tenseal.py` (TenSEAL CKKS at
/// NVIDIA FLARE's defaults): encryption includes quantization and
/// serialization, aggregation includes deserializing every upload.
#[derive(Debug, Clone, Serialize)]
pub struct HeBench {
    pub implementation: String,
    pub params: usize,
    pub hospitals: u32,
    pub threshold: u32,
    pub bits: u32,
    pub degree: usize,
    pub log_modulus: u64,
    pub ciphertexts_per_client: usize,
    /// Key ceremony, per hospital: key share, dealing, combining.
    pub keygen_seconds_per_client: f64,
    pub encrypt_seconds_per_client: f64,
    pub upload_bytes_per_client: usize,
    pub upload_bytes_per_param: f64,
    /// Deserialize every upload and add them.
    pub aggregation_seconds: f64,
    /// The summed ciphertext each decrypting hospital downloads.
    pub sum_bytes: usize,
    /// Per decrypting hospital: deserialize the sum, compute its smudged
    /// share, serialize it.
    pub decryption_share_seconds: f64,
    pub decryption_share_bytes: usize,
    /// Coordinator: deserialize the shares, combine, decode the mean.
    pub combine_seconds: f64,
    /// Largest |decoded mean − plaintext mean| over all parameters.
    pub max_abs_error: f64,
    /// Whether the decrypted integers equal the plaintext sum exactly.
    pub sum_ok: bool,
}

pub fn he(params: usize, hospitals: u32, threshold: f64, bits: u32) -> Result<HeBench> {
    use cohort_privacy::he;
    use cohort_privacy::quantize::{Quantizer, add_mod};
    use rand::{Rng, SeedableRng};

    if !(0.0..=1.0).contains(&threshold) {
        bail!("--threshold must be a fraction in [0, 1], got {threshold}");
    }
    let t = ((f64::from(hospitals) * threshold).ceil() as u32).max(2);
    let mut rng = rand_chacha::ChaCha20Rng::from_os_rng();
    let quantizer = Quantizer::for_weighted_sum(1.0, bits, hospitals, 1)?;
    // The quantizer appends the example count to every update.
    let hp = he::HeParams::new(hospitals, t, bits, params + 1)?;
    let seed = [42u8; 32];

    let started = Instant::now();
    let (secrets, pk_shares): (Vec<_>, Vec<_>) = (1..=hospitals)
        .map(|i| he::KeyShare::generate(&hp, i, seed, &mut rng))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    let public = he::public_key(&hp, seed, &pk_shares)?;
    let dealt: Vec<Vec<he::SecretShare>> = secrets.iter().map(|s| s.deal(&hp, &mut rng)).collect();
    let mut keys = Vec::new();
    for j in 1..=hospitals {
        let mine: Vec<he::SecretShare> = dealt
            .iter()
            .map(|d| he::SecretShare::from_bytes(&hp, &d[j as usize - 1].to_bytes()))
            .collect::<Result<_, _>>()?;
        keys.push(he::ThresholdKey::combine(&hp, j, &mine)?);
    }
    drop(dealt);
    let keygen = started.elapsed().as_secs_f64() / f64::from(hospitals);

    let mut plain_sum = vec![0u64; params + 1];
    let mut plain_mean = vec![0f64; params];
    let mut uploads = Vec::new();
    let mut encrypt_secs = 0.0;
    for _ in 0..hospitals {
        let delta: Vec<f32> = (0..params)
            .map(|_| rng.random_range(-0.001f32..0.001))
            .collect();
        for (m, d) in plain_mean.iter_mut().zip(&delta) {
            *m += f64::from(*d) / f64::from(hospitals);
        }
        let started = Instant::now();
        let encoded = quantizer.encode_update(&delta, 1, &mut rng)?;
        let upload = he::encrypt(&hp, &public, &encoded.values, &mut rng)?.to_bytes();
        encrypt_secs += started.elapsed().as_secs_f64();
        add_mod(&mut plain_sum, &encoded.values, bits);
        uploads.push(upload);
    }

    let started = Instant::now();
    let mut sum: Option<he::EncryptedUpdate> = None;
    for upload in &uploads {
        let received = he::EncryptedUpdate::from_bytes(&hp, upload)?;
        match &mut sum {
            None => sum = Some(received),
            Some(s) => s.add_assign(&received)?,
        }
    }
    let sum = sum.ok_or_else(|| anyhow::anyhow!("no hospitals"))?;
    let aggregation = started.elapsed().as_secs_f64();
    let sum_bytes = sum.to_bytes();

    let decryptors: Vec<u32> = (1..=t).collect();
    let started = Instant::now();
    let mut share_bytes = Vec::new();
    for key in &keys[..t as usize] {
        let downloaded = he::EncryptedUpdate::from_bytes(&hp, &sum_bytes)?;
        share_bytes.push(
            key.decryption_share(&hp, &decryptors, &downloaded, &mut rng)?
                .to_bytes(),
        );
    }
    let share_secs = started.elapsed().as_secs_f64() / f64::from(t);

    let started = Instant::now();
    let shares = share_bytes
        .iter()
        .map(|b| he::DecryptionShare::from_bytes(&hp, b))
        .collect::<Result<Vec<_>, _>>()?;
    let decrypted = he::decrypt(&hp, &sum, &shares)?;
    let (mean, _) = quantizer.decode_weighted_mean(&decrypted)?;
    let combine = started.elapsed().as_secs_f64();

    let max_abs_error = mean
        .iter()
        .zip(&plain_mean)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    Ok(HeBench {
        implementation: format!("cohort {}", env!("CARGO_PKG_VERSION")),
        params,
        hospitals,
        threshold: t,
        bits,
        degree: he::DEGREE,
        log_modulus: hp.log_modulus(),
        ciphertexts_per_client: hp.ciphertexts(),
        keygen_seconds_per_client: keygen,
        encrypt_seconds_per_client: encrypt_secs / f64::from(hospitals),
        upload_bytes_per_client: uploads[0].len(),
        upload_bytes_per_param: uploads[0].len() as f64 / params as f64,
        aggregation_seconds: aggregation,
        sum_bytes: sum_bytes.len(),
        decryption_share_seconds: share_secs,
        decryption_share_bytes: share_bytes[0].len(),
        combine_seconds: combine,
        max_abs_error,
        sum_ok: decrypted == plain_sum,
    })
}

/// `cohort bench ledger`'s table.
pub fn render_ledger(logs: &[LedgerBench], durable_appends_per_sec: f64) -> String {
    let mut out = String::from(
        "entries  appends/s  inclusion proof (B)  consistency proof (B)  proof+verify (us)\n",
    );
    for r in logs {
        out.push_str(&format!(
            "{:>7}  {:>9.0}  {:>19}  {:>21}  {:>17.1}\n",
            r.entries,
            r.appends_per_sec,
            r.inclusion_proof_bytes,
            r.consistency_proof_bytes,
            r.inclusion_proof_micros
        ));
    }
    out.push_str(&format!(
        "durable appends (signed entry + signed checkpoint + SQLite commit): {durable_appends_per_sec:.0}/s\n"
    ));
    out
}

/// `cohort bench ledger --json`.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerBenchReport {
    pub durable_appends_per_sec: f64,
    pub logs: Vec<LedgerBench>,
}

pub const SECAGG_HEADER: &str = "clients  entries  dropout  client CPU mean (s)  server CPU (s)  sent/client (B)  received/client (B)  exact";

impl SecAggBench {
    /// A row under [`SECAGG_HEADER`].
    pub fn row(&self) -> String {
        format!(
            "{:>7}  {:>7}  {:>7}  {:>19.4}  {:>14.4}  {:>15.0}  {:>19.0}  {}",
            self.clients,
            self.entries,
            self.dropout,
            self.client_cpu_secs_mean,
            self.server_cpu_secs,
            self.bytes_sent_per_client,
            self.bytes_received_per_client,
            self.sum_ok
        )
    }
}

impl HeBench {
    pub fn summary(&self) -> String {
        let r = self;
        format!(
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
        )
    }
}

impl DpSgdBench {
    pub fn summary(&self) -> String {
        format!(
            "DP-SGD, MLP {:?} ({} parameters), batch {}: {:.0} samples/s \
             ({} steps, {} samples, {:.2} s wall, {:.2} s CPU)",
            self.hidden,
            self.parameters,
            self.batch,
            self.samples_per_second,
            self.steps,
            self.samples,
            self.seconds,
            self.cpu_seconds
        )
    }
}

/// The header of `cohort bench rounds`'s table.
pub fn rounds_header(rounds: u32) -> String {
    format!(
        "clients  parameters  round(s)  slowest fit(s)  slowest eval(s)  overhead(s)  (medians over {rounds} rounds)"
    )
}

impl RoundOverhead {
    /// A row under [`rounds_header`].
    pub fn row(&self) -> String {
        format!(
            "{:>7}  {:>10}  {:>8.3}  {:>14.3}  {:>15.3}  {:>11.3}",
            self.clients,
            self.parameters,
            self.median_round_secs,
            self.median_slowest_fit_secs,
            self.median_slowest_evaluate_secs,
            self.median_overhead_secs
        )
    }
}

/// `cohort bench fhir`: a hospital's FHIR Bulk Data export read into its
/// table through `examples/fhir/wdbc-mapping.toml` (31 columns: a
/// Condition `exists` and 30 Observation `latest`), as `cohort client
/// --fhir-mapping` reads it.
#[derive(Debug, Clone, Serialize)]
pub struct FhirBench {
    pub patients: usize,
    /// NDJSON lines in the export (Patients, Observations, Conditions).
    pub resources: u64,
    pub export_mib: f64,
    pub read_secs: f64,
    pub resources_per_sec: f64,
    pub mib_per_sec: f64,
    /// Peak resident memory while reading, over what the process held
    /// before (the export is on disk, not in memory).
    pub peak_rss_mib: f64,
    pub rss_before_mib: f64,
}

/// Writes a synthetic export of `patients` patients with
/// `observations_per_patient` Observations each (the 30 WDBC features in
/// turn, each re-measured at later dates once they run out), and a breast
/// cancer Condition for every third patient, then reads it.
pub fn fhir_export(patients: usize, observations_per_patient: usize) -> Result<FhirBench> {
    use std::io::Write as _;
    const MAPPING: &str = include_str!("../examples/fhir/wdbc-mapping.toml");
    let mapping = cohort_datasets::fhir::FhirMapping::from_toml(MAPPING, "wdbc-mapping.toml")?;
    let features: Vec<String> = mapping
        .columns()
        .into_iter()
        .filter(|c| c != "patient_id" && c != "diagnosis")
        .collect();
    let dir = tempfile::tempdir()?;
    let mut resources = 0u64;
    let open = |name: &str| -> Result<std::io::BufWriter<std::fs::File>> {
        Ok(std::io::BufWriter::new(std::fs::File::create(
            dir.path().join(name),
        )?))
    };
    let (mut patient_file, mut observation_file, mut condition_file) = (
        open("Patient.ndjson")?,
        open("Observation.ndjson")?,
        open("Condition.ndjson")?,
    );
    for p in 0..patients {
        writeln!(
            patient_file,
            r#"{{"resourceType":"Patient","id":"p{p}","gender":"female","birthDate":"1961-04-12","meta":{{"lastUpdated":"2026-11-30T08:00:00Z"}}}}"#
        )?;
        resources += 1;
        for k in 0..observations_per_patient {
            let feature = &features[k % features.len()];
            let year = 2000 + k / features.len();
            let value = ((p * 31 + k * 17) % 1000) as f64 / 10.0;
            writeln!(
                observation_file,
                r#"{{"resourceType":"Observation","id":"o{p}-{k}","status":"final","code":{{"coding":[{{"system":"https://cohort.example/fhir/wdbc","code":"{feature}"}}]}},"subject":{{"reference":"Patient/p{p}"}},"effectiveDateTime":"{year}-03-01T10:00:00Z","valueQuantity":{{"value":{value},"unit":"1"}}}}"#
            )?;
            resources += 1;
        }
        if p % 3 == 0 {
            writeln!(
                condition_file,
                r#"{{"resourceType":"Condition","id":"c{p}","code":{{"coding":[{{"system":"http://snomed.info/sct","code":"254837009"}}]}},"subject":{{"reference":"Patient/p{p}"}},"onsetDateTime":"2024-02-15"}}"#
            )?;
            resources += 1;
        }
    }
    for file in [patient_file, observation_file, condition_file] {
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    let export_bytes: u64 = std::fs::read_dir(dir.path())?
        .map(|e| Ok(e?.metadata()?.len()))
        .sum::<Result<u64>>()?;
    let rss_before_mib = rss_mib();
    reset_peak_rss();
    let started = Instant::now();
    let (table, report) = cohort_datasets::fhir::read_export(dir.path(), &mapping)?;
    let read_secs = started.elapsed().as_secs_f64();
    let peak_rss_mib = peak_rss_mib() - rss_before_mib;
    if table.n_rows() != patients || report.resources != resources {
        bail!(
            "read {} rows and {} resources, wrote {patients} and {resources}",
            table.n_rows(),
            report.resources
        );
    }
    let export_mib = export_bytes as f64 / (1024.0 * 1024.0);
    Ok(FhirBench {
        patients,
        resources,
        export_mib,
        read_secs,
        resources_per_sec: resources as f64 / read_secs,
        mib_per_sec: export_mib / read_secs,
        peak_rss_mib,
        rss_before_mib,
    })
}

/// One line per configuration of `cohort bench fhir`.
pub fn render_fhir(results: &[FhirBench]) -> String {
    let mut out =
        String::from("patients  resources  export MiB  read s  resources/s  MiB/s  peak RSS MiB\n");
    for r in results {
        out.push_str(&format!(
            "{:>8}  {:>9}  {:>10.1}  {:>6.2}  {:>11.0}  {:>5.1}  {:>12.1}\n",
            r.patients,
            r.resources,
            r.export_mib,
            r.read_secs,
            r.resources_per_sec,
            r.mib_per_sec,
            r.peak_rss_mib
        ));
    }
    out
}
