//! A round's contribution valuation (`[valuation]` jobs): the grouped fit
//! stage under secure or homomorphic aggregation, the scoring of candidate
//! models by the hospitals, and the values the round's payout follows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cohort_protocol::v1::TaskHeader;
use serde::{Deserialize, Serialize};

use super::splitfed::SplitTasks;
use super::{Fitted, RunError, Runner};
use crate::job::{Aggregation, JobSpec, TrainingMode};
use crate::store::{Enrollment, JobRow};
use crate::strategy::ClientUpdate;
use crate::valuation::partition::{self, GroupValue};
use crate::valuation::{self, Coalition, ValuationSpec};

/// What a round's valuation produced, as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundValuation {
    pub method: String,
    pub utility_evaluations: u64,
    /// Partition valuation: hex of the grouping's public seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_seed: Option<String>,
    /// Partition valuation: every group whose sum was decrypted in this
    /// round, over all its attempts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<Vec<String>>,
    /// Partition valuation: the groups of the attempt that completed, with
    /// their Shapley values (the least-squares observations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupValue>,
    /// The utility of every player together (the round's aggregate).
    #[serde(default)]
    pub total_utility: f64,
    /// Each of the round's hospitals: its value this round.
    pub values: BTreeMap<String, f64>,
    /// Seconds the coordinator spent choosing coalitions and computing
    /// values (the hospitals score the candidates inside the round's
    /// evaluation task).
    pub seconds: f64,
}

/// A round's valuation between the aggregate and the hospitals' scores.
pub(super) struct ValuationPlan {
    round: u32,
    grouped: bool,
    method: Box<dyn valuation::Valuation>,
    /// What the hospitals score, the empty coalition (the starting model)
    /// first.
    pub coalitions: Vec<Coalition>,
    /// Coordinator time spent choosing the coalitions.
    planning: std::time::Duration,
}

impl ValuationPlan {
    /// The EVALUATE task's parameters: the model to evaluate, the round's
    /// starting model, then each player's update.
    pub fn task_body(
        &self,
        next: &[f32],
        start: &[f32],
        players: &[(Vec<String>, ClientUpdate)],
    ) -> Vec<f32> {
        let mut body = Vec::with_capacity(next.len() * (players.len() + 2));
        body.extend_from_slice(next);
        body.extend_from_slice(start);
        for (_, update) in players {
            body.extend_from_slice(&update.delta);
        }
        body
    }
}

/// One group's protected sum, decoded.
pub(super) struct GroupSum {
    pub members: Vec<String>,
    pub update: ClientUpdate,
}

