//! Halving rewards: the consortium's emission schedule and the exact
//! integer split of each round's emission among its hospitals (and, when
//! a round was attested, its validators).
//!
//! Everything here is integer arithmetic on base units, so a payout can be
//! recomputed bit for bit from the ledger (`cohort rewards verify`). Values
//! enter only as decimal text with [`VALUE_DECIMALS`] places, the form in
//! which the ledger records them.

use cohort_ledger::{Payout, Record};
use serde::{Deserialize, Serialize};

pub mod report;

/// Decimal places of a recorded value (`"0.012345678"`).
pub const VALUE_DECIMALS: usize = 9;
const VALUE_SCALE: i128 = 1_000_000_000;
/// Parts per million: the unit of the validators' share.
pub const PPM: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewardError {
    #[error("the emission's initial amount must be at least 1 base unit")]
    ZeroInitial,
    #[error("the halving interval must be at least 1 round")]
    ZeroHalving,
    #[error(
        "the schedule's total emission ({initial} base units for {halving} rounds, halving) does not fit in 128 bits"
    )]
    Overflow { initial: u64, halving: u64 },
    #[error("the validators' share is {0} ppm; it must be at most {PPM}")]
    ValidatorShare(u64),
    #[error("a round's emission needs at least one hospital to pay")]
    NoHospitals,
    #[error("value {0:?} is not a decimal number with at most {VALUE_DECIMALS} places")]
    Value(String),
    #[error("hospital {0} appears twice in one payout")]
    Duplicate(String),
}

/// `E(h) = initial >> floor(h / halving)` base units for the consortium's
/// `h`-th rewarded round (counted from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmissionSchedule {
    initial: u64,
    halving: u64,
}

impl EmissionSchedule {
    /// Bitcoin's schedule: 50 coins of 10^8 base units, halving every
    /// 210,000 blocks.
    pub const BITCOIN: EmissionSchedule = EmissionSchedule {
        initial: 50 * 100_000_000,
        halving: 210_000,
    };

    /// Refuses a zero amount, a zero interval and a schedule whose total
    /// would not fit in a `u128`.
    pub fn new(initial: u64, halving: u64) -> Result<Self, RewardError> {
        if initial == 0 {
            return Err(RewardError::ZeroInitial);
        }
        if halving == 0 {
            return Err(RewardError::ZeroHalving);
        }
        let schedule = Self { initial, halving };
        schedule
            .checked_total()
            .ok_or(RewardError::Overflow { initial, halving })?;
        Ok(schedule)
    }

    pub fn initial(&self) -> u64 {
        self.initial
    }

    pub fn halving(&self) -> u64 {
        self.halving
    }

    /// The emission of the round at `height`; 0 once 64 or more halvings
    /// have passed (a plain `>>` by 64 would be an overflow).
    pub fn emission(&self, height: u64) -> u64 {
        let halvings = height / self.halving;
        u32::try_from(halvings)
            .ok()
            .and_then(|shift| self.initial.checked_shr(shift))
            .unwrap_or(0)
    }

    /// Everything ever emitted: `Σ_e halving · (initial >> e)`.
    pub fn total(&self) -> u128 {
        // `new` checked that it fits.
        self.checked_total().unwrap_or(u128::MAX)
    }

    fn checked_total(&self) -> Option<u128> {
        (0..64u32).try_fold(0u128, |sum, era| {
            let per_round = u128::from(self.initial >> era);
            sum.checked_add(per_round.checked_mul(u128::from(self.halving))?)
        })
    }

    /// Emitted by rounds `0..height`.
    pub fn emitted_before(&self, height: u64) -> u128 {
        let mut sum = 0u128;
        let mut era = 0u64;
        while era.saturating_mul(self.halving) < height && era < 64 {
            let start = era * self.halving;
            let end = start.saturating_add(self.halving).min(height);
            sum += u128::from(end - start) * u128::from(self.initial >> era);
            era += 1;
        }
        sum
    }
}

/// A value as the ledger records it: fixed decimal text.
pub fn value_text(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.VALUE_DECIMALS$}")
    } else {
        format!("{:.VALUE_DECIMALS$}", 0.0)
    }
}

