//! Update proofs end to end (`[proofs] update = "norm"`): a coordinator and
//! hospitals in this process over mutual TLS on loopback. Misbehaving
//! drill clients (`--misbehave`) are excluded with the reason on record,
//! and the job completes with the honest ones. A validator process (the
//! `cohort` binary) attests the rounds, `cohort verify round` re-checks
//! them, and snarkjs (scripts/snarkjs, pinned) verifies an exported proof
//! and rejects a tampered one.
//!
//! snarkjs needs node and npm: without them that part skips with a
//! message, unless `COHORT_REQUIRE_SNARKJS` is set (CI sets it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cohort::developer::{self, JobView};
use cohort::local::{LocalFederation, LocalHospital};
use cohort_client::ClientOptions;
use cohort_client::misbehave::Misbehave;
use common::*;

const PROOFS: &str = "\n[proofs]\nupdate = \"norm\"\nclip = 4.0\n";

fn hospitals(dir: &Path, misbehave: &[Option<Misbehave>]) -> Vec<LocalHospital> {
    let csv = dir.join("oncology.csv");
    synthetic_oncology_csv(&csv, 900, 17);
    let files = split(&csv, &dir.join("parts"), misbehave.len(), 5);
    misbehave
        .iter()
        .enumerate()
        .map(|(i, m)| LocalHospital {
            name: format!("hospital-{i}"),
            data: files[i].clone(),
            options: ClientOptions {
                misbehave: *m,
                ..Default::default()
            },
        })
        .collect()
}

const BIN: &str = env!("CARGO_BIN_EXE_cohort");

async fn run_job(dir: &Path, hospitals: &[LocalHospital], job_toml: &str) -> JobView {
    let federation = LocalFederation::start(dir, hospitals, true, Duration::from_secs(1))
        .await
        .unwrap();
    let view = run_on(&federation, hospitals.len(), job_toml).await;
    federation.shutdown().await;
    view
}

