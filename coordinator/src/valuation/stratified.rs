//! Position-stratified Shapley sampling: the default above `exact_up_to`
//! players.
//!
//! A player's Shapley value is the mean, over the `n` positions it can take
//! in a random order, of its expected marginal contribution at that
//! position. In a federated round the first and the last positions carry
//! most of the variance of plain permutation sampling: joining the empty
//! coalition moves the model by a whole update, joining everyone else by a
//! fraction of one. Both strata are cheap to compute exactly, for every
//! player at once: the `n` singletons give every first-position marginal
//! and the `n` leave-one-out coalitions every last-position one. Only the
//! `n - 2` middle positions are sampled, from orders drawn in antithetic
//! pairs (an order and its reverse, so a player early in one is late in the
//! other); each pair puts two players not yet at an end of an order at its
//! ends, so every player gets middle samples. An order's prefixes of one
//! and of `n - 1` players are a singleton and a leave-one-out, already
//! scored, so an order adds `n - 3` candidates.
//!
//! Each middle sample is a marginal at a uniformly random middle position
//! over a uniformly random coalition of that size, so a player's mean over
//! its middle samples estimates the mean of its middle strata without bias.
//! On the WDBC federation's per-round utilities at 10 hospitals (every
//! coalition scored, so each estimator can be replayed), 4 middle orders (50
//! candidates a round) gave a third of the squared error of plain
//! permutation sampling at the same number of candidates, and about that of
//! 18 permutations (135 candidates): docs/BENCHMARKS.md.

use rand::seq::{IndexedRandom, SliceRandom};

use super::{Coalition, Valuation};

pub struct StratifiedShapley {
    /// Orders sampled for the middle positions (rounded up to a pair).
    pub orders: usize,
    pub seed: u64,
}

impl StratifiedShapley {
    fn everyone(players: usize) -> Coalition {
        if players >= 64 {
            u64::MAX
        } else {
            (1u64 << players) - 1
        }
    }

    /// Below four players every coalition is a singleton, a leave-one-out,
    /// the empty or the full one: there is no middle to sample.
    fn has_middle(players: usize) -> bool {
        players >= 4
    }

    fn orders(&self, players: usize) -> Vec<Vec<usize>> {
        if !Self::has_middle(players) {
            return Vec::new();
        }
        let mut at_an_end = vec![false; players];
        super::antithetic_orders(self.orders, self.seed, |rng| {
            let fresh: Vec<usize> = (0..players).filter(|&i| !at_an_end[i]).collect();
            let pool: Vec<usize> = if fresh.len() >= 2 {
                fresh
            } else {
                (0..players).collect()
            };
            let ends: Vec<usize> = pool.choose_multiple(rng, 2).copied().collect();
            let mut middle: Vec<usize> = (0..players).filter(|i| !ends.contains(i)).collect();
            middle.shuffle(rng);
            let mut order = Vec::with_capacity(players);
            order.push(ends[0]);
            order.extend(middle);
            order.push(ends[1]);
            for &e in &ends {
                at_an_end[e] = true;
            }
            order
        })
    }
}

