//! Split learning end to end: SplitFed rounds over real gRPC on loopback (the demo with
//! mutual TLS, and a hospital that sends bad activations), and vertical split learning on
//! WDBC split by columns, with its alignment by private set intersection and its label
//! leakage.

mod common;

use std::path::PathBuf;

use cohort::demo::{self, DemoOptions};
use cohort::vertical::{self, VerticalOptions};
use cohort_client::ClientConfig;
use cohort_protocol::v1::{SplitBatch, SplitOpen, SplitUp, TaskKind, split_up};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splitfed_demo_trains_wdbc_like_fedavg() {
    let dir = tempfile::tempdir().unwrap();
    let report = demo::run(DemoOptions {
        workdir: Some(dir.path().to_path_buf()),
        progress: false,
        splitfed: true,
        rounds: Some(10),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(report.mode, "splitfed");
    assert_eq!(report.transport, "mutual TLS");
    assert!(report.test_accuracy >= 0.93, "{report:#?}");
    assert!(
        (report.test_accuracy - report.baseline_accuracy).abs() <= 0.03,
        "{report:#?}"
    );
    let exchanges: Vec<&String> = report
        .events
        .iter()
        .filter(|e| e.contains("split exchange of"))
        .collect();
    assert_eq!(exchanges.len(), 10, "{:#?}", report.events);
    // The stored model is one ordinary model: bottom and top joined.
    let (card, params) = cohort_models::load_model(&report.model_dir).unwrap();
    assert_eq!(params.len(), card.model.num_parameters(30));
    assert_eq!(card.round, 10);
}

#[test]
fn splitfed_job_files_are_checked_at_submit() {
    let base = cohort::DEMO_JOB.replace("[training]", "[training]\nmode = \"splitfed\"");
    assert!(cohort_coordinator::JobSpec::from_toml(&base).is_ok());
    let logistic = base.replace("kind = \"mlp\"", "kind = \"logistic\"");
    let logistic = logistic.replace("hidden = [32, 16]", "");
    let err = cohort_coordinator::JobSpec::from_toml(&logistic).unwrap_err();
    assert!(err.to_string().contains("model.kind"), "{err}");
    let bad_cut = base.replace("hidden = [32, 16]", "hidden = [32, 16]\ncut = \"layers.2\"");
    let err = cohort_coordinator::JobSpec::from_toml(&bad_cut).unwrap_err();
    assert!(err.to_string().contains("model.cut"), "{err}");
    // The hospitals' parts may be summed securely or homomorphically, also
    // under client-level DP or valued by partition.
    for mode in ["secagg", "he"] {
        let secure = format!("{base}\n[privacy]\naggregation = \"{mode}\"\n");
        assert!(cohort_coordinator::JobSpec::from_toml(&secure).is_ok());
        let dp = format!(
            "{secure}[privacy.dp]\nlevel = \"client\"\nnoise_multiplier = 1.1\nclipping_norm = 0.5\n"
        );
        assert!(cohort_coordinator::JobSpec::from_toml(&dp).is_ok());
        let valued = format!("{secure}\n[valuation]\ngroup_size = 2\n");
        assert!(cohort_coordinator::JobSpec::from_toml(&valued).is_ok());
    }
    let huge_batch = base.replace("batch_size = 32", "batch_size = 100000");
    let err = cohort_coordinator::JobSpec::from_toml(&huge_batch).unwrap_err();
    assert!(err.to_string().contains("training.batch_size"), "{err}");
    // Record-level DP would need DP-SGD across the cut: refused, naming
    // the combination; client level is accepted (see the U-shaped test).
    let dp = |level: &str| {
        format!(
            "{base}\n[privacy.dp]\nlevel = \"{level}\"\nnoise_multiplier = 1.1\nclipping_norm = 0.5\n"
        )
    };
    let err = cohort_coordinator::JobSpec::from_toml(&dp("record"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("privacy.dp") && err.contains("splitfed") && err.contains("record"),
        "{err}"
    );
    assert!(cohort_coordinator::JobSpec::from_toml(&dp("client")).is_ok());

    // U-shaped: a SplitFed option, and the cut must leave the coordinator a
    // layer between it and the last.
    let u_shaped = base.replace(
        "mode = \"splitfed\"",
        "mode = \"splitfed\"\nu_shaped = true",
    );
    assert!(cohort_coordinator::JobSpec::from_toml(&u_shaped).is_ok());
    let federated = cohort::DEMO_JOB.replace("[training]", "[training]\nu_shaped = true");
    let err = cohort_coordinator::JobSpec::from_toml(&federated).unwrap_err();
    assert!(err.to_string().contains("training.u_shaped"), "{err}");
    let one_hidden = u_shaped.replace("hidden = [32, 16]", "hidden = [32]");
    let err = cohort_coordinator::JobSpec::from_toml(&one_hidden).unwrap_err();
    assert!(
        err.to_string().contains("training.u_shaped") && err.to_string().contains("cut"),
        "{err}"
    );
}

/// U-shaped SplitFed over real gRPC with three hospitals: the coordinator
/// runs the middle layer only; the labels and the last layer stay at the
/// hospitals. What reached the coordinator, byte for byte, is the cut's
/// activations and the head's gradients: no room for a label.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn u_shaped_splitfed_trains_with_the_labels_at_the_hospitals() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("wdbc.csv");
    std::fs::write(&csv, cohort::WDBC_CSV).unwrap();
    let report = cohort_datasets::split_file(
        &csv,
        &dir.path().join("parts"),
        &cohort_datasets::SplitOptions {
            parts: 3,
            label: Some("diagnosis".into()),
            scheme: cohort_datasets::PartitionScheme::Iid,
            test_fraction: 0.2,
            seed: 5,
        },
    )
    .unwrap();
    let test_file = report.test.unwrap().file;
    let coordinator = start_coordinator(&dir.path().join("coord")).await;
    for (i, part) in report.parts.iter().enumerate() {
        let f = &part.file;
        start_client(
            &coordinator.url,
            f,
            &format!("hospital-{i}"),
            &coordinator.stop,
        );
    }
    wait_for_clients(&coordinator.url, 3).await;
    let job = cohort::DEMO_JOB
        .replace(
            "[training]",
            "[training]\nmode = \"splitfed\"\nu_shaped = true",
        )
        .replace("rounds = 20", "rounds = 4");
    let view = submit_and_wait(&coordinator.url, &job).await;
    assert_eq!(view.state, "completed", "{view:#?}");
    assert_eq!(view.rounds_completed, 4);
    let accuracy = view.last_metrics().unwrap().accuracy;
    assert!(accuracy >= 0.9, "{view:#?}");
    // Cut after the first hidden layer (32 wide); the head takes the
    // second's 16 activations.
    let (cut_width, head_width) = (32u64, 16u64);
    let exchanges: Vec<&str> = view
        .events
        .iter()
        .map(|e| e.message.as_str())
        .filter(|m| m.contains("U-shaped split exchange of"))
        .collect();
    assert_eq!(exchanges.len(), 4, "{:#?}", view.events);
    for event in exchanges {
        let numbers: Vec<u64> = event
            .split(' ')
            .filter_map(|w| w.trim_end_matches(',').parse().ok())
            .collect();
        let (samples, up) = (numbers[0], numbers[1]);
        assert!(samples > 0, "{event}");
        assert_eq!(up, samples * (cut_width + head_width) * 4, "{event}");
        assert!(event.contains("(no labels)"), "{event}");
    }
    // The stored model is one ordinary model: bottom, middle and head.
    let mut dev =
        cohort::developer::connect(&coordinator.url, &cohort_protocol::Security::Insecure)
            .await
            .unwrap();
    let out = dir.path().join("model");
    cohort::developer::download_model(&mut dev, &view.job_id, None, &out)
        .await
        .unwrap();
    let (_, metrics) = cohort::evaluate::evaluate_file(&out, &test_file).unwrap();
    assert!(metrics.accuracy >= 0.9, "{metrics:?}");

    // The same under client-level DP: each hospital admits and records its
    // spending, the coordinator clips every whole update (the hospital's
    // part and its seat's) and noises the sum; the model's card carries the
    // guarantee, and no training loss leaves a hospital.
    let private = job.replace("rounds = 4", "rounds = 2")
        + "\n[privacy.dp]\nlevel = \"client\"\nnoise_multiplier = 1.1\nclipping_norm = 0.5\n";
    // Client-level statistics of three hospitals would drown in their
    // noise: the developer gives them publicly (here from the bundled file).
    let private = private.clone()
        + &reference_preprocessing(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/wdbc.csv"),
            &private,
        );
    let view = submit_and_wait(&coordinator.url, &private).await;
    assert_eq!(view.state, "completed", "{view:#?}");
    for round in view.rounds.iter().filter(|r| r.round > 0) {
        assert_eq!(round.participants.len(), 3, "{round:?}");
        assert!(round.train_loss.is_none_or(|l| l.is_nan()), "{round:?}");
    }
    let card = cohort::developer::download_model(&mut dev, &view.job_id, None, &out)
        .await
        .unwrap();
    let privacy = card.privacy.expect("a DP job's card states its guarantee");
    assert_eq!(privacy.level, "client");
    assert!(
        privacy.epsilon > 0.0 && privacy.hospitals.len() == 3,
        "{privacy:?}"
    );
    coordinator.stop.stop();
}

/// A hospital that prepares and evaluates honestly but, in a split round,
/// sends activations with a NaN, then an update as if it had trained.
async fn nan_activations(url: String, data: PathBuf) {
    rogue_split_batch(url, data, |width| {
        let mut activations = vec![0.5f32; 4 * width];
        activations[width + 1] = f32::NAN;
        SplitBatch {
            index: 0,
            rows: 4,
            activations: cohort_models::parameters_to_bytes(&activations),
            labels: cohort_models::parameters_to_bytes(&[0.0, 1.0, 0.0, 1.0]),
        }
    })
    .await
}

/// A hospital that prepares and evaluates honestly but, in a split round,
/// sends `batch(cut_width)` as its first batch (and expects it refused),
/// then an update as if it had trained.
async fn rogue_split_batch(url: String, data: PathBuf, batch: impl Fn(usize) -> SplitBatch) {
    let mut mallory = RogueHospital::register(&url, &data, "mallory").await;
    while let Some((header, params)) = mallory.next_task().await {
        let answer = match (&header.split, header.kind()) {
            (Some(split), TaskKind::Fit) => {
                let frames = vec![
                    SplitUp {
                        frame: Some(split_up::Frame::Open(SplitOpen {
                            session_id: mallory.session.clone(),
                            exchange_id: split.exchange_id.clone(),
                        })),
                    },
                    SplitUp {
                        frame: Some(split_up::Frame::Batch(batch(split.cut_width as usize))),
                    },
                ];
                let reply = mallory
                    .grpc
                    .split_exchange(futures::stream::iter(frames))
                    .await;
                if let Ok(reply) = reply {
                    let mut down = reply.into_inner();
                    let answer = down.message().await;
                    assert!(answer.is_err(), "a bad batch got an answer: {answer:?}");
                }
                let mut answer = cohort_client::Answer::refused("");
                answer.header.error.clear();
                answer.header.num_examples = 100;
                answer.parameters = vec![0.0; params.len()];
                answer.header.parameter_count = params.len() as u64;
                answer
            }
            _ => mallory
                .worker
                .handle(&header, cohort_client::TaskBody::Parameters(params)),
        };
        mallory.submit(&header, answer).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_sending_nan_activations_is_left_out_of_split_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("all.csv");
    synthetic_oncology_csv(&csv, 600, 21);
    let files = split(&csv, &dir.path().join("parts"), 4, 5);
    let coordinator = start_coordinator(&dir.path().join("coord")).await;
    for (i, f) in files[..3].iter().enumerate() {
        start_client(
            &coordinator.url,
            f,
            &format!("honest-{i}"),
            &coordinator.stop,
        );
    }
    let evil = tokio::spawn(nan_activations(coordinator.url.clone(), files[3].clone()));
    wait_for_clients(&coordinator.url, 4).await;
    let job = oncology_job(2, 3)
        .replace("clients_per_round = 3", "clients_per_round = 4")
        .replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [8]")
        .replace("seed = 3", "seed = 3\nmode = \"splitfed\"");
    let view = submit_and_wait(&coordinator.url, &job).await;
    assert_eq!(view.state, "completed", "{view:#?}");
    for r in &view.rounds {
        assert!(!r.participants.contains(&"mallory".to_string()), "{r:?}");
        assert_eq!(r.participants.len(), 3);
    }
    let notes: Vec<&str> = view.events.iter().map(|e| e.message.as_str()).collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("mallory") && n.contains("not finite")),
        "{notes:#?}"
    );
    coordinator.stop.stop();
    evil.abort();
}

fn wdbc_sites(dir: &std::path::Path, keep: f64) -> Vec<PathBuf> {
    vertical::write_wdbc_sites(dir, 3, keep, 11).unwrap()
}

#[test]
fn vertical_learning_aligns_by_psi_and_matches_centralized() {
    let dir = tempfile::tempdir().unwrap();
    let report = cohort_datasets::split_vertical_bytes(
        cohort::WDBC_CSV,
        dir.path(),
        &cohort_datasets::VerticalSplitOptions {
            sites: 3,
            id: "patient_id".into(),
            label: "diagnosis".into(),
            drop: Vec::new(),
            keep: 0.85,
            seed: 11,
        },
    )
    .unwrap();
    let files: Vec<PathBuf> = report.sites.iter().map(|s| s.file.clone()).collect();
    let sizes: Vec<usize> = report.sites.iter().map(|s| s.rows).collect();
    assert!(sizes.iter().all(|&n| n < 569 && n > report.common_rows));
    let plain = vertical::run(&VerticalOptions {
        epochs: 10,
        ..VerticalOptions::wdbc(files.clone())
    })
    .unwrap();
    assert_eq!(plain.intersection, report.common_rows);
    assert!(plain.validation.auc >= 0.97, "{plain:#?}");
    assert!(
        (plain.validation.auc - plain.centralized.auc).abs() <= 0.01,
        "{plain:#?}"
    );
    let defended = vertical::run(&VerticalOptions {
        epochs: 10,
        defence: Some(1.0),
        ..VerticalOptions::wdbc(files)
    })
    .unwrap();
    // Without the defence the gradients' norms say something about the labels; with it,
    // little (mean over the epochs: its noise is the label site's own randomness).
    assert!(plain.leak_auc >= 0.58, "{plain:#?}");
    assert!(defended.leak_auc <= 0.57, "{defended:#?}");
    assert!(
        defended.validation.auc >= plain.validation.auc - 0.03,
        "{defended:#?}"
    );
}

#[test]
fn vertical_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let files = wdbc_sites(dir.path(), 0.9);
    let fail = |files: Vec<PathBuf>| {
        vertical::run(&VerticalOptions {
            epochs: 1,
            ..VerticalOptions::wdbc(files)
        })
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
        .unwrap_err()
    };
    // A site without the id column.
    let no_id = dir.path().join("no_id.csv");
    let text = std::fs::read_to_string(&files[1]).unwrap();
    std::fs::write(&no_id, text.replacen("patient_id", "mrn", 1)).unwrap();
    let err = fail(vec![files[0].clone(), no_id]);
    assert!(err.contains("patient_id"), "{err}");
    // No site with the labels, or two.
    let err = fail(vec![files[1].clone(), files[2].clone()]);
    assert!(err.contains("no site file has the label column"), "{err}");
    let err = fail(vec![files[0].clone(), files[0].clone()]);
    assert!(err.contains("exactly one site"), "{err}");
    // A duplicate id at one site.
    let dup = dir.path().join("dup.csv");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines.push(lines[1].clone());
    std::fs::write(&dup, lines.join("\n")).unwrap();
    let err = fail(vec![files[0].clone(), dup]);
    assert!(err.contains("more than once"), "{err}");
    // Disjoint patients.
    let other = dir.path().join("other.csv");
    let renamed: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l.to_string()
            } else {
                format!("x{l}")
            }
        })
        .collect();
    std::fs::write(&other, renamed.join("\n")).unwrap();
    let err = fail(vec![files[0].clone(), other]);
    assert!(err.contains("no id in common"), "{err}");
}

