//! Shamir secret sharing of 32-byte secrets over the prime field of
//! `curve25519-dalek` scalars (integers mod ℓ = 2^252 + 2774…, a vetted
//! constant-time implementation).
//!
//! A 32-byte secret is split into two 16-byte halves; each half (< 2^128 <
//! ℓ) is the constant term of its own random polynomial of degree `t − 1`.
//! The share held by client `id` is both polynomials evaluated at
//! `x = id + 1`, so client ids up to `u32::MAX` are supported. Any `t`
//! shares determine the secret; any `t − 1` are uniformly distributed and
//! independent of it.
//!
//! Reconstruction interpolates from `t` shares, checks that both halves are
//! below 2^128 (a randomly corrupted share makes them random mod ℓ, so this
//! catches it with probability 1 − 2^−124), and checks every further share
//! against the interpolated polynomials. These checks catch accidents; a
//! share holder who deliberately offsets its share by a chosen amount is
//! caught only when more than `t` shares are available (like any client,
//! it can corrupt the sum by other means anyway: SecAgg does not make
//! clients honest).

use curve25519_dalek::scalar::Scalar;
use rand::CryptoRng;
use std::collections::BTreeSet;
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

use super::{ClientId, SecAggError};

/// One client's share of a 32-byte secret. Its value is zeroized on drop
/// and never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Share {
    holder: ClientId,
    y: [Scalar; 2],
}

impl Drop for Share {
    fn drop(&mut self) {
        self.y.zeroize();
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Share {
    /// Encoded length: holder (u32 LE) ‖ two canonical scalars.
    pub const BYTES: usize = 4 + 64;
    /// Length of the value part alone (what travels inside a ciphertext,
    /// whose holder is implied by the addressee).
    pub(crate) const VALUE_BYTES: usize = 64;

    /// The client holding this share; its x-coordinate is `holder + 1`.
    pub fn holder(&self) -> ClientId {
        self.holder
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::BYTES);
        out.extend_from_slice(&self.holder.to_le_bytes());
        self.write_value(&mut out);
        out
    }

    pub(crate) fn write_value(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.y[0].as_bytes());
        out.extend_from_slice(self.y[1].as_bytes());
    }

    /// Parses [`Share::to_bytes`]; rejects a wrong length and non-canonical
    /// scalars.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecAggError> {
        if bytes.len() != Self::BYTES {
            return Err(SecAggError::Malformed(format!(
                "share: expected {} bytes, got {}",
                Self::BYTES,
                bytes.len()
            )));
        }
        let holder = ClientId::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        Self::from_value(holder, &bytes[4..])
            .ok_or_else(|| SecAggError::Malformed("share: value is not a canonical scalar".into()))
    }

    /// `value` is two canonical 32-byte scalars.
    pub(crate) fn from_value(holder: ClientId, value: &[u8]) -> Option<Self> {
        if value.len() != Self::VALUE_BYTES {
            return None;
        }
        let mut a = Zeroizing::new([0u8; 32]);
        let mut b = Zeroizing::new([0u8; 32]);
        a.copy_from_slice(&value[..32]);
        b.copy_from_slice(&value[32..]);
        let y0 = Option::<Scalar>::from(Scalar::from_canonical_bytes(*a))?;
        let y1 = Option::<Scalar>::from(Scalar::from_canonical_bytes(*b))?;
        Some(Self {
            holder,
            y: [y0, y1],
        })
    }
}

/// Why reconstruction failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ShamirError {
    NotEnough {
        have: usize,
        need: usize,
    },
    DuplicateHolder(ClientId),
    /// The shares do not lie on one polynomial of degree < t with a
    /// 16-byte constant term: at least one of them is corrupted.
    Inconsistent,
}

fn x_of(holder: ClientId) -> Scalar {
    Scalar::from(u64::from(holder) + 1)
}

fn half_to_scalar(half: &[u8]) -> Scalar {
    let mut bytes = Zeroizing::new([0u8; 32]);
    bytes[..16].copy_from_slice(half);
    Scalar::from_bytes_mod_order(*bytes)
}

