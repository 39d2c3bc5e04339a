//! The anchor contract's interface and its compiled artifact.
//!
//! `contracts/CohortLedgerAnchor.sol` is compiled by `scripts/evm/compile.js`
//! (solc-js, pinned) into `contracts/CohortLedgerAnchor.json`, which is
//! committed: the Rust build never needs node. The interface below is
//! written out for `sol!`; a test checks that every function, event and
//! error in it has the selector the compiled ABI has, and the reverse.

use alloy_sol_types::SolInterface as _;

alloy_sol_types::sol! {
    /// Cohort's ledger anchor contract, as its compiled ABI describes it.
    interface ICohortLedgerAnchor {
        event EntryAnchored(uint64 indexed index, bytes32 leafHash);
        event CheckpointAnchored(uint64 indexed treeSize, bytes32 root);

        error NotOwner(address caller);
        error UnexpectedIndex(uint64 expected, uint64 given);
        error EmptyBatch();
        error ZeroHash(uint64 index);
        error ZeroRoot(uint64 treeSize);
        error CheckpointBeyondEntries(uint64 treeSize, uint64 entries);
        error CheckpointNotNewer(uint64 treeSize, uint64 latest);
        error NoSuchEntry(uint64 index, uint64 entries);

        function INTERFACE_ID() external view returns (bytes32);
        function owner() external view returns (address);
        function interfaceId() external pure returns (bytes32);
        function anchor(uint64 firstIndex, bytes32[] calldata hashes, bytes32 root) external;
        function appendEntries(uint64 firstIndex, bytes32[] calldata hashes) external;
        function recordCheckpoint(uint64 treeSize, bytes32 root) external;
        function entryCount() external view returns (uint64);
        function entryAt(uint64 index) external view returns (bytes32);
        function entriesFrom(uint64 start, uint64 count) external view returns (bytes32[] memory page);
        function latestCheckpoint() external view returns (uint64 treeSize, bytes32 root);
        function checkpointAt(uint64 treeSize) external view returns (bytes32);
    }
}

pub use ICohortLedgerAnchor::ICohortLedgerAnchorErrors as AnchorRevert;

/// The committed solc output: ABI, init code and runtime code.
pub const ARTIFACT_JSON: &str = include_str!("../contracts/CohortLedgerAnchor.json");

/// The contract's Solidity source, as compiled into [`ARTIFACT_JSON`].
pub const SOURCE: &str = include_str!("../contracts/CohortLedgerAnchor.sol");

/// What `interfaceId()` returns: keccak256("cohort.ledger.anchor.v1").
pub fn interface_id() -> alloy_primitives::B256 {
    alloy_primitives::keccak256(b"cohort.ledger.anchor.v1")
}

#[derive(serde::Deserialize)]
struct Artifact {
    bytecode: String,
}

/// The contract's init code (what a deployment transaction carries).
pub fn init_code() -> Result<Vec<u8>, String> {
    let artifact: Artifact = serde_json::from_str(ARTIFACT_JSON)
        .map_err(|e| format!("the embedded contract artifact is not valid: {e}"))?;
    hex::decode(artifact.bytecode.trim_start_matches("0x"))
        .map_err(|e| format!("the embedded contract bytecode is not hex: {e}"))
}

