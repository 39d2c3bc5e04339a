//! The web dashboard (issue 20) over a real socket: a coordinator with
//! mutual TLS runs a real job (two hospitals, record-level DP, contribution
//! valuation), then its dashboard's JSON API is asked, by raw HTTP/1.1,
//! what each kind of token holder may see, and refuses everyone else.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cohort::dashboard::listener::DashboardLimits;
use cohort::dashboard::token::{self, DashboardRole};
use cohort::dashboard::{self, Dashboard};
use cohort::developer;
use cohort::local::{LocalFederation, LocalHospital};
use cohort::pki::LocalConsortium;
use cohort_identity::Kit;
use common::*;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        assert_eq!(self.status, 200, "{}", self.body);
        serde_json::from_str(&self.body).unwrap()
    }
}

/// One HTTP/1.1 GET over a fresh TCP connection.
async fn get(base: &str, path: &str, headers: &[(&str, String)]) -> Reply {
    let addr = host_of(base);
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    exchange(stream, &addr, path, headers).await.unwrap()
}

fn host_of(base: &str) -> String {
    base.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string()
}

/// One HTTP/1.1 GET on `stream`; an error when the connection fails
/// before a whole answer arrives.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    addr: &str,
    path: &str,
    headers: &[(&str, String)],
) -> std::io::Result<Reply> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw).map_err(std::io::Error::other)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {token}"))]
}

