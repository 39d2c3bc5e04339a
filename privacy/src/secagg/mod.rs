//! Secure aggregation in the SecAgg / SecAgg+ family (Bonawitz et al.,
//! CCS 2017; Bell et al., CCS 2020): the coordinator learns the sum of the
//! surviving clients' vectors mod `2^bits` and nothing else about any
//! individual vector, even when clients drop out mid-round.
//!
//! # Protocol
//!
//! `n` selected clients with ids `0..n` are joined by a `k`-regular
//! neighbour graph ([`neighbourhoods`]: a Harary graph over a seeded random
//! permutation, the complete graph when `k ≥ n − 1`). Each client `u`
//! ([`ClientRound`]) runs four stages with the server ([`ServerRound`]):
//!
//! 1. **Advertise** two X25519 public keys: `c_u` (encrypts shares) and
//!    `s_u` (pairwise masks). The clients that do are `U1`. Each hospital
//!    signs [`Advertisement::statement`] with its identity key, so the
//!    coordinator cannot substitute keys.
//! 2. **Share keys.** `u` draws a random 32-byte self-mask seed `b_u`, splits
//!    `b_u` and its mask secret key `s_u^SK` into Shamir shares, any `t` of
//!    which reconstruct (`t` of `|N(u)|`; the share for `v` is at
//!    `x = v + 1`), and sends each neighbour in `U1` its two shares,
//!    encrypted with ChaCha20-Poly1305 under
//!    `HKDF-SHA256(X25519(c_u, c_v), session, u, v)` with associated data
//!    binding `(session, u, v)`. The senders are `U2`.
//! 3. **Masked input.** With `s_uv = HKDF(X25519(s_u, s_v), session,
//!    min(u,v), max(u,v))` and `P(u)` the neighbours whose shares reached
//!    `u`, it sends `y_u = x_u + PRG(b_u) + Σ_{v ∈ P(u)} ±PRG(s_uv) mod 2^bits`
//!    (`+` when `u < v`). PRG is the ChaCha20 keystream. The senders are `U3`;
//!    the server adds `y_u` into a running sum and keeps no individual vector.
//! 4. **Unmask.** Given `U3`, `u` reveals, for each `v ∈ P(u)`, its share of
//!    `b_v` if `v ∈ U3` and its share of `s_v^SK` otherwise — never both for
//!    one `v`, only once per round, and only if at least `t` of `P(u)` and
//!    at least `min_survivors` clients overall survived. The server
//!    reconstructs `b_u` for `u ∈ U3` and `s_v^SK` for `v ∈ U2 \ U3`,
//!    removes the self masks and the pairwise masks between dropped and
//!    surviving clients (pairwise masks between two survivors cancel), and
//!    obtains `Σ_{u ∈ U3} x_u mod 2^bits`.
//!
//! **Committed inputs.** For update proofs (`cohort_proofs::committed`)
//! a client sends, instead of `y_u`, one Pedersen commitment per entry
//! whose blinding is the same masks over the ristretto255 group order
//! ([`ClientRound::blindings`]: each scalar is 64 bytes of the same
//! ChaCha20 streams, reduced). The server records such an input with
//! [`ServerRound::committed_input`] (the caller sums the points) and, after
//! the same unmasking, [`ServerRound::finish_blindings`] gives the blinding
//! left in the survivors' sum. A session uses one kind of input only.
//!
//! Every KDF input, ciphertext and signed statement binds the `session`
//! bytes (job id, round, attempt), so nothing replays across rounds. The
//! server's getters that hand a stage's outcome to clients
//! ([`ServerRound::adverts_for`], [`ServerRound::shares_for`],
//! [`ServerRound::survivors`]) close that stage, so all clients see the
//! same `U1`, `U2`, `U3`; the coordinator must forward exactly what they
//! return.
//!
//! # Why the coordinator learns only the sum
//!
//! For a survivor `u`, `y_u` is one-time padded by `PRG(b_u)`; the
//! coordinator can remove that pad only by collecting `t` shares of `b_u`,
//! which honest neighbours release only after `u` is declared a survivor.
//! It then still sees `x_u` padded by the pairwise masks with `u`'s
//! surviving neighbours, which cancel only in the sum, and by the pairwise
//! masks with dropped neighbours, which it removes using their
//! reconstructed `s_v^SK`. To unmask `u` alone it would need `s_u^SK` as
//! well (or all of `u`'s pairwise seeds), which honest neighbours release
//! only if `u` is declared dropped. A client answers once per round, and
//! `t > |N(u)|/2`, so two disjoint groups of neighbours — one told `u`
//! survived, the other told it dropped — cannot both reach `t`: the
//! coordinator gets `b_u` or `s_u^SK`, never both. With `c` corrupt
//! neighbours colluding with the coordinator this holds while
//! `t > (|N(u)| + c)/2`. Shares travel only encrypted under keys the
//! coordinator does not have, and advertisements are signed by the
//! hospitals, so it cannot impersonate a client to obtain them.
//!
//! The protocol does not stop a client from submitting a wrong input (that
//! needs proofs about inputs), and a coordinator that equivocates about
//! `U3` only gains once it controls enough neighbours to break the bound
//! above.
//!
//! # Defaults
//!
//! [`DEFAULT_THRESHOLD`] = 2/3, [`DEFAULT_BITS`] = 32, and the complete graph
//! (`neighbours ≥ n − 1`, i.e. original SecAgg), which for hospital
//! consortia of up to a few hundred clients is affordable. A sparser graph
//! (SecAgg+) cuts client cost from `O(n)` to `O(k)` PRG expansions; choose
//! `k` with Bell et al.'s analysis for the assumed corruption and dropout
//! rates.

