//! Aggregation policy, separated from transport (as in Flower's `Strategy`):
//! a strategy sees the current global parameters and the round's client
//! updates as plain vectors and returns the next global parameters. Adding a
//! strategy is one file implementing [`Strategy`] plus a [`StrategySpec`]
//! variant.

mod fedavg;
mod fedopt;

pub use fedavg::FedAvg;
pub use fedopt::{FedOpt, ServerOptimizer};

use serde::{Deserialize, Serialize};

/// One client's answer to a fit task: `delta = local parameters − global`.
#[derive(Debug, Clone)]
pub struct ClientUpdate {
    pub client: String,
    pub delta: Vec<f32>,
    pub num_examples: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StrategyError {
    #[error("no updates to aggregate")]
    Empty,
    #[error("update from `{client}` has {got} values, the model has {expected}")]
    Length {
        client: String,
        expected: usize,
        got: usize,
    },
    #[error("all updates report zero training examples")]
    NoExamples,
    #[error("saved strategy state has {got} values, expected {expected}")]
    State { expected: usize, got: usize },
}

pub trait Strategy: Send + Sync {
    /// The next global parameters.
    fn aggregate(
        &mut self,
        global: &[f32],
        updates: &[ClientUpdate],
    ) -> Result<Vec<f32>, StrategyError>;

    /// Server-side optimizer state, stored with every round so that a
    /// restarted coordinator continues exactly where it stopped.
    fn state(&self) -> Vec<f32> {
        Vec::new()
    }

    fn restore(&mut self, state: Vec<f32>) -> Result<(), StrategyError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(StrategyError::State {
                expected: 0,
                got: state.len(),
            })
        }
    }
}

/// The `[strategy]` table of a job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StrategySpec {
    /// FedAvg (McMahan et al. 2017): example-weighted mean of updates.
    /// (A struct variant so that stray keys such as `mu` are rejected.)
    FedAvg {},
    /// FedProx (Li et al. 2020): FedAvg aggregation; clients add a proximal
    /// term `mu/2 ||w − w_global||²` to their local loss.
    FedProx { mu: f64 },
    /// FedAdam (Reddi et al. 2021, Algorithm 2).
    FedAdam(FedOptParams),
    /// FedYogi (Reddi et al. 2021, Algorithm 2).
    FedYogi(FedOptParams),
}

/// Server optimizer hyper-parameters; defaults follow Reddi et al. 2021.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedOptParams {
    #[serde(default = "default_server_lr")]
    pub server_learning_rate: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_tau")]
    pub tau: f64,
}

fn default_server_lr() -> f64 {
    0.01
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.99
}
fn default_tau() -> f64 {
    1e-3
}

impl Default for StrategySpec {
    fn default() -> Self {
        StrategySpec::FedAvg {}
    }
}

impl StrategySpec {
    /// Returns the offending key (relative to `[strategy]`) and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        match self {
            StrategySpec::FedAvg {} => Ok(()),
            StrategySpec::FedProx { mu } => {
                if !(mu.is_finite() && *mu >= 0.0) {
                    return bad("mu", "must be a finite number ≥ 0");
                }
                Ok(())
            }
            StrategySpec::FedAdam(p) | StrategySpec::FedYogi(p) => {
                if !(p.server_learning_rate.is_finite() && p.server_learning_rate > 0.0) {
                    return bad("server_learning_rate", "must be a finite number > 0");
                }
                if !(0.0..1.0).contains(&p.beta1) {
                    return bad("beta1", "must be in [0, 1)");
                }
                if !(0.0..1.0).contains(&p.beta2) {
                    return bad("beta2", "must be in [0, 1)");
                }
                if !(p.tau.is_finite() && p.tau > 0.0) {
                    return bad("tau", "must be a finite number > 0");
                }
                Ok(())
            }
        }
    }

    /// The proximal coefficient clients must use, if any.
    pub fn proximal_mu(&self) -> Option<f64> {
        match self {
            StrategySpec::FedProx { mu } if *mu > 0.0 => Some(*mu),
            _ => None,
        }
    }

    pub fn build(&self, n_parameters: usize) -> Box<dyn Strategy> {
        match self {
            StrategySpec::FedAvg {} | StrategySpec::FedProx { .. } => Box::new(FedAvg),
            StrategySpec::FedAdam(p) => {
                Box::new(FedOpt::new(ServerOptimizer::Adam, p.clone(), n_parameters))
            }
            StrategySpec::FedYogi(p) => {
                Box::new(FedOpt::new(ServerOptimizer::Yogi, p.clone(), n_parameters))
            }
        }
    }
}

/// The example-weighted mean of `updates` (all of `n_parameters` values),
/// accumulated in f64 so that many small contributions are not lost to f32
/// rounding.
pub fn weighted_mean_delta(
    n_parameters: usize,
    updates: &[ClientUpdate],
) -> Result<Vec<f32>, StrategyError> {
    let mut fold = UpdateFold::new(n_parameters);
    for u in updates {
        fold.add(&u.client, &u.delta, u.num_examples)?;
    }
    fold.mean()
}

/// Updates folded into their example-weighted sum as each arrives: a
/// round then holds one vector of the model's size, not one per hospital
/// (plain rounds without valuation or client-level DP, which need each
/// update, fold this way).
#[derive(Debug, Clone)]
pub struct UpdateFold {
    sum: Vec<f64>,
    examples: u64,
    updates: usize,
}