fn random_scalar(rng: &mut impl CryptoRng) -> Scalar {
    let mut wide = Zeroizing::new([0u8; 64]);
    rng.fill_bytes(wide.as_mut());
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// Shares of `secret` for each of `holders` (distinct), any `t` of which
/// reconstruct it. Requires `1 ≤ t ≤ holders.len()`.
pub(crate) fn split(
    secret: &[u8; 32],
    t: usize,
    holders: &[ClientId],
    rng: &mut impl CryptoRng,
) -> Vec<Share> {
    debug_assert!(t >= 1 && t <= holders.len());
    let mut coeffs: [Vec<Scalar>; 2] = [Vec::with_capacity(t), Vec::with_capacity(t)];
    for (h, poly) in coeffs.iter_mut().enumerate() {
        poly.push(half_to_scalar(&secret[16 * h..16 * (h + 1)]));
        for _ in 1..t {
            poly.push(random_scalar(rng));
        }
    }
    let shares = holders
        .iter()
        .map(|&holder| {
            let x = x_of(holder);
            let eval = |poly: &[Scalar]| poly.iter().rev().fold(Scalar::ZERO, |acc, c| acc * x + c);
            Share {
                holder,
                y: [eval(&coeffs[0]), eval(&coeffs[1])],
            }
        })
        .collect();
    for poly in &mut coeffs {
        poly.zeroize();
    }
    shares
}

/// The secret from at least `t` shares (see the module docs for the checks).
pub(crate) fn reconstruct(shares: &[&Share], t: usize) -> Result<Zeroizing<[u8; 32]>, ShamirError> {
    if t == 0 || shares.len() < t {
        return Err(ShamirError::NotEnough {
            have: shares.len(),
            need: t.max(1),
        });
    }
    let mut seen = BTreeSet::new();
    for s in shares {
        if !seen.insert(s.holder) {
            return Err(ShamirError::DuplicateHolder(s.holder));
        }
    }
    let mut sorted: Vec<&Share> = shares.to_vec();
    sorted.sort_by_key(|s| s.holder);
    let (base, extra) = sorted.split_at(t);
    let xs: Vec<Scalar> = base.iter().map(|s| x_of(s.holder)).collect();

    // Barycentric weights w_i = 1 / Π_{j≠i} (x_i − x_j).
    let mut w: Vec<Scalar> = (0..t)
        .map(|i| {
            (0..t)
                .filter(|&j| j != i)
                .fold(Scalar::ONE, |acc, j| acc * (xs[i] - xs[j]))
        })
        .collect();
    Scalar::batch_invert(&mut w);

    // Evaluate at z = 0 and at every extra share's x:
    // p(z) = ℓ(z) Σ_i w_i y_i / (z − x_i), with ℓ(z) = Π_i (z − x_i).
    let points: Vec<Scalar> = std::iter::once(Scalar::ZERO)
        .chain(extra.iter().map(|s| x_of(s.holder)))
        .collect();
    let mut inv: Vec<Scalar> = points
        .iter()
        .flat_map(|z| xs.iter().map(move |x| z - x))
        .collect();
    Scalar::batch_invert(&mut inv);
    let eval = |k: usize, h: usize| -> Scalar {
        let z = points[k];
        let l = xs.iter().fold(Scalar::ONE, |acc, x| acc * (z - x));
        let s = (0..t).fold(Scalar::ZERO, |acc, i| {
            acc + w[i] * base[i].y[h] * inv[k * t + i]
        });
        l * s
    };

    let mut secret = Zeroizing::new([0u8; 32]);
    for h in 0..2 {
        let mut value = eval(0, h);
        let bytes = Zeroizing::new(value.to_bytes());
        value.zeroize();
        if bytes[16..].iter().any(|&b| b != 0) {
            return Err(ShamirError::Inconsistent);
        }
        secret[16 * h..16 * (h + 1)].copy_from_slice(&bytes[..16]);
    }
    for (k, s) in extra.iter().enumerate() {
        for h in 0..2 {
            if eval(k + 1, h) != s.y[h] {
                return Err(ShamirError::Inconsistent);
            }
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn secret(rng: &mut ChaCha20Rng) -> [u8; 32] {
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        s
    }

    #[test]
    fn any_t_of_k_reconstruct() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for (k, t) in [(1, 1), (2, 2), (3, 2), (5, 3), (8, 5), (12, 7), (20, 20)] {
            let s = secret(&mut rng);
            let holders: Vec<ClientId> = (0..k).map(|i| i * 7 + 3).collect();
            let shares = split(&s, t, &holders, &mut rng);
            for _ in 0..10 {
                let mut refs: Vec<&Share> = shares.iter().collect();
                refs.shuffle(&mut rng);
                let m = t + (rng.next_u32() as usize % (k as usize - t + 1));
                assert_eq!(*reconstruct(&refs[..m], t).unwrap(), s, "k={k} t={t} m={m}");
            }
        }
    }

    #[test]
    fn fewer_than_t_do_not_reveal_the_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let s = secret(&mut rng);
        let holders: Vec<ClientId> = (0..6).collect();
        let t = 4;
        let shares = split(&s, t, &holders, &mut rng);
        let refs: Vec<&Share> = shares.iter().collect();
        assert_eq!(
            reconstruct(&refs[..t - 1], t),
            Err(ShamirError::NotEnough { have: 3, need: 4 })
        );
        // Interpolating t − 1 shares as if the threshold were t − 1 gives a
        // wrong (here: inconsistent or different) value, not the secret.
        match reconstruct(&refs[..t - 1], t - 1) {
            Ok(v) => assert_ne!(*v, s),
            Err(e) => assert_eq!(e, ShamirError::Inconsistent),
        }
        // Fresh randomness per sharing: sharing the same secret again gives
        // different shares to the same holders, so t − 1 of them carry no
        // fixed pattern of the secret.
        let again = split(&s, t, &holders, &mut rng);
        assert!((0..t - 1).all(|i| again[i] != shares[i]));
    }

    #[test]
    fn large_client_ids_are_supported() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let s = secret(&mut rng);
        let holders: Vec<ClientId> = vec![65_534, 65_535, 65_536, u32::MAX - 1, u32::MAX];
        let shares = split(&s, 3, &holders, &mut rng);
        let refs: Vec<&Share> = shares.iter().rev().collect();
        assert_eq!(*reconstruct(&refs, 3).unwrap(), s);
    }

    #[test]
    fn corrupted_shares_are_detected() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let s = secret(&mut rng);
        let holders: Vec<ClientId> = (0..5).collect();
        let mut shares = split(&s, 3, &holders, &mut rng);
        // An extra share (holder 4 is beyond the first t by holder order)
        // fails the consistency check; without it the rest reconstruct.
        shares[4].y[0] += Scalar::ONE;
        let refs: Vec<&Share> = shares.iter().collect();
        assert_eq!(reconstruct(&refs, 3), Err(ShamirError::Inconsistent));
        assert_eq!(*reconstruct(&refs[..4], 3).unwrap(), s);
        // Randomly corrupted share in the interpolated set: the constant
        // term is no longer < 2^128. (A deliberate small offset would pass
        // with exactly t shares; extra shares catch that, as above.)
        shares[0].y[1] += random_scalar(&mut rng);
        let refs: Vec<&Share> = shares.iter().collect();
        assert_eq!(reconstruct(&refs[..3], 3), Err(ShamirError::Inconsistent));
        let dup = [&shares[1], &shares[1], &shares[2]];
        assert_eq!(reconstruct(&dup, 3), Err(ShamirError::DuplicateHolder(1)));
    }

    #[test]
    fn encoding_round_trip_and_rejection() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let shares = split(&secret(&mut rng), 2, &[1, 2], &mut rng);
        let bytes = shares[0].to_bytes();
        assert_eq!(Share::from_bytes(&bytes).unwrap(), shares[0]);
        assert!(Share::from_bytes(&bytes[..10]).is_err());
        let mut bad = bytes.clone();
        bad[4 + 31] = 0xff; // ≥ ℓ: not canonical
        assert!(Share::from_bytes(&bad).is_err());
        assert!(!format!("{:?}", shares[0]).contains(&format!("{:?}", shares[0].y[0])));
    }
}
