//! The operator's Ethereum account: a secp256k1 private key kept in a file
//! (`--evm-key FILE`), signing with libsecp256k1.

use std::path::Path;

use alloy_primitives::{Address, B256, Signature, U256, keccak256};
use secp256k1::{Message, PublicKey, Secp256k1, SecretKey, SignOnly};

use crate::EvmError;

/// A private key and the account address it controls.
pub struct EvmKey {
    secret: SecretKey,
    address: Address,
    context: Secp256k1<SignOnly>,
}

impl std::fmt::Debug for EvmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmKey")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl EvmKey {
    /// Reads a key file: 32 bytes as 64 hex digits, `0x` optional,
    /// surrounding whitespace ignored (the form `cast wallet` and Hardhat
    /// print).
    pub fn from_file(path: &Path) -> Result<Self, EvmError> {
        let bad = |reason: String| EvmError::Key {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let key = Self::from_hex(&text).map_err(bad)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    key = %path.display(),
                    "the EVM key file is readable by other users; `chmod 600` it"
                );
            }
        }
        Ok(key)
    }

    /// Parses a hex private key (the error never repeats the input).
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let digits = text.strip_prefix("0x").unwrap_or(text);
        if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "expected a secp256k1 private key as 64 hex digits (optionally 0x-prefixed), found {} characters",
                text.chars().count()
            ));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(digits, &mut bytes).map_err(|e| e.to_string())?;
        let secret = SecretKey::from_byte_array(bytes)
            .map_err(|_| "not a valid secp256k1 private key (zero or not below the curve order)")?;
        let context = Secp256k1::signing_only();
        let public = PublicKey::from_secret_key(&context, &secret).serialize_uncompressed();
        // The address is the last 20 bytes of keccak256 of the public key's
        // 64 coordinate bytes.
        let address = Address::from_slice(&keccak256(&public[1..])[12..]);
        Ok(Self {
            secret,
            address,
            context,
        })
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// An Ethereum signature over a 32-byte hash: low-s (libsecp256k1 only
    /// makes those) with its recovery parity.
    pub fn sign_hash(&self, hash: B256) -> Signature {
        let signature = self
            .context
            .sign_ecdsa_recoverable(Message::from_digest(hash.0), &self.secret);
        let (id, compact) = signature.serialize_compact();
        Signature::new(
            U256::from_be_slice(&compact[..32]),
            U256::from_be_slice(&compact[32..]),
            i32::from(id) == 1,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardhat's first development account (publicly known; never fund it
    /// on a real chain).
    pub const HARDHAT_KEY: &str =
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    #[test]
    fn address_from_a_known_key() {
        let key = EvmKey::from_hex(HARDHAT_KEY).unwrap();
        assert_eq!(
            key.address().to_string(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
        let again = EvmKey::from_hex(&format!("  {}\n", &HARDHAT_KEY[2..])).unwrap();
        assert_eq!(again.address(), key.address());
        assert!(!format!("{key:?}").contains("ac0974"));
    }

    #[test]
    fn signatures_recover_to_the_address() {
        let key = EvmKey::from_hex(HARDHAT_KEY).unwrap();
        let hash = keccak256(b"cohort");
        let signature = key.sign_hash(hash);
        let mut compact = [0u8; 64];
        compact[..32].copy_from_slice(&signature.r().to_be_bytes::<32>());
        compact[32..].copy_from_slice(&signature.s().to_be_bytes::<32>());
        let id = secp256k1::ecdsa::RecoveryId::try_from(i32::from(signature.v())).unwrap();
        let recoverable =
            secp256k1::ecdsa::RecoverableSignature::from_compact(&compact, id).unwrap();
        let public = Secp256k1::verification_only()
            .recover_ecdsa(Message::from_digest(hash.0), &recoverable)
            .unwrap()
            .serialize_uncompressed();
        assert_eq!(
            Address::from_slice(&keccak256(&public[1..])[12..]),
            key.address()
        );
        // Low s, as EIP-2 requires.
        let half_n = U256::from_str_radix(
            "7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0",
            16,
        )
        .unwrap();
        assert!(signature.s() <= half_n);
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        for bad in ["", "0x1234", &"g".repeat(64), &"0".repeat(64)] {
            let err = EvmKey::from_hex(bad).err().unwrap();
            assert!(bad.len() < 8 || !err.contains(bad), "{err}");
        }
        let dir = std::env::temp_dir().join(format!("cohort-evm-key-{}", std::process::id()));
        let err = EvmKey::from_file(&dir.join("missing")).unwrap_err();
        assert!(err.to_string().contains("--evm-key"), "{err}");
    }
}
