//! What the ledger records: typed, versioned entries, each signed by the
//! party that makes it.
//!
//! An entry's leaf in the Merkle log is its canonical JSON (fields in the
//! order declared here, no whitespace). The signature covers the canonical
//! JSON of `(version, at, record)` under the context `cohort/ledger/v1`, so
//! it cannot be confused with any other Cohort signature. Records hold no
//! floating-point numbers, so parsing and re-encoding is exact.

use cohort_identity::{MessageSigningKey, MessageVerifyingKey};
use serde::{Deserialize, Serialize};

use crate::sealed::{Opening, SealError, SealedPart, open_all, seal_all};

/// Bumped on any incompatible change to the records' meaning.
pub const ENTRY_VERSION: u32 = 1;
const SIGNATURE_CONTEXT: &str = "cohort/ledger/v1";

/// One aggregated update as the coordinator received it; the hospital's own
/// signature over it (see `cohort_protocol::update_statement`) travels along.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRecord {
    pub client: String,
    pub task_id: String,
    pub num_examples: u64,
    pub parameter_count: u64,
    pub update_sha256: String,
    /// Hex; empty when the coordinator runs without mutual TLS.
    pub signature: String,
    /// The hospital's commitment to the preprocessed rows it trained on
    /// (`cohort data commitment` reproduces it).
    pub dataset_sha256: String,
    /// Under differential privacy: the epsilon this hospital reported
    /// having spent on the job up to and including this update (at the
    /// job's delta), as the shortest decimal that reads back as the same
    /// f64: records carry no floats, so re-encoding is exact. Absent in
    /// entries written before DP existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_epsilon: Option<String>,
    /// Under `[proofs] update = "norm"`: the statement the hospital proved
    /// about this update, as the coordinator checked it. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<ProofRecord>,
}

/// A zero-knowledge proof about one update (`cohort_proofs`): with the
/// job's verifying key (in its `proof_setup` entry) anyone re-checks it.
/// The proof's bytes are not its identity (Groth16 proofs are malleable);
/// the statement (job, round, client, bound, update hash) is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofRecord {
    /// e.g. `update-norm/v2`.
    pub statement: String,
    /// The L2 bound `B` on the integer update.
    pub bound: u64,
    /// Hex of the Poseidon hash of the update the coordinator received
    /// (32 bytes, little-endian field element).
    pub update_hash: String,
    /// Hex of the proof: a compressed Groth16 proof (`update-norm/v2`, or v1) or
    /// a Bulletproofs R1CS proof (`committed-update-norm/v1`, secure
    /// aggregation, where `update_hash` is the SHA-256 of the hospital's
    /// masked input: its Pedersen commitments, which readers of the job
    /// fetch with `GetCommitments`).
    pub proof: String,
}

/// An update the coordinator left out of a round, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exclusion {
    pub client: String,
    pub reason: String,
}

/// A Groth16 setup ceremony as the ledger records it: the file's digest
/// and who contributed, so that an auditor holding the file
/// (`cohort setup verify`) checks it is the one the keys came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupCeremony {
    /// Hex SHA-256 of the ceremony file.
    pub sha256: String,
    pub contributors: Vec<SetupContributor>,
}

/// One contribution to a setup ceremony.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupContributor {
    /// `powers` or `circuit`.
    pub phase: String,
    pub name: String,
    /// Hex DER of the contributor's consortium certificate.
    pub certificate: String,
    /// Hex of its signature over the contribution's statement.
    pub signature: String,
}

/// A validator's verdict on one proof of one round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub client: String,
    pub statement: String,
    pub valid: bool,
}

