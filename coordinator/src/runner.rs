//! The job state machine: preparation (schema check and global
//! preprocessing), then rounds of fit → aggregate → evaluate → store.
//!
//! Everything a restarted coordinator needs is in the store when a round
//! is recorded, so `run_job` can be started again on any unfinished job and
//! continues after its last recorded round.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_datasets::{LocalStatistics, Preprocessing, ResolvedSchema};
use cohort_models::{Metrics, ModelCard};
use cohort_protocol::v1::{TaskHeader, TaskKind};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tokio::sync::oneshot;
use tracing::{info, warn};

mod dp;
mod he;
pub mod proofs;
mod secagg;
mod secure_statistics;
mod splitfed;
mod valuation;
mod vertical;

pub use valuation::RoundValuation;

use crate::job::{Aggregation, JobSpec, TrainingMode};
use crate::registry::{Expect, Registry, Task, TaskAnswer, TaskBody, TaskOutcome};
use cohort_ledger::Record;
use sha2::Digest as _;

use crate::ledger::Ledger;
use crate::store::{Enrollment, JobRow, JobState, RoundRow, Store, StoreError, UpdateReceipt, now};
use crate::strategy::{ClientUpdate, Strategy, UpdateFold};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("job {0} not found")]
    NotFound(String),
    #[error("stored job file no longer parses: {0}")]
    Spec(String),
    #[error("{0}")]
    Failed(String),
}

pub struct Runner {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub ledger: Arc<Ledger>,
    /// The consortium's emission schedule and validators' share.
    pub rewards: crate::rewards::RewardsConfig,
    /// Groth16 setup ceremonies for `[proofs] setup = "ceremony"` jobs.
    pub ceremonies: crate::setup::Ceremonies,
    /// Per running valued job: its last recorded round and each hospital's
    /// job-wide value after it, so that a round does not re-read every
    /// earlier one.
    pub(crate) job_values: std::sync::Mutex<std::collections::HashMap<String, JobValues>>,
}

/// A valued job's last recorded round and each hospital's job-wide value
/// after it, in recorded units.
type JobValues = (u32, BTreeMap<String, i128>);

/// Object-store keys of one stored global model version.
pub fn model_key(job_id: &str, round: u32) -> String {
    format!("jobs/{job_id}/rounds/{round:05}/model.safetensors")
}
pub fn card_key(job_id: &str, round: u32) -> String {
    format!("jobs/{job_id}/rounds/{round:05}/model.json")
}
pub fn signature_key(job_id: &str, round: u32) -> String {
    format!("jobs/{job_id}/rounds/{round:05}/model.sig")
}
fn strategy_state_key(job_id: &str, round: u32) -> String {
    format!("jobs/{job_id}/rounds/{round:05}/server_state.f32")
}

struct Answers<T> {
    ok: Vec<(String, T)>,
    failed: Vec<(String, String)>,
}