/// Parses recorded value text into units of 10^-9 exactly (no floats).
pub fn parse_value(text: &str) -> Result<i128, RewardError> {
    let bad = || RewardError::Value(text.to_string());
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || whole.len() > 20
        || fraction.len() > VALUE_DECIMALS
        || !all_digits(whole)
        || !all_digits(fraction)
    {
        return Err(bad());
    }
    let whole: i128 = whole.parse().map_err(|_| bad())?;
    let mut frac: i128 = 0;
    for (i, b) in fraction.bytes().enumerate() {
        frac += i128::from(b - b'0') * 10i128.pow((VALUE_DECIMALS - 1 - i) as u32);
    }
    let units = whole * VALUE_SCALE + frac;
    Ok(if negative { -units } else { units })
}

/// Splits `amount` among `weights` in proportion, by largest remainder:
/// the parts add up to `amount` exactly. Ties in the remainder go to the
/// earlier entry. All-zero weights split equally.
pub fn largest_remainder(amount: u64, weights: &[u128]) -> Vec<u64> {
    if weights.is_empty() {
        return Vec::new();
    }
    let total: u128 = weights.iter().sum();
    let (weights, total): (Vec<u128>, u128) = if total == 0 {
        (vec![1; weights.len()], weights.len() as u128)
    } else {
        (weights.to_vec(), total)
    };
    let amount128 = u128::from(amount);
    // amount < 2^64 and each weight ≤ total; the product is done in two
    // steps so it cannot overflow for weights up to 2^128.
    let mut parts = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let (q, r) = mul_div(amount128, w, total);
        parts.push(q as u64);
        remainders.push((r, i));
    }
    let assigned: u128 = parts.iter().map(|&p| u128::from(p)).sum();
    let mut left = amount128 - assigned;
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
}

/// `(a·b / c, a·b mod c)` without overflow, for `a < 2^64`, `b ≤ c`.
fn mul_div(a: u128, b: u128, c: u128) -> (u128, u128) {
    match a.checked_mul(b) {
        Some(p) => (p / c, p % c),
        None => {
            // Long multiplication by the bits of `a` keeps every
            // intermediate below 2c ≤ 2^129 ... reduced at each step.
            let (mut q, mut r) = (0u128, 0u128);
            let (bq, br) = (b / c, b % c);
            for bit in (0..128).rev() {
                q <<= 1;
                // r < c, so 2r may exceed u128 only when c > 2^127.
                let (doubled, carry) = r.overflowing_add(r);
                r = doubled;
                if carry || r >= c {
                    r = r.wrapping_sub(c);
                    q += 1;
                }
                if (a >> bit) & 1 == 1 {
                    q += bq;
                    let (sum, carry) = r.overflowing_add(br);
                    r = sum;
                    if carry || r >= c {
                        r = r.wrapping_sub(c);
                        q += 1;
                    }
                }
            }
            (q, r)
        }
    }
}

/// The coordinator's reward settings (`cohort coordinator
/// --emission-initial E0 --emission-halving H --validator-share-ppm P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewardsConfig {
    pub schedule: EmissionSchedule,
    /// Parts per million of each round's emission for the validators that
    /// attested it (none do yet: the hospitals then get everything).
    pub validator_ppm: u64,
}

impl Default for RewardsConfig {
    fn default() -> Self {
        Self {
            schedule: EmissionSchedule::BITCOIN,
            validator_ppm: 0,
        }
    }
}

impl RewardsConfig {
    pub fn new(initial: u64, halving: u64, validator_ppm: u64) -> Result<Self, RewardError> {
        if validator_ppm > PPM {
            return Err(RewardError::ValidatorShare(validator_ppm));
        }
        Ok(Self {
            schedule: EmissionSchedule::new(initial, halving)?,
            validator_ppm,
        })
    }
}

