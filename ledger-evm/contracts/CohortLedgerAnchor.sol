// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title Cohort ledger anchor
/// @notice Anchors one Cohort coordinator's transparency log on an EVM chain:
/// the RFC 9162 leaf hash of every entry, in log order, and the Merkle root
/// of the tree at the sizes the coordinator anchors (its checkpoints).
/// Anyone can read both back and compare them with the log the coordinator
/// serves (`cohort verify ledger --rpc-url URL --contract ADDR`); only the
/// account that deployed the contract can append, and only in order: an
/// index already taken or one past the end is refused, so what is anchored
/// at an index never changes.
contract CohortLedgerAnchor {
    /// What `interfaceId()` returns: keccak256("cohort.ledger.anchor.v1").
    /// Clients check it to tell this contract from any other at an address.
    bytes32 public constant INTERFACE_ID = keccak256("cohort.ledger.anchor.v1");

    /// The only account that may append (the deployer).
    address public immutable owner;

    bytes32[] private leafHashes;
    mapping(uint64 => bytes32) private roots;
    uint64 private latestSize;

    /// One log entry anchored: its index in the log and its leaf hash.
    event EntryAnchored(uint64 indexed index, bytes32 leafHash);
    /// One checkpoint anchored: the tree size and its root hash.
    event CheckpointAnchored(uint64 indexed treeSize, bytes32 root);

    error NotOwner(address caller);
    error UnexpectedIndex(uint64 expected, uint64 given);
    error EmptyBatch();
    error ZeroHash(uint64 index);
    error ZeroRoot(uint64 treeSize);
    error CheckpointBeyondEntries(uint64 treeSize, uint64 entries);
    error CheckpointNotNewer(uint64 treeSize, uint64 latest);
    error NoSuchEntry(uint64 index, uint64 entries);

    constructor() {
        owner = msg.sender;
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    function interfaceId() external pure returns (bytes32) {
        return INTERFACE_ID;
    }

    /// Appends `hashes` as entries `firstIndex, firstIndex + 1, ...` (the
    /// first must be the next free index), then records `root` as the root
    /// of the tree of all entries so far. The coordinator's usual call.
    function anchor(uint64 firstIndex, bytes32[] calldata hashes, bytes32 root) external onlyOwner {
        if (hashes.length == 0) revert EmptyBatch();
        _append(firstIndex, hashes);
        _checkpoint(uint64(leafHashes.length), root);
    }

    /// Appends entries without a checkpoint.
    function appendEntries(uint64 firstIndex, bytes32[] calldata hashes) external onlyOwner {
        if (hashes.length == 0) revert EmptyBatch();
        _append(firstIndex, hashes);
    }

    /// Records the root of the tree of the first `treeSize` entries; sizes
    /// only grow.
    function recordCheckpoint(uint64 treeSize, bytes32 root) external onlyOwner {
        _checkpoint(treeSize, root);
    }

    function entryCount() external view returns (uint64) {
        return uint64(leafHashes.length);
    }

    function entryAt(uint64 index) external view returns (bytes32) {
        if (index >= leafHashes.length) revert NoSuchEntry(index, uint64(leafHashes.length));
        return leafHashes[index];
    }

    /// Up to `count` leaf hashes from `start` (fewer at the end of the log).
    function entriesFrom(uint64 start, uint64 count) external view returns (bytes32[] memory page) {
        uint256 total = leafHashes.length;
        if (start >= total) return new bytes32[](0);
        uint256 end = uint256(start) + count;
        if (end > total) end = total;
        page = new bytes32[](end - start);
        for (uint256 i = start; i < end; i++) {
            page[i - start] = leafHashes[i];
        }
    }

    /// The checkpoint with the largest tree size (0 and zero root if none).
    function latestCheckpoint() external view returns (uint64 treeSize, bytes32 root) {
        return (latestSize, roots[latestSize]);
    }

    /// The root anchored for `treeSize`, or zero if none was.
    function checkpointAt(uint64 treeSize) external view returns (bytes32) {
        return roots[treeSize];
    }

    function _append(uint64 firstIndex, bytes32[] calldata hashes) private {
        uint64 next = uint64(leafHashes.length);
        if (firstIndex != next) revert UnexpectedIndex(next, firstIndex);
        for (uint256 i = 0; i < hashes.length; i++) {
            if (hashes[i] == bytes32(0)) revert ZeroHash(next);
            leafHashes.push(hashes[i]);
            emit EntryAnchored(next, hashes[i]);
            next++;
        }
    }

    function _checkpoint(uint64 treeSize, bytes32 root) private {
        uint64 entries = uint64(leafHashes.length);
        if (treeSize > entries) revert CheckpointBeyondEntries(treeSize, entries);
        if (treeSize <= latestSize) revert CheckpointNotNewer(treeSize, latestSize);
        if (root == bytes32(0)) revert ZeroRoot(treeSize);
        roots[treeSize] = root;
        latestSize = treeSize;
        emit CheckpointAnchored(treeSize, root);
    }
}
