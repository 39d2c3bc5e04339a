//! Statement 1 over Pedersen commitments, for updates that are securely
//! aggregated (RoFL's construction, Lycklama et al., S&P 2023): the
//! hospital's masked input *is* one Pedersen commitment per entry,
//!
//! ```text
//! C_j = u_j·B + r_j·B̃        (ristretto255, B and B̃ of bulletproofs' PedersenGens)
//! ```
//!
//! whose blinding `r_j` is the hospital's SecAgg+ mask read as a scalar
//! (`cohort_privacy::secagg`: self mask plus pairwise masks, which cancel in
//! the sum of the survivors once the coordinator has removed the self masks
//! and the dropped hospitals' pairwise masks). The proof — Bulletproofs
//! R1CS proofs (dalek's `bulletproofs` crate) over exactly those
//! commitments — says every `u_j` is a 16-bit signed integer and
//! `‖u‖₂ ≤ B`. The entries are split into one chunk per core, proved in
//! parallel: chunk `c` proves its entries in range and that a commitment
//! `S_c` holds the sum of their squares; the last chunk also takes every
//! `S_c` as input and proves `B² − Σ S_c ≥ 0` (a range proof on the
//! slack). The `S_c` travel in the proof; since a commitment binds its
//! value, the chunks speak about the same partial sums. The verifier checks it against the
//! commitments that arrived, so a hospital that proves one vector and sends
//! another fails *its own* check and is named; the coordinator never sees
//! an individual `u`.
//!
//! **Why it is sound.** A commitment binds its value under the discrete
//! logarithm assumption between `B` and `B̃` (`B̃` is hashed to the group,
//! so nobody knows `log_B B̃`). A proof that verifies against `C_j`
//! therefore bounds the value every `C_j` is bound to. The sum of the
//! survivors' commitments, unblinded, is `(Σ u)·B`; its logarithm is found
//! by a bounded search ([`open_sum`]), since `|Σ u_j| < n·2^15`. A hospital
//! that uses blindings other than its masks cannot shift the sum by a
//! chosen amount (that would need `log_B B̃`): the unblinded sum then has no
//! logarithm in range and the round's sum is refused, not corrupted.
//!
//! **Binding to the round.** Each chunk's Fiat–Shamir transcript (merlin)
//! starts with the statement's name, the job, the round, the hospital's
//! name, the bound, the length, the chunk count and the chunk's index, so
//! a proof does not verify for another round, hospital, bound, split or set
//! of commitments.
//!
//! **Setup.** Bulletproofs needs none: every generator is hashed to the
//! group from a public label, so no party holds a trapdoor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bulletproofs::r1cs::{
    ConstraintSystem, LinearCombination, Prover, R1CSError, R1CSProof, Variable, Verifier,
};
use bulletproofs::{BulletproofGens, PedersenGens};
use curve25519_dalek_ng::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek_ng::ristretto::RistrettoBasepointTable;
pub use curve25519_dalek_ng::ristretto::{CompressedRistretto, RistrettoPoint};
pub use curve25519_dalek_ng::scalar::Scalar;
use curve25519_dalek_ng::traits::Identity;
use merlin::Transcript;
use rayon::prelude::*;

use crate::encoding::{ENTRY_BITS, check_well_formed};
use crate::{Context, ProofError};

/// The statement's name in tasks, receipts and attestations.
pub const STATEMENT_COMMITTED_UPDATE_NORM: &str = "committed-update-norm/v1";

/// Bytes of one compressed commitment.
pub const COMMITMENT_BYTES: usize = 32;

/// Multipliers per entry: its 16 bits and its square.
const MULTIPLIERS_PER_ENTRY: usize = ENTRY_BITS as usize + 1;

/// What a hospital sends for a committed update: the commitments (its
/// masked input) and the proof about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedUpdate {
    pub commitments: Vec<CompressedRistretto>,
    pub proof: Vec<u8>,
}

