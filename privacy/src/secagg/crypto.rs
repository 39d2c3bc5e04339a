//! The primitives, all from vetted implementations:
//! * X25519 (RFC 7748): `curve25519-dalek`'s `MontgomeryPoint::mul_clamped`
//!   and `mul_base_clamped`, which is exactly what `x25519-dalek` calls;
//! * HKDF-SHA256 (RFC 5869) and ChaCha20-Poly1305 (RFC 8439): `ring`;
//! * the mask PRG: the ChaCha20 keystream of `rand_chacha::ChaCha20Rng`.
//!
//! Every KDF call is salted with [`DOMAIN`] and its info names the purpose,
//! the session (length-prefixed) and the client ids involved, so no key or
//! seed can be reused across purposes, sessions or pairs.

use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use zeroize::Zeroizing;

use super::ClientId;

/// Domain-separation tag (HKDF salt, AEAD associated data, signed statements).
pub(crate) const DOMAIN: &[u8] = b"cohort-secagg-v1";
pub(crate) const TAG_LEN: usize = 16;

/// An X25519 secret key: 32 random bytes, clamped at use. Zeroized on drop.
pub(crate) struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    pub(crate) fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        Self(bytes)
    }

    pub(crate) fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self(bytes)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn public(&self) -> [u8; 32] {
        MontgomeryPoint::mul_base_clamped(*self.0).to_bytes()
    }

    /// X25519(self, their). `None` when the result is all zero (their key
    /// is of small order: a non-contributory agreement).
    pub(crate) fn agree(&self, their: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let shared = Zeroizing::new(MontgomeryPoint(*their).mul_clamped(*self.0).to_bytes());
        if shared.iter().fold(0u8, |acc, b| acc | b) == 0 {
            None
        } else {
            Some(shared)
        }
    }
}

/// Whether `pk` is a canonical X25519 public key (top bit clear, `u < p`)
/// that is not of small order. Rejecting non-canonical encodings makes
/// byte equality the same as point equality, so duplicate checks hold.
pub(crate) fn is_valid_public(pk: &[u8; 32]) -> bool {
    if pk[31] & 0x80 != 0 {
        return false;
    }
    // p = 2^255 − 19 = ed ff … ff 7f (little endian).
    let ge_p = pk[31] == 0x7f && pk[1..31].iter().all(|&b| b == 0xff) && pk[0] >= 0xed;
    if ge_p {
        return false;
    }
    // A clamped scalar is a multiple of the cofactor 8, so the product is
    // the identity (u = 0) exactly when the point has small order.
    let probe = MontgomeryPoint(*pk).mul_clamped([0x55; 32]).to_bytes();
    probe.iter().any(|&b| b != 0)
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256(salt = DOMAIN, ikm, info = label ‖ len(session) ‖ session ‖ ids).
fn kdf(ikm: &[u8], label: &[u8], session: &[u8], ids: &[ClientId]) -> Zeroizing<[u8; 32]> {
    let mut info = Vec::with_capacity(label.len() + 8 + session.len() + 4 * ids.len());
    info.extend_from_slice(label);
    info.extend_from_slice(&(session.len() as u64).to_le_bytes());
    info.extend_from_slice(session);
    for id in ids {
        info.extend_from_slice(&id.to_le_bytes());
    }
    let mut out = Zeroizing::new([0u8; 32]);
    Salt::new(HKDF_SHA256, DOMAIN)
        .extract(ikm)
        .expand(&[&info], Len(32))
        .and_then(|okm| okm.fill(out.as_mut()))
        // Only fails for outputs longer than 255 × 32 bytes.
        .expect("HKDF-SHA256 can always produce 32 bytes");
    out
}

/// Key encrypting the shares that `from` sends to `to` (one direction).
pub(crate) fn share_key(
    shared: &[u8; 32],
    session: &[u8],
    from: ClientId,
    to: ClientId,
) -> Zeroizing<[u8; 32]> {
    kdf(shared, b"share-encryption", session, &[from, to])
}

/// `s_uv`, the seed of the pairwise mask between `a` and `b`.
pub(crate) fn pairwise_seed(
    shared: &[u8; 32],
    session: &[u8],
    a: ClientId,
    b: ClientId,
) -> Zeroizing<[u8; 32]> {
    kdf(shared, b"pairwise-mask", session, &[a.min(b), a.max(b)])
}

/// Seed of the commitment blindings between HE members `a` and `b`
/// (update proofs under homomorphic aggregation,
/// `he::HospitalRound::blindings`).
pub(crate) fn he_blinding_seed(
    shared: &[u8; 32],
    session: &[u8],
    a: ClientId,
    b: ClientId,
) -> Zeroizing<[u8; 32]> {
    kdf(
        shared,
        b"he-commitment-blinding",
        session,
        &[a.min(b), a.max(b)],
    )
}

/// PRG seed of `id`'s self mask, derived from its secret `b_u`.
pub(crate) fn self_mask_seed(b: &[u8; 32], session: &[u8], id: ClientId) -> Zeroizing<[u8; 32]> {
    kdf(b, b"self-mask", session, &[id])
}

/// Associated data of the share ciphertext `from → to`.
pub(crate) fn share_aad(session: &[u8], from: ClientId, to: ClientId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DOMAIN.len() + 8 + session.len() + 8 + 7);
    aad.extend_from_slice(DOMAIN);
    aad.extend_from_slice(b"/shares");
    aad.extend_from_slice(&(session.len() as u64).to_le_bytes());
    aad.extend_from_slice(session);
    aad.extend_from_slice(&from.to_le_bytes());
    aad.extend_from_slice(&to.to_le_bytes());
    aad
}