/// Words for a revert's data: the contract's own errors by name and
/// meaning, Solidity's `Error(string)` and `Panic(uint256)`, else the hex.
pub fn describe_revert(data: &[u8]) -> String {
    use ICohortLedgerAnchor::ICohortLedgerAnchorErrors as E;
    if let Ok(error) = E::abi_decode(data) {
        return match error {
            E::NotOwner(e) => format!(
                "{} is not the account that deployed the contract (NotOwner)",
                e.caller
            ),
            E::UnexpectedIndex(e) => format!(
                "entries are appended in order: index {} was given where the contract expects {} (UnexpectedIndex)",
                e.given, e.expected
            ),
            E::EmptyBatch(_) => "no entries were given (EmptyBatch)".into(),
            E::ZeroHash(e) => format!("entry {} has an all-zero leaf hash (ZeroHash)", e.index),
            E::ZeroRoot(e) => format!(
                "the checkpoint of tree size {} has an all-zero root (ZeroRoot)",
                e.treeSize
            ),
            E::CheckpointBeyondEntries(e) => format!(
                "a checkpoint of tree size {} needs that many entries, the contract holds {} (CheckpointBeyondEntries)",
                e.treeSize, e.entries
            ),
            E::CheckpointNotNewer(e) => format!(
                "a checkpoint must be of a larger tree than the latest ({} ≤ {}) (CheckpointNotNewer)",
                e.treeSize, e.latest
            ),
            E::NoSuchEntry(e) => format!(
                "no entry {}: the contract holds {} (NoSuchEntry)",
                e.index, e.entries
            ),
        };
    }
    if let Some(text) = crate::rewards::describe_rewards_revert(data) {
        return text;
    }
    if data.len() >= 4 {
        let (selector, rest) = data.split_at(4);
        // Error(string) and Panic(uint256), which Solidity itself raises.
        if selector == [0x08, 0xc3, 0x79, 0xa0]
            && let Ok(message) =
                <alloy_sol_types::sol_data::String as alloy_sol_types::SolType>::abi_decode(rest)
        {
            return message;
        }
        if selector == [0x4e, 0x48, 0x7b, 0x71] && rest.len() == 32 {
            return format!("panic 0x{:02x}", rest[31]);
        }
    }
    if data.is_empty() {
        "reverted without a reason".into()
    } else {
        format!("reverted with data 0x{}", hex::encode(data))
    }
}

/// Whether a revert says another append got to the index first.
pub fn is_index_conflict(data: &[u8]) -> bool {
    matches!(
        ICohortLedgerAnchor::ICohortLedgerAnchorErrors::abi_decode(data),
        Ok(ICohortLedgerAnchor::ICohortLedgerAnchorErrors::UnexpectedIndex(_))
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use alloy_sol_types::{SolCall, SolError, SolEvent};

    use super::ICohortLedgerAnchor as C;
    use super::*;

    /// The hand-written `sol!` interface and the compiled ABI agree on every
    /// selector, both ways.
    #[test]
    fn interface_matches_the_compiled_abi() {
        let [functions, errors, events] = crate::compiled_selectors(ARTIFACT_JSON);
        let ours: BTreeSet<Vec<u8>> = C::ICohortLedgerAnchorCalls::SELECTORS
            .iter()
            .map(|s| s.to_vec())
            .collect();
        assert_eq!(ours, functions);
        let ours: BTreeSet<Vec<u8>> = C::ICohortLedgerAnchorErrors::SELECTORS
            .iter()
            .map(|s| s.to_vec())
            .collect();
        assert_eq!(ours, errors);
        let ours: BTreeSet<Vec<u8>> = [
            C::EntryAnchored::SIGNATURE_HASH.to_vec(),
            C::CheckpointAnchored::SIGNATURE_HASH.to_vec(),
        ]
        .into();
        assert_eq!(ours, events);
        assert_eq!(C::anchorCall::SELECTOR.len(), 4);
        assert!(init_code().unwrap().len() > 1000);
    }

    #[test]
    fn reverts_read_as_sentences() {
        let data = C::UnexpectedIndex {
            expected: 7,
            given: 6,
        }
        .abi_encode();
        assert!(is_index_conflict(&data));
        let text = describe_revert(&data);
        assert!(
            text.contains("index 6") && text.contains("expects 7"),
            "{text}"
        );
        assert_eq!(describe_revert(&[]), "reverted without a reason");
        assert!(describe_revert(&[1, 2, 3]).contains("0x010203"));
        assert!(!is_index_conflict(&C::EmptyBatch {}.abi_encode()));
    }

    #[test]
    fn interface_id_is_the_contracts_constant() {
        assert!(SOURCE.contains("INTERFACE_ID = keccak256(\"cohort.ledger.anchor.v1\")"));
    }
}