mod client;
pub(crate) mod crypto;
mod server;
mod shamir;
mod sim;
mod wire;

pub use client::ClientRound;
pub use server::ServerRound;
pub use shamir::Share;
pub use sim::{Simulation, SimulationReport};
pub use wire::{
    SHARE_CIPHERTEXT_BYTES, decode_reveals, decode_shares, encode_reveals, encode_shares,
};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A client's index among the `n` clients selected for a round (`0..n`).
pub type ClientId = u32;

/// Recommended share threshold fraction (must be in `(1/2, 1]`).
pub const DEFAULT_THRESHOLD: f64 = 2.0 / 3.0;
/// Recommended modulus exponent: vectors live in `Z_{2^32}`.
pub const DEFAULT_BITS: u32 = 32;

/// Everything secure aggregation can reject. Each message names what is
/// wrong, and which client when one is to blame.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SecAggError {
    #[error("invalid {key}: {reason}")]
    InvalidParam { key: &'static str, reason: String },
    #[error(
        "too few neighbours at stage {stage}: have {have}, need at least {need} (the share threshold)"
    )]
    TooFewNeighbours {
        stage: &'static str,
        have: usize,
        need: usize,
    },
    #[error("too few survivors: {have} clients sent masked inputs, need at least {need}")]
    TooFewSurvivors { have: usize, need: usize },
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("client {client} is not a neighbour of client {of}")]
    NotANeighbour { client: ClientId, of: ClientId },
    #[error("client {client} is not among the survivors")]
    NotASurvivor { client: ClientId },
    #[error("client {client} did not take part in stage {stage}")]
    NotParticipating {
        client: ClientId,
        stage: &'static str,
    },
    #[error("client {client} is not in this round ({n} clients selected)")]
    UnknownClient { client: ClientId, n: usize },
    #[error(
        "shares from client {from} failed to decrypt (tampered, misaddressed, or from another session)"
    )]
    DecryptionFailed { from: ClientId },
    #[error(
        "client {from} revealed both kinds of share (self-mask seed and mask key) of client {about}"
    )]
    ConflictingReveal { from: ClientId, about: ClientId },
    #[error(
        "client {from} revealed the wrong kind of share of client {about}: expected its {expected} share"
    )]
    WrongRevealKind {
        from: ClientId,
        about: ClientId,
        expected: &'static str,
    },
    #[error(
        "cannot reconstruct the secret of client {client}: fewer than the share threshold of its neighbours revealed"
    )]
    CannotReconstruct { client: ClientId },
    #[error("the shares revealed for client {client} are inconsistent (a share was corrupted)")]
    InconsistentShares { client: ClientId },
    #[error("already unmasked: a client answers the unmask request only once per round")]
    AlreadyUnmasked,
    #[error("wrong length: expected {expected} values, got {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("value {value} at index {index} is not below 2^{bits}")]
    ValueOutOfRange { index: usize, value: u64, bits: u32 },
    #[error(
        "client {client} advertised an invalid {which} public key (non-canonical or of small order)"
    )]
    InvalidKey {
        client: ClientId,
        which: &'static str,
    },
    #[error(
        "client {client} advertised a public key that another client (or its other key) already uses"
    )]
    DuplicateKey { client: ClientId },
    #[error("duplicate {what} from client {client}")]
    Duplicate {
        client: ClientId,
        what: &'static str,
    },
    #[error("out of order: {call} is not allowed {stage}")]
    WrongStage {
        call: &'static str,
        stage: &'static str,
    },
}