/// The commitments as one byte string.
pub fn commitments_to_bytes(commitments: &[CompressedRistretto]) -> Vec<u8> {
    commitments.iter().flat_map(|c| c.to_bytes()).collect()
}

/// Splits untrusted bytes into compressed commitments (decompressed, and so
/// checked, when a proof is verified or a sum is taken).
pub fn commitments_from_bytes(bytes: &[u8]) -> Result<Vec<CompressedRistretto>, ProofError> {
    if !bytes.len().is_multiple_of(COMMITMENT_BYTES) {
        return Err(ProofError::MalformedProof(format!(
            "{} bytes of commitments is not a multiple of {COMMITMENT_BYTES}",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(COMMITMENT_BYTES)
        .map(CompressedRistretto::from_slice)
        .collect())
}

/// Decompresses commitments, naming the first that is not a group element.
pub fn decompress(commitments: &[CompressedRistretto]) -> Result<Vec<RistrettoPoint>, ProofError> {
    commitments
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.decompress().ok_or_else(|| {
                ProofError::MalformedProof(format!("commitment {i} is not a ristretto255 point"))
            })
        })
        .collect()
}

/// The scalar of a signed integer.
fn signed_scalar(v: i64) -> Scalar {
    if v < 0 {
        -Scalar::from(v.unsigned_abs())
    } else {
        Scalar::from(v as u64)
    }
}

/// The commitments alone, `u_j·B + r_j·B̃`, for any integers (the drill
/// client commits to a vector it does not prove).
pub fn commit(entries: &[i64], blindings: &[Scalar]) -> Vec<CompressedRistretto> {
    let gens = PedersenGens::default();
    entries
        .iter()
        .zip(blindings)
        .map(|(u, r)| gens.commit(signed_scalar(*u), *r).compress())
        .collect()
}

/// The commitments of a plain update, blinding 0: `u_j·B`, which anyone
/// holding the update recomputes (plain aggregation with Bulletproofs).
pub fn commit_unblinded(entries: &[i32]) -> Vec<CompressedRistretto> {
    entries
        .iter()
        .map(|&u| (&RISTRETTO_BASEPOINT_TABLE * &signed_scalar(i64::from(u))).compress())
        .collect()
}

/// A blinding handed over as the canonical bytes of a scalar mod `ℓ`
/// (secure aggregation's masks are made with another build of the same
/// curve library).
pub fn blinding_from_bytes(bytes: [u8; 32]) -> Result<Scalar, ProofError> {
    Scalar::from_canonical_bytes(bytes)
        .ok_or_else(|| ProofError::Encoding("a blinding is not a canonical scalar".into()))
}

/// Commits to `entries` with `blindings` and proves them well formed under
/// `bound`. Refuses (proving nothing) an entry outside 16 bits or a vector
/// over the bound.
pub fn prove(
    context: &Context,
    bound: u64,
    entries: &[i32],
    blindings: &[Scalar],
) -> Result<CommittedUpdate, ProofError> {
    prove_in_chunks(
        context,
        bound,
        entries,
        blindings,
        chunk_count(entries.len()),
    )
}

/// [`prove`] with the entries split into `chunks` (at least one entry each).
fn prove_in_chunks(
    context: &Context,
    bound: u64,
    entries: &[i32],
    blindings: &[Scalar],
    chunks: usize,
) -> Result<CommittedUpdate, ProofError> {
    if entries.len() != blindings.len() {
        return Err(ProofError::WrongLength {
            expected: blindings.len(),
            got: entries.len(),
        });
    }
    let bound_sq = bound_squared(bound)?;
    check_well_formed(entries, bound)?;
    let ranges: Vec<_> = (0..chunks)
        .map(|c| chunk_range(entries.len(), chunks, c))
        .collect();
    // Each chunk's partial sum of squares, committed with a fresh blinding:
    // the chunks' proofs share these commitments, and the last one bounds
    // their sum.
    let partials: Vec<(u64, Scalar)> = ranges
        .iter()
        .map(|r| {
            let partial = entries[r.clone()]
                .iter()
                .map(|&u| (i64::from(u) * i64::from(u)) as u64)
                .sum();
            (partial, random_scalar())
        })
        .collect();
    let proved = ranges
        .par_iter()
        .enumerate()
        .map(|(c, range)| {
            let pc_gens = PedersenGens::default();
            let mut prover = Prover::new(
                &pc_gens,
                chunk_transcript(context, bound, entries.len(), (c, chunks)),
            );
            let mut commitments = Vec::with_capacity(range.len());
            let mut values = Vec::with_capacity(range.len());
            for (&u, r) in entries[range.clone()].iter().zip(&blindings[range.clone()]) {
                let (commitment, variable) = prover.commit(signed_scalar(i64::from(u)), *r);
                commitments.push(commitment);
                values.push((variable, Some(u)));
            }
            let mut partial_commitments = Vec::new();
            let mut committed = |(value, blinding): (u64, Scalar)| {
                let (commitment, variable) = prover.commit(Scalar::from(value), blinding);
                partial_commitments.push(commitment);
                (variable, Some(value))
            };
            let partial_vars: Vec<_> = if c + 1 == chunks {
                partials.iter().copied().map(&mut committed).collect()
            } else {
                vec![committed(partials[c])]
            };
            chunk_statement(
                &mut prover,
                &values,
                &partial_vars,
                c + 1 == chunks,
                bound_sq,
            )?;
            let gens = generators(chunk_multipliers(range.len(), c + 1 == chunks, bound_sq));
            let proof = prover.prove(&gens).map_err(synthesis)?;
            Ok((commitments, partial_commitments, proof.to_bytes()))
        })
        .collect::<Result<Vec<_>, ProofError>>()?;
    let mut commitments = Vec::with_capacity(entries.len());
    let mut proof = Vec::new();
    proof.extend_from_slice(&(chunks as u32).to_le_bytes());
    let (_, all_partials, _) = proved.last().expect("at least one chunk");
    for partial in all_partials {
        proof.extend_from_slice(partial.as_bytes());
    }
    for (chunk_commitments, _, chunk_proof) in proved {
        commitments.extend(chunk_commitments);
        proof.extend_from_slice(&(chunk_proof.len() as u32).to_le_bytes());
        proof.extend_from_slice(&chunk_proof);
    }
    Ok(CommittedUpdate { commitments, proof })
}

/// Checks `proof` for `commitments` in `context` under `bound`.
pub fn verify(
    context: &Context,
    bound: u64,
    commitments: &[CompressedRistretto],
    proof: &[u8],
) -> Result<(), ProofError> {
    if commitments.is_empty() {
        return Err(ProofError::MalformedProof("no commitments".into()));
    }
    let bound_sq = bound_squared(bound)?;
    let ChunkedProof { partials, proofs } = ChunkedProof::parse(proof, commitments.len())?;
    let chunks = proofs.len();
    proofs
        .par_iter()
        .enumerate()
        .try_for_each(|(c, chunk_proof)| {
            let range = chunk_range(commitments.len(), chunks, c);
            let last = c + 1 == chunks;
            let mut verifier = Verifier::new(chunk_transcript(
                context,
                bound,
                commitments.len(),
                (c, chunks),
            ));
            let values: Vec<_> = commitments[range.clone()]
                .iter()
                .map(|commitment| (verifier.commit(*commitment), None))
                .collect();
            let partial_vars: Vec<_> = if last {
                partials
                    .iter()
                    .map(|p| (verifier.commit(*p), None))
                    .collect()
            } else {
                vec![(verifier.commit(partials[c]), None)]
            };
            chunk_statement(&mut verifier, &values, &partial_vars, last, bound_sq)?;
            let gens = generators(chunk_multipliers(range.len(), last, bound_sq));
            verifier
                .verify(chunk_proof, &PedersenGens::default(), &gens)
                .map_err(|e| match e {
                    R1CSError::VerificationError => ProofError::Invalid,
                    R1CSError::FormatError => ProofError::MalformedProof(e.to_string()),
                    other => synthesis(other),
                })
        })
}

/// A proof's bytes: the chunk count `K` (u32 LE), the `K` commitments to
/// the chunks' partial sums of squares, then each chunk's Bulletproofs
/// R1CS proof with its length (u32 LE).
struct ChunkedProof {
    partials: Vec<CompressedRistretto>,
    proofs: Vec<R1CSProof>,
}

impl ChunkedProof {
    fn parse(bytes: &[u8], len: usize) -> Result<Self, ProofError> {
        let malformed = |why: String| ProofError::MalformedProof(why);
        let mut rest = bytes;
        let mut take = |n: usize, what: &str| -> Result<&[u8], ProofError> {
            if rest.len() < n {
                return Err(malformed(format!("truncated at the {what}")));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let chunks = word(take(4, "chunk count")?);
        if chunks == 0 || chunks > MAX_CHUNKS || chunks > len {
            return Err(malformed(format!(
                "{chunks} chunks for {len} entries (1 to {MAX_CHUNKS}, at most one per entry)"
            )));
        }
        let partials = (0..chunks)
            .map(|_| {
                Ok(CompressedRistretto::from_slice(take(
                    COMMITMENT_BYTES,
                    "partial sums",
                )?))
            })
            .collect::<Result<Vec<_>, ProofError>>()?;
        let mut proofs = Vec::with_capacity(chunks);
        for c in 0..chunks {
            let n = word(take(4, "proof length")?);
            let proof = R1CSProof::from_bytes(take(n, "proof")?)
                .map_err(|e| malformed(format!("chunk {c}: {e}")))?;
            proofs.push(proof);
        }
        if !rest.is_empty() {
            return Err(malformed(format!(
                "{} bytes after the last chunk",
                rest.len()
            )));
        }
        Ok(Self { partials, proofs })
    }
}

/// The most chunks a proof may have (chunks are proved in parallel).
const MAX_CHUNKS: usize = 64;

/// Chunks a prover splits `len` entries into: one per core, none smaller
/// than 64 entries. (Splitting finer, so that each proof pads fewer gates
/// to its power of two, measured no faster.)
fn chunk_count(len: usize) -> usize {
    rayon::current_num_threads()
        .min(len / 64)
        .clamp(1, MAX_CHUNKS)
}

/// Entries of chunk `c` of `chunks`: an even split, in order.
fn chunk_range(len: usize, chunks: usize, c: usize) -> std::ops::Range<usize> {
    c * len / chunks..(c + 1) * len / chunks
}

fn chunk_multipliers(entries: usize, last: bool, bound_sq: u64) -> usize {
    entries * MULTIPLIERS_PER_ENTRY
        + if last {
            slack_bits(bound_sq) as usize
        } else {
            0
        }
}

fn random_scalar() -> Scalar {
    use rand::RngCore;
    let mut wide = [0u8; 64];
    rand::rng().fill_bytes(&mut wide);
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// [`verify`] for a proof as the ledger records it (hex of the proof, and
/// `update_hash`: hex of the SHA-256 of the commitments), for the
/// commitments fetched from the coordinator, which must be the ones the
/// ledger names.
pub fn verify_recorded(
    context: &Context,
    bound: u64,
    update_hash_hex: &str,
    commitments: &[u8],
    proof_hex: &str,
) -> Result<(), ProofError> {
    use sha2::Digest as _;
    if hex::encode(sha2::Sha256::digest(commitments)) != update_hash_hex {
        return Err(ProofError::MalformedProof(
            "the commitments served are not the ones whose SHA-256 the ledger records".into(),
        ));
    }
    let proof =
        hex::decode(proof_hex).map_err(|e| ProofError::MalformedProof(format!("hex: {e}")))?;
    verify(
        context,
        bound,
        &commitments_from_bytes(commitments)?,
        &proof,
    )
}

/// Opens the unmasked sum of `contributors` committed updates:
/// `sum_j − blinding_j·B̃ = (Σ u_j)·B`, and `Σ u_j` is found by a bounded
/// search over `|Σ u_j| < contributors·2^15`. An error names the first
/// entry without a logarithm in range (some hospital blinded with
/// something other than its masks).
pub fn open_sum(
    sums: &[RistrettoPoint],
    blindings: &[Scalar],
    contributors: usize,
) -> Result<Vec<i64>, ProofError> {
    if sums.len() != blindings.len() {
        return Err(ProofError::WrongLength {
            expected: sums.len(),
            got: blindings.len(),
        });
    }
    let pc_gens = PedersenGens::default();
    let blinding_table = RistrettoBasepointTable::create(&pc_gens.B_blinding);
    let baby = baby_steps();
    let giant = pc_gens.B * Scalar::from(BABY_STEPS as u64);
    let offset = contributors as i64 * (1i64 << (ENTRY_BITS - 1));
    let shift = pc_gens.B * Scalar::from(offset as u64);
    let giants = (2 * offset as u64).div_ceil(BABY_STEPS as u64) + 1;
    sums.iter()
        .zip(blindings)
        .enumerate()
        .map(|(j, (sum, r))| {
            // w = Σu + offset ∈ [0, 2·offset): w = g·M + i.
            let mut point = sum - &blinding_table * r + shift;
            for g in 0..giants {
                if let Some(&i) = baby.get(point.compress().as_bytes()) {
                    return Ok((g * BABY_STEPS as u64 + u64::from(i)) as i64 - offset);
                }
                point -= giant;
            }
            Err(ProofError::Refused(format!(
                "the unmasked sum of entry {j} is not a sum of {contributors} 16-bit entries: \
                 a hospital blinded its commitments with something other than its masks"
            )))
        })
        .collect()
}

/// Checks that summed commitments hold `expected` with blinding 0:
/// under homomorphic aggregation every member's blindings cancel in the
/// sum over all members, so `Σ_i C_ij = s_j·B` for the decrypted sum `s`
/// exactly when every member encrypted the update it committed to (and
/// proved). One random linear combination of the entries, weights from the
/// operating system: a sum that differs from `expected` anywhere passes
/// with probability `1/ℓ`.
pub fn check_sum(sums: &[RistrettoPoint], expected: &[i64]) -> Result<(), ProofError> {
    use curve25519_dalek_ng::traits::VartimeMultiscalarMul;
    if sums.len() != expected.len() {
        return Err(ProofError::WrongLength {
            expected: expected.len(),
            got: sums.len(),
        });
    }
    let weights = random_scalars(sums.len());
    let combined = RistrettoPoint::vartime_multiscalar_mul(&weights, sums);
    let opened = weights
        .iter()
        .zip(expected)
        .fold(Scalar::zero(), |acc, (w, s)| acc + w * signed_scalar(*s));
    if combined == &RISTRETTO_BASEPOINT_TABLE * &opened {
        Ok(())
    } else {
        Err(ProofError::Refused(
            "the decrypted sum is not the sum of the hospitals' commitments: some hospital \
             encrypted an update other than the one it committed to and proved"
                .into(),
        ))
    }
}

/// `n` uniform scalars from the operating system's randomness.
fn random_scalars(n: usize) -> Vec<Scalar> {
    use rand::RngCore;
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let mut wide = [0u8; 64];
            rng.fill_bytes(&mut wide);
            Scalar::from_bytes_mod_order_wide(&wide)
        })
        .collect()
}

/// The sum of committed inputs, as the coordinator keeps it.
pub fn add_into(sums: &mut Vec<RistrettoPoint>, commitments: &[RistrettoPoint]) {
    if sums.is_empty() {
        sums.resize(commitments.len(), RistrettoPoint::identity());
    }
    for (s, c) in sums.iter_mut().zip(commitments) {
        *s += c;
    }
}

/// Makes the generators for `len` entries now (they are otherwise made,
/// once per process and size, by the first proof or check).
pub fn warm_generators(len: usize, bound: u64) -> Result<(), ProofError> {
    let bound_sq = bound_squared(bound)?;
    let chunks = chunk_count(len);
    for c in 0..chunks {
        let entries = chunk_range(len, chunks, c).len();
        generators(chunk_multipliers(entries, c + 1 == chunks, bound_sq));
    }
    Ok(())
}

/// Number of multiplication gates the statement has for `len` entries.
pub fn multipliers(len: usize, bound: u64) -> Result<usize, ProofError> {
    Ok(len * MULTIPLIERS_PER_ENTRY + slack_bits(bound_squared(bound)?) as usize)
}

const BABY_STEPS: usize = 1 << 16;

/// `i·B ↦ i` for `i < 2^16`, built once per process (about 0.1 s).
fn baby_steps() -> &'static HashMap<[u8; 32], u32> {
    static TABLE: OnceLock<HashMap<[u8; 32], u32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        // double_and_compress_batch shares one inversion across the batch:
        // halves of i·B doubled back give the compressed i·B.
        let half = PedersenGens::default().B * Scalar::from(2u64).invert();
        // (The identity has no such half in the batch: its inversion is 0.)
        let mut halves = Vec::with_capacity(BABY_STEPS - 1);
        let mut point = half;
        for _ in 1..BABY_STEPS {
            halves.push(point);
            point += half;
        }
        let mut table: HashMap<[u8; 32], u32> = RistrettoPoint::double_and_compress_batch(&halves)
            .into_iter()
            .zip(1..)
            .map(|(c, i)| (c.to_bytes(), i))
            .collect();
        table.insert(RistrettoPoint::identity().compress().to_bytes(), 0);
        table
    })
}

