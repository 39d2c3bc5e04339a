//! The EVM ledger backend against a real local node (Hardhat, from
//! scripts/evm): the anchor contract deployed with `cohort ledger deploy`,
//! a coordinator started with `--ledger evm` anchoring a real job's
//! entries, `cohort verify ledger --rpc-url --contract` checking the log
//! against the chain, and tampering on either side caught.
//!
//! Needs node and npm. Without them the tests skip with a message, unless
//! `COHORT_REQUIRE_EVM` is set (CI sets it), when they fail instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cohort_identity::MessageSigningKey;
use cohort_ledger::{MerkleLog, Record, hash_leaf};
use cohort_ledger_evm::{AnchorContract, AnchorWriter, EvmKey};
use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cohort");

/// Hardhat's first development account: publicly known, funded on the
/// local node only.
const DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// scripts/evm with its node_modules installed, or `None` (skip) when node
/// or npm is missing and `COHORT_REQUIRE_EVM` is unset.
fn evm_tools() -> Option<PathBuf> {
    static READY: Mutex<Option<Option<PathBuf>>> = Mutex::new(None);
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = &*ready {
        return dir.clone();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/evm");
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(have("node") && have("npm")) {
        assert!(
            std::env::var_os("COHORT_REQUIRE_EVM").is_none(),
            "COHORT_REQUIRE_EVM is set but node or npm is missing (the EVM tests need Node.js 20+)"
        );
        eprintln!("node or npm not found: skipping the EVM ledger tests");
        *ready = Some(None);
        return None;
    }
    if !dir.join("node_modules/.bin/hardhat").exists() {
        eprintln!("installing scripts/evm's node modules (npm ci) ...");
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "npm ci in scripts/evm failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *ready = Some(Some(dir.clone()));
    Some(dir)
}

/// A Hardhat node on a free loopback port, stopped when dropped.
struct Node {
    url: String,
    _proc: Proc,
}

async fn start_node(tools: &Path, log: &Path) -> Node {
    let port = free_port();
    let proc = Proc(
        Command::new(tools.join("node_modules/.bin/hardhat"))
            .args([
                "node",
                "--hostname",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .current_dir(tools)
            .env("HARDHAT_DISABLE_TELEMETRY_PROMPT", "true")
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if cohort_ledger_evm::chain_id(&url).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Node { url, _proc: proc }
}

fn cohort(args: &[&str]) -> Result<String, String> {
    let out = Command::new(BIN).args(args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn verify(
    data_dir: &Path,
    state: &Path,
    node: &str,
    contract: &str,
    extra: &[&str],
) -> Result<Value, String> {
    let mut args = vec![
        "verify",
        "ledger",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--rpc-url",
        node,
        "--contract",
        contract,
        "--json",
    ];
    args.extend_from_slice(extra);
    cohort(&args).map(|out| json(&out))
}

fn db(data_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data_dir.join("coordinator.sqlite")).unwrap()
}

/// A consistent copy of a live coordinator's SQLite file.
fn snapshot(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    db(from)
        .execute(
            "VACUUM INTO ?1",
            [to.join("coordinator.sqlite").to_str().unwrap()],
        )
        .unwrap();
}

#[test]
fn committed_contract_artifact_matches_a_fresh_compile() {
    let Some(tools) = evm_tools() else { return };
    let out = Command::new("node")
        .args(["compile.js", "--check"])
        .current_dir(&tools)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_anchored_on_a_local_chain_verifies_and_tampering_is_caught() {
    let Some(tools) = evm_tools() else { return };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let node = start_node(&tools, &work.join("node.log")).await;
    assert_eq!(
        cohort_ledger_evm::chain_id(&node.url).await.ok(),
        Some(31337),
        "the Hardhat node did not come up: {}",
        std::fs::read_to_string(work.join("node.log")).unwrap_or_default()
    );
    let key = work.join("evm.key");
    std::fs::write(&key, DEV_KEY).unwrap();

    // Deploy, and the messages a wrong setup gets.
    let unfunded = work.join("unfunded.key");
    std::fs::write(&unfunded, format!("{:064x}", 12345)).unwrap();
    let err = cohort(&[
        "ledger",
        "deploy",
        "--rpc-url",
        &node.url,
        "--evm-key",
        unfunded.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(
        err.contains("holds 0 wei") && err.contains("fund it"),
        "{err}"
    );
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let err = cohort(&[
        "ledger",
        "deploy",
        "--rpc-url",
        &nowhere,
        "--evm-key",
        key.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(err.contains("cannot reach the EVM node"), "{err}");
    let deployed = json(
        &cohort(&[
            "ledger",
            "deploy",
            "--rpc-url",
            &node.url,
            "--evm-key",
            key.to_str().unwrap(),
            "--json",
        ])
        .unwrap(),
    );
    let contract = deployed["address"].as_str().unwrap().to_string();
    assert_eq!(
        deployed["owner"].as_str().unwrap(),
        EvmKey::from_hex(DEV_KEY).unwrap().address().to_string()
    );

    // Entries committed while nothing anchored them (a coordinator that
    // crashed between its SQLite commit and anchoring): opening the data
    // directory commits the first entry, the coordinator's key.
    let data_dir = work.join("coordinator");
    drop(
        cohort_coordinator::Coordinator::open(&cohort_coordinator::CoordinatorConfig::new(
            &data_dir,
        ))
        .unwrap(),
    );

    // Not anchored yet: reported as pending, or refused on request.
    let pending = verify(&data_dir, &work.join("p.json"), &node.url, &contract, &[]).unwrap();
    assert_eq!(
        pending["chain"]["pending_entries"].as_u64(),
        Some(1),
        "{pending}"
    );
    assert_eq!(pending["chain"]["first_pending"]["index"].as_u64(), Some(0));
    let err = verify(
        &data_dir,
        &work.join("p.json"),
        &node.url,
        &contract,
        &["--require-anchored"],
    )
    .unwrap_err();
    assert!(
        err.contains("1 of the log's 1 entries are not anchored") && err.contains("entry 0"),
        "{err}"
    );
    // No contract there, or a key that does not own it: refused up front.
    let owner = deployed["owner"].as_str().unwrap();
    let err = verify(&data_dir, &work.join("p.json"), &node.url, owner, &[]).unwrap_err();
    assert!(err.contains("no contract at"), "{err}");
    let err = cohort(&[
        "coordinator",
        "--insecure",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--ledger",
        "evm",
        "--rpc-url",
        &node.url,
        "--contract",
        &contract,
        "--evm-key",
        unfunded.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(err.contains("only the owner may append"), "{err}");

    // The coordinator, anchoring on the chain, and two hospitals.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let coordinator_log = work.join("coordinator.log");
    let coordinator = Proc(
        Command::new(BIN)
            .args(["coordinator", "--insecure", "--poll-timeout-secs", "1"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data_dir)
            .args([
                "--ledger",
                "evm",
                "--rpc-url",
                &node.url,
                "--contract",
                &contract,
            ])
            .arg("--evm-key")
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&coordinator_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let csv = work.join("all.csv");
    synthetic_oncology_csv(&csv, 600, 11);
    let files = split(&csv, &work.join("parts"), 2, 5);
    let stop = Stop::new();
    let clients = [
        start_client(&url, &files[0], "hospital-a", &stop),
        start_client(&url, &files[1], "hospital-b", &stop),
    ];
    wait_for_clients(&url, 2).await;
    let view = submit_and_wait(&url, &oncology_job(2, 2)).await;
    let job_id = view.job_id.clone();

    // Every entry anchored (in the background, so wait for the last).
    let state = work.join("seen.json");
    let mut verified = Err(String::new());
    for _ in 0..100 {
        verified = verify(
            &data_dir,
            &state,
            &node.url,
            &contract,
            &["--require-anchored"],
        );
        if verified.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = verified.unwrap_or_else(|e| {
        panic!(
            "{e}\ncoordinator log:\n{}",
            std::fs::read_to_string(&coordinator_log).unwrap_or_default()
        )
    });
    let entries = report["entries"].as_u64().unwrap();
    // Key, job, enrollment, rounds 0..=2.
    assert_eq!(entries, 6, "{report}");
    let chain = &report["chain"];
    assert_eq!(
        chain["anchored_entries"].as_u64(),
        Some(entries),
        "{report}"
    );
    assert_eq!(chain["pending_entries"].as_u64(), Some(0), "{report}");
    assert_eq!(
        chain["checkpoint"]["tree_size"].as_u64(),
        Some(entries),
        "{report}"
    );
    assert_eq!(chain["checkpoint"]["root"], report["root"], "{report}");
    assert_eq!(chain["chain_id"].as_u64(), Some(31337));
    let log = std::fs::read_to_string(&coordinator_log).unwrap();
    assert!(log.contains("catching up"), "{log}");
    assert!(log.contains("ledger entries anchored"), "{log}");
    // The same over the network, as a validator without the data directory.
    let text = cohort(&[
        "verify",
        "ledger",
        "--coordinator",
        &url,
        "--insecure",
        "--state",
        work.join("seen-net.json").to_str().unwrap(),
        "--rpc-url",
        &node.url,
        "--contract",
        &contract,
    ])
    .unwrap();
    assert!(text.contains("chain OK: 6 entries anchored"), "{text}");

    // History rewritten by someone holding the coordinator's key: entries
    // and checkpoint re-signed, so the log alone verifies for a validator
    // that never saw it, but not against the chain.
    let rewritten = work.join("rewritten");
    snapshot(&data_dir, &rewritten);
    let signing_key = MessageSigningKey::from_pem(
        &std::fs::read_to_string(data_dir.join("ledger-signing-key.pem")).unwrap(),
    )
    .unwrap();
    rewrite_ledger(&rewritten, &signing_key, |record| {
        if let Record::RoundCompleted {
            round: 1, accuracy, ..
        } = record
        {
            *accuracy = Some("0.999000".into());
            return true;
        }
        false
    });
    let fresh = |n: &str| work.join(format!("fresh-{n}.json"));
    cohort(&[
        "verify",
        "ledger",
        "--data-dir",
        rewritten.to_str().unwrap(),
        "--state",
        fresh("a").to_str().unwrap(),
    ])
    .expect("without the chain, a re-signed log verifies");
    let err = verify(&rewritten, &fresh("b"), &node.url, &contract, &[]).unwrap_err();
    assert!(
        err.contains("entry 4")
            && err.contains(&format!("job {job_id} round 1"))
            && err.contains("does not match the chain"),
        "{err}"
    );

    // An entry altered in place: its signature breaks first.
    let flipped = work.join("flipped");
    snapshot(&data_dir, &flipped);
    let mut leaf: Vec<u8> = db(&flipped)
        .query_row("SELECT entry FROM ledger WHERE idx = 3", [], |r| r.get(0))
        .unwrap();
    let at = leaf.windows(7).position(|w| w == b"\"round\"").unwrap() + 8;
    leaf[at] = if leaf[at] == b'1' { b'2' } else { b'1' };
    db(&flipped)
        .execute("UPDATE ledger SET entry = ?1 WHERE idx = 3", [&leaf])
        .unwrap();
    let err = verify(&flipped, &fresh("c"), &node.url, &contract, &[]).unwrap_err();
    assert!(err.contains("entry 3"), "{err}");

    // Someone with the contract owner's key anchors a different digest at
    // the next index: verification names the entry the log lacks ...
    let intruder =
        AnchorWriter::new(&node.url, &contract, EvmKey::from_hex(DEV_KEY).unwrap()).unwrap();
    intruder
        .append_entries(entries, &[[0xab; 32]])
        .await
        .unwrap();
    let err = verify(&data_dir, &fresh("d"), &node.url, &contract, &[]).unwrap_err();
    assert!(
        err.contains(&format!("entry {entries}")) && err.contains("missing from the log"),
        "{err}"
    );
    // ... and once the coordinator commits its own entry there (a new job),
    // it refuses to anchor over the conflict, and verification names it.
    let mut dev = cohort::developer::connect(&url, &cohort_protocol::Security::Insecure)
        .await
        .unwrap();
    let second = cohort::developer::submit(&mut dev, &oncology_job(1, 3))
        .await
        .unwrap();
    let mut stopped = false;
    for _ in 0..100 {
        if std::fs::read_to_string(&coordinator_log)
            .unwrap()
            .contains("ledger anchoring STOPPED")
        {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&coordinator_log).unwrap();
    assert!(stopped, "{log}");
    assert!(
        log.contains(&format!(
            "entry {entries} is anchored with leaf hash {}",
            "ab".repeat(32)
        )),
        "{log}"
    );
    let err = verify(&data_dir, &fresh("e"), &node.url, &contract, &[]).unwrap_err();
    assert!(
        err.contains(&format!(
            "entry {entries} (job {second} created) does not match the chain"
        )),
        "{err}"
    );
    let chain = AnchorContract::new(&node.url, &contract).unwrap();
    assert_eq!(chain.entry_count().await.unwrap(), entries + 1);

    stop.stop();
    drop(coordinator);
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(5), client).await;
    }
    eprintln!(
        "EVM ledger test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Gas and time per anchoring on the local node (docs/BENCHMARKS.md):
/// `cargo test --test evm -- --ignored --nocapture anchoring_costs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn anchoring_costs() {
    let Some(tools) = evm_tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&tools, &dir.path().join("node.log")).await;
    let key = EvmKey::from_hex(DEV_KEY).unwrap();
    let deployed = cohort_ledger_evm::deploy(&node.url, &key).await.unwrap();
    println!("deploy: {} gas", deployed.gas_used);
    let writer =
        Arc::new(AnchorWriter::new(&node.url, &deployed.address.to_string(), key).unwrap());
    let mut log = MerkleLog::new();
    let next = |log: &mut MerkleLog| {
        let leaf = hash_leaf(format!("entry {}", log.size()).as_bytes());
        log.append_leaf_hash(leaf);
        leaf
    };
    // One entry and its checkpoint per transaction, as a coordinator does
    // when commits are far apart.
    let singles = 50u64;
    let (mut gas, started) = (0u64, Instant::now());
    for _ in 0..singles {
        let first = log.size();
        let leaf = next(&mut log);
        gas += writer
            .anchor(first, &[leaf], log.current_root())
            .await
            .unwrap()
            .gas_used;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "one entry per transaction: {:.0} gas per entry, {:.1} ms per anchoring ({singles} transactions)",
        gas as f64 / singles as f64,
        1000.0 * secs / singles as f64
    );
    // A backlog of 64 (catching up): one transaction.
    for batch in [8u64, 64] {
        let first = log.size();
        let leaves: Vec<_> = (0..batch).map(|_| next(&mut log)).collect();
        let started = Instant::now();
        let receipt = writer
            .anchor(first, &leaves, log.current_root())
            .await
            .unwrap();
        println!(
            "{batch} entries per transaction: {:.0} gas per entry, {:.1} ms for the transaction",
            receipt.gas_used as f64 / batch as f64,
            1000.0 * started.elapsed().as_secs_f64()
        );
    }
}

/// Three honest hospitals on a synthetic oncology file split IID.
fn three_hospitals(dir: &Path, seed: u64) -> Vec<cohort::local::LocalHospital> {
    let csv = dir.join("oncology.csv");
    synthetic_oncology_csv(&csv, 600, seed);
    let files = split(&csv, &dir.join("parts"), 3, seed + 1);
    files[..3]
        .iter()
        .enumerate()
        .map(|(i, file)| cohort::local::LocalHospital {
            name: format!("hospital-{i}"),
            data: file.clone(),
            options: Default::default(),
        })
        .collect()
}

/// Hardhat's second and third development accounts (public keys only
/// matter here: they receive tokens).
const HOSPITAL_0: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const HOSPITAL_1: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

/// The ledger's payouts as an ERC-20 token: a valued job's rounds
/// published as distributions, a hospital claiming exactly what the ledger
/// paid it (once), a publisher going beyond the halving schedule refused on
/// chain, and the gas of each step printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewards_token_pays_the_ledger_and_caps_each_height() {
    use cohort::local::LocalFederation;
    let Some(tools) = evm_tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&tools, &dir.path().join("node.log")).await;
    let hospitals = three_hospitals(dir.path(), 23);
    // 1,000,000 base units halving every 2 rounds: 3 rounds cross a halving.
    let schedule = cohort_coordinator::rewards::RewardsConfig::new(1_000_000, 2, 0).unwrap();
    let federation = LocalFederation::start_with_rewards(
        dir.path(),
        &hospitals,
        false,
        Duration::from_secs(1),
        schedule,
    )
    .await
    .unwrap();
    let mut dev = federation.developer().await.unwrap();
    let id = cohort::developer::submit(&mut dev, &(oncology_job(3, 3) + "\n[valuation]\n"))
        .await
        .unwrap();
    let view = cohort::developer::wait(&mut dev, &id, false).await.unwrap();
    federation.shutdown().await;
    assert_eq!(view.state, "completed", "{view:#?}");

    let key_file = dir.path().join("operator.key");
    std::fs::write(&key_file, DEV_KEY).unwrap();
    let key_text = key_file.to_string_lossy().into_owned();
    let data_dir = dir.path().join("coordinator");
    let data_text = data_dir.to_string_lossy().into_owned();
    let addresses = dir.path().join("addresses.csv");
    // hospital-2 has no address: its part stays unminted.
    std::fs::write(
        &addresses,
        format!("name,address\nhospital-0,{HOSPITAL_0}\nhospital-1,{HOSPITAL_1}\n"),
    )
    .unwrap();
    let addresses_text = addresses.to_string_lossy().into_owned();

    // A token with another schedule than the ledger's is refused.
    let wrong = cohort(&[
        "rewards",
        "deploy",
        "--rpc-url",
        &node.url,
        "--evm-key",
        &key_text,
        "--emission-initial",
        "1000000",
        "--emission-halving",
        "3",
    ])
    .unwrap();
    let token_args = |contract: &str| {
        vec![
            "--data-dir".to_string(),
            data_text.clone(),
            "--rpc-url".into(),
            node.url.clone(),
            "--contract".into(),
            contract.to_string(),
            "--evm-key".into(),
            key_text.clone(),
            "--addresses".into(),
            addresses_text.clone(),
        ]
    };
    let run = |head: &[&str], contract: &str| {
        let mut args: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        args.extend(token_args(contract));
        args.push("--json".into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cohort(&refs)
    };
    let err = run(&["rewards", "publish"], wrong.trim()).unwrap_err();
    assert!(
        err.contains("halving every 3") && err.contains("halving every 2"),
        "{err}"
    );

    let deployed = json(
        &cohort(&[
            "rewards",
            "deploy",
            "--rpc-url",
            &node.url,
            "--evm-key",
            &key_text,
            "--emission-initial",
            "1000000",
            "--emission-halving",
            "2",
            "--json",
        ])
        .unwrap(),
    );
    let contract = deployed["address"].as_str().unwrap().to_string();
    println!("rewards token deploy: {} gas", deployed["gas_used"]);
    let published = json(&run(&["rewards", "publish"], &contract).unwrap());
    let rows = published["distributions"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{published}");
    for row in rows {
        // hospital-2 has no address (its part, when above 0, is unminted).
        let unmapped = row["unmapped"].as_array().unwrap();
        assert!(unmapped.iter().all(|u| u == "hospital-2"), "{row}");
        println!(
            "publish distribution {} ({} payees): {} gas",
            row["distribution"], row["payees"], row["gas_used"]
        );
    }
    // Publishing again sends nothing and checks what is there.
    let again = json(&run(&["rewards", "publish"], &contract).unwrap());
    assert!(
        again["distributions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["gas_used"].is_null()),
        "{again}"
    );

    // hospital-0 claims exactly what the ledger paid it, once.
    let shown =
        json(&cohort(&["rewards", "show", &id, "--data-dir", &data_text, "--json"]).unwrap());
    let paid = shown["hospitals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "hospital-0")
        .unwrap()["reward"]
        .as_u64()
        .unwrap();
    assert!(paid > 0, "{shown}");
    let claimed = json(&run(&["rewards", "claim", "hospital-0"], &contract).unwrap());
    assert_eq!(claimed["balance"], paid.to_string(), "{claimed}");
    for row in claimed["claims"].as_array().unwrap() {
        println!(
            "claim from distribution {}: {} gas",
            row["distribution"], row["gas_used"]
        );
    }
    let twice = json(&run(&["rewards", "claim", "hospital-0"], &contract).unwrap());
    assert_eq!(twice["claims"], serde_json::json!([]), "{twice}");
    assert_eq!(twice["already_claimed"], 3, "{twice}");
    let err = run(&["rewards", "claim", "hospital-2"], &contract).unwrap_err();
    assert!(err.contains("no address"), "{err}");

    // The operator's key cannot mint beyond the schedule: height 2 (after
    // the halving) has 500,000 base units, of which the ledger's
    // distribution already took some.
    let token = cohort_ledger_evm::RewardsContract::new(&node.url, &contract).unwrap();
    let key = EvmKey::from_hex(DEV_KEY).unwrap();
    let err = token
        .publish(
            &key,
            3,
            2,
            cohort_ledger_evm::B256::repeat_byte(7),
            cohort_ledger_evm::U256::from(500_000u64),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("OverEmission"), "{err}");
    // Nor claim a leaf that is not in the tree.
    let err = token
        .claim(
            &key,
            0,
            HOSPITAL_1.parse().unwrap(),
            cohort_ledger_evm::U256::from(1_000_000u64),
            Vec::new(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("InvalidProof"), "{err}");
}

/// A proofs job's update proofs checked on chain by the job's Solidity
/// verifier (deployed from the ledger's verifying key): every accepted
/// proof valid, the same proof with a changed public input (another round)
/// or a changed point rejected, and the gas of a check printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_proofs_verify_on_chain() {
    use cohort::local::LocalFederation;
    let Some(tools) = evm_tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&tools, &dir.path().join("node.log")).await;
    let hospitals = three_hospitals(dir.path(), 29);
    let federation = LocalFederation::start(dir.path(), &hospitals, true, Duration::from_secs(1))
        .await
        .unwrap();
    let mut dev = federation.developer().await.unwrap();
    let job = oncology_job(1, 3) + "\n[proofs]\nupdate = \"norm\"\nclip = 4.0\n";
    let id = cohort::developer::submit(&mut dev, &job).await.unwrap();
    let view = cohort::developer::wait(&mut dev, &id, false).await.unwrap();
    assert_eq!(view.state, "completed", "{view:#?}");
    let key_file = dir.path().join("operator.key");
    std::fs::write(&key_file, DEV_KEY).unwrap();
    let check = cohort::validator::onchain(
        &federation.url,
        &federation.developer,
        (&id, 1),
        &node.url,
        &key_file,
        None,
    )
    .await
    .unwrap();
    println!(
        "update verifier deploy: {} gas",
        check.deploy_gas.unwrap_or_default()
    );
    assert_eq!(check.proofs.len(), 3, "{check:?}");
    for p in &check.proofs {
        assert!(p.valid, "{check:?}");
        println!("verifyProof for {}: {} gas", p.client, p.gas);
    }
    // Checking again against the deployed verifier needs no key.
    let again = cohort::validator::onchain(
        &federation.url,
        &federation.developer,
        (&id, 1),
        &node.url,
        Path::new("/nonexistent"),
        Some(&check.contract),
    )
    .await
    .unwrap();
    assert!(again.proofs.iter().all(|p| p.valid));

    // A validator that also checks on chain attests the round valid.
    let pki = dir.path().join("pki");
    let mut ca = cohort_identity::CertificateAuthority::open(&pki.join("ca")).unwrap();
    ca.issue(
        &cohort_identity::IssueRequest::for_days(
            cohort_identity::Role::Validator,
            "validator-1",
            30,
        ),
        &pki.join("validator-1"),
    )
    .unwrap();
    let kit = pki.join("validator-1").to_string_lossy().into_owned();
    let key_text = key_file.to_string_lossy().into_owned();
    cohort(&[
        "validator",
        "--tls",
        &kit,
        "--coordinator",
        &federation.url,
        "--once",
        "--rpc-url",
        &node.url,
        "--evm-key",
        &key_text,
    ])
    .unwrap();

    // Tampered: the proof replayed for round 2, or with a changed point.
    let contents = cohort::audit::fetch_ledger(&mut dev).await.unwrap();
    federation.shutdown().await;
    let entries = cohort::validator::checked_entries(&contents).unwrap();
    let attested = entries.iter().any(|e| {
        matches!(&e.record, Record::Attestation { job_id, verdicts, .. }
            if job_id == &id && verdicts.len() == 3 && verdicts.iter().all(|v| v.valid))
    });
    assert!(attested, "no valid attestation of the round");
    let record = entries
        .iter()
        .find_map(|e| match &e.record {
            Record::RoundCompleted {
                job_id,
                round: 1,
                updates,
                ..
            } if job_id == &id => updates[0]
                .proof
                .clone()
                .map(|p| (updates[0].client.clone(), p)),
            _ => None,
        })
        .unwrap();
    let verifier =
        cohort_ledger_evm::UpdateVerifierContract::new(&node.url, &check.contract).unwrap();
    let context = |round| cohort_proofs::Context {
        job_id: id.clone(),
        round,
        client: record.0.clone(),
    };
    let honest = cohort::validator::proof_words(&context(1), &record.1).unwrap();
    assert!(verifier.verify(&honest).await.unwrap().0);
    let replayed = cohort::validator::proof_words(&context(2), &record.1).unwrap();
    assert!(!verifier.verify(&replayed).await.unwrap().0);
    let mut bent = honest.clone();
    bent.c = honest.a;
    assert!(!verifier.verify(&bent).await.unwrap().0);
    let mut outside = honest.clone();
    outside.inputs[0] = cohort_ledger_evm::U256::MAX;
    assert!(!verifier.verify(&outside).await.unwrap().0);
    let mut short = honest;
    short.inputs.pop();
    let err = verifier.verify(&short).await.unwrap_err().to_string();
    assert!(
        err.contains("WrongInputCount") || err.contains("revert"),
        "{err}"
    );
}
