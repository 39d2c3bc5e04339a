//! The server's side of a round.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU8, Ordering};

use curve25519_dalek::scalar::Scalar;

use super::crypto::{self, SecretKey};
use super::shamir::{self, ShamirError, Share};
use super::wire::SHARE_CIPHERTEXT_BYTES;
use super::{Advertisement, ClientId, EncryptedShares, Params, Reveal, SecAggError};

/// How far the server has handed stage outputs to clients. Once a stage's
/// output has gone out, that stage is closed: late messages for it are
/// rejected, so every client sees the same `U1`, `U2` and `U3`.
const OPEN: u8 = 0;
const U1_ANNOUNCED: u8 = 1;
const U2_ANNOUNCED: u8 = 2;
const U3_ANNOUNCED: u8 = 3;

/// The server's state for one round. It never holds a client secret except
/// the ones the protocol reconstructs inside [`finish`](Self::finish), and
/// keeps only the running sum of the masked inputs.
///
/// Getters that hand a stage's outcome to clients close that stage and
/// open the next: after [`adverts_for`](Self::adverts_for) no
/// advertisement is accepted (and share batches are), after
/// [`shares_for`](Self::shares_for) no share batch (masked inputs are), and
/// after [`survivors`](Self::survivors) no masked input (reveals are). So
/// every client sees the same `U1`, `U2`, `U3`, and a message that arrives
/// early or late is rejected. Call them once the stage's deadline has
/// passed; use [`advertisers`](Self::advertisers),
/// [`share_senders`](Self::share_senders) and
/// [`masked_input_count`](Self::masked_input_count) to watch progress.
pub struct ServerRound {
    session: Vec<u8>,
    params: Params,
    neighbours: Vec<Vec<ClientId>>,
    input_len: usize,
    /// Set by `new` when `params` or the graph are unusable; returned by
    /// every mutating call.
    invalid: Option<SecAggError>,
    announced: AtomicU8,
    adverts: BTreeMap<ClientId, Advertisement>,
    /// U2: sender → the clients its batch addressed.
    sent_to: BTreeMap<ClientId, BTreeSet<ClientId>>,
    /// Ciphertexts by recipient.
    inbox: BTreeMap<ClientId, Vec<EncryptedShares>>,
    sum: Vec<u64>,
    /// U3.
    masked: BTreeSet<ClientId>,
    revealers: BTreeSet<ClientId>,
    seed_shares: BTreeMap<ClientId, Vec<Share>>,
    key_shares: BTreeMap<ClientId, Vec<Share>>,
}

impl std::fmt::Debug for ServerRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerRound")
            .field("clients", &self.neighbours.len())
            .field("params", &self.params)
            .field("input_len", &self.input_len)
            .field("advertisers", &self.adverts.len())
            .field("share_senders", &self.sent_to.len())
            .field("survivors", &self.masked.len())
            .field("revealers", &self.revealers.len())
            .finish_non_exhaustive()
    }
}

fn check_graph(neighbours: &[Vec<ClientId>]) -> Result<(), SecAggError> {
    let n = neighbours.len();
    for (u, list) in neighbours.iter().enumerate() {
        if !list.windows(2).all(|w| w[0] < w[1]) {
            return Err(SecAggError::Malformed(format!(
                "neighbour list of client {u} is not sorted and duplicate-free"
            )));
        }
        for &v in list {
            if v as usize >= n || v as usize == u {
                return Err(SecAggError::Malformed(format!(
                    "neighbour list of client {u} contains {v}, which is itself or out of range"
                )));
            }
            if neighbours[v as usize]
                .binary_search(&(u as ClientId))
                .is_err()
            {
                return Err(SecAggError::Malformed(format!(
                    "neighbour graph is not symmetric: {v} is a neighbour of {u} but not vice versa"
                )));
            }
        }
    }
    Ok(())
}

