//! Contribution valuation: what each hospital's part of a round was worth.
//!
//! A round's *players* are what the coordinator can see: each hospital's
//! update in plain mode, each group's sum under secure or homomorphic
//! aggregation. The utility of a coalition `S` of players is the
//! improvement in federated validation log-likelihood (mean binary
//! cross-entropy, example-weighted across the hospitals that score it) of
//! the candidate model `w + Σ_{i∈S} n_i Δ_i / Σ_{i∈S} n_i` over the
//! round's starting model `w`. The hospitals compute it on their own
//! validation splits, from the round's starting model and the players'
//! updates that travel in the round's EVALUATE task. A [`Valuation`] method decides which coalitions to score and turns
//! their utilities into per-player values: [`exact`] Shapley,
//! [`stratified`] sampling (exact first and last positions, sampled
//! middle), plain [`permutation`] sampling; [`partition`] then fits
//! per-hospital values from group values across rounds.

use serde::{Deserialize, Serialize};

pub mod exact;
pub mod partition;
pub mod permutation;
pub mod stratified;

/// Method names as the ledger records them.
pub const EXACT: &str = "exact-shapley";
pub const PERMUTATION: &str = "permutation-shapley";
pub const STRATIFIED: &str = "stratified-shapley";
pub const PARTITION: &str = "partition-least-squares";

/// The most players exact Shapley is allowed (2^n candidate models).
pub const EXACT_LIMIT: u32 = 12;

/// A set of players, bit `i` for player `i`.
pub type Coalition = u64;

/// One valuation method: which coalitions it needs scored, and the
/// per-player values those scores give.
pub trait Valuation: Send + Sync {
    /// The name the ledger records.
    fn name(&self) -> &'static str;
    /// Coalitions whose utility is needed, the empty one first; each once.
    fn coalitions(&self, players: usize) -> Vec<Coalition>;
    /// Per-player values; `utility` is defined on every coalition that
    /// [`Valuation::coalitions`] returned (the empty coalition scores 0).
    fn values(&self, players: usize, utility: &dyn Fn(Coalition) -> f64) -> Vec<f64>;
}

/// How plain-mode rounds are valued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Exact Shapley up to `exact_up_to` players, stratified sampling above.
    #[default]
    Auto,
    Exact,
    /// Exact first and last positions, `middle_orders` sampled orders for
    /// the rest ([`stratified`]).
    Stratified,
    /// Plain permutation sampling, `permutations` orders a round.
    Permutation,
}

/// The job's `[valuation]` table: its presence turns valuation and
/// rewards on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValuationSpec {
    #[serde(default)]
    pub method: Method,
    /// `auto`: the most players valued exactly (2^n candidates).
    #[serde(default = "default_exact_up_to")]
    pub exact_up_to: u32,
    /// Permutation sampling: permutations per round (in antithetic pairs).
    #[serde(default = "default_permutations")]
    pub permutations: u32,
    /// Stratified sampling: orders per round sampled for the middle
    /// positions (in antithetic pairs); unset, as many as keep a round near
    /// [`STRATIFIED_BUDGET`] candidates, and at least 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub middle_orders: Option<u32>,
    /// Secure/homomorphic aggregation: the fewest hospitals in a group
    /// whose sum is decrypted (k).
    #[serde(default = "default_group_size")]
    pub group_size: u32,
}

fn default_exact_up_to() -> u32 {
    6
}
fn default_permutations() -> u32 {
    32
}
/// The candidates a stratified round aims at when `middle_orders` is unset:
/// at 8 and 10 hospitals this many gave Spearman 0.95–1.0 against exact
/// Shapley over five runs each (docs/BENCHMARKS.md).
pub const STRATIFIED_BUDGET: usize = 50;

/// Middle orders for `players` when the job leaves them unset: what the
/// budget leaves after the `2n + 2` exact ends, at `n - 3` new candidates an
/// order, in whole antithetic pairs, at least two pairs.
pub fn default_middle_orders(players: usize) -> usize {
    if players < 4 {
        return 0;
    }
    let left = STRATIFIED_BUDGET.saturating_sub(2 * players + 2);
    (left / (players - 3) / 2 * 2).max(4)
}
fn default_group_size() -> u32 {
    3
}

