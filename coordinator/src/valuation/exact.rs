//! Exact Shapley values: every coalition is scored (2^n candidates).

use super::{Coalition, Valuation};

pub struct ExactShapley;

impl Valuation for ExactShapley {
    fn name(&self) -> &'static str {
        super::EXACT
    }

    fn coalitions(&self, players: usize) -> Vec<Coalition> {
        (0..1u64 << players).collect()
    }

    fn values(&self, players: usize, utility: &dyn Fn(Coalition) -> f64) -> Vec<f64> {
        // weight[s] = s! (n - s - 1)! / n!, the chance that a random order
        // puts exactly the s others of a coalition before the player.
        let mut weight = vec![0.0; players];
        for (s, w) in weight.iter_mut().enumerate() {
            *w = 1.0 / (players as f64 * binomial(players - 1, s));
        }
        (0..players)
            .map(|i| {
                let bit = 1u64 << i;
                (0..1u64 << players)
                    .filter(|s| s & bit == 0)
                    .map(|s| weight[s.count_ones() as usize] * (utility(s | bit) - utility(s)))
                    .sum()
            })
            .collect()
    }
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn additive_games_give_each_player_its_own_part() {
        let parts = [3.0, -1.0, 0.5, 0.0];
        let u = |s: Coalition| super::super::members(s, 4).map(|i| parts[i]).sum::<f64>();
        let v = ExactShapley.values(4, &u);
        for (a, b) in v.iter().zip(parts) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn efficiency_symmetry_and_null_player() {
        // Glove game: players 0,1 hold left gloves, 2 a right glove; 3 is null.
        let u = |s: Coalition| -> f64 {
            let left = (s & 0b11).count_ones().min(1);
            let right = (s >> 2) & 1;
            f64::from(left.min(right as u32))
        };
        let v = ExactShapley.values(4, &u);
        assert!((v.iter().sum::<f64>() - u(0b1111)).abs() < 1e-12);
        assert!((v[0] - v[1]).abs() < 1e-12);
        assert!((v[0] - 1.0 / 6.0).abs() < 1e-12);
        assert!((v[2] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(v[3], 0.0);
        assert_eq!(ExactShapley.coalitions(3).len(), 8);
    }

    #[test]
    fn a_copied_dataset_splits_its_value_with_its_twin() {
        // Player 3 joined with a copy of player 0's data: a coalition gains
        // nothing from holding both. Diminishing returns in what is known.
        let worth = [4.0, 2.0, 1.0];
        let u = |s: Coalition| -> f64 {
            let knows = |d: usize| match d {
                0 => s & 0b1001 != 0,
                d => s & (1 << d) != 0,
            };
            (0..3)
                .filter(|&d| knows(d))
                .map(|d| worth[d])
                .sum::<f64>()
                .sqrt()
        };
        let with_twin = ExactShapley.values(4, &u);
        let alone = ExactShapley.values(3, &|s| u(s & 0b111));
        assert!((with_twin[0] - with_twin[3]).abs() < 1e-12);
        // Together the twins earn little more than the original alone (here
        // 1.53 against 1.35): copying data does not double a payout.
        let pair = with_twin[0] + with_twin[3];
        assert!(pair <= 1.2 * alone[0], "{with_twin:?} {alone:?}");
        assert!(with_twin[0] < alone[0]);
    }
}