/// A hospital that dies after training its bottom part against its seat,
/// before its update leaves: the round goes on without it (after the round
/// timeout) and the job completes.
/// A top part too large to step on the coordinator's async workers (its
/// steps go to the blocking pool) trains like a small one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wide_top_part_trains_off_the_async_workers() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("all.csv");
    synthetic_oncology_csv(&csv, 600, 29);
    let files = split(&csv, &dir.path().join("parts"), 3, 7);
    let coordinator = start_coordinator(&dir.path().join("coord")).await;
    for (i, f) in files[..3].iter().enumerate() {
        start_client(&coordinator.url, f, &format!("wide-{i}"), &coordinator.stop);
    }
    wait_for_clients(&coordinator.url, 3).await;
    // 64 → 512 → 1 above the cut: 33,793 parameters, over 2^20 per batch of 32.
    let job = oncology_job(2, 3)
        .replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [64, 512]")
        .replace("seed = 3", "seed = 3\nmode = \"splitfed\"");
    assert!(job.contains("batch_size = 32"), "{job}");
    let view = submit_and_wait(&coordinator.url, &job).await;
    assert_eq!(view.state, "completed", "{view:#?}");
    assert_eq!(view.rounds_completed, 2);
    for round in view.rounds.iter().filter(|r| r.round > 0) {
        assert_eq!(round.participants.len(), 3, "{round:?}");
        assert!(round.train_loss.is_some_and(f64::is_finite), "{round:?}");
    }
    let exchanges = view
        .events
        .iter()
        .filter(|e| e.message.contains("split exchange of"))
        .count();
    assert_eq!(exchanges, 2, "{:#?}", view.events);
    coordinator.stop.stop();
}