impl Default for ValuationSpec {
    fn default() -> Self {
        Self {
            method: Method::Auto,
            exact_up_to: default_exact_up_to(),
            permutations: default_permutations(),
            middle_orders: None,
            group_size: default_group_size(),
        }
    }
}

impl ValuationSpec {
    /// Checks the table against the round it values; `(key, message)`.
    pub fn validate(
        &self,
        clients_per_round: u32,
        min_clients: u32,
        grouped: bool,
    ) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((format!("valuation.{key}"), message));
        if self.exact_up_to > EXACT_LIMIT {
            return bad(
                "exact_up_to",
                format!(
                    "{} is above {EXACT_LIMIT}: exact Shapley scores 2^n candidate models",
                    self.exact_up_to
                ),
            );
        }
        if self.permutations == 0 {
            return bad("permutations", "must be at least 1".into());
        }
        if self.middle_orders == Some(0) {
            return bad("middle_orders", "must be at least 1".into());
        }
        if self.method == Method::Exact && !grouped && clients_per_round > EXACT_LIMIT {
            return bad(
                "method",
                format!(
                    "exact Shapley over {clients_per_round} hospitals would score 2^{clients_per_round} models; use \"auto\" or \"permutation\" (at most {EXACT_LIMIT})"
                ),
            );
        }
        if clients_per_round > 64 {
            return bad(
                "method",
                format!(
                    "valuation handles at most 64 hospitals per round, got {clients_per_round}"
                ),
            );
        }
        if grouped {
            let k = self.group_size;
            if k < 2 {
                return bad(
                    "group_size",
                    format!(
                        "must be at least 2 (a group of 1 would reveal a hospital's own update), got {k}"
                    ),
                );
            }
            if k > clients_per_round {
                return bad(
                    "group_size",
                    format!(
                        "{k} is larger than the round (training.clients_per_round = {clients_per_round})"
                    ),
                );
            }
            if min_clients < k {
                return bad(
                    "group_size",
                    format!(
                        "training.min_clients = {min_clients} is fewer than the group size {k}: a round with fewer hospitals could not be grouped"
                    ),
                );
            }
        }
        Ok(())
    }

    /// The method for a plain round of `players` hospitals.
    pub fn plain_method(&self, players: usize, seed: u64) -> Box<dyn Valuation> {
        match self.method {
            Method::Exact => Box::new(exact::ExactShapley),
            Method::Permutation => Box::new(permutation::PermutationShapley {
                permutations: self.permutations as usize,
                seed,
            }),
            Method::Stratified => self.stratified(players, seed),
            Method::Auto if players <= self.exact_up_to as usize => Box::new(exact::ExactShapley),
            Method::Auto => self.stratified(players, seed),
        }
    }

    /// The method for the groups of a grouped round: exact over up to
    /// `exact_up_to` groups, stratified sampling above.
    pub fn group_method(&self, groups: usize, seed: u64) -> Box<dyn Valuation> {
        if groups <= self.exact_up_to as usize {
            Box::new(exact::ExactShapley)
        } else {
            self.stratified(groups, seed)
        }
    }

    fn stratified(&self, players: usize, seed: u64) -> Box<dyn Valuation> {
        Box::new(stratified::StratifiedShapley {
            orders: self
                .middle_orders
                .map_or_else(|| default_middle_orders(players), |o| o as usize),
            seed,
        })
    }
}

/// `orders` orders (rounded up to a pair) in antithetic pairs: each order
/// `draw` makes, then its reverse, so that a player early in one is late in
/// the other. Seeded, so a round always asks for the same coalitions.
pub(crate) fn antithetic_orders(
    orders: usize,
    seed: u64,
    mut draw: impl FnMut(&mut rand_chacha::ChaCha8Rng) -> Vec<usize>,
) -> Vec<Vec<usize>> {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let pairs = orders.div_ceil(2).max(1);
    let mut all = Vec::with_capacity(2 * pairs);
    for _ in 0..pairs {
        let order = draw(&mut rng);
        let reverse = order.iter().rev().copied().collect();
        all.push(order);
        all.push(reverse);
    }
    all
}