impl Valuation for StratifiedShapley {
    fn name(&self) -> &'static str {
        super::STRATIFIED
    }

    fn coalitions(&self, players: usize) -> Vec<Coalition> {
        let everyone = Self::everyone(players);
        let mut all = std::collections::BTreeSet::from([0u64, everyone]);
        for i in 0..players {
            all.insert(1 << i);
            all.insert(everyone & !(1 << i));
        }
        all.extend(super::prefixes(&self.orders(players)));
        all.into_iter().collect()
    }

    fn values(&self, players: usize, utility: &dyn Fn(Coalition) -> f64) -> Vec<f64> {
        if !Self::has_middle(players) {
            // Every coalition of at most three players was scored.
            return super::exact::ExactShapley.values(players, utility);
        }
        let everyone = Self::everyone(players);
        let empty = utility(0);
        let n = players as f64;
        let ends: Vec<f64> = (0..players)
            .map(|i| {
                let first = utility(1 << i) - empty;
                let last = utility(everyone) - utility(everyone & !(1 << i));
                first + last
            })
            .collect();
        let mut middle = vec![0.0; players];
        let mut samples = vec![0usize; players];
        for order in self.orders(players) {
            let mut s = 0u64;
            let mut before = empty;
            for (position, &i) in order.iter().enumerate() {
                s |= 1 << i;
                let after = utility(s);
                if position > 0 && position + 1 < players {
                    middle[i] += after - before;
                    samples[i] += 1;
                }
                before = after;
            }
        }
        // A player that never landed in the middle (only with a single
        // pair of orders over more players than it can place) takes the
        // mean of everyone's middle samples.
        let pooled = middle.iter().sum::<f64>() / samples.iter().sum::<usize>().max(1) as f64;
        (0..players)
            .map(|i| {
                let mean = if samples[i] > 0 {
                    middle[i] / samples[i] as f64
                } else {
                    pooled
                };
                (ends[i] + (n - 2.0) * mean) / n
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::exact::ExactShapley;
    use super::super::permutation::PermutationShapley;
    use super::*;

    /// The shape of a federated round's utilities: a coalition's candidate
    /// is the mean of its members' updates, so the first member moves the
    /// model by a whole update and later ones by ever smaller fractions.
    /// The gains are the singletons' of the WDBC federation's first round,
    /// with one harmful player added.
    const GAINS: [f64; 10] = [
        0.042, 0.047, 0.143, 0.2, 0.158, 0.085, 0.19, 0.025, 0.044, -0.06,
    ];

    fn averaging_game(s: Coalition) -> f64 {
        let members: Vec<usize> = super::super::members(s, GAINS.len()).collect();
        if members.is_empty() {
            return 0.0;
        }
        members.iter().map(|&i| GAINS[i]).sum::<f64>() / members.len() as f64
    }

    #[test]
    fn few_candidates_close_to_exact_and_only_scored_ones_used() {
        let method = StratifiedShapley { orders: 4, seed: 7 };
        let coalitions = method.coalitions(10);
        // Empty, full, 10 singletons, 10 leave-one-outs, 4 orders × 7.
        assert!(coalitions.len() <= 22 + 4 * 7, "{}", coalitions.len());
        assert_eq!(coalitions[0], 0);
        assert_eq!(
            coalitions,
            method.coalitions(10),
            "same seed, same coalitions"
        );
        let scored: std::collections::BTreeSet<Coalition> = coalitions.iter().copied().collect();
        let values = method.values(10, &|c| {
            assert!(scored.contains(&c), "asked for unscored coalition {c:#b}");
            averaging_game(c)
        });
        let exact = ExactShapley.values(10, &averaging_game);
        for (a, b) in values.iter().zip(&exact) {
            assert!((a - b).abs() < 0.02, "{values:?} vs {exact:?}");
        }
        let total: f64 = values.iter().sum();
        assert!((total - averaging_game(1023)).abs() < 0.02, "{total}");
        let argmin = |v: &[f64]| (0..v.len()).min_by(|&i, &j| v[i].total_cmp(&v[j]));
        assert_eq!(argmin(&values), Some(9), "the harmful player is last");
    }

    #[test]
    fn every_player_gets_middle_samples_and_small_rounds_are_exact() {
        let method = StratifiedShapley { orders: 4, seed: 1 };
        let orders = method.orders(10);
        assert_eq!(orders.len(), 4);
        for i in 0..10 {
            let in_middle = orders.iter().filter(|o| o[0] != i && o[9] != i).count();
            assert!(
                in_middle >= 2,
                "player {i} in the middle of {in_middle} orders"
            );
        }
        for players in 1..=3 {
            let exact = ExactShapley.values(players, &averaging_game);
            let values = method.values(players, &averaging_game);
            for (a, b) in values.iter().zip(&exact) {
                assert!(
                    (a - b).abs() < 1e-12,
                    "{players} players: {values:?} vs {exact:?}"
                );
            }
        }
    }

    /// Against plain permutation sampling at the same number of candidates,
    /// over many seeds: the first position, where the averaging game's
    /// marginals differ most, is what permutation sampling gets wrong.
    #[test]
    fn beats_permutation_sampling_at_equal_cost() {
        let exact = ExactShapley.values(10, &averaging_game);
        let error = |v: Vec<f64>| {
            v.iter()
                .zip(&exact)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
        };
        let (mut stratified, mut permutation) = (0.0, 0.0);
        let (mut stratified_cost, mut permutation_cost) = (0, 0);
        for seed in 0..50 {
            let s = StratifiedShapley { orders: 4, seed };
            let p = PermutationShapley {
                permutations: 6,
                seed,
            };
            stratified_cost += s.coalitions(10).len();
            permutation_cost += p.coalitions(10).len();
            stratified += error(s.values(10, &averaging_game));
            permutation += error(p.values(10, &averaging_game));
        }
        assert!(permutation_cost >= stratified_cost);
        assert!(
            2.0 * stratified < permutation,
            "stratified {stratified} against permutation {permutation}"
        );
    }
}
