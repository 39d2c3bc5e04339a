//! A vertical job from enrollment to its last round (`[training] mode =
//! "vertical"`, see [`crate::vertical`]).
//!
//! 1. Enrollment: every connected site loads its file, reports whether it
//!    has the label column and its feature columns, and sends its ids hashed
//!    to ristretto255 and blinded with its own key, shuffled.
//! 2. Private set intersection, relayed: each list goes round the ring of
//!    sites, every site raising it to its own key (`VERTICAL_STEP_BLIND`);
//!    the coordinator compares the fully blinded lists and learns only how
//!    many ids all sites share ([`cohort_datasets::psi`]). Each site gets
//!    back the positions, in the list it sent, of the shared ids in one
//!    common order, and aligns its rows (`VERTICAL_STEP_ALIGN`).
//! 3. Rounds: each site gets its part of the current first layer and
//!    trains it over one relayed exchange ([`crate::vertical::relay`]); the
//!    label site also trains the top part, which it keeps: only the seeded
//!    initial top is ever sent to it (round 1), and it answers with the
//!    SHA-256 of the top it trained. The parts come back, are joined into the
//!    first layer on the joined columns and stored, signed and recorded like
//!    every round, the card and the ledger naming the kept top's digest.
//!
//! A restarted coordinator runs the intersection again (the sites' keys and
//! alignments live in their memory only) and continues after the last
//! recorded round, with the same sites.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cohort_datasets::{
    NumericTransform, Preprocessing, ResolvedSchema, VerticalAlignment, VerticalSiteInfo, psi,
};
use cohort_models::{LabelSiteReport, VerticalLayout};
use cohort_protocol::v1::{TaskHeader, TaskKind, VerticalStep, VerticalTask};
use tokio::sync::oneshot;
use tracing::info;

use super::{RoundRecord, RunError, Runner, json};
use crate::job::JobSpec;
use crate::registry::{Expect, Task, TaskAnswer, TaskBody, TaskOutcome};
use crate::store::{Enrollment, JobRow, Store, UpdateReceipt};
use crate::vertical::{RelayPlan, relay};

/// One site's answer to a VERTICAL task.
struct Reply {
    report_json: String,
    payload: Vec<u8>,
    payload_sha256: String,
    signature: Vec<u8>,
    task_id: String,
    num_examples: u64,
    compute_seconds: f64,
}

/// The sites of a vertical job, label site first.
struct Sites {
    names: Vec<String>,
    /// Feature columns of each site, in `names` order.
    widths: Vec<usize>,
}

fn failed(message: impl Into<String>) -> RunError {
    RunError::Failed(message.into())
}

fn blinded_list(payload: &[u8], site: &str) -> Result<Vec<psi::Blinded>, RunError> {
    if !payload.len().is_multiple_of(32) {
        return Err(failed(format!(
            "{site} sent a blinded list of {} bytes, not whole 32-byte points",
            payload.len()
        )));
    }
    Ok(payload
        .chunks_exact(32)
        .map(|c| {
            let mut point = [0u8; 32];
            point.copy_from_slice(c);
            point
        })
        .collect())
}