/// Between split jobs a hospital's exchange connection stays served: the
/// coordinator's keepalive pings are answered, so the next job's first
/// exchange does not meet a connection the coordinator closed (which would
/// cost that round an attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_exchange_connection_answers_keepalive_pings_between_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("all.csv");
    synthetic_oncology_csv(&csv, 600, 31);
    let files = split(&csv, &dir.path().join("parts"), 3, 8);
    let keepalive = std::time::Duration::from_secs(1);
    let coordinator = start_coordinator_with(&dir.path().join("coord"), |config| {
        config.wire.keepalive_interval = keepalive;
        config.wire.keepalive_timeout = keepalive;
    })
    .await;
    for (i, f) in files[..3].iter().enumerate() {
        start_client(&coordinator.url, f, &format!("idle-{i}"), &coordinator.stop);
    }
    wait_for_clients(&coordinator.url, 3).await;
    let job = oncology_job(1, 3)
        .replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [8]")
        .replace("seed = 3", "seed = 3\nmode = \"splitfed\"");
    for pass in 0..2 {
        let view = submit_and_wait(&coordinator.url, &job).await;
        assert_eq!(view.state, "completed", "pass {pass}: {view:#?}");
        for round in view.rounds.iter().filter(|r| r.round > 0) {
            assert_eq!(round.attempts, 1, "pass {pass}: {round:?}");
            assert_eq!(round.participants.len(), 3, "pass {pass}: {round:?}");
        }
        if pass == 0 {
            // Idle for several keepalive periods.
            tokio::time::sleep(keepalive * 4).await;
        }
    }
    coordinator.stop.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_vanishing_in_a_split_round_costs_the_round_not_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("all.csv");
    synthetic_oncology_csv(&csv, 600, 23);
    let files = split(&csv, &dir.path().join("parts"), 4, 6);
    let coordinator = start_coordinator(&dir.path().join("coord")).await;
    for (i, f) in files[..3].iter().enumerate() {
        start_client(
            &coordinator.url,
            f,
            &format!("steady-{i}"),
            &coordinator.stop,
        );
    }
    let config = ClientConfig {
        coordinator: coordinator.url.clone(),
        security: cohort_protocol::Security::Insecure,
        data: files[3].clone().into(),
        name: "fragile".into(),
        data_dir: None,
        options: cohort_client::ClientOptions {
            vanish_at: Some(cohort_client::VanishAt::BeforeSend),
            ..Default::default()
        },
    };
    let signal = coordinator.stop.signal();
    let fragile = tokio::spawn(async move { cohort_client::run(config, signal).await });
    wait_for_clients(&coordinator.url, 4).await;
    let job = oncology_job(2, 3)
        .replace("clients_per_round = 3", "clients_per_round = 4")
        .replace("round_timeout_secs = 60", "round_timeout_secs = 5")
        .replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [8]")
        .replace("seed = 3", "seed = 3\nmode = \"splitfed\"");
    let view = submit_and_wait(&coordinator.url, &job).await;
    assert_eq!(view.state, "completed", "{view:#?}");
    assert_eq!(view.rounds.len(), 2);
    for r in &view.rounds {
        assert!(!r.participants.contains(&"fragile".to_string()), "{r:?}");
    }
    assert!(
        fragile.await.unwrap().is_ok(),
        "the fragile client vanished cleanly"
    );
    coordinator.stop.stop();
}

