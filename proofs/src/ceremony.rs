//! A multi-party setup of the update-norm circuit's Groth16 keys, in which
//! no single party learns the trapdoor: one honest contributor suffices.
//!
//! Groth16's keys are points `[f(τ, α, β, δ)]` for secret scalars; whoever
//! knows them can prove false statements. The ceremony has the two phases
//! of Bowe, Gabizon and Miers (ePrint 2017/1050), as Zcash's Sapling
//! ceremony and snarkjs's `powersoftau` / `zkey contribute` run them:
//!
//! 1. *Powers* — `[τ^i]₁` (i < 2n−1), `[τ^i]₂`, `[ατ^i]₁`, `[βτ^i]₁`
//!    (i < n) and `[β]₂` for the circuit's domain size `n`. Every
//!    contributor multiplies τ, α and β by secrets of its own.
//! 2. *Circuit* — the circuit's queries are derived from the final powers
//!    by anyone (Lagrange basis by an inverse FFT over the group, then the
//!    R1CS matrices), with δ = 1. Every contributor multiplies δ by a
//!    secret `d` and divides the `L` and `H` queries by it.
//!
//! Both phases need an honest contributor: knowing τ alone gives `[c/δ]₁`
//! for any `c` from the `H` query, and knowing δ alone gives a proof for
//! any statement from `[α]₁`, `[β]₁` and `[β]₂`.
//!
//! *Checking without the intermediate states.* Each contribution records
//! its secrets' public keys `[s]₂` with a Schnorr proof of knowledge (over
//! G2, Fiat–Shamir with SHA-512, the challenge bound to the ceremony, the
//! phase, the contribution's index, the contributor's name and the point it
//! updated), and the one or three points it produced (`[τ]₁`, `[α]₁`,
//! `[β]₁`, or `[δ]₁`). A pairing check per point chains them:
//! `e([τ_k]₁, g₂) = e([τ_{k−1}]₁, [s_k]₂)`, so the final τ is the product of
//! every contributor's secret. The final powers are checked to be powers
//! of that τ (random linear combinations, two pairings per sequence). The
//! circuit phase's queries, derived once by the seal, are checked against
//! those powers without redoing its FFT over the group: a random
//! combination of each query equals the powers combined with coefficients
//! computed in the field (`check_queries`), `L` and `H` through the final
//! δ. A verifier therefore needs only the final file, not every
//! contributor's output.
//!
//! Each contribution is also signed by its contributor
//! ([`Contribution::statement`], to be signed under [`CONTRIBUTION_CONTEXT`]
//! with the key in its consortium certificate): this crate records the
//! certificate and signature, the caller checks them against the
//! consortium's CA, so that a relay cannot drop an honest contribution and
//! put one of its own in that contributor's name.
//!
//! γ is 1 (`[γ]₂` is the generator), as in snarkjs's ceremonies: Groth16
//! stays sound with it as long as no `[·/δ]` element of a public input is
//! published, which phase 2 never does.

use ark_bn254::{Bn254, Fr, G1Affine, G1Projective, G2Affine, G2Projective};
use ark_ec::pairing::Pairing;
use ark_ec::{AffineRepr, CurveGroup, PrimeGroup, VariableBaseMSM};
use ark_ff::{BigInteger, Field, One, PrimeField, UniformRand, Zero};
use ark_poly::{EvaluationDomain, GeneralEvaluationDomain};
use ark_relations::gr1cs::{
    ConstraintSynthesizer, ConstraintSystem, Matrix, OptimizationGoal, R1CS_PREDICATE_LABEL,
    SynthesisMode,
};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize, Compress, Validate};
use rayon::prelude::*;
use sha2::{Digest, Sha256, Sha512};

use crate::circuits::update_norm::UpdateNormCircuit;
use crate::keys::{MAX_LEN, ProvingKey, VerifyingKey};

/// The signature context of a contribution's statement.
pub const CONTRIBUTION_CONTEXT: &str = "cohort/setup-contribution/v1";

const MAGIC: &[u8] = b"cohort-setup/v1\n";
const PROOF_OF_KNOWLEDGE: &[u8] = b"cohort/setup-knowledge/v1";

/// What a ceremony file or contribution can fail on. Messages name the
/// contribution and the check.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    #[error("malformed ceremony file: {0}")]
    Malformed(String),
    #[error("{phase} contribution {index} by {contributor:?} is invalid: {reason}")]
    Invalid {
        phase: Phase,
        index: usize,
        contributor: String,
        reason: String,
    },
    #[error("the ceremony's {0}")]
    Inconsistent(String),
    #[error("the ceremony is not ready: {0}")]
    NotReady(String),
    #[error("signing the contribution: {0}")]
    Signing(String),
    #[error(transparent)]
    Proof(#[from] crate::ProofError),
}

/// The two phases, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Powers of τ, α and β, independent of the circuit but for its size.
    Powers,
    /// δ and the circuit's queries that depend on it.
    Circuit,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Powers => "powers",
            Phase::Circuit => "circuit",
        })
    }
}

#[derive(Clone, CanonicalSerialize, CanonicalDeserialize)]
struct Powers {
    tau_g1: Vec<G1Affine>,
    tau_g2: Vec<G2Affine>,
    alpha_tau_g1: Vec<G1Affine>,
    beta_tau_g1: Vec<G1Affine>,
    beta_g2: G2Affine,
}

/// Schnorr's proof of knowledge of `x` for `key = x·g₂`.
#[derive(Clone, CanonicalSerialize, CanonicalDeserialize)]
struct KnowledgeProof {
    commitment: G2Affine,
    response: Fr,
}

