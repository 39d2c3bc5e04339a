//! Secure aggregation and threshold homomorphic aggregation end to end: a
//! coordinator and five hospitals in this process over mutual TLS on
//! loopback. Hospitals keep their own copy of
//! each encoded update they contributed (`--keep-contributions`), so the
//! test computes, from the hospitals' side, the sum the coordinator should
//! have recovered and compares it with the digest the coordinator recorded.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cohort::developer::{self, JobView, RoundView};
use cohort::local::{LocalFederation, LocalHospital};
use cohort_client::{ClientOptions, VanishAt};
use cohort_privacy::quantize::{Quantizer, add_mod, pack, unpack};
use common::*;
use sha2::Digest as _;

const BITS: u32 = 32;

/// The oncology job with `[privacy]` appended; stage timeouts short so a
/// vanished hospital costs seconds.
fn job(rounds: u32, min_clients: u32, privacy: &str) -> String {
    let job = oncology_job(rounds, 5)
        .replace("min_clients = 5", &format!("min_clients = {min_clients}"))
        .replace("round_timeout_secs = 60", "round_timeout_secs = 4")
        + privacy;
    // Client-level DP statistics weigh each hospital once: five hospitals'
    // would drown in the noise, so the developer gives them publicly.
    if privacy.contains("level = \"client\"") {
        let reference = oncology_reference_preprocessing(&job);
        job + &reference
    } else {
        job
    }
}

const SECAGG: &str = "\n[privacy]\naggregation = \"secagg\"\nsecagg = { threshold = 0.66 }\n";

const HE: &str = "\n[privacy]\naggregation = \"he\"\nhe = { threshold = 0.66 }\n";

/// Five hospitals' shares of a synthetic table; the test split is unused.
fn hospitals(dir: &Path, vanish: &[(usize, VanishAt)]) -> Vec<LocalHospital> {
    let csv = dir.join("oncology.csv");
    synthetic_oncology_csv(&csv, 1500, 31);
    let files = split(&csv, &dir.join("parts"), 5, 9);
    files[..5]
        .iter()
        .enumerate()
        .map(|(i, file)| LocalHospital {
            name: format!("hospital-{i}"),
            data: file.clone(),
            options: ClientOptions {
                require_secure_aggregation: false,
                keep_contributions: true,
                vanish_at: vanish.iter().find(|(h, _)| *h == i).map(|(_, s)| *s),
                ..Default::default()
            },
        })
        .collect()
}

async fn run_job(dir: &Path, hospitals: &[LocalHospital], job_toml: &str) -> JobView {
    run_job_and_fetch(dir, hospitals, job_toml, false).await.0
}