impl ServerRound {
    /// A round for `neighbours.len()` clients (ids `0..n`) with the given
    /// neighbour graph (from [`super::neighbourhoods`]). Invalid parameters
    /// or an asymmetric graph make every later call fail with the reason;
    /// [`ServerRound::try_new`] reports it at once.
    pub fn new(
        session: &[u8],
        params: Params,
        neighbours: Vec<Vec<ClientId>>,
        input_len: usize,
    ) -> Self {
        let invalid = params
            .validate()
            .and_then(|()| check_graph(&neighbours))
            .err();
        Self {
            session: session.to_vec(),
            params,
            neighbours,
            input_len,
            invalid,
            announced: AtomicU8::new(OPEN),
            adverts: BTreeMap::new(),
            sent_to: BTreeMap::new(),
            inbox: BTreeMap::new(),
            sum: vec![0; input_len],
            masked: BTreeSet::new(),
            revealers: BTreeSet::new(),
            seed_shares: BTreeMap::new(),
            key_shares: BTreeMap::new(),
        }
    }

    /// Like [`ServerRound::new`], but rejects invalid parameters or graphs.
    pub fn try_new(
        session: &[u8],
        params: Params,
        neighbours: Vec<Vec<ClientId>>,
        input_len: usize,
    ) -> Result<Self, SecAggError> {
        let round = Self::new(session, params, neighbours, input_len);
        match round.invalid {
            Some(e) => Err(e),
            None => Ok(round),
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn input_len(&self) -> usize {
        self.input_len
    }

    fn check_usable(&self) -> Result<(), SecAggError> {
        match &self.invalid {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn check_client(&self, id: ClientId) -> Result<(), SecAggError> {
        if (id as usize) < self.neighbours.len() {
            Ok(())
        } else {
            Err(SecAggError::UnknownClient {
                client: id,
                n: self.neighbours.len(),
            })
        }
    }

    fn announced(&self) -> u8 {
        self.announced.load(Ordering::SeqCst)
    }

    fn announce(&self, level: u8) {
        self.announced.fetch_max(level, Ordering::SeqCst);
    }

    fn neighbours_of(&self, id: ClientId) -> &[ClientId] {
        self.neighbours
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn is_neighbour(&self, u: ClientId, v: ClientId) -> bool {
        self.neighbours_of(u).binary_search(&v).is_ok()
    }

    /// Stage 1: client `id` advertised `ad` (its signature already checked
    /// by the caller). Builds `U1`.
    pub fn advertised(&mut self, id: ClientId, ad: Advertisement) -> Result<(), SecAggError> {
        self.check_usable()?;
        if self.announced() >= U1_ANNOUNCED {
            return Err(SecAggError::WrongStage {
                call: "advertised",
                stage: "after advertisements were handed out",
            });
        }
        self.check_client(id)?;
        if self.adverts.contains_key(&id) {
            return Err(SecAggError::Duplicate {
                client: id,
                what: "advertisement",
            });
        }
        if let Some(which) = ad.invalid_key() {
            return Err(SecAggError::InvalidKey { client: id, which });
        }
        let clash = self.adverts.values().any(|other| {
            [other.cipher_pk, other.mask_pk]
                .iter()
                .any(|k| *k == ad.cipher_pk || *k == ad.mask_pk)
        });
        if clash {
            return Err(SecAggError::DuplicateKey { client: id });
        }
        self.adverts.insert(id, ad);
        Ok(())
    }

    /// `U1`.
    pub fn advertisers(&self) -> BTreeSet<ClientId> {
        self.adverts.keys().copied().collect()
    }

    /// The advertisements of `id`'s neighbours in `U1`, to forward to `id`.
    /// Closes stage 1.
    pub fn adverts_for(&self, id: ClientId) -> BTreeMap<ClientId, Advertisement> {
        self.announce(U1_ANNOUNCED);
        self.neighbours_of(id)
            .iter()
            .filter_map(|v| self.adverts.get(v).map(|ad| (*v, ad.clone())))
            .collect()
    }

    /// Stage 2: `from`'s encrypted shares. Builds `U2`. The batch must come
    /// from a client in `U1` and address exactly its neighbours in `U1`,
    /// once each, with well-formed ciphertexts.
    pub fn shares_sent(
        &mut self,
        from: ClientId,
        batch: Vec<EncryptedShares>,
    ) -> Result<(), SecAggError> {
        self.check_usable()?;
        if self.announced() >= U2_ANNOUNCED {
            return Err(SecAggError::WrongStage {
                call: "shares_sent",
                stage: "after shares were handed out",
            });
        }
        if self.announced() < U1_ANNOUNCED {
            return Err(SecAggError::WrongStage {
                call: "shares_sent",
                stage: "before advertisements were handed out (adverts_for)",
            });
        }
        self.check_client(from)?;
        if !self.adverts.contains_key(&from) {
            return Err(SecAggError::NotParticipating {
                client: from,
                stage: "advertise",
            });
        }
        if self.sent_to.contains_key(&from) {
            return Err(SecAggError::Duplicate {
                client: from,
                what: "share batch",
            });
        }
        let expected: BTreeSet<ClientId> = self
            .neighbours_of(from)
            .iter()
            .copied()
            .filter(|v| self.adverts.contains_key(v))
            .collect();
        // The sender keeps one share of its own secrets.
        if expected.len() + 1 < self.params.t() {
            return Err(SecAggError::TooFewNeighbours {
                stage: "advertise",
                have: expected.len() + 1,
                need: self.params.t(),
            });
        }
        let mut tos = BTreeSet::new();
        for e in &batch {
            if e.from != from {
                return Err(SecAggError::Malformed(format!(
                    "share batch of client {from} contains an entry from client {}",
                    e.from
                )));
            }
            if !self.is_neighbour(from, e.to) {
                return Err(SecAggError::NotANeighbour {
                    client: e.to,
                    of: from,
                });
            }
            if !expected.contains(&e.to) {
                return Err(SecAggError::NotParticipating {
                    client: e.to,
                    stage: "advertise",
                });
            }
            if !tos.insert(e.to) {
                return Err(SecAggError::Malformed(format!(
                    "share batch of client {from} addresses client {} twice",
                    e.to
                )));
            }
            if e.ciphertext.len() != SHARE_CIPHERTEXT_BYTES {
                return Err(SecAggError::Malformed(format!(
                    "share batch of client {from}: ciphertext for client {} has {} bytes, expected {SHARE_CIPHERTEXT_BYTES}",
                    e.to,
                    e.ciphertext.len()
                )));
            }
        }
        if tos != expected {
            let missing: Vec<ClientId> = expected.difference(&tos).copied().collect();
            return Err(SecAggError::Malformed(format!(
                "share batch of client {from} omits its advertised neighbours {missing:?}"
            )));
        }
        for e in batch {
            self.inbox.entry(e.to).or_default().push(e);
        }
        self.sent_to.insert(from, tos);
        Ok(())
    }

    /// `U2`.
    pub fn share_senders(&self) -> BTreeSet<ClientId> {
        self.sent_to.keys().copied().collect()
    }

    /// The ciphertexts addressed to `id`, to forward to it. Closes stage 2.
    pub fn shares_for(&self, id: ClientId) -> Vec<EncryptedShares> {
        self.announce(U2_ANNOUNCED);
        self.inbox.get(&id).cloned().unwrap_or_default()
    }

    /// Stage 3: `id`'s masked input. Builds `U3`. Adds it into the running
    /// sum immediately; keeps no individual masked vector after this call.
    pub fn masked_input(&mut self, id: ClientId, masked: Vec<u64>) -> Result<(), SecAggError> {
        self.check_input(id, masked.len())?;
        self.params.check_words(&masked)?;
        crate::quantize::add_mod(&mut self.sum, &masked, self.params.bits);
        self.masked.insert(id);
        Ok(())
    }

    /// Stage 3 for a session whose masked inputs are Pedersen commitments
    /// of `len` entries (`cohort_proofs::committed`), which the caller sums
    /// as they arrive (a group this crate does not implement): records `id`
    /// in `U3` after the same checks as [`masked_input`](Self::masked_input).
    /// The caller adds the commitments only when this succeeds.
    pub fn committed_input(&mut self, id: ClientId, len: usize) -> Result<(), SecAggError> {
        self.check_input(id, len)?;
        self.masked.insert(id);
        Ok(())
    }

    /// Whether `id` may send a stage-3 input of `len` values now.
    fn check_input(&self, id: ClientId, len: usize) -> Result<(), SecAggError> {
        self.check_usable()?;
        if self.announced() >= U3_ANNOUNCED {
            return Err(SecAggError::WrongStage {
                call: "masked_input",
                stage: "after the survivors were announced",
            });
        }
        if self.announced() < U2_ANNOUNCED {
            return Err(SecAggError::WrongStage {
                call: "masked_input",
                stage: "before shares were handed out (shares_for)",
            });
        }
        self.check_client(id)?;
        if !self.sent_to.contains_key(&id) {
            return Err(SecAggError::NotParticipating {
                client: id,
                stage: "sharing",
            });
        }
        if self.masked.contains(&id) {
            return Err(SecAggError::Duplicate {
                client: id,
                what: "masked input",
            });
        }
        if len != self.input_len {
            return Err(SecAggError::WrongLength {
                expected: self.input_len,
                got: len,
            });
        }
        Ok(())
    }

    /// Number of masked inputs received so far (does not close stage 3).
    pub fn masked_input_count(&self) -> usize {
        self.masked.len()
    }

    /// `U3`, to announce to the clients. Closes stage 3.
    pub fn survivors(&self) -> BTreeSet<ClientId> {
        self.announce(U3_ANNOUNCED);
        self.masked.clone()
    }

    /// Whether `holder` received `of`'s shares (so may reveal about `of`).
    /// Whether `holder` holds a share of `of`'s secrets: every neighbour
    /// `of` sent shares to, and `of` itself once it sent them.
    fn holds(&self, holder: ClientId, of: ClientId) -> bool {
        self.sent_to
            .get(&of)
            .is_some_and(|tos| holder == of || tos.contains(&holder))
    }

    /// Stage 4: `from`'s reveals. Rejects a client that is not a survivor,
    /// that already revealed, that reveals about a client whose shares it
    /// does not hold, that reveals both kinds for one client, or the wrong
    /// kind (self-mask seed for survivors, mask key for dropped clients).
    /// A rejected batch is ignored entirely.
    pub fn reveal(&mut self, from: ClientId, reveals: Vec<Reveal>) -> Result<(), SecAggError> {
        self.check_usable()?;
        if self.announced() < U3_ANNOUNCED {
            return Err(SecAggError::WrongStage {
                call: "reveal",
                stage: "before the survivors were announced (survivors)",
            });
        }
        self.check_client(from)?;
        if !self.masked.contains(&from) {
            return Err(SecAggError::NotASurvivor { client: from });
        }
        if self.revealers.contains(&from) {
            return Err(SecAggError::Duplicate {
                client: from,
                what: "reveal",
            });
        }
        let mut kinds: BTreeMap<ClientId, bool> = BTreeMap::new();
        for r in &reveals {
            let of = r.of();
            let is_seed = matches!(r, Reveal::SelfMaskSeed { .. });
            if let Some(&prev) = kinds.get(&of) {
                return Err(if prev != is_seed {
                    SecAggError::ConflictingReveal { from, about: of }
                } else {
                    SecAggError::Duplicate {
                        client: from,
                        what: "reveal of one client's share",
                    }
                });
            }
            kinds.insert(of, is_seed);
        }
        for r in &reveals {
            let of = r.of();
            if !self.holds(from, of) {
                return Err(SecAggError::NotANeighbour {
                    client: of,
                    of: from,
                });
            }
            if r.share().holder() != from {
                return Err(SecAggError::Malformed(format!(
                    "client {from} revealed a share held by client {} (of client {of})",
                    r.share().holder()
                )));
            }
            let survived = self.masked.contains(&of);
            let is_seed = matches!(r, Reveal::SelfMaskSeed { .. });
            if survived != is_seed {
                return Err(SecAggError::WrongRevealKind {
                    from,
                    about: of,
                    expected: if survived {
                        "self-mask seed"
                    } else {
                        "mask key"
                    },
                });
            }
        }
        for r in reveals {
            match r {
                Reveal::SelfMaskSeed { of, share } => {
                    self.seed_shares.entry(of).or_default().push(share)
                }
                Reveal::MaskKey { of, share } => self.key_shares.entry(of).or_default().push(share),
            }
        }
        self.revealers.insert(from);
        Ok(())
    }

    /// The clients whose reveals were accepted.
    pub fn revealers(&self) -> BTreeSet<ClientId> {
        self.revealers.clone()
    }

    fn reconstruct(
        &self,
        shares: Option<&Vec<Share>>,
        client: ClientId,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, SecAggError> {
        let refs: Vec<&Share> = shares.map(|s| s.iter().collect()).unwrap_or_default();
        shamir::reconstruct(&refs, self.params.t()).map_err(|e| match e {
            ShamirError::NotEnough { .. } => SecAggError::CannotReconstruct { client },
            ShamirError::DuplicateHolder(_) | ShamirError::Inconsistent => {
                SecAggError::InconsistentShares { client }
            }
        })
    }

    /// The sum of the inputs of `U3`, mod `2^bits`.
    /// [`SecAggError::TooFewSurvivors`] when `|U3| < min_survivors`;
    /// [`SecAggError::CannotReconstruct`] naming a client when some needed
    /// secret has fewer than `t` revealed shares;
    /// [`SecAggError::InconsistentShares`] when revealed shares disagree
    /// (or a reconstructed mask key does not match its advertisement).
    pub fn finish(mut self) -> Result<Vec<u64>, SecAggError> {
        let bits = self.params.bits;
        let seeds = self.unmasking_seeds()?;
        let mut sum = std::mem::take(&mut self.sum);
        for (seed, subtract) in seeds {
            crypto::apply_prg(&mut sum, &seed, bits, subtract);
        }
        Ok(sum)
    }

    /// For a session of committed inputs ([`committed_input`](Self::committed_input)):
    /// the blinding left in the sum of `U3`'s commitments, `R_j =
    /// Σ_{u ∈ U3} PRG(b_u)_j + Σ ±PRG(s_uv)_j` over the pairs of a survivor
    /// `u` and a dropped `v`, so that `Σ C_u,j − R_j·B̃` commits to the sum
    /// with blinding 0. The same errors as [`finish`](Self::finish).
    pub fn finish_blindings(self) -> Result<Vec<Scalar>, SecAggError> {
        let mut residual = vec![Scalar::ZERO; self.input_len];
        for (seed, subtract) in self.unmasking_seeds()? {
            // finish() subtracts what the clients added; the residual is it.
            crypto::apply_scalar_prg(&mut residual, &seed, !subtract);
        }
        Ok(residual)
    }

    /// The seeds whose PRG streams unmask the sum, each with whether it is
    /// subtracted: the survivors' self masks and the pairwise masks between
    /// survivors and dropped clients, all reconstructed first so that a
    /// failure costs no PRG work.
    fn unmasking_seeds(&self) -> Result<Vec<crypto::MaskSeed>, SecAggError> {
        self.check_usable()?;
        let need = self.params.min_survivors as usize;
        if self.masked.len() < need || self.masked.is_empty() {
            return Err(SecAggError::TooFewSurvivors {
                have: self.masked.len(),
                need,
            });
        }
        let mut seeds = Vec::with_capacity(self.masked.len());
        for &u in &self.masked {
            let b = self.reconstruct(self.seed_shares.get(&u), u)?;
            seeds.push((crypto::self_mask_seed(&b, &self.session, u), true));
        }
        for (&v, tos) in &self.sent_to {
            if self.masked.contains(&v) {
                continue;
            }
            let affected: Vec<ClientId> = tos.intersection(&self.masked).copied().collect();
            if affected.is_empty() {
                continue;
            }
            let sk = SecretKey::from_bytes(self.reconstruct(self.key_shares.get(&v), v)?);
            if sk.public() != self.adverts[&v].mask_pk {
                return Err(SecAggError::InconsistentShares { client: v });
            }
            for u in affected {
                let shared =
                    sk.agree(&self.adverts[&u].mask_pk)
                        .ok_or(SecAggError::InvalidKey {
                            client: u,
                            which: "mask",
                        })?;
                // u added +PRG(s_uv) when u < v, −PRG otherwise: undo it.
                seeds.push((crypto::pairwise_seed(&shared, &self.session, u, v), u < v));
            }
        }
        Ok(seeds)
    }
}
