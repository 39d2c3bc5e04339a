//! Sampled Shapley values: the mean marginal contribution over random
//! orders of the players (Castro et al. 2009), drawn in antithetic pairs
//! (an order and its reverse) to cancel much of the sampling error. The
//! coalitions are every prefix of the drawn orders, scored in one batch;
//! the orders come from a seed, so the same round always asks for and
//! values the same coalitions.

use rand::seq::SliceRandom;

use super::{Coalition, Valuation};

pub struct PermutationShapley {
    pub permutations: usize,
    pub seed: u64,
}

impl PermutationShapley {
    fn orders(&self, players: usize) -> Vec<Vec<usize>> {
        super::antithetic_orders(self.permutations, self.seed, |rng| {
            let mut order: Vec<usize> = (0..players).collect();
            order.shuffle(rng);
            order
        })
    }
}

impl Valuation for PermutationShapley {
    fn name(&self) -> &'static str {
        super::PERMUTATION
    }

    fn coalitions(&self, players: usize) -> Vec<Coalition> {
        let mut all = std::collections::BTreeSet::from([0u64]);
        all.extend(super::prefixes(&self.orders(players)));
        all.into_iter().collect()
    }

    fn values(&self, players: usize, utility: &dyn Fn(Coalition) -> f64) -> Vec<f64> {
        let orders = self.orders(players);
        let mut values = vec![0.0; players];
        for order in &orders {
            let mut s = 0u64;
            let mut before = utility(0);
            for &i in order {
                s |= 1 << i;
                let after = utility(s);
                values[i] += after - before;
                before = after;
            }
        }
        for v in &mut values {
            *v /= orders.len() as f64;
        }
        values
    }
}

#[cfg(test)]
mod tests {
    use super::super::exact::ExactShapley;
    use super::*;

    #[test]
    fn efficient_and_close_to_exact_on_a_nonadditive_game() {
        let weights = [5.0, 3.0, 1.0, 1.0, 0.5, 0.0, 2.0, 4.0, 0.2, 1.5];
        // Diminishing returns: the square root of the coalition's weight.
        let u = |s: Coalition| -> f64 {
            super::super::members(s, weights.len())
                .map(|i| weights[i])
                .sum::<f64>()
                .sqrt()
        };
        let sampled = PermutationShapley {
            permutations: 200,
            seed: 7,
        };
        let v = sampled.values(10, &u);
        let exact = ExactShapley.values(10, &u);
        assert!((v.iter().sum::<f64>() - u((1 << 10) - 1)).abs() < 1e-9);
        for (a, b) in v.iter().zip(&exact) {
            assert!((a - b).abs() < 0.05, "{v:?} vs {exact:?}");
        }
        let coalitions = sampled.coalitions(10);
        assert_eq!(coalitions[0], 0);
        assert!(coalitions.len() < 1 << 10);
        // Same seed, same coalitions.
        assert_eq!(coalitions, sampled.coalitions(10));
    }
}
