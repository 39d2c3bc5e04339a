//! RFC 9162 Merkle tree hashing, an append-only log of leaf hashes, and
//! proof generation and verification.
//!
//! Sizes and indices are `u64`, as in RFC 9162. Hashes are fixed 32-byte
//! SHA-256 values ([`Hash`](type@Hash)); use [`hash_from_slice`] to turn untrusted bytes
//! (from the wire or from storage) into a [`Hash`](type@Hash) with a length check.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A SHA-256 output: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Length in bytes of a [`Hash`](type@Hash).
pub const HASH_LEN: usize = 32;

/// Domain-separation prefix of a leaf hash (RFC 9162 section 2.1.1).
pub const LEAF_PREFIX: u8 = 0x00;

/// Domain-separation prefix of an interior node hash (RFC 9162 section 2.1.1).
pub const NODE_PREFIX: u8 = 0x01;

/// Why a proof was refused, or why a proof or root could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is out of range for tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },

    /// A consistency proof was asked for (or checked) from a bigger tree to a smaller one.
    #[error("old tree size {old_size} is larger than new tree size {new_size}")]
    OldSizeExceedsNewSize { old_size: u64, new_size: u64 },

    /// The log holds fewer leaves than the requested tree size.
    #[error("tree size {size} is beyond the log's {log_size} leaves")]
    SizeBeyondLog { size: u64, log_size: u64 },

    /// The proof holds more or fewer hashes than the sizes and index imply.
    #[error("{kind} proof has {got} hashes, but {expected} are required")]
    WrongProofLength {
        kind: ProofKind,
        got: usize,
        expected: usize,
    },

    /// The proof recomputes to a root other than the one given for the tree.
    #[error("{kind} proof recomputes root {computed}, but the expected root is {expected}")]
    RootMismatch {
        kind: ProofKind,
        computed: String,
        expected: String,
    },

    /// The consistency proof recomputes an old root other than the one given.
    #[error("consistency proof recomputes old root {computed}, but the old root is {expected}")]
    OldRootMismatch { computed: String, expected: String },

    /// Both sizes are equal but the roots differ.
    #[error("trees of equal size {size} have different roots {old_root} and {new_root}")]
    EqualSizeRootsDiffer {
        size: u64,
        old_root: String,
        new_root: String,
    },

    /// The old tree is empty but its root is not the empty-tree root.
    #[error("old tree size is 0 but its root {got} is not the empty-tree root {expected}")]
    EmptyTreeRootMismatch { got: String, expected: String },

    /// A hash taken from untrusted bytes has the wrong length.
    #[error("hash is {got} bytes long, but SHA-256 hashes are {HASH_LEN} bytes")]
    BadHashLength { got: usize },
}

/// Which kind of proof an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofKind {
    Inclusion,
    Consistency,
}

impl std::fmt::Display for ProofKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProofKind::Inclusion => "inclusion",
            ProofKind::Consistency => "consistency",
        })
    }
}

