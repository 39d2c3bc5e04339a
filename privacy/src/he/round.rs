//! One hospital's side of one round attempt under homomorphic aggregation,
//! transport-free: the client moves the byte encodings defined here.
//!
//! 1. [`HospitalRound::new`]: this attempt's key share and an X25519
//!    envelope key; the public halves ([`Advert`]) go out signed.
//! 2. [`HospitalRound::encrypt_and_deal`]: with every member's advert, the
//!    collective public key (computed here, not taken from the
//!    coordinator), the update encrypted under it, and the Shamir shares of
//!    this hospital's secret, each sealed to its recipient.
//! 3. [`HospitalRound::open_shares`]: the shares the other members sealed
//!    to this one, combined into its threshold key.
//! 4. [`HospitalRound::decryption_share`]: one smudged share of the summed
//!    ciphertext, for one decryptor set, once.
//!
//! Keys are fresh for every attempt and live only in memory, so an
//! abandoned attempt (a member gone before it dealt its shares, or a
//! decryptor gone before it answered) costs nothing but a retry, and no
//! hospital ever gives two decryption shares under the same key.

use curve25519_dalek::scalar::Scalar;
use rand::{CryptoRng, RngCore};
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use super::keys::{KeyShare, PublicKey, PublicKeyShare, SecretShare, ThresholdKey, public_key};
use super::{EncryptedUpdate, HeError, HeParams, encrypt};
use crate::secagg::crypto::{self, SecretKey};

/// What the coordinator tells every member about the attempt's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeConfig {
    pub hospitals: u32,
    pub threshold: u32,
    pub plaintext_bits: u32,
    /// Values per update (the quantizer's encoding, example count included).
    pub values: usize,
}

impl HeConfig {
    pub fn params(&self) -> Result<HeParams, HeError> {
        HeParams::new(
            self.hospitals,
            self.threshold,
            self.plaintext_bits,
            self.values,
        )
    }
}

/// The common random polynomial's seed: public, bound to the attempt.
pub fn crp_seed(session: &[u8; 32]) -> [u8; 32] {
    let mut input = b"cohort/he/crp/v1\0".to_vec();
    input.extend_from_slice(session);
    let mut seed = [0u8; 32];
    seed.copy_from_slice(digest(&SHA256, &input).as_ref());
    seed
}

/// Length of one sealed Shamir share: a one-polynomial message naming its
/// recipient, plus ChaCha20-Poly1305's nonce and tag.
pub fn sealed_share_len(params: &HeParams) -> usize {
    super::wire::encoded_len(params, 1, 1) + 12 + crypto::TAG_LEN
}

/// A member's public contribution to the attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Advert {
    pub public_key_share: PublicKeyShare,
    /// X25519 public key the member's Shamir shares are sealed to.
    pub envelope: [u8; 32],
}

impl Advert {
    pub fn index(&self) -> u32 {
        self.public_key_share.index
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.envelope.to_vec();
        out.extend_from_slice(&self.public_key_share.to_bytes());
        out
    }

    pub fn from_bytes(params: &HeParams, bytes: &[u8]) -> Result<Self, HeError> {
        if bytes.len() < 32 {
            return Err(HeError::Malformed(
                "advert shorter than its envelope key".into(),
            ));
        }
        let mut envelope = [0u8; 32];
        envelope.copy_from_slice(&bytes[..32]);
        if !crypto::is_valid_public(&envelope) {
            return Err(HeError::Malformed(
                "advert with an invalid envelope key".into(),
            ));
        }
        Ok(Self {
            public_key_share: PublicKeyShare::from_bytes(params, &bytes[32..])?,
            envelope,
        })
    }

    /// What the member signs with its identity key: the advert's digest,
    /// bound to the attempt and the member's index.
    pub fn statement(&self, session: &[u8; 32]) -> Vec<u8> {
        let mut out = b"cohort/he/advert/v1\0".to_vec();
        out.extend_from_slice(session);
        out.extend_from_slice(&self.index().to_le_bytes());
        out.extend_from_slice(digest(&SHA256, &self.to_bytes()).as_ref());
        out
    }
}

/// One hospital's secrets for one attempt.
pub struct HospitalRound {
    params: HeParams,
    session: [u8; 32],
    key_share: KeyShare,
    envelope: SecretKey,
    /// Every member's envelope key, by index − 1, once the adverts arrive.
    peers: Vec<[u8; 32]>,
    threshold_key: Option<ThresholdKey>,
    shared: bool,
}

impl HospitalRound {
    pub fn new<R: RngCore + CryptoRng>(
        params: HeParams,
        session: [u8; 32],
        index: u32,
        rng: &mut R,
    ) -> Result<(Self, Advert), HeError> {
        let (key_share, public_key_share) =
            KeyShare::generate(&params, index, crp_seed(&session), rng)?;
        let envelope = SecretKey::generate(rng);
        let advert = Advert {
            public_key_share,
            envelope: envelope.public(),
        };
        Ok((
            Self {
                params,
                session,
                key_share,
                envelope,
                peers: Vec::new(),
                threshold_key: None,
                shared: false,
            },
            advert,
        ))
    }

