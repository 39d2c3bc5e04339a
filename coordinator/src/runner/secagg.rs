//! The fit stage of a round under secure aggregation (SecAgg+): four
//! exchanges with the selected hospitals, after which the coordinator holds
//! the sum of the surviving hospitals' encoded updates and nothing else.
//!
//! 1. ADVERTISE: each hospital makes this attempt's key pairs and signs the
//!    public halves with its identity key.
//! 2. SHARE: each gets its neighbours' signed keys (with their certificates,
//!    so it checks them itself: the coordinator cannot substitute keys) and
//!    sends each neighbour encrypted Shamir shares of its secrets.
//! 3. FIT: each trains, encodes its update (clip, weight, quantize; the
//!    example count rides inside the vector) and masks it. Masked vectors
//!    are added into a running sum as they arrive and are never stored.
//! 4. UNMASK: the survivors reveal the shares needed to remove the masks.
//!
//! A hospital may vanish at any stage; below the threshold the attempt is
//! abandoned (nothing has been revealed yet) and the round is retried.

use std::collections::BTreeMap;
use std::sync::Arc;

use cohort_privacy::quantize::Quantizer;
use cohort_privacy::secagg::{
    Advertisement, ClientId, Params, ServerRound, decode_reveals, decode_shares, encode_shares,
    graph_seed, neighbourhoods,
};
use cohort_proofs::committed::{self, RistrettoPoint};
use cohort_protocol::v1::{SecAggAdvert, SecAggTask, TaskHeader, TaskKind};

use super::proofs::UpdateProofKeys;
use super::splitfed::SplitTasks;
use super::{Fitted, RunError, Runner, json};
use crate::job::{Aggregation, JobSpec, UpdateProofs};
use crate::registry::{Expect, TaskAnswer, TaskBody};
use crate::store::{Enrollment, JobRow};

/// The aggregate's stand-in name: the strategy sees one update, the mean.
const AGGREGATE: &str = "secure-aggregate";

/// How a protected round encodes updates ([`Runner::protected_encoding`]).
pub(super) enum Encoding {
    Quantized(Quantizer),
    Committed(UpdateProofKeys),
}

impl Encoding {
    pub(super) fn quantizer(&self) -> Option<&Quantizer> {
        match self {
            Encoding::Quantized(q) => Some(q),
            Encoding::Committed(_) => None,
        }
    }

    /// The update proofs' keys, when updates are committed.
    pub(super) fn proofs(&self) -> Option<&UpdateProofKeys> {
        match self {
            Encoding::Committed(keys) => Some(keys),
            Encoding::Quantized(_) => None,
        }
    }
}

/// One hospital's stage-3 input.
pub(super) enum MaskedInput {
    /// Masked words mod `2^bits`.
    Words(Vec<u64>),
    /// Pedersen commitments whose blindings are the masks (update proofs
    /// under secure aggregation, `cohort_proofs::committed`).
    Committed(Vec<RistrettoPoint>),
}

/// How a secure-aggregation session ended.
pub(super) enum SecureSum<T> {
    /// The sum, and what `accept` kept of each contributor's answer.
    Summed(Vec<u64>, Vec<(String, T)>),
    /// A session of committed inputs: the sum of the survivors' entries,
    /// opened, and what `accept` kept of each contributor's answer.
    Committed(Vec<i64>, Vec<(String, T)>),
    /// Abandoned (too few at some stage, or the sum unrecoverable); these
    /// hospitals failed a stage of it.
    Abandoned(Vec<String>),
}

/// What one secure-aggregation session sums, and with whom.
pub(super) struct SecureSession {
    /// What the session is for, in notes and stage names ("round 3").
    pub label: String,
    pub attempt: u32,
    pub session: [u8; 32],
    pub params: Params,
    /// Degree of the neighbour graph.
    pub neighbours: u32,
    /// Every task's header, before its kind and `secagg` are set.
    pub header: TaskHeader,
    /// Fields of every task's `secagg` beyond the session's own.
    pub secagg: SecAggTask,
    /// Stage 3: the task kind, its answer's name, and what the hospitals
    /// that answered did (for notes).
    pub input: (TaskKind, &'static str, &'static str),
    /// What stage 3's tasks carry after their header.
    pub body: Option<TaskBody>,
    /// SplitFed: each hospital's split exchange, named in its stage-3 task.
    pub splits: SplitTasks,
    /// Values in each hospital's masked input.
    pub input_len: usize,
    /// Whether the masked inputs are Pedersen commitments (update proofs).
    pub committed: bool,
    /// Hospitals needed at every stage.
    pub needed: usize,
    pub timeout_secs: u64,
    /// The crash point reached as each hospital's unmasking shares are
    /// accepted (`COHORT_CRASH_AT`, fault-injection tests).
    pub unmask_crash_point: &'static str,
}

