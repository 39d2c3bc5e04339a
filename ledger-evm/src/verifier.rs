//! The update-proof verifier (`contracts/CohortUpdateVerifier.sol`): one
//! deployment per job, holding the job's Groth16 verifying key, that checks
//! a hospital's update proof on chain through the BN254 precompiles.

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_sol_types::{SolCall, SolConstructor as _};

use crate::contract::deploy_code;
use crate::key::EvmKey;
use crate::rpc::Rpc;
use crate::{Deployment, EvmError};

alloy_sol_types::sol! {
    /// Cohort's update-proof verifier, as its compiled ABI describes it.
    interface ICohortUpdateVerifier {
        error NoPublicInputs();
        error WrongInputCount(uint256 expected, uint256 given);

        function INTERFACE_ID() external view returns (bytes32);
        function interfaceId() external pure returns (bytes32);
        function publicInputs() external view returns (uint256);
        function verifyProof(uint256[2] calldata a, uint256[4] calldata b, uint256[2] calldata c, uint256[] calldata input) external view returns (bool);
    }

    contract CohortUpdateVerifierDeploy {
        constructor(uint256[2] alpha, uint256[4] beta, uint256[4] gamma, uint256[4] delta, uint256[2][] ic);
    }
}

use ICohortUpdateVerifier as V;

/// The committed solc output of `contracts/CohortUpdateVerifier.sol`.
pub const VERIFIER_ARTIFACT_JSON: &str = include_str!("../contracts/CohortUpdateVerifier.json");

/// The contract's Solidity source, as compiled into [`VERIFIER_ARTIFACT_JSON`].
pub const VERIFIER_SOURCE: &str = include_str!("../contracts/CohortUpdateVerifier.sol");

/// What `interfaceId()` returns: keccak256("cohort.update-verifier.v1").
pub fn verifier_interface_id() -> B256 {
    keccak256(b"cohort.update-verifier.v1")
}

/// A Groth16 verifying key as the contract takes it: G1 `[x, y]`, G2
/// `[x.c1, x.c0, y.c1, y.c0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKeyWords {
    pub alpha: [U256; 2],
    pub beta: [U256; 4],
    pub gamma: [U256; 4],
    pub delta: [U256; 4],
    pub ic: Vec<[U256; 2]>,
}

/// A proof and its public inputs as `verifyProof` takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofWords {
    pub a: [U256; 2],
    pub b: [U256; 4],
    pub c: [U256; 2],
    pub inputs: Vec<U256>,
}

/// A 256-bit word from decimal text.
pub fn word(text: &str) -> Result<U256, EvmError> {
    U256::from_str_radix(text, 10).map_err(|e| EvmError::BadAnswer {
        method: "verifier key",
        reason: format!("`{text}` is not a 256-bit decimal: {e}"),
    })
}

/// Init code of a verifier for `vk`.
pub fn verifier_init_code(vk: &VerifierKeyWords) -> Result<Vec<u8>, String> {
    #[derive(serde::Deserialize)]
    struct Artifact {
        bytecode: String,
    }
    let artifact: Artifact = serde_json::from_str(VERIFIER_ARTIFACT_JSON)
        .map_err(|e| format!("the embedded verifier artifact is not valid: {e}"))?;
    let mut code = hex::decode(artifact.bytecode.trim_start_matches("0x"))
        .map_err(|e| format!("the embedded verifier bytecode is not hex: {e}"))?;
    code.extend(
        CohortUpdateVerifierDeploy::constructorCall {
            alpha: vk.alpha,
            beta: vk.beta,
            gamma: vk.gamma,
            delta: vk.delta,
            ic: vk.ic.clone(),
        }
        .abi_encode(),
    );
    Ok(code)
}