/// Inside the transaction that records a valued round: takes the
/// consortium's next height, stores the valuation, and returns the round's
/// two ledger records (its values, then its payout). `cumulative` is each
/// hospital's recorded value over the job's earlier rounds; this round's
/// values are added to it.
pub(crate) fn pay_round(
    tx: &crate::store::Database,
    config: &RewardsConfig,
    job_id: &str,
    round: u32,
    valuation: &crate::runner::RoundValuation,
    cumulative: &mut std::collections::BTreeMap<String, i128>,
    attested: bool,
) -> Result<Vec<cohort_ledger::Record>, crate::store::StoreError> {
    use crate::store::{Store, StoreError};
    let schedule = config.schedule;
    let height = Store::next_height_in(tx, (schedule.initial, schedule.halving))?;
    let json = serde_json::to_string(valuation).map_err(|e| StoreError::Rewards(e.to_string()))?;
    Store::record_valuation_in(tx, job_id, round, height, &json)?;
    let mut values = Vec::new();
    let mut recorded = Vec::new();
    for (name, value) in &valuation.values {
        let text = value_text(*value);
        let units = parse_value(&text).map_err(|e| StoreError::Rewards(e.to_string()))?;
        let sum = cumulative.entry(name.clone()).or_default();
        *sum += units;
        values.push(cohort_ledger::HospitalValue {
            name: name.clone(),
            round_value: text.clone(),
            cumulative: units_text(*sum),
        });
        recorded.push((name.clone(), text));
    }
    let emission = schedule.emission(height);
    let pool = validator_pool(emission, config.validator_ppm, attested)
        .map_err(|e| StoreError::Rewards(e.to_string()))?;
    let hospitals =
        split(emission - pool, &recorded).map_err(|e| StoreError::Rewards(e.to_string()))?;
    Ok(vec![
        cohort_ledger::Record::RoundValued {
            job_id: job_id.to_string(),
            round,
            method: valuation.method.clone(),
            utility_evaluations: valuation.utility_evaluations,
            group_seed: valuation.group_seed.clone(),
            groups: valuation.released.clone(),
            values,
        },
        cohort_ledger::Record::RewardsPaid {
            job_id: job_id.to_string(),
            round,
            height,
            initial: schedule.initial,
            halving: schedule.halving,
            emission,
            validator_ppm: config.validator_ppm,
            hospitals,
            validators: Vec::new(),
            validator_pool: pool,
        },
    ])
}

/// Recorded units (10^-9) as decimal text with [`VALUE_DECIMALS`] places.
pub fn units_text(units: i128) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let abs = units.unsigned_abs();
    let scale = VALUE_SCALE as u128;
    format!("{sign}{}.{:09}", abs / scale, abs % scale)
}

/// The part of a round's emission held for its validators: `validator_ppm`
/// parts per million of it in a round with update proofs (`attested`),
/// nothing otherwise.
pub fn validator_pool(
    emission: u64,
    validator_ppm: u64,
    attested: bool,
) -> Result<u64, RewardError> {
    if validator_ppm > PPM {
        return Err(RewardError::ValidatorShare(validator_ppm));
    }
    Ok(if attested {
        (u128::from(emission) * u128::from(validator_ppm) / u128::from(PPM)) as u64
    } else {
        0
    })
}