/// A secret's public key and the point it produced from the previous one.
#[derive(Clone, CanonicalSerialize, CanonicalDeserialize)]
struct Update {
    after: G1Affine,
    key: G2Affine,
    proof: KnowledgeProof,
}

#[derive(Clone, CanonicalSerialize, CanonicalDeserialize)]
struct Signer {
    name: String,
    certificate: Vec<u8>,
    signature: Vec<u8>,
}

#[derive(Clone, CanonicalSerialize, CanonicalDeserialize)]
struct Step {
    by: Signer,
    /// τ, α, β in the powers phase; δ in the circuit phase.
    updates: Vec<Update>,
}

#[derive(Clone, CanonicalSerialize, CanonicalDeserialize)]
struct CircuitState {
    delta_g1: G1Affine,
    delta_g2: G2Affine,
    /// Derived from the powers when the phase opened; contributions divide
    /// `l_query` and `h_query` by their secret.
    queries: Queries,
}

/// A ceremony in progress or finished: the current state and every
/// contribution's public record. Its file is [`Ceremony::to_bytes`].
#[derive(Clone, CanonicalSerialize, CanonicalDeserialize)]
pub struct Ceremony {
    len: u64,
    powers: Powers,
    powers_steps: Vec<Step>,
    circuit: Option<CircuitState>,
    circuit_steps: Vec<Step>,
}

/// One contribution as recorded: who, in which phase, and what they
/// signed.
#[derive(Clone, Debug)]
pub struct Contribution {
    pub phase: Phase,
    pub index: usize,
    pub contributor: String,
    pub certificate: Vec<u8>,
    pub signature: Vec<u8>,
    /// The bytes the contributor signed under [`CONTRIBUTION_CONTEXT`].
    pub statement: Vec<u8>,
}

/// The outcome of [`Ceremony::verify`]: every contribution, and the keys
/// once both phases have one.
pub struct Verified {
    pub contributions: Vec<Contribution>,
    pub keys: Option<(ProvingKey, VerifyingKey)>,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("contributions", &self.contributions)
            .field("keys", &self.keys.as_ref().map(|(_, vk)| vk.sha256()))
            .finish()
    }
}

/// The circuit's constraint system as arkworks' generator builds it, so
/// that the derived keys match what its prover expects.
struct Shape {
    matrices: Vec<Matrix<Fr>>,
    num_instance: usize,
    num_witness: usize,
    num_constraints: usize,
    domain: GeneralEvaluationDomain<Fr>,
}

impl Shape {
    fn of(len: usize) -> Result<Self, CeremonyError> {
        if len == 0 || len > MAX_LEN {
            return Err(CeremonyError::Malformed(format!(
                "a ceremony is for 1 to {MAX_LEN} entries, this one for {len}"
            )));
        }
        let cs = ConstraintSystem::<Fr>::new_ref();
        cs.set_optimization_goal(OptimizationGoal::Constraints);
        cs.set_mode(SynthesisMode::Setup);
        UpdateNormCircuit {
            len,
            public: [Fr::zero(); 5],
            entries: None,
        }
        .generate_constraints(cs.clone())
        .map_err(crate::ProofError::from)?;
        cs.finalize();
        let num_constraints = cs.num_constraints();
        let num_instance = cs.num_instance_variables();
        let num_witness = cs.num_witness_variables();
        let matrices = cs
            .to_matrices()
            .map_err(crate::ProofError::from)?
            .remove(R1CS_PREDICATE_LABEL)
            .ok_or_else(|| crate::ProofError::Synthesis("the circuit has no R1CS".into()))?;
        let domain = GeneralEvaluationDomain::new(num_constraints + num_instance)
            .ok_or_else(|| crate::ProofError::Synthesis("the circuit is too large".into()))?;
        Ok(Self {
            matrices,
            num_instance,
            num_witness,
            num_constraints,
            domain,
        })
    }

    fn n(&self) -> usize {
        self.domain.size()
    }
}

/// The circuit's queries, derived from the powers with δ = 1.
#[derive(Clone, CanonicalSerialize, CanonicalDeserialize)]
struct Queries {
    a_query: Vec<G1Affine>,
    b_g1_query: Vec<G1Affine>,
    b_g2_query: Vec<G2Affine>,
    gamma_abc_g1: Vec<G1Affine>,
    l_query: Vec<G1Affine>,
    h_query: Vec<G1Affine>,
}

fn lagrange<G: CurveGroup<ScalarField = Fr>>(
    domain: &GeneralEvaluationDomain<Fr>,
    powers: &[G::Affine],
) -> Vec<G> {
    // [L_j(τ)] = (1/n) Σ_i ω^{-ij} [τ^i], the inverse FFT of the powers.
    let mut points: Vec<G> = powers.iter().map(|p| p.into_group()).collect();
    domain.ifft_in_place(&mut points);
    points
}

fn add_scaled<G: CurveGroup<ScalarField = Fr>>(acc: &mut G, point: &G, coeff: &Fr) {
    if coeff.is_one() {
        *acc += point;
        return;
    }
    let bits = coeff.into_bigint();
    if bits.num_bits() <= 64 {
        // Small coefficients (the bit decompositions' powers of two) cost
        // as many doublings as they have bits.
        *acc += point.mul_bigint(bits);
    } else {
        // The curve's endomorphism (GLV) halves a full-size one.
        *acc += *point * coeff;
    }
}

/// `Σ_row M[row][k]·points[row]` for every variable k.
fn column_sums<G: CurveGroup<ScalarField = Fr>>(
    matrix: &Matrix<Fr>,
    points: &[G],
    vars: usize,
) -> Vec<G> {
    let mut out = vec![G::zero(); vars];
    for (terms, point) in matrix.iter().zip(points) {
        for (coeff, var) in terms {
            add_scaled(&mut out[*var], point, coeff);
        }
    }
    out
}