async fn run_on(federation: &LocalFederation, hospitals: usize, job_toml: &str) -> JobView {
    let mut dev = federation.developer().await.unwrap();
    for _ in 0..300 {
        let clients = dev
            .list_clients(cohort_protocol::v1::ListClientsRequest {})
            .await
            .unwrap()
            .into_inner()
            .clients;
        if clients.iter().filter(|c| c.connected).count() == hospitals {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = developer::submit(&mut dev, job_toml).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(300),
        developer::wait(&mut dev, &id, false),
    )
    .await
    .expect("job did not finish in time")
    .unwrap()
}

fn job(n: u32, min_clients: u32) -> String {
    oncology_job(2, n)
        .replace(
            &format!("min_clients = {n}"),
            &format!("min_clients = {min_clients}"),
        )
        .replace("round_timeout_secs = 60", "round_timeout_secs = 20")
        + PROOFS
}

/// Every accepted update carries a checked proof; `excluded` names exactly
/// `cheaters` with a reason containing `why`.
fn assert_excluded(view: &JobView, cheaters: &[(&str, &str)]) {
    assert_excluded_with(view, cheaters, "update-norm/v2", Some(256));
}

/// [`assert_excluded`] for proofs of `statement` (hex length `proof_hex`
/// when fixed).
fn assert_excluded_with(
    view: &JobView,
    cheaters: &[(&str, &str)],
    statement: &str,
    proof_hex: Option<usize>,
) {
    assert_eq!(view.state, "completed", "{view:#?}");
    assert_eq!(view.rounds.len(), 2);
    for round in &view.rounds {
        for update in &round.updates {
            let proof = update.proof.as_ref().unwrap_or_else(|| {
                panic!(
                    "round {}: {} aggregated without a proof",
                    round.round, update.client
                )
            });
            assert_eq!(proof.statement, statement);
            if let Some(len) = proof_hex {
                assert_eq!(proof.proof.len(), len);
            }
        }
        let mut excluded: Vec<&str> = round.excluded.iter().map(|e| e.client.as_str()).collect();
        excluded.sort();
        let mut expected: Vec<&str> = cheaters.iter().map(|(c, _)| *c).collect();
        expected.sort();
        assert_eq!(
            excluded, expected,
            "round {}: {:#?}",
            round.round, round.excluded
        );
        for (client, why) in cheaters {
            assert!(!round.participants.iter().any(|p| p == client));
            let reason = &round
                .excluded
                .iter()
                .find(|e| e.client == *client)
                .unwrap()
                .reason;
            assert!(reason.contains(why), "{client}: {reason}");
        }
    }
}

/// Runs the `cohort` binary; returns (success, stdout, stderr).
fn cohort(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A validator's kit, issued by the consortium CA of the federation in `dir`.
fn validator_kit(dir: &Path, name: &str) -> String {
    let pki = dir.join("pki");
    let mut ca = cohort_identity::CertificateAuthority::open(&pki.join("ca")).unwrap();
    ca.issue(
        &cohort_identity::IssueRequest::for_days(cohort_identity::Role::Validator, name, 30),
        &pki.join(name),
    )
    .unwrap();
    pki.join(name).to_string_lossy().into_owned()
}

/// One pass of a validator process (`cohort validator --once`).
fn attest_once(kit: &str, url: &str) {
    let (ok, _, err) = cohort(&["validator", "--tls", kit, "--coordinator", url, "--once"]);
    assert!(ok, "{err}");
}

/// A validator attests the job, and its rounds 1 and 2 verify with three
/// contributors and hospital-3 excluded; the validator's kit.
fn attest_both_rounds_without_hospital_3(dir: &Path, url: &str, job_id: &str) -> String {
    let validator = validator_kit(dir, "validator-1");
    attest_once(&validator, url);
    for round in ["1", "2"] {
        assert_round_verified(job_id, round, &validator, url, 3, &["hospital-3"]);
    }
    validator
}

/// [`verify_round`] of a round that must re-check clean: it passes, with
/// `proofs` proofs all valid, one valid attestation by `validator-1`, and
/// `excluded` left out. Returns the report.
fn assert_round_verified(
    job_id: &str,
    round: &str,
    kit: &str,
    url: &str,
    proofs: usize,
    excluded: &[&str],
) -> serde_json::Value {
    let (ok, check) = verify_round(job_id, round, kit, url);
    assert!(ok, "{check}");
    let checked = check["proofs"].as_array().unwrap();
    assert_eq!(checked.len(), proofs, "{check}");
    assert!(checked.iter().all(|p| p["valid"] == true), "{check}");
    let attestations = check["attestations"].as_array().unwrap();
    assert_eq!(attestations.len(), 1, "{check}");
    assert_eq!(attestations[0]["validator"], "validator-1", "{check}");
    assert_eq!(attestations[0]["valid"], true, "{check}");
    assert_eq!(check["excluded"], serde_json::json!(excluded), "{check}");
    check
}

/// `cohort verify round JOB ROUND --json` with `kit`: whether it passed,
/// and its report.
fn verify_round(job_id: &str, round: &str, kit: &str, url: &str) -> (bool, serde_json::Value) {
    let (ok, stdout, err) = cohort(&[
        "verify",
        "round",
        job_id,
        round,
        "--tls",
        kit,
        "--coordinator",
        url,
        "--json",
    ]);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{err}"));
    (ok, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_boosted_update_is_excluded_and_validators_attest_the_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let hospitals = hospitals(dir.path(), &[None, None, Some(Misbehave::Boost(10.0))]);
    // 10% of each round's emission is held for the validators that attest it.
    let rewards = cohort_coordinator::rewards::RewardsConfig::new(1_000_000, 100, 100_000).unwrap();
    let federation = LocalFederation::start_with_rewards(
        dir.path(),
        &hospitals,
        true,
        Duration::from_secs(1),
        rewards,
    )
    .await
    .unwrap();
    let job_toml = job(3, 2) + "min_validators = 1\n\n[valuation]\n";
    let view = run_on(&federation, 3, &job_toml).await;
    // The honest update's proof does not match the boosted update.
    assert_excluded(&view, &[("hospital-2", "update proof rejected")]);
    assert!(view.rounds.iter().all(|r| r.participants.len() == 2));

    // Not published before a validator attested the round.
    let mut dev = federation.developer().await.unwrap();
    let out = dir.path().join("model");
    let early = developer::download_model(&mut dev, &view.job_id, None, &out)
        .await
        .unwrap_err()
        .to_string();
    assert!(early.contains("not published yet"), "{early}");

    // A validator process: its own kit, from the consortium CA.
    let pki = dir.path().join("pki");
    let mut ca = cohort_identity::CertificateAuthority::open(&pki.join("ca")).unwrap();
    let issue = |ca: &mut cohort_identity::CertificateAuthority, role, name: &str| {
        ca.issue(
            &cohort_identity::IssueRequest::for_days(role, name, 30),
            &pki.join(name),
        )
        .unwrap();
        pki.join(name).to_string_lossy().into_owned()
    };
    let validator = issue(&mut ca, cohort_identity::Role::Validator, "validator-1");
    let url = federation.url.clone();
    attest_once(&validator, &url);
    // A second pass attests nothing new.
    attest_once(&validator, &url);
    // A hospital's kit is not a validator's.
    let hospital_kit = pki.join("hospital-0").to_string_lossy().into_owned();
    let (ok, _, err) = cohort(&[
        "validator",
        "--tls",
        &hospital_kit,
        "--coordinator",
        &url,
        "--once",
    ]);
    assert!(!ok && err.contains("validator"), "{err}");

    developer::download_model(&mut dev, &view.job_id, None, &out)
        .await
        .expect("published once attested");

    // The validator that attested each round was paid that round's pool;
    // the hospitals shared the rest, and the ledger alone shows it.
    let data_dir = dir.path().join("coordinator");
    let data_text = data_dir.to_string_lossy().into_owned();
    let (ok, stdout, err) = cohort(&[
        "rewards",
        "show",
        &view.job_id,
        "--data-dir",
        &data_text,
        "--json",
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for round in report["rounds"].as_array().unwrap() {
        let emission = round["emission"].as_u64().unwrap();
        let pool = round["validator_pool"].as_u64().unwrap();
        assert_eq!(pool, emission / 10, "{round}");
        assert_eq!(round["validators"][0]["name"], "validator-1", "{round}");
        assert_eq!(round["validators"][0]["reward"].as_u64(), Some(pool));
        let hospitals: u64 = round["hospitals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["reward"].as_u64().unwrap())
            .sum();
        assert_eq!(hospitals + pool, emission, "{round}");
    }
    assert_eq!(report["validators"][0]["name"], "validator-1");
    let (ok, stdout, err) = cohort(&["rewards", "verify", "--data-dir", &data_text, "--json"]);
    assert!(ok, "{err}");
    let verified: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(verified["validator_payouts_checked"], 2, "{stdout}");

    // Anyone re-checks the proofs and the attestations.
    for round in ["1", "2"] {
        let check =
            assert_round_verified(&view.job_id, round, &validator, &url, 2, &["hospital-2"]);
        assert_eq!(check["setup"]["keys"], "coordinator", "{check}");
    }

    // snarkjs, which nobody here wrote, accepts an exported proof and
    // rejects it with a tampered public input or proof.
    let export = dir.path().join("export");
    let export_text = export.to_string_lossy().into_owned();
    let (ok, _, err) = cohort(&[
        "proof",
        "export",
        &view.job_id,
        "1",
        "hospital-0",
        "--format",
        "snarkjs",
        "--out",
        &export_text,
        "--tls",
        &validator,
        "--coordinator",
        &url,
    ]);
    assert!(ok, "{err}");
    federation.shutdown().await;
    if let Some(snarkjs) = snarkjs() {
        assert!(
            snarkjs_verifies(&snarkjs, &export),
            "snarkjs rejected a real proof"
        );
        let public = export.join("public.json");
        let text = std::fs::read_to_string(&public).unwrap();
        let mut signals: Vec<String> = serde_json::from_str(&text).unwrap();
        signals[1] = "2".into(); // round 1 → 2: a replay in another round
        std::fs::write(&public, serde_json::to_string(&signals).unwrap()).unwrap();
        assert!(
            !snarkjs_verifies(&snarkjs, &export),
            "snarkjs accepted a replayed proof"
        );
        std::fs::write(&public, text).unwrap();
        let proof_file = export.join("proof.json");
        let mut proof: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&proof_file).unwrap()).unwrap();
        proof["pi_a"] = proof["pi_c"].clone();
        std::fs::write(&proof_file, proof.to_string()).unwrap();
        assert!(
            !snarkjs_verifies(&snarkjs, &export),
            "snarkjs accepted a tampered proof"
        );
    }
}

/// scripts/snarkjs's pinned snarkjs, installed on first use, or `None`
/// (skip) when node or npm is missing and `COHORT_REQUIRE_SNARKJS` is unset.
fn snarkjs() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/snarkjs");
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(have("node") && have("npm")) {
        assert!(
            std::env::var_os("COHORT_REQUIRE_SNARKJS").is_none(),
            "COHORT_REQUIRE_SNARKJS is set but node or npm is missing"
        );
        eprintln!("node or npm not found: skipping the snarkjs check");
        return None;
    }
    let bin = dir.join("node_modules/.bin/snarkjs");
    if !bin.exists() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "npm ci in scripts/snarkjs failed: {out:?}"
        );
    }
    Some(bin)
}

fn snarkjs_verifies(snarkjs: &Path, dir: &Path) -> bool {
    let out = Command::new(snarkjs)
        .args(["groth16", "verify"])
        .args(["verification_key.json", "public.json", "proof.json"].map(|f| dir.join(f)))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let ok = text.contains("OK!");
    assert!(
        ok || text.contains("Invalid proof"),
        "unexpected snarkjs output: {text}"
    );
    ok && out.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_and_overbound_proofs_are_excluded_and_a_free_rider_proves_zero() {
    let dir = tempfile::tempdir().unwrap();
    let hospitals = hospitals(
        dir.path(),
        &[
            None,
            None,
            Some(Misbehave::Forge),
            Some(Misbehave::Overbound(1000.0)),
            Some(Misbehave::Freeride),
        ],
    );
    let view = run_job(dir.path(), &hospitals, &job(5, 2)).await;
    assert_excluded(
        &view,
        &[
            ("hospital-2", "update proof rejected"),
            // The prover refused; the drill sent its update without one.
            ("hospital-3", "no proof"),
        ],
    );
    // A zero update is well formed: its proof is valid (finding free
    // riders is the valuation's job, not this statement's).
    for round in &view.rounds {
        assert!(round.participants.iter().any(|p| p == "hospital-4"));
    }
}

/// SplitFed in plain mode: each hospital proves its part of the update
/// (its bottom), the coordinator checks each proof against the part that
/// arrived, a boosted and a forged part are left out, and a validator
/// attests the rounds from the ledger before the model is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splitfed_parts_are_proved_and_a_boosted_part_is_excluded() {
    let dir = tempfile::tempdir().unwrap();
    let hospitals = hospitals(
        dir.path(),
        &[
            None,
            None,
            Some(Misbehave::Boost(10.0)),
            Some(Misbehave::Forge),
        ],
    );
    let federation = LocalFederation::start(dir.path(), &hospitals, true, Duration::from_secs(1))
        .await
        .unwrap();
    let job_toml = job(4, 2)
        .replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [8]")
        .replace("[training]", "[training]\nmode = \"splitfed\"")
        + "min_validators = 1\n";
    let view = run_on(&federation, 4, &job_toml).await;
    assert_excluded(
        &view,
        &[
            ("hospital-2", "update proof rejected"),
            ("hospital-3", "update proof rejected"),
        ],
    );
    let validator = validator_kit(dir.path(), "validator-1");
    attest_once(&validator, &federation.url);
    let mut dev = federation.developer().await.unwrap();
    let model_dir = dir.path().join("model");
    developer::download_model(&mut dev, &view.job_id, None, &model_dir)
        .await
        .expect("published once attested");
    federation.shutdown().await;

    // The proving key was made for the hospitals' part, not the model: the
    // bottom is all but the top layer's 8 weights and bias.
    let (_, params) = cohort_models::load_model(&model_dir).unwrap();
    let data_dir = dir.path().join("coordinator");
    let proved: Vec<u64> = cohort::audit::ledger_entries(&data_dir, Some(&view.job_id))
        .unwrap()
        .iter()
        .filter_map(|(_, e)| match &e.record {
            cohort_ledger::Record::ProofSetup {
                parameter_count, ..
            } => Some(*parameter_count),
            _ => None,
        })
        .collect();
    assert_eq!(proved, [params.len() as u64 - 9]);
}

/// Secure aggregation with update proofs (RoFL's construction): each
/// hospital's masked input is one Pedersen commitment per entry, blinded
/// with its SecAgg+ masks, and its Bulletproofs proof is checked against
/// exactly those commitments. A boosted update sent beside the honest
/// update's proof (the binding attack) is caught and its sender named,
/// the round completes through dropout recovery with the other three,
/// and a validator process re-checks every proof from the ledger alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_secure_aggregation_a_boosted_commitment_is_named_and_validators_attest() {
    let dir = tempfile::tempdir().unwrap();
    let hospitals = hospitals(
        dir.path(),
        &[None, None, None, Some(Misbehave::Boost(10.0))],
    );
    let federation = LocalFederation::start(dir.path(), &hospitals, true, Duration::from_secs(1))
        .await
        .unwrap();
    let job_toml = job(4, 3) + "min_validators = 1\n\n[privacy]\naggregation = \"secagg\"\n";
    let view = run_on(&federation, 4, &job_toml).await;
    assert_excluded_with(
        &view,
        &[("hospital-3", "update proof rejected")],
        "committed-update-norm/v1",
        None,
    );
    for round in &view.rounds {
        assert_eq!(round.participants.len(), 3, "{round:#?}");
    }
    // The opened sum is the survivors' mean: the model learns from it
    // (a logistic model starts at log-loss ln 2).
    let metrics = view.rounds.last().unwrap().metrics.as_ref().unwrap();
    assert!(metrics.loss < 0.68, "{metrics:?}");

    let url = federation.url.clone();
    let validator = attest_both_rounds_without_hospital_3(dir.path(), &url, &view.job_id);
    let mut dev = federation.developer().await.unwrap();
    developer::download_model(&mut dev, &view.job_id, None, &dir.path().join("model"))
        .await
        .expect("published once attested");

    // Commitments altered in the coordinator's store no longer match the
    // SHA-256 on the signed ledger: the re-check names the proof invalid.
    let stored = dir.path().join(format!(
        "coordinator/objects/jobs/{}/rounds/00001/commitments/hospital-0",
        view.job_id
    ));
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes.swap(0, 32);
    std::fs::write(&stored, &bytes).unwrap();
    let (_, check) = verify_round(&view.job_id, "1", &validator, &url);
    let tampered = check["proofs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["client"] == "hospital-0")
        .unwrap();
    assert_eq!(tampered["valid"], false, "{check}");
    assert!(
        tampered["reason"].as_str().unwrap().contains("SHA-256"),
        "{check}"
    );
    federation.shutdown().await;
}

/// Secure aggregation with update proofs: a forged proof and an update
/// over the bound (which the honest prover refuses to prove) are left out
/// like dropouts, and a free rider's zero update proves well formed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_secure_aggregation_forged_and_overbound_updates_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let hospitals = hospitals(
        dir.path(),
        &[
            None,
            None,
            Some(Misbehave::Freeride),
            Some(Misbehave::Forge),
            Some(Misbehave::Overbound(1000.0)),
        ],
    );
    let job_toml =
        job(5, 3) + "\n[privacy]\naggregation = \"secagg\"\n\n[privacy.secagg]\nthreshold = 0.6\n";
    let view = run_job(dir.path(), &hospitals, &job_toml).await;
    assert_excluded_with(
        &view,
        &[
            ("hospital-3", "update proof rejected"),
            ("hospital-4", "no proof"),
        ],
        "committed-update-norm/v1",
        None,
    );
    for round in &view.rounds {
        assert!(round.participants.iter().any(|p| p == "hospital-2"));
    }
}

