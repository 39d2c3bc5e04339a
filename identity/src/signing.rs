//! Message and ledger signatures: ECDSA P-256 with SHA-256 (ring).
//!
//! Each member has a signing key separate from its TLS key, so that a
//! signature stays verifiable (on the ledger, years later) independently of
//! the TLS stack. Its public half is bound into the member's certificate
//! (see [`crate::principal`]). Signatures are domain-separated by a context
//! string, so a signature made for one purpose can never be replayed as
//! another.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};

use crate::IdentityError;

/// DER of SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING
/// header } that precedes the point in a P-256 SubjectPublicKeyInfo.
const SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Length of an uncompressed SEC1 P-256 point.
const PUBLIC_KEY_BYTES: usize = 65;

fn signed_bytes(context: &str, message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16 + context.len() + message.len());
    bytes.extend_from_slice(b"cohort-signature-v1\0");
    bytes.extend_from_slice(context.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(message);
    bytes
}

pub struct MessageSigningKey {
    pair: EcdsaKeyPair,
    pkcs8_pem: String,
}

impl std::fmt::Debug for MessageSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageSigningKey")
            .field("public", &self.verifying_key().to_hex())
            .finish_non_exhaustive()
    }
}

impl MessageSigningKey {
    pub fn generate() -> Result<Self, IdentityError> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Self::from_pem(&pair.serialize_pem())
    }

    /// Reads a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        let parsed = rcgen::KeyPair::from_pem(pem)
            .map_err(|e| IdentityError::Signature(format!("signing key: {e}")))?;
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            parsed.serialized_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| IdentityError::Signature(format!("signing key is not ECDSA P-256: {e}")))?;
        Ok(Self {
            pair,
            pkcs8_pem: pem.to_string(),
        })
    }

    pub fn to_pem(&self) -> &str {
        &self.pkcs8_pem
    }

    pub fn verifying_key(&self) -> MessageVerifyingKey {
        let mut point = [0u8; PUBLIC_KEY_BYTES];
        point.copy_from_slice(self.pair.public_key().as_ref());
        MessageVerifyingKey { point }
    }

    /// Reads the key at `path`, or creates one there (mode 600) if there is
    /// none: a coordinator without a startup kit still signs its ledger.
    pub fn load_or_create(path: &std::path::Path) -> Result<Self, IdentityError> {
        if path.exists() {
            crate::kit::check_private_permissions(path)?;
            let pem = std::fs::read_to_string(path).map_err(IdentityError::io(path))?;
            return Self::from_pem(&pem);
        }
        let key = Self::generate()?;
        crate::kit::write_private(path, key.to_pem().as_bytes())?;
        Ok(key)
    }

    /// ASN.1 DER ECDSA-SHA256 signature over `message` exactly, for
    /// standard formats that carry their own domain separation: C2SP signed
    /// notes (type 0x02; the checkpoint's first line names the log) and DSSE
    /// envelopes (the PAE encoding names the payload type). Everything else
    /// uses [`Self::sign`].
    pub fn sign_standard(&self, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
        self.pair
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| IdentityError::Signature(format!("signing failed: {e}")))
    }

    /// ASN.1 DER ECDSA signature over `message` for the purpose `context`.
    pub fn sign(&self, context: &str, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
        self.pair
            .sign(&SystemRandom::new(), &signed_bytes(context, message))
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| IdentityError::Signature(format!("signing failed: {e}")))
    }
}

/// The public half of a [`MessageSigningKey`]: an uncompressed P-256 point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageVerifyingKey {
    point: [u8; PUBLIC_KEY_BYTES],
}