fn derive(shape: &Shape, powers: &Powers) -> Queries {
    let n = shape.n();
    let domain = &shape.domain;
    tracing::info!(
        points = n,
        "seal: Lagrange basis of the powers (three FFTs over G1, one over G2; the slow step)"
    );
    let (tau, (alpha, beta)) = rayon::join(
        || lagrange::<G1Projective>(domain, &powers.tau_g1[..n]),
        || {
            rayon::join(
                || lagrange::<G1Projective>(domain, &powers.alpha_tau_g1),
                || lagrange::<G1Projective>(domain, &powers.beta_tau_g1),
            )
        },
    );
    let tau_g2 = lagrange::<G2Projective>(domain, &powers.tau_g2);
    let vars = shape.num_instance + shape.num_witness;
    tracing::info!(
        constraints = shape.num_constraints,
        variables = vars,
        "seal: the circuit's queries from its constraint rows"
    );
    let [ma, mb, mc] = [0, 1, 2].map(|m| &shape.matrices[m]);
    // Six independent sums over the rows, spread over the cores.
    let ((mut a, b1), (b2, (beta_a, (alpha_b, tau_c)))) = rayon::join(
        || {
            rayon::join(
                || column_sums(ma, &tau, vars),
                || column_sums(mb, &tau, vars),
            )
        },
        || {
            rayon::join(
                || column_sums(mb, &tau_g2, vars),
                || {
                    rayon::join(
                        || column_sums(ma, &beta, vars),
                        || {
                            rayon::join(
                                || column_sums(mb, &alpha, vars),
                                || column_sums(mc, &tau, vars),
                            )
                        },
                    )
                },
            )
        },
    );
    // β·u_k(τ) + α·v_k(τ) + w_k(τ)
    let mut abc: Vec<G1Projective> = beta_a
        .into_par_iter()
        .zip(alpha_b)
        .zip(tau_c)
        .map(|((x, y), z)| x + y + z)
        .collect();
    // arkworks' QAP reduction: each public input k also sits in A at row
    // num_constraints + k.
    for k in 0..shape.num_instance {
        a[k] += tau[shape.num_constraints + k];
        abc[k] += beta[shape.num_constraints + k];
    }
    // τ^i·Z(τ) = τ^{i+n} − τ^i on a multiplicative subgroup of size n.
    let h: Vec<G1Projective> = (0..n - 1)
        .into_par_iter()
        .map(|i| powers.tau_g1[i + n].into_group() - powers.tau_g1[i])
        .collect();
    let abc = G1Projective::normalize_batch(&abc);
    Queries {
        a_query: G1Projective::normalize_batch(&a),
        b_g1_query: G1Projective::normalize_batch(&b1),
        b_g2_query: G2Projective::normalize_batch(&b2),
        gamma_abc_g1: abc[..shape.num_instance].to_vec(),
        l_query: abc[shape.num_instance..].to_vec(),
        h_query: G1Projective::normalize_batch(&h),
    }
}

fn random_scalars(count: usize) -> Vec<Fr> {
    let mut rng = crate::ark_rng();
    (0..count).map(|_| Fr::rand(&mut rng)).collect()
}

fn nonzero_scalar() -> Fr {
    let mut rng = crate::ark_rng();
    loop {
        let s = Fr::rand(&mut rng);
        if !s.is_zero() {
            return s;
        }
    }
}

/// `e(a, b) == e(c, d)`.
fn same_pairing(a: G1Affine, b: G2Affine, c: G1Affine, d: G2Affine) -> bool {
    Bn254::multi_pairing([a, (-c.into_group()).into_affine()], [b, d]).is_zero()
}

fn combine<G: CurveGroup + VariableBaseMSM<MulBase = G::Affine>>(
    points: &[G::Affine],
    rho: &[<G as PrimeGroup>::ScalarField],
) -> G::Affine {
    G::msm_unchecked(points, rho).into_affine()
}

/// `points[i+1] = x·points[i]` for every i, where `[x]₂ = ratio`.
fn is_geometric_g1(points: &[G1Affine], ratio: G2Affine) -> bool {
    if points.len() < 2 {
        return true;
    }
    let rho = random_scalars(points.len() - 1);
    let (low, high) = rayon::join(
        || combine::<G1Projective>(&points[..points.len() - 1], &rho),
        || combine::<G1Projective>(&points[1..], &rho),
    );
    same_pairing(high, G2Affine::generator(), low, ratio)
}

/// `points[i+1] = x·points[i]` for every i, where `[x]₁ = ratio`.
fn is_geometric_g2(points: &[G2Affine], ratio: G1Affine) -> bool {
    if points.len() < 2 {
        return true;
    }
    let rho = random_scalars(points.len() - 1);
    let (low, high) = rayon::join(
        || combine::<G2Projective>(&points[..points.len() - 1], &rho),
        || combine::<G2Projective>(&points[1..], &rho),
    );
    same_pairing(G1Affine::generator(), high, ratio, low)
}

/// The monomial coefficients of the polynomial whose value at the domain's
/// row i is `Σ_k M[i][k]·r_k` (plus `r_k` at row `num_constraints + k` for
/// each public input k when `with_inputs`: arkworks' input rows in A).
fn combined_column(shape: &Shape, matrix: usize, r: &[Fr], with_inputs: bool) -> Vec<Fr> {
    let mut w = vec![Fr::zero(); shape.n()];
    for (row, terms) in shape.matrices[matrix].iter().enumerate() {
        for (coeff, var) in terms {
            w[row] += *coeff * r[*var];
        }
    }
    if with_inputs {
        for (k, r_k) in r.iter().enumerate().take(shape.num_instance) {
            w[shape.num_constraints + k] += r_k;
        }
    }
    shape.domain.ifft_in_place(&mut w);
    w
}

