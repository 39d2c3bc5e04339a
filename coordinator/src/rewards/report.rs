//! Rewards read back from the ledger alone: `cohort rewards show` sums
//! them, `cohort rewards verify` recomputes every payout and refuses a
//! ledger whose payouts do not follow from its own records.

use std::collections::{BTreeMap, BTreeSet};

use cohort_ledger::{Entry, HospitalValue, Payout, Record};
use serde::Serialize;

use super::{EmissionSchedule, VALUE_SCALE, parse_value, settle_validators, split, validator_pool};

/// `cohort rewards show --json`.
#[derive(Debug, Clone, Serialize)]
pub struct RewardsReport {
    /// Base units emitted to the rounds shown.
    pub emitted: u128,
    pub hospitals: Vec<HospitalTotal>,
    pub validators: Vec<ValidatorTotal>,
    pub rounds: Vec<RoundRewards>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HospitalTotal {
    pub name: String,
    /// Sum of its per-round values over the rounds shown.
    pub value: f64,
    pub reward: u128,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidatorTotal {
    pub name: String,
    pub reward: u128,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundRewards {
    pub job_id: String,
    pub round: u32,
    pub height: u64,
    pub emission: u64,
    pub method: String,
    pub utility_evaluations: u64,
    pub hospitals: Vec<RoundHospital>,
    /// Base units held for the round's validators (update-proof rounds).
    pub validator_pool: u64,
    /// Who was paid from the pool, once the round's quorum attested it.
    pub validators: Vec<ValidatorTotal>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundHospital {
    pub name: String,
    pub value: f64,
    pub cumulative_value: f64,
    pub reward: u64,
}

fn as_f64(text: &str) -> f64 {
    parse_value(text).map_or(0.0, |units| units as f64 / VALUE_SCALE as f64)
}

/// Totals and the per-round table of every paid round (of one job, given
/// one), in ledger order.
pub fn report(entries: &[Entry], job: Option<&str>) -> RewardsReport {
    let mut valued: BTreeMap<(String, u32), (String, u64, Vec<HospitalValue>)> = BTreeMap::new();
    let mut rounds = Vec::new();
    for entry in entries {
        match &entry.record {
            Record::RoundValued {
                job_id,
                round,
                method,
                utility_evaluations,
                values,
                ..
            } => {
                valued.insert(
                    (job_id.clone(), *round),
                    (method.clone(), *utility_evaluations, values.clone()),
                );
            }
            Record::RewardsPaid {
                job_id,
                round,
                height,
                emission,
                hospitals,
                validator_pool,
                ..
            } if job.is_none_or(|j| j == job_id.as_str()) => {
                let (method, evaluations, values) = valued
                    .get(&(job_id.clone(), *round))
                    .cloned()
                    .unwrap_or_default();
                let cumulative = |name: &str| {
                    values
                        .iter()
                        .find(|v| v.name == name)
                        .map_or(0.0, |v| as_f64(&v.cumulative))
                };
                rounds.push(RoundRewards {
                    job_id: job_id.clone(),
                    round: *round,
                    height: *height,
                    emission: *emission,
                    method,
                    utility_evaluations: evaluations,
                    hospitals: hospitals
                        .iter()
                        .map(|p| RoundHospital {
                            name: p.name.clone(),
                            value: as_f64(&p.value),
                            cumulative_value: cumulative(&p.name),
                            reward: p.reward,
                        })
                        .collect(),
                    validator_pool: *validator_pool,
                    validators: Vec::new(),
                });
            }
            Record::ValidatorsPaid {
                job_id,
                round,
                validators,
                ..
            } => {
                if let Some(r) = rounds
                    .iter_mut()
                    .find(|r| &r.job_id == job_id && r.round == *round)
                {
                    r.validators = validators
                        .iter()
                        .map(|p| ValidatorTotal {
                            name: p.name.clone(),
                            reward: u128::from(p.reward),
                        })
                        .collect();
                }
            }
            _ => {}
        }
    }
    let mut hospitals: BTreeMap<String, (i128, u128)> = BTreeMap::new();
    let mut validators: BTreeMap<String, u128> = BTreeMap::new();
    let mut emitted = 0u128;
    for round in &rounds {
        emitted += u128::from(round.emission);
        for h in &round.hospitals {
            let e = hospitals.entry(h.name.clone()).or_default();
            e.0 += (h.value * VALUE_SCALE as f64).round() as i128;
            e.1 += u128::from(h.reward);
        }
        for v in &round.validators {
            *validators.entry(v.name.clone()).or_default() += v.reward;
        }
    }
    RewardsReport {
        emitted,
        hospitals: hospitals
            .into_iter()
            .map(|(name, (value, reward))| HospitalTotal {
                name,
                value: value as f64 / VALUE_SCALE as f64,
                reward,
            })
            .collect(),
        validators: validators
            .into_iter()
            .map(|(name, reward)| ValidatorTotal { name, reward })
            .collect(),
        rounds,
    }
}

/// What `cohort rewards verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub rounds_paid: u64,
    pub emitted: u128,
    /// `(initial, halving)`, absent when nothing was paid.
    pub schedule: Option<(u64, u64)>,
    /// Partition-valued rounds whose decrypted groups were rank-checked.
    pub partition_rounds_checked: u64,
    /// Rounds whose validator pool was paid, each recomputed from the
    /// attestations before it.
    pub validator_payouts_checked: u64,
    /// Rounds whose validator payout this reader cannot recompute: which
    /// updates carried proofs is in receipts sealed to it (a hospital
    /// reading its co-participants' rounds). Their totals are still checked.
    #[serde(skip_serializing_if = "is_zero")]
    pub validator_payouts_sealed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("ledger entry {index}: {reason}")]
    Entry { index: usize, reason: String },
}

/// Recomputes every payout from the ledger's own records: heights count up
/// from 0 across all jobs, the schedule never changes, each emission is
/// the schedule's at its height, each split is the largest-remainder split
/// of the round's recorded values and adds up to the emission, cumulative
/// values add up, no partition-valued round released a combination of
/// updates that isolates one hospital, and every validator payout is the
/// one the attestations before it call for.
pub fn verify(entries: &[Entry]) -> Result<Verification, VerifyError> {
    let mut out = Verification {
        rounds_paid: 0,
        emitted: 0,
        schedule: None,
        partition_rounds_checked: 0,
        validator_payouts_checked: 0,
        validator_payouts_sealed: 0,
    };
    let mut sealed_rounds: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut attested_jobs: BTreeSet<String> = BTreeSet::new();
    let mut valued: BTreeMap<(String, u32), Vec<HospitalValue>> = BTreeMap::new();
    let mut cumulative: BTreeMap<(String, String), i128> = BTreeMap::new();
    let mut completed: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut paid: BTreeSet<(String, u32)> = BTreeSet::new();
    for (index, entry) in entries.iter().enumerate() {
        let fail = |reason: String| VerifyError::Entry { index, reason };
        match &entry.record {
            Record::RoundCompleted {
                job_id,
                round,
                sealed_updates,
                ..
            } => {
                completed.insert((job_id.clone(), *round));
                if !sealed_updates.is_empty() {
                    sealed_rounds.insert((job_id.clone(), *round));
                }
            }
            Record::ProofSetup { job_id, .. } => {
                attested_jobs.insert(job_id.clone());
            }
            Record::ValidatorsPaid {
                job_id,
                round,
                quorum,
                pool,
                validators,
            } => {
                let total: u128 = validators.iter().map(|p| u128::from(p.reward)).sum();
                if total != u128::from(*pool) {
                    return Err(fail(format!(
                        "validator payouts add up to {total}, the pool is {pool}"
                    )));
                }
                if sealed_rounds.contains(&(job_id.clone(), *round)) {
                    out.validator_payouts_sealed += 1;
                    continue;
                }
                let before = &entries[..index.saturating_sub(1)];
                let expected = index
                    .checked_sub(1)
                    .and_then(|i| settle_validators(before, &entries[i].record, *quorum));
                if expected.as_ref() != Some(&entry.record) {
                    return Err(fail(format!(
                        "job {job_id} round {round}: the validator payout is not the split of \
                         the pool among the first {quorum} attestations before it ({})",
                        match expected {
                            Some(Record::ValidatorsPaid { validators, .. }) =>
                                describe(&validators),
                            _ => "none is due".to_string(),
                        }
                    )));
                }
                out.validator_payouts_checked += 1;
            }
            Record::RoundValued {
                job_id,
                round,
                groups,
                values,
                method,
                ..
            } => {
                if !completed.contains(&(job_id.clone(), *round)) {
                    return Err(fail(format!(
                        "values for job {job_id} round {round}, which the ledger never completed"
                    )));
                }
                for v in values {
                    let round_value =
                        parse_value(&v.round_value).map_err(|e| fail(e.to_string()))?;
                    let claimed = parse_value(&v.cumulative).map_err(|e| fail(e.to_string()))?;
                    let sum = cumulative
                        .entry((job_id.clone(), v.name.clone()))
                        .or_default();
                    *sum += round_value;
                    if *sum != claimed {
                        return Err(fail(format!(
                            "{}'s cumulative value {} is not the sum of its round values",
                            v.name, v.cumulative
                        )));
                    }
                }
                if !groups.is_empty() || method == crate::valuation::PARTITION {
                    let members: Vec<String> = values
                        .iter()
                        .map(|v| v.name.clone())
                        .chain(groups.iter().flatten().cloned())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    if let Some(name) = crate::valuation::isolated_member(&members, groups) {
                        return Err(fail(format!(
                            "round {round}'s decrypted groups isolate {name}'s update"
                        )));
                    }
                    out.partition_rounds_checked += 1;
                }
                valued.insert((job_id.clone(), *round), values.clone());
            }
            Record::RewardsPaid {
                job_id,
                round,
                height,
                initial,
                halving,
                emission,
                validator_ppm,
                hospitals,
                validators,
                validator_pool: recorded_pool,
            } => {
                let schedule =
                    EmissionSchedule::new(*initial, *halving).map_err(|e| fail(e.to_string()))?;
                match out.schedule {
                    None => out.schedule = Some((*initial, *halving)),
                    Some(s) if s != (*initial, *halving) => {
                        return Err(fail(format!(
                            "the emission schedule changed from {} / {} to {initial} / {halving}",
                            s.0, s.1
                        )));
                    }
                    Some(_) => {}
                }
                if *height != out.rounds_paid {
                    return Err(fail(format!(
                        "height {height}, but {} rounds were paid before it",
                        out.rounds_paid
                    )));
                }
                if *emission != schedule.emission(*height) {
                    return Err(fail(format!(
                        "emission {emission} at height {height}; the schedule gives {}",
                        schedule.emission(*height)
                    )));
                }
                if !paid.insert((job_id.clone(), *round)) {
                    return Err(fail(format!("job {job_id} round {round} paid twice")));
                }
                let Some(values) = valued.get(&(job_id.clone(), *round)) else {
                    return Err(fail(format!(
                        "payout for job {job_id} round {round} without its values"
                    )));
                };
                let recorded: Vec<(String, String)> = values
                    .iter()
                    .map(|v| (v.name.clone(), v.round_value.clone()))
                    .collect();
                let pool = validator_pool(
                    *emission,
                    *validator_ppm,
                    attested_jobs.contains(job_id.as_str()),
                )
                .map_err(|e| fail(e.to_string()))?;
                if *recorded_pool != pool || !validators.is_empty() {
                    return Err(fail(format!(
                        "job {job_id} round {round}: {recorded_pool} held for validators; the \
                         schedule's share gives {pool}"
                    )));
                }
                let expected =
                    split(*emission - pool, &recorded).map_err(|e| fail(e.to_string()))?;
                if &expected != hospitals {
                    return Err(fail(format!(
                        "job {job_id} round {round}: the payouts are not the split of its recorded values ({})",
                        describe(&expected)
                    )));
                }
                let total: u128 =
                    hospitals.iter().map(|p| u128::from(p.reward)).sum::<u128>() + u128::from(pool);
                if total != u128::from(*emission) {
                    return Err(fail(format!(
                        "payouts and the validator pool add up to {total}, the emission is {emission}"
                    )));
                }
                out.rounds_paid += 1;
                out.emitted += u128::from(*emission);
            }
            _ => {}
        }
    }
    if let Some(((job, round), _)) = valued.iter().find(|(k, _)| !paid.contains(*k)) {
        return Err(VerifyError::Entry {
            index: entries.len(),
            reason: format!("job {job} round {round} was valued but never paid"),
        });
    }
    Ok(out)
}

fn describe(payouts: &[Payout]) -> String {
    payouts
        .iter()
        .map(|p| format!("{} {}", p.name, p.reward))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One payout entry of the ledger as the EVM rewards token distributes it:
/// `rewards_paid`'s hospital parts, or `validators_paid`'s validator parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Distribution {
    pub job_id: String,
    pub round: u32,
    /// The consortium height whose emission it is part of.
    pub height: u64,
    pub payouts: Vec<Payout>,
}

/// Every payout entry of the ledger, in ledger order: distribution `i` on
/// chain is the `i`-th of these.
pub fn distributions(entries: &[Entry]) -> Vec<Distribution> {
    let mut heights: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    let mut out = Vec::new();
    for entry in entries {
        match &entry.record {
            Record::RewardsPaid {
                job_id,
                round,
                height,
                hospitals,
                ..
            } => {
                heights.insert((job_id, *round), *height);
                out.push(Distribution {
                    job_id: job_id.clone(),
                    round: *round,
                    height: *height,
                    payouts: hospitals.clone(),
                });
            }
            Record::ValidatorsPaid {
                job_id,
                round,
                validators,
                ..
            } => {
                if let Some(height) = heights.get(&(job_id.as_str(), *round)) {
                    out.push(Distribution {
                        job_id: job_id.clone(),
                        round: *round,
                        height: *height,
                        payouts: validators.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}