/// Homomorphic aggregation with update proofs: each hospital sends its
/// committed update's proof beside the ciphertext. A forged proof is named,
/// and the forger sits out the round's later attempts (every member's
/// update is in an encrypted sum, so the attempt is retried without it);
/// the decrypted sum opens the honest hospitals' summed commitments and is
/// exactly the sum of what they encrypted (their own kept copies), the
/// model learns from it, and a validator re-checks every proof from the
/// ledger alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_homomorphic_aggregation_a_forged_proof_is_named_and_validators_attest() {
    let dir = tempfile::tempdir().unwrap();
    let mut hospitals = hospitals(dir.path(), &[None, None, None, Some(Misbehave::Forge)]);
    for hospital in &mut hospitals {
        hospital.options.keep_contributions = true;
    }
    let federation = LocalFederation::start(dir.path(), &hospitals, true, Duration::from_secs(1))
        .await
        .unwrap();
    let job_toml = job(4, 3) + "min_validators = 1\n\n[privacy]\naggregation = \"he\"\n";
    let view = run_on(&federation, 4, &job_toml).await;
    assert_excluded_with(
        &view,
        &[("hospital-3", "update proof rejected")],
        "committed-update-norm/v1",
        None,
    );
    for round in &view.rounds {
        assert_eq!(round.participants.len(), 3, "{round:#?}");
        assert_eq!(round.attempts, 2, "{round:#?}");
    }
    assert!(
        view.events.iter().any(|e| e
            .message
            .contains("hospital-3 sits out this round's later attempts")),
        "{:#?}",
        view.events
    );
    // Three members: plaintexts mod 2^(16 + 1 + ⌈log₂ 3⌉).
    const BITS: u32 = 19;
    for round in &view.rounds {
        let mut sum = vec![0u64; 0];
        for client in &round.participants {
            let kept = dir.path().join(format!(
                "clients/{client}/contributions/{}-round{:05}-attempt{}.bits{BITS}",
                view.job_id, round.round, round.attempts
            ));
            let bytes = std::fs::read(&kept).unwrap_or_else(|e| panic!("{}: {e}", kept.display()));
            let values = cohort_privacy::quantize::unpack(
                &bytes,
                BITS,
                bytes.len() / cohort_privacy::quantize::bytes_per_value(BITS),
            )
            .unwrap();
            if sum.is_empty() {
                sum = vec![0; values.len()];
            }
            cohort_privacy::quantize::add_mod(&mut sum, &values, BITS);
        }
        let signed = cohort_privacy::he::plaintext_to_signed(&sum, BITS);
        let bytes: Vec<u8> = signed.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            round.aggregate_sha256.as_deref(),
            Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)).as_str()),
            "round {}",
            round.round
        );
    }
    let metrics = view.rounds.last().unwrap().metrics.as_ref().unwrap();
    assert!(metrics.loss < 0.68, "{metrics:?}");

    attest_both_rounds_without_hospital_3(dir.path(), &federation.url, &view.job_id);
    federation.shutdown().await;
}

