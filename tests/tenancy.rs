//! Tenant isolation over mutual TLS: one developer cannot read another's
//! job, model or metrics, and a hospital cannot read any job's status,
//! which is where the coordinator reports each hospital's privacy spend.
//! The refusals are PermissionDenied and name nothing of the other tenant.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cohort::pki::LocalConsortium;
use cohort_coordinator::{Coordinator, CoordinatorConfig};
use cohort_identity::{CertificateAuthority, IssueRequest, Kit, Role};
use cohort_protocol::v1::developer_service_client::DeveloperServiceClient;
use cohort_protocol::v1::{
    GetJobRequest, GetModelRequest, JobStatus, ListClientsRequest, ListJobsRequest,
    SubmitJobRequest,
};
use cohort_protocol::{Security, endpoint};
use common::*;
use tonic::transport::Channel;
use tonic::{Code, Status};

async fn developer_api(url: &str, kit: &Arc<Kit>) -> DeveloperServiceClient<Channel> {
    let channel = endpoint(url, &Security::MutualTls(kit.clone()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    DeveloperServiceClient::new(channel)
}

/// A refusal that says why and leaks none of `secrets`.
fn assert_denied<T: std::fmt::Debug>(result: Result<T, Status>, what: &str, secrets: &[&str]) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert!(!status.message().is_empty(), "{what}");
    for secret in secrets {
        assert!(
            !status.message().contains(secret),
            "{what}: the refusal names `{secret}`: {}",
            status.message()
        );
    }
}

async fn model_round(
    api: &mut DeveloperServiceClient<Channel>,
    job_id: &str,
    round: u32,
) -> Result<usize, Status> {
    let mut stream = api
        .get_model(GetModelRequest {
            job_id: job_id.to_string(),
            round,
        })
        .await?
        .into_inner();
    let mut frames = 0;
    while stream.message().await?.is_some() {
        frames += 1;
    }
    Ok(frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_read_only_their_own_jobs_models_metrics_and_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("oncology.csv");
    synthetic_oncology_csv(&csv, 400, 23);
    let files = split(&csv, &dir.path().join("parts"), 2, 9);
    let names = ["hospital-a".to_string(), "hospital-b".to_string()];
    let pki = LocalConsortium::provision(&dir.path().join("pki"), "tenancy-net", &names).unwrap();
    let mut ca = CertificateAuthority::open(&pki.ca_dir).unwrap();
    let rival = Arc::new(
        ca.issue(
            &IssueRequest::for_days(Role::Developer, "rival-lab", 30),
            &dir.path().join("pki").join("rival-lab"),
        )
        .unwrap(),
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let mut config = CoordinatorConfig::new(dir.path().join("coord"));
    config.poll_timeout = Duration::from_secs(1);
    config.tls = Some(pki.coordinator_tls());
    let coordinator = Coordinator::open(&config).unwrap();
    let stop = Stop::new();
    let signal = stop.signal();
    let server = tokio::spawn(async move { coordinator.serve(listener, signal).await.unwrap() });
    let mut clients = Vec::new();
    for (kit, file) in pki.hospitals.iter().zip(&files) {
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

    let mut owner = developer_api(&url, &pki.developer).await;
    let mut other = developer_api(&url, &rival).await;
    for _ in 0..300 {
        let listed = owner.list_clients(ListClientsRequest {}).await.unwrap();
        if listed
            .into_inner()
            .clients
            .iter()
            .filter(|c| c.connected)
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The owner's job trains under client-level differential privacy, so
    // its status carries each hospital's privacy spend.
    let job_name = "private-recurrence-study";
    let job = oncology_job(1, 2).replace("recurrence-logistic", job_name)
        + "\n[privacy.dp]\nlevel = \"client\"\ntarget_epsilon = 4.0\ndelta = 1e-5\n";
    let job = job.clone() + &oncology_reference_preprocessing(&job);
    let job_id = owner
        .submit_job(SubmitJobRequest { job_toml: job })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let done: JobStatus = loop {
        let status = owner
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
    // What the owner may see and the others must not.
    let spends: Vec<f64> = done
        .rounds
        .iter()
        .flat_map(|r| r.updates.iter().map(|u| u.dp_epsilon))
        .collect();
    assert!(
        !spends.is_empty() && spends.iter().all(|e| *e > 0.0),
        "{done:?}"
    );
    assert!(model_round(&mut owner, &job_id, 0).await.unwrap() > 0);
    assert!(model_round(&mut owner, &job_id, 1).await.unwrap() > 0);
    let owner_jobs = owner.list_jobs(ListJobsRequest {}).await.unwrap();
    assert_eq!(owner_jobs.into_inner().jobs.len(), 1);

    // Another developer: no status, no metrics, no model of any round, and
    // an empty job list; the refusals name neither the owner nor the job.
    let secrets = ["developer`", job_name, "hospital-a", "hospital-b"];
    assert_denied(
        other
            .get_job(GetJobRequest {
                job_id: job_id.clone(),
                ..Default::default()
            })
            .await,
        "another developer's GetJob",
        &secrets,
    );
    for round in [0, 1] {
        assert_denied(
            model_round(&mut other, &job_id, round).await,
            "another developer's GetModel",
            &secrets,
        );
    }
    let visible = other.list_jobs(ListJobsRequest {}).await.unwrap();
    assert!(visible.into_inner().jobs.is_empty());
    // The rival's own job is invisible to the owner in turn.
    let rival_job = other
        .submit_job(SubmitJobRequest {
            job_toml: oncology_job(1, 2).replace("recurrence-logistic", "rival-study"),
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    assert_denied(
        owner
            .get_job(GetJobRequest {
                job_id: rival_job.clone(),
                ..Default::default()
            })
            .await,
        "the owner reading the rival's job",
        &["rival-lab", "rival-study"],
    );
    let owner_jobs = owner.list_jobs(ListJobsRequest {}).await.unwrap();
    let ids: Vec<String> = owner_jobs
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(ids, std::slice::from_ref(&job_id));

    // A hospital reads no job status (where the others' spend is) and no
    // model, not even of a job it trained.
    let mut hospital_b = developer_api(&url, &pki.hospitals[1]).await;
    assert_denied(
        hospital_b
            .get_job(GetJobRequest {
                job_id: job_id.clone(),
                ..Default::default()
            })
            .await,
        "a hospital's GetJob",
        &["hospital-a", job_name],
    );
    assert_denied(
        hospital_b.list_jobs(ListJobsRequest {}).await,
        "a hospital's ListJobs",
        &["hospital-a", job_name],
    );
    assert_denied(
        model_round(&mut hospital_b, &job_id, 1).await,
        "a hospital's GetModel",
        &["hospital-a", job_name],
    );

    // The ledger: each developer reads its own jobs' entries and those of
    // no job; the rest come as leaf hashes only, and every view still
    // verifies against the one signed root. A hospital reads the entries
    // of the jobs it is enrolled in.
    let owner_view = cohort::audit::fetch_ledger(&mut owner).await.unwrap();
    let rival_view = cohort::audit::fetch_ledger(&mut other).await.unwrap();
    let hospital_view = cohort::audit::fetch_ledger(&mut hospital_b).await.unwrap();
    let jobs_read = |view: &cohort_coordinator::store::LedgerContents| {
        cohort::audit::entries_in(view, None)
            .unwrap()
            .into_iter()
            .filter_map(|(_, e)| e.record.job_id().map(str::to_owned))
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(jobs_read(&owner_view).contains(&job_id));
    assert!(!jobs_read(&owner_view).contains(&rival_job));
    assert!(jobs_read(&rival_view).contains(&rival_job));
    assert!(!jobs_read(&rival_view).contains(&job_id));
    assert!(jobs_read(&hospital_view).contains(&job_id));
    let owner_entries = owner_view
        .leaves
        .iter()
        .enumerate()
        .filter(|(i, leaf)| {
            !owner_view.withheld.contains_key(&(*i as u64))
                && cohort_ledger::Entry::from_leaf(leaf)
                    .unwrap()
                    .record
                    .job_id()
                    == Some(job_id.as_str())
        })
        .count();
    assert!(owner_entries >= 3, "job created, enrolled, rounds");
    for (i, leaf) in rival_view.readable() {
        let text = String::from_utf8_lossy(leaf);
        assert!(
            !text.contains(&job_id),
            "entry {i} of the owner's job reached the rival: {text}"
        );
    }
    assert!(rival_view.withheld.len() >= owner_entries);

    // Within the job: hospital-b reads its own receipts and ε and its own
    // row count; hospital-a's parts are commitments it cannot open, and
    // the leaves it was sent hold none of them.
    let sealed_to_b = hospital_parts(&hospital_view, &job_id);
    assert!(
        sealed_to_b.len() >= 2 && sealed_to_b.iter().all(|p| p.name == "hospital-b"),
        "{sealed_to_b:?}"
    );
    assert!(
        sealed_to_b
            .iter()
            .any(|p| p.epsilon.is_some_and(|e| e > 0.0)),
        "hospital-b's own ε is open to it: {sealed_to_b:?}"
    );
    for (i, leaf) in hospital_view.readable() {
        let text = String::from_utf8_lossy(leaf);
        for secret in ["dp_epsilon", "num_examples", "\"rows\""] {
            assert!(
                !text.contains(secret),
                "entry {i} carries {secret} in the open: {text}"
            );
        }
    }
    let sealed_names: Vec<String> = cohort::audit::entries_in(&hospital_view, Some(&job_id))
        .unwrap()
        .into_iter()
        .flat_map(|(_, e)| match e.record {
            cohort_ledger::Record::RoundCompleted { sealed_updates, .. } => sealed_updates,
            cohort_ledger::Record::ClientsEnrolled {
                sealed_participants,
                ..
            } => sealed_participants,
            _ => Vec::new(),
        })
        .map(|p| p.name)
        .collect();
    assert!(
        !sealed_names.is_empty() && sealed_names.iter().all(|n| n == "hospital-a"),
        "{sealed_names:?}"
    );
    // The owner opens every hospital's part of its job.
    let owner_parts = hospital_parts(&owner_view, &job_id);
    for hospital in ["hospital-a", "hospital-b"] {
        assert!(
            owner_parts
                .iter()
                .any(|p| p.name == hospital && p.epsilon.is_some()),
            "{owner_parts:?}"
        );
    }
    // An opening that is not the one committed to (hospital-b's ε
    // altered on the way) fails the audit.
    let mut forged = hospital_view.clone();
    let opening = forged
        .openings
        .values_mut()
        .flatten()
        .find(|o| o.body.contains("dp_epsilon"))
        .expect("hospital-b was sent the opening of its receipt");
    opening.body = opening
        .body
        .replace("\"dp_epsilon\":\"", "\"dp_epsilon\":\"9");
    let err = cohort::audit::verify_contents(forged, &dir.path().join("seen-forged.json"))
        .expect_err("a forged opening verifies");
    assert!(format!("{err:#}").contains("does not match"), "{err:#}");

    for (name, view) in [
        ("owner", owner_view),
        ("rival", rival_view),
        ("hospital", hospital_view),
    ] {
        let withheld = view.withheld.len() as u64;
        let state = dir.path().join(format!("seen-{name}.json"));
        let report = cohort::audit::verify_contents(view, &state)
            .unwrap_or_else(|e| panic!("the {name}'s view does not verify: {e:#}"));
        assert_eq!(report.withheld, withheld, "{name}");
        match name {
            "hospital" => assert!(report.opened > 0 && report.sealed > 0, "{report:?}"),
            "owner" => assert!(report.opened > 0 && report.sealed == 0, "{report:?}"),
            _ => {}
        }
    }

    stop.stop();
    for c in clients {
        c.await.unwrap();
    }
    server.await.unwrap();
}

/// One hospital's part of a job's entries as a reader sees it opened.
#[derive(Debug)]
struct OpenPart {
    name: String,
    epsilon: Option<f64>,
}

/// The hospitals' parts of `job_id`'s entries that `view` opens: update
/// receipts (with their ε) and enrolment counts.
fn hospital_parts(view: &cohort_coordinator::store::LedgerContents, job_id: &str) -> Vec<OpenPart> {
    cohort::audit::entries_in(view, Some(job_id))
        .unwrap()
        .into_iter()
        .flat_map(|(_, e)| match e.record {
            cohort_ledger::Record::RoundCompleted { updates, .. } => updates
                .iter()
                .map(|u| OpenPart {
                    name: u.client.clone(),
                    epsilon: u.epsilon(),
                })
                .collect(),
            cohort_ledger::Record::ClientsEnrolled { participants, .. } => participants
                .into_iter()
                .map(|c| OpenPart {
                    name: c.name,
                    epsilon: None,
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}