fn bound_squared(bound: u64) -> Result<u64, ProofError> {
    bound
        .checked_mul(bound)
        .filter(|b| *b < 1 << 62)
        .ok_or_else(|| ProofError::Encoding(format!("bound {bound} is too large (B² ≥ 2^62)")))
}

fn slack_bits(bound_sq: u64) -> u32 {
    (64 - bound_sq.leading_zeros()).max(1)
}

fn synthesis(e: R1CSError) -> ProofError {
    ProofError::Synthesis(e.to_string())
}

fn chunk_transcript(
    context: &Context,
    bound: u64,
    len: usize,
    (chunk, chunks): (usize, usize),
) -> Transcript {
    let mut t = Transcript::new(b"cohort/proofs/committed-update-norm/v1");
    t.append_message(b"job", context.job_id.as_bytes());
    t.append_u64(b"round", u64::from(context.round));
    t.append_message(b"client", context.client.as_bytes());
    t.append_u64(b"bound", bound);
    t.append_u64(b"len", len as u64);
    t.append_u64(b"chunks", chunks as u64);
    t.append_u64(b"chunk", chunk as u64);
    t
}

/// Generators for `multipliers` gates, shared by every proof of that
/// padded size in this process (making them hashes to the group twice per
/// gate, which costs more than a small proof).
fn generators(multipliers: usize) -> Arc<BulletproofGens> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<BulletproofGens>>>> = OnceLock::new();
    let needed = multipliers.next_power_of_two();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry(needed)
        .or_insert_with(|| Arc::new(BulletproofGens::new(needed, 1)))
        .clone()
}

