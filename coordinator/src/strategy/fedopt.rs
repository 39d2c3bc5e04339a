use super::{ClientUpdate, FedOptParams, Strategy, StrategyError, weighted_mean_delta};

/// Adaptive server optimizers of Reddi et al., "Adaptive Federated
/// Optimization" (ICLR 2021), Algorithm 2. The averaged client delta is used
/// as a pseudo-gradient:
///
/// ```text
/// m ← β1·m + (1 − β1)·Δ
/// v ← β2·v + (1 − β2)·Δ²                      (Adam)
/// v ← v − (1 − β2)·Δ²·sign(v − Δ²)            (Yogi)
/// w ← w + η·m / (√v + τ)
/// ```
///
/// As in the paper there is no bias correction, and v starts at τ².
#[derive(Debug, Clone)]
pub struct FedOpt {
    optimizer: ServerOptimizer,
    params: FedOptParams,
    m: Vec<f32>,
    v: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerOptimizer {
    Adam,
    Yogi,
}

impl FedOpt {
    pub fn new(optimizer: ServerOptimizer, params: FedOptParams, n_parameters: usize) -> Self {
        let v0 = (params.tau * params.tau) as f32;
        Self {
            optimizer,
            params,
            m: vec![0.0; n_parameters],
            v: vec![v0; n_parameters],
        }
    }
}

impl Strategy for FedOpt {
    fn aggregate(
        &mut self,
        global: &[f32],
        updates: &[ClientUpdate],
    ) -> Result<Vec<f32>, StrategyError> {
        let delta = weighted_mean_delta(global.len(), updates)?;
        if self.m.len() != global.len() {
            return Err(StrategyError::State {
                expected: global.len(),
                got: self.m.len(),
            });
        }
        let (b1, b2) = (self.params.beta1, self.params.beta2);
        let (eta, tau) = (self.params.server_learning_rate, self.params.tau);
        let mut next = Vec::with_capacity(global.len());
        for i in 0..global.len() {
            let d = f64::from(delta[i]);
            let m = b1 * f64::from(self.m[i]) + (1.0 - b1) * d;
            let v_prev = f64::from(self.v[i]);
            let d2 = d * d;
            let v = match self.optimizer {
                ServerOptimizer::Adam => b2 * v_prev + (1.0 - b2) * d2,
                ServerOptimizer::Yogi => v_prev - (1.0 - b2) * d2 * (v_prev - d2).signum(),
            };
            self.m[i] = m as f32;
            self.v[i] = v as f32;
            next.push((f64::from(global[i]) + eta * m / (v.max(0.0).sqrt() + tau)) as f32);
        }
        Ok(next)
    }

    fn state(&self) -> Vec<f32> {
        let mut s = self.m.clone();
        s.extend_from_slice(&self.v);
        s
    }

    fn restore(&mut self, state: Vec<f32>) -> Result<(), StrategyError> {
        let n = self.m.len();
        if state.len() != 2 * n {
            return Err(StrategyError::State {
                expected: 2 * n,
                got: state.len(),
            });
        }
        self.m.copy_from_slice(&state[..n]);
        self.v.copy_from_slice(&state[n..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::update;
    use super::*;

    fn params() -> FedOptParams {
        FedOptParams {
            server_learning_rate: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        }
    }

    #[test]
    fn adam_first_step_matches_hand_computation() {
        let mut s = FedOpt::new(ServerOptimizer::Adam, params(), 1);
        let next = s.aggregate(&[0.0], &[update("a", vec![0.5], 1)]).unwrap();
        let m = 0.1 * 0.5;
        let v = 0.99 * 1e-6 + 0.01 * 0.25;
        let expected = 0.1 * m / (f64::sqrt(v) + 1e-3);
        assert!(
            (f64::from(next[0]) - expected).abs() < 1e-6,
            "{next:?} vs {expected}"
        );
    }

    #[test]
    fn yogi_second_moment_moves_additively() {
        let mut s = FedOpt::new(ServerOptimizer::Yogi, params(), 1);
        s.aggregate(&[0.0], &[update("a", vec![0.5], 1)]).unwrap();
        // v0 = τ² < Δ², so Yogi adds (1 − β2)Δ².
        let v = f64::from(s.state()[1]);
        assert!((v - (1e-6 + 0.01 * 0.25)).abs() < 1e-9, "{v}");
    }

    #[test]
    fn state_round_trips_and_continues_identically() {
        let ups = [update("a", vec![0.3, -0.2], 2)];
        let mut a = FedOpt::new(ServerOptimizer::Adam, params(), 2);
        let w1 = a.aggregate(&[0.0, 0.0], &ups).unwrap();
        let mut b = FedOpt::new(ServerOptimizer::Adam, params(), 2);
        b.restore(a.state()).unwrap();
        assert_eq!(
            a.aggregate(&w1, &ups).unwrap(),
            b.aggregate(&w1, &ups).unwrap()
        );
        assert!(b.restore(vec![0.0; 3]).is_err());
    }
}