impl UpdateFold {
    pub fn new(n_parameters: usize) -> Self {
        Self {
            sum: vec![0.0; n_parameters],
            examples: 0,
            updates: 0,
        }
    }

    /// Adds `client`'s update, trained on `num_examples` records.
    pub fn add(
        &mut self,
        client: &str,
        delta: &[f32],
        num_examples: u64,
    ) -> Result<(), StrategyError> {
        if delta.len() != self.sum.len() {
            return Err(StrategyError::Length {
                client: client.to_string(),
                expected: self.sum.len(),
                got: delta.len(),
            });
        }
        let weight = num_examples as f64;
        for (s, d) in self.sum.iter_mut().zip(delta) {
            *s += weight * f64::from(*d);
        }
        self.examples += num_examples;
        self.updates += 1;
        Ok(())
    }

    /// How many updates were added.
    pub fn len(&self) -> usize {
        self.updates
    }

    pub fn is_empty(&self) -> bool {
        self.updates == 0
    }

    /// The example-weighted mean of what was added.
    pub fn mean(self) -> Result<Vec<f32>, StrategyError> {
        if self.updates == 0 {
            return Err(StrategyError::Empty);
        }
        if self.examples == 0 {
            return Err(StrategyError::NoExamples);
        }
        let total = self.examples as f64;
        Ok(self.sum.into_iter().map(|s| (s / total) as f32).collect())
    }

    /// The mean as the one update a strategy aggregates, weighted by all
    /// the examples behind it.
    pub fn into_update(self) -> Result<ClientUpdate, StrategyError> {
        let num_examples = self.examples;
        Ok(ClientUpdate {
            client: format!("{} folded updates", self.updates),
            delta: self.mean()?,
            num_examples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn update(client: &str, delta: Vec<f32>, n: u64) -> ClientUpdate {
        ClientUpdate {
            client: client.into(),
            delta,
            num_examples: n,
        }
    }

    #[test]
    fn weighted_mean_weights_by_examples() {
        let mean = weighted_mean_delta(
            2,
            &[
                update("a", vec![1.0, 0.0], 3),
                update("b", vec![-1.0, 4.0], 1),
            ],
        )
        .unwrap();
        assert_eq!(mean, vec![0.5, 1.0]);
    }

    #[test]
    fn weighted_mean_rejects_bad_input() {
        assert_eq!(weighted_mean_delta(1, &[]), Err(StrategyError::Empty));
        assert_eq!(
            weighted_mean_delta(2, &[update("a", vec![1.0], 1)]),
            Err(StrategyError::Length {
                client: "a".into(),
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            weighted_mean_delta(1, &[update("a", vec![1.0], 0)]),
            Err(StrategyError::NoExamples)
        );
    }

    /// Folding in whatever order updates arrive gives what the strategies
    /// computed from all of them at once, and a strategy given the fold's
    /// one update moves the model exactly as it would given them all.
    #[test]
    fn a_fold_in_any_arrival_order_aggregates_like_all_updates_at_once() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = 1000;
        let updates: Vec<ClientUpdate> = (0..50)
            .map(|k| {
                let delta = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                update(&format!("h{k}"), delta, rng.random_range(1..500))
            })
            .collect();
        let at_once = weighted_mean_delta(n, &updates).unwrap();
        for order in [false, true] {
            let mut fold = UpdateFold::new(n);
            let arriving: Vec<&ClientUpdate> = if order {
                updates.iter().rev().collect()
            } else {
                updates.iter().collect()
            };
            for u in arriving {
                fold.add(&u.client, &u.delta, u.num_examples).unwrap();
            }
            assert_eq!(fold.len(), 50);
            let folded = fold.into_update().unwrap();
            assert_eq!(
                folded.num_examples,
                updates.iter().map(|u| u.num_examples).sum::<u64>()
            );
            for (a, b) in folded.delta.iter().zip(&at_once) {
                assert!(
                    (a - b).abs() <= f32::EPSILON * b.abs().max(1e-3),
                    "{a} vs {b}"
                );
            }
            let global = vec![0.5f32; n];
            let mut all = FedAvg;
            let mut one = FedAvg;
            let from_all = all.aggregate(&global, &updates).unwrap();
            let from_fold = one.aggregate(&global, &[folded]).unwrap();
            for (a, b) in from_fold.iter().zip(&from_all) {
                assert!((a - b).abs() <= 2.0 * f32::EPSILON, "{a} vs {b}");
            }
        }
        assert_eq!(UpdateFold::new(3).mean(), Err(StrategyError::Empty));
        let mut wrong = UpdateFold::new(3);
        assert!(matches!(
            wrong.add("h", &[1.0], 1),
            Err(StrategyError::Length { got: 1, .. })
        ));
    }

    #[test]
    fn spec_parses_every_kind() {
        let s: StrategySpec = toml::from_str("kind = \"fedprox\"\nmu = 0.1").unwrap();
        assert_eq!(s.proximal_mu(), Some(0.1));
        let s: StrategySpec = toml::from_str("kind = \"fedyogi\"\ntau = 0.01").unwrap();
        assert!(matches!(s, StrategySpec::FedYogi(FedOptParams { tau, .. }) if tau == 0.01));
        assert!(toml::from_str::<StrategySpec>("kind = \"fedavg\"\nmu = 1").is_err());
        assert!(toml::from_str::<StrategySpec>("kind = \"fedsgd\"").is_err());
    }
}