/// U-shaped SplitFed with a hospital that sends its labels anyway: the
/// coordinator refuses the batch before it touches the middle, names why,
/// and the round goes on with the three others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn u_shaped_splitfed_refuses_a_batch_with_labels() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("all.csv");
    synthetic_oncology_csv(&csv, 600, 23);
    let files = split(&csv, &dir.path().join("parts"), 4, 5);
    let coordinator = start_coordinator(&dir.path().join("coord")).await;
    for (i, f) in files[..3].iter().enumerate() {
        start_client(
            &coordinator.url,
            f,
            &format!("honest-{i}"),
            &coordinator.stop,
        );
    }
    let evil = tokio::spawn(rogue_split_batch(
        coordinator.url.clone(),
        files[3].clone(),
        |width| SplitBatch {
            index: 0,
            rows: 4,
            activations: cohort_models::parameters_to_bytes(&vec![0.5f32; 4 * width]),
            labels: cohort_models::parameters_to_bytes(&[0.0, 1.0, 0.0, 1.0]),
        },
    ));
    wait_for_clients(&coordinator.url, 4).await;
    let job = oncology_job(2, 3)
        .replace("clients_per_round = 3", "clients_per_round = 4")
        .replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [8, 4]")
        .replace("seed = 3", "seed = 3\nmode = \"splitfed\"\nu_shaped = true");
    let view = submit_and_wait(&coordinator.url, &job).await;
    assert_eq!(view.state, "completed", "{view:#?}");
    for r in view.rounds.iter().filter(|r| r.round > 0) {
        assert!(!r.participants.contains(&"mallory".to_string()), "{r:?}");
        assert_eq!(r.participants.len(), 3);
    }
    let notes: Vec<&str> = view.events.iter().map(|e| e.message.as_str()).collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("mallory") && n.contains("carries labels")),
        "{notes:#?}"
    );
    coordinator.stop.stop();
    evil.abort();
}