impl UpdateRecord {
    /// [`UpdateRecord::dp_epsilon`] as a number (`None` when absent or not
    /// a finite number).
    pub fn epsilon(&self) -> Option<f64> {
        self.dp_epsilon
            .as_deref()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|e| e.is_finite())
    }

    /// The decimal form of a reported epsilon: `None` for 0 (no DP),
    /// negative or non-finite values.
    pub fn epsilon_text(epsilon: f64) -> Option<String> {
        (epsilon.is_finite() && epsilon > 0.0).then(|| epsilon.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// The first entry of every log: the key that signs its entries and
    /// checkpoints.
    CoordinatorKey { name: String, public_key: String },
    JobCreated {
        job_id: String,
        name: String,
        /// Hex SHA-256 of the job file exactly as submitted.
        job_sha256: String,
        submitted_by: Option<String>,
    },
    /// The hospitals a job enrolled, and the global preprocessing merged
    /// from their statistics (the model cards carry it in full).
    ClientsEnrolled {
        job_id: String,
        /// Open parts: in entries written before parts were sealed, and in
        /// a reader's view after [`Record::unseal`].
        participants: Vec<EnrolledClient>,
        /// Hex SHA-256 of the preprocessing JSON.
        preprocessing_sha256: String,
        /// Each hospital's [`EnrolledClient`], sealed (`crate::sealed`):
        /// co-enrolled hospitals see who takes part, not how many rows each
        /// holds.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sealed_participants: Vec<SealedPart>,
    },
    RoundCompleted {
        job_id: String,
        round: u32,
        /// Hex SHA-256 of the resulting model's parameters.
        model_sha256: String,
        /// Hex SHA-256 of the model's signature bundle (`model.sig`).
        model_signature_sha256: String,
        /// Open receipts: in entries written before receipts were sealed,
        /// and in a reader's view after [`Record::unseal`].
        updates: Vec<UpdateRecord>,
        /// Each aggregated update's [`UpdateRecord`], sealed
        /// (`crate::sealed`): the round's other hospitals see who took
        /// part, not each other's receipts and ε.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sealed_updates: Vec<SealedPart>,
        /// Under secure aggregation, where `updates` are masked: hex SHA-256
        /// of the recovered sum of the survivors' encoded updates
        /// (`cohort_privacy::quantize::pack`). Absent in plain mode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        aggregate_sha256: Option<String>,
        /// Held-out metrics as decimal text (six places): JSON numbers do
        /// not survive every parser bit for bit, and a signed record must.
        accuracy: Option<String>,
        auc: Option<String>,
        /// Updates left out of the round (e.g. without a valid proof), with
        /// the reason. Absent when none was.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        excluded: Vec<Exclusion>,
        /// Vertical split learning (issue 18): hex SHA-256 of the top part the
        /// label site kept; `model_sha256` then covers the first layer only,
        /// and the top's parameters never reached the coordinator.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept_top_sha256: Option<String>,
    },
    /// Contribution valuation (`[valuation]` jobs): what each hospital's
    /// part of a round was worth, committed with the round.
    RoundValued {
        job_id: String,
        round: u32,
        /// `exact-shapley`, `permutation-shapley` or `partition-least-squares`.
        method: String,
        /// Candidate models the hospitals scored for this round.
        utility_evaluations: u64,
        /// Partition valuation: hex of the public seed that grouped the
        /// round's hospitals.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group_seed: Option<String>,
        /// Partition valuation: the groups whose sums were decrypted, the
        /// only combinations of updates the coordinator ever learned.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<Vec<String>>,
        values: Vec<HospitalValue>,
    },
    /// One round's emission and who it paid: `emission` base units for the
    /// consortium's `height`-th rewarded round under the halving schedule
    /// `initial >> (height / halving)`.
    RewardsPaid {
        job_id: String,
        round: u32,
        height: u64,
        initial: u64,
        halving: u64,
        emission: u64,
        /// Parts per million of the emission set aside for validators
        /// (paid only when the round has validators).
        validator_ppm: u64,
        hospitals: Vec<Payout>,
        /// Always empty since validators attest after the round is
        /// recorded: they are paid from `validator_pool` by a later
        /// `validators_paid` entry.
        validators: Vec<Payout>,
        /// Base units of this round's emission held for the validators
        /// that attest it (rounds with update proofs; 0 otherwise):
        /// `emission × validator_ppm / 10^6`, the hospitals share the rest.
        #[serde(default, skip_serializing_if = "is_zero")]
        validator_pool: u64,
    },
    /// A round's validator pool paid out, appended with the attestation
    /// that made `quorum` validators attest the round (the job's
    /// `min_validators`, at least 1): those first `quorum` validators share
    /// the pool in proportion to the proofs each verified valid (`value`:
    /// their count) among the round's accepted updates, by largest
    /// remainder.
    ValidatorsPaid {
        job_id: String,
        round: u32,
        quorum: u32,
        pool: u64,
        validators: Vec<Payout>,
    },
    /// Update proofs (issue 16): the verifying key of a job's statement.
    /// Anyone holding the ledger re-checks every proof of the job with it.
    ProofSetup {
        job_id: String,
        statement: String,
        parameter_count: u64,
        /// Hex of the verifying key's bytes (`cohort_proofs::VerifyingKey`).
        verifying_key: String,
        /// Hex SHA-256 of those bytes.
        verifying_key_sha256: String,
        /// The multi-party ceremony the keys came from (`cohort setup`);
        /// absent when the coordinator made them alone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ceremony: Option<SetupCeremony>,
    },
    /// A validator's attestation of one round: every proof it checked, with
    /// its verdict. Signed by the validator (`validator_signature` over
    /// `cohort_ledger::attestation_statement`, with the key bound in its
    /// certificate) and, as every entry, by the coordinator that appended it.
    Attestation {
        job_id: String,
        round: u32,
        validator: String,
        verdicts: Vec<Verdict>,
        /// Hex of the validator's DER certificate.
        validator_certificate: String,
        /// Hex of the validator's ECDSA P-256 signature (DER).
        validator_signature: String,
    },
}

/// A hospital's value in one round and over the job so far, as decimal
/// text (nine places).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HospitalValue {
    pub name: String,
    pub round_value: String,
    pub cumulative: String,
}

