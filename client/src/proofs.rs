//! Update proofs (issue 16) on the hospital's side: fetching the job's
//! proving key (once per key), encoding the update on the job's grid and
//! proving it well formed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cohort_proofs::{Context, ProvingKey, UpdateProofTask, committed};
use cohort_protocol::v1::hospital_service_client::HospitalServiceClient;
use cohort_protocol::v1::{GetProvingKeyRequest, TaskHeader, TaskKind};
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::misbehave::Misbehave;
use crate::work::{Answer, Worker, parse};

/// The proving key of the job this client last proved for, in memory and,
/// with a data directory, in `DATA_DIR/proving-keys/SHA256.key`: checking a
/// downloaded key's points takes longer than the job's setup (101 s at 10^5
/// parameters), so a restarted hospital reads back the key it checked
/// before, matched by its digest, instead of fetching and checking it again.
#[derive(Default)]
pub struct KeyCache {
    last: Mutex<Option<(String, Arc<ProvingKey>)>>,
    dir: Option<PathBuf>,
}

impl KeyCache {
    pub fn new(data_dir: Option<&Path>) -> Self {
        Self {
            last: Mutex::new(None),
            dir: data_dir.map(|d| d.join("proving-keys")),
        }
    }

    fn get(&self, sha256: &str) -> Option<Arc<ProvingKey>> {
        let cached = self.last.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(digest, _)| digest == sha256)
            .map(|(_, key)| key.clone())
    }

    fn put(&self, sha256: String, key: Arc<ProvingKey>) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((sha256, key));
    }
}

/// The key with this digest as [`store_key`] left it in `dir`, if its bytes
/// still have that digest; a file that does not is removed.
fn stored_key(dir: &Path, sha256: &str) -> Option<ProvingKey> {
    // The digest comes from the coordinator's task: a file name only when
    // it is one.
    let is_digest = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_digest {
        return None;
    }
    let path = dir.join(format!("{sha256}.key"));
    let bytes = std::fs::read(&path).ok()?;
    let key = (cohort_proofs::keys::digest(&bytes) == sha256)
        .then(|| ProvingKey::from_checked_bytes(&bytes).ok())
        .flatten();
    if key.is_none() {
        warn!(
            path = %path.display(),
            "the stored proving key does not match its digest; removed, fetching it again"
        );
        let _ = std::fs::remove_file(&path);
    }
    key
}

