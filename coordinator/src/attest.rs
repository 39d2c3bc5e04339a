//! Validators' attestations of rounds with update proofs (issue 16): what
//! the coordinator accepts onto the ledger, and whether a round has the
//! attestations its job requires before its model is published.

use cohort_identity::{Principal, Role};
use cohort_ledger::{ATTESTATION_CONTEXT, Entry, Record, Verdict, attestation_statement};

use crate::ledger::Ledger;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("only validators attest rounds; this certificate names a {0}")]
    NotValidator(Role),
    #[error("attestations need mutual TLS: a validator is known by its certificate")]
    Anonymous,
    #[error("job `{job_id}` has no recorded round {round}")]
    NoSuchRound { job_id: String, round: u32 },
    #[error("malformed verdicts: {0}")]
    Malformed(String),
    #[error("the attestation's signature does not verify with the validator's certificate: {0}")]
    Signature(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every `attestation` entry of the ledger for `(job_id, round)`.
pub fn round_attestations(
    store: &Store,
    job_id: &str,
    round: u32,
) -> Result<Vec<Entry>, StoreError> {
    let contents = store.ledger()?;
    Ok(contents
        .leaves
        .iter()
        .filter_map(|leaf| Entry::from_leaf(leaf).ok())
        .filter(|e| {
            matches!(&e.record, Record::Attestation { job_id: j, round: r, .. }
                if j == job_id && *r == round)
        })
        .collect())
}

/// The distinct validators that attested every proof of the round valid.
pub fn approving_validators(
    store: &Store,
    job_id: &str,
    round: u32,
) -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = round_attestations(store, job_id, round)?
        .into_iter()
        .filter_map(|e| match e.record {
            Record::Attestation {
                validator,
                verdicts,
                ..
            } if verdicts.iter().all(|v| v.valid) => Some(validator),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Checks a validator's signed verdicts and appends them to the ledger;
/// returns the entry's index. A validator that attests a round again gets
/// the index of its earlier attestation.
pub fn accept(
    store: &Store,
    ledger: &Ledger,
    validator: Option<&Principal>,
    job_id: &str,
    round: u32,
    verdicts_json: &str,
    signature: &[u8],
) -> Result<u64, AttestError> {
    let principal = validator.ok_or(AttestError::Anonymous)?;
    if principal.role != Role::Validator {
        return Err(AttestError::NotValidator(principal.role));
    }
    if !store
        .rounds(job_id)?
        .iter()
        .any(|r| r.round == round && round > 0)
    {
        return Err(AttestError::NoSuchRound {
            job_id: job_id.to_string(),
            round,
        });
    }
    let verdicts: Vec<Verdict> =
        serde_json::from_str(verdicts_json).map_err(|e| AttestError::Malformed(e.to_string()))?;
    let statement = attestation_statement(job_id, round, &principal.name, &verdicts);
    principal
        .signing_key
        .verify(ATTESTATION_CONTEXT, &statement, signature)
        .map_err(|e| AttestError::Signature(e.to_string()))?;
    let contents = store.ledger()?;
    for (index, leaf) in contents.leaves.iter().enumerate() {
        if let Ok(Entry {
            record:
                Record::Attestation {
                    job_id: j,
                    round: r,
                    validator,
                    ..
                },
            ..
        }) = Entry::from_leaf(leaf)
            && j == job_id
            && r == round
            && validator == principal.name
        {
            return Ok(index as u64);
        }
    }
    let record = Record::Attestation {
        job_id: job_id.to_string(),
        round,
        validator: principal.name.clone(),
        verdicts,
        validator_certificate: hex::encode(&principal.certificate_der),
        validator_signature: hex::encode(signature),
    };
    // The round's validator pool is paid in the same transaction as the
    // attestation that completes its quorum, decided under the ledger's
    // lock so that two validators attesting at once cannot both settle it.
    let quorum = store
        .job(job_id)?
        .and_then(|job| crate::job::JobSpec::from_toml(&job.spec_toml).ok())
        .map_or(1, |spec| spec.proofs.min_validators.max(1));
    let index = ledger.append_all(
        store,
        |tx| {
            let earlier: Vec<Entry> = crate::store::read_ledger(tx)?
                .entries()
                .filter_map(|(_, entry)| entry.ok())
                .collect();
            let paid = crate::rewards::settle_validators(&earlier, &record, quorum);
            Ok(std::iter::once(record).chain(paid).collect())
        },
        // The attestation's index: the entries before it.
        |tx| {
            tx.query_one("SELECT COUNT(*) FROM ledger", &[])?
                .get::<u64>(0)
        },
    )?;
    Ok(index)
}