/// One party's part of a round's emission, in base units, and the value
/// (decimal text; empty for validators) it was paid for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payout {
    pub name: String,
    pub value: String,
    pub reward: u64,
}

/// Signature context of a validator's attestation.
pub const ATTESTATION_CONTEXT: &str = "cohort/attestation/v1";

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The bytes a validator signs: canonical JSON of the job, round,
/// validator name and verdicts.
pub fn attestation_statement(
    job_id: &str,
    round: u32,
    validator: &str,
    verdicts: &[Verdict],
) -> Vec<u8> {
    serde_json::to_vec(&(job_id, round, validator, verdicts)).unwrap_or_default()
}

/// One enrolled hospital: its name and what it reported about its data
/// (counts only; never a row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolledClient {
    pub name: String,
    pub rows: u64,
    /// Hex SHA-256 of its data-quality summary JSON as received.
    pub quality_summary_sha256: String,
}

impl Record {
    /// Seals each hospital's part of the entry (enrolment counts, update
    /// receipts), returning the record to sign and the openings to keep
    /// beside it. Records without such parts come back as they are.
    pub fn seal(mut self) -> Result<(Record, Vec<Opening>), SealError> {
        let openings = match &mut self {
            Record::ClientsEnrolled {
                participants,
                sealed_participants,
                ..
            } => seal_all(participants, sealed_participants, |c| &c.name)?,
            Record::RoundCompleted {
                updates,
                sealed_updates,
                ..
            } => seal_all(updates, sealed_updates, |u| &u.client)?,
            _ => Vec::new(),
        };
        Ok((self, openings))
    }

    /// Opens the sealed parts that `openings` open (after checking each
    /// against its commitment); parts without an opening stay sealed. An
    /// opening that opens nothing in this record is an error. The result is
    /// a reader's view: its signature is checked on the sealed form.
    pub fn unseal(&mut self, openings: &[Opening]) -> Result<(), SealError> {
        match self {
            Record::ClientsEnrolled {
                participants,
                sealed_participants,
                ..
            } => open_all(sealed_participants, participants, openings, |c| &c.name),
            Record::RoundCompleted {
                updates,
                sealed_updates,
                ..
            } => open_all(sealed_updates, updates, openings, |u| &u.client),
            _ => match openings.first() {
                Some(o) => Err(SealError::NoPart {
                    name: o.name.clone(),
                }),
                None => Ok(()),
            },
        }
    }

    /// How many hospitals' parts of this record are (still) sealed.
    pub fn sealed_parts(&self) -> usize {
        match self {
            Record::ClientsEnrolled {
                sealed_participants,
                ..
            } => sealed_participants.len(),
            Record::RoundCompleted { sealed_updates, .. } => sealed_updates.len(),
            _ => 0,
        }
    }