impl Runner {
    /// The fit stage of a grouped round: the selected hospitals are split
    /// by the round's public seed into groups of at least k, and each
    /// group runs the job's protected aggregation on its own, at the same
    /// time. `released` collects every group whose sum was recovered in
    /// this round (across attempts); a grouping that would, with those,
    /// isolate one hospital's update is never run. `None`: the attempt is
    /// retried.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn grouped_fit(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        valuation: &ValuationSpec,
        enrollment: &Enrollment,
        fit: &TaskHeader,
        global: &Arc<Vec<f32>>,
        selected: &[String],
        (round, attempt): (u32, u32),
        released: &mut Vec<Vec<String>>,
    ) -> Result<Option<Fitted>, RunError> {
        let history = self.group_history(&job.id)?;
        let seed = partition::group_seed(&job.id, round);
        let k = valuation.group_size as usize;
        let Some(groups) = partition::partition(selected, k, &seed, &history, released) else {
            self.note(
                &job.id,
                format!(
                    "round {round} attempt {attempt}: {} hospitals cannot be grouped by {k} without isolating one's update; retrying",
                    selected.len()
                ),
            );
            return Ok(None);
        };
        let runs = groups.iter().map(|members| async move {
            let fitted = match spec.training.mode {
                TrainingMode::Splitfed => {
                    self.splitfed_fit(
                        job,
                        spec,
                        enrollment,
                        fit,
                        global,
                        members,
                        (round, attempt),
                        None,
                        members.len() as u32,
                    )
                    .await
                }
                _ => {
                    self.protected_fit(
                        job,
                        spec,
                        enrollment,
                        fit,
                        global,
                        members,
                        (round, attempt),
                        members.len() as u32,
                        &SplitTasks::new(),
                        // Grouped rounds carry no update proofs, so nobody
                        // is barred.
                        &mut Vec::new(),
                    )
                    .await
                }
            };
            (members.clone(), fitted)
        });
        let results = futures::future::join_all(runs).await;
        let mut sums = Vec::new();
        let mut failed = false;
        for (members, result) in results {
            match result? {
                Some(fitted) => {
                    // The coordinator now knows this group's sum, whatever
                    // happens to the other groups.
                    released.push(members.clone());
                    sums.push((members, fitted));
                }
                None => failed = true,
            }
        }
        if failed {
            self.note(
                &job.id,
                format!("round {round} attempt {attempt}: a group's aggregation failed; retrying"),
            );
            return Ok(None);
        }
        Ok(Some(combine(sums)))
    }

    /// Every group of the job's earlier valued rounds (for re-grouping).
    fn group_history(&self, job_id: &str) -> Result<Vec<Vec<String>>, RunError> {
        Ok(self
            .valuations(job_id)?
            .into_iter()
            .flat_map(|v| v.groups.into_iter().map(|g| g.members))
            .collect())
    }

    pub(super) fn valuations(&self, job_id: &str) -> Result<Vec<RoundValuation>, RunError> {
        self.store
            .valuations(job_id)?
            .into_iter()
            .map(|(round, _, json)| {
                serde_json::from_str(&json).map_err(|e| {
                    RunError::Failed(format!("stored valuation of round {round}: {e}"))
                })
            })
            .collect()
    }

    /// What the round's valuation needs scored: the method's coalitions of
    /// `players`, which the round's EVALUATE task carries (see
    /// [`ValuationPlan::task_body`]).
    pub(super) fn plan_valuation(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        valuation: &ValuationSpec,
        round: u32,
        global: &[f32],
        players: &[(Vec<String>, ClientUpdate)],
    ) -> Result<ValuationPlan, RunError> {
        let started = Instant::now();
        let grouped = spec.privacy.aggregation != Aggregation::Plain;
        let method_seed = u64::from_le_bytes(
            partition::group_seed(&job.id, round)[..8]
                .try_into()
                .unwrap_or_default(),
        );
        let method = if grouped {
            valuation.group_method(players.len(), method_seed)
        } else {
            valuation.plain_method(players.len(), method_seed)
        };
        let coalitions = method.coalitions(players.len());
        if coalitions.len().saturating_mul(global.len()) > cohort_models::MAX_CANDIDATE_VALUES {
            return Err(RunError::Failed(format!(
                "round {round}: valuation would score {} candidate models of {} values; lower valuation.exact_up_to or valuation.permutations",
                coalitions.len(),
                global.len()
            )));
        }
        Ok(ValuationPlan {
            round,
            grouped,
            method,
            coalitions,
            planning: started.elapsed(),
        })
    }

    /// The round's values from the hospitals' candidate losses (`scored`:
    /// each hospital's validation rows and losses, in coalition order);
    /// grouped rounds then fit per-hospital values across rounds.
    pub(super) fn finish_valuation(
        &self,
        job: &JobRow,
        plan: ValuationPlan,
        players: &[(Vec<String>, ClientUpdate)],
        scored: &[(u64, Vec<f64>)],
        released: &[Vec<String>],
    ) -> Result<RoundValuation, RunError> {
        let ValuationPlan {
            round,
            grouped,
            method,
            coalitions,
            planning,
        } = plan;
        let finishing = Instant::now();
        let count = coalitions.len();
        let everyone: Coalition = if players.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << players.len()) - 1
        };
        let (player_values, total_utility) = match valuation::pooled_losses(scored, count) {
            Some(pooled) => {
                // Coalition 0 (the starting model) comes first.
                let utility: BTreeMap<Coalition, f64> = coalitions
                    .iter()
                    .zip(&pooled)
                    .map(|(&c, &loss)| (c, pooled[0] - loss))
                    .collect();
                let values =
                    method.values(players.len(), &|c| utility.get(&c).copied().unwrap_or(0.0));
                // Shapley values add up to the grand coalition's utility.
                let total = utility
                    .get(&everyone)
                    .copied()
                    .unwrap_or_else(|| values.iter().sum());
                (values, total)
            }
            None => {
                self.note(
                    &job.id,
                    format!("round {round} valuation: no hospital scored the candidates; every value is 0"),
                );
                (vec![0.0; players.len()], 0.0)
            }
        };
        let (values, groups, group_seed) = if grouped {
            let groups: Vec<GroupValue> = players
                .iter()
                .zip(&player_values)
                .map(|((members, _), &value)| GroupValue {
                    members: members.clone(),
                    value,
                })
                .collect();
            let mut rounds: Vec<(f64, Vec<GroupValue>)> = self
                .valuations(&job.id)?
                .into_iter()
                .map(|v| (v.total_utility, v.groups))
                .collect();
            rounds.push((total_utility, groups.clone()));
            let values: BTreeMap<String, f64> = match partition::fit_shares(&rounds) {
                Some(shares) => players
                    .iter()
                    .flat_map(|(members, _)| members.iter())
                    .map(|m| {
                        let share = shares.get(m).copied().unwrap_or(0.0);
                        (m.clone(), share * total_utility)
                    })
                    .collect(),
                // No round has improved the model yet: a group's value is
                // split equally among its members.
                None => groups
                    .iter()
                    .flat_map(|g| {
                        let each = g.value / g.members.len().max(1) as f64;
                        g.members.iter().map(move |m| (m.clone(), each))
                    })
                    .collect(),
            };
            let seed = hex::encode(partition::group_seed(&job.id, round));
            (values, groups, Some(seed))
        } else {
            // Hospitals with identical data are one player: they share its
            // value.
            let values: BTreeMap<String, f64> = players
                .iter()
                .zip(&player_values)
                .flat_map(|((members, _), &v)| {
                    let each = v / members.len().max(1) as f64;
                    members.iter().map(move |m| (m.clone(), each))
                })
                .collect();
            (values, Vec::new(), None)
        };
        let name = if grouped {
            valuation::PARTITION
        } else {
            method.name()
        };
        Ok(RoundValuation {
            method: name.to_string(),
            utility_evaluations: count as u64,
            group_seed,
            released: if grouped {
                released.to_vec()
            } else {
                Vec::new()
            },
            groups,
            total_utility,
            values,
            seconds: (planning + finishing.elapsed()).as_secs_f64(),
        })
    }
}

