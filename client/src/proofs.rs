//! Update proofs (issue 16) on the hospital's side: fetching the job's
//! proving key (once per key), encoding the update on the job's grid and
//! proving it well formed.

use std::sync::{Arc, Mutex};

use cohort_proofs::{Context, ProvingKey, UpdateProofTask};
use cohort_protocol::v1::hospital_service_client::HospitalServiceClient;
use cohort_protocol::v1::{GetProvingKeyRequest, TaskHeader, TaskKind};
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::misbehave::Misbehave;
use crate::work::{Answer, Worker, parse};

/// The proving key of the job this client last proved for.
#[derive(Default)]
pub struct KeyCache(Mutex<Option<(String, Arc<ProvingKey>)>>);

impl KeyCache {
    fn get(&self, sha256: &str) -> Option<Arc<ProvingKey>> {
        let cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(digest, _)| digest == sha256)
            .map(|(_, key)| key.clone())
    }

    fn put(&self, sha256: String, key: Arc<ProvingKey>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((sha256, key));
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
    if cache.get(&wanted.proving_key_sha256).is_some() {
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
    let key = tokio::task::spawn_blocking(move || ProvingKey::from_bytes(&bytes))
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
    /// A plain FIT answer with a proof: the update on the job's grid, and a
    /// Groth16 proof that it is well formed for this job, round and
    /// hospital. Under `--misbehave` the drill's update (and proof) instead.
    pub(crate) fn proved(
        &self,
        task: &TaskHeader,
        mut answer: Answer,
        wanted: &UpdateProofTask,
    ) -> Result<Answer, String> {
        let key = self
            .proving_keys()
            .get(&wanted.proving_key_sha256)
            .ok_or("the proving key the task names was not fetched".to_string())?;
        let grid = wanted.grid;
        let mut entries = grid
            .encode(&answer.parameters, &mut rand::rng())
            .map_err(|e| e.to_string())?;
        let context = Context {
            job_id: task.job_id.clone(),
            round: task.round,
            client: self.name().to_string(),
        };
        let misbehave = self.options().misbehave;
        let mut sent = grid.to_f32(&entries);
        if let Some(m) = misbehave.filter(|m| m.proves_tampered()) {
            m.tamper(&mut sent);
            entries = sent
                .iter()
                .map(|v| (f64::from(*v) * 2f64.powi(grid.scale_log2)).round() as i32)
                .collect();
        }
        let proof = match cohort_proofs::prove_update(&key, &context, &grid, &entries) {
            Ok(p) => p.proof,
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

/// 128 random bytes: the size of a real proof.
fn forged_proof() -> Vec<u8> {
    use rand::RngCore;
    let mut bytes = vec![0u8; cohort_proofs::PROOF_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}
