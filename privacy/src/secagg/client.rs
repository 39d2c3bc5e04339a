//! One client's side of a round.

use rand::{CryptoRng, RngCore};
use std::collections::{BTreeMap, BTreeSet};
use zeroize::Zeroizing;

use curve25519_dalek::scalar::Scalar;

use super::crypto::{self, SecretKey};
use super::shamir::{self, Share};
use super::wire::SHARE_CIPHERTEXT_BYTES;
use super::{Advertisement, ClientId, EncryptedShares, Params, Reveal, SecAggError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Advertised,
    Shared,
    Masked,
    Done,
}

impl Stage {
    fn describe(self) -> &'static str {
        match self {
            Stage::Advertised => "before share_keys",
            Stage::Shared => "after share_keys, before mask",
            Stage::Masked => "after mask, before unmask",
            Stage::Done => "after unmask",
        }
    }
}

/// The two shares a client holds for one neighbour (zeroized on drop).
struct Held {
    seed: Share,
    mask_key: Share,
}

/// One client's state for one round. Holds its X25519 secrets, its
/// self-mask seed `b_u` and the shares it received, all zeroized on drop.
/// Calls must come in order: [`share_keys`](Self::share_keys),
/// [`mask`](Self::mask), [`unmask`](Self::unmask); each succeeds at most
/// once (a failed call changes nothing, except that `unmask` answers only
/// once whatever the outcome).
pub struct ClientRound {
    session: Vec<u8>,
    params: Params,
    me: ClientId,
    neighbours: Vec<ClientId>,
    cipher_sk: SecretKey,
    mask_sk: SecretKey,
    advert: Advertisement,
    self_seed: Zeroizing<[u8; 32]>,
    stage: Stage,
    /// Neighbours in U1 (as given to `share_keys`), to whom I sent shares.
    adverts: BTreeMap<ClientId, Advertisement>,
    /// P(u): the neighbours whose shares reached me, and those shares.
    held: BTreeMap<ClientId, Held>,
    /// This client's own share of its secrets.
    own: Option<Held>,
}

impl std::fmt::Debug for ClientRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRound")
            .field("me", &self.me)
            .field("stage", &self.stage)
            .field("neighbours", &self.neighbours)
            .finish_non_exhaustive()
    }
}

impl ClientRound {
    /// Stage 1: fresh keys and self-mask seed for client `me` of the round
    /// `session`, whose neighbours are `neighbours` (from
    /// [`super::neighbourhoods`]). Returns the advertisement to sign and send.
    // Spelled as specified; `CryptoRng` already implies `RngCore`.
    #[allow(clippy::implied_bounds_in_impls)]
    pub fn new(
        session: &[u8],
        params: Params,
        me: ClientId,
        neighbours: Vec<ClientId>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Self, Advertisement), SecAggError> {
        params.validate()?;
        let mut neighbours = neighbours;
        let given = neighbours.len();
        neighbours.sort_unstable();
        neighbours.dedup();
        if neighbours.len() != given {
            return Err(SecAggError::Malformed(format!(
                "neighbour list of client {me} contains duplicates"
            )));
        }
        if neighbours.contains(&me) {
            return Err(SecAggError::Malformed(format!(
                "neighbour list of client {me} contains the client itself"
            )));
        }
        // Each client also holds one share of its own secrets.
        if neighbours.len() + 1 < params.t() {
            return Err(SecAggError::TooFewNeighbours {
                stage: "setup",
                have: neighbours.len() + 1,
                need: params.t(),
            });
        }
        let cipher_sk = SecretKey::generate(rng);
        let mask_sk = SecretKey::generate(rng);
        let mut self_seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(self_seed.as_mut());
        let advert = Advertisement {
            cipher_pk: cipher_sk.public(),
            mask_pk: mask_sk.public(),
        };
        let round = Self {
            session: session.to_vec(),
            params,
            me,
            neighbours,
            cipher_sk,
            mask_sk,
            advert: advert.clone(),
            self_seed,
            stage: Stage::Advertised,
            adverts: BTreeMap::new(),
            held: BTreeMap::new(),
            own: None,
        };
        Ok((round, advert))
    }

    pub fn id(&self) -> ClientId {
        self.me
    }

    pub fn advertisement(&self) -> &Advertisement {
        &self.advert
    }

    fn wrong_stage(&self, call: &'static str) -> SecAggError {
        if call == "unmask" && self.stage == Stage::Done {
            return SecAggError::AlreadyUnmasked;
        }
        SecAggError::WrongStage {
            call,
            stage: self.stage.describe(),
        }
    }