/// Homomorphic aggregation with update proofs: a hospital that commits to
/// and proves its honest update but encrypts a boosted one passes its own
/// proof check, and is caught when the decrypted sum does not open the
/// summed commitments. The sum is not used, so the boost never reaches the
/// model: the round fails after its attempts instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_homomorphic_aggregation_an_encrypted_boost_fails_the_sum_check() {
    let dir = tempfile::tempdir().unwrap();
    let hospitals = hospitals(dir.path(), &[None, None, Some(Misbehave::Boost(10.0))]);
    let job_toml = job(3, 3).replace("seed = 3\n", "seed = 3\nmax_round_attempts = 2\n")
        + "\n[privacy]\naggregation = \"he\"\n";
    let view = run_job(dir.path(), &hospitals, &job_toml).await;
    assert_eq!(view.state, "failed", "{view:#?}");
    assert!(view.rounds.is_empty(), "{view:#?}");
    let caught = view
        .events
        .iter()
        .filter(|e| {
            e.message
                .contains("not the sum of the hospitals' commitments")
        })
        .count();
    assert_eq!(caught, 2, "{:#?}", view.events);
}

/// Plain aggregation with `system = "bulletproofs"`: proofs that need no
/// setup (nobody ever holds a trapdoor), over the update's unblinded
/// commitments, which the coordinator recomputes from the update that
/// arrived. The boosted update is left out; a validator re-checks the
/// rounds from the ledger and the kept commitments; snarkjs export says
/// why it does not apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_updates_proved_without_a_setup_are_checked_and_attested() {
    let dir = tempfile::tempdir().unwrap();
    let hospitals = hospitals(dir.path(), &[None, None, Some(Misbehave::Boost(10.0))]);
    let federation = LocalFederation::start(dir.path(), &hospitals, true, Duration::from_secs(1))
        .await
        .unwrap();
    let job_toml = job(3, 2) + "system = \"bulletproofs\"\nmin_validators = 1\n";
    let view = run_on(&federation, 3, &job_toml).await;
    assert_excluded_with(
        &view,
        &[("hospital-2", "update proof rejected")],
        "committed-update-norm/v1",
        None,
    );
    let validator = validator_kit(dir.path(), "validator-1");
    let url = federation.url.clone();
    attest_once(&validator, &url);
    let check = assert_round_verified(&view.job_id, "2", &validator, &url, 2, &["hospital-2"]);
    assert!(check.get("setup").is_none(), "{check}");
    let (ok, _, err) = cohort(&[
        "proof",
        "export",
        &view.job_id,
        "1",
        "hospital-0",
        "--format",
        "snarkjs",
        "--out",
        &dir.path().join("export").to_string_lossy(),
        "--tls",
        &validator,
        "--coordinator",
        &url,
    ]);
    assert!(!ok && err.contains("Groth16"), "{err}");
    federation.shutdown().await;
}