/// The root of the empty tree: SHA-256 of the empty string (RFC 9162 section 2.1.1).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The leaf hash of `data`: SHA-256(0x00 || data).
pub fn hash_leaf(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn hash_children(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Converts untrusted bytes into a [`Hash`](type@Hash), refusing any length but 32.
pub fn hash_from_slice(bytes: &[u8]) -> Result<Hash, ProofError> {
    bytes
        .try_into()
        .map_err(|_| ProofError::BadHashLength { got: bytes.len() })
}

/// The largest power of two strictly smaller than `n` (`n >= 2`): RFC 9162's split point `k`.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Number of hashes in the inclusion proof of `index` in a tree of `size` leaves
/// (`index < size`).
pub fn inclusion_proof_len(index: u64, size: u64) -> usize {
    debug_assert!(index < size);
    // Levels where the path and the last leaf's path diverge contribute one
    // hash each; above that, one hash per left-hand sibling on the border.
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = (index >> inner).count_ones();
    (inner + border) as usize
}

/// Number of hashes in the consistency proof from `old_size` to `new_size`
/// (`old_size <= new_size`).
pub fn consistency_proof_len(old_size: u64, new_size: u64) -> usize {
    debug_assert!(old_size <= new_size);
    if old_size == 0 || old_size == new_size {
        return 0;
    }
    // The proof is the inclusion path of leaf old_size - 1 in the new tree,
    // minus the levels below the old tree's rightmost complete subtree, plus
    // that subtree's own root unless it is the whole old tree.
    let shift = (old_size).trailing_zeros();
    let path = inclusion_proof_len(old_size - 1, new_size) - shift as usize;
    if old_size.is_power_of_two() {
        path
    } else {
        path + 1
    }
}

fn hex32(h: &Hash) -> String {
    hex::encode(h)
}

/// Verifies that `leaf_hash` is the leaf at `index` of the tree of `size` leaves
/// whose root is `root`, following RFC 9162 section 2.1.3.2 step by step.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion_proof(leaf_hash, index, size, proof)?;
    if computed != *root {
        return Err(ProofError::RootMismatch {
            kind: ProofKind::Inclusion,
            computed: hex32(&computed),
            expected: hex32(root),
        });
    }
    Ok(())
}

/// Runs the RFC 9162 section 2.1.3.2 algorithm and returns the root it
/// recomputes, without comparing it to anything.
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    // Step 1.
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let wrong_len = || ProofError::WrongProofLength {
        kind: ProofKind::Inclusion,
        got: proof.len(),
        expected: inclusion_proof_len(index, size),
    };
    // Steps 2 and 3.
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf_hash;
    // Step 4.
    for p in proof {
        if snode == 0 {
            return Err(wrong_len());
        }
        if fnode & 1 == 1 || fnode == snode {
            r = hash_children(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = hash_children(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    if snode != 0 {
        return Err(wrong_len());
    }
    Ok(r)
}

/// Verifies that the tree of `old_size` leaves with root `old_root` is a prefix
/// of the tree of `new_size` leaves with root `new_root`, following RFC 9162
/// section 2.1.4.2 step by step.
///
/// Cases outside the RFC's `0 < old_size < new_size`: equal sizes need an
/// empty proof and equal roots; an empty old tree needs an empty proof and
/// `old_root` equal to [`empty_root`] (stricter than some implementations,
/// which accept any old root there).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OldSizeExceedsNewSize { old_size, new_size });
    }
    let wrong_len = || ProofError::WrongProofLength {
        kind: ProofKind::Consistency,
        got: proof.len(),
        expected: consistency_proof_len(old_size, new_size),
    };
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(wrong_len());
        }
        if old_root != new_root {
            return Err(ProofError::EqualSizeRootsDiffer {
                size: old_size,
                old_root: hex32(old_root),
                new_root: hex32(new_root),
            });
        }
        return Ok(());
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(wrong_len());
        }
        let empty = empty_root();
        if *old_root != empty {
            return Err(ProofError::EmptyTreeRootMismatch {
                got: hex32(old_root),
                expected: hex32(&empty),
            });
        }
        return Ok(());
    }

    // Step 1.
    if proof.is_empty() {
        return Err(wrong_len());
    }
    // Step 2: when the old tree is a complete subtree its root is the first
    // node of the path; the proof omits it.
    let mut path = proof.iter();
    let first = if old_size.is_power_of_two() {
        *old_root
    } else {
        *path.next().expect("proof is not empty")
    };
    // Step 3.
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    // Step 4.
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    let mut fr = first;
    let mut sr = first;
    // Step 6.
    for c in path {
        if snode == 0 {
            return Err(wrong_len());
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = hash_children(c, &fr);
            sr = hash_children(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = hash_children(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 7.
    if snode != 0 {
        return Err(wrong_len());
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch {
            computed: hex32(&fr),
            expected: hex32(old_root),
        });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch {
            kind: ProofKind::Consistency,
            computed: hex32(&sr),
            expected: hex32(new_root),
        });
    }
    Ok(())
}

/// An append-only Merkle log held in memory.
///
/// The leaf hashes ([`MerkleLog::leaf_hashes`]) are the whole state: a storage
/// layer persists them in order and rebuilds the log with
/// [`MerkleLog::from_leaf_hashes`]. On top of them the log caches the root of
/// every complete, aligned subtree (`levels[h][i]` covers leaves
/// `i * 2^h .. (i + 1) * 2^h`), about one extra hash per leaf, so appends cost
/// O(1) amortised hashes and any root or proof costs O(log^2 n) hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MerkleLog {
    /// `levels[0]` holds the leaf hashes; `levels[h]` the complete subtrees of 2^h leaves.
    levels: Vec<Vec<Hash>>,
}