/// Every prefix of every order, as coalitions.
pub(crate) fn prefixes(orders: &[Vec<usize>]) -> impl Iterator<Item = Coalition> + '_ {
    orders.iter().flat_map(|order| {
        order.iter().scan(0u64, |s, &i| {
            *s |= 1 << i;
            Some(*s)
        })
    })
}

/// The players of a coalition, in order.
pub fn members(coalition: Coalition, players: usize) -> impl Iterator<Item = usize> {
    (0..players).filter(move |i| coalition & (1 << i) != 0)
}

/// The candidate model of `coalition` (the hospitals build the same one).
pub use cohort_models::coalition_model as candidate;

/// Plain-mode players: one per hospital, except that hospitals that sent
/// the same update from the same data (equal dataset commitments in their
/// receipts, `commitments`, and updates equal to a relative 10^-4) are one
/// player, counted with one copy's examples, whose value they share
/// equally. Shapley values reward replication: a hospital joining with a
/// copy of another's data would otherwise earn the pair nearly twice what
/// the original earns alone. Both conditions are needed: the commitment is
/// the hospital's own report (and public on the ledger), so a free rider
/// claiming another's commitment is not merged unless it also sends that
/// hospital's update, which it cannot know before the round's evaluation.
pub fn plain_players(
    updates: &[crate::strategy::ClientUpdate],
    commitments: &std::collections::BTreeMap<String, String>,
) -> Vec<(Vec<String>, crate::strategy::ClientUpdate)> {
    let commitment = |u: &crate::strategy::ClientUpdate| {
        commitments
            .get(&u.client)
            .map(String::as_str)
            .filter(|c| !c.is_empty())
    };
    let same = |a: &crate::strategy::ClientUpdate, b: &crate::strategy::ClientUpdate| {
        // The commitments first: comparing updates costs a pass over both.
        if commitment(a).is_none()
            || commitment(a) != commitment(b)
            || a.delta.len() != b.delta.len()
        {
            return false;
        }
        let (mut diff, mut norm) = (0f64, 0f64);
        for (x, y) in a.delta.iter().zip(&b.delta) {
            diff += (f64::from(*x) - f64::from(*y)).powi(2);
            norm += f64::from(*x).powi(2);
        }
        diff <= 1e-8 * norm
    };
    let mut players: Vec<(Vec<String>, crate::strategy::ClientUpdate)> = Vec::new();
    for u in updates {
        match players.iter_mut().find(|(_, first)| same(first, u)) {
            Some((members, _)) => members.push(u.client.clone()),
            None => players.push((vec![u.client.clone()], u.clone())),
        }
    }
    players
}

/// A hospital's candidate scores: its validation rows and each candidate's
/// mean loss.
pub type Scores = (u64, Vec<f64>);

/// Keeps one of the scorers that evaluated on the same data (equal dataset
/// commitments): a copied validation split would count twice in the pooled
/// utility.
pub fn distinct_scorers(
    scored: Vec<(String, Scores)>,
    commitments: &std::collections::BTreeMap<String, String>,
) -> Vec<Scores> {
    let mut seen = std::collections::BTreeSet::new();
    scored
        .into_iter()
        .filter(
            |(name, _)| match commitments.get(name).filter(|c| !c.is_empty()) {
                Some(c) => seen.insert(c.clone()),
                None => true,
            },
        )
        .map(|(_, s)| s)
        .collect()
}