/// Round parameters, identical for the server and every client.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Params {
    /// Vectors and masks live in `Z_{2^bits}` (`1..=64`).
    pub bits: u32,
    /// `t`: shares needed to reconstruct a client's secrets.
    pub share_threshold: u32,
    /// Fewest clients that must send masked inputs for the round to finish.
    pub min_survivors: u32,
}

fn ceil_fraction(fraction: f64, of: u32) -> u32 {
    // Tolerate float error (0.6 × 5 = 3.0000000000000004 must give 3).
    ((fraction * f64::from(of)) - 1e-9).ceil().max(0.0) as u32
}

impl Params {
    /// Parameters for `n_selected` clients with `neighbours` (k) neighbours
    /// each and share-threshold fraction `threshold`. Returns the degree
    /// actually used ([`effective_degree`]: `k` rounded up to even, or
    /// `n − 1` for the complete graph) along with the parameters
    /// `t = ⌈threshold · (k_used + 1)⌉` (a client's secrets are shared among
    /// its neighbours and itself; at least 2) and
    /// `min_survivors = ⌈threshold · n⌉`.
    ///
    /// `threshold` must exceed 1/2: a client answers one unmask request per
    /// round, revealing either a neighbour's self-mask share or its
    /// mask-key share. With `t > (|N(u)| + 1)/2`, two disjoint groups of the
    /// holders of `u`'s shares cannot both hold `t` shares, so a coordinator that tells
    /// one group "`u` survived" and the other "`u` dropped" cannot
    /// reconstruct both `b_u` and `s_u^SK` (which together would unmask
    /// `u`'s input). `min_survivors > n/2` gives the same guarantee for the
    /// survivor set as a whole.
    pub fn from_fractions(
        n_selected: u32,
        neighbours: u32,
        threshold: f64,
        bits: u32,
    ) -> Result<(Params, u32), SecAggError> {
        if n_selected < 2 {
            return Err(SecAggError::InvalidParam {
                key: "n_selected",
                reason: format!("at least 2 clients are needed, got {n_selected}"),
            });
        }
        if neighbours < 2 {
            return Err(SecAggError::InvalidParam {
                key: "neighbours",
                reason: format!("each client needs at least 2 neighbours, got {neighbours}"),
            });
        }
        if !(threshold.is_finite() && threshold > 0.5 && threshold <= 1.0) {
            return Err(SecAggError::InvalidParam {
                key: "threshold",
                reason: format!(
                    "must be in (0.5, 1] so that two disjoint groups of clients cannot each \
                     reconstruct a secret, got {threshold}"
                ),
            });
        }
        if !(1..=64).contains(&bits) {
            return Err(SecAggError::InvalidParam {
                key: "bits",
                reason: format!("must be in 1..=64, got {bits}"),
            });
        }
        let k = effective_degree(n_selected, neighbours);
        // A client's secrets are shared among its k neighbours and itself.
        let holders = k + 1;
        let t = ceil_fraction(threshold, holders).clamp(2, holders);
        let min_survivors = ceil_fraction(threshold, n_selected).clamp(1, n_selected);
        Ok((
            Params {
                bits,
                share_threshold: t,
                min_survivors,
            },
            k,
        ))
    }