/// One chunk's statement as constraints, for prover (values known) and
/// verifier (values `None`) alike: each committed entry in
/// `[-2^15, 2^15)`; the chunk's committed partial (the first of
/// `partials`) equal to the sum of its entries' squares; in the last chunk,
/// whose `partials` are every chunk's, `B² − Σ partials` in `[0, 2^k)`
/// with `2^k > B²`.
fn chunk_statement<CS: ConstraintSystem>(
    cs: &mut CS,
    entries: &[(Variable, Option<i32>)],
    partials: &[(Variable, Option<u64>)],
    last: bool,
    bound_sq: u64,
) -> Result<(), ProofError> {
    let half = 1u64 << (ENTRY_BITS - 1);
    let mut squares = Vec::with_capacity(entries.len());
    for &(u, value) in entries {
        let shifted = value.map(|v| (i64::from(v) + half as i64) as u64);
        in_range(cs, u + Scalar::from(half), shifted, ENTRY_BITS)?;
        let (_, _, square) = cs.multiply(u.into(), u.into());
        squares.push((square, Scalar::one()));
    }
    let own = if last { partials.len() - 1 } else { 0 };
    let sum: LinearCombination = squares.into_iter().collect();
    cs.constrain(sum - partials[own].0);
    if last {
        let total: LinearCombination = partials.iter().map(|(v, _)| (*v, Scalar::one())).collect();
        let slack = partials
            .iter()
            .map(|(_, v)| *v)
            .sum::<Option<u64>>()
            .map(|norm| bound_sq - norm);
        in_range(
            cs,
            LinearCombination::from(Scalar::from(bound_sq)) - total,
            slack,
            slack_bits(bound_sq),
        )?;
    }
    Ok(())
}