/// Checks the circuit phase's queries against the powers without the FFT
/// over the group that derived them: for a random vector r over the
/// variables, `Σ_k r_k·[u_k(τ)]` must equal `Σ_i c_i·[τ^i]` where c are
/// the monomial coefficients of `Σ_k r_k·u_k`, computed in the field; the
/// same for v, w and the β·u + α·v + w combinations; and `L`, `H` are those
/// of the circuit divided by the final δ.
fn check_queries(shape: &Shape, p: &Powers, state: &CircuitState) -> Result<(), CeremonyError> {
    let q = &state.queries;
    let n = shape.n();
    let (inputs, vars) = (shape.num_instance, shape.num_instance + shape.num_witness);
    let wrong = |what: &str| {
        Err(CeremonyError::Inconsistent(format!(
            "{what} is not the circuit's from these powers"
        )))
    };
    let sizes = [
        q.a_query.len(),
        q.b_g1_query.len(),
        q.b_g2_query.len(),
        q.gamma_abc_g1.len() + q.l_query.len(),
    ];
    if sizes != [vars; 4] || q.gamma_abc_g1.len() != inputs || q.h_query.len() != n - 1 {
        return wrong("the number of query points");
    }
    tracing::info!(
        variables = vars,
        "verify: the circuit's queries against the powers (random linear combinations)"
    );
    let tau = &p.tau_g1[..n];
    let r = random_scalars(vars);
    let (c_a, c_b) = rayon::join(
        || combined_column(shape, 0, &r, true),
        || combined_column(shape, 1, &r, false),
    );
    let msm1 = |points: &[G1Affine], scalars: &[Fr]| G1Projective::msm_unchecked(points, scalars);
    let msm2 = |points: &[G2Affine], scalars: &[Fr]| G2Projective::msm_unchecked(points, scalars);
    if msm1(&q.a_query, &r) != msm1(tau, &c_a) {
        return wrong("the A query");
    }
    if msm1(&q.b_g1_query, &r) != msm1(tau, &c_b) {
        return wrong("the B query in G1");
    }
    if msm2(&q.b_g2_query, &r) != msm2(&p.tau_g2, &c_b) {
        return wrong("the B query in G2");
    }
    // β·u_k(τ) + α·v_k(τ) + w_k(τ) over the public inputs (γ = 1) and over
    // the witnesses (then divided by δ).
    let abc = |part: std::ops::Range<usize>| {
        let mut rp = vec![Fr::zero(); vars];
        rp[part.clone()].copy_from_slice(&r[part]);
        let [c_a, c_b, c_c] = [(0, true), (1, false), (2, false)]
            .map(|(m, with_inputs)| combined_column(shape, m, &rp, with_inputs));
        (msm1(&p.beta_tau_g1, &c_a) + msm1(&p.alpha_tau_g1, &c_b) + msm1(tau, &c_c)).into_affine()
    };
    if msm1(&q.gamma_abc_g1, &r[..inputs]).into_affine() != abc(0..inputs) {
        return wrong("the verifying key's input points");
    }
    let g2 = G2Affine::generator();
    let l = msm1(&q.l_query, &r[inputs..]).into_affine();
    if !same_pairing(l, state.delta_g2, abc(inputs..vars), g2) {
        return wrong("the L query divided by δ");
    }
    let rho = random_scalars(n - 1);
    let h = msm1(&q.h_query, &rho).into_affine();
    let z = (msm1(&p.tau_g1[n..2 * n - 1], &rho) - msm1(&p.tau_g1[..n - 1], &rho)).into_affine();
    if !same_pairing(h, state.delta_g2, z, g2) {
        return wrong("the H query divided by δ");
    }
    Ok(())
}

fn to_bytes(value: &impl CanonicalSerialize) -> Vec<u8> {
    let mut out = Vec::new();
    value
        .serialize_uncompressed(&mut out)
        .expect("serializing into a Vec cannot fail");
    out
}

/// What ties a proof of knowledge to its place in the ceremony.
struct Place<'a> {
    len: u64,
    phase: Phase,
    index: usize,
    contributor: &'a str,
    secret: &'static str,
    before: G1Affine,
}

impl Place<'_> {
    fn challenge(&self, key: &G2Affine, commitment: &G2Affine) -> Fr {
        let mut h = Sha512::new();
        h.update(PROOF_OF_KNOWLEDGE);
        h.update(self.len.to_le_bytes());
        h.update(self.phase.to_string());
        h.update((self.index as u64).to_le_bytes());
        h.update((self.contributor.len() as u64).to_le_bytes());
        h.update(self.contributor);
        h.update(self.secret);
        h.update(to_bytes(&self.before));
        h.update(to_bytes(key));
        h.update(to_bytes(commitment));
        Fr::from_le_bytes_mod_order(&h.finalize())
    }

    fn update(&self, secret: Fr) -> Update {
        let g2 = G2Projective::generator();
        let key = (g2 * secret).into_affine();
        let nonce = nonzero_scalar();
        let commitment = (g2 * nonce).into_affine();
        let challenge = self.challenge(&key, &commitment);
        Update {
            after: (self.before * secret).into_affine(),
            key,
            proof: KnowledgeProof {
                commitment,
                response: nonce + challenge * secret,
            },
        }
    }

    fn check(&self, update: &Update) -> Result<(), String> {
        if update.key.is_zero() || update.after.is_zero() {
            return Err(format!("its {} is zero", self.secret));
        }
        let challenge = self.challenge(&update.key, &update.proof.commitment);
        let lhs = G2Affine::generator() * update.proof.response;
        let rhs = update.proof.commitment.into_group() + update.key * challenge;
        if lhs != rhs {
            return Err(format!(
                "its proof of knowledge of the {} secret does not verify",
                self.secret
            ));
        }
        if !same_pairing(update.after, G2Affine::generator(), self.before, update.key) {
            return Err(format!(
                "its {} is not the previous one times its secret",
                self.secret
            ));
        }
        Ok(())
    }
}

