//! Update proofs (issue 16) on the coordinator's side: the job's keys,
//! made once and kept with the job, and the check of each proof against
//! the update that actually arrived.

use std::sync::Arc;

use cohort_ledger::{ProofRecord, Record};
use cohort_proofs::committed::{self, RistrettoPoint, STATEMENT_COMMITTED_UPDATE_NORM};
use cohort_proofs::{
    Context, FixedPoint, STATEMENT_UPDATE_NORM, UpdateProofTask, VerifyingKey, hash,
};
use sha2::Digest as _;

use super::{RunError, Runner};
use crate::job::{JobSpec, ProofSystemName, SetupSource, UpdateProofs};
use crate::store::{JobRow, StoreError};

/// Object-store key of a job's proving key (served by
/// `HospitalService.GetProvingKey`).
pub fn proving_key_key(job_id: &str) -> String {
    format!(
        "jobs/{job_id}/proofs/{}.pk",
        STATEMENT_UPDATE_NORM.replace('/', "-")
    )
}

fn verifying_key_key(job_id: &str) -> String {
    format!(
        "jobs/{job_id}/proofs/{}.vk",
        STATEMENT_UPDATE_NORM.replace('/', "-")
    )
}

/// Object-store key of a hospital's committed update in a recorded round
/// (served by `DeveloperService.GetCommitments` to the job's readers).
pub fn commitments_key(job_id: &str, round: u32, client: &str) -> String {
    format!("jobs/{job_id}/rounds/{round:05}/commitments/{client}")
}

/// What a round needs to ask for and check update proofs.
pub struct UpdateProofKeys {
    pub task: UpdateProofTask,
    pub system: ProofSystem,
}

/// How the job's updates are proved, by aggregation mode.
pub enum ProofSystem {
    /// Plain aggregation: Groth16 over the update's Poseidon hash, with the
    /// job's verifying key.
    Groth16(Arc<VerifyingKey>),
    /// Secure aggregation: Bulletproofs over the Pedersen commitments that
    /// are the masked input (`cohort_proofs::committed`); no keys.
    Committed,
}

impl UpdateProofKeys {
    /// Bulletproofs over commitments: the generators are hashed from
    /// public labels, so there is no setup and nothing to record but the
    /// statement on each receipt.
    pub fn committed(grid: FixedPoint, n_params: usize) -> Self {
        Self {
            task: UpdateProofTask {
                statement: STATEMENT_COMMITTED_UPDATE_NORM.into(),
                grid,
                parameter_count: n_params as u64,
                proving_key_sha256: String::new(),
                verifying_key_sha256: String::new(),
            },
            system: ProofSystem::Committed,
        }
    }

    pub fn grid(&self) -> &FixedPoint {
        &self.task.grid
    }

    /// Checks that `proof` proves the update that arrived (`delta`) well
    /// formed for this job, round and hospital; returns what the round's
    /// record keeps of it and, under Bulletproofs, the commitments the proof
    /// is about (the update's entries, unblinded: a plain update hides
    /// nothing), which validators fetch to re-check it. The reason names
    /// what is wrong otherwise.
    pub fn check(
        &self,
        context: &Context,
        delta: &[f32],
        proof: &[u8],
    ) -> Result<(ProofRecord, Option<Vec<u8>>), String> {
        if proof.is_empty() {
            return Err("no proof of a well-formed update attached".into());
        }
        let grid = self.grid();
        let entries = grid
            .from_f32(delta)
            .map_err(|e| format!("update proof rejected: {e}"))?;
        let vk = match &self.system {
            ProofSystem::Groth16(vk) => vk,
            ProofSystem::Committed => {
                let commitments =
                    committed::commitments_to_bytes(&committed::commit_unblinded(&entries));
                let (record, _) = self.check_committed(context, &commitments, proof)?;
                return Ok((record, Some(commitments)));
            }
        };
        let update_hash = hash::update_hash(&entries);
        cohort_proofs::verify_update(vk, context, grid.bound, update_hash, proof)
            .map_err(|e| format!("update proof rejected: {e}"))?;
        Ok((
            ProofRecord {
                statement: STATEMENT_UPDATE_NORM.into(),
                bound: grid.bound,
                update_hash: hash::to_hex(&update_hash),
                proof: hex::encode(proof),
            },
            None,
        ))
    }

    /// Checks that `proof` proves the committed update that arrived
    /// (`commitments`, the hospital's masked input) well formed for this
    /// job, round and hospital. Returns the record for the update's receipt
    /// and the commitments as points, to add into the round's sum.
    pub fn check_committed(
        &self,
        context: &Context,
        commitments: &[u8],
        proof: &[u8],
    ) -> Result<(ProofRecord, Vec<RistrettoPoint>), String> {
        let rejected = |e: cohort_proofs::ProofError| format!("update proof rejected: {e}");
        if proof.is_empty() {
            return Err("no proof of a well-formed update attached".into());
        }
        let parsed = committed::commitments_from_bytes(commitments).map_err(rejected)?;
        if parsed.len() as u64 != self.task.parameter_count {
            return Err(format!(
                "{} commitments, the model has {} parameters",
                parsed.len(),
                self.task.parameter_count
            ));
        }
        let points = committed::decompress(&parsed).map_err(rejected)?;
        // Linear in the update (1.3 s at 10^4 parameters): on a
        // multi-threaded runtime the worker hands its other tasks over
        // while it verifies.
        let verify = || committed::verify(context, self.grid().bound, &parsed, proof);
        let verified = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(verify)
            }
            _ => verify(),
        };
        verified.map_err(rejected)?;
        Ok((
            ProofRecord {
                statement: STATEMENT_COMMITTED_UPDATE_NORM.into(),
                bound: self.grid().bound,
                update_hash: hex::encode(sha2::Sha256::digest(commitments)),
                proof: hex::encode(proof),
            },
            points,
        ))
    }
}