/// [`run_job`], and with `fetch` the model card of the finished job.
async fn run_job_and_fetch(
    dir: &Path,
    hospitals: &[LocalHospital],
    job_toml: &str,
    fetch: bool,
) -> (JobView, Option<cohort_models::ModelCard>) {
    let federation = LocalFederation::start(dir, hospitals, true, Duration::from_secs(1))
        .await
        .unwrap();
    let mut dev = federation.developer().await.unwrap();
    // Enroll every hospital: preparation starts as soon as min_clients are in.
    for _ in 0..300 {
        let clients = dev
            .list_clients(cohort_protocol::v1::ListClientsRequest {})
            .await
            .unwrap()
            .into_inner()
            .clients;
        if clients.iter().filter(|c| c.connected).count() == hospitals.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = developer::submit(&mut dev, job_toml).await.unwrap();
    let view = tokio::time::timeout(
        Duration::from_secs(600),
        developer::wait(&mut dev, &id, false),
    )
    .await
    .expect("job did not finish in time")
    .unwrap();
    let card = match fetch && view.state == "completed" {
        true => Some(
            developer::download_model(&mut dev, &id, None, &dir.join("model"))
                .await
                .unwrap(),
        ),
        false => None,
    };
    federation.shutdown().await;
    (view, card)
}

/// The contribution a hospital kept for one round attempt.
fn contribution(dir: &Path, client: &str, job: &str, round: u32, attempt: u32) -> PathBuf {
    dir.join("clients")
        .join(client)
        .join("contributions")
        .join(format!("{job}-round{round:05}-attempt{attempt}.bits{BITS}"))
}

/// SHA-256 of the sum of the round's survivors' encoded updates, computed
/// from the hospitals' own copies.
fn survivors_sum_sha256(dir: &Path, job: &str, round: &RoundView) -> String {
    let mut sum: Option<Vec<u64>> = None;
    for client in &round.participants {
        let path = contribution(dir, client, job, round.round, round.attempts);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let values = unpack(&bytes, BITS, bytes.len() / 4).unwrap();
        match &mut sum {
            None => sum = Some(values),
            Some(acc) => add_mod(acc, &values, BITS),
        }
    }
    hex::encode(sha2::Sha256::digest(pack(&sum.unwrap(), BITS)))
}

fn assert_exact_sums(dir: &Path, view: &JobView) {
    assert_eq!(view.state, "completed", "{view:#?}");
    for round in &view.rounds {
        assert_eq!(
            round.aggregate_sha256.as_deref(),
            Some(survivors_sum_sha256(dir, &view.job_id, round).as_str()),
            "round {}: the coordinator's sum is not the survivors' sum",
            round.round
        );
    }
}

fn accuracy(view: &JobView) -> f64 {
    view.rounds
        .last()
        .unwrap()
        .metrics
        .as_ref()
        .unwrap()
        .accuracy
}

fn names(round: &RoundView) -> Vec<&str> {
    round.participants.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secure_aggregation_trains_within_a_point_of_plain_mode() {
    let secure = trains_within_a_point_of_plain_mode(SECAGG).await;
    assert!(secure.rounds.iter().all(|r| r.aggregate_sha256.is_some()));
}

/// The same five-hospital job and seed in plain mode and under `privacy`:
/// exact sums every round, in the first attempt, receipts signed and of
/// protected vectors, and validation accuracy within one point.
async fn trains_within_a_point_of_plain_mode(privacy: &str) -> JobView {
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = run_job(
        plain_dir.path(),
        &hospitals(plain_dir.path(), &[]),
        &job(5, 5, ""),
    )
    .await;
    assert!(plain.rounds.iter().all(|r| r.aggregate_sha256.is_none()));
    let dir = tempfile::tempdir().unwrap();
    let protected = run_job(dir.path(), &hospitals(dir.path(), &[]), &job(5, 5, privacy)).await;
    assert_exact_sums(dir.path(), &protected);
    assert_eq!(protected.rounds.len(), 5);
    for round in &protected.rounds {
        assert_eq!(round.participants.len(), 5);
        assert_eq!(round.attempts, 1);
        for update in &round.updates {
            assert!(!update.signature.is_empty());
            assert_eq!(update.num_examples, 0, "the weight travels protected");
        }
    }
    let (a, b) = (accuracy(&plain), accuracy(&protected));
    eprintln!("validation accuracy after 5 rounds: plain {a:.4}, protected {b:.4}");
    assert!((a - b).abs() <= 0.01, "plain accuracy {a}, protected {b}");
    protected
}

/// One hospital vanishes at `stage`; the round still completes, in its
/// first attempt, with exactly the sum of the survivors' updates.
async fn one_hospital_vanishes_at(stage: VanishAt) -> (tempfile::TempDir, JobView) {
    let dir = tempfile::tempdir().unwrap();
    let view = run_job(
        dir.path(),
        &hospitals(dir.path(), &[(2, stage)]),
        &job(1, 3, SECAGG),
    )
    .await;
    assert_exact_sums(dir.path(), &view);
    assert_eq!(view.rounds[0].attempts, 1, "{view:#?}");
    (dir, view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_vanishing_before_advertising_keys_is_left_out() {
    let (_dir, view) = one_hospital_vanishes_at(VanishAt::Advertise).await;
    assert_eq!(
        names(&view.rounds[0]),
        ["hospital-0", "hospital-1", "hospital-3", "hospital-4"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_vanishing_after_advertising_keys_is_left_out() {
    let (_dir, view) = one_hospital_vanishes_at(VanishAt::Share).await;
    assert_eq!(view.rounds[0].participants.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_vanishing_after_sharing_keys_has_its_masks_removed() {
    let (_dir, view) = one_hospital_vanishes_at(VanishAt::MaskedFit).await;
    assert_eq!(view.rounds[0].participants.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_vanishing_during_unmasking_still_counts() {
    let (_dir, view) = one_hospital_vanishes_at(VanishAt::Unmask).await;
    // It sent its masked update: its contribution is in the sum.
    assert_eq!(view.rounds[0].participants.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_few_survivors_abort_the_attempt_and_the_round_is_retried() {
    for stage in [VanishAt::Share, VanishAt::Unmask] {
        let dir = tempfile::tempdir().unwrap();
        // Two of five vanish: 0.66 of 5 needs 4.
        let view = run_job(
            dir.path(),
            &hospitals(dir.path(), &[(1, stage), (3, stage)]),
            &job(1, 3, SECAGG),
        )
        .await;
        assert_exact_sums(dir.path(), &view);
        let round = &view.rounds[0];
        assert!(round.attempts >= 2, "{stage:?}: {view:#?}");
        assert_eq!(
            names(round),
            ["hospital-0", "hospital-2", "hospital-4"],
            "{stage:?}"
        );
        let aborted = match stage {
            VanishAt::Unmask => "could not recover the sum",
            _ => "abandoning the attempt",
        };
        assert!(
            view.events.iter().any(|e| e.message.contains(aborted)),
            "{stage:?}: {:#?}",
            view.events
        );
    }
}

/// Client-level DP: noise multiplier 2, each hospital's update clipped to
/// 0.5.
const CLIENT_DP: &str = "\n[privacy.dp]\nlevel = \"client\"\nnoise_multiplier = 2.0\nclipping_norm = 0.5\ndelta = 1e-5\n";

fn expected_client_level_epsilon(rounds: u64) -> f64 {
    use cohort_privacy::dp::{self, AccountantKind, Segment};
    let segment = Segment::new(1.0, 2.0, rounds).unwrap();
    dp::epsilon(AccountantKind::Pld, &[segment], 1e-5)
        .unwrap()
        .epsilon
}

/// Distributed DP: every hospital adds its share of discrete Gaussian noise
/// to its encoded update before masking. The coordinator still recovers
/// exactly the sum of what the hospitals contributed (noise included), each
/// contribution is far longer than the clipping bound allows a noiseless
/// one to be, weights are uniform, and every hospital reports the
/// client-level epsilon of the rounds it took part in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_dp_noise_is_added_by_the_hospitals_under_secure_aggregation() {
    let (params, _) = cohort_privacy::secagg::Params::from_fractions(5, 8, 0.66, BITS).unwrap();
    hospitals_add_the_noise(SECAGG, params.min_survivors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_dp_noise_is_added_by_the_hospitals_before_encryption() {
    // Any 4 of the 5 decrypt (0.66 of 5, rounded up).
    hospitals_add_the_noise(HE, 4).await;
}

/// Every contribution the hospitals kept weighs 1 (client level) and is
/// far longer than `quantizer`'s clipping bound allows a noiseless one to
/// be: each hospital added its share of the noise.
fn assert_noisy_contributions(dir: &Path, view: &JobView, quantizer: &Quantizer) {
    let mut norms = Vec::new();
    for round in &view.rounds {
        for client in &round.participants {
            let path = contribution(dir, client, &view.job_id, round.round, round.attempts);
            let bytes = std::fs::read(path).unwrap();
            let values = unpack(&bytes, BITS, bytes.len() / 4).unwrap();
            let (&count, coords) = values.split_last().unwrap();
            assert_eq!(count, 1, "client-level DP weighs hospitals equally");
            let norm = coords
                .iter()
                .map(|&v| (v as u32 as i32 as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            norms.push(norm / (quantizer.scale() * quantizer.clip()));
        }
    }
    let mean = norms.iter().sum::<f64>() / norms.len() as f64;
    assert!(mean > 2.0, "contributions look noiseless: {norms:?}");
}

/// Client-level DP under a mode where the coordinator only learns the sum:
/// every contribution the hospitals kept carries its share of the noise,
/// sized for `min_survivors`, and the sums are exact.
async fn hospitals_add_the_noise(privacy: &str, min_survivors: u32) {
    let dir = tempfile::tempdir().unwrap();
    let view = run_job(
        dir.path(),
        &hospitals(dir.path(), &[]),
        &job(3, 5, &(privacy.to_string() + CLIENT_DP)),
    )
    .await;
    assert_exact_sums(dir.path(), &view);
    // The quantizer as the coordinator built it for five hospitals with
    // room for the noise.
    let q = cohort_privacy::distributed::quantizer(0.5, BITS, 5, 2.0, min_survivors, 1).unwrap();
    assert_noisy_contributions(dir.path(), &view, &q);
    let expected = expected_client_level_epsilon(3);
    for (name, eps) in &view.dp_epsilon {
        assert!((eps - expected).abs() < 1e-9, "{name}: {eps} vs {expected}");
    }
    assert_eq!(view.dp_epsilon.len(), 5);
}

/// Client-level DP in plain mode: the coordinator adds the noise (and must
/// be trusted to); the job completes and each hospital spends exactly the
/// client-level epsilon of its rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_level_dp_in_plain_mode_spends_the_accounted_epsilon() {
    let dir = tempfile::tempdir().unwrap();
    let view = run_job(
        dir.path(),
        &hospitals(dir.path(), &[]),
        &job(2, 5, CLIENT_DP),
    )
    .await;
    assert_eq!(view.state, "completed", "{view:#?}");
    let expected = expected_client_level_epsilon(2);
    assert_eq!(view.dp_epsilon.len(), 5, "{view:#?}");
    for (name, eps) in &view.dp_epsilon {
        assert!((eps - expected).abs() < 1e-9, "{name}: {eps} vs {expected}");
    }
    // Receipts carry each hospital's spending so far, round by round.
    let first = expected_client_level_epsilon(1);
    for update in &view.rounds[0].updates {
        assert!((update.epsilon().unwrap() - first).abs() < 1e-9);
    }
}

/// Adaptive clipping (Andrew et al. 2021) in plain mode: the bound moves
/// each round, noted in the job's events, and each hospital still spends
/// exactly the client-level epsilon of its rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adaptive_clipping_moves_the_bound_and_spends_the_same_epsilon() {
    let dir = tempfile::tempdir().unwrap();
    let adaptive = CLIENT_DP.to_string() + "clipping = \"adaptive\"\nclipped_count_stddev = 1.5\n";
    let view = run_job(
        dir.path(),
        &hospitals(dir.path(), &[]),
        &job(2, 5, &adaptive),
    )
    .await;
    assert_eq!(view.state, "completed", "{view:#?}");
    let moves = view
        .events
        .iter()
        .filter(|e| e.message.contains("adaptive clipping bound"))
        .count();
    assert_eq!(moves, 2, "{:#?}", view.events);
    let expected = expected_client_level_epsilon(2);
    for (name, eps) in &view.dp_epsilon {
        assert!((eps - expected).abs() < 1e-9, "{name}: {eps} vs {expected}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn homomorphic_aggregation_trains_within_a_point_of_plain_mode() {
    let he = trains_within_a_point_of_plain_mode(HE).await;
    // Each round's ceremony is on the record, with its public seed.
    let ceremonies = he
        .events
        .iter()
        .filter(|e| {
            e.message
                .contains("homomorphic key ceremony among 5 hospitals, any 4")
        })
        .count();
    assert_eq!(ceremonies, 5, "{:#?}", he.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_vanishing_after_sending_its_encrypted_update_does_not_stop_the_round() {
    let dir = tempfile::tempdir().unwrap();
    let view = run_job(
        dir.path(),
        &hospitals(dir.path(), &[(2, VanishAt::Unmask)]),
        &job(1, 3, HE),
    )
    .await;
    assert_exact_sums(dir.path(), &view);
    let round = &view.rounds[0];
    // Decrypted by the other four in the first attempt, its update in it.
    assert_eq!(round.attempts, 1, "{view:#?}");
    assert_eq!(round.participants.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_vanishing_before_sending_its_encrypted_update_is_left_out_on_retry() {
    let dir = tempfile::tempdir().unwrap();
    let view = run_job(
        dir.path(),
        &hospitals(dir.path(), &[(2, VanishAt::MaskedFit)]),
        &job(1, 3, HE),
    )
    .await;
    assert_exact_sums(dir.path(), &view);
    let round = &view.rounds[0];
    // Its key share is in the attempt's collective key but it never dealt
    // its Shamir shares: the attempt is abandoned and redone without it.
    assert!(round.attempts >= 2, "{view:#?}");
    assert_eq!(
        names(round),
        ["hospital-0", "hospital-1", "hospital-3", "hospital-4"]
    );
    assert!(
        view.events
            .iter()
            .any(|e| e.message.contains("retrying with fresh keys")),
        "{:#?}",
        view.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn homomorphic_aggregation_streams_a_model_larger_than_a_message() {
    // Two hidden layers of 640 and 512: about 337,000 parameters, 42
    // ciphertexts, 11 MB for an update and for the sum: more than a gRPC
    // message holds (8 MiB), so uploads and the sum's download stream.
    let dir = tempfile::tempdir().unwrap();
    let job_toml =
        job(1, 5, HE).replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [640, 512]");
    let view = run_job(dir.path(), &hospitals(dir.path(), &[]), &job_toml).await;
    assert_exact_sums(dir.path(), &view);
    assert_eq!(view.rounds[0].participants.len(), 5);
    assert_eq!(view.rounds[0].attempts, 1, "{view:#?}");
    // The receipts count the encrypted update's bytes.
    for update in &view.rounds[0].updates {
        assert!(
            update.parameter_count > 8 << 20,
            "{}",
            update.parameter_count
        );
    }
}

/// The rewards a valued job paid, read back from the coordinator's ledger
/// and verified from it alone.
fn valued_rounds(dir: &Path, view: &JobView) -> cohort_coordinator::rewards::report::RewardsReport {
    assert_eq!(view.state, "completed", "{view:#?}");
    let contents = cohort::audit::read_ledger(&dir.join("coordinator")).unwrap();
    let verified = cohort::rewards::verify(&contents).unwrap();
    assert_eq!(verified.rounds_paid as usize, view.rounds.len());
    assert_eq!(
        verified.partition_rounds_checked as usize,
        view.rounds.len()
    );
    let report = cohort::rewards::show(&contents, Some(&view.job_id)).unwrap();
    for round in &report.rounds {
        assert_eq!(round.method, "partition-least-squares");
        let paid: u64 = round.hospitals.iter().map(|h| h.reward).sum();
        assert_eq!(paid, round.emission);
    }
    report
}

/// Every group whose sum a round decrypted, from the ledger.
fn released_groups(dir: &Path, job: &str) -> Vec<(u32, Vec<Vec<String>>)> {
    cohort::audit::ledger_entries(&dir.join("coordinator"), Some(job))
        .unwrap()
        .into_iter()
        .filter_map(|(_, e)| match e.record {
            cohort_ledger::Record::RoundValued { round, groups, .. } => Some((round, groups)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn homomorphic_rounds_are_valued_from_group_sums_only() {
    let dir = tempfile::tempdir().unwrap();
    let view = run_job(
        dir.path(),
        &hospitals(dir.path(), &[]),
        &(job(2, 4, HE) + "\n[valuation]\ngroup_size = 2\n"),
    )
    .await;
    assert_valued_in_groups_of_two_and_three(dir.path(), &view);
}

/// Five hospitals valued in two groups (3 + 2) every round: four unions
/// scored, every hospital valued, and only those groups' sums released.
fn assert_valued_in_groups_of_two_and_three(dir: &Path, view: &JobView) {
    let report = valued_rounds(dir, view);
    for round in &report.rounds {
        assert_eq!(round.utility_evaluations, 4);
        assert_eq!(round.hospitals.len(), 5);
    }
    for (round, groups) in released_groups(dir, &view.job_id) {
        let mut sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        sizes.sort();
        assert_eq!(sizes, [2, 3], "round {round}");
    }
}

/// Record-level DP and partition valuation together: each hospital's update
/// is private on its own (DP-SGD), so its group's sum needs no noise of its
/// own; every hospital is charged once per round and stays within target.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secure_rounds_under_record_level_dp_are_valued_from_group_sums() {
    let dir = tempfile::tempdir().unwrap();
    let record_dp = "\n[privacy.dp]\nlevel = \"record\"\ntarget_epsilon = 4.0\ndelta = 1e-5\nmax_grad_norm = 1.0\n";
    let view = run_job(
        dir.path(),
        &hospitals(dir.path(), &[]),
        &(job(2, 4, SECAGG) + record_dp + "\n[valuation]\ngroup_size = 2\n"),
    )
    .await;
    let report = valued_rounds(dir.path(), &view);
    assert_eq!(report.rounds.len(), 2);
    for (round, groups) in released_groups(dir.path(), &view.job_id) {
        let mut sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        sizes.sort();
        assert_eq!(sizes, [2, 3], "round {round}");
    }
    assert_eq!(view.dp_epsilon.len(), 5, "{view:#?}");
    for (hospital, epsilon) in &view.dp_epsilon {
        assert!(*epsilon > 3.6 && *epsilon <= 4.0, "{hospital}: {epsilon}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_lost_mid_round_is_regrouped_without_isolating_anyone() {
    // hospital-2 vanishes before sending its masked update: its group's sum
    // is never recovered, the other group's is. The retry regroups the four
    // left so that nothing decrypted in either attempt, together, gives
    // any one hospital's update.
    let dir = tempfile::tempdir().unwrap();
    let view = run_job(
        dir.path(),
        &hospitals(dir.path(), &[(2, VanishAt::MaskedFit)]),
        &(job(1, 4, SECAGG) + "\n[valuation]\ngroup_size = 2\n"),
    )
    .await;
    valued_rounds(dir.path(), &view);
    // Its group fails once or twice (until its absence is noticed).
    assert!(view.rounds[0].attempts >= 2, "{view:#?}");
    let released = released_groups(dir.path(), &view.job_id);
    let (_, groups) = &released[0];
    // The groups that succeeded in a failed attempt, then the last one's.
    assert!(groups.len() >= 2, "{groups:?}");
    let mut members: Vec<String> = groups.concat();
    members.sort();
    members.dedup();
    assert_eq!(
        cohort_coordinator::valuation::isolated_member(&members, groups),
        None
    );
    assert!(!members.contains(&"hospital-2".to_string()));
}

/// Hospitals that share nothing in the clear (`--require-secure-aggregation`)
/// take part in secure and homomorphic jobs: their preprocessing statistics
/// are summed securely, and the preprocessing the model carries is the
/// pooled table's own (means and deviations to rounding, medians to a
/// 1/65,536 of the column's range), not an average of local medians. A
/// plain job under DP sums them too; a plain job without asks for
/// statistics in the clear, and such hospitals refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preprocessing_statistics_are_summed_securely() {
    let dir = tempfile::tempdir().unwrap();
    let mut hospitals = hospitals(dir.path(), &[]);
    for h in &mut hospitals {
        h.options.require_secure_aggregation = true;
    }
    let pooled = pooled_preprocessing(&hospitals, &job(1, 5, ""));
    for privacy in [SECAGG, HE] {
        let run = dir
            .path()
            .join(if privacy == SECAGG { "secagg" } else { "he" });
        let (view, card) = run_job_and_fetch(&run, &hospitals, &job(1, 5, privacy), true).await;
        assert_eq!(view.state, "completed", "{view:#?}");
        assert!(
            view.events
                .iter()
                .any(|e| e.message.contains("summed under secure aggregation")),
            "{:#?}",
            view.events
        );
        let got = card.unwrap().preprocessing;
        assert_eq!(got.schema, pooled.schema);
        assert_eq!(got.categorical, pooled.categorical);
        for (g, p) in got.numeric.iter().zip(&pooled.numeric) {
            assert!((g.mean - p.mean).abs() <= 1e-9 * p.std, "{g:?} vs {p:?}");
            assert!((g.std - p.std).abs() <= 1e-6 * p.std, "{g:?} vs {p:?}");
            let range = 4.0 * p.mean.abs().max(p.fill.abs()).max(p.std);
            assert!((g.fill - p.fill).abs() <= range / 65536.0, "{g:?} vs {p:?}");
        }
    }

    // A plain job under differential privacy sums them as well, each
    // hospital's noised first and paid for in its budget.
    let open_hospitals: Vec<LocalHospital> = hospitals
        .iter()
        .map(|h| LocalHospital {
            name: h.name.clone(),
            data: h.data.clone(),
            options: ClientOptions {
                require_secure_aggregation: false,
                ..h.options.clone()
            },
        })
        .collect();
    let dp = dir.path().join("plain-dp");
    // (Rényi DP: PLD calibration would take five hospitals on two cores
    // past the stages' 4 s.)
    let record_dp = "\n[privacy.dp]\nlevel = \"record\"\ntarget_epsilon = 8.0\n\
                     statistics_epsilon = 2.0\ndelta = 1e-5\nmax_grad_norm = 1.0\n\
                     accountant = \"rdp\"\n";
    let (view, card) = run_job_and_fetch(&dp, &open_hospitals, &job(1, 5, record_dp), true).await;
    assert_eq!(view.state, "completed", "{view:#?}");
    assert!(
        view.events
            .iter()
            .any(|e| e.message.contains("summed under secure aggregation")
                && e.message
                    .contains("noised for differential privacy (statistics_epsilon 2)")),
        "{:#?}",
        view.events
    );
    // Noisy, yet close enough to train with: 1,200 rows against the noise
    // of five hospitals at ε 2 (a mean's standard error is about 0.25 of
    // the column's standard deviation here).
    let got = card.unwrap().preprocessing;
    assert_eq!(got.schema, pooled.schema);
    let mut moved = 0.0;
    for (g, p) in got.numeric.iter().zip(&pooled.numeric) {
        assert!((g.mean - p.mean).abs() <= 1.5 * p.std, "{g:?} vs {p:?}");
        assert!(g.std > 0.3 * p.std && g.std < 3.0 * p.std, "{g:?} vs {p:?}");
        moved += (g.mean - p.mean).abs();
    }
    assert!(moved > 0.0, "no noise on the means: {got:?}");
    for h in &open_hospitals {
        let budget =
            cohort_client::budget::Budget::read_report(&dp.join("clients").join(&h.name)).unwrap();
        let line = &budget.jobs[0];
        assert_eq!(line.statistics_passes, 3, "{}: {budget:?}", h.name);
        assert_eq!(line.rounds, vec![1], "{}: {budget:?}", h.name);
        assert!(
            line.epsilon > 2.0 && line.epsilon <= 8.0,
            "{}: {budget:?}",
            h.name
        );
    }

    // Noise that drowns the statistics fails the job by name, before any
    // round; the one pass released is on each hospital's books.
    let drowned = dir.path().join("drowned-dp");
    let tiny = record_dp
        .replace("target_epsilon = 8.0", "target_epsilon = 0.4")
        .replace("statistics_epsilon = 2.0\n", "");
    let view = run_job(&drowned, &open_hospitals, &job(1, 5, &tiny)).await;
    assert_eq!(view.state, "failed", "{view:#?}");
    let error = view.error.clone().unwrap_or_default();
    assert!(
        error.contains("noise drowns") && error.contains("[preprocessing]"),
        "{error}"
    );
    let budget =
        cohort_client::budget::Budget::read_report(&drowned.join("clients").join("hospital-0"))
            .unwrap();
    assert_eq!(budget.jobs[0].statistics_passes, 1, "{budget:?}");
    assert!(budget.jobs[0].rounds.is_empty(), "{budget:?}");

    // Statistics given publicly in the job: no hospital releases any, not
    // even summed, and the model carries exactly the given table.
    let public = dir.path().join("public");
    let base = job(1, 5, SECAGG);
    let given = base.clone() + &oncology_reference_preprocessing(&base);
    let (view, card) = run_job_and_fetch(&public, &hospitals, &given, true).await;
    assert_eq!(view.state, "completed", "{view:#?}");
    assert!(
        view.events
            .iter()
            .any(|e| e.message.contains("no hospital released statistics")),
        "{:#?}",
        view.events
    );
    let table: toml::Table = toml::from_str(&given).unwrap();
    let age = &table["preprocessing"]["numeric"]["age"];
    let got = card.unwrap().preprocessing;
    let got_age = got.numeric.iter().find(|n| n.name == "age").unwrap();
    // (To the last bit but one: the card passes through JSON.)
    let same = |a: f64, b: Option<f64>| b.is_some_and(|b| (a - b).abs() <= 1e-12 * b.abs());
    assert!(
        same(got_age.mean, age["mean"].as_float()),
        "{got_age:?} vs {age}"
    );
    assert!(
        same(got_age.std, age["std"].as_float()),
        "{got_age:?} vs {age}"
    );

    let plain = dir.path().join("plain");
    let view = run_job(&plain, &hospitals, &job(1, 5, "")).await;
    assert_eq!(view.state, "failed", "{view:#?}");
    assert!(
        view.events.iter().any(|e| e
            .message
            .contains("only shares its statistics under secure aggregation")),
        "{:#?}",
        view.events
    );
}

/// The preprocessing of all the hospitals' rows in one table.
fn pooled_preprocessing(
    hospitals: &[LocalHospital],
    job_toml: &str,
) -> cohort_datasets::Preprocessing {
    let mut csv = String::new();
    for (i, h) in hospitals.iter().enumerate() {
        let text = std::fs::read_to_string(&h.data).unwrap();
        let skip = usize::from(i > 0);
        for line in text.lines().skip(skip) {
            csv.push_str(line);
            csv.push('\n');
        }
    }
    let job: toml::Value = toml::from_str(job_toml).unwrap();
    let spec: cohort_datasets::DataSpec = job["data"].clone().try_into().unwrap();
    let table = cohort_datasets::read_csv_bytes(csv.as_bytes()).unwrap();
    let pooled = cohort_datasets::LocalDataset::from_table(&table, &spec).unwrap();
    cohort_datasets::Preprocessing::merge(pooled.schema(), &[pooled.statistics()]).unwrap()
}

/// A hospital that dies in the middle of the preparation's secure
/// statistics costs one preparation attempt: the passes must sum the same
/// hospitals, so preparation starts over with the four still there, and
/// the job trains on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_vanishing_during_the_secure_statistics_costs_a_preparation_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let view = run_job(
        dir.path(),
        &hospitals(dir.path(), &[(2, VanishAt::Statistics)]),
        &job(1, 4, SECAGG),
    )
    .await;
    assert_eq!(view.state, "completed", "{view:#?}");
    assert_eq!(
        names(&view.rounds[0]),
        ["hospital-0", "hospital-1", "hospital-3", "hospital-4"]
    );
    let said = |text: &str| view.events.iter().any(|e| e.message.contains(text));
    assert!(
        said("sent their masked statistics") && said("summed under secure aggregation"),
        "{:#?}",
        view.events
    );
    assert_exact_sums(dir.path(), &view);
}

/// A hospital whose client predates the secure statistics refuses them
/// and stays connected: it sits out the next preparation attempt, and the
/// job trains on the others instead of failing every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_that_refuses_the_secure_statistics_sits_out_and_the_job_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut hospitals = hospitals(dir.path(), &[]);
    hospitals[1].options.misbehave = Some(cohort_client::misbehave::Misbehave::NoStatistics);
    let view = run_job(dir.path(), &hospitals, &job(1, 4, SECAGG)).await;
    assert_eq!(view.state, "completed", "{view:#?}");
    assert_eq!(
        names(&view.rounds[0]),
        ["hospital-0", "hospital-2", "hospital-3", "hospital-4"]
    );
    assert!(
        view.events
            .iter()
            .any(|e| e.message.contains("hospital-1 sits out the next attempt")),
        "{:#?}",
        view.events
    );
}

/// The oncology job as SplitFed on a small MLP (`u_shaped`: the labels and
/// head stay at the hospitals), with `privacy` appended.
fn splitfed_job(rounds: u32, min_clients: u32, u_shaped: bool, privacy: &str) -> String {
    job(rounds, min_clients, privacy)
        .replace("kind = \"logistic\"", "kind = \"mlp\"\nhidden = [16, 8]")
        .replace(
            "[training]",
            &format!("[training]\nmode = \"splitfed\"\nu_shaped = {u_shaped}"),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splitfed_parts_are_summed_under_secure_and_homomorphic_aggregation() {
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = run_job(
        plain_dir.path(),
        &hospitals(plain_dir.path(), &[]),
        &splitfed_job(5, 5, false, ""),
    )
    .await;
    assert_eq!(plain.state, "completed", "{plain:#?}");
    for (privacy, u_shaped, mode) in [(SECAGG, false, "secure"), (HE, true, "homomorphic")] {
        let dir = tempfile::tempdir().unwrap();
        let view = run_job(
            dir.path(),
            &hospitals(dir.path(), &[]),
            &splitfed_job(5, 5, u_shaped, privacy),
        )
        .await;
        // What the coordinator summed is exactly the hospitals' own encoded
        // parts, and no receipt carries a hospital's weight.
        assert_exact_sums(dir.path(), &view);
        for round in &view.rounds {
            assert_eq!(round.participants.len(), 5);
            assert_eq!(round.attempts, 1, "{view:#?}");
            assert!(round.updates.iter().all(|u| u.num_examples == 0));
        }
        let summed = view
            .events
            .iter()
            .filter(|e| {
                e.message.contains("split exchange of")
                    && e.message
                        .contains(&format!("parts summed under {mode} aggregation"))
            })
            .count();
        assert_eq!(summed, 5, "{:#?}", view.events);
        // The same rounds up to the encoding's rounding: the validation
        // loss and AUC of the last round agree with plain mode's.
        let last = |v: &JobView| v.rounds.last().unwrap().metrics.clone().unwrap();
        let (a, b) = (last(&plain), last(&view));
        eprintln!(
            "splitfed after 5 rounds: plain loss {:.4} AUC {:.4}, {mode} loss {:.4} AUC {:.4}",
            a.loss, a.auc, b.loss, b.auc
        );
        assert!((a.loss - b.loss).abs() <= 0.005, "{a:?} vs {b:?}");
        assert!((a.auc - b.auc).abs() <= 0.01, "{a:?} vs {b:?}");
        assert!((a.accuracy - b.accuracy).abs() <= 0.01, "{a:?} vs {b:?}");
    }
}

/// A hospital that vanishes after sending its masked (or encrypted) split
/// part, before helping unmask (or decrypt): its part and its seat's both
/// count, and the round completes in its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hospital_vanishing_after_its_protected_split_part_still_counts() {
    for (privacy, u_shaped) in [(SECAGG, false), (HE, true)] {
        let dir = tempfile::tempdir().unwrap();
        let view = run_job(
            dir.path(),
            &hospitals(dir.path(), &[(2, VanishAt::Unmask)]),
            &splitfed_job(1, 3, u_shaped, privacy),
        )
        .await;
        assert_exact_sums(dir.path(), &view);
        let round = &view.rounds[0];
        assert_eq!(round.attempts, 1, "{view:#?}");
        assert_eq!(round.participants.len(), 5, "{view:#?}");
    }
}

/// Client-level DP of SplitFed parts under secure aggregation: each
/// hospital's kept contribution is its part clipped to `clip/√2` plus its
/// share of distributed noise, the sums are exact, and every hospital
/// spends exactly the client-level epsilon of a whole update per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splitfed_parts_carry_distributed_noise_under_client_level_dp() {
    let dir = tempfile::tempdir().unwrap();
    let view = run_job(
        dir.path(),
        &hospitals(dir.path(), &[]),
        &splitfed_job(3, 5, false, &(SECAGG.to_string() + CLIENT_DP)),
    )
    .await;
    assert_exact_sums(dir.path(), &view);
    let (params, _) = cohort_privacy::secagg::Params::from_fractions(5, 8, 0.66, BITS).unwrap();
    let (clip, sigma) = cohort_privacy::distributed::per_part(0.5, 2.0);
    let q = cohort_privacy::distributed::quantizer(clip, BITS, 5, sigma, params.min_survivors, 1)
        .unwrap();
    assert_noisy_contributions(dir.path(), &view, &q);
    // The coordinator noised the seats' parts with σ·clip of a whole
    // update (2.0 × 0.5), every round.
    let noised = view
        .events
        .iter()
        .filter(|e| {
            e.message.contains(
                "clipped to 0.3536, the seats' parts noised here with standard deviation 1.0000",
            )
        })
        .count();
    assert_eq!(noised, 3, "{:#?}", view.events);
    let expected = expected_client_level_epsilon(3);
    assert_eq!(view.dp_epsilon.len(), 5, "{view:#?}");
    for (name, eps) in &view.dp_epsilon {
        assert!((eps - expected).abs() < 1e-9, "{name}: {eps} vs {expected}");
    }
}

/// A SplitFed round under client-level DP whose first attempt is abandoned
/// (two of five vanish before their masked parts, so no sum is recovered)
/// is retried with the three others, who train again: one aggregate is
/// released per round, so each is charged once a round, and the job
/// completes within its privacy plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_splitfed_round_under_client_level_dp_is_charged_once() {
    let dir = tempfile::tempdir().unwrap();
    let view = run_job(
        dir.path(),
        &hospitals(
            dir.path(),
            &[(1, VanishAt::MaskedFit), (3, VanishAt::MaskedFit)],
        ),
        &splitfed_job(2, 3, false, &(SECAGG.to_string() + CLIENT_DP)),
    )
    .await;
    assert_exact_sums(dir.path(), &view);
    assert!(view.rounds[0].attempts >= 2, "{view:#?}");
    let expected = expected_client_level_epsilon(2);
    for name in ["hospital-0", "hospital-2", "hospital-4"] {
        let eps = view.dp_epsilon[name];
        assert!((eps - expected).abs() < 1e-9, "{name}: {eps} vs {expected}");
    }
}

/// Partition valuation of SplitFed rounds under secure aggregation: each
/// group runs its own SecAgg+ session over its hospitals' parts, joined
/// with the mean of the group's seats; groups are scored and the values
/// fitted as in FedAvg rounds, and no released sum isolates a hospital.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splitfed_rounds_are_valued_from_group_sums_under_secure_and_homomorphic_aggregation() {
    for (privacy, mode) in [(SECAGG, "secure"), (HE, "homomorphic")] {
        let dir = tempfile::tempdir().unwrap();
        let view = run_job(
            dir.path(),
            &hospitals(dir.path(), &[]),
            &(splitfed_job(2, 4, false, privacy) + "\n[valuation]\ngroup_size = 2\n"),
        )
        .await;
        assert_valued_in_groups_of_two_and_three(dir.path(), &view);
        // Each group's sum came with its own split exchange.
        let exchanges = view
            .events
            .iter()
            .filter(|e| {
                e.message
                    .contains(&format!("parts summed under {mode} aggregation"))
            })
            .count();
        assert_eq!(exchanges, 4, "{mode}: {:#?}", view.events);
    }
}