impl Runner {
    /// The fit stage under the job's protected aggregation: SecAgg+ or
    /// homomorphic, the coordinator learning only the sum of `selected`'s
    /// updates. `None` when the attempt had to be abandoned (too few
    /// hospitals at some stage, or the sum could not be recovered); the
    /// round is then retried. Under SecAgg+ every stage needs `min_clients`
    /// (a valuation group passes its size, so that the sum recovered is
    /// exactly the group's); homomorphic aggregation needs every member's
    /// update. In a SplitFed round `global` is what the hospitals train
    /// (their parts) and `splits` names each one's exchange.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn protected_fit(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        enrollment: &Enrollment,
        fit: &TaskHeader,
        global: &Arc<Vec<f32>>,
        selected: &[String],
        round_attempt: (u32, u32),
        min_clients: u32,
        splits: &SplitTasks,
        barred: &mut Vec<cohort_ledger::Exclusion>,
    ) -> Result<Option<Fitted>, RunError> {
        match spec.privacy.aggregation {
            Aggregation::He => {
                self.he_fit(
                    job,
                    spec,
                    enrollment,
                    fit,
                    global,
                    selected,
                    round_attempt,
                    splits,
                    barred,
                )
                .await
            }
            _ => {
                self.secure_fit_with(
                    job,
                    spec,
                    enrollment,
                    fit,
                    global,
                    selected,
                    round_attempt,
                    min_clients,
                    splits,
                )
                .await
            }
        }
    }

    /// How a protected round encodes each hospital's update. With update
    /// proofs: committed on the job's grid, and the mean is uniform (each
    /// hospital's influence is what the bound allows). Otherwise
    /// quantized: example-weighted (the count rides inside), or under
    /// client-level DP uniform with room in the modulus for every
    /// hospital's share of the noise, sized for the `fewest` hospitals
    /// whose shares can end up in the sum. `(clip, bits)` are the
    /// aggregation mode's quantizer settings.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn protected_encoding(
        &self,
        spec: &JobSpec,
        enrollment: &Enrollment,
        selected: &[String],
        len: usize,
        (clip, bits): (f64, u32),
        fewest: u32,
        stop: impl Fn(String) -> RunError,
    ) -> Result<Encoding, RunError> {
        let n = selected.len() as u32;
        if spec.proofs.update == UpdateProofs::Norm {
            let grid = spec.update_grid().map_err(|e| stop(e.to_string()))?;
            return Ok(Encoding::Committed(UpdateProofKeys::committed(grid, len)));
        }
        let quantizer = match super::dp::encoded_noise(spec)? {
            Some((dp_clip, sigma)) => {
                cohort_privacy::distributed::quantizer(dp_clip, bits, n, sigma, fewest, len)
                    .map_err(|e| stop(e.to_string()))?
            }
            None => {
                let max_examples = self.max_rows(selected, enrollment)?;
                Quantizer::for_weighted_sum(clip, bits, n, max_examples)
                    .map_err(|e| stop(e.to_string()))?
            }
        };
        Ok(Encoding::Quantized(quantizer))
    }

    /// [`Runner::protected_fit`] under SecAgg+.
    #[allow(clippy::too_many_arguments)]
    async fn secure_fit_with(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        enrollment: &Enrollment,
        fit: &TaskHeader,
        global: &Arc<Vec<f32>>,
        selected: &[String],
        (round, attempt): (u32, u32),
        min_clients: u32,
        splits: &SplitTasks,
    ) -> Result<Option<Fitted>, RunError> {
        let t = &spec.training;
        let config = &spec.privacy.secagg;
        let n = selected.len() as u32;
        let stop = |e: String| RunError::Failed(format!("round {round}: secure aggregation: {e}"));
        let Ok((params, k)) =
            Params::from_fractions(n, config.neighbours, config.threshold, config.bits)
        else {
            self.note(
                &job.id,
                format!(
                    "round {round} attempt {attempt}: {n} hospitals are too few for secure aggregation; retrying"
                ),
            );
            return Ok(None);
        };
        let needed = params.min_survivors.max(min_clients) as usize;
        let encoding = self.protected_encoding(
            spec,
            enrollment,
            selected,
            global.len(),
            (config.clip, config.bits),
            params.min_survivors,
            stop,
        )?;
        let (quantizer, proofs) = (encoding.quantizer(), encoding.proofs());
        let session = cohort_protocol::secagg_session(&job.id, round, attempt, selected);
        let secure = SecureSession {
            label: format!("round {round}"),
            attempt,
            session,
            params,
            neighbours: k,
            header: fit.clone(),
            secagg: SecAggTask {
                quantizer_json: quantizer.map(json).transpose()?.unwrap_or_default(),
                ..Default::default()
            },
            input: (TaskKind::Fit, "masked update", "sent a masked update"),
            body: Some(TaskBody::parameters(global)),
            splits: splits.clone(),
            // The example count rides inside a quantized update.
            input_len: global.len() + usize::from(proofs.is_none()),
            committed: proofs.is_some(),
            needed,
            timeout_secs: t.round_timeout_secs,
            unmask_crash_point: "secagg-unmask",
        };
        let mut excluded = Vec::new();
        let mut proved = Vec::new();
        let summed = self
            .secure_sum(job, secure, selected, |client, a| match (a, proofs) {
                (
                    TaskAnswer::MaskedFit {
                        masked,
                        train_loss,
                        compute_seconds,
                        receipt,
                    },
                    None,
                ) => Ok((
                    MaskedInput::Words(masked),
                    (train_loss, compute_seconds, receipt),
                )),
                (
                    TaskAnswer::CommittedFit {
                        commitments,
                        proof,
                        train_loss,
                        compute_seconds,
                        mut receipt,
                    },
                    Some(keys),
                ) => {
                    let context = cohort_proofs::Context {
                        job_id: job.id.clone(),
                        round,
                        client: client.to_string(),
                    };
                    match keys.check_committed(&context, &commitments, &proof) {
                        Ok((record, points)) => {
                            receipt.proof = Some(record);
                            // For validators: the proof is about these bytes.
                            proved.push((client.to_string(), commitments));
                            Ok((
                                MaskedInput::Committed(points),
                                (train_loss, compute_seconds, receipt),
                            ))
                        }
                        // Left out like a hospital that vanished after
                        // sharing: unmasking removes its pairwise masks.
                        Err(reason) => {
                            excluded.push(cohort_ledger::Exclusion {
                                client: client.to_string(),
                                reason: reason.clone(),
                            });
                            Err(reason)
                        }
                    }
                }
                _ => Err("answered a masked fit task with something else".into()),
            })
            .await?;
        match (summed, quantizer, proofs) {
            (SecureSum::Summed(sum, contributors), Some(quantizer), _) => {
                super::fitted_from_sum(&sum, quantizer, contributors, AGGREGATE)
                    .map(Some)
                    .map_err(stop)
            }
            (SecureSum::Committed(sum, contributors), _, Some(keys)) => Ok(Some(
                self.fitted_from_committed_sum(
                    &job.id,
                    round,
                    proved,
                    &sum,
                    keys.grid(),
                    contributors,
                    AGGREGATE,
                    excluded,
                )
                .await?,
            )),
            _ => Ok(None),
        }
    }

    /// One secure-aggregation session with `selected`: keys advertised,
    /// shares routed, every hospital's masked input (stage 3, `input`)
    /// added into a running sum as it arrives, then unmasking. Abandoned
    /// when fewer than `needed` hospitals took part in some stage or the
    /// sum could not be recovered (before anything is revealed, or with
    /// reveals useless to anyone); otherwise the sum and what `accept` kept
    /// of each hospital's stage-3 answer.
    pub(super) async fn secure_sum<T>(
        &self,
        job: &JobRow,
        secure: SecureSession,
        selected: &[String],
        mut accept: impl FnMut(&str, TaskAnswer) -> Result<(MaskedInput, T), String>,
    ) -> Result<SecureSum<T>, RunError> {
        let SecureSession {
            label,
            attempt,
            session,
            params,
            neighbours: k,
            header: base_header,
            secagg: base_secagg,
            input: (input_kind, input_name, input_done),
            body,
            splits,
            input_len,
            committed,
            needed,
            timeout_secs,
            unmask_crash_point,
        } = secure;
        let stop = |e: String| RunError::Failed(format!("{label}: secure aggregation: {e}"));
        let n = selected.len() as u32;
        let graph = neighbourhoods(n, k, &graph_seed(&session));
        let mut server = ServerRound::try_new(&session, params.clone(), graph, input_len)
            .map_err(|e| stop(e.to_string()))?;
        let base = SecAggTask {
            members: selected.to_vec(),
            attempt,
            neighbours: k,
            params_json: json(&params)?,
            ..base_secagg
        };
        let id_of = |client: &str| -> ClientId {
            selected.iter().position(|c| c == client).unwrap_or(0) as ClientId
        };
        let task = |kind: TaskKind, id: ClientId, fill: &dyn Fn(&mut SecAggTask)| {
            let mut secagg = SecAggTask {
                my_id: id,
                ..base.clone()
            };
            fill(&mut secagg);
            let mut header = TaskHeader {
                kind: kind as i32,
                secagg: Some(secagg),
                ..base_header.clone()
            };
            if kind != TaskKind::Fit {
                // Only the FIT exchange carries the global model.
                header.parameters_sha256.clear();
            }
            header
        };
        let mut failed: Vec<String> = Vec::new();
        let stage_short = |stage: &str, have: usize| {
            format!(
                "{label} attempt {attempt}: secure aggregation: {have} of the required {needed} hospitals {stage}; abandoning the attempt before anything is revealed, retrying"
            )
        };

        // Stage 1: signed key advertisements.
        let tasks = selected
            .iter()
            .map(|c| {
                let id = id_of(c);
                (c.clone(), task(TaskKind::SecaggAdvertise, id, &|_| {}))
            })
            .collect();
        let mut relayed: BTreeMap<ClientId, SecAggAdvert> = BTreeMap::new();
        let answers = self
            .exchange(
                &job.id,
                format!("{label} key advertisement"),
                timeout_secs,
                tasks,
                None,
                Expect::Nothing,
                |client, a| {
                    let TaskAnswer::SecAggAdvertise {
                        advertisement,
                        signature,
                        certificate_der,
                    } = a
                    else {
                        return Err("answered a key advertisement task with something else".into());
                    };
                    let id = id_of(client);
                    let ad =
                        Advertisement::from_bytes(&advertisement).map_err(|e| e.to_string())?;
                    if !certificate_der.is_empty() {
                        let signer = cohort_identity::Principal::from_certificate(&certificate_der)
                            .map_err(|e| e.to_string())?;
                        signer
                            .signing_key
                            .verify(
                                cohort_protocol::SECAGG_ADVERT_CONTEXT,
                                &ad.statement(&session, id),
                                &signature,
                            )
                            .map_err(|e| format!("key advertisement: {e}"))?;
                    }
                    server.advertised(id, ad).map_err(|e| e.to_string())?;
                    relayed.insert(
                        id,
                        SecAggAdvert {
                            id,
                            advertisement,
                            signature,
                            certificate_der,
                        },
                    );
                    Ok(())
                },
            )
            .await;
        failed.extend(answers.failed.iter().map(|(c, _)| c.clone()));
        if answers.ok.len() < needed {
            self.note(&job.id, stage_short("advertised keys", answers.ok.len()));
            return Ok(SecureSum::Abandoned(failed));
        }

        // Stage 2: encrypted shares, routed by the coordinator.
        let tasks = answers
            .ok
            .iter()
            .map(|(c, ())| {
                let id = id_of(c);
                let adverts: Vec<SecAggAdvert> = server
                    .adverts_for(id)
                    .keys()
                    .filter_map(|v| relayed.get(v).cloned())
                    .collect();
                let header = task(TaskKind::SecaggShare, id, &|s| s.adverts = adverts.clone());
                (c.clone(), header)
            })
            .collect();
        let answers = self
            .exchange(
                &job.id,
                format!("{label} key sharing"),
                timeout_secs,
                tasks,
                None,
                Expect::Nothing,
                |client, a| {
                    let TaskAnswer::SecAggShares(bytes) = a else {
                        return Err("answered a key-sharing task with something else".into());
                    };
                    let batch = decode_shares(&bytes).map_err(|e| e.to_string())?;
                    server
                        .shares_sent(id_of(client), batch)
                        .map_err(|e| e.to_string())
                },
            )
            .await;
        failed.extend(answers.failed.iter().map(|(c, _)| c.clone()));
        if answers.ok.len() < needed {
            self.note(&job.id, stage_short("shared their keys", answers.ok.len()));
            return Ok(SecureSum::Abandoned(failed));
        }

        // Stage 3: the masked inputs (for a FIT, after local training).
        let tasks = answers
            .ok
            .iter()
            .map(|(c, ())| {
                let id = id_of(c);
                let shares = encode_shares(&server.shares_for(id));
                let mut header = task(input_kind, id, &|s| s.shares = shares.clone());
                header.split = splits.get(c).cloned();
                (c.clone(), header)
            })
            .collect();
        let expect = if committed {
            Expect::Commitments(input_len as u64)
        } else {
            Expect::Masked {
                count: input_len as u64,
                bits: params.bits,
            }
        };
        // The sum of committed inputs, kept here (a group the SecAgg+ state
        // machine does not implement): no individual input is kept.
        let mut points = Vec::new();
        let answers = self
            .exchange(
                &job.id,
                format!("{label} {input_name}"),
                timeout_secs,
                tasks,
                body,
                expect,
                |client, a| {
                    let (masked, kept) = accept(client, a)?;
                    match masked {
                        MaskedInput::Words(masked) => server
                            .masked_input(id_of(client), masked)
                            .map_err(|e| e.to_string())?,
                        MaskedInput::Committed(commitments) => {
                            server
                                .committed_input(id_of(client), commitments.len())
                                .map_err(|e| e.to_string())?;
                            committed::add_into(&mut points, &commitments);
                        }
                    }
                    Ok(kept)
                },
            )
            .await;
        failed.extend(answers.failed.iter().map(|(c, _)| c.clone()));
        if answers.ok.len() < needed {
            self.note(&job.id, stage_short(input_done, answers.ok.len()));
            return Ok(SecureSum::Abandoned(failed));
        }

        // Stage 4: unmasking.
        let survivors: Vec<ClientId> = server.survivors().into_iter().collect();
        let tasks = answers
            .ok
            .iter()
            .map(|(c, _)| {
                let header = task(TaskKind::SecaggUnmask, id_of(c), &|s| {
                    s.survivors = survivors.clone()
                });
                (c.clone(), header)
            })
            .collect();
        // Whoever did not reveal is noted; finish() says whether enough did.
        let revealed = self
            .exchange(
                &job.id,
                format!("{label} unmasking"),
                timeout_secs,
                tasks,
                None,
                Expect::Nothing,
                |client, a| {
                    let TaskAnswer::SecAggReveal(bytes) = a else {
                        return Err("answered an unmasking task with something else".into());
                    };
                    let reveals = decode_reveals(&bytes).map_err(|e| e.to_string())?;
                    server
                        .reveal(id_of(client), reveals)
                        .map_err(|e| e.to_string())?;
                    cohort_protocol::crash::reached(unmask_crash_point);
                    Ok(())
                },
            )
            .await;
        failed.extend(revealed.failed.iter().map(|(c, _)| c.clone()));
        let could_not = |e: String| {
            format!(
                "{label} attempt {attempt}: secure aggregation could not recover the sum: {e}; retrying"
            )
        };
        if committed {
            let opened = server
                .finish_blindings()
                .map_err(|e| e.to_string())
                .and_then(|residual| {
                    let residual = residual
                        .iter()
                        .map(|r| committed::blinding_from_bytes(r.to_bytes()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string())?;
                    committed::open_sum(&points, &residual, answers.ok.len())
                        .map_err(|e| e.to_string())
                });
            return Ok(match opened {
                Ok(sum) => SecureSum::Committed(sum, answers.ok),
                Err(e) => {
                    self.note(&job.id, could_not(e));
                    SecureSum::Abandoned(failed)
                }
            });
        }
        match server.finish() {
            Ok(sum) => Ok(SecureSum::Summed(sum, answers.ok)),
            Err(e) => {
                self.note(&job.id, could_not(e.to_string()));
                Ok(SecureSum::Abandoned(failed))
            }
        }
    }

    /// The largest row count the selected hospitals reported: a bound on
    /// the example count each encodes into its update.
    pub(super) fn max_rows(
        &self,
        selected: &[String],
        enrollment: &Enrollment,
    ) -> Result<u64, RunError> {
        let clients = self.store.clients()?;
        let rows = clients
            .iter()
            .filter(|c| selected.contains(&c.name) && enrollment.participants.contains(&c.name))
            .filter_map(|c| {
                serde_json::from_str::<cohort_datasets::QualitySummary>(&c.quality_summary_json)
                    .ok()
            })
            .map(|q| q.rows)
            .max()
            .unwrap_or(0);
        Ok(rows.max(1))
    }

    /// One exchange of the protocol: the tasks out, the answers in (each
    /// through `accept` as it is collected), the hospitals that failed noted.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn exchange<T>(
        &self,
        job_id: &str,
        stage: String,
        timeout_secs: u64,
        tasks: Vec<(String, TaskHeader)>,
        body: Option<TaskBody>,
        expect: Expect,
        accept: impl FnMut(&str, TaskAnswer) -> Result<T, String>,
    ) -> super::Answers<T> {
        let answers = self
            .gather_each(tasks, body, expect, timeout_secs, accept)
            .await;
        self.note_failures(job_id, &stage, &answers.failed);
        answers
    }
}