impl UpdateProofKeys {
    /// [`UpdateProofKeys::check`] of an arriving update: its record goes
    /// on the update's receipt, and under Bulletproofs the commitments to
    /// keep for validators are returned; an update without a valid proof
    /// is left out, noted in `excluded`, and the reason returned.
    pub(crate) fn admit(
        &self,
        context: Context,
        delta: &[f32],
        proof: &[u8],
        receipt: &mut crate::store::UpdateReceipt,
        excluded: &mut Vec<cohort_ledger::Exclusion>,
    ) -> Result<Option<Vec<u8>>, String> {
        let client = context.client.clone();
        match self.check(&context, delta, proof) {
            Ok((record, commitments)) => {
                receipt.proof = Some(record);
                Ok(commitments)
            }
            Err(reason) => {
                excluded.push(cohort_ledger::Exclusion {
                    client,
                    reason: reason.clone(),
                });
                Err(reason)
            }
        }
    }
}

impl Runner {
    /// Keeps, for validators (`GetCommitments`), the commitments that the
    /// proofs of the round's accepted updates speak about: those in `kept`
    /// whose hospital is among `participants`.
    pub(super) async fn keep_commitments(
        &self,
        job_id: &str,
        round: u32,
        kept: Vec<(String, Vec<u8>)>,
        participants: &[String],
    ) -> Result<(), StoreError> {
        for (client, commitments) in kept {
            if participants.contains(&client) {
                self.store
                    .put_object(&commitments_key(job_id, round, &client), commitments)
                    .await?;
            }
        }
        Ok(())
    }

    /// The job's update-proof keys: loaded from the store, or made now for
    /// `n_params` entries, stored, and the verifying key recorded on the
    /// ledger. `None` when the job asks for no proofs.
    pub(super) async fn update_proof_keys(
        &self,
        job: &JobRow,
        spec: &JobSpec,
        n_params: usize,
    ) -> Result<Option<UpdateProofKeys>, RunError> {
        if spec.proofs.update == UpdateProofs::Off {
            return Ok(None);
        }
        let failed = |e: String| RunError::Failed(format!("update proofs: {e}"));
        let grid = spec.update_grid().map_err(|e| failed(e.to_string()))?;
        if spec.proof_system() == ProofSystemName::Bulletproofs {
            return Ok(Some(UpdateProofKeys::committed(grid, n_params)));
        }
        let stored = match (
            self.store.get_object(&proving_key_key(&job.id)).await,
            self.store.get_object(&verifying_key_key(&job.id)).await,
        ) {
            (Ok(pk), Ok(vk)) => Some((pk.to_vec(), vk.to_vec())),
            _ => None,
        };
        let (pk_bytes, vk) = match stored {
            Some((pk, vk)) => {
                let vk = VerifyingKey::from_bytes(&vk)
                    .map_err(|e| failed(format!("stored verifying key: {e}")))?;
                (pk, vk)
            }
            None => {
                let from_ceremony = spec.proofs.setup == Some(SetupSource::Ceremony);
                let ceremonies = self.ceremonies.clone();
                tracing::info!(
                    job = job.id,
                    n_params,
                    from_ceremony,
                    "making the job's update-proof keys"
                );
                let (pk, vk, ceremony) = tokio::task::spawn_blocking(move || {
                    if from_ceremony {
                        ceremonies
                            .keys_for(n_params)
                            .map(|k| (k.proving, k.verifying, Some(k.record)))
                            .map_err(|e| e.to_string())
                    } else {
                        cohort_proofs::keys::setup_update_norm(n_params)
                            .map(|(pk, vk)| (pk, vk, None))
                            .map_err(|e| e.to_string())
                    }
                })
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(failed)?;
                let pk = pk.to_bytes();
                // The verifying key's object is written last: a crash
                // before it makes the next start set up again.
                self.store
                    .put_object(&proving_key_key(&job.id), pk.clone())
                    .await?;
                let record = Record::ProofSetup {
                    job_id: job.id.clone(),
                    statement: STATEMENT_UPDATE_NORM.into(),
                    parameter_count: n_params as u64,
                    verifying_key: hex::encode(vk.to_bytes()),
                    verifying_key_sha256: vk.sha256(),
                    ceremony,
                };
                self.ledger.append(&self.store, record, |_| Ok(()))?;
                self.store
                    .put_object(&verifying_key_key(&job.id), vk.to_bytes())
                    .await?;
                (pk, vk)
            }
        };
        if vk.len() != n_params {
            return Err(failed(format!(
                "the stored keys are for {} parameters, the model has {n_params}",
                vk.len()
            )));
        }
        Ok(Some(UpdateProofKeys {
            task: UpdateProofTask {
                statement: STATEMENT_UPDATE_NORM.into(),
                grid,
                parameter_count: n_params as u64,
                proving_key_sha256: cohort_proofs::keys::digest(&pk_bytes),
                verifying_key_sha256: vk.sha256(),
            },
            system: ProofSystem::Groth16(Arc::new(vk)),
        }))
    }
}