    /// Checks the ranges every party relies on.
    pub fn validate(&self) -> Result<(), SecAggError> {
        if !(1..=64).contains(&self.bits) {
            return Err(SecAggError::InvalidParam {
                key: "bits",
                reason: format!("must be in 1..=64, got {}", self.bits),
            });
        }
        if self.share_threshold == 0 {
            return Err(SecAggError::InvalidParam {
                key: "share_threshold",
                reason: "must be at least 1".into(),
            });
        }
        if self.min_survivors == 0 {
            return Err(SecAggError::InvalidParam {
                key: "min_survivors",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    pub(crate) fn mask(&self) -> u64 {
        if self.bits >= 64 {
            u64::MAX
        } else {
            (1u64 << self.bits) - 1
        }
    }

    /// Every value a word `< 2^bits`, or the first that is not.
    pub(crate) fn check_words(&self, values: &[u64]) -> Result<(), SecAggError> {
        let mask = self.mask();
        match values.iter().enumerate().find(|&(_, &v)| v > mask) {
            Some((index, &value)) => Err(SecAggError::ValueOutOfRange {
                index,
                value,
                bits: self.bits,
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn t(&self) -> usize {
        self.share_threshold as usize
    }
}

/// The degree [`neighbourhoods`] actually gives each client for a requested
/// `k`: `n − 1` (complete graph) when `k ≥ n − 1`, otherwise `k` rounded up
/// to even (a Harary graph joins each client to `k/2` clients on each side
/// of a ring), capped at `n − 1`.
pub fn effective_degree(n: u32, k: u32) -> u32 {
    if n < 2 {
        return 0;
    }
    if k >= n - 1 {
        return n - 1;
    }
    let even = k.div_ceil(2) * 2;
    even.min(n - 1)
}

/// A 32-byte graph seed derived from public session bytes, so every party
/// can recompute (and check) the neighbour graph:
/// `SHA-256(DOMAIN ‖ "/graph" ‖ session)`.
pub fn graph_seed(session: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(crypto::DOMAIN);
    ctx.update(b"/graph");
    ctx.update(session);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The neighbours of each of the clients `0..n`: symmetric, sorted, no
/// self-loops, each of size [`effective_degree`]`(n, k)`. The graph is the
/// Harary graph `H(k, n)` over a random permutation of the clients (Bell et
/// al. 2020): clients sit on a ring in permuted order and each is joined to
/// the `k/2` nearest on either side. The permutation is a Fisher–Yates
/// shuffle driven by ChaCha20 keyed with `seed` (unbiased rejection
/// sampling), so it is stable across platforms and crate versions.
pub fn neighbourhoods(n: u32, k: u32, seed: &[u8; 32]) -> Vec<Vec<ClientId>> {
    let d = effective_degree(n, k);
    let len = n as usize;
    if d + 1 >= n {
        return (0..n)
            .map(|u| (0..n).filter(|&v| v != u).collect())
            .collect();
    }
    let mut rng = ChaCha20Rng::from_seed(*seed);
    let mut perm: Vec<ClientId> = (0..n).collect();
    for i in (1..len).rev() {
        let range = i as u64 + 1;
        // Accept r ≥ 2^64 mod range, so r % range is uniform.
        let reject_below = range.wrapping_neg() % range;
        let j = loop {
            let r = rng.next_u64();
            if r >= reject_below {
                break (r % range) as usize;
            }
        };
        perm.swap(i, j);
    }
    let half = (d / 2) as usize;
    let mut out: Vec<Vec<ClientId>> = vec![Vec::with_capacity(d as usize); len];
    for (pos, &u) in perm.iter().enumerate() {
        for off in 1..=half {
            out[u as usize].push(perm[(pos + off) % len]);
            out[u as usize].push(perm[(pos + len - off) % len]);
        }
    }
    for list in &mut out {
        list.sort_unstable();
        list.dedup();
    }
    out
}

/// Stage-1 message: a client's two X25519 public keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Advertisement {
    /// Key agreement for encrypting shares (`c_u`).
    pub cipher_pk: [u8; 32],
    /// Key agreement for pairwise masks (`s_u`).
    pub mask_pk: [u8; 32],
}

impl Advertisement {
    /// Wire length: version byte ‖ cipher_pk ‖ mask_pk.
    pub const BYTES: usize = 1 + 32 + 32;

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::BYTES);
        out.push(wire::VERSION);
        out.extend_from_slice(&self.cipher_pk);
        out.extend_from_slice(&self.mask_pk);
        out
    }

    /// Parses [`Advertisement::to_bytes`]; rejects a wrong length or
    /// version and keys that are non-canonical or of small order.
    pub fn from_bytes(b: &[u8]) -> Result<Self, SecAggError> {
        if b.len() != Self::BYTES {
            return Err(SecAggError::Malformed(format!(
                "advertisement: expected {} bytes, got {}",
                Self::BYTES,
                b.len()
            )));
        }
        wire::check_version("advertisement", b[0])?;
        let mut cipher_pk = [0u8; 32];
        let mut mask_pk = [0u8; 32];
        cipher_pk.copy_from_slice(&b[1..33]);
        mask_pk.copy_from_slice(&b[33..65]);
        let ad = Self { cipher_pk, mask_pk };
        if let Some(which) = ad.invalid_key() {
            return Err(SecAggError::Malformed(format!(
                "advertisement: {which} public key is non-canonical or of small order"
            )));
        }
        Ok(ad)
    }

    /// What a hospital signs with its identity key so the coordinator cannot
    /// substitute keys: `DOMAIN ‖ "/advertisement" ‖ len(session) (u64 LE) ‖
    /// session ‖ id (u32 LE) ‖ cipher_pk ‖ mask_pk`.
    pub fn statement(&self, session: &[u8], id: ClientId) -> Vec<u8> {
        let mut out = Vec::with_capacity(crypto::DOMAIN.len() + 14 + 8 + session.len() + 4 + 64);
        out.extend_from_slice(crypto::DOMAIN);
        out.extend_from_slice(b"/advertisement");
        out.extend_from_slice(&(session.len() as u64).to_le_bytes());
        out.extend_from_slice(session);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&self.cipher_pk);
        out.extend_from_slice(&self.mask_pk);
        out
    }

    /// Which key, if any, is unusable (non-canonical, small order, or both
    /// keys equal).
    pub(crate) fn invalid_key(&self) -> Option<&'static str> {
        if !crypto::is_valid_public(&self.cipher_pk) {
            Some("cipher")
        } else if !crypto::is_valid_public(&self.mask_pk) {
            Some("mask")
        } else if self.cipher_pk == self.mask_pk {
            Some("mask (equal to the cipher key)")
        } else {
            None
        }
    }
}

/// Stage-2 message: the two shares that `from` sends `to`, encrypted.
#[derive(Clone, Debug, PartialEq)]
pub struct EncryptedShares {
    pub from: ClientId,
    pub to: ClientId,
    pub ciphertext: Vec<u8>,
}

/// Stage-4 message: one share of a neighbour's secret.
#[derive(Clone, Debug, PartialEq)]
pub enum Reveal {
    /// A share of `b_of`; sent because `of` survived.
    SelfMaskSeed { of: ClientId, share: Share },
    /// A share of `s_of^SK`; sent because `of` dropped.
    MaskKey { of: ClientId, share: Share },
}

impl Reveal {
    /// The client whose secret this share belongs to.
    pub fn of(&self) -> ClientId {
        match self {
            Reveal::SelfMaskSeed { of, .. } | Reveal::MaskKey { of, .. } => *of,
        }
    }

    pub fn share(&self) -> &Share {
        match self {
            Reveal::SelfMaskSeed { share, .. } | Reveal::MaskKey { share, .. } => share,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_is_regular_symmetric_and_seeded() {
        for n in 2..40u32 {
            for k in [2, 3, 4, 5, 8, 100] {
                let g = neighbourhoods(n, k, &[n as u8; 32]);
                let d = effective_degree(n, k) as usize;
                assert_eq!(g.len(), n as usize);
                for (u, list) in g.iter().enumerate() {
                    assert_eq!(list.len(), d, "n={n} k={k} u={u}");
                    assert!(list.windows(2).all(|w| w[0] < w[1]));
                    assert!(!list.contains(&(u as u32)));
                    for &v in list {
                        assert!(g[v as usize].contains(&(u as u32)));
                    }
                }
                assert_eq!(g, neighbourhoods(n, k, &[n as u8; 32]));
            }
        }
        assert_ne!(
            neighbourhoods(30, 4, &[1; 32]),
            neighbourhoods(30, 4, &[2; 32])
        );
        assert_eq!(effective_degree(10, 3), 4);
        assert_eq!(effective_degree(10, 8), 8);
        assert_eq!(effective_degree(10, 9), 9);
        assert_eq!(effective_degree(5, 3), 4);
    }

    #[test]
    fn params_from_fractions() {
        let (p, k) = Params::from_fractions(10, 4, 0.6, 32).unwrap();
        assert_eq!(k, 4);
        assert_eq!(p.share_threshold, 3);
        assert_eq!(p.min_survivors, 6);
        let (p, k) = Params::from_fractions(5, 50, 0.6, 16).unwrap();
        assert_eq!((k, p.share_threshold, p.min_survivors), (4, 3, 3));
        let (p, _) = Params::from_fractions(3, 2, 0.51, 16).unwrap();
        assert_eq!(p.share_threshold, 2);
        for (n, k, th, bits, key) in [
            (1, 4, 0.6, 32, "n_selected"),
            (10, 1, 0.6, 32, "neighbours"),
            (10, 4, 0.5, 32, "threshold"),
            (10, 4, 1.01, 32, "threshold"),
            (10, 4, f64::NAN, 32, "threshold"),
            (10, 4, 0.6, 0, "bits"),
            (10, 4, 0.6, 65, "bits"),
        ] {
            match Params::from_fractions(n, k, th, bits) {
                Err(SecAggError::InvalidParam { key: got, reason }) => {
                    assert_eq!(got, key);
                    assert!(
                        SecAggError::InvalidParam { key: got, reason }
                            .to_string()
                            .contains(key)
                    );
                }
                other => panic!("expected InvalidParam({key}), got {other:?}"),
            }
        }
    }

    #[test]
    fn graph_seed_depends_on_session() {
        assert_ne!(graph_seed(b"job/1/0"), graph_seed(b"job/1/1"));
        assert_eq!(graph_seed(b"x"), graph_seed(b"x"));
    }
}