/// Example-weighted mean of the hospitals' losses per candidate, from
/// `(examples, losses)` answers; `None` when nobody scored.
pub fn pooled_losses(answers: &[(u64, Vec<f64>)], candidates: usize) -> Option<Vec<f64>> {
    let total: u64 = answers.iter().map(|(n, _)| *n).sum();
    if total == 0 {
        return None;
    }
    let mut pooled = vec![0.0; candidates];
    for (n, losses) in answers {
        for (p, l) in pooled.iter_mut().zip(losses) {
            *p += *n as f64 * l / total as f64;
        }
    }
    Some(pooled)
}

/// The first of `members` whose update alone is a linear combination of
/// the released group sums (`groups`, each a set of members): `Some` means
/// the coordinator could have recovered that hospital's update. Exact
/// rank arithmetic over the integers (fraction-free elimination).
pub fn isolated_member(members: &[String], groups: &[Vec<String>]) -> Option<String> {
    let row = |group: &[String]| -> Vec<i128> {
        members
            .iter()
            .map(|m| i128::from(group.contains(m)))
            .collect()
    };
    let released: Vec<Vec<i128>> = groups.iter().map(|g| row(g)).collect();
    let base = rank(released.clone());
    members.iter().enumerate().find_map(|(i, name)| {
        let mut with = released.clone();
        let mut unit = vec![0; members.len()];
        unit[i] = 1;
        with.push(unit);
        (rank(with) == base).then(|| name.clone())
    })
}

