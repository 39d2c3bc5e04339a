//! `cohort client --misbehave MODE`: a testing aid for tests and for
//! consortia drilling their coordinator and validators. A hospital never
//! runs this in production; every mode makes the client send something an
//! honest client would not. `boost`, `overbound` and `forge` act on plain
//! updates (with or without proofs), under secure aggregation with update
//! proofs on the committed update (`boost`: the commitments of the boosted
//! update beside the honest update's proof), and under homomorphic
//! aggregation with update proofs on what is encrypted (`boost`: the
//! boosted update encrypted beside the honest update's commitments and
//! proof); otherwise under secure or homomorphic aggregation only
//! `freeride` changes what is sent.

/// How a drill client misbehaves in FIT tasks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Misbehave {
    /// Sends its update multiplied by `F` after clipping, with the proof of
    /// the honest one (the binding attack).
    Boost(f32),
    /// Multiplies its update by `F` and tries to prove that (the prover
    /// refuses an update outside the bound); sends the update with
    /// whatever proof it has, i.e. none.
    Overbound(f32),
    /// Sends random bytes as its proof.
    Forge,
    /// Sends an all-zero update (a free rider: its claimed examples count,
    /// its work does not).
    Freeride,
    /// Vertical split learning (issue 18), at a feature site: sends
    /// activations with a NaN in every batch.
    NanActivations,
    /// Refuses the secure preprocessing statistics, as a client from
    /// before them does ("task of unknown kind"), while staying connected.
    NoStatistics,
}

impl std::str::FromStr for Misbehave {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let factor = |text: &str, mode: &str| {
            text.parse::<f32>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| format!("`{mode}:{text}`: the factor must be a finite number"))
        };
        match s.split_once(':') {
            Some(("boost", f)) => Ok(Misbehave::Boost(factor(f, "boost")?)),
            Some(("overbound", f)) => Ok(Misbehave::Overbound(factor(f, "overbound")?)),
            None if s == "forge" => Ok(Misbehave::Forge),
            None if s == "freeride" => Ok(Misbehave::Freeride),
            None if s == "nan-activations" => Ok(Misbehave::NanActivations),
            None if s == "no-statistics" => Ok(Misbehave::NoStatistics),
            _ => Err(format!(
                "unknown misbehaviour `{s}` (expected boost:F, overbound:F, forge, freeride, \
                 nan-activations or no-statistics)"
            )),
        }
    }
}

impl Misbehave {
    /// The update that is sent in place of the honest `delta` (after the
    /// honest one was encoded and, where there are proofs, proved).
    pub fn tamper(self, delta: &mut [f32]) {
        match self {
            Misbehave::Boost(f) | Misbehave::Overbound(f) => {
                delta.iter_mut().for_each(|v| *v *= f);
            }
            Misbehave::Freeride => delta.iter_mut().for_each(|v| *v = 0.0),
            Misbehave::Forge | Misbehave::NanActivations | Misbehave::NoStatistics => {}
        }
    }

    /// Whether the update is proved after tampering (overbound, freeride)
    /// rather than before (boost: the honest update's proof travels).
    pub fn proves_tampered(self) -> bool {
        matches!(self, Misbehave::Overbound(_) | Misbehave::Freeride)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_bad_ones_are_named() {
        assert_eq!("boost:10".parse(), Ok(Misbehave::Boost(10.0)));
        assert_eq!("overbound:2.5".parse(), Ok(Misbehave::Overbound(2.5)));
        assert_eq!("forge".parse(), Ok(Misbehave::Forge));
        assert_eq!("freeride".parse(), Ok(Misbehave::Freeride));
        assert!(
            "boost:inf"
                .parse::<Misbehave>()
                .unwrap_err()
                .contains("finite")
        );
        assert!("lie".parse::<Misbehave>().unwrap_err().contains("unknown"));
        let mut d = [1.0, -2.0];
        Misbehave::Boost(3.0).tamper(&mut d);
        assert_eq!(d, [3.0, -6.0]);
        Misbehave::Freeride.tamper(&mut d);
        assert_eq!(d, [0.0, 0.0]);
    }
}
