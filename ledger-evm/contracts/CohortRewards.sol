// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title Cohort rewards
/// @notice An ERC-20 token paid to the hospitals and validators of one Cohort
/// coordinator exactly as its ledger records: every payout entry of the
/// ledger (`rewards_paid`, `validators_paid`) becomes one *distribution*, a
/// Merkle root over its `(distribution, account, amount)` leaves that the
/// coordinator's operator publishes; each payee claims its own leaf with a
/// proof and the token is minted to it then. The mint follows the same
/// halving schedule as the ledger, enforced here: all distributions of a
/// consortium height together may never exceed `initialEmission >> (height /
/// halvingInterval)` base units (0 from 64 halvings on), so a publisher who
/// deviates from the schedule is refused on chain.
contract CohortRewards {
    /// What `interfaceId()` returns: keccak256("cohort.rewards.v1").
    bytes32 public constant INTERFACE_ID = keccak256("cohort.rewards.v1");

    string public constant name = "Cohort contribution reward";
    string public constant symbol = "COHORT";
    uint8 public constant decimals = 8;

    /// The only account that may publish distributions (the deployer).
    address public immutable owner;
    uint64 public immutable initialEmission;
    uint64 public immutable halvingInterval;

    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    /// Per distribution: its consortium height, Merkle root and total.
    struct Distribution {
        uint64 height;
        bytes32 root;
        uint256 total;
        uint256 claimed;
    }

    Distribution[] private distributions;
    /// Base units published per height, across its distributions.
    mapping(uint64 => uint256) public publishedAt;
    mapping(uint64 => mapping(address => bool)) public claimed;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event DistributionPublished(uint64 indexed id, uint64 indexed height, bytes32 root, uint256 total);
    event Claimed(uint64 indexed id, address indexed account, uint256 amount);

    error NotOwner(address caller);
    error ZeroHalvingInterval();
    error UnexpectedDistribution(uint64 expected, uint64 given);
    error OverEmission(uint64 height, uint256 published, uint256 emission);
    error NoSuchDistribution(uint64 id, uint64 count);
    error AlreadyClaimed(uint64 id, address account);
    error InvalidProof(uint64 id, address account, uint256 amount);
    error InsufficientBalance(address account, uint256 balance, uint256 needed);
    error InsufficientAllowance(address spender, uint256 allowance, uint256 needed);
    error ZeroAddress();

    constructor(uint64 initial, uint64 halving) {
        if (halving == 0) revert ZeroHalvingInterval();
        owner = msg.sender;
        initialEmission = initial;
        halvingInterval = halving;
    }

    function interfaceId() external pure returns (bytes32) {
        return INTERFACE_ID;
    }

    /// The schedule's emission at consortium height `height`.
    function emission(uint64 height) public view returns (uint256) {
        uint64 halvings = height / halvingInterval;
        if (halvings >= 64) return 0;
        return uint256(initialEmission >> halvings);
    }

    function distributionCount() external view returns (uint64) {
        return uint64(distributions.length);
    }

    function distributionAt(uint64 id)
        external
        view
        returns (uint64 height, bytes32 root, uint256 total, uint256 claimedTotal)
    {
        if (id >= distributions.length) revert NoSuchDistribution(id, uint64(distributions.length));
        Distribution storage d = distributions[id];
        return (d.height, d.root, d.total, d.claimed);
    }

    /// Publishes distribution `id` (the next one): `total` base units at
    /// `height`, claimable against `root`.
    function publish(uint64 id, uint64 height, bytes32 root, uint256 total) external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        if (id != distributions.length) revert UnexpectedDistribution(uint64(distributions.length), id);
        uint256 published = publishedAt[height] + total;
        if (published > emission(height)) revert OverEmission(height, published, emission(height));
        publishedAt[height] = published;
        distributions.push(Distribution({height: height, root: root, total: total, claimed: 0}));
        emit DistributionPublished(id, height, root, total);
    }

    /// Mints `amount` to `account` from distribution `id` once, given the
    /// Merkle proof of its leaf `keccak256(abi.encode(id, account, amount))`
    /// (sorted-pair hashing). Anyone may submit it; the tokens go to `account`.
    function claim(uint64 id, address account, uint256 amount, bytes32[] calldata proof) external {
        if (id >= distributions.length) revert NoSuchDistribution(id, uint64(distributions.length));
        if (claimed[id][account]) revert AlreadyClaimed(id, account);
        Distribution storage d = distributions[id];
        bytes32 node = keccak256(abi.encode(id, account, amount));
        for (uint256 i = 0; i < proof.length; i++) {
            bytes32 sibling = proof[i];
            node = node < sibling
                ? keccak256(abi.encodePacked(node, sibling))
                : keccak256(abi.encodePacked(sibling, node));
        }
        // The tree's own total bounds what its leaves can mint.
        if (node != d.root || d.claimed + amount > d.total) revert InvalidProof(id, account, amount);
        claimed[id][account] = true;
        d.claimed += amount;
        totalSupply += amount;
        balanceOf[account] += amount;
        emit Claimed(id, account, amount);
        emit Transfer(address(0), account, amount);
    }

    function transfer(address to, uint256 value) external returns (bool) {
        _transfer(msg.sender, to, value);
        return true;
    }

    function approve(address spender, uint256 value) external returns (bool) {
        if (spender == address(0)) revert ZeroAddress();
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            if (allowed < value) revert InsufficientAllowance(msg.sender, allowed, value);
            allowance[from][msg.sender] = allowed - value;
        }
        _transfer(from, to, value);
        return true;
    }

    function _transfer(address from, address to, uint256 value) private {
        if (to == address(0)) revert ZeroAddress();
        uint256 balance = balanceOf[from];
        if (balance < value) revert InsufficientBalance(from, balance, value);
        balanceOf[from] = balance - value;
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }
}
