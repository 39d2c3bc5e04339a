//! Checkpoints as C2SP signed notes (<https://c2sp.org/signed-note>) with
//! signature type 0x02: ECDSA P-256, key ID = the first four bytes of
//! SHA-256 over the key's DER SubjectPublicKeyInfo, signature = ASN.1 DER
//! ECDSA-SHA256 over the note text (the checkpoint body).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cohort_identity::{MessageSigningKey, MessageVerifyingKey};
use sha2::{Digest, Sha256};

use crate::checkpoint::Checkpoint;

#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("signed note: {0}")]
    Format(String),
    #[error("no signature by `{0}` with the expected key verifies")]
    NotSigned(String),
}

fn key_id(key: &MessageVerifyingKey) -> [u8; 4] {
    let digest = Sha256::digest(key.spki_der());
    [digest[0], digest[1], digest[2], digest[3]]
}

/// Signs `checkpoint` as `key_name`.
pub fn sign_checkpoint(
    checkpoint: &Checkpoint,
    key_name: &str,
    key: &MessageSigningKey,
) -> Result<String, NoteError> {
    if key_name.is_empty() || key_name.contains(char::is_whitespace) || key_name.contains('+') {
        return Err(NoteError::Format(format!("bad key name `{key_name}`")));
    }
    let body = checkpoint.to_body()?;
    let signature = key
        .sign_standard(body.as_bytes())
        .map_err(|e| NoteError::Format(e.to_string()))?;
    let mut blob = key_id(&key.verifying_key()).to_vec();
    blob.extend_from_slice(&signature);
    Ok(format!(
        "{body}\n\u{2014} {key_name} {}\n",
        STANDARD.encode(blob)
    ))
}

/// Parses a signed checkpoint and checks that `key_name` with `key` signed
/// it (signatures by other keys are ignored, as the format requires).
pub fn verify_checkpoint(
    note: &str,
    key_name: &str,
    key: &MessageVerifyingKey,
) -> Result<Checkpoint, NoteError> {
    let (body, signatures) = note
        .split_once("\n\n")
        .ok_or_else(|| NoteError::Format("no blank line before the signatures".into()))?;
    let body = format!("{body}\n");
    let checkpoint = Checkpoint::parse_body(&body)?;
    let wanted_id = key_id(key);
    for line in signatures.lines() {
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or_else(|| NoteError::Format(format!("malformed signature line `{line}`")))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| NoteError::Format(format!("malformed signature line `{line}`")))?;
        let blob = STANDARD
            .decode(b64)
            .map_err(|e| NoteError::Format(format!("signature base64: {e}")))?;
        if name != key_name || blob.len() < 4 || blob[..4] != wanted_id {
            continue;
        }
        return key
            .verify_standard(body.as_bytes(), &blob[4..])
            .map(|()| checkpoint)
            .map_err(|_| NoteError::NotSigned(key_name.to_string()));
    }
    Err(NoteError::NotSigned(key_name.to_string()))
}