    /// The collective key from every member's advert (this one's included,
    /// unchanged), `values` encrypted under it, and this member's Shamir
    /// shares sealed to each member in index order.
    pub fn encrypt_and_deal<R: RngCore + CryptoRng>(
        &mut self,
        adverts: &[Advert],
        values: &[u64],
        rng: &mut R,
    ) -> Result<(EncryptedUpdate, Vec<Vec<u8>>), HeError> {
        let me = self.key_share.index();
        let mut sorted: Vec<&Advert> = adverts.iter().collect();
        sorted.sort_by_key(|a| a.index());
        let shares: Vec<PublicKeyShare> =
            sorted.iter().map(|a| a.public_key_share.clone()).collect();
        let key: PublicKey = public_key(&self.params, crp_seed(&self.session), &shares)?;
        if sorted[me as usize - 1].envelope != self.envelope.public() {
            return Err(HeError::Malformed(
                "the adverts relayed for this hospital are not the ones it made".into(),
            ));
        }
        self.peers = sorted.iter().map(|a| a.envelope).collect();
        let update = encrypt(&self.params, &key, values, rng)?;
        let sealed = self
            .key_share
            .deal(&self.params, rng)
            .iter()
            .map(|share| self.seal(share, rng))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((update, sealed))
    }

    fn seal<R: RngCore + CryptoRng>(
        &self,
        share: &SecretShare,
        rng: &mut R,
    ) -> Result<Vec<u8>, HeError> {
        let key = self.pair_key(share.dealer, share.recipient)?;
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let aad = crypto::share_aad(&self.session, share.dealer, share.recipient);
        Ok(crypto::seal(&key, nonce, &aad, &share.to_bytes()))
    }

    /// The key of the direction `from → to`, from this member's envelope
    /// secret and the other member's envelope key.
    fn pair_key(&self, from: u32, to: u32) -> Result<zeroize::Zeroizing<[u8; 32]>, HeError> {
        let other = if from == self.key_share.index() {
            to
        } else {
            from
        };
        let their = self
            .peers
            .get(other as usize - 1)
            .ok_or(HeError::UnknownParty {
                index: other,
                hospitals: self.params.hospitals(),
            })?;
        let shared = self
            .envelope
            .agree(their)
            .ok_or_else(|| HeError::Malformed(format!("member {other}'s envelope key")))?;
        Ok(crypto::share_key(&shared, &self.session, from, to))
    }

    /// Opens the shares every member sealed to this one (in dealer order)
    /// and combines them into this member's threshold key.
    pub fn open_shares(&mut self, sealed: &[Vec<u8>]) -> Result<(), HeError> {
        let me = self.key_share.index();
        let shares = sealed
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let dealer = i as u32 + 1;
                let key = self.pair_key(dealer, me)?;
                let aad = crypto::share_aad(&self.session, dealer, me);
                let opened = crypto::open(&key, &aad, bytes).ok_or_else(|| {
                    HeError::Malformed(format!("the share from member {dealer} does not open"))
                })?;
                let share = SecretShare::from_bytes(&self.params, &opened)?;
                if share.dealer != dealer || share.recipient != me {
                    return Err(HeError::Misaddressed {
                        dealer: share.dealer,
                        recipient: share.recipient,
                        index: me,
                    });
                }
                Ok(share)
            })
            .collect::<Result<Vec<_>, HeError>>()?;
        self.threshold_key = Some(ThresholdKey::combine(&self.params, me, &shares)?);
        Ok(())
    }

    /// This hospital's secrets for the attempt in their byte forms (its own
    /// key share, and its threshold key once the shares are open): for the
    /// hospital's own audit copy (`--keep-contributions`), which lets a test
    /// show that none of it ever reaches the coordinator.
    pub fn secret_material(&self) -> Vec<Vec<u8>> {
        let mut out = vec![self.key_share.to_bytes()];
        if let Some(key) = &self.threshold_key {
            out.push(key.to_bytes());
        }
        out
    }

    /// Blindings for Pedersen commitments to this member's update (update
    /// proofs under homomorphic aggregation): `Σ_k ±PRG(s_k)` over the
    /// group order, one seed per other member from the envelope keys' X25519
    /// agreement, added towards higher indices and subtracted towards lower
    /// ones. They cancel in the sum over all members, and every member's
    /// update is in the decrypted sum (an attempt without one is
    /// abandoned), so the summed commitments open to the decrypted sum
    /// while each member's commitments stay perfectly hiding. Needs the
    /// adverts ([`encrypt_and_deal`](Self::encrypt_and_deal) first).
    pub fn blindings(&self, len: usize) -> Result<Vec<Scalar>, HeError> {
        if self.peers.is_empty() {
            return Err(HeError::Malformed(
                "commitment blindings need every member's advert first".into(),
            ));
        }
        let me = self.key_share.index();
        let mut blindings = vec![Scalar::ZERO; len];
        for (i, their) in self.peers.iter().enumerate() {
            let other = i as u32 + 1;
            if other == me {
                continue;
            }
            let shared = self
                .envelope
                .agree(their)
                .ok_or_else(|| HeError::Malformed(format!("member {other}'s envelope key")))?;
            let seed = crypto::he_blinding_seed(&shared, &self.session, me, other);
            crypto::apply_scalar_prg(&mut blindings, &seed, other < me);
        }
        Ok(blindings)
    }

    /// This member's decryption share of `sum` for `decryptors`. Given at
    /// most once per attempt (see `ThresholdKey::decryption_share`).
    pub fn decryption_share<R: RngCore + CryptoRng>(
        &mut self,
        decryptors: &[u32],
        sum: &EncryptedUpdate,
        rng: &mut R,
    ) -> Result<Vec<u8>, HeError> {
        if self.shared {
            return Err(HeError::AlreadyShared);
        }
        let key = self.threshold_key.as_ref().ok_or(HeError::Malformed(
            "no threshold key yet: shares not opened".into(),
        ))?;
        let share = key.decryption_share(&self.params, decryptors, sum, rng)?;
        self.shared = true;
        Ok(share.to_bytes())
    }
}