impl Runner {
    /// Sends each site its own task and body; the answers that arrive in
    /// time, and why the others did not. Once `stop` completes (the round's
    /// exchange failed, or ended a while ago), answers still missing are not
    /// waited for; `stop` says why.
    async fn vertical_gather(
        &self,
        tasks: Vec<(String, TaskHeader, Option<TaskBody>)>,
        timeout_secs: u64,
        stop: impl std::future::Future<Output = String>,
    ) -> (Vec<(String, Reply)>, Vec<(String, String)>) {
        let mut stop = std::pin::pin!(stop);
        let mut stopped: Option<String> = None;
        let mut waiting: Vec<(String, String, oneshot::Receiver<TaskOutcome>)> = Vec::new();
        for (client, mut header, body) in tasks {
            let task_id = uuid::Uuid::new_v4().simple().to_string();
            header.task_id = task_id.clone();
            if let Some(body) = &body {
                body.describe(&mut header);
            }
            let rx = self.registry.dispatch(&client, Task { header, body });
            self.registry.expect(&task_id, Expect::Nothing);
            waiting.push((client, task_id, rx));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        let mut expired = Vec::new();
        for (client, task_id, rx) in waiting {
            let received = if stopped.is_some() {
                // Whatever already arrived still counts.
                tokio::time::timeout(Duration::ZERO, rx).await
            } else {
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, rx) => r,
                    why = &mut stop => {
                        failed.push((client, why.clone()));
                        expired.push(task_id);
                        stopped = Some(why);
                        continue;
                    }
                }
            };
            match received {
                Ok(Ok(Ok(TaskAnswer::Vertical {
                    report_json,
                    payload,
                    payload_sha256,
                    signature,
                    num_examples,
                    compute_seconds,
                }))) => ok.push((
                    client,
                    Reply {
                        report_json,
                        payload,
                        payload_sha256,
                        signature,
                        task_id: task_id.clone(),
                        num_examples,
                        compute_seconds,
                    },
                )),
                Ok(Ok(Ok(_))) => failed.push((client, "answered with something else".into())),
                Ok(Ok(Err(reason))) => failed.push((client, reason)),
                Ok(Err(_)) => failed.push((client, "task was dropped".into())),
                Err(_) if stopped.is_some() => {
                    failed.push((client, stopped.clone().unwrap_or_default()));
                    expired.push(task_id);
                }
                Err(_) => {
                    failed.push((client, format!("no answer within {timeout_secs} s")));
                    expired.push(task_id);
                }
            }
        }
        self.registry.cancel(&expired);
        (ok, failed)
    }

    pub(super) async fn drive_vertical(
        &self,
        job: &JobRow,
        spec: &JobSpec,
    ) -> Result<(), RunError> {
        let layout = VerticalLayout::new(&spec.model).map_err(|e| failed(e.to_string()))?;
        let aligned = self.align_sites(job, spec).await?;
        let enrollment = Enrollment {
            participants: aligned.sites.names.clone(),
            preprocessing: aligned.preprocessing.clone(),
        };
        match &job.enrollment {
            Some(earlier) if earlier.participants != enrollment.participants => {
                return Err(failed(format!(
                    "the vertical job enrolled {:?}; now {:?} are here",
                    earlier.participants, enrollment.participants
                )));
            }
            Some(_) => {}
            None => {
                let record = self.enrollment_record(&job.id, &enrollment)?;
                self.ledger.append(&self.store, record, |tx| {
                    Store::set_enrollment_in(tx, &job.id, &enrollment)
                })?;
            }
        }
        self.vertical_rounds(job, spec, &layout, aligned, &enrollment)
            .await
    }

    /// Enrollment, the private set intersection and the sites' alignment
    /// (steps 1 and 2 of the module documentation).
    async fn align_sites(&self, job: &JobRow, spec: &JobSpec) -> Result<Alignment, RunError> {
        let t = &spec.training;
        let base = TaskHeader {
            job_id: job.id.clone(),
            kind: TaskKind::Vertical as i32,
            data_spec_json: json(&spec.data)?,
            split_seed: t.seed,
            validation_fraction: spec.data.validation_fraction,
            ..Default::default()
        };
        let step = |step: VerticalStep| TaskHeader {
            vertical: Some(VerticalTask {
                step: step as i32,
                ..Default::default()
            }),
            ..base.clone()
        };

        // 1. Enrollment.
        let candidates = self.wait_for_clients(None, t.min_clients, t).await;
        let tasks = candidates
            .iter()
            .map(|c| (c.clone(), step(VerticalStep::Enroll), None))
            .collect();
        let (enrolled, refused) = self
            .vertical_gather(tasks, t.round_timeout_secs, std::future::pending())
            .await;
        self.note_failures(&job.id, "vertical enrollment", &refused);
        let mut sites: Vec<(String, VerticalSiteInfo, Vec<psi::Blinded>)> = Vec::new();
        for (client, reply) in enrolled {
            let info: VerticalSiteInfo = serde_json::from_str(&reply.report_json)
                .map_err(|e| failed(format!("{client}'s enrollment report: {e}")))?;
            let list = blinded_list(&reply.payload, &client)?;
            if list.len() != info.ids {
                return Err(failed(format!(
                    "{client} announced {} ids and sent {}",
                    info.ids,
                    list.len()
                )));
            }
            sites.push((client, info, list));
        }
        let left_out = || {
            refused
                .iter()
                .map(|(c, r)| format!("{c}: {r}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if sites.len() < t.min_clients as usize {
            return Err(failed(format!(
                "vertical enrollment: {} of the required {} sites enrolled{}",
                sites.len(),
                t.min_clients,
                if refused.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", left_out())
                }
            )));
        }
        let label_sites: Vec<&str> = sites
            .iter()
            .filter(|s| s.1.label_site)
            .map(|s| s.0.as_str())
            .collect();
        match label_sites.as_slice() {
            [_] => {}
            [] => {
                return Err(failed(format!(
                    "vertical enrollment: no site has the label column `{}`; one site must \
                     hold the labels",
                    spec.data.label
                )));
            }
            many => {
                return Err(failed(format!(
                    "vertical enrollment: {} all have the label column `{}`; exactly one site \
                     may hold the labels",
                    many.join(", "),
                    spec.data.label
                )));
            }
        }
        // The label site first (its columns come first in the joined model),
        // then the feature sites by name.
        sites.sort_by(|a, b| (!a.1.label_site, &a.0).cmp(&(!b.1.label_site, &b.0)));
        if let Some(site) = sites.iter().find(|s| s.1.columns.is_empty()) {
            return Err(failed(format!(
                "vertical enrollment: {} has no feature column",
                site.0
            )));
        }
        let names: Vec<String> = sites.iter().map(|s| s.0.clone()).collect();
        info!(job = job.id, ?names, "vertical sites enrolled");

        // 2. Private set intersection, relayed round the ring.
        let psi_started = Instant::now();
        let n = sites.len();
        let mut lists: Vec<Vec<psi::Blinded>> = sites.iter().map(|s| s.2.clone()).collect();
        for round in 1..n {
            let tasks = (0..n)
                .map(|origin| {
                    let holder = (origin + round) % n;
                    let bytes: Vec<u8> = lists[origin].iter().flatten().copied().collect();
                    (
                        names[holder].clone(),
                        step(VerticalStep::Blind),
                        Some(TaskBody::bytes(bytes)),
                    )
                })
                .collect();
            let (blinded, refused) = self
                .vertical_gather(tasks, t.round_timeout_secs, std::future::pending())
                .await;
            if let Some((client, reason)) = refused.first() {
                return Err(failed(format!(
                    "private set intersection: {client} did not blind: {reason}"
                )));
            }
            let by_holder: HashMap<String, Reply> = blinded.into_iter().collect();
            for (origin, list) in lists.iter_mut().enumerate() {
                let holder = &names[(origin + round) % n];
                let reply = by_holder.get(holder).ok_or_else(|| {
                    failed(format!("private set intersection: no answer from {holder}"))
                })?;
                let next = blinded_list(&reply.payload, holder)?;
                if next.len() != list.len() {
                    return Err(failed(format!(
                        "private set intersection: {holder} returned {} points for {}",
                        next.len(),
                        list.len()
                    )));
                }
                *list = next;
            }
        }
        let positions =
            psi::intersect(&lists).map_err(|e| failed(format!("private set intersection: {e}")))?;
        let shared = positions[0].len();
        let psi_seconds = psi_started.elapsed().as_secs_f64();
        self.note_event(
            &job.id,
            format!(
                "private set intersection: {shared} ids shared by all {n} sites ({} ids sent in \
                 all, {psi_seconds:.2} s)",
                sites.iter().map(|s| s.2.len()).sum::<usize>()
            ),
        );

        // Each site aligns its rows.
        let tasks = positions
            .iter()
            .zip(&names)
            .map(|(pos, name)| {
                let bytes: Vec<u8> = pos.iter().flat_map(|&p| (p as u32).to_le_bytes()).collect();
                (
                    name.clone(),
                    step(VerticalStep::Align),
                    Some(TaskBody::bytes(bytes)),
                )
            })
            .collect();
        let (aligned, refused) = self
            .vertical_gather(tasks, t.round_timeout_secs, std::future::pending())
            .await;
        if let Some((client, reason)) = refused.first() {
            return Err(failed(format!("alignment: {client} refused: {reason}")));
        }
        let mut alignments: HashMap<String, VerticalAlignment> = HashMap::new();
        for (client, reply) in aligned {
            let a: VerticalAlignment = serde_json::from_str(&reply.report_json)
                .map_err(|e| failed(format!("{client}'s alignment report: {e}")))?;
            alignments.insert(client, a);
        }
        let mut transforms: Vec<NumericTransform> = Vec::new();
        let mut widths = Vec::with_capacity(n);
        let mut split = None;
        for (name, site) in names.iter().zip(&sites) {
            let a = alignments
                .remove(name)
                .ok_or_else(|| failed(format!("alignment: no answer from {name}")))?;
            let counts = (a.shared, a.train, a.validation);
            if a.shared != shared || split.is_some_and(|s| s != counts) {
                return Err(failed(format!(
                    "alignment: {name} reports {} shared rows ({} train, {} validation), \
                     the intersection has {shared}",
                    a.shared, a.train, a.validation
                )));
            }
            split = Some(counts);
            if a.transforms.len() != site.1.columns.len() {
                return Err(failed(format!(
                    "alignment: {name} reports {} columns, it enrolled with {}",
                    a.transforms.len(),
                    site.1.columns.len()
                )));
            }
            widths.push(a.transforms.len());
            transforms.extend(a.transforms);
        }
        let (_, train_rows, validation_rows) = split.unwrap_or_default();
        let preprocessing = Preprocessing {
            schema: ResolvedSchema {
                label: spec.data.label.clone(),
                positive: spec.data.positive.0.clone(),
                negative: spec.data.negative.as_ref().map(|v| v.0.clone()),
                numeric: transforms.iter().map(|t| t.name.clone()).collect(),
                categorical: Vec::new(),
            },
            numeric: transforms,
            categorical: Vec::new(),
        };
        Ok(Alignment {
            sites: Sites { names, widths },
            train_rows,
            validation_rows,
            preprocessing,
        })
    }

    /// The rounds of a vertical job (step 3).
    async fn vertical_rounds(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        layout: &VerticalLayout,
        aligned: Alignment,
        enrollment: &Enrollment,
    ) -> Result<(), RunError> {
        let t = &spec.training;
        let Alignment {
            sites,
            train_rows,
            validation_rows,
            ..
        } = aligned;
        // 3. Rounds.
        let n_features: usize = sites.widths.iter().sum();
        let n_params = spec.model.num_parameters(n_features);
        let strategy = spec.strategy.build(n_params);
        let recorded = self.store.rounds(&job.id)?;
        let label_site = &sites.names[0];
        // The seeded start: its top is public (it holds nothing learned), so
        // the coordinator may know it and send it to the label site once.
        let initial = || {
            let mut params =
                cohort_models::init_parameters(&spec.model, n_features, spec.training.seed);
            let top = params.split_off(n_params - layout.top_len());
            (params, top)
        };
        let (mut first_layer, mut top, first_round) = match recorded.last() {
            Some(last) => {
                let (first_layer, kept) = self.load_vertical_round(&job.id, last.round).await?;
                if kept.site != *label_site {
                    return Err(failed(format!(
                        "round {} was trained with the top part kept by {}; the label site is \
                         now {label_site}",
                        last.round, kept.site
                    )));
                }
                let top = if last.round == 0 {
                    let (_, top) = initial();
                    if cohort_models::parameters_sha256(&top) != kept.sha256 {
                        return Err(failed(
                            "the stored round 0 does not match the job's seeded start",
                        ));
                    }
                    TopStart::Initial(top)
                } else {
                    TopStart::Kept(kept.sha256)
                };
                (first_layer, top, last.round + 1)
            }
            None => {
                let (first_layer, top) = initial();
                self.save_round_with(
                    job,
                    spec,
                    enrollment,
                    &first_layer,
                    Some(kept_top(
                        label_site,
                        layout,
                        cohort_models::parameters_sha256(&top),
                    )),
                    strategy.as_ref(),
                    RoundRecord::initial(),
                )
                .await?;
                (first_layer, TopStart::Initial(top), 1)
            }
        };
        let schedule = cohort_models::vertical_schedule(
            train_rows,
            validation_rows,
            t.local_epochs as usize,
            t.batch_size as usize,
        );
        for round in first_round..=t.rounds {
            let started = Instant::now();
            let mut outcome = None;
            for attempt in 1..=t.max_round_attempts {
                if attempt > 1 {
                    // A site that dropped and came back lost its alignment:
                    // align everyone again (the same rows, in the same order,
                    // when the sites and their files are the same).
                    match self.align_sites(job, spec).await {
                        Ok(again) if again.same_as(&sites, train_rows, validation_rows) => {}
                        Ok(again) => {
                            return Err(failed(format!(
                                "round {round}: aligned again, the sites changed: {:?} with \
                                 {:?} columns and {} + {} shared rows, before {:?} with {:?} \
                                 and {train_rows} + {validation_rows}",
                                again.sites.names,
                                again.sites.widths,
                                again.train_rows,
                                again.validation_rows,
                                sites.names,
                                sites.widths
                            )));
                        }
                        Err(e) => {
                            self.note(
                                &job.id,
                                format!("round {round} attempt {attempt}: {e}; retrying"),
                            );
                            continue;
                        }
                    }
                }
                match self
                    .vertical_round(
                        job,
                        spec,
                        layout,
                        &sites,
                        (&first_layer, &top),
                        &schedule,
                        round,
                    )
                    .await?
                {
                    Ok(done) => {
                        outcome = Some((done, attempt));
                        break;
                    }
                    Err(reason) => self.note(
                        &job.id,
                        format!("round {round} attempt {attempt}: {reason}; retrying"),
                    ),
                }
            }
            let Some((done, attempts)) = outcome else {
                return Err(failed(format!(
                    "round {round}: no vertical exchange completed in {} attempts",
                    t.max_round_attempts
                )));
            };
            self.note_event(&job.id, done.summary.clone());
            self.save_round_with(
                job,
                spec,
                enrollment,
                &done.first_layer,
                Some(kept_top(label_site, layout, done.top_sha256.clone())),
                strategy.as_ref(),
                RoundRecord {
                    round,
                    participants: sites.names.clone(),
                    updates: done.receipts,
                    aggregate_sha256: None,
                    excluded: Vec::new(),
                    metrics: Some(done.report.validation.clone()),
                    train_loss: Some(done.report.train_loss),
                    attempts,
                    duration_secs: started.elapsed().as_secs_f64(),
                    slowest_fit_secs: done.slowest_secs,
                    slowest_evaluate_secs: 0.0,
                    valuation: None,
                },
            )
            .await?;
            info!(
                job = job.id,
                round,
                auc = done.report.validation.auc,
                leak_auc = done.report.leak_auc,
                "vertical round completed"
            );
            first_layer = done.first_layer;
            top = TopStart::Kept(done.top_sha256);
        }
        Ok(())
    }

    /// The stored first layer of `round` of a vertical job and what its card
    /// says of the top the label site kept.
    async fn load_vertical_round(
        &self,
        job_id: &str,
        round: u32,
    ) -> Result<(Vec<f32>, cohort_models::KeptTop), RunError> {
        let corrupt = |e: String| failed(format!("stored model of round {round}: {e}"));
        let card = self
            .store
            .get_object(&super::card_key(job_id, round))
            .await?;
        let card: cohort_models::ModelCard =
            serde_json::from_slice(&card).map_err(|e| corrupt(e.to_string()))?;
        let kept = card
            .kept_top
            .clone()
            .ok_or_else(|| corrupt("its card names no kept top part".into()))?;
        let bytes = self
            .store
            .get_object(&super::model_key(job_id, round))
            .await?;
        let first_layer = cohort_models::params_from_safetensors(&card, &bytes)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok((first_layer, kept))
    }

    /// One attempt of a round: `Ok(Err(reason))` when the exchange failed
    /// (the attempt may be retried), `Err` when the job cannot go on.
    #[allow(clippy::too_many_arguments)]
    async fn vertical_round(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        layout: &VerticalLayout,
        sites: &Sites,
        (first_layer, top): (&[f32], &TopStart),
        schedule: &[cohort_models::VerticalBatch],
        round: u32,
    ) -> Result<Result<RoundDone, String>, RunError> {
        let t = &spec.training;
        let available = self.registry.connected();
        if let Some(missing) = sites.names.iter().find(|s| !available.contains(s)) {
            // Wait for it like any round waits for its hospitals.
            let back = self
                .wait_for_clients(Some(&sites.names), sites.names.len() as u32, t)
                .await;
            if back.len() < sites.names.len() {
                return Ok(Err(format!("site {missing} is not connected")));
            }
        }
        let parts = cohort_models::split_vertical_first_layer(layout, first_layer, &sites.widths)
            .map_err(|e| failed(format!("round {round}: {e}")))?;
        let (exchange_id, links) = self.registry.vertical.open(&sites.names);
        let plan = RelayPlan {
            label_site: sites.names[0].clone(),
            feature_sites: sites.names[1..].to_vec(),
            cut_width: layout.cut_width,
            schedule: schedule.to_vec(),
            frame_timeout: Duration::from_secs(t.round_timeout_secs),
        };
        // Tells the gathering below to stop waiting once the exchange failed.
        let (failed_tx, mut failed_rx) = tokio::sync::watch::channel(false);
        let relay = tokio::spawn(async move {
            let result = relay(plan, links).await;
            if result.is_err() {
                let _ = failed_tx.send(true);
            }
            result
        });
        let answer_secs = t.round_timeout_secs;
        let stop = async move {
            if failed_rx.wait_for(|failed| *failed).await.is_ok() {
                return "its round's exchange stopped".to_string();
            }
            // The exchange is over: a site that does not send its part soon
            // after has gone.
            tokio::time::sleep(Duration::from_secs(answer_secs)).await;
            format!("no part within {answer_secs} s of the exchange's end")
        };
        let train_config_json = json(&spec.train_config(round))?;
        let model_spec_json = json(&spec.model)?;
        let tasks = sites
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut part = parts[i].clone();
                if let (0, TopStart::Initial(initial)) = (i, top) {
                    part.extend_from_slice(initial);
                }
                let header = TaskHeader {
                    job_id: job.id.clone(),
                    round,
                    kind: TaskKind::Vertical as i32,
                    data_spec_json: String::new(),
                    model_spec_json: model_spec_json.clone(),
                    train_config_json: train_config_json.clone(),
                    parameters_sha256: cohort_models::parameters_sha256(&part),
                    vertical: Some(VerticalTask {
                        step: VerticalStep::Train as i32,
                        exchange_id: exchange_id.clone(),
                        label_site: i == 0,
                        cut_width: layout.cut_width as u32,
                        max_norm_defence: spec.max_norm_defence().unwrap_or(0.0),
                        n_features: sites.widths[i] as u32,
                        top_sha256: if i == 0 { top.sha256() } else { String::new() },
                    }),
                    ..Default::default()
                };
                (name.clone(), header, Some(TaskBody::parameters(&part)))
            })
            .collect();
        // No bound on the whole round while the relay makes progress (a long
        // epoch over many rows is not a failure): the round's timeout bounds
        // each frame of the relay, and `stop` ends the wait when the relay
        // fails or a part is late after the exchange's end. A week is only
        // a backstop.
        const BACKSTOP_SECS: u64 = 7 * 24 * 3600;
        let (answers, refused) = self.vertical_gather(tasks, BACKSTOP_SECS, stop).await;
        let relayed = relay.await;
        self.registry.vertical.close(&exchange_id);
        let stats = match relayed {
            Ok(Ok(stats)) => stats,
            Ok(Err(failure)) => return Ok(Err(format!("vertical exchange stopped: {failure}"))),
            Err(e) => return Ok(Err(format!("the relay crashed: {e}"))),
        };
        if let Some((client, reason)) = refused.first() {
            return Ok(Err(format!("{client} did not finish: {reason}")));
        }
        let mut by_site: HashMap<String, Reply> = answers.into_iter().collect();
        let mut site_parts = Vec::with_capacity(sites.names.len());
        let mut receipts = Vec::with_capacity(sites.names.len());
        let mut report = None;
        let mut top_sha256 = String::new();
        let mut slowest_secs = 0.0f64;
        for (i, name) in sites.names.iter().enumerate() {
            let reply = by_site
                .remove(name)
                .ok_or_else(|| failed(format!("round {round}: no part from {name}")))?;
            // The label site's block is followed by the digest of the top
            // part it kept.
            let block = if i == 0 {
                let Some(at) = reply.payload.len().checked_sub(32) else {
                    return Ok(Err(format!(
                        "{name} sent {} bytes, not its block and the digest of its top part",
                        reply.payload.len()
                    )));
                };
                let (block, digest) = reply.payload.split_at(at);
                top_sha256 = hex::encode(digest);
                block
            } else {
                &reply.payload[..]
            };
            let values = match cohort_models::parameters_from_bytes(block) {
                Ok(v) => v,
                Err(e) => return Ok(Err(format!("{name}'s part: {e}"))),
            };
            let expected = layout.site_len(sites.widths[i]);
            if values.len() != expected {
                return Ok(Err(format!(
                    "{name} sent a part of {} values, {expected} expected",
                    values.len()
                )));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Ok(Err(format!("{name}'s part has a non-finite value")));
            }
            if i == 0 {
                let r: LabelSiteReport = match serde_json::from_str(&reply.report_json) {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(format!("{name}'s report: {e}"))),
                };
                report = Some(r);
            }
            slowest_secs = slowest_secs.max(reply.compute_seconds);
            // What the site sent and signed: its whole answer (the label
            // site's block and its top's digest together).
            receipts.push(UpdateReceipt {
                client: name.clone(),
                task_id: reply.task_id.clone(),
                num_examples: reply.num_examples,
                parameter_count: reply.payload.len() as u64,
                update_sha256: reply.payload_sha256.clone(),
                signature: hex::encode(&reply.signature),
                dataset_sha256: String::new(),
                dp_epsilon: None,
                proof: None,
            });
            site_parts.push(values);
        }
        let Some(report) = report else {
            return Ok(Err("the label site sent no report".into()));
        };
        let joined: Vec<(usize, &[f32])> = sites
            .widths
            .iter()
            .zip(&site_parts)
            .map(|(&w, p)| (w, p.as_slice()))
            .collect();
        let first_layer = cohort_models::join_vertical_first_layer(layout, &joined)
            .map_err(|e| failed(format!("round {round}: {e}")))?;
        let summary = format!(
            "round {round}: vertical exchange of {} batches, {} bytes of activations up, {} \
             bytes of gradients down; validation AUC {:.4}; label leakage (norm-attack AUC on \
             the gradients sent, 0.5 = none) {:.3} mean, {:.3} worst epoch, {}",
            stats.batches,
            stats.activation_bytes,
            stats.gradient_bytes * (sites.names.len() as u64 - 1),
            report.validation.auc,
            report.leak_auc,
            report.worst_leak_auc,
            match report.defence {
                Some(scale) => format!("max-norm defence on (scale {scale})"),
                None => "no defence".to_string(),
            }
        );
        Ok(Ok(RoundDone {
            first_layer,
            top_sha256,
            report,
            receipts,
            summary,
            slowest_secs,
        }))
    }
}