    /// Stage 2. `adverts`: the advertisements of the neighbours that
    /// advertised (the caller has checked their signatures). Rejects
    /// non-neighbours, invalid or duplicated keys, and fewer than `t`
    /// neighbours. Returns one ciphertext per neighbour in `adverts`.
    // Spelled as specified; `CryptoRng` already implies `RngCore`.
    #[allow(clippy::implied_bounds_in_impls)]
    pub fn share_keys(
        &mut self,
        adverts: &BTreeMap<ClientId, Advertisement>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Vec<EncryptedShares>, SecAggError> {
        if self.stage != Stage::Advertised {
            return Err(self.wrong_stage("share_keys"));
        }
        let mut keys = BTreeSet::from([self.advert.cipher_pk, self.advert.mask_pk]);
        for (&v, ad) in adverts {
            if self.neighbours.binary_search(&v).is_err() {
                return Err(SecAggError::NotANeighbour {
                    client: v,
                    of: self.me,
                });
            }
            if let Some(which) = ad.invalid_key() {
                return Err(SecAggError::InvalidKey { client: v, which });
            }
            if !keys.insert(ad.cipher_pk) || !keys.insert(ad.mask_pk) {
                return Err(SecAggError::DuplicateKey { client: v });
            }
        }
        if adverts.len() + 1 < self.params.t() {
            return Err(SecAggError::TooFewNeighbours {
                stage: "advertise",
                have: adverts.len() + 1,
                need: self.params.t(),
            });
        }
        // Agree with everyone first, so a bad key fails before anything is
        // produced.
        let mut keys = Vec::with_capacity(adverts.len());
        for (&v, ad) in adverts {
            let shared = self
                .cipher_sk
                .agree(&ad.cipher_pk)
                .ok_or(SecAggError::InvalidKey {
                    client: v,
                    which: "cipher",
                })?;
            keys.push(crypto::share_key(&shared, &self.session, self.me, v));
        }
        // The neighbours, then this client itself: it keeps one share of its
        // own secrets (as in Bonawitz et al.), so a survivor's self-mask seed
        // needs one fewer neighbour to be rebuilt.
        let mut holders: Vec<ClientId> = adverts.keys().copied().collect();
        holders.push(self.me);
        let t = self.params.t();
        let seed_shares = shamir::split(&self.self_seed, t, &holders, rng);
        let key_shares = shamir::split(self.mask_sk.bytes(), t, &holders, rng);
        self.own = Some(Held {
            seed: seed_shares[holders.len() - 1].clone(),
            mask_key: key_shares[holders.len() - 1].clone(),
        });
        let mut out = Vec::with_capacity(holders.len() - 1);
        for (i, &v) in holders[..holders.len() - 1].iter().enumerate() {
            let mut plaintext = Zeroizing::new(Vec::with_capacity(2 * Share::VALUE_BYTES));
            seed_shares[i].write_value(&mut plaintext);
            key_shares[i].write_value(&mut plaintext);
            let mut nonce = [0u8; ring::aead::NONCE_LEN];
            rng.fill_bytes(&mut nonce);
            let aad = crypto::share_aad(&self.session, self.me, v);
            let ciphertext = crypto::seal(&keys[i], nonce, &aad, &plaintext);
            debug_assert_eq!(ciphertext.len(), SHARE_CIPHERTEXT_BYTES);
            out.push(EncryptedShares {
                from: self.me,
                to: v,
                ciphertext,
            });
        }
        self.adverts = adverts.clone();
        self.stage = Stage::Shared;
        Ok(out)
    }

    /// Stage 3. `received`: the ciphertexts addressed to me (their senders
    /// are `P(u)`). Decrypts and authenticates each (a bad one is an error
    /// naming the sender), then masks `input` (values `< 2^bits`).
    pub fn mask(
        &mut self,
        input: &[u64],
        received: &[EncryptedShares],
    ) -> Result<Vec<u64>, SecAggError> {
        if self.stage != Stage::Shared {
            return Err(self.wrong_stage("mask"));
        }
        self.params.check_words(input)?;
        let held = self.open_shares(received)?;
        let bits = self.params.bits;
        let mut y = input.to_vec();
        for (seed, subtract) in self.mask_seeds(&held)? {
            crypto::apply_prg(&mut y, &seed, bits, subtract);
        }
        self.held = held;
        self.stage = Stage::Masked;
        Ok(y)
    }

    /// Stage 3 when the masked input is a vector of Pedersen commitments
    /// (`cohort_proofs::committed`: proofs about securely aggregated
    /// updates): instead of masking words, returns the `len` blinding
    /// scalars `PRG(b_u) + Σ ±PRG(s_uv)` over the group order, with the
    /// same seeds and signs as [`mask`](Self::mask), so that the survivors'
    /// blindings cancel in the same way once the coordinator removes the
    /// self masks and the dropped clients' pairwise masks
    /// ([`ServerRound::finish_blindings`](super::ServerRound::finish_blindings)).
    pub fn blindings(
        &mut self,
        len: usize,
        received: &[EncryptedShares],
    ) -> Result<Vec<Scalar>, SecAggError> {
        if self.stage != Stage::Shared {
            return Err(self.wrong_stage("blindings"));
        }
        let held = self.open_shares(received)?;
        let mut r = vec![Scalar::ZERO; len];
        for (seed, subtract) in self.mask_seeds(&held)? {
            crypto::apply_scalar_prg(&mut r, &seed, subtract);
        }
        self.held = held;
        self.stage = Stage::Masked;
        Ok(r)
    }

    /// Decrypts the shares addressed to me; at least `t − 1` must have come.
    fn open_shares(
        &self,
        received: &[EncryptedShares],
    ) -> Result<BTreeMap<ClientId, Held>, SecAggError> {
        let mut held = BTreeMap::new();
        for e in received {
            if e.to != self.me {
                return Err(SecAggError::Malformed(format!(
                    "shares from client {} are addressed to client {}, not to {}",
                    e.from, e.to, self.me
                )));
            }
            let Some(ad) = self.adverts.get(&e.from) else {
                return Err(SecAggError::NotANeighbour {
                    client: e.from,
                    of: self.me,
                });
            };
            if held.contains_key(&e.from) {
                return Err(SecAggError::Duplicate {
                    client: e.from,
                    what: "shares",
                });
            }
            let shared = self
                .cipher_sk
                .agree(&ad.cipher_pk)
                .ok_or(SecAggError::DecryptionFailed { from: e.from })?;
            let key = crypto::share_key(&shared, &self.session, e.from, self.me);
            let aad = crypto::share_aad(&self.session, e.from, self.me);
            let plaintext = crypto::open(&key, &aad, &e.ciphertext)
                .ok_or(SecAggError::DecryptionFailed { from: e.from })?;
            let bad = || {
                SecAggError::Malformed(format!(
                    "shares from client {} decrypt to an invalid share encoding",
                    e.from
                ))
            };
            if plaintext.len() != 2 * Share::VALUE_BYTES {
                return Err(bad());
            }
            let seed =
                Share::from_value(self.me, &plaintext[..Share::VALUE_BYTES]).ok_or_else(bad)?;
            let mask_key =
                Share::from_value(self.me, &plaintext[Share::VALUE_BYTES..]).ok_or_else(bad)?;
            held.insert(e.from, Held { seed, mask_key });
        }
        if held.len() + 1 < self.params.t() {
            return Err(SecAggError::TooFewNeighbours {
                stage: "sharing",
                have: held.len() + 1,
                need: self.params.t(),
            });
        }
        Ok(held)
    }

    /// The seeds of my masks, each with whether it is subtracted: my self
    /// mask (added), and the pairwise mask with each neighbour in `held`
    /// (`+` when I am the smaller id).
    fn mask_seeds(
        &self,
        held: &BTreeMap<ClientId, Held>,
    ) -> Result<Vec<crypto::MaskSeed>, SecAggError> {
        let mut seeds = vec![(
            crypto::self_mask_seed(&self.self_seed, &self.session, self.me),
            false,
        )];
        for &v in held.keys() {
            let ad = &self.adverts[&v];
            let shared = self
                .mask_sk
                .agree(&ad.mask_pk)
                .ok_or(SecAggError::InvalidKey {
                    client: v,
                    which: "mask",
                })?;
            seeds.push((
                crypto::pairwise_seed(&shared, &self.session, self.me, v),
                v < self.me,
            ));
        }
        Ok(seeds)
    }

    /// Stage 4. `survivors`: `U3` as announced by the server (must include
    /// me). For each neighbour `v` whose shares I hold, reveals my share of
    /// `b_v` if `v` survived and of `s_v^SK` otherwise. Answers once per
    /// round: any later call is [`SecAggError::AlreadyUnmasked`], even
    /// after a refusal. Refuses (revealing nothing) when fewer than
    /// `min_survivors` clients or fewer than `t` of the neighbours whose
    /// shares I hold survived.
    pub fn unmask(&mut self, survivors: &BTreeSet<ClientId>) -> Result<Vec<Reveal>, SecAggError> {
        if self.stage != Stage::Masked {
            return Err(self.wrong_stage("unmask"));
        }
        self.stage = Stage::Done;
        let held = std::mem::take(&mut self.held);
        if !survivors.contains(&self.me) {
            return Err(SecAggError::NotASurvivor { client: self.me });
        }
        let need = self.params.min_survivors as usize;
        if survivors.len() < need {
            return Err(SecAggError::TooFewSurvivors {
                have: survivors.len(),
                need,
            });
        }
        // Neighbours that survived, and this client.
        let alive = held.keys().filter(|v| survivors.contains(v)).count() + 1;
        if alive < self.params.t() {
            return Err(SecAggError::TooFewNeighbours {
                stage: "unmask",
                have: alive,
                need: self.params.t(),
            });
        }
        let own = self.own.take().map(|h| Reveal::SelfMaskSeed {
            of: self.me,
            share: h.seed.clone(),
        });
        Ok(held
            .into_iter()
            .map(|(v, h)| {
                if survivors.contains(&v) {
                    Reveal::SelfMaskSeed {
                        of: v,
                        share: h.seed.clone(),
                    }
                } else {
                    Reveal::MaskKey {
                        of: v,
                        share: h.mask_key.clone(),
                    }
                }
            })
            .chain(own)
            .collect())
    }
}