const POWERS_SECRETS: [&str; 3] = ["tau", "alpha", "beta"];
const CIRCUIT_SECRETS: [&str; 1] = ["delta"];

fn scale_all<G: CurveGroup<ScalarField = Fr>>(
    points: &mut [G::Affine],
    scalar_at: impl Fn(usize) -> Fr + Sync,
) {
    let scaled: Vec<G> = points
        .par_iter()
        .enumerate()
        .map(|(i, p)| *p * scalar_at(i))
        .collect();
    points.copy_from_slice(&G::normalize_batch(&scaled));
}

/// `x^0, x^1, …, x^{count−1}`.
fn powers_of(x: Fr, count: usize) -> Vec<Fr> {
    let mut out = Vec::with_capacity(count);
    let mut p = Fr::one();
    for _ in 0..count {
        out.push(p);
        p *= x;
    }
    out
}

impl Ceremony {
    /// A new ceremony for the update-norm circuit over `len` entries: all
    /// secrets 1, no contributions yet.
    pub fn new(len: usize) -> Result<Self, CeremonyError> {
        let n = Shape::of(len)?.n();
        let g1 = G1Affine::generator();
        let g2 = G2Affine::generator();
        Ok(Self {
            len: len as u64,
            powers: Powers {
                tau_g1: vec![g1; 2 * n - 1],
                tau_g2: vec![g2; n],
                alpha_tau_g1: vec![g1; n],
                beta_tau_g1: vec![g1; n],
                beta_g2: g2,
            },
            powers_steps: Vec::new(),
            circuit: None,
            circuit_steps: Vec::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Points in the file, every phase together.
    fn points(&self) -> usize {
        let p = &self.powers;
        let circuit = self.circuit.as_ref().map_or(0, |c| {
            let q = &c.queries;
            q.a_query.len()
                + q.b_g1_query.len()
                + q.b_g2_query.len()
                + q.gamma_abc_g1.len()
                + q.l_query.len()
                + q.h_query.len()
        });
        p.tau_g1.len() + p.tau_g2.len() + p.alpha_tau_g1.len() + p.beta_tau_g1.len() + circuit
    }

    /// The phase that the next contribution goes to.
    pub fn phase(&self) -> Phase {
        if self.circuit.is_some() {
            Phase::Circuit
        } else {
            Phase::Powers
        }
    }

    fn steps(&self, phase: Phase) -> &[Step] {
        match phase {
            Phase::Powers => &self.powers_steps,
            Phase::Circuit => &self.circuit_steps,
        }
    }

    /// The points each secret of `phase` updates before contribution
    /// `index`.
    fn befores(&self, phase: Phase, index: usize) -> Vec<G1Affine> {
        match index.checked_sub(1) {
            None => {
                let count = match phase {
                    Phase::Powers => POWERS_SECRETS.len(),
                    Phase::Circuit => CIRCUIT_SECRETS.len(),
                };
                vec![G1Affine::generator(); count]
            }
            Some(previous) => self.steps(phase)[previous]
                .updates
                .iter()
                .map(|u| u.after)
                .collect(),
        }
    }

    fn secrets(phase: Phase) -> &'static [&'static str] {
        match phase {
            Phase::Powers => &POWERS_SECRETS,
            Phase::Circuit => &CIRCUIT_SECRETS,
        }
    }

    /// The bytes contribution `step` at `index` of `phase` is signed over.
    fn statement(&self, phase: Phase, index: usize, step: &Step) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(CONTRIBUTION_CONTEXT);
        h.update(self.len.to_le_bytes());
        h.update(phase.to_string());
        h.update((index as u64).to_le_bytes());
        h.update((step.by.name.len() as u64).to_le_bytes());
        h.update(&step.by.name);
        h.update(Sha256::digest(&step.by.certificate));
        h.update(to_bytes(&step.updates));
        h.finalize().to_vec()
    }

    /// Adds a contribution with fresh secrets to the open phase, signed by
    /// `sign` over its statement. The secrets are dropped when this
    /// returns. On an error the ceremony is left half-updated: discard it.
    pub fn contribute(
        &mut self,
        contributor: &str,
        certificate: &[u8],
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
    ) -> Result<Contribution, CeremonyError> {
        let phase = self.phase();
        let index = self.steps(phase).len();
        let befores = self.befores(phase, index);
        let secrets: Vec<Fr> = Self::secrets(phase)
            .iter()
            .map(|_| nonzero_scalar())
            .collect();
        let updates: Vec<Update> = Self::secrets(phase)
            .iter()
            .zip(&befores)
            .zip(&secrets)
            .map(|((secret, before), x)| {
                Place {
                    len: self.len,
                    phase,
                    index,
                    contributor,
                    secret,
                    before: *before,
                }
                .update(*x)
            })
            .collect();
        tracing::info!(
            %phase,
            index,
            points = self.points(),
            "contribution: multiplying every point by this contribution's secrets"
        );
        match (phase, secrets.as_slice()) {
            (Phase::Powers, [tau, alpha, beta]) => self.update_powers(*tau, *alpha, *beta),
            (Phase::Circuit, [delta]) => self.update_circuit(*delta),
            _ => unreachable!("each phase has its number of secrets"),
        }
        let mut step = Step {
            by: Signer {
                name: contributor.to_string(),
                certificate: certificate.to_vec(),
                signature: Vec::new(),
            },
            updates,
        };
        let statement = self.statement(phase, index, &step);
        step.by.signature = sign(&statement).map_err(CeremonyError::Signing)?;
        let contribution = Contribution {
            phase,
            index,
            contributor: contributor.to_string(),
            certificate: certificate.to_vec(),
            signature: step.by.signature.clone(),
            statement,
        };
        match phase {
            Phase::Powers => self.powers_steps.push(step),
            Phase::Circuit => self.circuit_steps.push(step),
        }
        Ok(contribution)
    }

    fn update_powers(&mut self, tau: Fr, alpha: Fr, beta: Fr) {
        let p = &mut self.powers;
        let tau_powers = powers_of(tau, p.tau_g1.len());
        scale_all::<G1Projective>(&mut p.tau_g1, |i| tau_powers[i]);
        scale_all::<G2Projective>(&mut p.tau_g2, |i| tau_powers[i]);
        scale_all::<G1Projective>(&mut p.alpha_tau_g1, |i| alpha * tau_powers[i]);
        scale_all::<G1Projective>(&mut p.beta_tau_g1, |i| beta * tau_powers[i]);
        p.beta_g2 = (p.beta_g2 * beta).into_affine();
    }

    fn update_circuit(&mut self, delta: Fr) {
        let Some(state) = self.circuit.as_mut() else {
            return;
        };
        let inverse = delta.inverse().expect("the secret is not zero");
        state.delta_g1 = (state.delta_g1 * delta).into_affine();
        state.delta_g2 = (state.delta_g2 * delta).into_affine();
        scale_all::<G1Projective>(&mut state.queries.l_query, |_| inverse);
        scale_all::<G1Projective>(&mut state.queries.h_query, |_| inverse);
    }

    /// The circuit's shape, once the powers are known to be as many as it
    /// needs.
    fn shape(&self) -> Result<Shape, CeremonyError> {
        // Every entry costs at least 17 constraints, so a real file holds
        // at least that many powers per entry: a parameter count the file
        // cannot back is refused before the circuit is built for it.
        let p = &self.powers;
        if (p.tau_g2.len() as u64) < self.len.saturating_mul(16) {
            return Err(CeremonyError::Inconsistent(format!(
                "file holds {} powers, too few for {} parameters",
                p.tau_g2.len(),
                self.len
            )));
        }
        let shape = Shape::of(self.len())?;
        let n = shape.n();
        let sizes = [
            ("powers of τ in G1", p.tau_g1.len(), 2 * n - 1),
            ("powers of τ in G2", p.tau_g2.len(), n),
            ("powers of ατ", p.alpha_tau_g1.len(), n),
            ("powers of βτ", p.beta_tau_g1.len(), n),
        ];
        for (what, got, expected) in sizes {
            if got != expected {
                return Err(CeremonyError::Inconsistent(format!(
                    "{what} number {got}, the circuit over {} entries needs {expected}",
                    self.len
                )));
            }
        }
        Ok(shape)
    }

    /// Closes the powers phase and opens the circuit phase (δ = 1, the
    /// queries derived from the powers). Needs at least one contribution
    /// to the powers.
    pub fn seal_powers(&mut self) -> Result<(), CeremonyError> {
        if self.circuit.is_some() {
            return Err(CeremonyError::NotReady(
                "the powers phase is already sealed".into(),
            ));
        }
        if self.powers_steps.is_empty() {
            return Err(CeremonyError::NotReady(
                "the powers phase has no contribution yet; sealing it would publish τ = 1".into(),
            ));
        }
        let shape = self.shape()?;
        self.circuit = Some(CircuitState {
            delta_g1: G1Affine::generator(),
            delta_g2: G2Affine::generator(),
            queries: derive(&shape, &self.powers),
        });
        Ok(())
    }

    /// Checks every contribution and the final state (see the module
    /// docs), and builds the keys when both phases have a contribution.
    /// Signatures are returned for the caller to check, not checked here.
    pub fn verify(&self) -> Result<Verified, CeremonyError> {
        let shape = self.shape()?;
        let p = &self.powers;
        tracing::info!(
            contributions = self.powers_steps.len() + self.circuit_steps.len(),
            points = self.points(),
            "verify: each contribution's proofs of knowledge, then the final points"
        );
        let mut contributions = self.check_chain(Phase::Powers)?;
        let last = |steps: &[Step], i: usize| {
            steps
                .last()
                .map(|s| s.updates[i].after)
                .unwrap_or_else(G1Affine::generator)
        };
        let g1 = G1Affine::generator();
        let g2 = G2Affine::generator();
        if p.tau_g1[0] != g1 {
            return Err(CeremonyError::Inconsistent(
                "powers of τ do not start from the generator".into(),
            ));
        }
        // The points each secret produced: [τ]₁, [α]₁, [β]₁.
        let produced = [p.tau_g1[1], p.alpha_tau_g1[0], p.beta_tau_g1[0]];
        for ((what, point), secret) in ["powers of τ", "powers of ατ", "powers of βτ"]
            .into_iter()
            .zip(produced)
            .zip(0..)
        {
            if point != last(&self.powers_steps, secret) {
                return Err(CeremonyError::Inconsistent(format!(
                    "{what} do not start from the last contribution's point"
                )));
            }
        }
        if p.tau_g2[0] != g2 || !same_pairing(p.tau_g1[1], g2, g1, p.tau_g2[1]) {
            return Err(CeremonyError::Inconsistent(
                "powers of τ in G2 are not those of G1".into(),
            ));
        }
        if !same_pairing(p.beta_tau_g1[0], g2, g1, p.beta_g2) {
            return Err(CeremonyError::Inconsistent("β in G2 is not β in G1".into()));
        }
        let tau_g2 = p.tau_g2[1];
        let geometric = [
            ("powers of τ in G1", is_geometric_g1(&p.tau_g1, tau_g2)),
            ("powers of ατ", is_geometric_g1(&p.alpha_tau_g1, tau_g2)),
            ("powers of βτ", is_geometric_g1(&p.beta_tau_g1, tau_g2)),
            ("powers of τ in G2", is_geometric_g2(&p.tau_g2, p.tau_g1[1])),
        ];
        for (what, ok) in geometric {
            if !ok {
                return Err(CeremonyError::Inconsistent(format!(
                    "{what} are not successive powers of τ"
                )));
            }
        }
        let Some(state) = &self.circuit else {
            return Ok(Verified {
                contributions,
                keys: None,
            });
        };
        contributions.extend(self.check_chain(Phase::Circuit)?);
        if state.delta_g1 != last(&self.circuit_steps, 0)
            || !same_pairing(state.delta_g1, g2, g1, state.delta_g2)
        {
            return Err(CeremonyError::Inconsistent(
                "δ is not the last contribution's".into(),
            ));
        }
        check_queries(&shape, p, state)?;
        if self.powers_steps.is_empty() || self.circuit_steps.is_empty() {
            return Ok(Verified {
                contributions,
                keys: None,
            });
        }
        let vk = ark_groth16::VerifyingKey::<Bn254> {
            alpha_g1: p.alpha_tau_g1[0],
            beta_g2: p.beta_g2,
            gamma_g2: g2,
            delta_g2: state.delta_g2,
            gamma_abc_g1: state.queries.gamma_abc_g1.clone(),
        };
        let pk = ark_groth16::ProvingKey::<Bn254> {
            vk: vk.clone(),
            beta_g1: p.beta_tau_g1[0],
            delta_g1: state.delta_g1,
            a_query: state.queries.a_query.clone(),
            b_g1_query: state.queries.b_g1_query.clone(),
            b_g2_query: state.queries.b_g2_query.clone(),
            h_query: state.queries.h_query.clone(),
            l_query: state.queries.l_query.clone(),
        };
        let len = self.len();
        Ok(Verified {
            contributions,
            keys: Some((
                ProvingKey { len, inner: pk },
                VerifyingKey { len, inner: vk },
            )),
        })
    }

    fn check_chain(&self, phase: Phase) -> Result<Vec<Contribution>, CeremonyError> {
        let secrets = Self::secrets(phase);
        let mut out = Vec::new();
        for (index, step) in self.steps(phase).iter().enumerate() {
            let invalid = |reason: String| CeremonyError::Invalid {
                phase,
                index,
                contributor: step.by.name.clone(),
                reason,
            };
            if step.updates.len() != secrets.len() {
                return Err(invalid(format!(
                    "it updates {} secrets, the phase has {}",
                    step.updates.len(),
                    secrets.len()
                )));
            }
            for ((secret, before), update) in secrets
                .iter()
                .zip(self.befores(phase, index))
                .zip(&step.updates)
            {
                Place {
                    len: self.len,
                    phase,
                    index,
                    contributor: &step.by.name,
                    secret,
                    before,
                }
                .check(update)
                .map_err(invalid)?;
            }
            out.push(Contribution {
                phase,
                index,
                contributor: step.by.name.clone(),
                certificate: step.by.certificate.clone(),
                signature: step.by.signature.clone(),
                statement: self.statement(phase, index, step),
            });
        }
        Ok(out)
    }

    /// The file: a magic line, then arkworks' uncompressed serialization.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(to_bytes(self));
        out
    }