/// The hospitals' part of a round's emission (`amount`: the emission less
/// the validator pool) split in proportion to their non-negative recorded
/// values, by largest remainder, so the parts add up to `amount` exactly.
pub fn split(amount: u64, hospitals: &[(String, String)]) -> Result<Vec<Payout>, RewardError> {
    if hospitals.is_empty() {
        return Err(RewardError::NoHospitals);
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in hospitals {
        if !seen.insert(name.as_str()) {
            return Err(RewardError::Duplicate(name.clone()));
        }
    }
    let weights = hospitals
        .iter()
        .map(|(_, value)| parse_value(value).map(|v| v.max(0) as u128))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(hospitals
        .iter()
        .zip(largest_remainder(amount, &weights))
        .map(|((name, value), reward)| Payout {
            name: name.clone(),
            value: value.clone(),
            reward,
        })
        .collect())
}

/// The `validators_paid` record that `attestation` (about to be appended
/// after `earlier`) triggers, if any: when the round holds a validator pool
/// not yet paid and this attestation makes `quorum` distinct validators,
/// the first `quorum` share the pool in proportion to the proofs each
/// attested valid among the round's accepted updates (equally when none
/// did). `cohort rewards verify` recomputes every such record with this
/// same function.
pub fn settle_validators(
    earlier: &[cohort_ledger::Entry],
    attestation: &Record,
    quorum: u32,
) -> Option<Record> {
    let Record::Attestation { job_id, round, .. } = attestation else {
        return None;
    };
    let this_round = |j: &String, r: &u32| j == job_id && r == round;
    let mut pool = None;
    let mut accepted: Vec<&str> = Vec::new();
    let mut attesters: Vec<(&str, u64)> = Vec::new();
    let records = earlier.iter().map(|e| &e.record).chain([attestation]);
    for record in records {
        match record {
            Record::RewardsPaid {
                job_id: j,
                round: r,
                validator_pool,
                ..
            } if this_round(j, r) && *validator_pool > 0 => pool = Some(*validator_pool),
            Record::ValidatorsPaid {
                job_id: j,
                round: r,
                ..
            } if this_round(j, r) => return None,
            Record::RoundCompleted {
                job_id: j,
                round: r,
                updates,
                ..
            } if this_round(j, r) => {
                accepted = updates
                    .iter()
                    .filter(|u| u.proof.is_some())
                    .map(|u| u.client.as_str())
                    .collect();
            }
            Record::Attestation {
                job_id: j,
                round: r,
                validator,
                verdicts,
                ..
            } if this_round(j, r) && !attesters.iter().any(|(v, _)| v == validator) => {
                let verified = verdicts
                    .iter()
                    .filter(|v| v.valid && accepted.contains(&v.client.as_str()))
                    .map(|v| v.client.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len() as u64;
                attesters.push((validator, verified));
            }
            _ => {}
        }
    }
    let pool = pool?;
    let quorum = quorum.max(1) as usize;
    if attesters.len() != quorum {
        return None;
    }
    let weights: Vec<u128> = if attesters.iter().all(|(_, n)| *n == 0) {
        vec![1; quorum]
    } else {
        attesters.iter().map(|(_, n)| u128::from(*n)).collect()
    };
    let validators = attesters
        .iter()
        .zip(largest_remainder(pool, &weights))
        .map(|((name, proofs), reward)| Payout {
            name: name.to_string(),
            value: proofs.to_string(),
            reward,
        })
        .collect();
    Some(Record::ValidatorsPaid {
        job_id: job_id.clone(),
        round: *round,
        quorum: quorum as u32,
        pool,
        validators,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitcoin_schedule_total_is_the_known_supply() {
        let btc = EmissionSchedule::BITCOIN;
        assert_eq!(btc.total(), 2_099_999_997_690_000);
        assert_eq!(btc.emission(0), 5_000_000_000);
        assert_eq!(btc.emission(209_999), 5_000_000_000);
        assert_eq!(btc.emission(210_000), 2_500_000_000);
        assert_eq!(btc.emission(420_000), 1_250_000_000);
        // 50 BTC after 32 halvings is 1 satoshi >> 1 = 0.
        assert_eq!(btc.emission(33 * 210_000), 0);
        assert_eq!(btc.emitted_before(u64::MAX), btc.total());
        // The sum over heights equals the closed form at era boundaries.
        assert_eq!(
            btc.emitted_before(420_000),
            210_000 * 5_000_000_000 + 210_000 * 2_500_000_000
        );
    }

    #[test]
    fn shifts_of_64_or_more_give_zero_not_a_panic() {
        let s = EmissionSchedule::new(u64::MAX, 1).unwrap();
        assert_eq!(s.emission(63), 1);
        assert_eq!(s.emission(64), 0);
        assert_eq!(s.emission(65), 0);
        assert_eq!(s.emission(u64::MAX), 0);
        let s = EmissionSchedule::new(7, 3).unwrap();
        assert_eq!(
            (0..9).map(|h| s.emission(h)).collect::<Vec<_>>(),
            [7, 7, 7, 3, 3, 3, 1, 1, 1]
        );
        assert_eq!(s.emitted_before(u64::MAX), 33);
        for h in 0..12 {
            let direct: u128 = (0..h).map(|i| u128::from(s.emission(i))).sum();
            assert_eq!(s.emitted_before(h), direct, "height {h}");
        }
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert_eq!(EmissionSchedule::new(0, 5), Err(RewardError::ZeroInitial));
        assert_eq!(EmissionSchedule::new(5, 0), Err(RewardError::ZeroHalving));
        assert!(matches!(
            EmissionSchedule::new(u64::MAX, u64::MAX),
            Err(RewardError::Overflow { .. })
        ));
        // The largest interval that fits: total ≈ 2·initial·halving.
        assert!(EmissionSchedule::new(u64::MAX, 1 << 62).is_ok());
    }

    #[test]
    fn values_parse_exactly() {
        assert_eq!(parse_value("0.000000001"), Ok(1));
        assert_eq!(parse_value("-1.5"), Ok(-1_500_000_000));
        assert_eq!(parse_value("12"), Ok(12_000_000_000));
        assert_eq!(parse_value(&value_text(0.25)), Ok(250_000_000));
        assert_eq!(value_text(f64::NAN), "0.000000000");
        for units in [0i128, 1, -1, 999_999_999, -1_000_000_001, 123_456_789_012] {
            assert_eq!(parse_value(&units_text(units)), Ok(units));
        }
        for bad in ["", "-", ".5", "1.0000000001", "1e3", "1,5", "+1", "1.-2"] {
            assert!(parse_value(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn largest_remainder_adds_up_exactly() {
        assert_eq!(largest_remainder(10, &[1, 1, 1]), [4, 3, 3]);
        assert_eq!(largest_remainder(10, &[0, 0]), [5, 5]);
        assert_eq!(largest_remainder(10, &[0, 3]), [0, 10]);
        assert_eq!(largest_remainder(0, &[1, 2]), [0, 0]);
        assert_eq!(largest_remainder(100, &[]), Vec::<u64>::new());
        // Weights so large that amount · weight overflows u128.
        let big = [u128::MAX / 3, u128::MAX / 3, 1];
        let parts = largest_remainder(u64::MAX, &big);
        assert_eq!(
            parts.iter().map(|&p| u128::from(p)).sum::<u128>(),
            u128::from(u64::MAX)
        );
        assert!(parts[0].abs_diff(parts[1]) <= 1);
        // Exhaustive small cases: sum exact, each part within one unit of
        // its exact quota, monotone in the weight.
        for amount in 0..40u64 {
            for a in 0..6u128 {
                for b in 0..6u128 {
                    for c in 0..6u128 {
                        let w = [a, b, c];
                        let parts = largest_remainder(amount, &w);
                        assert_eq!(parts.iter().sum::<u64>(), amount);
                        let total = (a + b + c).max(1);
                        for (p, wi) in parts.iter().zip(w) {
                            let quota = u128::from(amount) * if a + b + c == 0 { 1 } else { wi };
                            let denom = if a + b + c == 0 { 3 } else { total };
                            let floor = (quota / denom) as u64;
                            assert!(*p == floor || *p == floor + 1, "{amount} {w:?}");
                        }
                        for i in 0..3 {
                            for j in 0..3 {
                                if w[i] > w[j] {
                                    assert!(parts[i] >= parts[j], "{amount} {w:?}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn mul_div_matches_wide_arithmetic() {
        let cases = [
            (u128::from(u64::MAX), u128::MAX - 5, u128::MAX - 1),
            (3, u128::MAX / 2, u128::MAX),
            (u128::from(u64::MAX), 1 << 100, (1 << 101) + 7),
        ];
        for (a, b, c) in cases {
            let (q, r) = mul_div(a, b, c);
            // Check q·c + r == a·b in 256-bit arithmetic done by hand.
            let lhs = wide_mul(q, c);
            let lhs = wide_add(lhs, (0, r));
            assert_eq!(lhs, wide_mul(a, b));
            assert!(r < c);
        }
    }

    fn wide_mul(a: u128, b: u128) -> (u128, u128) {
        let (a1, a0) = (a >> 64, a & u128::from(u64::MAX));
        let (b1, b0) = (b >> 64, b & u128::from(u64::MAX));
        let p00 = a0 * b0;
        let p01 = a0 * b1;
        let p10 = a1 * b0;
        let p11 = a1 * b1;
        let mid = (p00 >> 64) + (p01 & u128::from(u64::MAX)) + (p10 & u128::from(u64::MAX));
        let low = (p00 & u128::from(u64::MAX)) | (mid << 64);
        let high = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
        (high, low)
    }

    fn wide_add(a: (u128, u128), b: (u128, u128)) -> (u128, u128) {
        let (low, carry) = a.1.overflowing_add(b.1);
        (a.0 + b.0 + u128::from(carry), low)
    }

    #[test]
    fn split_pays_non_negative_values_and_holds_the_validator_pool() {
        let hospitals = vec![
            ("a".to_string(), "0.3".to_string()),
            ("b".to_string(), "0.1".to_string()),
            ("c".to_string(), "-0.2".to_string()),
        ];
        let h = split(1000, &hospitals).unwrap();
        assert_eq!(
            h.iter().map(|s| s.reward).collect::<Vec<_>>(),
            [750, 250, 0]
        );
        assert_eq!(validator_pool(1000, 100_000, false), Ok(0));
        assert_eq!(validator_pool(1000, 100_000, true), Ok(100));
        assert_eq!(validator_pool(u64::MAX, PPM, true), Ok(u64::MAX));
        assert_eq!(
            validator_pool(1, PPM + 1, true),
            Err(RewardError::ValidatorShare(PPM + 1))
        );
        assert_eq!(split(1, &[]), Err(RewardError::NoHospitals));
        let twice = vec![hospitals[0].clone(), hospitals[0].clone()];
        assert!(matches!(split(1, &twice), Err(RewardError::Duplicate(_))));
    }

    fn entry(record: Record) -> cohort_ledger::Entry {
        cohort_ledger::Entry {
            version: 1,
            at: String::new(),
            record,
            signer_key: String::new(),
            signature: String::new(),
        }
    }

    fn attestation(validator: &str, valid: &[(&str, bool)]) -> Record {
        Record::Attestation {
            job_id: "job".into(),
            round: 1,
            validator: validator.into(),
            verdicts: valid
                .iter()
                .map(|(client, valid)| cohort_ledger::Verdict {
                    client: client.to_string(),
                    statement: "update-norm".into(),
                    valid: *valid,
                })
                .collect(),
            validator_certificate: String::new(),
            validator_signature: String::new(),
        }
    }

    #[test]
    fn the_quorum_of_validators_shares_the_pool_by_proofs_verified() {
        let proof = cohort_ledger::ProofRecord {
            statement: "update-norm".into(),
            bound: 1,
            update_hash: String::new(),
            proof: String::new(),
        };
        let update =
            |client: &str, proof: Option<cohort_ledger::ProofRecord>| cohort_ledger::UpdateRecord {
                client: client.into(),
                task_id: String::new(),
                num_examples: 1,
                parameter_count: 1,
                update_sha256: String::new(),
                signature: String::new(),
                dataset_sha256: String::new(),
                dp_epsilon: None,
                proof,
            };
        let mut ledger = vec![
            entry(Record::RoundCompleted {
                job_id: "job".into(),
                round: 1,
                model_sha256: String::new(),
                model_signature_sha256: String::new(),
                updates: vec![
                    update("h1", Some(proof.clone())),
                    update("h2", Some(proof.clone())),
                    update("h3", None),
                ],
                sealed_updates: Vec::new(),
                aggregate_sha256: None,
                accuracy: None,
                auc: None,
                excluded: Vec::new(),
                kept_top_sha256: None,
            }),
            entry(Record::RewardsPaid {
                job_id: "job".into(),
                round: 1,
                height: 0,
                initial: 1000,
                halving: 10,
                emission: 1000,
                validator_ppm: 100_000,
                hospitals: Vec::new(),
                validators: Vec::new(),
                validator_pool: 100,
            }),
        ];
        // v1 verified both accepted proofs; v2 one of them (and claims a
        // proof the round never accepted, which earns nothing).
        let v1 = attestation("v1", &[("h1", true), ("h2", true)]);
        let v2 = attestation("v2", &[("h1", true), ("h2", false), ("h3", true)]);
        assert_eq!(settle_validators(&ledger, &v1, 2), None);
        ledger.push(entry(v1.clone()));
        // The same validator again does not make a quorum.
        assert_eq!(settle_validators(&ledger, &v1, 2), None);
        let Some(Record::ValidatorsPaid {
            pool, validators, ..
        }) = settle_validators(&ledger, &v2, 2)
        else {
            panic!("the second validator completes the quorum");
        };
        assert_eq!(pool, 100);
        let paid: Vec<(&str, &str, u64)> = validators
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str(), p.reward))
            .collect();
        assert_eq!(paid, [("v1", "2", 67), ("v2", "1", 33)]);
        // Once paid, later attestations are not.
        ledger.push(entry(v2.clone()));
        ledger.push(entry(settle_validators(&ledger[..3], &v2, 2).unwrap()));
        assert_eq!(settle_validators(&ledger, &attestation("v3", &[]), 3), None);
    }
}