    /// The hospitals an enrolment names, open or sealed (empty for other
    /// records).
    pub fn enrolled_names(&self) -> Vec<&str> {
        match self {
            Record::ClientsEnrolled {
                participants,
                sealed_participants,
                ..
            } => participants
                .iter()
                .map(|c| c.name.as_str())
                .chain(sealed_participants.iter().map(|p| p.name.as_str()))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn job_id(&self) -> Option<&str> {
        match self {
            Record::CoordinatorKey { .. } => None,
            Record::JobCreated { job_id, .. }
            | Record::ClientsEnrolled { job_id, .. }
            | Record::RoundCompleted { job_id, .. }
            | Record::RoundValued { job_id, .. }
            | Record::RewardsPaid { job_id, .. }
            | Record::ValidatorsPaid { job_id, .. }
            | Record::ProofSetup { job_id, .. }
            | Record::Attestation { job_id, .. } => Some(job_id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub version: u32,
    /// RFC 3339 time the entry was made.
    pub at: String,
    pub record: Record,
    /// Hex of the signer's uncompressed P-256 public key.
    pub signer_key: String,
    /// Hex of the ASN.1 DER ECDSA signature.
    pub signature: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("entry is not valid JSON for a ledger entry: {0}")]
    Malformed(String),
    #[error("entry version {0} is not supported (this build reads {ENTRY_VERSION})")]
    Version(u32),
    #[error("entry signature does not verify: {0}")]
    Signature(String),
    #[error(transparent)]
    Sealed(#[from] SealError),
}

#[derive(Serialize)]
struct Signed<'a> {
    version: u32,
    at: &'a str,
    record: &'a Record,
}

fn signed_bytes(version: u32, at: &str, record: &Record) -> Result<Vec<u8>, EntryError> {
    serde_json::to_vec(&Signed {
        version,
        at,
        record,
    })
    .map_err(|e| EntryError::Malformed(e.to_string()))
}

impl Entry {
    pub fn sign(record: Record, at: String, key: &MessageSigningKey) -> Result<Self, EntryError> {
        let bytes = signed_bytes(ENTRY_VERSION, &at, &record)?;
        let signature = key
            .sign(SIGNATURE_CONTEXT, &bytes)
            .map_err(|e| EntryError::Signature(e.to_string()))?;
        Ok(Self {
            version: ENTRY_VERSION,
            at,
            record,
            signer_key: key.verifying_key().to_hex(),
            signature: hex::encode(signature),
        })
    }

    /// Checks the entry's own signature and returns the key that made it.
    pub fn verify(&self) -> Result<MessageVerifyingKey, EntryError> {
        if self.version != ENTRY_VERSION {
            return Err(EntryError::Version(self.version));
        }
        let key = MessageVerifyingKey::from_hex(&self.signer_key)
            .map_err(|e| EntryError::Signature(e.to_string()))?;
        let signature =
            hex::decode(&self.signature).map_err(|e| EntryError::Signature(e.to_string()))?;
        key.verify(
            SIGNATURE_CONTEXT,
            &signed_bytes(self.version, &self.at, &self.record)?,
            &signature,
        )
        .map_err(|e| EntryError::Signature(e.to_string()))?;
        Ok(key)
    }

    /// The canonical bytes that become the Merkle leaf.
    pub fn to_leaf(&self) -> Result<Vec<u8>, EntryError> {
        serde_json::to_vec(self).map_err(|e| EntryError::Malformed(e.to_string()))
    }

    /// Parses a stored leaf and opens the sealed parts `openings` open: a
    /// reader's view of the entry (verify the signature on the leaf).
    pub fn open(leaf: &[u8], openings: &[Opening]) -> Result<Self, EntryError> {
        let mut entry = Self::from_leaf(leaf)?;
        entry.record.unseal(openings)?;
        Ok(entry)
    }

    /// Parses a stored leaf; refuses bytes that are not exactly the
    /// canonical encoding of what they parse to.
    pub fn from_leaf(bytes: &[u8]) -> Result<Self, EntryError> {
        let entry: Entry =
            serde_json::from_slice(bytes).map_err(|e| EntryError::Malformed(e.to_string()))?;
        if entry.to_leaf()? != bytes {
            return Err(EntryError::Malformed(
                "not in canonical form (re-encoding differs)".into(),
            ));
        }
        Ok(entry)
    }
}