/// ChaCha20-Poly1305: `nonce ‖ ciphertext ‖ tag`. The key is used for this
/// one message only (it is derived per session and direction), and the
/// nonce is random as well.
pub(crate) fn seal(
    key: &[u8; 32],
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte ChaCha20-Poly1305 key"),
    );
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .expect("ChaCha20-Poly1305 sealing of a short message cannot fail");
    out.extend_from_slice(tag.as_ref());
    out
}

/// Inverse of [`seal`]; `None` when authentication fails.
pub(crate) fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).ok()?);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[..NONCE_LEN]);
    let mut buf = Zeroizing::new(sealed[NONCE_LEN..].to_vec());
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            buf.as_mut_slice(),
        )
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

/// A mask's PRG seed, and whether its stream is subtracted.
pub(crate) type MaskSeed = (Zeroizing<[u8; 32]>, bool);

/// `acc ± PRG(seed) mod 2^bits`, where PRG is the ChaCha20 keystream read
/// as little-endian words of 4 bytes (`bits ≤ 32`) or 8 bytes, masked to
/// `bits` (uniform, since `2^bits` divides the word range).
pub(crate) fn apply_prg(acc: &mut [u64], seed: &[u8; 32], bits: u32, subtract: bool) {
    let mask = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let mut rng = ChaCha20Rng::from_seed(*seed);
    const CHUNK: usize = 1024;
    let mut buf = [0u8; CHUNK * 8];
    if bits <= 32 {
        for block in acc.chunks_mut(CHUNK) {
            let bytes = &mut buf[..block.len() * 4];
            rng.fill_bytes(bytes);
            for (a, w) in block.iter_mut().zip(bytes.chunks_exact(4)) {
                let r = u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
                *a = if subtract {
                    a.wrapping_sub(r)
                } else {
                    a.wrapping_add(r)
                } & mask;
            }
        }
    } else {
        for block in acc.chunks_mut(CHUNK) {
            let bytes = &mut buf[..block.len() * 8];
            rng.fill_bytes(bytes);
            for (a, w) in block.iter_mut().zip(bytes.chunks_exact(8)) {
                let r = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
                *a = if subtract {
                    a.wrapping_sub(r)
                } else {
                    a.wrapping_add(r)
                } & mask;
            }
        }
    }
}