    /// Reads a ceremony file; every point is checked to be on its curve
    /// and in its subgroup. Contributions are checked by
    /// [`Ceremony::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CeremonyError> {
        let Some(mut reader) = bytes.strip_prefix(MAGIC) else {
            return Err(CeremonyError::Malformed(
                "not a Cohort setup ceremony file (its first line is not cohort-setup/v1)".into(),
            ));
        };
        let ceremony = Self::deserialize_with_mode(&mut reader, Compress::No, Validate::Yes)
            .map_err(|e| CeremonyError::Malformed(format!("{e} (truncated or corrupted?)")))?;
        if !reader.is_empty() {
            return Err(CeremonyError::Malformed(format!(
                "{} trailing bytes",
                reader.len()
            )));
        }
        Ok(ceremony)
    }
}

/// Bytes at the start of a ceremony file that name its parameter count.
pub const HEADER_BYTES: usize = MAGIC.len() + 8;

/// The parameter count a ceremony file is for, from its first
/// [`HEADER_BYTES`]; `None` when they are not a ceremony's.
pub fn entries_of(head: &[u8]) -> Option<usize> {
    let len = head.strip_prefix(MAGIC)?.first_chunk::<8>()?;
    usize::try_from(u64::from_le_bytes(*len)).ok()
}