/// Keeps `bytes` (a key that passed the full check) in `dir` as its only
/// key, written whole or not at all. Best effort: a hospital that cannot
/// write it fetches the key again after a restart.
fn store_key(dir: &Path, sha256: &str, bytes: &[u8]) {
    let name = format!("{sha256}.key");
    let partial = dir.join(format!(".{name}.partial"));
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        let mut file = std::fs::File::create(&partial)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        std::fs::rename(&partial, dir.join(&name))
    });
    if let Err(e) = written {
        warn!(dir = %dir.display(), "could not keep the proving key: {e}");
        let _ = std::fs::remove_file(&partial);
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy() != name {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Before a FIT task that asks for a proof: makes sure the proving key it
/// names is at hand, fetching it from the coordinator if not. Errors name
/// what went wrong; the task is then refused.
pub(crate) async fn ensure_proving_key(
    grpc: &mut HospitalServiceClient<Channel>,
    session_id: &str,
    task: &TaskHeader,
    cache: &KeyCache,
) -> Result<(), String> {
    if task.kind() != TaskKind::Fit || task.proofs_json.is_empty() {
        return Ok(());
    }
    let wanted: UpdateProofTask = parse(&task.proofs_json, "update-proof settings")?;
    // Proofs over commitments (secure aggregation) need no key.
    if wanted.statement != cohort_proofs::STATEMENT_UPDATE_NORM {
        return Ok(());
    }
    if cache.get(&wanted.proving_key_sha256).is_some() {
        return Ok(());
    }
    let stored = match cache.dir.clone() {
        Some(dir) => {
            let sha256 = wanted.proving_key_sha256.clone();
            tokio::task::spawn_blocking(move || stored_key(&dir, &sha256))
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    if let Some(key) = stored {
        info!(
            job = task.job_id,
            entries = key.len(),
            "proving key read back from the data directory"
        );
        cache.put(wanted.proving_key_sha256.clone(), Arc::new(key));
        return Ok(());
    }
    let mut stream = grpc
        .get_proving_key(GetProvingKeyRequest {
            session_id: session_id.to_string(),
            job_id: task.job_id.clone(),
        })
        .await
        .map_err(|s| format!("fetching the proving key: {}", s.message()))?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| format!("fetching the proving key: {}", s.message()))?
    {
        bytes.extend_from_slice(&chunk.data);
    }
    let digest = cohort_proofs::keys::digest(&bytes);
    if digest != wanted.proving_key_sha256 {
        return Err(format!(
            "the proving key served ({digest}) is not the one the task names ({})",
            wanted.proving_key_sha256
        ));
    }
    let dir = cache.dir.clone();
    let sha256 = digest.clone();
    let key = tokio::task::spawn_blocking(move || {
        let key = ProvingKey::from_bytes(&bytes)?;
        if let Some(dir) = dir {
            store_key(&dir, &sha256, &bytes);
        }
        Ok::<_, cohort_proofs::ProofError>(key)
    })
    .await
    .map_err(|e| format!("reading the proving key: {e}"))?
    .map_err(|e| format!("reading the proving key: {e}"))?;
    info!(
        job = task.job_id,
        entries = key.len(),
        "proving key fetched"
    );
    cache.put(digest, Arc::new(key));
    Ok(())
}

impl Worker {
    /// Who proves what, where: this hospital's update in `task`'s round.
    fn proof_context(&self, task: &TaskHeader) -> Context {
        Context {
            job_id: task.job_id.clone(),
            round: task.round,
            client: self.name().to_string(),
        }
    }

    /// A plain FIT answer with a proof: the update on the job's grid, and a
    /// proof that it is well formed for this job, round and hospital
    /// (Groth16 with the job's proving key, or Bulletproofs over the
    /// entries' unblinded commitments, as the task names). Under
    /// `--misbehave` the drill's update (and proof) instead.
    pub(crate) fn proved(
        &self,
        task: &TaskHeader,
        mut answer: Answer,
        wanted: &UpdateProofTask,
    ) -> Result<Answer, String> {
        let grid = wanted.grid;
        let context = self.proof_context(task);
        type Prover = Box<dyn Fn(&[i32]) -> Result<Vec<u8>, cohort_proofs::ProofError>>;
        let prove: Prover = if wanted.statement == cohort_proofs::STATEMENT_UPDATE_NORM {
            let key = self
                .proving_keys()
                .get(&wanted.proving_key_sha256)
                .ok_or("the proving key the task names was not fetched".to_string())?;
            Box::new(move |entries| {
                cohort_proofs::prove_update(&key, &context, &grid, entries).map(|p| p.proof)
            })
        } else if wanted.statement == committed::STATEMENT_COMMITTED_UPDATE_NORM {
            Box::new(move |entries| {
                let unblinded = vec![committed::Scalar::zero(); entries.len()];
                committed::prove(&context, grid.bound, entries, &unblinded).map(|u| u.proof)
            })
        } else {
            return Err(format!(
                "unknown update-proof statement `{}`",
                wanted.statement
            ));
        };
        let mut entries = grid
            .encode(&answer.parameters, &mut rand::rng())
            .map_err(|e| e.to_string())?;
        let misbehave = self.options().misbehave;
        let mut sent = grid.to_f32(&entries);
        if let Some(m) = misbehave.filter(|m| m.proves_tampered()) {
            m.tamper(&mut sent);
            entries = grid
                .nearest(&sent)
                .into_iter()
                .map(saturating_i32)
                .collect();
        }
        let proof = match prove(&entries) {
            Ok(proof) => proof,
            Err(e) if misbehave.is_some() => {
                warn!(
                    job = task.job_id,
                    round = task.round,
                    "drill: {e}; sending without a proof"
                );
                Vec::new()
            }
            Err(e) => return Err(format!("proving the update well formed: {e}")),
        };
        match misbehave {
            Some(Misbehave::Boost(f)) => sent.iter_mut().for_each(|v| *v *= f),
            Some(Misbehave::Forge) => {
                answer.header.update_proof = forged_proof();
            }
            _ => {}
        }
        if misbehave != Some(Misbehave::Forge) {
            answer.header.update_proof = proof;
        }
        answer.parameters = sent;
        Ok(answer)
    }
}

/// A hospital's update on the job's grid, as proved and as sent: the same
/// vector, except under `--misbehave`.
pub(crate) struct GridUpdate {
    /// What the proof speaks about.
    pub proved: Vec<i32>,
    /// What is committed to under secure aggregation, encrypted under
    /// homomorphic aggregation.
    pub sent: Vec<i64>,
}

/// Commitments and the proof about them.
pub(crate) struct Committed {
    pub commitments: Vec<committed::CompressedRistretto>,
    pub proof: Vec<u8>,
}

impl Worker {
    /// The trained update on the job's grid (`wanted`, which must ask for
    /// the committed statement), with the drill's tampering.
    pub(crate) fn grid_update(
        &self,
        trained: &crate::work::Trained,
        wanted: &UpdateProofTask,
        mode: &str,
    ) -> Result<GridUpdate, String> {
        if wanted.statement != committed::STATEMENT_COMMITTED_UPDATE_NORM {
            return Err(format!(
                "{mode} proves `{}`, the task asks for `{}`",
                committed::STATEMENT_COMMITTED_UPDATE_NORM,
                wanted.statement
            ));
        }
        if trained.delta.len() as u64 != wanted.parameter_count {
            return Err(format!(
                "the update has {} entries, the task proves {}",
                trained.delta.len(),
                wanted.parameter_count
            ));
        }
        let grid = wanted.grid;
        let honest = grid
            .encode(&trained.delta, &mut rand::rng())
            .map_err(|e| e.to_string())?;
        let misbehave = self.options().misbehave;
        let sent: Vec<i64> = match misbehave {
            Some(m) => {
                let mut sent = grid.to_f32(&honest);
                m.tamper(&mut sent);
                grid.nearest(&sent)
            }
            None => honest.iter().map(|&u| i64::from(u)).collect(),
        };
        let proved = if misbehave.is_some_and(|m| m.proves_tampered()) {
            sent.iter().copied().map(saturating_i32).collect()
        } else {
            honest
        };
        Ok(GridUpdate { proved, sent })
    }

    /// Commits to `proved` with `blindings` and proves
    /// it well formed for this job, round and hospital. A drill that cannot
    /// prove sends no proof; `forge` sends random bytes.
    pub(crate) fn commit_and_prove(
        &self,
        task: &TaskHeader,
        wanted: &UpdateProofTask,
        proved: &[i32],
        blindings: &[committed::Scalar],
    ) -> Result<Committed, String> {
        let context = self.proof_context(task);
        let misbehave = self.options().misbehave;
        let (commitments, mut proof) =
            match committed::prove(&context, wanted.grid.bound, proved, blindings) {
                Ok(update) => (update.commitments, update.proof),
                Err(e) if misbehave.is_some() => {
                    warn!(
                        job = task.job_id,
                        round = task.round,
                        "drill: {e}; sending without a proof"
                    );
                    let entries: Vec<i64> = proved.iter().map(|&u| i64::from(u)).collect();
                    (committed::commit(&entries, blindings), Vec::new())
                }
                Err(e) => return Err(format!("proving the update well formed: {e}")),
            };
        if misbehave == Some(Misbehave::Forge) {
            use rand::RngCore;
            proof = vec![0u8; proof.len().max(cohort_proofs::PROOF_BYTES)];
            rand::rng().fill_bytes(&mut proof);
        }
        Ok(Committed { commitments, proof })
    }

    /// A FIT answer under secure aggregation with update proofs: the
    /// update on the job's grid, committed entry by entry with this
    /// session's masks as blindings (`blindings`: canonical scalars from
    /// `ClientRound::blindings`), and a Bulletproofs proof that the
    /// commitments hold a well-formed update for this job, round and
    /// hospital. The commitments are the masked input; the update itself
    /// never leaves. Under `--misbehave` the drill's commitments (and
    /// proof): `boost` commits to the boosted update beside the honest
    /// update's proof.
    pub(crate) fn committed(
        &self,
        task: &TaskHeader,
        trained: &crate::work::Trained,
        blindings: &[[u8; 32]],
        wanted: &UpdateProofTask,
    ) -> Result<Answer, String> {
        if trained.delta.len() != blindings.len() {
            return Err(format!(
                "the update has {} entries, the task proves {}",
                trained.delta.len(),
                blindings.len()
            ));
        }
        let blindings = decode_blindings(blindings)?;
        let update = self.grid_update(trained, wanted, "secure aggregation")?;
        let Committed {
            mut commitments,
            proof,
        } = self.commit_and_prove(task, wanted, &update.proved, &blindings)?;
        if self.options().misbehave.is_some() {
            commitments = committed::commit(&update.sent, &blindings);
        }
        Ok(Answer {
            header: cohort_protocol::v1::ResultHeader {
                // Committed updates are averaged uniformly: the count stays home.
                num_examples: 0,
                parameter_count: commitments.len() as u64,
                train_loss: trained.loss,
                dataset_sha256: trained.commitment.clone(),
                dp_epsilon: trained.dp_epsilon.unwrap_or(0.0),
                update_proof: proof,
                ..Default::default()
            },
            parameters: Vec::new(),
            masked: committed::commitments_to_bytes(&commitments),
        })
    }
}

/// Blindings handed over as canonical scalar bytes (secure and homomorphic
/// aggregation make them with another build of the same curve library).
pub(crate) fn decode_blindings(bytes: &[[u8; 32]]) -> Result<Vec<committed::Scalar>, String> {
    bytes
        .iter()
        .map(|b| committed::blinding_from_bytes(*b))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// A drill's entry as the prover takes it (which refuses it if it is not
/// 16-bit).
pub(crate) fn saturating_i32(u: i64) -> i32 {
    u.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// 128 random bytes: the size of a real proof.
fn forged_proof() -> Vec<u8> {
    use rand::RngCore;
    let mut bytes = vec![0u8; cohort_proofs::PROOF_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_key_is_read_back_by_its_digest_and_a_tampered_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _) = cohort_proofs::keys::setup_update_norm(4).unwrap();
        let old_bytes = old.to_bytes();
        let old_digest = cohort_proofs::keys::digest(&old_bytes);
        store_key(dir.path(), &old_digest, &old_bytes);
        let (key, vk) = cohort_proofs::keys::setup_update_norm(8).unwrap();
        let bytes = key.to_bytes();
        let digest = cohort_proofs::keys::digest(&bytes);
        store_key(dir.path(), &digest, &bytes);

        let back = stored_key(dir.path(), &digest).expect("the stored key");
        assert_eq!(back.verifying_key(), vk);
        assert_eq!(back.to_bytes(), bytes);
        assert!(
            stored_key(dir.path(), &old_digest).is_none(),
            "only the last job's key is kept"
        );
        assert!(stored_key(dir.path(), "../../../etc/passwd").is_none());

        let path = dir.path().join(format!("{digest}.key"));
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        std::fs::write(&path, &tampered).unwrap();
        assert!(stored_key(dir.path(), &digest).is_none());
        assert!(!path.exists(), "a key that fails its digest is removed");
    }
}
