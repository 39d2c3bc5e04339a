//! Consortium identity on loopback: a coordinator serving mutual TLS
//! rejects every kind of impostor with a clear status and a log line, while
//! correct hospitals keep training.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cohort::pki::LocalConsortium;
use cohort_coordinator::{Coordinator, CoordinatorConfig};
use cohort_identity::{CertificateAuthority, IssueRequest, Kit, Role};
use cohort_protocol::v1::developer_service_client::DeveloperServiceClient;
use cohort_protocol::v1::hospital_service_client::HospitalServiceClient;
use cohort_protocol::v1::{
    GetJobRequest, ListClientsRequest, ListJobsRequest, PullTaskRequest, RegisterRequest,
    SubmitJobRequest,
};
use cohort_protocol::{PROTOCOL_VERSION, Security, endpoint};
use common::*;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Everything the coordinator logs in this test binary.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn install() -> Self {
        let log = CapturedLog::default();
        let writer = log.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        log
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until the log holds a line containing all of `needles`.
    async fn wait_for(&self, needles: &[&str]) -> String {
        for _ in 0..100 {
            if let Some(line) = self
                .text()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.to_string();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no log line with {needles:?} in:\n{}", self.text());
    }
}

async fn channel(url: &str, kit: &Arc<Kit>) -> Result<Channel, Status> {
    endpoint(url, &Security::MutualTls(kit.clone()))
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("{e:?}")))
}

async fn register(url: &str, kit: &Arc<Kit>, claimed: &str) -> Result<String, Status> {
    let mut grpc = HospitalServiceClient::new(channel(url, kit).await?);
    register_on(&mut grpc, claimed, String::from("{}")).await
}

async fn register_on(
    grpc: &mut HospitalServiceClient<Channel>,
    claimed: &str,
    summary: String,
) -> Result<String, Status> {
    let summary = if summary == "{}" {
        r#"{"rows":10,"columns":[],"duplicate_rows":0,"constant_columns":[]}"#.to_string()
    } else {
        summary
    };
    grpc.register(RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        client_name: claimed.to_string(),
        quality_summary_json: summary,
        client_version: "test".into(),
    })
    .await
    .map(|r| r.into_inner().session_id)
}

fn expect(result: Result<impl std::fmt::Debug, Status>, code: Code, text: &str) -> Status {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(text), "{status:?}");
    status
}

