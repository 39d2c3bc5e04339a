//! Model signatures in the OpenSSF model-signing format (v1.0 predicate),
//! so that the `model_signing` tool verifies Cohort's models:
//! an in-toto Statement v1 listing every model file's SHA-256, in a DSSE
//! envelope signed with an ECDSA P-256 key, inside a Sigstore bundle
//! (v0.3, public-key verification material, no transparency-log entries).
//! The signature file sits in the model directory as `model.sig` and is
//! left out of the signed manifest, as the tool itself does.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cohort_identity::{MessageSigningKey, MessageVerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const SIGNATURE_FILE: &str = "model.sig";
const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// What the `files` serialization leaves out of a manifest.
const IGNORED: [&str; 5] = [
    ".git",
    ".gitignore",
    SIGNATURE_FILE,
    ".gitattributes",
    ".github",
];

#[derive(Debug, thiserror::Error)]
pub enum ModelSigningError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("signature file: {0}")]
    Format(String),
    #[error("the signature was made with another key (key hint {hint})")]
    WrongKey { hint: String },
    #[error("the signature does not verify under the given key")]
    BadSignature,
    #[error("{file}: {reason}")]
    FileMismatch { file: String, reason: String },
}

/// A model file and its digest, as the signature lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub name: String,
    pub algorithm: String,
    pub digest: String,
}

#[derive(Serialize, Deserialize)]
struct Subject {
    name: String,
    digest: SubjectDigest,
}

#[derive(Serialize, Deserialize)]
struct SubjectDigest {
    sha256: String,
}

#[derive(Serialize, Deserialize)]
struct Serialization {
    allow_symlinks: bool,
    hash_type: String,
    ignore_paths: Vec<String>,
    method: String,
}

#[derive(Serialize, Deserialize)]
struct Predicate {
    serialization: Serialization,
    resources: Vec<Resource>,
}

#[derive(Serialize, Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: Predicate,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    verification_material: VerificationMaterial,
    dsse_envelope: Envelope,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerificationMaterial {
    public_key: PublicKeyHint,
    #[serde(default)]
    tlog_entries: Vec<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct PublicKeyHint {
    #[serde(default)]
    hint: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeSignature {
    sig: String,
    #[serde(default)]
    keyid: String,
}

/// DSSE v1 pre-authentication encoding.
fn pae(payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {PAYLOAD_TYPE} {} ",
        PAYLOAD_TYPE.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// SHA-256 of the key's PEM, the hint the bundle carries.
fn key_hint(key: &MessageVerifyingKey) -> String {
    hex::encode(Sha256::digest(key.spki_pem().as_bytes()))
}

/// The model's files (sorted, signature and VCS files left out) with their
/// SHA-256.
pub fn model_resources(dir: &Path) -> Result<Vec<Resource>, ModelSigningError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ModelSigningError::Io { path, source }
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if IGNORED.contains(&name.as_str()) {
            continue;
        }
        let kind = entry.file_type().map_err(io(&entry.path()))?;
        if !kind.is_file() {
            return Err(ModelSigningError::FileMismatch {
                file: name,
                reason: "only regular files can be part of a signed model".into(),
            });
        }
        names.push(name);
    }
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            Ok(Resource {
                name,
                algorithm: "sha256".into(),
                digest: hex::encode(Sha256::digest(&bytes)),
            })
        })
        .collect()
}