fn token_for(data_dir: &Path, role: DashboardRole, name: &str) -> String {
    token::issue_for(data_dir, role, name, Duration::from_secs(600)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_api_shows_each_role_its_part_of_a_real_job_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 600, 20);
    let files = split(&csv, &dir.path().join("split"), 2, 20);
    let hospitals: Vec<LocalHospital> = ["hospital-a", "hospital-b"]
        .iter()
        .zip(&files)
        .map(|(name, data)| LocalHospital {
            name: name.to_string(),
            data: data.clone(),
            options: Default::default(),
        })
        .collect();
    let federation = LocalFederation::start(dir.path(), &hospitals, true, Duration::from_secs(1))
        .await
        .unwrap();
    let data_dir = federation.data_dir.clone();
    let board = Dashboard::open(federation.view.clone(), &data_dir).unwrap();
    let ledger_before = board.ledger().unwrap();
    assert!(
        Arc::ptr_eq(&ledger_before, &board.ledger().unwrap()),
        "an unchanged ledger is parsed once"
    );
    let running = dashboard::start("127.0.0.1:0", board.clone())
        .await
        .unwrap();
    let url = running.url.clone();

    let mut dev = federation.developer().await.unwrap();
    let job = oncology_job(2, 2)
        + "\n[privacy.dp]\nlevel = \"record\"\ntarget_epsilon = 4.0\ndelta = 1e-5\nmax_grad_norm = 1.0\n"
        + "\n[valuation]\nmethod = \"exact\"\n";
    // The statistics given publicly (noised ones are tests/secagg.rs's).
    let job = job.clone() + &oncology_reference_preprocessing(&job);
    let id = developer::submit(&mut dev, &job).await.unwrap();
    let view = tokio::time::timeout(
        Duration::from_secs(300),
        developer::wait(&mut dev, &id, false),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(view.state, "completed", "{:?}", view.error);

    // --- Refused: no token, garbage, another key's, expired, altered. ---
    let other_dir = tempfile::tempdir().unwrap();
    std::fs::write(other_dir.path().join("coordinator.sqlite"), b"").unwrap();
    let foreign = token_for(other_dir.path(), DashboardRole::Operator, "mallory");
    let short_lived = token::issue_for(
        &data_dir,
        DashboardRole::Operator,
        "ops",
        Duration::from_secs(1),
    )
    .unwrap();
    let operator = token_for(&data_dir, DashboardRole::Operator, "ops");
    let (claims, signature) = operator.rsplit_once('.').unwrap();
    let altered = format!("{claims}.{}", signature.chars().rev().collect::<String>());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refused_with: Vec<Vec<(&str, String)>> = vec![
        vec![],
        bearer("not-a-token"),
        bearer(&foreign),
        bearer(&short_lived),
        bearer(&altered),
        vec![("Cookie", format!("cohort_dashboard={foreign}"))],
    ];
    for headers in &refused_with {
        for path in [
            "/",
            "/api/jobs",
            &format!("/api/jobs/{id}"),
            "/api/ledger",
            "/nowhere",
        ] {
            let reply = get(&url, path, headers).await;
            assert_eq!(reply.status, 401, "{path} with {headers:?}");
            assert_eq!(reply.body, "unauthorized\n", "nothing leaked");
        }
    }
    assert_eq!(
        get(&url, &format!("/?token={foreign}"), &[]).await.status,
        401
    );

    let ledger_after = board.ledger().unwrap();
    assert!(ledger_after.contents.leaves.len() > ledger_before.contents.leaves.len());
    assert!(ledger_after.last_entry_at.contains_key(&id));
    assert!(Arc::ptr_eq(&ledger_after, &board.ledger().unwrap()));

    // --- An operator sees everything; the job is what the CLI prints. ---
    let auth = bearer(&operator);
    let page = get(&url, "/", &auth).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/assets/app.js"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'self'")
    );
    for asset in ["/assets/app.js", "/assets/style.css"] {
        assert_eq!(get(&url, asset, &auth).await.status, 200);
    }
    assert_eq!(get(&url, "/api/me", &auth).await.json()["role"], "operator");
    let jobs = get(&url, "/api/jobs", &auth).await.json();
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    assert_eq!(jobs[0]["job_id"], id.as_str());
    assert_eq!(jobs[0]["state"], "completed");
    assert_eq!(jobs[0]["rounds_completed"], 2);
    assert_eq!(jobs[0]["dp_level"], "record");
    assert_eq!(jobs[0]["developer"], "developer");
    assert!(jobs[0]["finished_at"].is_string());

    let detail = get(&url, &format!("/api/jobs/{id}"), &auth).await.json();
    // Through JSON text like the page's answer: serde_json's float parsing
    // can be one ulp off an f64's shortest text, so compare parsed with parsed.
    let cli: Value = serde_json::from_str(
        &serde_json::to_string(&developer::status(&mut dev, &id).await.unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        detail["status"], cli,
        "the job page shows what `cohort job status --json` prints"
    );
    let budgets = detail["privacy"]["hospitals"].as_array().unwrap();
    assert_eq!(budgets.len(), 2);
    for b in budgets {
        let spent = b["epsilon_spent"].as_f64().unwrap();
        assert!(spent > 0.0 && spent <= 4.0 + 1e-9, "{b}");
    }
    assert_eq!(detail["privacy"]["target_epsilon"], 4.0);
    let rewards = &detail["rewards"];
    assert_eq!(rewards["hospitals"].as_array().unwrap().len(), 2);
    assert_eq!(rewards["rounds"].as_array().unwrap().len(), 2);
    let model = &detail["model"];
    assert_eq!(model["round"], 2);
    assert_eq!(model["model_sha256"], cli["rounds"][1]["model_sha256"]);
    assert_eq!(model["signature"]["status"], "verified", "{model}");
    let signed_entry = model["signature"]["ledger_entry"].as_u64().unwrap();
    // Bytes on the wire: each round sent each hospital the global
    // parameters (f32) at least, and received each update at least.
    for round in cli["rounds"].as_array().unwrap() {
        let updates = round["updates"].as_array().unwrap();
        let update_values: u64 = updates
            .iter()
            .map(|u| u["parameter_count"].as_u64().unwrap())
            .sum();
        assert!(update_values > 0, "{round}");
        let sent = round["task_bytes_sent"].as_u64().unwrap();
        let received = round["answer_bytes_received"].as_u64().unwrap();
        assert!(
            sent >= 4 * update_values && sent < 40 * update_values + 100_000,
            "{sent} bytes of tasks for {update_values} values"
        );
        assert!(
            received >= 4 * update_values && received < 10 * update_values + 100_000,
            "{received} bytes of answers for {update_values} values"
        );
    }

    // --- The ledger, and inclusion proofs that check out against its
    // signed checkpoint. ---
    let ledger = get(&url, "/api/ledger", &auth).await.json();
    assert!(
        ledger["verified"].is_object(),
        "{}",
        ledger["verification_error"]
    );
    let entries = ledger["entries"].as_array().unwrap();
    let note = ledger["checkpoint"]["note"].as_str().unwrap();
    let body_end = note.find("\n\n").unwrap() + 1;
    let checkpoint = cohort_ledger::Checkpoint::parse_body(&note[..body_end]).unwrap();
    assert_eq!(checkpoint.size, entries.len() as u64);
    assert_eq!(
        entries[signed_entry as usize]["entry"]["record"]["type"],
        "round_completed"
    );
    for index in [0, signed_entry, entries.len() as u64 - 1] {
        let proof = get(&url, &format!("/api/ledger/{index}/proof"), &auth)
            .await
            .json();
        let leaf = proof["proof"]["leaf"].as_str().unwrap();
        let siblings: Vec<cohort_ledger::Hash> = proof["proof"]["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                cohort_ledger::merkle::hash_from_slice(&hex::decode(h.as_str().unwrap()).unwrap())
                    .unwrap()
            })
            .collect();
        cohort_ledger::verify_inclusion(
            &cohort_ledger::hash_leaf(leaf.as_bytes()),
            index,
            checkpoint.size,
            &siblings,
            &checkpoint.root,
        )
        .unwrap();
        // The same proof does not hold for an altered entry.
        let tampered = leaf.replacen("\"version\":1", "\"version\":2", 1);
        assert!(
            cohort_ledger::verify_inclusion(
                &cohort_ledger::hash_leaf(tampered.as_bytes()),
                index,
                checkpoint.size,
                &siblings,
                &checkpoint.root,
            )
            .is_err()
        );
    }
    let beyond = get(&url, &format!("/api/ledger/{}/proof", entries.len()), &auth).await;
    assert_eq!(beyond.status, 404);
    assert!(beyond.body.contains("there is no entry"), "{}", beyond.body);
    assert_eq!(get(&url, "/api/ledger/x/proof", &auth).await.status, 404);
    assert_eq!(
        get(&url, "/api/jobs/job-nonexistent", &auth).await.status,
        404
    );

    // --- A developer sees the jobs it submitted, no one else's. ---
    let own = bearer(&token_for(&data_dir, DashboardRole::Developer, "developer"));
    assert_eq!(
        get(&url, "/api/jobs", &own).await.json()[0]["job_id"],
        id.as_str()
    );
    assert_eq!(
        get(&url, &format!("/api/jobs/{id}"), &own).await.json()["status"],
        cli
    );
    let stranger = bearer(&token_for(
        &data_dir,
        DashboardRole::Developer,
        "someone-else",
    ));
    assert_eq!(
        get(&url, "/api/jobs", &stranger).await.json(),
        Value::Array(vec![])
    );
    let hidden = get(&url, &format!("/api/jobs/{id}"), &stranger).await;
    assert_eq!(
        hidden.status, 404,
        "another developer's job does not exist for it"
    );
    // Its ledger explorer holds the coordinator's key entry and no job's.
    let its_ledger = get(&url, "/api/ledger", &stranger).await.json();
    let its_entries = its_ledger["entries"].as_array().unwrap();
    assert_eq!(its_entries.len(), 1);
    assert_eq!(its_entries[0]["entry"]["record"]["type"], "coordinator_key");
    assert_eq!(
        get(&url, "/api/ledger/0/proof", &stranger).await.status,
        200
    );
    let refused = get(
        &url,
        &format!("/api/ledger/{signed_entry}/proof"),
        &stranger,
    )
    .await;
    assert_eq!(refused.status, 404);
    let own_ledger = get(&url, "/api/ledger", &own).await.json();
    assert_eq!(
        own_ledger["entries"].as_array().unwrap().len(),
        entries.len()
    );

    // --- A hospital sees its jobs with only its own budget and rewards. ---
    let hospital = bearer(&token_for(&data_dir, DashboardRole::Hospital, "hospital-a"));
    assert_eq!(
        get(&url, "/api/jobs", &hospital).await.json()[0]["job_id"],
        id.as_str()
    );
    let mine = get(&url, &format!("/api/jobs/{id}"), &hospital)
        .await
        .json();
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|h| h["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&mine["privacy"]["hospitals"]), ["hospital-a"]);
    assert_eq!(names(&mine["rewards"]["hospitals"]), ["hospital-a"]);
    for round in mine["rewards"]["rounds"].as_array().unwrap() {
        assert_eq!(names(&round["hospitals"]), ["hospital-a"]);
    }
    for round in mine["status"]["rounds"].as_array().unwrap() {
        for update in round["updates"].as_array().unwrap() {
            assert_eq!(update["client"], "hospital-a");
        }
    }
    let epsilons: Vec<&String> = mine["status"]["dp_epsilon"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(epsilons, ["hospital-a"]);
    // The ledger explorer: in the job's rounds hospital-a reads its own
    // receipts; the other hospitals' are sealed commitments, and the
    // whole view still verifies.
    let its_ledger = get(&url, "/api/ledger", &hospital).await.json();
    assert!(
        its_ledger["verified"]["sealed"].as_u64().unwrap() > 0,
        "{its_ledger}"
    );
    let (mut opened, mut sealed) = (0, 0);
    for entry in its_ledger["entries"].as_array().unwrap() {
        let record = &entry["entry"]["record"];
        if record["type"] == "round_completed" && record["job_id"] == id.as_str() {
            for update in record["updates"].as_array().unwrap() {
                assert_eq!(update["client"], "hospital-a", "{record}");
                opened += 1;
            }
            for part in record["sealed_updates"].as_array().into_iter().flatten() {
                assert_ne!(part["name"], "hospital-a", "{record}");
                sealed += 1;
            }
        }
    }
    assert!(opened > 0 && sealed > 0, "{opened} opened, {sealed} sealed");
    let outsider = bearer(&token_for(&data_dir, DashboardRole::Hospital, "hospital-z"));
    assert_eq!(
        get(&url, "/api/jobs", &outsider).await.json(),
        Value::Array(vec![])
    );
    assert_eq!(
        get(&url, &format!("/api/jobs/{id}"), &outsider)
            .await
            .status,
        404
    );

    // --- ?token= once: an HttpOnly cookie and a redirect without it. ---
    let login = get(&url, &format!("/?token={operator}&x=1"), &[]).await;
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), Some("/?x=1"));
    let cookie = login.header("set-cookie").unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let pair = cookie.split(';').next().unwrap().to_string();
    assert_eq!(
        get(&url, "/api/jobs", &[("Cookie", pair)]).await.json()[0]["job_id"],
        id.as_str()
    );
    let elsewhere = get(&url, &format!("//example.org/?token={operator}"), &[]).await;
    assert_eq!(elsewhere.status, 303);
    assert_eq!(
        elsewhere.header("location"),
        Some("/example.org/"),
        "never off-site"
    );

    // --- Training-split accuracy and AUC: never under DP (the job above);
    // reported and example-weighted without it. ---
    for round in cli["rounds"].as_array().unwrap() {
        assert!(round.get("train_accuracy").is_none(), "{round}");
        assert!(round.get("train_auc").is_none(), "{round}");
        assert!(round["train_loss"].is_null(), "{round}");
    }
    let plain = developer::submit(&mut dev, &oncology_job(1, 2))
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(300),
        developer::wait(&mut dev, &plain, false),
    )
    .await
    .unwrap()
    .unwrap();
    let detail = get(&url, &format!("/api/jobs/{plain}"), &auth).await.json();
    let round = &detail["status"]["rounds"][0];
    for key in ["train_accuracy", "train_auc"] {
        let value = round[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {round}"));
        assert!((0.0..=1.0).contains(&value), "{key}: {round}");
    }

    running.stop().await;
    federation.shutdown().await;
}