impl Runner {
    /// Runs (or resumes) a job to its end and records the final state.
    pub async fn run_job(&self, job_id: &str) {
        // Developer calls yield to running jobs (`--developer-share`).
        let _running = self.registry.job_running();
        let mut pause = Duration::from_secs(1);
        let result = loop {
            match self.drive(job_id).await {
                // Nothing of the failed write was kept (the round's
                // transaction rolled back; objects are written whole or
                // not at all): once space is freed or the storage takes
                // writes again, going on from the stored state is what a
                // restart would do.
                Err(RunError::Store(e)) if e.is_out_of_space() || e.is_read_only() => {
                    let (problem, remedy) = if e.is_out_of_space() {
                        ("full", "space is freed")
                    } else {
                        ("read-only", "it takes writes again")
                    };
                    self.note(
                        job_id,
                        format!(
                            "the coordinator's storage is {problem} ({e}); the round is retried in {} s, \
                             and the job goes on once {remedy}",
                            pause.as_secs()
                        ),
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
                // Another coordinator holds the lease and runs the job now.
                Err(RunError::Store(e @ StoreError::LeaseLost(_))) => {
                    warn!(job = job_id, "stopped running the job: {e}");
                    return;
                }
                result => break result,
            }
        };
        self.registry.traffic.forget_job(job_id);
        self.registry.train_metrics.forget_job(job_id);
        self.job_values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job_id);
        let (state, error) = match &result {
            Ok(()) => (JobState::Completed, None),
            Err(e) => (JobState::Failed, Some(e.to_string())),
        };
        match &result {
            Ok(()) => info!(job = job_id, "job completed"),
            Err(e) => warn!(job = job_id, "job failed: {e}"),
        }
        if let Err(e) = self.store.set_job_state(job_id, state, error.as_deref()) {
            warn!(job = job_id, "could not record the job's final state: {e}");
        }
    }

    fn note(&self, job_id: &str, message: String) {
        warn!(job = job_id, "{message}");
        if let Err(e) = self.store.add_event(job_id, &message) {
            warn!(job = job_id, "could not record event: {e}");
        }
    }

    /// A job event that is news, not a warning.
    fn note_event(&self, job_id: &str, message: String) {
        info!(job = job_id, "{message}");
        if let Err(e) = self.store.add_event(job_id, &message) {
            warn!(job = job_id, "could not record event: {e}");
        }
    }

    /// Records why each of `failed` was left out of `what` (a step of a
    /// round).
    fn note_failures(&self, job_id: &str, what: &str, failed: &[(String, String)]) {
        for (client, reason) in failed {
            self.note(job_id, format!("{what}: {client} dropped: {reason}"));
        }
    }

    async fn drive(&self, job_id: &str) -> Result<(), RunError> {
        let job = self
            .store
            .job(job_id)?
            .ok_or_else(|| RunError::NotFound(job_id.to_string()))?;
        let spec = JobSpec::from_toml(&job.spec_toml).map_err(|e| RunError::Spec(e.to_string()))?;
        self.store.set_job_state(job_id, JobState::Running, None)?;
        if spec.training.mode == TrainingMode::Vertical {
            return self.drive_vertical(&job, &spec).await;
        }

        let enrollment = match job.enrollment.clone() {
            Some(e) => e,
            None => {
                let e = self.prepare(&job, &spec).await?;
                let record = self.enrollment_record(job_id, &e)?;
                // The enrollment and its ledger entry commit together.
                self.ledger.append(&self.store, record, |tx| {
                    Store::set_enrollment_in(tx, job_id, &e)
                })?;
                e
            }
        };
        let n_features = enrollment.preprocessing.n_features();
        let n_params = spec.model.num_parameters(n_features);
        let mut strategy = spec.strategy.build(n_params);
        // A SplitFed hospital proves its part of the update.
        let proved_len = match spec.training.mode {
            TrainingMode::Splitfed => splitfed::hospital_part_len(&spec, n_features)?,
            _ => n_params,
        };
        let proof_keys = self.update_proof_keys(&job, &spec, proved_len).await?;

        let recorded = self.store.rounds(job_id)?;
        let (mut global, first_round) = match recorded.last() {
            Some(last) => {
                let params = self.load_parameters(job_id, last.round).await?;
                let state = self
                    .store
                    .get_object(&strategy_state_key(job_id, last.round))
                    .await;
                if let Ok(bytes) = state {
                    let values = cohort_models::parameters_from_bytes(&bytes)
                        .map_err(|e| RunError::Failed(format!("stored server state: {e}")))?;
                    strategy
                        .restore(values)
                        .map_err(|e| RunError::Failed(format!("stored server state: {e}")))?;
                }
                info!(
                    job = job_id,
                    round = last.round,
                    "resuming after the last recorded round"
                );
                (params, last.round + 1)
            }
            None => {
                let params =
                    cohort_models::init_parameters(&spec.model, n_features, spec.training.seed);
                self.save_round(
                    &job,
                    &spec,
                    &enrollment,
                    &params,
                    strategy.as_ref(),
                    RoundRecord::initial(),
                )
                .await?;
                (params, 1)
            }
        };

        let resumed_bound = match first_round {
            1 => None,
            next => self.store.clip_bound(&job.id, next - 1)?,
        };
        let mut client_dp = dp::PlainClientDp::new(&spec, resumed_bound)?;
        for round in first_round..=spec.training.rounds {
            global = self
                .run_round(
                    &job,
                    &spec,
                    &enrollment,
                    round,
                    global,
                    strategy.as_mut(),
                    client_dp.as_mut(),
                    proof_keys.as_ref(),
                )
                .await?;
        }
        Ok(())
    }

    /// Asks every connected client to validate its data against the job's
    /// schema and send aggregate statistics; enrolls those that agree.
    async fn prepare(&self, job: &JobRow, spec: &JobSpec) -> Result<Enrollment, RunError> {
        let t = &spec.training;
        let data_spec_json = json(&spec.data)?;
        let dp_json = dp_json(spec)?;
        let summed_updates = matches!(
            spec.privacy.aggregation,
            Aggregation::Secagg | Aggregation::He
        );
        // Hospitals that failed the last attempt's secure statistics (a
        // client too old to know them refuses every time) sit the next
        // one out, as long as enough others are there.
        let mut sitting_out: std::collections::BTreeSet<String> = Default::default();
        for attempt in 1..=t.max_round_attempts {
            let mut candidates = self.wait_for_clients(None, t.min_clients, t).await;
            let others = candidates
                .iter()
                .filter(|c| !sitting_out.contains(*c))
                .count();
            if others >= t.min_clients as usize {
                candidates.retain(|c| !sitting_out.contains(c));
            }
            // Where updates are only ever seen summed, so are the
            // statistics; a job under differential privacy sums them too,
            // each hospital's noised first.
            // A job that gives its preprocessing publicly asks for none.
            let public = spec.preprocessing.is_some();
            let secure = !public && (summed_updates || spec.privacy.dp.is_some());
            let header = TaskHeader {
                job_id: job.id.clone(),
                kind: TaskKind::Prepare as i32,
                data_spec_json: data_spec_json.clone(),
                validation_fraction: spec.data.validation_fraction,
                dp_json: dp_json.clone(),
                secure_statistics: secure,
                public_preprocessing: public,
                ..Default::default()
            };
            let answers = self
                .gather(
                    &candidates,
                    &header,
                    None,
                    t.round_timeout_secs,
                    |_, a| match a {
                        // Statistics sent in the clear to a secure job, or
                        // to one with public preprocessing, are dropped
                        // unread.
                        TaskAnswer::Prepare { schema, .. } if secure || public => {
                            Ok((None, schema))
                        }
                        TaskAnswer::Prepare {
                            statistics: Some(statistics),
                            schema,
                        } => Ok((Some(statistics), schema)),
                        TaskAnswer::Prepare { .. } => {
                            Err("answered a preparation task without its statistics".into())
                        }
                        _ => Err("answered a preparation task with something else".into()),
                    },
                )
                .await;
            for (client, reason) in &answers.failed {
                self.note(&job.id, format!("preparation: {client} left out: {reason}"));
            }
            // Clients must agree on the feature layout; the largest group wins.
            type Prepared = (String, Option<LocalStatistics>, ResolvedSchema);
            let mut groups: BTreeMap<String, Vec<Prepared>> = BTreeMap::new();
            for (client, (stats, schema)) in answers.ok {
                groups
                    .entry(json(&schema)?)
                    .or_default()
                    .push((client, stats, schema));
            }
            let mut groups: Vec<_> = groups.into_values().collect();
            groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
            let mut groups = groups.into_iter();
            let chosen = groups.next().unwrap_or_default();
            for other in groups.flatten() {
                self.note(
                    &job.id,
                    format!("preparation: {} left out: its columns resolve to a different feature layout", other.0),
                );
            }
            if chosen.len() < t.min_clients as usize {
                self.note(
                    &job.id,
                    format!(
                        "preparation attempt {attempt}: {} of the {} required clients ready; retrying",
                        chosen.len(),
                        t.min_clients
                    ),
                );
                continue;
            }
            let schema = chosen[0].2.clone();
            let participants: Vec<String> = chosen.iter().map(|c| c.0.clone()).collect();
            let preprocessing = if let Some(table) = &spec.preprocessing {
                let preprocessing = table.for_schema(&schema).map_err(|e| {
                    RunError::Failed(format!("the job's public preprocessing: {e}"))
                })?;
                self.note_event(
                    &job.id,
                    "preparation: preprocessing taken from the job's [preprocessing] table; no hospital released statistics".to_string(),
                );
                preprocessing
            } else if secure {
                match self
                    .secure_statistics(job, spec, &header, &schema, &participants, attempt)
                    .await?
                {
                    Ok(preprocessing) => preprocessing,
                    Err(failed) => {
                        for hospital in &failed {
                            self.note(
                                &job.id,
                                format!(
                                    "preparation: {hospital} sits out the next attempt: it did not complete the secure statistics"
                                ),
                            );
                        }
                        sitting_out = failed.into_iter().collect();
                        continue;
                    }
                }
            } else {
                let stats: Vec<LocalStatistics> = chosen.into_iter().filter_map(|c| c.1).collect();
                Preprocessing::merge(&schema, &stats)
                    .map_err(|e| RunError::Failed(format!("merging client statistics: {e}")))?
            };
            info!(
                job = job.id,
                ?participants,
                features = preprocessing.n_features(),
                "clients enrolled"
            );
            return Ok(Enrollment {
                participants,
                preprocessing,
            });
        }
        Err(RunError::Failed(format!(
            "fewer than {} clients were ready after {} attempts",
            t.min_clients, t.max_round_attempts
        )))
    }

    /// Waits (up to one round timeout) until at least `min` of `pool` (any
    /// client when `None`) are connected; returns the connected ones either
    /// way.
    async fn wait_for_clients(
        &self,
        pool: Option<&[String]>,
        min: u32,
        t: &crate::job::TrainingSpec,
    ) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(t.round_timeout_secs);
        loop {
            let connected = self.registry.connected();
            let available: Vec<String> = match pool {
                Some(pool) => pool
                    .iter()
                    .filter(|c| connected.contains(c))
                    .cloned()
                    .collect(),
                None => connected,
            };
            let enough = available.len() >= min as usize && !available.is_empty();
            if enough || Instant::now() >= deadline {
                return available;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends one task to each client and collects the answers that arrive
    /// before the timeout. Late clients are recorded as failed.
    async fn gather<T>(
        &self,
        clients: &[String],
        header: &TaskHeader,
        parameters: Option<Arc<Vec<f32>>>,
        timeout_secs: u64,
        accept: impl FnMut(&str, TaskAnswer) -> Result<T, String>,
    ) -> Answers<T> {
        let expect = match (header.kind(), &parameters) {
            (TaskKind::Fit, Some(p)) => Expect::Update(p.len() as u64),
            _ => Expect::Nothing,
        };
        let tasks = clients
            .iter()
            .map(|c| (c.clone(), header.clone()))
            .collect();
        self.gather_each(
            tasks,
            parameters.map(|p| TaskBody::parameters(&p)),
            expect,
            timeout_secs,
            accept,
        )
        .await
    }

    /// Like [`Runner::gather`], with a task header of its own for each
    /// client; `accept` sees each answer as it is collected.
    async fn gather_each<T>(
        &self,
        tasks: Vec<(String, TaskHeader)>,
        body: Option<TaskBody>,
        expect: Expect,
        timeout_secs: u64,
        mut accept: impl FnMut(&str, TaskAnswer) -> Result<T, String>,
    ) -> Answers<T> {
        let mut waiting: Vec<(String, String, oneshot::Receiver<TaskOutcome>)> = Vec::new();
        for (client, mut header) in tasks {
            let task_id = uuid::Uuid::new_v4().simple().to_string();
            header.task_id = task_id.clone();
            if let Some(body) = &body {
                body.describe(&mut header);
            }
            let rx = self.registry.dispatch(
                &client,
                Task {
                    header,
                    body: body.clone(),
                },
            );
            self.registry.expect(&task_id, expect);
            waiting.push((client, task_id, rx));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
        let mut answers = Answers {
            ok: Vec::new(),
            failed: Vec::new(),
        };
        // Answers are accepted in the order they arrive, so that an update
        // folded by `accept` is dropped at once instead of waiting in its
        // channel for slower hospitals; `ok` keeps the dispatch order.
        let mut unanswered: BTreeMap<usize, (String, String)> = BTreeMap::new();
        let mut arriving = futures::stream::FuturesUnordered::new();
        for (i, (client, task_id, rx)) in waiting.into_iter().enumerate() {
            unanswered.insert(i, (client, task_id));
            arriving.push(async move { (i, rx.await) });
        }
        let mut ok = Vec::new();
        while let Ok(Some((i, outcome))) =
            tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut arriving)).await
        {
            let Some((client, _)) = unanswered.remove(&i) else {
                continue;
            };
            match outcome {
                Ok(Ok(answer)) => match accept(&client, answer) {
                    Ok(v) => ok.push((i, client, v)),
                    Err(reason) => answers.failed.push((client, reason)),
                },
                Ok(Err(reason)) => answers.failed.push((client, reason)),
                Err(_) => answers.failed.push((client, "task was dropped".into())),
            }
        }
        let mut expired = Vec::new();
        for (client, task_id) in unanswered.into_values() {
            answers
                .failed
                .push((client, format!("no answer within {timeout_secs} s")));
            expired.push(task_id);
        }
        self.registry.cancel(&expired);
        ok.sort_by_key(|(i, ..)| *i);
        answers.ok = ok.into_iter().map(|(_, client, v)| (client, v)).collect();
        answers
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_round(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        enrollment: &Enrollment,
        round: u32,
        global: Vec<f32>,
        strategy: &mut dyn Strategy,
        mut client_dp: Option<&mut dp::PlainClientDp>,
        proof_keys: Option<&proofs::UpdateProofKeys>,
    ) -> Result<Vec<f32>, RunError> {
        let t = &spec.training;
        let started = Instant::now();
        let global = Arc::new(global);
        let header = TaskHeader {
            job_id: job.id.clone(),
            round,
            data_spec_json: json(&spec.data)?,
            model_spec_json: json(&spec.model)?,
            train_config_json: json(&spec.train_config(round))?,
            preprocessing_json: json(&enrollment.preprocessing)?,
            parameters_sha256: cohort_models::parameters_sha256(&global),
            split_seed: t.seed,
            validation_fraction: spec.data.validation_fraction,
            dp_json: dp_json(spec)?,
            proofs_json: proof_keys
                .map(|k| json(&k.task))
                .transpose()?
                .unwrap_or_default(),
            ..Default::default()
        };
        // Group sums decrypted in any attempt of this round (valuation).
        let mut released: Vec<Vec<String>> = Vec::new();
        // Hospitals left out of this round's later attempts (an update
        // proof that failed under homomorphic aggregation, where every
        // member's update is needed).
        let mut barred: Vec<cohort_ledger::Exclusion> = Vec::new();
        for attempt in 1..=t.max_round_attempts {
            let mut available = self
                .wait_for_clients(
                    Some(&enrollment.participants),
                    t.min_clients + barred.len() as u32,
                    t,
                )
                .await;
            available.retain(|c| !barred.iter().any(|b| &b.client == c));
            if !barred.is_empty() && available.len() < t.min_clients as usize {
                self.note(
                    &job.id,
                    format!(
                        "round {round} attempt {attempt}: {} hospitals besides the {} left out of this round, fewer than the {} required; retrying",
                        available.len(),
                        barred.len(),
                        t.min_clients
                    ),
                );
                continue;
            }
            let selected = select_clients(
                &available,
                t.clients_per_round as usize,
                t.seed,
                round,
                attempt,
            );
            info!(job = job.id, round, attempt, ?selected, "round started");
            let fit = TaskHeader {
                kind: TaskKind::Fit as i32,
                ..header.clone()
            };
            let fitted = match (spec.privacy.aggregation, &spec.valuation) {
                (Aggregation::Plain, _) | (_, None) if t.mode == TrainingMode::Splitfed => {
                    self.splitfed_fit(
                        job,
                        spec,
                        enrollment,
                        &fit,
                        &global,
                        &selected,
                        (round, attempt),
                        proof_keys,
                        t.min_clients,
                    )
                    .await?
                }
                (Aggregation::He | Aggregation::Secagg, Some(valuation)) => {
                    self.grouped_fit(
                        job,
                        spec,
                        valuation,
                        enrollment,
                        &fit,
                        &global,
                        &selected,
                        (round, attempt),
                        &mut released,
                    )
                    .await?
                }
                (Aggregation::Plain, _) => {
                    // Valuation and client-level DP need each update; a
                    // round without them folds each into the sum on arrival.
                    let fold = spec.valuation.is_none() && client_dp.is_none();
                    self.plain_fit(
                        job,
                        spec,
                        &fit,
                        &global,
                        &selected,
                        (round, attempt),
                        proof_keys,
                        fold,
                    )
                    .await
                }
                (Aggregation::He | Aggregation::Secagg, None) => {
                    self.protected_fit(
                        job,
                        spec,
                        enrollment,
                        &fit,
                        &global,
                        &selected,
                        (round, attempt),
                        t.min_clients,
                        &splitfed::SplitTasks::new(),
                        &mut barred,
                    )
                    .await?
                }
            };
            let Some(Fitted {
                participants,
                receipts,
                updates,
                total_examples,
                train_loss,
                slowest_fit_secs,
                aggregate_sha256,
                groups,
                excluded,
            }) = fitted
            else {
                continue;
            };
            let commitments: BTreeMap<String, String> = receipts
                .iter()
                .map(|r| (r.client.clone(), r.dataset_sha256.clone()))
                .collect();
            // The players valuation sees: each hospital's update in plain
            // mode (hospitals with identical data as one), each group's sum
            // in grouped rounds.
            let players: Vec<(Vec<String>, ClientUpdate)> = match &spec.valuation {
                None => Vec::new(),
                Some(_) if groups.is_empty() => {
                    crate::valuation::plain_players(&updates, &commitments)
                }
                Some(_) => groups.into_iter().map(|g| (g.members, g.update)).collect(),
            };
            let updates = match client_dp.as_deref_mut() {
                Some(dp) => {
                    let (mean, clip) = dp.aggregate(updates)?;
                    if let Some((before, after)) = clip {
                        self.store.set_clip_bound(&job.id, round, after)?;
                        self.note(
                            &job.id,
                            format!(
                                "round {round}: adaptive clipping bound {before:.4} -> {after:.4}"
                            ),
                        );
                    }
                    vec![mean]
                }
                None => updates,
            };
            let next = strategy
                .aggregate(&global, &updates)
                .map_err(|e| RunError::Failed(format!("round {round}: aggregation failed: {e}")))?;
            drop(updates);
            if let Some(i) = next.iter().position(|v| !v.is_finite()) {
                return Err(RunError::Failed(format!(
                    "round {round}: the aggregated model has a non-finite value at index {i} (training diverged; lower the learning rate)"
                )));
            }
            let next = Arc::new(next);

            // A valued round scores its candidate models in the same task as
            // the new model: the hospitals build them from the starting
            // model and the players' updates.
            let plan = spec
                .valuation
                .as_ref()
                .map(|v| self.plan_valuation(job, spec, v, round, &global, &players))
                .transpose()?;
            let (body, coalitions) = match &plan {
                Some(plan) => (
                    Arc::new(plan.task_body(&next, &global, &players)),
                    plan.coalitions.clone(),
                ),
                None => (next.clone(), Vec::new()),
            };
            let eval = TaskHeader {
                kind: TaskKind::Evaluate as i32,
                parameters_sha256: cohort_models::parameters_sha256(&body),
                valuation_player_examples: if coalitions.is_empty() {
                    Vec::new()
                } else {
                    players.iter().map(|(_, u)| u.num_examples).collect()
                },
                valuation_coalitions: coalitions,
                ..header.clone()
            };
            let candidates = eval.valuation_coalitions.len();
            let evaluations = self
                .gather(
                    &participants,
                    &eval,
                    Some(body),
                    t.round_timeout_secs,
                    |_, a| match a {
                        TaskAnswer::Evaluate {
                            metrics,
                            candidate_losses,
                            compute_seconds,
                        } if candidate_losses.len() == candidates => {
                            Ok((metrics, candidate_losses, compute_seconds))
                        }
                        TaskAnswer::Evaluate {
                            candidate_losses, ..
                        } => Err(format!(
                            "scored {} candidate models, {candidates} were sent",
                            candidate_losses.len()
                        )),
                        _ => Err("answered an evaluation task with something else".into()),
                    },
                )
                .await;
            self.note_failures(
                &job.id,
                &format!("round {round} evaluation"),
                &evaluations.failed,
            );
            let slowest_evaluate_secs = evaluations
                .ok
                .iter()
                .map(|(_, (_, _, s))| *s)
                .fold(0.0, f64::max);
            let (metrics_parts, scored): (Vec<Metrics>, Vec<(String, crate::valuation::Scores)>) =
                evaluations
                    .ok
                    .into_iter()
                    .map(|(client, (m, losses, _))| {
                        let examples = m.examples;
                        (m, (client, (examples, losses)))
                    })
                    .unzip();
            let scored = crate::valuation::distinct_scorers(scored, &commitments);
            let metrics = Metrics::aggregate(&metrics_parts);
            let next = Arc::try_unwrap(next).unwrap_or_else(|shared| (*shared).clone());
            let valuation = match plan {
                Some(plan) => Some(self.finish_valuation(job, plan, &players, &scored, &released)?),
                None => None,
            };
            drop(players);
            self.save_round(
                job,
                spec,
                enrollment,
                &next,
                &*strategy,
                RoundRecord {
                    round,
                    participants,
                    updates: receipts,
                    aggregate_sha256,
                    excluded,
                    metrics: metrics.clone(),
                    train_loss,
                    attempts: attempt,
                    duration_secs: started.elapsed().as_secs_f64(),
                    slowest_fit_secs,
                    slowest_evaluate_secs,
                    valuation,
                },
            )
            .await?;
            info!(
                job = job.id,
                round,
                examples = total_examples,
                loss = metrics.as_ref().map(|m| m.loss),
                accuracy = metrics.as_ref().map(|m| m.accuracy),
                auc = metrics.as_ref().map(|m| m.auc),
                "round completed"
            );
            return Ok(next);
        }
        Err(RunError::Failed(format!(
            "round {round}: fewer than {} updates after {} attempts",
            t.min_clients, t.max_round_attempts
        )))
    }

    /// The fit stage in plain mode: every selected hospital sends its
    /// signed update (with a proof that it is well formed when the job
    /// asks for one). `None` when too few answered (the attempt is retried).
    #[allow(clippy::too_many_arguments)]
    async fn plain_fit(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        fit: &TaskHeader,
        global: &Arc<Vec<f32>>,
        selected: &[String],
        (round, attempt): (u32, u32),
        proof_keys: Option<&proofs::UpdateProofKeys>,
        fold: bool,
    ) -> Option<Fitted> {
        let t = &spec.training;
        let n_params = global.len();
        let mut excluded = Vec::new();
        // Commitments of updates proved with Bulletproofs, for validators.
        let mut kept = Vec::new();
        let mut folded = fold.then(|| UpdateFold::new(n_params));
        let answers = self
            .gather(
                selected,
                fit,
                Some(global.clone()),
                t.round_timeout_secs,
                |client, a| match a {
                    TaskAnswer::Fit {
                        delta,
                        num_examples,
                        train_loss,
                        compute_seconds,
                        mut receipt,
                        proof,
                    } if delta.len() == n_params => {
                        if let Some(keys) = proof_keys {
                            let context = cohort_proofs::Context {
                                job_id: job.id.clone(),
                                round,
                                client: client.to_string(),
                            };
                            if let Some(commitments) =
                                keys.admit(context, &delta, &proof, &mut receipt, &mut excluded)?
                            {
                                kept.push((client.to_string(), commitments));
                            }
                        }
                        let delta = match &mut folded {
                            Some(sum) => {
                                sum.add(client, &delta, num_examples)
                                    .map_err(|e| e.to_string())?;
                                Vec::new()
                            }
                            None => delta,
                        };
                        Ok((delta, num_examples, train_loss, compute_seconds, receipt))
                    }
                    TaskAnswer::Fit { delta, .. } => Err(format!(
                        "update has {} values, the model has {n_params}",
                        delta.len()
                    )),
                    _ => Err("answered a fit task with something else".into()),
                },
            )
            .await;
        self.note_failures(&job.id, &format!("round {round}"), &answers.failed);
        if answers.ok.len() < t.min_clients as usize {
            self.note(
                &job.id,
                format!(
                    "round {round} attempt {attempt}: {} of the required {} updates; retrying",
                    answers.ok.len(),
                    t.min_clients
                ),
            );
            return None;
        }
        let total_examples: u64 = answers.ok.iter().map(|(_, (_, n, ..))| *n).sum();
        let train_loss = weighted_loss(answers.ok.iter().map(|(_, (_, n, l, ..))| (*n, *l)));
        let slowest_fit_secs = answers
            .ok
            .iter()
            .map(|(_, (_, _, _, s, _))| *s)
            .fold(0.0, f64::max);
        let participants: Vec<String> = answers.ok.iter().map(|(c, _)| c.clone()).collect();
        if let Err(e) = self
            .keep_commitments(&job.id, round, kept, &participants)
            .await
        {
            self.note(
                &job.id,
                format!(
                    "round {round} attempt {attempt}: keeping the commitments for validators: {e}; retrying"
                ),
            );
            return None;
        }
        let mut receipts = Vec::with_capacity(answers.ok.len());
        let mut updates: Vec<ClientUpdate> = answers
            .ok
            .into_iter()
            .map(|(client, (delta, num_examples, _, _, receipt))| {
                receipts.push(receipt);
                ClientUpdate {
                    client,
                    delta,
                    num_examples,
                }
            })
            .collect();
        if let Some(sum) = folded {
            match sum.into_update() {
                Ok(mean) => updates = vec![mean],
                Err(e) => {
                    self.note(
                        &job.id,
                        format!("round {round} attempt {attempt}: {e}; retrying"),
                    );
                    return None;
                }
            }
        }
        Some(Fitted {
            participants,
            receipts,
            updates,
            total_examples,
            train_loss,
            slowest_fit_secs,
            aggregate_sha256: None,
            groups: Vec::new(),
            excluded,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn card(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        enrollment: &Enrollment,
        round: u32,
        metrics: Option<Metrics>,
        params: &[f32],
        kept_top: Option<cohort_models::KeptTop>,
    ) -> Result<ModelCard, RunError> {
        let preprocessing = enrollment.preprocessing.clone();
        let mut card = ModelCard {
            format: String::new(),
            model: spec.model.clone(),
            n_features: preprocessing.n_features(),
            feature_names: preprocessing.schema.feature_names(),
            parameter_order: Vec::new(),
            data: spec.data.clone(),
            preprocessing,
            job_id: job.id.clone(),
            job_name: job.name.clone(),
            round,
            metrics,
            parameters_sha256: String::new(),
            privacy: None,
            kept_top,
        };
        card.bind_parameters(params)
            .map_err(|e| RunError::Failed(format!("round {round}: {e}")))?;
        Ok(card)
    }

    /// The DP guarantee of the model after a round: each hospital's latest
    /// reported spending on the job (earlier rounds from the store, this
    /// round's from `updates`), and their maximum.
    fn privacy_guarantee(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        updates: &[UpdateReceipt],
    ) -> Result<Option<cohort_models::PrivacyGuarantee>, RunError> {
        let Some(policy) = &spec.privacy.dp else {
            return Ok(None);
        };
        let mut hospitals = std::collections::BTreeMap::<String, f64>::new();
        let earlier = self.store.rounds(&job.id)?;
        let all = earlier
            .iter()
            .flat_map(|r| r.updates.iter())
            .chain(updates.iter());
        for update in all {
            if let Some(eps) = update.epsilon() {
                let entry = hospitals.entry(update.client.clone()).or_insert(0.0);
                *entry = entry.max(eps);
            }
        }
        Ok(Some(cohort_models::PrivacyGuarantee {
            level: policy.level.as_str().to_string(),
            epsilon: hospitals.values().copied().fold(0.0, f64::max),
            delta: policy.delta,
            accountant: match policy.accountant {
                cohort_privacy::dp::AccountantKind::Pld => "pld",
                cohort_privacy::dp::AccountantKind::Rdp => "rdp",
            }
            .to_string(),
            target_epsilon: policy.target_epsilon,
            hospitals,
        }))
    }

    async fn save_round(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        enrollment: &Enrollment,
        params: &[f32],
        strategy: &dyn Strategy,
        record: RoundRecord,
    ) -> Result<(), RunError> {
        self.save_round_with(job, spec, enrollment, params, None, strategy, record)
            .await
    }

    /// [`Self::save_round`]; for a vertical round `params` is the first layer
    /// and `kept_top` names the top part its label site kept.
    #[allow(clippy::too_many_arguments)]
    async fn save_round_with(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        enrollment: &Enrollment,
        params: &[f32],
        kept_top: Option<cohort_models::KeptTop>,
        strategy: &dyn Strategy,
        record: RoundRecord,
    ) -> Result<(), RunError> {
        let mut card = self.card(
            job,
            spec,
            enrollment,
            record.round,
            record.metrics.clone(),
            params,
            kept_top,
        )?;
        card.privacy = self.privacy_guarantee(job, spec, &record.updates)?;
        let bytes = cohort_models::safetensors_bytes(&card, params)
            .map_err(|e| RunError::Failed(format!("encoding the model: {e}")))?;
        let key = model_key(&job.id, record.round);
        let card_json = json(&card)?.into_bytes();
        // Signed over exactly the bytes a developer downloads.
        let resources = [
            ("model.json", &card_json[..]),
            ("model.safetensors", &bytes[..]),
        ]
        .into_iter()
        .map(|(name, data)| cohort_ledger::model_signing::Resource {
            name: name.into(),
            algorithm: "sha256".into(),
            digest: hex::encode(sha2::Sha256::digest(data)),
        })
        .collect();
        let bundle = cohort_ledger::model_signing::sign_model(
            &format!("{}-round-{}", job.id, record.round),
            resources,
            self.ledger.signing_key(),
        )
        .map_err(|e| RunError::Failed(format!("signing the model: {e}")))?;
        let signature_sha256 = hex::encode(sha2::Sha256::digest(bundle.as_bytes()));
        // Objects first, then the database row: see the store's docs.
        self.store.put_object(&key, bytes).await?;
        // The model's bytes are stored; its card, signature and row are not.
        cohort_protocol::crash::reached("model-write");
        self.store
            .put_object(&card_key(&job.id, record.round), card_json)
            .await?;
        self.store
            .put_object(&signature_key(&job.id, record.round), bundle.into_bytes())
            .await?;
        let state = strategy.state();
        if !state.is_empty() {
            self.store
                .put_object(
                    &strategy_state_key(&job.id, record.round),
                    cohort_models::parameters_to_bytes(&state),
                )
                .await?;
        }
        let train_metrics = self
            .registry
            .train_metrics
            .take(&job.id, record.round, &record.participants)
            .filter(|_| spec.privacy.dp.is_none());
        let row = RoundRow {
            job_id: job.id.clone(),
            round: record.round,
            participants: record.participants,
            metrics: record.metrics,
            train_loss: record.train_loss,
            attempts: record.attempts,
            duration_secs: record.duration_secs,
            model_key: key,
            model_sha256: card.parameters_sha256.clone(),
            completed_at: now(),
            slowest_fit_secs: record.slowest_fit_secs,
            slowest_evaluate_secs: record.slowest_evaluate_secs,
            updates: record.updates,
            aggregate_sha256: record.aggregate_sha256,
            excluded: record.excluded,
            traffic: Some(self.registry.traffic.take(&job.id, record.round)),
            train_metrics,
        };
        let entry = Record::RoundCompleted {
            job_id: row.job_id.clone(),
            round: row.round,
            model_sha256: row.model_sha256.clone(),
            updates: row.updates.clone(),
            // Sealed when the ledger appends it.
            sealed_updates: Vec::new(),
            aggregate_sha256: row.aggregate_sha256.clone(),
            model_signature_sha256: signature_sha256,
            accuracy: row.metrics.as_ref().map(|m| format!("{:.6}", m.accuracy)),
            auc: row.metrics.as_ref().map(|m| format!("{:.6}", m.auc)),
            excluded: row.excluded.clone(),
            kept_top_sha256: card.kept_top.as_ref().map(|t| t.sha256.clone()),
        };
        // The round's row, its valuation and payout, and their ledger
        // entries commit together.
        let job_id = job.id.clone();
        let round = row.round;
        let rewards = self.rewards;
        let mut cumulative = match &record.valuation {
            Some(_) => Some(self.cumulative_values(&job.id, round)?),
            None => None,
        };
        let valuation = record.valuation;
        let attested = spec.proofs.update != crate::job::UpdateProofs::Off;
        self.ledger.append_all(
            &self.store,
            |tx| {
                let mut records = vec![entry];
                if let (Some(valuation), Some(cumulative)) = (valuation, cumulative.as_mut()) {
                    records.extend(crate::rewards::pay_round(
                        tx, &rewards, &job_id, round, &valuation, cumulative, attested,
                    )?);
                }
                Ok(records)
            },
            |tx| Store::record_round_in(tx, &row),
        )?;
        if let Some(totals) = cumulative {
            self.job_values
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(job_id, (round, totals));
        }
        Ok(())
    }

    /// What the ledger records of an enrollment: each hospital's reported
    /// row count and a digest of its quality summary, and a digest of the
    /// merged preprocessing.
    fn enrollment_record(&self, job_id: &str, e: &Enrollment) -> Result<Record, RunError> {
        let clients = self.store.clients()?;
        let participants = e
            .participants
            .iter()
            .map(|name| {
                let summary = clients
                    .iter()
                    .find(|c| &c.name == name)
                    .map(|c| c.quality_summary_json.clone())
                    .unwrap_or_default();
                let rows = serde_json::from_str::<cohort_datasets::QualitySummary>(&summary)
                    .map(|q| q.rows)
                    .unwrap_or_default();
                cohort_ledger::EnrolledClient {
                    name: name.clone(),
                    rows,
                    quality_summary_sha256: hex::encode(sha2::Sha256::digest(summary.as_bytes())),
                }
            })
            .collect();
        Ok(Record::ClientsEnrolled {
            job_id: job_id.to_string(),
            participants,
            preprocessing_sha256: hex::encode(sha2::Sha256::digest(
                json(&e.preprocessing)?.as_bytes(),
            )),
            // Sealed when the ledger appends it.
            sealed_participants: Vec::new(),
        })
    }

    /// Each hospital's job-wide value before `round`, in recorded units
    /// (the sum of its recorded round values): the totals kept after the
    /// round before, or else summed from the store (the job's first valued
    /// round here, after a restart or after another coordinator ran it).
    fn cumulative_values(
        &self,
        job_id: &str,
        round: u32,
    ) -> Result<BTreeMap<String, i128>, RunError> {
        let kept = self
            .job_values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(job_id)
            .filter(|(last, _)| last + 1 == round)
            .map(|(_, totals)| totals.clone());
        if let Some(totals) = kept {
            return Ok(totals);
        }
        let mut sums = BTreeMap::new();
        for v in self.valuations(job_id)? {
            for (name, value) in v.values {
                let units = crate::rewards::parse_value(&crate::rewards::value_text(value))
                    .map_err(|e| RunError::Failed(e.to_string()))?;
                *sums.entry(name).or_default() += units;
            }
        }
        Ok(sums)
    }

    /// The stored global model of `round`, checked against its stored card.
    async fn load_parameters(&self, job_id: &str, round: u32) -> Result<Vec<f32>, RunError> {
        let corrupt = |e: String| RunError::Failed(format!("stored model of round {round}: {e}"));
        let card = self.store.get_object(&card_key(job_id, round)).await?;
        let card: ModelCard = serde_json::from_slice(&card).map_err(|e| corrupt(e.to_string()))?;
        let bytes = self.store.get_object(&model_key(job_id, round)).await?;
        cohort_models::params_from_safetensors(&card, &bytes).map_err(|e| corrupt(e.to_string()))
    }
}

/// What the fit stage of a round attempt produced for the strategy.
struct Fitted {
    participants: Vec<String>,
    receipts: Vec<UpdateReceipt>,
    /// One update per hospital in plain mode; under secure aggregation
    /// the single example-weighted mean of the survivors' updates.
    updates: Vec<ClientUpdate>,
    total_examples: u64,
    train_loss: Option<f64>,
    slowest_fit_secs: f64,
    /// Under secure aggregation: SHA-256 of the recovered sum (packed);
    /// grouped rounds: one per group, comma-separated.
    aggregate_sha256: Option<String>,
    /// Grouped rounds (valuation under secure or homomorphic aggregation):
    /// each group's decoded mean; `updates` then holds their combination.
    groups: Vec<valuation::GroupSum>,
    /// Updates left out of the round (no valid proof), with the reason.
    excluded: Vec<cohort_ledger::Exclusion>,
}

struct RoundRecord {
    round: u32,
    participants: Vec<String>,
    updates: Vec<UpdateReceipt>,
    aggregate_sha256: Option<String>,
    excluded: Vec<cohort_ledger::Exclusion>,
    metrics: Option<Metrics>,
    train_loss: Option<f64>,
    attempts: u32,
    duration_secs: f64,
    slowest_fit_secs: f64,
    slowest_evaluate_secs: f64,
    valuation: Option<RoundValuation>,
}

impl RoundRecord {
    fn initial() -> Self {
        Self {
            round: 0,
            participants: Vec::new(),
            metrics: None,
            train_loss: None,
            attempts: 0,
            duration_secs: 0.0,
            slowest_fit_secs: 0.0,
            slowest_evaluate_secs: 0.0,
            updates: Vec::new(),
            aggregate_sha256: None,
            valuation: None,
            excluded: Vec::new(),
        }
    }
}

/// Seeded choice of up to `k` clients: the same job, round and attempt
/// always select the same clients from the same pool.
pub fn select_clients(
    available: &[String],
    k: usize,
    seed: u64,
    round: u32,
    attempt: u32,
) -> Vec<String> {
    let mut pool: Vec<String> = available.to_vec();
    pool.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(round) << 32) ^ u64::from(attempt));
    pool.shuffle(&mut rng);
    pool.truncate(k);
    pool.sort();
    pool
}

fn weighted_loss(parts: impl Iterator<Item = (u64, Option<f64>)>) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0u64);
    for (examples, loss) in parts {
        if let Some(l) = loss {
            sum += l * examples as f64;
            n += examples;
        }
    }
    (n > 0).then(|| sum / n as f64)
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, RunError> {
    serde_json::to_string(value).map_err(|e| RunError::Failed(format!("encoding JSON: {e}")))
}

/// `TaskHeader.dp_json`: the job's DP promise, empty without one.
fn dp_json(spec: &JobSpec) -> Result<String, RunError> {
    spec.job_dp()
        .map(|dp| json(&dp))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// One contributor to a protected sum: its name, training loss, compute
/// seconds and the receipt of what it uploaded.
type Contribution = (String, (Option<f64>, f64, UpdateReceipt));

/// What a fit stage hands on when the coordinator only learned the sum of
/// the encoded updates (secure or homomorphic aggregation): the decoded
/// example-weighted mean as the one update the strategy sees, the sum's
/// digest, and the contributors' receipts and losses.
fn fitted_from_sum(
    sum: &[u64],
    quantizer: &cohort_privacy::quantize::Quantizer,
    contributors: Vec<Contribution>,
    aggregate: &str,
) -> Result<Fitted, String> {
    let digest = sha2::Sha256::digest(cohort_privacy::quantize::pack(sum, quantizer.bits()));
    let (mean, total_examples) = quantizer
        .decode_weighted_mean(sum)
        .map_err(|e| e.to_string())?;
    if total_examples == 0 {
        return Err("the recovered sum reports no training examples".into());
    }
    Ok(fitted_from_mean(
        mean,
        total_examples,
        &digest,
        contributors,
        aggregate,
        Vec::new(),
    ))
}

impl Runner {
    /// The fit stage's outcome from the sum of committed updates (update
    /// proofs under secure or homomorphic aggregation): the contributors'
    /// commitments (`proved`, by hospital) kept for validators, then the
    /// uniform mean of their proved updates; `excluded` were left out for
    /// want of a valid proof.
    #[allow(clippy::too_many_arguments)]
    async fn fitted_from_committed_sum(
        &self,
        job_id: &str,
        round: u32,
        proved: Vec<(String, Vec<u8>)>,
        sum: &[i64],
        grid: &cohort_proofs::FixedPoint,
        contributors: Vec<Contribution>,
        aggregate: &str,
        excluded: Vec<cohort_ledger::Exclusion>,
    ) -> Result<Fitted, StoreError> {
        let participants: Vec<String> = contributors.iter().map(|(c, _)| c.clone()).collect();
        self.keep_commitments(job_id, round, proved, &participants)
            .await?;
        let bytes: Vec<u8> = sum.iter().flat_map(|s| s.to_le_bytes()).collect();
        let count = contributors.len();
        Ok(fitted_from_mean(
            grid.mean_of_sum(sum, count),
            count as u64,
            &sha2::Sha256::digest(&bytes),
            contributors,
            aggregate,
            excluded,
        ))
    }
}

/// A protected fit stage's outcome: `mean` of `total_examples` examples as
/// the one update the strategy sees (named `aggregate`), the digest of the
/// sum it came from, and the contributors' receipts and losses (not
/// example-weighted: the weights stay inside the protected vectors).
fn fitted_from_mean(
    mean: Vec<f32>,
    total_examples: u64,
    sum_digest: &[u8],
    contributors: Vec<Contribution>,
    aggregate: &str,
    excluded: Vec<cohort_ledger::Exclusion>,
) -> Fitted {
    let train_loss = weighted_loss(contributors.iter().map(|(_, (l, ..))| (1, *l)));
    let slowest_fit_secs = contributors
        .iter()
        .map(|(_, (_, s, _))| *s)
        .fold(0.0, f64::max);
    let (participants, receipts) = contributors
        .into_iter()
        .map(|(client, (_, _, receipt))| (client, receipt))
        .unzip();
    Fitted {
        participants,
        receipts,
        updates: vec![crate::strategy::ClientUpdate {
            client: aggregate.into(),
            delta: mean,
            num_examples: total_examples,
        }],
        total_examples,
        train_loss,
        slowest_fit_secs,
        aggregate_sha256: Some(hex::encode(sum_digest)),
        groups: Vec::new(),
        excluded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_is_seeded_and_bounded() {
        let pool: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
        let a = select_clients(&pool, 3, 7, 1, 1);
        assert_eq!(a.len(), 3);
        assert_eq!(a, select_clients(&pool, 3, 7, 1, 1));
        assert_ne!(a, select_clients(&pool, 3, 7, 2, 1));
        assert_eq!(select_clients(&pool[..2], 3, 7, 1, 1).len(), 2);
    }
}
