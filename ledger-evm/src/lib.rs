//! Cohort's ledger on an EVM chain.
//!
//! The embedded log (`cohort-ledger`) stays the record; this crate anchors
//! it where its operator cannot quietly rewrite it: every entry's RFC 9162
//! leaf hash, at its index, and the Merkle root at the tree sizes the
//! coordinator anchors, go to a small contract
//! (`contracts/CohortLedgerAnchor.sol`) that only its deployer can append
//! to, in order, and that anyone can read back.
//!
//! - [`deploy`]: puts the contract on a chain (`cohort ledger deploy`);
//! - [`AnchorWriter`]: the coordinator's [`cohort_ledger::Anchor`] (it
//!   appends entries and checkpoints);
//! - [`AnchorContract`]: what a validator reads (`cohort verify ledger
//!   --rpc-url URL --contract ADDR`);
//! - [`rewards`]: the ERC-20 rewards token whose halving-capped
//!   distributions pay the ledger's payouts (`cohort rewards deploy |
//!   publish | claim`);
//! - [`verifier`]: a job's Groth16 update-proof verifier on chain (`cohort
//!   proof onchain`).
//!
//! alloy provides the ABI (`sol!`) and the transaction types; JSON-RPC goes
//! over plain HTTP (or HTTPS with the system's roots) through reqwest, and
//! transactions are signed with libsecp256k1, because alloy's provider and
//! signer crates would change features of crates under polars and burn.

pub mod abi;
mod contract;
mod key;
pub mod rewards;
mod rpc;
pub mod verifier;

pub use alloy_primitives::{Address, B256, U256};
pub use contract::{AnchorContract, AnchorWriter, deploy, parse_address};
pub use key::EvmKey;
pub use rewards::{PayoutTree, RewardsContract, deploy_rewards, payout_leaf};
pub use rpc::Receipt;
pub use verifier::{ProofWords, UpdateVerifierContract, VerifierKeyWords, deploy_update_verifier};

/// A contract just deployed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployment {
    #[serde(serialize_with = "as_text")]
    pub address: Address,
    pub chain_id: u64,
    /// The account that deployed it: the only one that may append.
    #[serde(serialize_with = "as_text")]
    pub owner: Address,
    #[serde(serialize_with = "as_text")]
    pub transaction: B256,
    pub block: u64,
    pub gas_used: u64,
}

/// alloy's types print as 0x-hex (addresses with their EIP-55 checksum);
/// its serde support would switch on features elsewhere in the graph.
fn as_text<T: std::fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

#[derive(Debug, thiserror::Error)]
pub enum EvmError {
    #[error("cannot reach the EVM node at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the EVM node at {url} answered {method} with an error: {message}")]
    Node {
        url: String,
        method: &'static str,
        message: String,
    },
    #[error("unexpected answer from the EVM node to {method}: {reason}")]
    BadAnswer {
        method: &'static str,
        reason: String,
    },
    #[error(
        "no contract at {address} on chain {chain_id}: wrong --contract, or the wrong chain (a development node forgets its contracts when restarted)"
    )]
    NoContract { address: Address, chain_id: u64 },
    #[error(
        "the contract at {address} on chain {chain_id} is not Cohort's ledger anchor: {reason}"
    )]
    WrongContract {
        address: Address,
        chain_id: u64,
        reason: String,
    },
    #[error(
        "the anchor contract {contract} belongs to {owner}, which deployed it, but --evm-key is the key of {key}: only the owner may append"
    )]
    NotOwner {
        contract: Address,
        owner: Address,
        key: Address,
    },
    #[error("account {account} holds {balance} wei{}: fund it, or use another --evm-key", funds_detail(.needed, .what))]
    InsufficientFunds {
        account: Address,
        balance: U256,
        needed: Option<U256>,
        what: String,
    },
    #[error("the anchor contract refused {what}: {reason}")]
    Refused {
        what: String,
        reason: String,
        /// Another append got to the index first.
        conflict: bool,
    },
    #[error("{what}: transaction {transaction} was mined but reverted")]
    Reverted { what: String, transaction: B256 },
    #[error("{what}: transaction {transaction} was not mined within {secs} s")]
    NotMined {
        what: String,
        transaction: B256,
        secs: u64,
    },
    #[error("--evm-key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("`{text}` is not a contract address: {reason}")]
    BadAddress { text: String, reason: String },
    #[error("--rpc-url `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
}

fn funds_detail(needed: &Option<U256>, what: &str) -> String {
    match needed {
        Some(n) => format!(", but {what} may cost up to {n} wei"),
        None => format!(", nothing to pay for {what} with"),
    }
}

/// The chain id of the node at `rpc_url`: a cheap "is it up" probe.
pub async fn chain_id(rpc_url: &str) -> Result<u64, EvmError> {
    rpc::Rpc::new(rpc_url)?.chain_id().await
}

/// The 4-byte selectors of a compiled artifact's functions and errors, and
/// its events' topic hashes: what each hand-written `sol!` interface is
/// checked against.
#[cfg(test)]
pub(crate) fn compiled_selectors(artifact_json: &str) -> [std::collections::BTreeSet<Vec<u8>>; 3] {
    let artifact: serde_json::Value = serde_json::from_str(artifact_json).unwrap();
    let mut out: [std::collections::BTreeSet<Vec<u8>>; 3] = Default::default();
    for item in artifact["abi"].as_array().unwrap() {
        if item["type"] == "constructor" {
            continue;
        }
        let types: Vec<&str> = item["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect();
        let signature = format!("{}({})", item["name"].as_str().unwrap(), types.join(","));
        let hash = alloy_primitives::keccak256(signature.as_bytes());
        match item["type"].as_str().unwrap() {
            "function" => out[0].insert(hash[..4].to_vec()),
            "error" => out[1].insert(hash[..4].to_vec()),
            "event" => out[2].insert(hash.to_vec()),
            _ => false,
        };
    }
    out
}