/// `acc ± PRG(seed)` over the ristretto255 group order: each scalar is
/// 64 bytes of the ChaCha20 keystream reduced mod `ℓ` (uniform up to
/// `2^-250`). The blindings of committed inputs (`ClientRound::blindings`).
pub(crate) fn apply_scalar_prg(acc: &mut [Scalar], seed: &[u8; 32], subtract: bool) {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    let mut wide = [0u8; 64];
    for a in acc.iter_mut() {
        rng.fill_bytes(&mut wide);
        let r = Scalar::from_bytes_mod_order_wide(&wide);
        if subtract {
            *a -= r;
        } else {
            *a += r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// RFC 7748 section 6.1 test vectors.
    #[test]
    fn x25519_rfc7748_vectors() {
        let a = SecretKey(Zeroizing::new(hex32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        )));
        let b = SecretKey(Zeroizing::new(hex32(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        )));
        assert_eq!(
            a.public(),
            hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            b.public(),
            hex32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = hex32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(*a.agree(&b.public()).unwrap(), shared);
        assert_eq!(*b.agree(&a.public()).unwrap(), shared);
    }

    #[test]
    fn small_order_and_noncanonical_keys_are_rejected() {
        let sk = SecretKey(Zeroizing::new([7u8; 32]));
        assert!(is_valid_public(&sk.public()));
        // u = 0 and u = 1 have small order.
        assert!(!is_valid_public(&[0u8; 32]));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(!is_valid_public(&one));
        assert!(sk.agree(&[0u8; 32]).is_none());
        // Top bit set, and u ≥ p.
        let mut high = sk.public();
        high[31] |= 0x80;
        assert!(!is_valid_public(&high));
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        assert!(!is_valid_public(&p));
    }

    #[test]
    fn aead_round_trip_and_binding() {
        let key = [3u8; 32];
        let aad = share_aad(b"s", 1, 2);
        let ct = seal(&key, [9u8; NONCE_LEN], &aad, b"hello");
        assert_eq!(open(&key, &aad, &ct).unwrap().as_slice(), b"hello");
        assert!(open(&key, &share_aad(b"s", 2, 1), &ct).is_none());
        assert!(open(&key, &share_aad(b"t", 1, 2), &ct).is_none());
        let mut bad = ct.clone();
        bad[NONCE_LEN] ^= 1;
        assert!(open(&key, &aad, &bad).is_none());
        assert!(open(&key, &aad, &ct[..10]).is_none());
    }

    #[test]
    fn kdf_separates_purposes_sessions_and_pairs() {
        let s = [5u8; 32];
        assert_eq!(
            *pairwise_seed(&s, b"a", 1, 2),
            *pairwise_seed(&s, b"a", 2, 1)
        );
        assert_ne!(
            *pairwise_seed(&s, b"a", 1, 2),
            *pairwise_seed(&s, b"b", 1, 2)
        );
        assert_ne!(*share_key(&s, b"a", 1, 2), *share_key(&s, b"a", 2, 1));
        assert_ne!(*share_key(&s, b"a", 1, 2), *pairwise_seed(&s, b"a", 1, 2));
        // Length prefix: ("ab", id) and ("a", …) never collide by concatenation.
        assert_ne!(*self_mask_seed(&s, b"ab", 1), *self_mask_seed(&s, b"a", 1));
    }

    #[test]
    fn prg_add_then_subtract_cancels() {
        for bits in [1, 7, 32, 33, 64] {
            let mut acc = vec![0u64; 3000];
            apply_prg(&mut acc, &[1u8; 32], bits, false);
            let mask = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            assert!(acc.iter().all(|&v| v <= mask));
            if bits >= 7 {
                assert!(acc.iter().filter(|&&v| v != 0).count() > 2900);
            }
            apply_prg(&mut acc, &[1u8; 32], bits, true);
            assert!(acc.iter().all(|&v| v == 0));
        }
    }
}