impl MerkleLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a log from its leaf hashes in order (e.g. as read back from storage).
    pub fn from_leaf_hashes(leaves: impl IntoIterator<Item = Hash>) -> Self {
        let mut log = Self::new();
        for leaf in leaves {
            log.append_leaf_hash(leaf);
        }
        log
    }

    /// Number of leaves in the log.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// True when the log holds no leaves.
    pub fn is_empty(&self) -> bool {
        self.size() == 0
    }

    /// All leaf hashes, in order: what a storage layer persists.
    pub fn leaf_hashes(&self) -> &[Hash] {
        self.levels.first().map_or(&[], |l| l.as_slice())
    }

    /// The leaf hash at `index`, if the log has one.
    pub fn leaf_hash(&self, index: u64) -> Option<Hash> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.leaf_hashes().get(i).copied())
    }

    /// Hashes `data` as a leaf, appends it and returns its index.
    pub fn append(&mut self, data: &[u8]) -> u64 {
        self.append_leaf_hash(hash_leaf(data))
    }

    /// Appends an already computed leaf hash and returns its index.
    pub fn append_leaf_hash(&mut self, leaf_hash: Hash) -> u64 {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        let index = self.levels[0].len() as u64;
        self.levels[0].push(leaf_hash);
        // Every time a level gets an even count, a complete subtree one level
        // up has just been finished.
        let mut level = 0;
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let parent = hash_children(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
        index
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        if size > self.size() {
            return Err(ProofError::SizeBeyondLog {
                size,
                log_size: self.size(),
            });
        }
        Ok(())
    }

    /// `MTH(D[start .. start + n])` for `n >= 1` and a range inside the log.
    fn subtree_root(&self, start: u64, n: u64) -> Hash {
        debug_assert!(n >= 1 && start + n <= self.size());
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(start >> level) as usize];
        }
        let k = split_point(n);
        hash_children(
            &self.subtree_root(start, k),
            &self.subtree_root(start + k, n - k),
        )
    }

    /// The root of the tree made of the first `size` leaves (RFC 9162 section 2.1.1).
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        if size == 0 {
            return Ok(empty_root());
        }
        Ok(self.subtree_root(0, size))
    }

    /// The root of the whole log.
    pub fn current_root(&self) -> Hash {
        self.root(self.size())
            .expect("the log's own size is in range")
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size`
    /// leaves: `PATH(index, D[0:size])` of RFC 9162 section 2.1.3.1, leaf side first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        // Walk down from the root, collecting siblings top-down, then reverse.
        let mut path = Vec::with_capacity(inclusion_proof_len(index, size));
        let (mut start, mut n, mut m) = (0u64, size, index);
        while n > 1 {
            let k = split_point(n);
            if m < k {
                path.push(self.subtree_root(start + k, n - k));
                n = k;
            } else {
                path.push(self.subtree_root(start, k));
                start += k;
                m -= k;
                n -= k;
            }
        }
        path.reverse();
        Ok(path)
    }

    /// The consistency proof from the tree of the first `old_size` leaves to
    /// the tree of the first `new_size`: `PROOF(old_size, D[0:new_size])` of
    /// RFC 9162 section 2.1.4.1. Empty when `old_size` is 0 or equals `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(new_size)?;
        if old_size > new_size {
            return Err(ProofError::OldSizeExceedsNewSize { old_size, new_size });
        }
        if old_size == 0 || old_size == new_size {
            return Ok(Vec::new());
        }
        // SUBPROOF(m, D[start .. start + n], b), collecting top-down then reversing.
        let mut proof = Vec::with_capacity(consistency_proof_len(old_size, new_size));
        let (mut start, mut n, mut m, mut whole) = (0u64, new_size, old_size, true);
        loop {
            if m == n {
                if !whole {
                    proof.push(self.subtree_root(start, n));
                }
                break;
            }
            let k = split_point(n);
            if m <= k {
                proof.push(self.subtree_root(start + k, n - k));
                n = k;
            } else {
                proof.push(self.subtree_root(start, k));
                start += k;
                m -= k;
                n -= k;
                whole = false;
            }
        }
        proof.reverse();
        Ok(proof)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_point_is_largest_power_of_two_below_n() {
        for (n, k) in [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
            (1 << 40, 1 << 39),
        ] {
            assert_eq!(split_point(n), k, "n = {n}");
        }
    }

    #[test]
    fn proof_lengths_match_generated_proofs() {
        let log = MerkleLog::from_leaf_hashes((0..70u32).map(|i| hash_leaf(&i.to_be_bytes())));
        for size in 1..=70 {
            for index in 0..size {
                let p = log.inclusion_proof(index, size).unwrap();
                assert_eq!(p.len(), inclusion_proof_len(index, size), "{index}/{size}");
            }
            for old in 0..=size {
                let p = log.consistency_proof(old, size).unwrap();
                assert_eq!(p.len(), consistency_proof_len(old, size), "{old}->{size}");
            }
        }
    }

    #[test]
    fn cache_levels_hold_complete_subtrees() {
        let log = MerkleLog::from_leaf_hashes((0..13u32).map(|i| hash_leaf(&i.to_be_bytes())));
        assert_eq!(
            log.levels.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![13, 6, 3, 1]
        );
    }
}