/// Deploys a verifier holding `vk` from `key`'s account.
pub async fn deploy_update_verifier(
    rpc_url: &str,
    key: &EvmKey,
    vk: &VerifierKeyWords,
) -> Result<Deployment, EvmError> {
    let code = verifier_init_code(vk).map_err(|reason| EvmError::BadAnswer {
        method: "deploy",
        reason,
    })?;
    deploy_code(rpc_url, key, code, "deploying the update-proof verifier").await
}

/// A deployed update-proof verifier.
pub struct UpdateVerifierContract {
    rpc: Rpc,
    address: Address,
}

impl UpdateVerifierContract {
    pub fn new(rpc_url: &str, address: &str) -> Result<Self, EvmError> {
        Ok(Self {
            rpc: Rpc::new(rpc_url)?,
            address: crate::parse_address(address)?,
        })
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// Checks that Cohort's verifier is at the address; returns how many
    /// public inputs its key has.
    pub async fn check_deployed(&self) -> Result<u64, EvmError> {
        let chain_id = self.rpc.chain_id().await?;
        if self.rpc.code(self.address).await?.is_empty() {
            return Err(EvmError::NoContract {
                address: self.address,
                chain_id,
            });
        }
        let wrong = |reason: &str| EvmError::WrongContract {
            address: self.address,
            chain_id,
            reason: reason.to_string(),
        };
        let call = V::interfaceIdCall {}.abi_encode();
        let id = match self.rpc.eth_call(self.address, &call).await? {
            Ok(out) => V::interfaceIdCall::abi_decode_returns(&out).ok(),
            Err(_) => None,
        };
        if id != Some(verifier_interface_id()) {
            return Err(wrong("its interfaceId() is not Cohort's update verifier's"));
        }
        let call = V::publicInputsCall {}.abi_encode();
        let out = self
            .rpc
            .eth_call(self.address, &call)
            .await?
            .map_err(|_| wrong("publicInputs() reverted"))?;
        let n = V::publicInputsCall::abi_decode_returns(&out)
            .map_err(|_| wrong("publicInputs() does not decode"))?;
        Ok(n.saturating_to::<u64>())
    }

    /// The contract's verdict on `proof`, and the gas a transaction calling
    /// it would use.
    pub async fn verify(&self, proof: &ProofWords) -> Result<(bool, u64), EvmError> {
        let call = V::verifyProofCall {
            a: proof.a,
            b: proof.b,
            c: proof.c,
            input: proof.inputs.clone(),
        }
        .abi_encode();
        let refused = |revert: Vec<u8>| EvmError::Refused {
            what: "verifyProof()".into(),
            reason: crate::abi::describe_revert(&revert),
            conflict: false,
        };
        let out = self
            .rpc
            .eth_call(self.address, &call)
            .await?
            .map_err(refused)?;
        let valid =
            V::verifyProofCall::abi_decode_returns(&out).map_err(|e| EvmError::BadAnswer {
                method: "eth_call",
                reason: format!("verifyProof answered bytes that do not decode: {e}"),
            })?;
        let gas = self
            .rpc
            .estimate_gas(Address::ZERO, Some(self.address), &call)
            .await?
            .map_err(|node| EvmError::Refused {
                what: "verifyProof()".into(),
                reason: node.message,
                conflict: false,
            })?;
        Ok((valid, gas))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn interface_matches_the_compiled_abi() {
        let [functions, errors, _] = crate::compiled_selectors(VERIFIER_ARTIFACT_JSON);
        let ours: BTreeSet<Vec<u8>> = V::ICohortUpdateVerifierCalls::SELECTORS
            .iter()
            .map(|s| s.to_vec())
            .collect();
        assert_eq!(ours, functions);
        let ours: BTreeSet<Vec<u8>> = V::ICohortUpdateVerifierErrors::SELECTORS
            .iter()
            .map(|s| s.to_vec())
            .collect();
        assert_eq!(ours, errors);
        assert!(VERIFIER_SOURCE.contains("keccak256(\"cohort.update-verifier.v1\")"));
        assert!(word("12").is_ok() && word("0x12").is_err());
    }
}