/// One fit result from the groups' protected sums: the example-weighted
/// mean of the group means (exactly the mean of everyone's updates), every
/// member's receipt, and the groups kept apart for valuation.
fn combine(sums: Vec<(Vec<String>, Fitted)>) -> Fitted {
    let total_examples: u64 = sums.iter().map(|(_, f)| f.total_examples).sum();
    let n_params = sums
        .first()
        .and_then(|(_, f)| f.updates.first())
        .map_or(0, |u| u.delta.len());
    let mut mean = vec![0f64; n_params];
    let mut participants = Vec::new();
    let mut receipts = Vec::new();
    let mut groups = Vec::new();
    let mut digests = Vec::new();
    let mut losses = Vec::new();
    let mut slowest = 0f64;
    for (members, fitted) in sums {
        let w = fitted.total_examples as f64 / total_examples.max(1) as f64;
        for update in &fitted.updates {
            for (m, d) in mean.iter_mut().zip(&update.delta) {
                *m += w * f64::from(*d);
            }
        }
        participants.extend(fitted.participants);
        receipts.extend(fitted.receipts);
        digests.extend(fitted.aggregate_sha256);
        if let Some(l) = fitted.train_loss {
            losses.push((fitted.total_examples, Some(l)));
        }
        slowest = slowest.max(fitted.slowest_fit_secs);
        for update in fitted.updates {
            groups.push(GroupSum {
                members: members.clone(),
                update,
            });
        }
    }
    Fitted {
        participants,
        receipts,
        updates: vec![ClientUpdate {
            client: "grouped-aggregate".into(),
            delta: mean.into_iter().map(|v| v as f32).collect(),
            num_examples: total_examples,
        }],
        total_examples,
        train_loss: super::weighted_loss(losses.into_iter()),
        slowest_fit_secs: slowest,
        // One digest per group, in group order.
        aggregate_sha256: Some(digests.join(",")),
        groups,
        excluded: Vec::new(),
    }
}