#[test]
fn dashboard_token_command_refuses_bad_input_and_prints_a_token_that_verifies() {
    let bin = env!("CARGO_BIN_EXE_cohort");
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let missing = run(&[
        "dashboard",
        "token",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--role",
        "operator",
        "--name",
        "ops",
    ]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not a coordinator's data directory"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    assert!(
        !dir.path().join(token::KEY_FILE).exists(),
        "no key is left behind in a directory that is not a coordinator's"
    );
    std::fs::write(dir.path().join("coordinator.sqlite"), b"").unwrap();
    let data_dir = dir.path().to_str().unwrap();
    for (args, complaint) in [
        (vec!["--role", "admin", "--name", "ops"], "admin"),
        (vec!["--role", "hospital", "--name", "a b"], "name"),
        (
            vec!["--role", "hospital", "--name", "a", "--ttl-secs", "0"],
            "--ttl-secs",
        ),
    ] {
        let out = run(&[&["dashboard", "token", "--data-dir", data_dir][..], &args].concat());
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(complaint), "{stderr}");
    }
    // A coordinator whose --dashboard address cannot be bound says so and
    // stops.
    let coordinator_dir = dir.path().join("coordinator");
    let coordinator = run(&[
        "coordinator",
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        coordinator_dir.to_str().unwrap(),
        "--dashboard",
        "not-an-address",
    ]);
    assert!(!coordinator.status.success());
    let stderr = String::from_utf8_lossy(&coordinator.stderr);
    assert!(
        stderr.contains("--dashboard: cannot listen on not-an-address"),
        "{stderr}"
    );
    let out = run(&[
        "dashboard",
        "token",
        "--data-dir",
        data_dir,
        "--role",
        "hospital",
        "--name",
        "hospital-a",
        "--ttl-secs",
        "60",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let key = token::signing_key(dir.path()).unwrap();
    let claims = token::TokenVerifier::new(key.verifying_key())
        .verify(printed.trim())
        .unwrap();
    assert_eq!(claims.role, DashboardRole::Hospital);
    assert_eq!(claims.name, "hospital-a");
    assert_eq!(claims.expires_at - claims.issued_at, 60);
}

/// One HTTP/1.1 GET over TLS to a dashboard whose server certificate the
/// consortium CA `ca` issued, presenting `client`'s certificate if given.
async fn https_get(
    addr: &str,
    ca: &rustls_pki_types::CertificateDer<'static>,
    client: Option<&Kit>,
    path: &str,
    headers: &[(&str, String)],
) -> std::io::Result<Reply> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder =
        rustls::ClientConfig::builder_with_provider(cohort_identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match client {
        Some(kit) => {
            let key =
                rustls_pki_types::PrivateKeyDer::from_pem_slice(kit.key_pem.as_bytes()).unwrap();
            builder
                .with_client_auth_cert(vec![kit.cert_der().unwrap()], key)
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket: std::net::SocketAddr = addr.parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(socket).await?;
    let name = rustls_pki_types::ServerName::IpAddress(socket.ip().into());
    let tls = connector.connect(name, tcp).await?;
    exchange(tls, addr, path, headers).await
}

/// With the coordinator's TLS the dashboard serves HTTPS with the same
/// certificate: a consortium client certificate signs its member in (a
/// hospital and a developer as themselves, the coordinator's own as
/// operator), a token still works without one, neither gets 401, and a
/// certificate of another consortium or a revoked one gets no answer at
/// all. The listener also caps connections and closes idle ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_over_https_takes_consortium_certificates_and_caps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let members = ["hospital-a".to_string()];
    let pki = LocalConsortium::provision(&dir.path().join("pki"), "dash", &members).unwrap();
    let other = LocalConsortium::provision(&dir.path().join("other"), "other", &members).unwrap();
    let data_dir = dir.path().join("coordinator");
    let mut config = cohort_coordinator::CoordinatorConfig::new(&data_dir);
    config.tls = Some(pki.coordinator_tls());
    let coordinator = cohort_coordinator::Coordinator::open(&config).unwrap();
    let running = dashboard::start_with(
        "127.0.0.1:0",
        Dashboard::open(coordinator.view(), &data_dir).unwrap(),
        config.tls.as_ref(),
        DashboardLimits::default(),
    )
    .await
    .unwrap();
    assert!(running.url.starts_with("https://"), "{}", running.url);
    let addr = host_of(&running.url);
    let ca = pki.coordinator.ca_der().unwrap();

    for (kit, role, name) in [
        (&pki.hospitals[0], "hospital", "hospital-a"),
        (&pki.developer, "developer", "developer"),
        (&pki.coordinator, "operator", "coordinator"),
    ] {
        let me = https_get(&addr, &ca, Some(kit), "/api/me", &[])
            .await
            .unwrap()
            .json();
        assert_eq!(me["role"], role, "{me}");
        assert_eq!(me["name"], name, "{me}");
        let jobs = https_get(&addr, &ca, Some(kit), "/api/jobs", &[])
            .await
            .unwrap();
        assert_eq!(jobs.json(), serde_json::json!([]));
    }
    let nothing = https_get(&addr, &ca, None, "/api/me", &[]).await.unwrap();
    assert_eq!(nothing.status, 401);
    assert_eq!(nothing.body, "unauthorized\n");
    let operator = token_for(&data_dir, DashboardRole::Operator, "ops");
    let me = https_get(&addr, &ca, None, "/api/me", &bearer(&operator))
        .await
        .unwrap()
        .json();
    assert_eq!(me["name"], "ops");
    // A forged token next to no certificate is still nothing.
    // One character of the signature changed: not the last, whose low bits
    // base64 may leave unused, and never to itself (the old `…x` ending
    // equalled the real token whenever the signature ended in `x`).
    let mut forged = operator.clone().into_bytes();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let refused = https_get(&addr, &ca, None, "/api/me", &bearer(&forged)).await;
    assert_eq!(refused.unwrap().status, 401);
    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(
        exchange(plain, &addr, "/api/me", &bearer(&operator))
            .await
            .is_err()
    );

    // Another consortium's certificate (for a member of the same name).
    let foreign = https_get(&addr, &ca, Some(&other.hospitals[0]), "/api/me", &[]).await;
    assert!(foreign.is_err(), "{:?}", foreign.map(|r| r.status));

    // Revoked: the next connection is refused.
    cohort_identity::CertificateAuthority::open(&pki.ca_dir)
        .unwrap()
        .revoke("hospital-a")
        .unwrap();
    let revoked = https_get(&addr, &ca, Some(&pki.hospitals[0]), "/api/me", &[]).await;
    assert!(revoked.is_err(), "{:?}", revoked.map(|r| r.status));
    let developer = https_get(&addr, &ca, Some(&pki.developer), "/api/me", &[])
        .await
        .unwrap();
    assert_eq!(developer.status, 200);
    running.stop().await;

    // Two slots: two idle connections take them, a third is closed
    // unread; once the idle ones time out, requests are answered again.
    let limits = DashboardLimits {
        max_connections: 2,
        idle_timeout: Duration::from_secs(1),
        ..DashboardLimits::default()
    };
    let plain = dashboard::start_with(
        "127.0.0.1:0",
        Dashboard::open(coordinator.view(), &data_dir).unwrap(),
        None,
        limits,
    )
    .await
    .unwrap();
    let addr = host_of(&plain.url);
    let idle = [
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(exchange(third, &addr, "/api/me", &[]).await.is_err());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answered = get(&plain.url, "/api/me", &bearer(&operator)).await;
    assert_eq!(answered.status, 200);
    drop(idle);
    plain.stop().await;
}

/// `cohort coordinator --insecure --dashboard` on an address beyond
/// loopback still serves, but says loudly that tokens travel in clear.
#[test]
fn plain_http_dashboard_beyond_loopback_is_warned_about() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["coordinator", "--insecure", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("coordinator"))
        .args(["--dashboard", "0.0.0.0:0"])
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(coordinator.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let warned = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("speaks plain HTTP beyond this machine") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    assert!(warned, "no warning; stderr: {seen:#?}");
}
