//! The embedded ledger as a validator meets it: a whole job recorded, then
//! checked without trusting the coordinator, and every kind of tampering
//! caught with a message naming it.

mod common;

use std::path::Path;
use std::process::Command;

use cohort::demo::{self, DemoOptions};
use cohort_identity::MessageSigningKey;
use cohort_ledger::Record;
use common::rewrite_ledger;

const BIN: &str = env!("CARGO_BIN_EXE_cohort");

fn db(data_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data_dir.join("coordinator.sqlite")).unwrap()
}

fn verify(data_dir: &Path, state: &Path) -> Result<String, String> {
    let out = Command::new(BIN)
        .args(["verify", "ledger", "--data-dir"])
        .arg(data_dir)
        .arg("--state")
        .arg(state)
        .arg("--json")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in [
        "coordinator.sqlite",
        "coordinator.sqlite-wal",
        "coordinator.sqlite-shm",
    ] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_leaves_a_verifiable_ledger_and_tampering_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let report = demo::run(DemoOptions {
        workdir: Some(dir.path().to_path_buf()),
        rounds: Some(4),
        progress: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let data_dir = dir.path().join("coordinator");
    let state = dir.path().join("seen.json");

    // The job's whole story, in order, signed by the coordinator.
    let entries = cohort::audit::ledger_entries(&data_dir, Some(&report.job_id)).unwrap();
    let kinds: Vec<String> = entries
        .iter()
        .map(|(_, e)| match &e.record {
            Record::JobCreated { .. } => "job".to_string(),
            Record::RoundCompleted { round, updates, .. } => {
                format!("round {round} ({} updates)", updates.len())
            }
            Record::CoordinatorKey { .. } => "key".to_string(),
            Record::ClientsEnrolled { participants, .. } => {
                format!("enrolled {}", participants.len())
            }
            Record::RoundValued { round, .. } => format!("values {round}"),
            Record::RewardsPaid { round, .. } => format!("rewards {round}"),
            Record::ValidatorsPaid { round, .. } => format!("validators paid {round}"),
            Record::ProofSetup { .. } => "proof key".to_string(),
            Record::Attestation { validator, .. } => format!("attested by {validator}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "job",
            "enrolled 3",
            "round 0 (0 updates)",
            "round 1 (3 updates)",
            "round 2 (3 updates)",
            "round 3 (3 updates)",
            "round 4 (3 updates)"
        ]
    );
    for (_, entry) in &entries {
        if let Record::RoundCompleted { updates, .. } = &entry.record {
            assert!(updates.iter().all(|u| !u.signature.is_empty()));
        }
    }
    let last_model = match &entries.last().unwrap().1.record {
        Record::RoundCompleted { model_sha256, .. } => model_sha256.clone(),
        _ => unreachable!(),
    };
    let (card, _) = cohort_models::load_model(&report.model_dir).unwrap();
    assert_eq!(card.parameters_sha256, last_model);

    let ok = verify(&data_dir, &state).unwrap();
    assert!(ok.contains("\"entries\": 8"), "{ok}");

    check_model_signature(dir.path(), &report.model_dir, &data_dir, &report.job_id);

    // Each hospital reproduces the dataset commitment its updates carried.
    let mut parts: Vec<_> = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("hospital_") && name.ends_with(".csv")
        })
        .collect();
    parts.sort();
    assert_eq!(parts.len(), 3);
    let Record::RoundCompleted { updates, .. } = &entries.last().unwrap().1.record else {
        unreachable!()
    };
    for (hospital, part) in ["hospital-a", "hospital-b", "hospital-c"]
        .iter()
        .zip(&parts)
    {
        let out = cohort(&[
            "data".as_ref(),
            "commitment".as_ref(),
            "--data".as_ref(),
            part.as_os_str(),
            "--model".as_ref(),
            report.model_dir.as_os_str(),
            "--json".as_ref(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reproduced: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let recorded = updates.iter().find(|u| u.client == *hospital).unwrap();
        assert_eq!(
            reproduced["dataset_sha256"].as_str().unwrap(),
            recorded.dataset_sha256,
            "{hospital}"
        );
    }

    // One flipped byte in one entry.
    let flipped = dir.path().join("flipped");
    copy_dir(&data_dir, &flipped);
    let mut leaf: Vec<u8> = db(&flipped)
        .query_row("SELECT entry FROM ledger WHERE idx = 3", [], |r| r.get(0))
        .unwrap();
    let at = leaf.windows(7).position(|w| w == b"\"round\"").unwrap() + 8;
    leaf[at] = if leaf[at] == b'1' { b'2' } else { b'1' };
    db(&flipped)
        .execute("UPDATE ledger SET entry = ?1 WHERE idx = 3", [&leaf])
        .unwrap();
    let err = verify(&flipped, &dir.path().join("s1.json")).unwrap_err();
    assert!(
        err.contains("entry 3") && err.contains("signature"),
        "{err}"
    );

    // An entry removed.
    let removed = dir.path().join("removed");
    copy_dir(&data_dir, &removed);
    db(&removed)
        .execute(
            "DELETE FROM ledger WHERE idx = (SELECT MAX(idx) FROM ledger)",
            [],
        )
        .unwrap();
    let err = verify(&removed, &dir.path().join("s2.json")).unwrap_err();
    assert!(err.contains("added or removed"), "{err}");

    // Round 1's entry (index 4) is signed with the hospitals' receipts
    // sealed; the coordinator keeps their openings beside it. A receipt
    // altered there no longer opens its commitment.
    let (signed, openings): (Vec<u8>, String) = db(&data_dir)
        .query_row(
            "SELECT entry, openings_json FROM ledger WHERE idx = 4",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let signed = String::from_utf8(signed).unwrap();
    assert!(
        signed.contains("sealed_updates") && !signed.contains("num_examples"),
        "{signed}"
    );
    let reopened = dir.path().join("reopened");
    copy_dir(&data_dir, &reopened);
    let altered = openings.replacen(r#"\"num_examples\":"#, r#"\"num_examples\":9"#, 1);
    assert_ne!(altered, openings);
    db(&reopened)
        .execute(
            "UPDATE ledger SET openings_json = ?1 WHERE idx = 4",
            [&altered],
        )
        .unwrap();
    let err = verify(&reopened, &dir.path().join("s3.json")).unwrap_err();
    assert!(
        err.contains("entry 4") && err.contains("does not match"),
        "{err}"
    );

    // History rewritten by someone holding the coordinator's key: every
    // entry and the checkpoint re-signed, so only the checkpoint this
    // validator saw earlier can tell.
    let rewritten = dir.path().join("rewritten");
    copy_dir(&data_dir, &rewritten);
    let key = MessageSigningKey::from_pem(
        &std::fs::read_to_string(dir.path().join("pki/coordinator/signing-key.pem")).unwrap(),
    )
    .unwrap();
    rewrite_ledger(&rewritten, &key, |record| {
        if let Record::RoundCompleted { accuracy, .. } = record {
            *accuracy = Some("1.000000".into());
            return true;
        }
        false
    });
    // A validator that never saw this log cannot tell; one that did can.
    verify(&rewritten, &dir.path().join("fresh.json")).unwrap();
    let err = verify(&rewritten, &state).unwrap_err();
    assert!(err.contains("history rewritten"), "{err}");
}

#[test]
fn ledger_benchmark_measures_what_it_claims() {
    let small = cohort::bench::ledger(100).unwrap();
    assert_eq!(small.entries, 100);
    // 100 leaves: a tree of height 7, so at most 7 hashes in a proof.
    assert!(small.inclusion_proof_bytes <= 7 * 32 && small.inclusion_proof_bytes > 0);
    assert!(small.appends_per_sec > 0.0);
    assert!(cohort::bench::durable_ledger_appends(5).unwrap() > 0.0);
    assert!(cohort::bench::ledger(1).is_err());
}

fn cohort(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// The downloaded model carries the coordinator's OpenSSF model-signing
/// signature: Cohort verifies it (and finds it on the ledger), and so does
/// the `model_signing` tool from PyPI when it is installed (CI installs it).
fn check_model_signature(work: &Path, model: &Path, data_dir: &Path, job_id: &str) {
    assert!(model.join("model.sig").is_file());
    let out = cohort(&[
        "coordinator".as_ref(),
        "signing-key".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = work.join("coordinator.pub.pem");
    std::fs::write(&pem, &out.stdout).unwrap();
    let kit_key = MessageSigningKey::from_pem(
        &std::fs::read_to_string(work.join("pki/coordinator/signing-key.pem")).unwrap(),
    )
    .unwrap()
    .verifying_key();
    assert_eq!(kit_key.spki_pem().as_bytes(), &out.stdout[..]);

    let state = work.join("model-state.json");
    let out = cohort(&[
        "verify".as_ref(),
        "model".as_ref(),
        model.as_os_str(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
        "--json".as_ref(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(job_id) && text.contains("\"round\": 4"),
        "{text}"
    );
    let out = cohort(&[
        "verify".as_ref(),
        "model".as_ref(),
        model.as_os_str(),
        "--public-key".as_ref(),
        pem.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One flipped byte in the weights.
    let tampered = work.join("tampered-model");
    std::fs::create_dir_all(&tampered).unwrap();
    for f in ["model.json", "model.safetensors", "model.sig"] {
        std::fs::copy(model.join(f), tampered.join(f)).unwrap();
    }
    let mut weights = std::fs::read(tampered.join("model.safetensors")).unwrap();
    let last = weights.len() - 1;
    weights[last] ^= 1;
    std::fs::write(tampered.join("model.safetensors"), weights).unwrap();
    let out = cohort(&[
        "verify".as_ref(),
        "model".as_ref(),
        tampered.as_os_str(),
        "--public-key".as_ref(),
        pem.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("model.safetensors"),
        "{err}"
    );

    // The OpenSSF tool itself.
    let have_tool = Command::new("python3")
        .args(["-c", "import model_signing"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_tool {
        assert!(
            std::env::var_os("COHORT_REQUIRE_MODEL_SIGNING").is_none(),
            "model_signing is required here (pip install model-signing pyopenssl)"
        );
        eprintln!("model_signing (PyPI) not installed: skipping its cross-check");
        return;
    }
    let openssf = |dir: &Path| {
        Command::new("python3")
            .args(["-m", "model_signing", "verify", "key"])
            .arg(dir)
            .arg("--signature")
            .arg(dir.join("model.sig"))
            .arg("--public_key")
            .arg(&pem)
            .output()
            .unwrap()
    };
    let out = openssf(model);
    assert!(
        out.status.success(),
        "model_signing rejected Cohort's signature: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!openssf(&tampered).status.success());
}