fn expect_refused_handshake(result: Result<impl std::fmt::Debug, Status>) {
    let status = result.expect_err("the connection should have been refused");
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_rejects_impostors_while_correct_clients_keep_training() {
    let log = CapturedLog::install();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 600, 31);
    let files = split(&csv, &dir.path().join("parts"), 2, 3);

    let names: Vec<String> = ["hospital-a", "hospital-b", "hospital-c"]
        .map(String::from)
        .to_vec();
    let pki = LocalConsortium::provision(&dir.path().join("pki"), "test-net", &names).unwrap();
    let mut ca = CertificateAuthority::open(&pki.ca_dir).unwrap();
    let issue = |ca: &mut CertificateAuthority, request: IssueRequest| {
        let out = dir.path().join("pki").join(&request.name);
        Arc::new(ca.issue(&request, &out).unwrap())
    };
    let validator = issue(
        &mut ca,
        IssueRequest::for_days(Role::Validator, "auditor", 30),
    );
    let other_developer = issue(
        &mut ca,
        IssueRequest::for_days(Role::Developer, "developer-2", 30),
    );
    let mut old = IssueRequest::for_days(Role::Hospital, "hospital-old", 30);
    old.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    old.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = issue(&mut ca, old);
    let mut rogue_ca =
        CertificateAuthority::init("rogue-net", &dir.path().join("rogue-ca")).unwrap();
    let mut rogue = rogue_ca
        .issue(
            &IssueRequest::for_days(Role::Hospital, "hospital-a", 30),
            &dir.path().join("rogue"),
        )
        .unwrap();
    // The consortium's root is public: the impostor trusts the real
    // coordinator and presents its own certificate.
    rogue.ca_pem = pki.coordinator.ca_pem.clone();
    let rogue = Arc::new(rogue);
    let [hospital_a, hospital_b, hospital_c] = [0, 1, 2].map(|i| pki.hospitals[i].clone());

    // The coordinator, serving mutual TLS and watching the CA's CRL file.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let mut config = CoordinatorConfig::new(dir.path().join("coord"));
    config.poll_timeout = Duration::from_secs(1);
    config.tls = Some(pki.coordinator_tls());
    let coordinator = Coordinator::open(&config).unwrap();
    let stop = Stop::new();
    let signal = stop.signal();
    let server = tokio::spawn(async move { coordinator.serve(listener, signal).await.unwrap() });

    // Two correct hospitals.
    let mut clients = Vec::new();
    for (kit, file) in [&hospital_a, &hospital_b].into_iter().zip(&files) {
        let config = cohort_client::ClientConfig {
            coordinator: url.clone(),
            security: Security::MutualTls(kit.clone()),
            data: file.clone().into(),
            name: kit.principal.name.clone(),
            data_dir: None,
            options: cohort_client::ClientOptions::default(),
        };
        let signal = stop.signal();
        clients.push(tokio::spawn(async move {
            cohort_client::run(config, signal).await.unwrap()
        }));
    }
    let mut developer = DeveloperServiceClient::new(channel(&url, &pki.developer).await.unwrap());
    for _ in 0..200 {
        let connected = developer
            .list_clients(ListClientsRequest {})
            .await
            .unwrap()
            .into_inner()
            .clients
            .iter()
            .filter(|c| c.connected)
            .count();
        if connected == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A certificate from another CA, even with a consortium member's name.
    expect_refused_handshake(register(&url, &rogue, "hospital-a").await);
    log.wait_for(&["TLS handshake rejected", "UnknownIssuer"])
        .await;

    // An expired certificate.
    expect_refused_handshake(register(&url, &expired, "hospital-old").await);
    let line = log.wait_for(&["TLS handshake rejected", "expired"]).await;
    assert!(line.contains("peer="), "{line}");

    // Roles: a hospital cannot act as a developer, and the reverse.
    let mut as_hospital = DeveloperServiceClient::new(channel(&url, &hospital_c).await.unwrap());
    let job = oncology_job(3, 2);
    expect(
        as_hospital
            .submit_job(SubmitJobRequest {
                job_toml: job.clone(),
            })
            .await,
        Code::PermissionDenied,
        "hospital `hospital-c` may not call SubmitJob",
    );
    expect(
        as_hospital.list_jobs(ListJobsRequest {}).await,
        Code::PermissionDenied,
        "may not call ListJobs",
    );
    expect(
        register(&url, &pki.developer, "developer").await,
        Code::PermissionDenied,
        "developer `developer` may not call Register",
    );
    log.wait_for(&["call rejected", "PermissionDenied", "Register"])
        .await;
    let mut as_validator = DeveloperServiceClient::new(channel(&url, &validator).await.unwrap());
    expect(
        as_validator
            .submit_job(SubmitJobRequest {
                job_toml: job.clone(),
            })
            .await,
        Code::PermissionDenied,
        "validator `auditor` may not call SubmitJob",
    );

    // A hospital claiming another hospital's name.
    expect(
        register(&url, &hospital_c, "hospital-a").await,
        Code::PermissionDenied,
        "the certificate names hospital `hospital-c`, but the registration claims `hospital-a`",
    );

    // A message over the size limit.
    let mut big = HospitalServiceClient::new(channel(&url, &hospital_c).await.unwrap())
        .max_encoding_message_size(64 << 20);
    let oversized = format!(
        r#"{{"rows":1,"columns":[],"duplicate_rows":0,"constant_columns":[],"pad":"{}"}}"#,
        "x".repeat(9 << 20)
    );
    let status = register_on(&mut big, "hospital-c", oversized)
        .await
        .expect_err("an oversized message must be refused");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    log.wait_for(&["call rejected", "Register", "too large"])
        .await;

    // Revocation while the coordinator runs: hospital-c holds a session on
    // an open connection, then the operator revokes it.
    let mut hospital_c_grpc = HospitalServiceClient::new(channel(&url, &hospital_c).await.unwrap());
    let session = register_on(&mut hospital_c_grpc, "hospital-c", "{}".into())
        .await
        .unwrap();
    ca.revoke("hospital-c").unwrap();
    log.wait_for(&["revocation list reloaded", "revoked=1"])
        .await;
    log.wait_for(&["sessions of revoked members ended", "hospital-c"])
        .await;
    expect(
        hospital_c_grpc
            .pull_task(PullTaskRequest {
                session_id: session.clone(),
            })
            .await,
        Code::Unauthenticated,
        "the certificate of hospital `hospital-c`",
    );
    log.wait_for(&["call rejected", "PullTask", "revoked"])
        .await;
    expect_refused_handshake(register(&url, &hospital_c, "hospital-c").await);
    log.wait_for(&["TLS handshake rejected", "Revoked"]).await;
    // The hospital's own client stops with the reason instead of retrying
    // forever with a dead kit.
    let revoked_client = cohort_client::run(
        cohort_client::ClientConfig {
            coordinator: url.clone(),
            security: Security::MutualTls(hospital_c.clone()),
            data: files[0].clone().into(),
            name: "hospital-c".into(),
            data_dir: None,
            options: cohort_client::ClientOptions::default(),
        },
        std::future::pending(),
    );
    let err = tokio::time::timeout(Duration::from_secs(30), revoked_client)
        .await
        .expect("a revoked client gives up")
        .unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");

    // Meanwhile the correct hospitals train a whole job, and only the
    // developer who submitted it (and validators) may read it.
    let job_id = developer
        .submit_job(SubmitJobRequest { job_toml: job })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let mut other = DeveloperServiceClient::new(channel(&url, &other_developer).await.unwrap());
    expect(
        other
            .get_job(GetJobRequest {
                job_id: job_id.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "submitted by another developer",
    );
    assert!(
        other
            .list_jobs(ListJobsRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs
            .is_empty()
    );
    let done = loop {
        let status = as_validator
            .get_job(GetJobRequest {
                job_id: job_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if status.state != "running" && status.state != "pending" {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done.state, "completed", "{done:?}");
    assert_eq!(done.rounds_completed, 3);
    let mut participants = done.participants.clone();
    participants.sort();
    assert_eq!(participants, ["hospital-a", "hospital-b"]);
    // Every update carried its hospital's signature, and each one verified.
    assert!(!log.text().contains("answer rejected"), "{}", log.text());
    // The job keeps a receipt of every aggregated update that anyone holding
    // the hospitals' certificates can check.
    for round in &done.rounds {
        assert_eq!(round.updates.len(), 2, "{round:?}");
        for receipt in &round.updates {
            let kit = if receipt.client == "hospital-a" {
                &hospital_a
            } else {
                &hospital_b
            };
            let statement = cohort_protocol::update_statement(
                &job_id,
                round.round,
                &receipt.task_id,
                receipt.num_examples,
                receipt.parameter_count,
                &receipt.update_sha256,
                &receipt.dataset_sha256,
            );
            let signer = cohort_identity::Principal::from_certificate(&kit.cert_der().unwrap())
                .unwrap()
                .signing_key;
            signer
                .verify(
                    cohort_protocol::UPDATE_SIGNATURE_CONTEXT,
                    &statement,
                    &receipt.signature,
                )
                .unwrap();
        }
    }

    // A validator audits the running coordinator's ledger over mutual TLS.
    let contents = cohort::audit::fetch_ledger(&mut as_validator)
        .await
        .unwrap();
    let report = cohort::audit::verify_contents(contents, &dir.path().join("seen.json")).unwrap();
    // Coordinator key, job created, enrollment, rounds 0..=3.
    assert_eq!(report.entries, 7);
    assert_eq!(report.origin, "test-net/coordinator");

    stop.stop();
    for c in clients {
        c.await.unwrap();
    }
    server.await.unwrap();
}
