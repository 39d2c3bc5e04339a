//! Anchoring the log somewhere the coordinator cannot rewrite: the seam
//! between the coordinator, which knows its log, and a backend that records
//! each entry's leaf hash and checkpoint roots elsewhere (the EVM contract
//! of the `cohort-ledger-evm` crate). The coordinator drives it; a backend
//! only has to read back what it holds and append in order.

use std::future::Future;
use std::pin::Pin;

use crate::merkle::Hash;

/// What an [`Anchor`] call returns, boxed so that the trait stays
/// object-safe without an async-trait crate.
pub type AnchorFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, AnchorError>> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    /// Worth trying again later: the backend is unreachable or slow, an
    /// account lacks funds, or another append raced this one.
    #[error("{0}")]
    Retry(String),
    /// Trying again cannot help: a wrong contract or key, or anchored
    /// history that contradicts the log.
    #[error("{0}")]
    Fatal(String),
}

/// Where an append landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorReceipt {
    /// The backend's reference for the append (a transaction hash).
    pub reference: String,
    /// The block it is in, if the backend has blocks.
    pub block: Option<u64>,
    /// What it cost, in the backend's unit (gas), if it has one.
    pub cost: Option<u64>,
}

/// An append-only record of a log's leaf hashes, by index, and of its roots
/// at some tree sizes.
pub trait Anchor: Send + Sync {
    /// One line for logs, e.g. which contract on which chain.
    fn describe(&self) -> String;

    /// Checks once, before anything is appended, that this backend can take
    /// appends (the right contract, a key allowed to write).
    fn check(&self) -> AnchorFuture<'_, ()>;

    /// How many leaf hashes are anchored.
    fn anchored_count(&self) -> AnchorFuture<'_, u64>;

    /// Up to `count` anchored leaf hashes from index `start` (fewer at the
    /// end).
    fn anchored_leaves(&self, start: u64, count: u64) -> AnchorFuture<'_, Vec<Hash>>;

    /// Appends `leaves` as indices `first_index..` (the backend refuses any
    /// other first index than its count) and `root` as the root of the tree
    /// of `first_index + leaves.len()` entries.
    fn anchor<'a>(
        &'a self,
        first_index: u64,
        leaves: &'a [Hash],
        root: Hash,
    ) -> AnchorFuture<'a, AnchorReceipt>;

    /// The most leaves one [`Anchor::anchor`] call should carry.
    fn max_batch(&self) -> usize {
        64
    }
}

impl std::fmt::Debug for dyn Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}