/// Gadget: `lc` (whose value the prover knows as `value`) lies in
/// `[0, 2^bits)`: one multiplier per bit `b·(1 − b) = 0`, and `lc` equal
/// to the bits' weighted sum.
fn in_range<CS: ConstraintSystem>(
    cs: &mut CS,
    mut lc: LinearCombination,
    value: Option<u64>,
    bits: u32,
) -> Result<(), ProofError> {
    let mut weight = Scalar::one();
    for i in 0..bits {
        let assignment = value.map(|v| {
            let bit = (v >> i) & 1;
            (Scalar::from(1 - bit), Scalar::from(bit))
        });
        let (not_bit, bit, product) = cs.allocate_multiplier(assignment).map_err(synthesis)?;
        cs.constrain(product.into());
        cs.constrain(not_bit + (bit - Scalar::one()));
        lc = lc - bit * weight;
        weight += weight;
    }
    cs.constrain(lc);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::norm_sq;

    fn context() -> Context {
        Context {
            job_id: "job".into(),
            round: 3,
            client: "hospital-a".into(),
        }
    }

    fn random_blindings(n: usize) -> Vec<Scalar> {
        random_scalars(n)
    }

    #[test]
    fn an_honest_update_verifies_and_nothing_else_does() {
        let entries = [1, -2, 300, 0, -32768, 32767, 5, -6];
        let bound = 50_000;
        let blindings = random_blindings(entries.len());
        let update = prove(&context(), bound, &entries, &blindings).unwrap();
        verify(&context(), bound, &update.commitments, &update.proof).unwrap();

        let mut other = context();
        other.round = 4;
        assert!(matches!(
            verify(&other, bound, &update.commitments, &update.proof),
            Err(ProofError::Invalid)
        ));
        other = context();
        other.client = "hospital-b".into();
        assert!(matches!(
            verify(&other, bound, &update.commitments, &update.proof),
            Err(ProofError::Invalid)
        ));
        assert!(verify(&context(), bound + 1, &update.commitments, &update.proof).is_err());
        // The binding attack: the proof of one vector with the commitments of another.
        let boosted: Vec<i32> = entries.iter().map(|u| u / 2).collect();
        let other_update = prove(&context(), bound, &boosted, &blindings).unwrap();
        assert!(matches!(
            verify(&context(), bound, &other_update.commitments, &update.proof),
            Err(ProofError::Invalid)
        ));
        let mut forged = update.proof.clone();
        forged[40] ^= 1;
        assert!(verify(&context(), bound, &update.commitments, &forged).is_err());
        assert!(matches!(
            verify(&context(), bound, &update.commitments, &[7u8; 100]),
            Err(ProofError::MalformedProof(_))
        ));
    }

    #[test]
    fn chunks_share_their_partial_sums_and_cannot_be_reordered() {
        let entries: Vec<i32> = (0..300).map(|i| (i * 37 % 200) - 100).collect();
        let blindings = random_blindings(entries.len());
        let bound = 2_000;
        let update = prove_in_chunks(&context(), bound, &entries, &blindings, 3).unwrap();
        verify(&context(), bound, &update.commitments, &update.proof).unwrap();
        assert_eq!(
            update.commitments,
            commit(
                &entries.iter().map(|&u| i64::from(u)).collect::<Vec<_>>(),
                &blindings
            )
        );
        // Partial sums swapped between chunks: each chunk's own no longer fits.
        let mut swapped = update.proof.clone();
        let (first, second) = (
            4..4 + COMMITMENT_BYTES,
            4 + COMMITMENT_BYTES..4 + 2 * COMMITMENT_BYTES,
        );
        let a = swapped[first.clone()].to_vec();
        let b = swapped[second.clone()].to_vec();
        swapped[first].copy_from_slice(&b);
        swapped[second].copy_from_slice(&a);
        assert!(matches!(
            verify(&context(), bound, &update.commitments, &swapped),
            Err(ProofError::Invalid)
        ));
        // A claimed split into more chunks than the proofs that follow.
        let mut recounted = update.proof.clone();
        recounted[0] = 4;
        assert!(matches!(
            verify(&context(), bound, &update.commitments, &recounted),
            Err(ProofError::MalformedProof(_))
        ));
        // The norm is checked across chunks: a bound every chunk fits under
        // alone but the whole does not.
        let norm = norm_sq(&entries);
        let tight = (norm as f64).sqrt().floor() as u64 - 1;
        assert!(matches!(
            prove_in_chunks(&context(), tight, &entries, &blindings, 3),
            Err(ProofError::Refused(_))
        ));
        assert!(verify(&context(), tight, &update.commitments, &update.proof).is_err());
    }

    #[test]
    fn the_prover_refuses_an_update_over_the_bound_or_the_range() {
        let blindings = random_blindings(3);
        assert!(matches!(
            prove(&context(), 10, &[6, 8, 1], &blindings),
            Err(ProofError::Refused(_))
        ));
        assert!(matches!(
            prove(&context(), 1 << 20, &[40_000, 0, 0], &blindings),
            Err(ProofError::Refused(_))
        ));
        prove(&context(), 10, &[6, 8, 0], &blindings).unwrap();
    }

    #[test]
    fn the_blinded_sum_opens_to_the_sum_of_the_entries() {
        let updates = [
            [32767, -32768, 3, 0],
            [32767, -32768, -3, 9],
            [1, -1, 0, -9],
        ];
        let mut sums = Vec::new();
        let mut blinding = vec![Scalar::zero(); 4];
        for u in &updates {
            let r = random_blindings(4);
            let c = prove(&context(), 1 << 20, u, &r).unwrap();
            add_into(&mut sums, &decompress(&c.commitments).unwrap());
            for (total, r) in blinding.iter_mut().zip(&r) {
                *total += r;
            }
        }
        let opened = open_sum(&sums, &blinding, updates.len()).unwrap();
        assert_eq!(opened, vec![65535, -65537, 0, 0]);
        blinding[2] += Scalar::one();
        assert!(matches!(
            open_sum(&sums, &blinding, updates.len()),
            Err(ProofError::Refused(_))
        ));
    }

    #[test]
    fn summed_commitments_check_against_the_sum_they_hold() {
        let updates: [&[i64]; 3] = [&[5, -7, 32767], &[-1, 0, 32767], &[2, 2, -5]];
        let blindings = [random_blindings(3), random_blindings(3)];
        let last: Vec<Scalar> = (0..3)
            .map(|j| -(blindings[0][j] + blindings[1][j]))
            .collect();
        let mut sums = Vec::new();
        for (u, r) in updates.iter().zip([&blindings[0], &blindings[1], &last]) {
            let points = decompress(&commit(u, r)).unwrap();
            add_into(&mut sums, &points);
        }
        check_sum(&sums, &[6, -5, 65529]).unwrap();
        let e = check_sum(&sums, &[6, -5, 65530]).unwrap_err();
        assert!(e.to_string().contains("not the sum"), "{e}");
        assert!(check_sum(&sums, &[6, -5]).is_err());
    }
}