/// Rank of an integer matrix: elimination with integer row operations
/// only (`r ← p·r − f·pivot_row`), each row divided by the gcd of its
/// entries to keep the numbers small. Exact; no floating point.
pub fn rank(mut m: Vec<Vec<i128>>) -> usize {
    let rows = m.len();
    let cols = m.first().map_or(0, Vec::len);
    let mut rank = 0;
    for col in 0..cols {
        let Some(pivot) = (rank..rows).find(|&r| m[r][col] != 0) else {
            continue;
        };
        m.swap(rank, pivot);
        let pivot_row = m[rank].clone();
        for row in m.iter_mut().skip(rank + 1) {
            let f = row[col];
            if f == 0 {
                continue;
            }
            let p = pivot_row[col];
            for (x, y) in row.iter_mut().zip(&pivot_row) {
                *x = p * *x - f * y;
            }
            let g = row.iter().fold(0i128, |g, &x| gcd(g, x.abs()));
            if g > 1 {
                for x in row.iter_mut() {
                    *x /= g;
                }
            }
        }
        rank += 1;
        if rank == rows {
            break;
        }
    }
    rank
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hospitals_with_identical_data_are_one_player() {
        let update = |client: &str, delta: Vec<f32>, n: u64| crate::strategy::ClientUpdate {
            client: client.into(),
            delta,
            num_examples: n,
        };
        let updates = vec![
            update("a", vec![1.0, 1.0], 10),
            update("b", vec![4.0, 0.0], 30),
            update("twin-of-a", vec![1.0, 1.0], 10),
            // Claims a's data but sends another update: not merged.
            update("thief", vec![0.0, 0.0], 10),
            update("unknown", vec![0.0, 0.0], 5),
            update("also-unknown", vec![0.0, 0.0], 5),
        ];
        let commitments: std::collections::BTreeMap<String, String> = [
            ("a", "c1"),
            ("b", "c2"),
            ("twin-of-a", "c1"),
            ("thief", "c1"),
            ("unknown", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let players = plain_players(&updates, &commitments);
        let names: Vec<&Vec<String>> = players.iter().map(|(m, _)| m).collect();
        assert_eq!(
            names,
            [
                &vec!["a".to_string(), "twin-of-a".into()],
                &vec!["b".to_string()],
                &vec!["thief".to_string()],
                &vec!["unknown".to_string()],
                &vec!["also-unknown".to_string()],
            ]
        );
        assert_eq!(players[0].1.delta, [1.0, 1.0]);
        assert_eq!(players[0].1.num_examples, 10);
        let scored = vec![
            ("a".to_string(), (10, vec![0.5])),
            ("twin-of-a".to_string(), (10, vec![0.5])),
            ("b".to_string(), (30, vec![0.7])),
            ("unknown".to_string(), (5, vec![0.9])),
        ];
        let kept = distinct_scorers(scored, &commitments);
        assert_eq!(
            kept.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [10, 30, 5]
        );
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("h{i}")).collect()
    }

    #[test]
    fn rank_of_small_matrices() {
        assert_eq!(rank(vec![]), 0);
        assert_eq!(rank(vec![vec![1, 1], vec![1, 1]]), 1);
        assert_eq!(rank(vec![vec![1, 1, 0], vec![0, 1, 1], vec![1, 0, 1]]), 3);
        assert_eq!(
            rank(vec![
                vec![1, 1, 0, 0],
                vec![0, 0, 1, 1],
                vec![1, 0, 1, 0],
                vec![0, 1, 0, 1]
            ]),
            3
        );
        assert_eq!(rank(vec![vec![0, 2], vec![0, 4]]), 1);
    }

    #[test]
    fn a_partition_into_groups_of_two_or_more_isolates_nobody() {
        let m = names(7);
        let groups = vec![m[0..3].to_vec(), m[3..5].to_vec(), m[5..7].to_vec()];
        assert_eq!(isolated_member(&m, &groups), None);
        // Unions of groups are in the span already: still nobody.
        let mut with_unions = groups.clone();
        with_unions.push(m[0..5].to_vec());
        with_unions.push(m.clone());
        assert_eq!(isolated_member(&m, &with_unions), None);
    }

    #[test]
    fn overlapping_releases_that_isolate_are_caught() {
        let m = names(4);
        // {0,1,2} and {1,2} together give 0 alone.
        let groups = vec![m[0..3].to_vec(), m[1..3].to_vec()];
        assert_eq!(isolated_member(&m, &groups), Some("h0".into()));
        assert_eq!(
            isolated_member(&m, &[vec![m[2].clone()]]),
            Some("h2".into())
        );
        // Pairs around a triangle: a+b, b+c, a+c determine each one.
        let tri = vec![
            vec![m[0].clone(), m[1].clone()],
            vec![m[1].clone(), m[2].clone()],
            vec![m[0].clone(), m[2].clone()],
        ];
        assert_eq!(isolated_member(&m, &tri), Some("h0".into()));
    }

    #[test]
    fn candidates_are_weighted_means_of_the_coalition() {
        let start = [1.0f32, 1.0];
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 3.0];
        let players = [(&a[..], 1u64), (&b[..], 3u64)];
        assert_eq!(candidate(&start, &players, 0), start);
        assert_eq!(candidate(&start, &players, 0b01), [2.0, 1.0]);
        assert_eq!(candidate(&start, &players, 0b11), [1.25, 3.25]);
    }

    #[test]
    fn pooled_losses_weigh_by_examples() {
        let pooled = pooled_losses(&[(1, vec![1.0, 2.0]), (3, vec![0.0, 2.0])], 2).unwrap();
        assert_eq!(pooled, [0.25, 2.0]);
        assert_eq!(pooled_losses(&[], 2), None);
    }

    #[test]
    fn table_errors_name_the_key() {
        let spec = ValuationSpec {
            group_size: 5,
            ..Default::default()
        };
        let e = spec.validate(4, 4, true).unwrap_err();
        assert_eq!(e.0, "valuation.group_size");
        assert!(e.1.contains("larger than the round"), "{}", e.1);
        let spec = ValuationSpec::default();
        let e = spec.validate(6, 2, true).unwrap_err();
        assert!(e.1.contains("fewer than the group size"), "{}", e.1);
        let e = ValuationSpec {
            group_size: 1,
            ..Default::default()
        }
        .validate(4, 4, true)
        .unwrap_err();
        assert!(e.1.contains("at least 2"));
        assert!(spec.validate(6, 3, true).is_ok());
        // Plain mode ignores the group size.
        assert!(spec.validate(2, 1, false).is_ok());
        let e = ValuationSpec {
            method: Method::Exact,
            ..Default::default()
        }
        .validate(20, 2, false)
        .unwrap_err();
        assert_eq!(e.0, "valuation.method");
    }
}
