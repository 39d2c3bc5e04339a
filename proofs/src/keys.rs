//! Groth16 keys for a statement over vectors of a given length, and their
//! wire form: the length (8 bytes, little-endian) then arkworks' canonical
//! serialization.

use ark_bn254::{Bn254, Fr};
use ark_groth16::Groth16;
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize, Compress, Validate};
use ark_snark::SNARK;
use sha2::{Digest, Sha256};

use crate::ProofError;
use crate::circuits::update_norm::UpdateNormCircuit;

/// Largest vector a key may be made for (10^8 entries).
pub const MAX_LEN: usize = 100_000_000;

#[derive(Clone)]
pub struct ProvingKey {
    pub(crate) len: usize,
    pub(crate) inner: ark_groth16::ProvingKey<Bn254>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VerifyingKey {
    pub(crate) len: usize,
    pub(crate) inner: ark_groth16::VerifyingKey<Bn254>,
}

/// Circuit-specific setup for the update-norm statement over `len`
/// entries, from operating-system randomness. Whoever runs it knows the
/// trapdoor: see ARCHITECTURE.md for who does and why.
pub fn setup_update_norm(len: usize) -> Result<(ProvingKey, VerifyingKey), ProofError> {
    if len == 0 || len > MAX_LEN {
        return Err(ProofError::Encoding(format!(
            "a proof key needs 1 to {MAX_LEN} entries, got {len}"
        )));
    }
    let circuit = UpdateNormCircuit {
        len,
        public: [Fr::from(0u64); 5],
        entries: None,
    };
    let (pk, vk) = Groth16::<Bn254>::circuit_specific_setup(circuit, &mut crate::ark_rng())?;
    Ok((
        ProvingKey { len, inner: pk },
        VerifyingKey { len, inner: vk },
    ))
}

fn encode(len: usize, value: &impl CanonicalSerialize, compress: Compress) -> Vec<u8> {
    let mut out = (len as u64).to_le_bytes().to_vec();
    value
        .serialize_with_mode(&mut out, compress)
        .expect("serializing into a Vec cannot fail");
    out
}

fn decode<T: CanonicalDeserialize>(
    bytes: &[u8],
    compress: Compress,
    validate: Validate,
) -> Result<(usize, T), ProofError> {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(ProofError::MalformedKey(format!(
            "{} bytes is too short for a key",
            bytes.len()
        )));
    };
    let len = u64::from_le_bytes(*len) as usize;
    if len == 0 || len > MAX_LEN {
        return Err(ProofError::MalformedKey(format!("key for {len} entries")));
    }
    let mut reader = rest;
    let value = T::deserialize_with_mode(&mut reader, compress, validate)
        .map_err(|e| ProofError::MalformedKey(e.to_string()))?;
    if !reader.is_empty() {
        return Err(ProofError::MalformedKey(format!(
            "{} trailing bytes",
            reader.len()
        )));
    }
    Ok((len, value))
}

impl ProvingKey {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            len: self.len,
            inner: self.inner.vk.clone(),
        }
    }

    /// Uncompressed: decompressing millions of points would cost the
    /// prover more than the transfer.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self.len, &self.inner, Compress::No)
    }

    /// Points are checked to be on the curve and in the subgroup; a key
    /// whose digest a job names is still only as good as its setup.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProofError> {
        let (len, inner) = decode(bytes, Compress::No, Validate::Yes)?;
        Ok(Self { len, inner })
    }

    /// [`ProvingKey::from_bytes`] without the points' checks (the G2
    /// subgroup checks take longer than the setup): only for bytes that
    /// passed [`ProvingKey::from_bytes`] before and whose digest the caller
    /// has just matched against the one recorded then.
    pub fn from_checked_bytes(bytes: &[u8]) -> Result<Self, ProofError> {
        let (len, inner) = decode(bytes, Compress::No, Validate::No)?;
        Ok(Self { len, inner })
    }
}

impl VerifyingKey {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self.len, &self.inner, Compress::Yes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProofError> {
        let (len, inner) = decode(bytes, Compress::Yes, Validate::Yes)?;
        Ok(Self { len, inner })
    }

    /// Hex SHA-256 of [`VerifyingKey::to_bytes`]: what the ledger records.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.to_bytes()))
    }
}

/// Hex SHA-256 of a key's bytes.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