/// Signs the model whose files are `resources` (see [`model_resources`]);
/// `model_name` is the directory's name. Returns the bundle's JSON.
pub fn sign_model(
    model_name: &str,
    resources: Vec<Resource>,
    key: &MessageSigningKey,
) -> Result<String, ModelSigningError> {
    let mut root = Sha256::new();
    for r in &resources {
        let digest =
            hex::decode(&r.digest).map_err(|e| ModelSigningError::Format(e.to_string()))?;
        root.update(digest);
    }
    let statement = Statement {
        kind: STATEMENT_TYPE.into(),
        subject: vec![Subject {
            name: model_name.into(),
            digest: SubjectDigest {
                sha256: hex::encode(root.finalize()),
            },
        }],
        predicate_type: PREDICATE_TYPE.into(),
        predicate: Predicate {
            serialization: Serialization {
                allow_symlinks: false,
                hash_type: "sha256".into(),
                ignore_paths: IGNORED.iter().map(|s| s.to_string()).collect(),
                method: "files".into(),
            },
            resources,
        },
    };
    let payload =
        serde_json::to_vec(&statement).map_err(|e| ModelSigningError::Format(e.to_string()))?;
    let signature = key
        .sign_standard(&pae(&payload))
        .map_err(|e| ModelSigningError::Format(e.to_string()))?;
    let bundle = Bundle {
        media_type: BUNDLE_MEDIA_TYPE.into(),
        verification_material: VerificationMaterial {
            public_key: PublicKeyHint {
                hint: key_hint(&key.verifying_key()),
            },
            tlog_entries: Vec::new(),
        },
        dsse_envelope: Envelope {
            payload: STANDARD.encode(&payload),
            payload_type: PAYLOAD_TYPE.into(),
            signatures: vec![EnvelopeSignature {
                sig: STANDARD.encode(signature),
                keyid: String::new(),
            }],
        },
    };
    serde_json::to_string_pretty(&bundle).map_err(|e| ModelSigningError::Format(e.to_string()))
}

/// Checks `dir`'s files against the bundle, and the bundle against `key`.
/// Returns the signed resources.
pub fn verify_model(
    dir: &Path,
    bundle_json: &str,
    key: &MessageVerifyingKey,
) -> Result<Vec<Resource>, ModelSigningError> {
    let format = |m: String| ModelSigningError::Format(m);
    let bundle: Bundle = serde_json::from_str(bundle_json).map_err(|e| format(e.to_string()))?;
    if bundle.media_type != BUNDLE_MEDIA_TYPE {
        return Err(format(format!(
            "unexpected media type `{}`",
            bundle.media_type
        )));
    }
    let hint = &bundle.verification_material.public_key.hint;
    if !hint.is_empty() && *hint != key_hint(key) {
        return Err(ModelSigningError::WrongKey { hint: hint.clone() });
    }
    let envelope = &bundle.dsse_envelope;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(format(format!(
            "unexpected payload type `{}`",
            envelope.payload_type
        )));
    }
    let payload = STANDARD
        .decode(&envelope.payload)
        .map_err(|e| format(format!("payload: {e}")))?;
    let [signature] = envelope.signatures.as_slice() else {
        return Err(format("expected exactly one signature".into()));
    };
    let signature = STANDARD
        .decode(&signature.sig)
        .map_err(|e| format(format!("signature: {e}")))?;
    key.verify_standard(&pae(&payload), &signature)
        .map_err(|_| ModelSigningError::BadSignature)?;
    let statement: Statement =
        serde_json::from_slice(&payload).map_err(|e| format(format!("statement: {e}")))?;
    if statement.kind != STATEMENT_TYPE || statement.predicate_type != PREDICATE_TYPE {
        return Err(format("not an OpenSSF model-signing v1.0 statement".into()));
    }
    let mut root = Sha256::new();
    for r in &statement.predicate.resources {
        root.update(hex::decode(&r.digest).map_err(|e| format(e.to_string()))?);
    }
    let [subject] = statement.subject.as_slice() else {
        return Err(format("expected exactly one subject".into()));
    };
    if subject.digest.sha256 != hex::encode(root.finalize()) {
        return Err(format(
            "the manifest's root digest does not match its files".into(),
        ));
    }
    let signed = statement.predicate.resources;
    let actual = model_resources(dir)?;
    for r in &signed {
        match actual.iter().find(|a| a.name == r.name) {
            None => {
                return Err(ModelSigningError::FileMismatch {
                    file: r.name.clone(),
                    reason: "signed but missing".into(),
                });
            }
            Some(a) if a.digest != r.digest => {
                return Err(ModelSigningError::FileMismatch {
                    file: r.name.clone(),
                    reason: format!("SHA-256 is {}, the signature says {}", a.digest, r.digest),
                });
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = actual
        .iter()
        .find(|a| !signed.iter().any(|r| r.name == a.name))
    {
        return Err(ModelSigningError::FileMismatch {
            file: extra.name.clone(),
            reason: "present but not covered by the signature".into(),
        });
    }
    Ok(signed)
}
