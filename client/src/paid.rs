//! The last update a hospital trained under differential privacy, kept
//! until the round it was trained for is over.
//!
//! A round that fails (a hospital died mid-upload, the coordinator was
//! restarted, too few hospitals answered) is retried from the same global
//! model. Training again would release a second noisy update of the same
//! records and spend the round's ε twice; sending the same update again is
//! post-processing and costs nothing. The update is therefore kept in
//! memory and, with a data directory, on the hospital's own disk
//! (`DATA_DIR/paid-update`, written atomically after the spending is
//! recorded), so that a hospital process that crashed and restarted
//! resends it instead of training again. It never leaves the hospital
//! except as the answer it was trained for. A crash in the few milliseconds
//! between recording the spending and writing this file costs the round
//! once more: charged twice, never released uncharged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::work::Trained;

pub(crate) struct PaidUpdate {
    path: Option<PathBuf>,
    last: Mutex<Option<(String, Trained)>>,
}

/// Everything of a DP update but its values, which follow as f32 LE.
#[derive(Serialize, Deserialize)]
struct Header {
    /// Job, round and the digest of the model the round started from.
    key: String,
    examples: u64,
    commitment: String,
    dp_epsilon: Option<f64>,
    client_level: Option<f64>,
}

impl PaidUpdate {
    pub fn new(data_dir: Option<&Path>) -> Self {
        Self {
            path: data_dir.map(|d| d.join("paid-update")),
            last: Mutex::new(None),
        }
    }

    /// The update paid for under `key`, if it is the last one.
    pub fn get(&self, key: &str) -> Option<Trained> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, trained)) = last.as_ref()
            && k == key
        {
            return Some(trained.clone());
        }
        drop(last);
        let trained = self.read(key)?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((key.into(), trained.clone()));
        Some(trained)
    }

    fn read(&self, key: &str) -> Option<Trained> {
        let bytes = std::fs::read(self.path.as_ref()?).ok()?;
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let header: Header = serde_json::from_slice(rest.get(..len)?).ok()?;
        if header.key != key {
            return None;
        }
        let delta = cohort_models::parameters_from_bytes(rest.get(len..)?).ok()?;
        Some(Trained {
            delta,
            examples: header.examples,
            loss: f64::NAN,
            commitment: header.commitment,
            dp_epsilon: header.dp_epsilon,
            client_level: header.client_level,
            train_metrics: None,
        })
    }

    /// Keeps `trained` as the update paid for under `key`.
    pub fn keep(&self, key: &str, trained: &Trained) -> Result<(), String> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((key.into(), trained.clone()));
        let Some(path) = &self.path else {
            return Ok(());
        };
        let header = serde_json::to_vec(&Header {
            key: key.into(),
            examples: trained.examples,
            commitment: trained.commitment.clone(),
            dp_epsilon: trained.dp_epsilon,
            client_level: trained.client_level,
        })
        .map_err(|e| e.to_string())?;
        let mut bytes = Vec::with_capacity(4 + header.len() + 4 * trained.delta.len());
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&cohort_models::parameters_to_bytes(&trained.delta));
        let write = || -> std::io::Result<()> {
            let staged = path.with_extension("partial");
            let mut file = std::fs::File::create(&staged)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&staged, path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| {
            format!(
                "could not keep the update already paid for in {}: {e}",
                path.display()
            )
        })
    }
}