impl MessageVerifyingKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let point: [u8; PUBLIC_KEY_BYTES] = bytes.try_into().map_err(|_| {
            IdentityError::Signature(format!(
                "a P-256 public key has {PUBLIC_KEY_BYTES} bytes, got {}",
                bytes.len()
            ))
        })?;
        if point[0] != 0x04 {
            return Err(IdentityError::Signature(
                "public key is not an uncompressed SEC1 point".into(),
            ));
        }
        Ok(Self { point })
    }

    pub fn from_hex(hex_text: &str) -> Result<Self, IdentityError> {
        let bytes = hex::decode(hex_text)
            .map_err(|e| IdentityError::Signature(format!("public key hex: {e}")))?;
        Self::from_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.point
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.point)
    }

    /// The key as DER SubjectPublicKeyInfo (what C2SP type-0x02 key IDs hash).
    pub fn spki_der(&self) -> Vec<u8> {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.point);
        der
    }

    /// Verifies a signature made by [`MessageSigningKey::sign_standard`].
    pub fn verify_standard(&self, message: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point)
            .verify(message, signature)
            .map_err(|_| IdentityError::Signature("signature does not verify".into()))
    }

    /// The key as PEM SubjectPublicKeyInfo, 64-character lines, LF endings
    /// (the form OpenSSL and Python's `cryptography` write).
    pub fn spki_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.spki_der());
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// Reads a PEM SubjectPublicKeyInfo of a P-256 key.
    pub fn from_spki_pem(pem: &str) -> Result<Self, IdentityError> {
        let parsed = rcgen::SubjectPublicKeyInfo::from_pem(pem)
            .map_err(|e| IdentityError::Signature(format!("public key PEM: {e}")))?;
        let der = rcgen::PublicKeyData::subject_public_key_info(&parsed);
        let point = der
            .strip_prefix(&SPKI_PREFIX[..])
            .ok_or_else(|| IdentityError::Signature("not an ECDSA P-256 public key".into()))?;
        Self::from_bytes(point)
    }

    pub fn verify(
        &self,
        context: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), IdentityError> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point)
            .verify(&signed_bytes(context, message), signature)
            .map_err(|_| {
                IdentityError::Signature(format!(
                    "signature does not verify for `{context}` under key {}…",
                    &self.to_hex()[..16]
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn signatures_verify_and_are_bound_to_context_and_message() {
        let key = MessageSigningKey::generate().unwrap();
        let public = key.verifying_key();
        let sig = key.sign("update", b"digest").unwrap();
        public.verify("update", b"digest", &sig).unwrap();
        assert!(public.verify("ledger", b"digest", &sig).is_err());
        assert!(public.verify("update", b"digesT", &sig).is_err());
        let reloaded = MessageSigningKey::from_pem(key.to_pem()).unwrap();
        assert_eq!(reloaded.verifying_key(), public);
        let other = MessageSigningKey::generate().unwrap().verifying_key();
        assert!(other.verify("update", b"digest", &sig).is_err());
    }

    #[test]
    fn spki_encoding_matches_rcgen_and_note_signatures_verify() {
        let key = MessageSigningKey::generate().unwrap();
        let rcgen_key = rcgen::KeyPair::from_pem(key.to_pem()).unwrap();
        let pem = rcgen_key.public_key_pem();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let public = key.verifying_key();
        assert_eq!(
            hex::encode(public.spki_der()),
            hex::encode(STANDARD.decode(b64).unwrap()),
        );
        let sig = key.sign_standard(b"origin\n1\nroot\n").unwrap();
        public.verify_standard(b"origin\n1\nroot\n", &sig).unwrap();
        assert!(public.verify_standard(b"origin\n2\nroot\n", &sig).is_err());
        assert_eq!(pem, public.spki_pem());
        assert_eq!(MessageVerifyingKey::from_spki_pem(&pem).unwrap(), public);
    }

    #[test]
    fn malformed_public_keys_are_rejected() {
        assert!(MessageVerifyingKey::from_bytes(&[4u8; 64]).is_err());
        assert!(MessageVerifyingKey::from_bytes(&[2u8; 65]).is_err());
        assert!(MessageVerifyingKey::from_hex("zz").is_err());
    }
}