/// Groth16 keys from a multi-party ceremony among the validators
/// (`cohort setup`), so that the coordinator never holds the trapdoor: a
/// job that asks for one the coordinator lacks fails naming the parameter
/// count and the commands; with two validators' contributions the job
/// runs on the ceremony's keys (a boosted update is still caught), the
/// ledger records the file's digest and the contributors, and a validator
/// attests the rounds; a file tampered with afterwards is refused, naming
/// the contribution that no longer verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_from_a_validators_ceremony_are_used_recorded_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ceremony = dir.path().join("update-norm.ceremony");
    let file = ceremony.to_string_lossy().into_owned();
    let (ok, _, err) = cohort(&["setup", "new", "--entries", "1", "--out", &file]);
    assert!(ok, "{err}");
    let hospitals = hospitals(dir.path(), &[None, None, Some(Misbehave::Boost(10.0))]);
    let federation = LocalFederation::start_configured(
        dir.path(),
        &hospitals,
        true,
        Duration::from_secs(1),
        |config| config.setup_ceremonies = vec![ceremony.clone()],
    )
    .await
    .unwrap();
    let job_toml = job(3, 2) + "setup = \"ceremony\"\nmin_validators = 1\n";

    // The only ceremony is for another size.
    let view = run_on(&federation, 3, &job_toml).await;
    assert_eq!(view.state, "failed", "{view:#?}");
    let error = view.error.unwrap_or_default();
    let entries = error
        .split("no setup ceremony for ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{error}"));
    assert!(error.contains("cohort setup new --entries"), "{error}");

    // Two validators contribute to the powers, one to the circuit.
    std::fs::remove_file(&ceremony).unwrap();
    let validator = validator_kit(dir.path(), "validator-1");
    let second = validator_kit(dir.path(), "validator-2");
    for args in [
        vec!["setup", "new", "--entries", entries, "--out", &file],
        vec!["setup", "contribute", &file, "--tls", &validator],
        vec!["setup", "contribute", &file, "--tls", &second],
        vec!["setup", "seal", &file],
        vec!["setup", "contribute", &file, "--tls", &second],
    ] {
        let (ok, _, err) = cohort(&args);
        assert!(ok, "{args:?}: {err}");
    }
    let (ok, stdout, err) = cohort(&["setup", "verify", &file, "--tls", &validator, "--json"]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let contributors: Vec<&str> = report["contributions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["signature"], "valid", "{report}");
            c["contributor"].as_str().unwrap()
        })
        .collect();
    assert_eq!(contributors, ["validator-1", "validator-2", "validator-2"]);

    let view = run_on(&federation, 3, &job_toml).await;
    assert_excluded(&view, &[("hospital-2", "update proof rejected")]);
    let setups: Vec<_> = cohort::audit::ledger_entries(&federation.data_dir, Some(&view.job_id))
        .unwrap()
        .into_iter()
        .filter_map(|(_, e)| match e.record {
            cohort_ledger::Record::ProofSetup {
                verifying_key_sha256,
                ceremony,
                ..
            } => Some((verifying_key_sha256, ceremony.unwrap())),
            _ => None,
        })
        .collect();
    let [(vk, recorded)] = setups.as_slice() else {
        panic!("{setups:?}");
    };
    assert_eq!(vk, report["verifying_key_sha256"].as_str().unwrap());
    assert_eq!(recorded.sha256, report["sha256"].as_str().unwrap());
    let names: Vec<&str> = recorded
        .contributors
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, contributors);
    let url = federation.url.clone();
    let setups_job = view.job_id.clone();
    attest_once(&validator, &url);
    let check = assert_round_verified(&view.job_id, "2", &validator, &url, 2, &["hospital-2"]);
    assert_eq!(check["setup"]["keys"], "ceremony", "{check}");
    assert_eq!(
        check["setup"]["ceremony_sha256"], report["sha256"],
        "{check}"
    );
    assert_eq!(
        check["setup"]["contributors"],
        serde_json::json!([
            "powers: validator-1",
            "powers: validator-2",
            "circuit: validator-2"
        ])
    );

    // Anyone reading the job gets the file back, checked against the
    // ledger's digest.
    let fetched = dir.path().join("fetched.ceremony");
    let fetched_text = fetched.to_string_lossy().into_owned();
    let fetch = |job: &str| {
        cohort(&[
            "setup",
            "fetch",
            job,
            "--out",
            &fetched_text,
            "--tls",
            &validator,
            "--coordinator",
            &url,
        ])
    };
    let (ok, _, err) = fetch(&view.job_id);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(&ceremony).unwrap()
    );

    // The last contribution's proof of knowledge, altered.
    let mut bytes = std::fs::read(&ceremony).unwrap();
    let at = bytes.len() - 32;
    bytes[at] ^= 1;
    std::fs::write(&ceremony, bytes).unwrap();
    let view = run_on(&federation, 3, &job_toml).await;
    assert_eq!(view.state, "failed", "{view:#?}");
    let error = view.error.unwrap_or_default();
    assert!(
        error.contains("circuit contribution 0 by \"validator-2\"")
            && error.contains("proof of knowledge"),
        "{error}"
    );
    // The file the earlier job's keys came from is gone from the
    // coordinator, and fetching says so.
    std::fs::remove_file(&fetched).unwrap();
    let (ok, _, err) = fetch(&setups_job);
    assert!(!ok && err.contains("no longer among"), "{err}");
    federation.shutdown().await;
}