/// The sites of a vertical job, aligned.
struct Alignment {
    sites: Sites,
    train_rows: usize,
    validation_rows: usize,
    preprocessing: Preprocessing,
}

impl Alignment {
    fn same_as(&self, sites: &Sites, train_rows: usize, validation_rows: usize) -> bool {
        self.sites.names == sites.names
            && self.sites.widths == sites.widths
            && self.train_rows == train_rows
            && self.validation_rows == validation_rows
    }
}

/// Where the label site's top part starts a round from.
enum TopStart {
    /// Round 1: the seeded initial top, sent to the label site with its
    /// block (public: it holds nothing learned).
    Initial(Vec<f32>),
    /// The hex SHA-256 of the top the label site kept after the last
    /// recorded round; its values never reach the coordinator.
    Kept(String),
}

impl TopStart {
    fn sha256(&self) -> String {
        match self {
            TopStart::Initial(top) => cohort_models::parameters_sha256(top),
            TopStart::Kept(sha256) => sha256.clone(),
        }
    }
}

fn kept_top(site: &str, layout: &VerticalLayout, sha256: String) -> cohort_models::KeptTop {
    cohort_models::KeptTop {
        site: site.to_string(),
        values: layout.top_len(),
        sha256,
    }
}

/// A completed vertical round.
struct RoundDone {
    /// The sites' blocks joined: the first layer on the joined columns.
    first_layer: Vec<f32>,
    /// The hex SHA-256 of the top part the label site trained and kept.
    top_sha256: String,
    report: LabelSiteReport,
    receipts: Vec<UpdateReceipt>,
    summary: String,
    slowest_secs: f64,
}
