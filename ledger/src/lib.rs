//! Cohort's embedded transparency log core.
//!
//! The ledger is an append-only Merkle log in the style of Certificate
//! Transparency, hashed exactly as RFC 9162 ("Certificate Transparency
//! Version 2.0", which keeps the RFC 6962 tree) prescribes, so that any
//! RFC 6962/9162 verifier can check its proofs.
//!
//! # Hashing and domain separation (RFC 9162 section 2.1.1)
//!
//! * the root of the empty tree is `SHA-256("")`;
//! * a leaf hash is `SHA-256(0x00 || data)` ([`merkle::hash_leaf`]);
//! * an interior node hash is `SHA-256(0x01 || left || right)`
//!   ([`merkle::hash_children`]);
//! * a tree of `n > 1` leaves splits at `k`, the largest power of two
//!   strictly smaller than `n`: its root is `node(MTH(D[0:k]), MTH(D[k:n]))`.
//!
//! The distinct one-byte prefixes separate the two domains: no leaf can have
//! the hash of an interior node, so nobody can pass off a subtree as a leaf
//! (or a leaf whose data is the concatenation of two hashes as a subtree), a
//! second-preimage attack that a plain hash tree allows.
//!
//! # Proofs
//!
//! * inclusion proofs (audit paths): generated as in section 2.1.3.1 by
//!   [`merkle::MerkleLog::inclusion_proof`], verified with the algorithm of
//!   section 2.1.3.2 by [`merkle::verify_inclusion`];
//! * consistency proofs: generated as in section 2.1.4.1 by
//!   [`merkle::MerkleLog::consistency_proof`], verified with the algorithm of
//!   section 2.1.4.2 by [`merkle::verify_consistency`].
//!
//! Verification needs only hashes, sizes and the proof, never the tree.
//!
//! ```
//! use cohort_ledger::{MerkleLog, hash_leaf, verify_consistency, verify_inclusion};
//!
//! let mut log = MerkleLog::new();
//! for update in [&b"round 1"[..], b"round 2", b"round 3"] {
//!     log.append(update);
//! }
//! let old_root = log.root(2)?;
//! let root = log.current_root();
//!
//! let proof = log.inclusion_proof(1, 3)?;
//! verify_inclusion(&hash_leaf(b"round 2"), 1, 3, &proof, &root)?;
//!
//! let proof = log.consistency_proof(2, 3)?;
//! verify_consistency(2, 3, &old_root, &root, &proof)?;
//! # Ok::<(), cohort_ledger::ProofError>(())
//! ```
//!
//! # Checkpoints
//!
//! [`checkpoint::Checkpoint`] encodes the body of a C2SP `tlog-checkpoint`
//! (origin, size, base64 root). Signing it as a signed note is left to a
//! separate layer; see the [`checkpoint`] module docs.

pub mod anchor;
pub mod audit;
pub mod checkpoint;
pub mod merkle;
pub mod model_signing;
pub mod note;
pub mod record;
pub mod sealed;

pub use anchor::{Anchor, AnchorError, AnchorFuture, AnchorReceipt};
pub use audit::{AuditError, AuditReport, Openings, SeenCheckpoint, Withheld, audit};
pub use checkpoint::{Checkpoint, CheckpointError};
pub use merkle::{
    Hash, MerkleLog, ProofError, ProofKind, empty_root, hash_children, hash_leaf,
    verify_consistency, verify_inclusion,
};
pub use note::{NoteError, sign_checkpoint, verify_checkpoint};
pub use record::{
    ATTESTATION_CONTEXT, EnrolledClient, Entry, EntryError, Exclusion, HospitalValue, Payout,
    ProofRecord, Record, SetupCeremony, SetupContributor, UpdateRecord, Verdict,
    attestation_statement,
};
pub use sealed::{Opening, SealError, SealedPart};
