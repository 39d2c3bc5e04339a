use super::{ClientUpdate, Strategy, StrategyError, weighted_mean_delta};

/// FedAvg: `w ← w + Σ_k (n_k / n) Δ_k`.
#[derive(Debug, Default, Clone, Copy)]
pub struct FedAvg;

impl Strategy for FedAvg {
    fn aggregate(
        &mut self,
        global: &[f32],
        updates: &[ClientUpdate],
    ) -> Result<Vec<f32>, StrategyError> {
        let mean = weighted_mean_delta(global.len(), updates)?;
        Ok(global.iter().zip(mean).map(|(w, d)| w + d).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::update;
    use super::*;

    #[test]
    fn equals_weighted_average_of_local_models() {
        let global = vec![1.0, 2.0];
        // Local models: a = [2, 2] (3 examples), b = [1, 6] (1 example).
        let next = FedAvg
            .aggregate(
                &global,
                &[
                    update("a", vec![1.0, 0.0], 3),
                    update("b", vec![0.0, 4.0], 1),
                ],
            )
            .unwrap();
        assert_eq!(next, vec![1.75, 3.0]);
    }
}