/// Hex SHA-256 of a ceremony file's bytes: what the ledger records.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::{Context, prove_update, verify_update};
    use crate::{FixedPoint, hash};

    fn sign_with(name: &str) -> impl FnOnce(&[u8]) -> Result<Vec<u8>, String> {
        let name = name.to_string();
        move |statement| Ok([name.as_bytes(), statement].concat())
    }

    fn finished(len: usize, contributors: &[&str]) -> Ceremony {
        let mut c = Ceremony::new(len).unwrap();
        for name in contributors {
            c.contribute(name, b"cert", sign_with(name)).unwrap();
        }
        c.seal_powers().unwrap();
        for name in contributors {
            c.contribute(name, b"cert", sign_with(name)).unwrap();
        }
        c
    }

    #[test]
    fn lagrange_points_are_the_lagrange_polynomials_at_tau() {
        let shape = Shape::of(2).unwrap();
        let tau = Fr::from(7u64);
        let g1 = G1Projective::generator();
        let powers: Vec<G1Affine> = powers_of(tau, shape.n())
            .iter()
            .map(|t| (g1 * t).into_affine())
            .collect();
        let points = lagrange::<G1Projective>(&shape.domain, &powers);
        let expected = shape.domain.evaluate_all_lagrange_coefficients(tau);
        for (p, l) in points.iter().zip(expected) {
            assert_eq!(*p, g1 * l);
        }
    }

    #[test]
    fn a_ceremony_key_proves_and_verifies_and_names_its_contributors() {
        let c = finished(4, &["val-a", "val-b"]);
        let bytes = c.to_bytes();
        assert_eq!(entries_of(&bytes[..HEADER_BYTES]), Some(4));
        let read = Ceremony::from_bytes(&bytes).unwrap();
        let verified = read.verify().unwrap();
        let names: Vec<_> = verified
            .contributions
            .iter()
            .map(|c| (c.phase, c.contributor.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (Phase::Powers, "val-a"),
                (Phase::Powers, "val-b"),
                (Phase::Circuit, "val-a"),
                (Phase::Circuit, "val-b"),
            ]
        );
        for contribution in &verified.contributions {
            let signed = [contribution.contributor.as_bytes(), &contribution.statement].concat();
            assert_eq!(contribution.signature, signed);
        }
        let (pk, vk) = verified.keys.unwrap();
        let context = Context {
            job_id: "job-1".into(),
            round: 3,
            client: "hospital-a".into(),
        };
        let grid = FixedPoint::for_clip(1.0).unwrap();
        let update = [3, -4, 5, 0];
        let proof = prove_update(&pk, &context, &grid, &update).unwrap();
        verify_update(&vk, &context, grid.bound, proof.update_hash, &proof.proof).unwrap();
        let other = hash::update_hash(&[3, -4, 5, 1]);
        assert!(matches!(
            verify_update(&vk, &context, grid.bound, other, &proof.proof),
            Err(crate::ProofError::Invalid)
        ));
    }

    #[test]
    fn a_ceremony_without_both_phases_gives_no_key() {
        let mut c = Ceremony::new(2).unwrap();
        assert!(matches!(c.seal_powers(), Err(CeremonyError::NotReady(_))));
        c.contribute("val-a", b"cert", sign_with("val-a")).unwrap();
        assert!(c.verify().unwrap().keys.is_none());
        // Sealing checks the powers' number before deriving from them.
        let mut short = c.clone();
        short.powers.tau_g1.pop();
        let e = short.seal_powers().unwrap_err().to_string();
        assert!(e.contains("powers of τ in G1 number"), "{e}");
        c.seal_powers().unwrap();
        assert!(c.verify().unwrap().keys.is_none());
        c.contribute("val-a", b"cert", sign_with("val-a")).unwrap();
        assert!(c.verify().unwrap().keys.is_some());
    }

    #[test]
    fn tampered_ceremonies_are_refused_naming_the_problem() {
        let c = finished(2, &["val-a", "val-b"]);

        fn queries(c: &mut Ceremony) -> &mut Queries {
            &mut c.circuit.as_mut().unwrap().queries
        }
        type Tamper = fn(&mut Ceremony);
        let cases: [(&str, Tamper, &str); 9] = [
            // A relay that swaps in its own contribution under another's
            // name cannot reuse the honest proof of knowledge.
            (
                "renamed",
                |c| c.powers_steps[1].by.name = "val-c".into(),
                "powers contribution 1 by \"val-c\" is invalid: its proof of knowledge",
            ),
            // Dropping a contribution breaks the chain to the final state.
            (
                "dropped",
                |c| drop(c.circuit_steps.pop()),
                "δ is not the last",
            ),
            (
                "a power replaced",
                |c| c.powers.tau_g1[2] = G1Affine::generator(),
                "successive powers",
            ),
            (
                "an L point replaced",
                |c| queries(c).l_query[0] = G1Affine::generator(),
                "the L query",
            ),
            (
                "an A point replaced",
                |c| queries(c).a_query[1] = G1Affine::generator(),
                "the A query",
            ),
            (
                "an H point replaced",
                |c| queries(c).h_query[0] = G1Affine::generator(),
                "the H query",
            ),
            (
                "an input point replaced",
                |c| queries(c).gamma_abc_g1[0] = G1Affine::generator(),
                "input points",
            ),
            // A parameter count the file cannot back is refused before the
            // circuit is built for it.
            ("a huge parameter count", |c| c.len = 50_000_000, "too few"),
            (
                "τ reset to 1 after the contributions",
                |c| c.powers = Ceremony::new(2).unwrap().powers,
                "last contribution",
            ),
        ];
        for (what, tamper, problem) in cases {
            let mut tampered = c.clone();
            tamper(&mut tampered);
            let e = tampered.verify().unwrap_err().to_string();
            assert!(e.contains(problem), "{what}: {e}");
        }

        // Bytes: truncated, trailing, another file.
        let bytes = c.to_bytes();
        for bad in [
            &bytes[..bytes.len() - 1],
            &[bytes.as_slice(), &[0]].concat()[..],
            b"not a ceremony",
        ] {
            assert!(matches!(
                Ceremony::from_bytes(bad),
                Err(CeremonyError::Malformed(_))
            ));
        }
    }
}
