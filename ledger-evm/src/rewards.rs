//! The rewards token (`contracts/CohortRewards.sol`): an ERC-20 minted only
//! by claims against published distributions, each a Merkle root over one
//! ledger payout's `(distribution, account, amount)` leaves, with every
//! height's distributions capped on chain by the halving schedule.
//!
//! - [`deploy_rewards`]: puts the token on a chain with the ledger's
//!   schedule;
//! - [`PayoutTree`]: the Merkle tree of one distribution (sorted-pair
//!   keccak-256, as the contract checks it) and each payee's proof;
//! - [`RewardsContract`]: reads a deployment, publishes distributions (its
//!   owner) and claims leaves (anyone, for any payee).

use std::time::Duration;

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_sol_types::{SolCall, SolConstructor as _, SolInterface as _};

use crate::contract::{deploy_code, transact};
use crate::key::EvmKey;
use crate::rpc::{Receipt, Rpc};
use crate::{Deployment, EvmError};

alloy_sol_types::sol! {
    /// Cohort's rewards token, as its compiled ABI describes it.
    interface ICohortRewards {
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

        function INTERFACE_ID() external view returns (bytes32);
        function name() external view returns (string memory);
        function symbol() external view returns (string memory);
        function decimals() external view returns (uint8);
        function owner() external view returns (address);
        function initialEmission() external view returns (uint64);
        function halvingInterval() external view returns (uint64);
        function totalSupply() external view returns (uint256);
        function balanceOf(address account) external view returns (uint256);
        function allowance(address holder, address spender) external view returns (uint256);
        function publishedAt(uint64 height) external view returns (uint256);
        function claimed(uint64 id, address account) external view returns (bool);
        function interfaceId() external pure returns (bytes32);
        function emission(uint64 height) external view returns (uint256);
        function distributionCount() external view returns (uint64);
        function distributionAt(uint64 id) external view returns (uint64 height, bytes32 root, uint256 total, uint256 claimedTotal);
        function publish(uint64 id, uint64 height, bytes32 root, uint256 total) external;
        function claim(uint64 id, address account, uint256 amount, bytes32[] calldata proof) external;
        function transfer(address to, uint256 value) external returns (bool);
        function approve(address spender, uint256 value) external returns (bool);
        function transferFrom(address from, address to, uint256 value) external returns (bool);
    }

    contract CohortRewardsDeploy {
        constructor(uint64 initial, uint64 halving);
    }
}

use ICohortRewards as R;

/// The committed solc output of `contracts/CohortRewards.sol`.
pub const REWARDS_ARTIFACT_JSON: &str = include_str!("../contracts/CohortRewards.json");

/// The contract's Solidity source, as compiled into [`REWARDS_ARTIFACT_JSON`].
pub const REWARDS_SOURCE: &str = include_str!("../contracts/CohortRewards.sol");

/// What `interfaceId()` returns: keccak256("cohort.rewards.v1").
pub fn rewards_interface_id() -> B256 {
    keccak256(b"cohort.rewards.v1")
}

/// Init code of a token with the halving schedule `initial >> (h / halving)`.
pub fn rewards_init_code(initial: u64, halving: u64) -> Result<Vec<u8>, String> {
    #[derive(serde::Deserialize)]
    struct Artifact {
        bytecode: String,
    }
    let artifact: Artifact = serde_json::from_str(REWARDS_ARTIFACT_JSON)
        .map_err(|e| format!("the embedded rewards artifact is not valid: {e}"))?;
    let mut code = hex::decode(artifact.bytecode.trim_start_matches("0x"))
        .map_err(|e| format!("the embedded rewards bytecode is not hex: {e}"))?;
    code.extend(CohortRewardsDeploy::constructorCall { initial, halving }.abi_encode());
    Ok(code)
}

/// Words for a rewards contract revert, `None` for another contract's.
pub fn describe_rewards_revert(data: &[u8]) -> Option<String> {
    use R::ICohortRewardsErrors as E;
    let error = E::abi_decode(data).ok()?;
    Some(match error {
        E::NotOwner(e) => format!(
            "{} is not the account that deployed the token (NotOwner)",
            e.caller
        ),
        E::ZeroHalvingInterval(_) => {
            "the halving interval must be at least 1 (ZeroHalvingInterval)".into()
        }
        E::UnexpectedDistribution(e) => format!(
            "distributions are published in order: {} was given where the token expects {} (UnexpectedDistribution)",
            e.given, e.expected
        ),
        E::OverEmission(e) => format!(
            "height {} would pay {} base units, more than the schedule's emission {} (OverEmission)",
            e.height, e.published, e.emission
        ),
        E::NoSuchDistribution(e) => format!(
            "no distribution {}: the token holds {} (NoSuchDistribution)",
            e.id, e.count
        ),
        E::AlreadyClaimed(e) => format!(
            "{} already claimed its part of distribution {} (AlreadyClaimed)",
            e.account, e.id
        ),
        E::InvalidProof(e) => format!(
            "{} base units for {} are not a leaf of distribution {} (InvalidProof)",
            e.amount, e.account, e.id
        ),
        E::InsufficientBalance(e) => format!(
            "{} holds {}, {} needed (InsufficientBalance)",
            e.account, e.balance, e.needed
        ),
        E::InsufficientAllowance(e) => format!(
            "{} may spend {}, {} needed (InsufficientAllowance)",
            e.spender, e.allowance, e.needed
        ),
        E::ZeroAddress(_) => "the zero address cannot receive tokens (ZeroAddress)".into(),
    })
}

/// A distribution's leaf: `keccak256(abi.encode(id, account, amount))`.
pub fn payout_leaf(id: u64, account: Address, amount: U256) -> B256 {
    let mut words = [0u8; 96];
    words[24..32].copy_from_slice(&id.to_be_bytes());
    words[44..64].copy_from_slice(account.as_slice());
    words[64..96].copy_from_slice(&amount.to_be_bytes::<32>());
    keccak256(words)
}

fn parent(a: B256, b: B256) -> B256 {
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    let mut pair = [0u8; 64];
    pair[..32].copy_from_slice(low.as_slice());
    pair[32..].copy_from_slice(high.as_slice());
    keccak256(pair)
}

/// The Merkle tree over one distribution's leaves, in payout order: pairs
/// hashed in sorted order, an odd node carried up unchanged; an empty
/// distribution has the zero root (nothing to claim).
pub struct PayoutTree {
    levels: Vec<Vec<B256>>,
}

impl PayoutTree {
    pub fn new(leaves: Vec<B256>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [a, b] => parent(*a, *b),
                    [a] => *a,
                    _ => B256::ZERO,
                })
                .collect();
            levels.push(above);
        }
        Self { levels }
    }

    pub fn root(&self) -> B256 {
        self.levels
            .last()
            .and_then(|top| top.first())
            .copied()
            .unwrap_or(B256::ZERO)
    }

    /// The siblings from leaf `index` up to the root.
    pub fn proof(&self, mut index: usize) -> Vec<B256> {
        let mut proof = Vec::new();
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            if let Some(sibling) = level.get(index ^ 1) {
                proof.push(*sibling);
            }
            index /= 2;
        }
        proof
    }

    /// What the contract computes from a leaf and its proof.
    pub fn root_from(leaf: B256, proof: &[B256]) -> B256 {
        proof
            .iter()
            .fold(leaf, |node, sibling| parent(node, *sibling))
    }
}

/// One published distribution, as the token holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedDistribution {
    pub height: u64,
    pub root: B256,
    pub total: U256,
    pub claimed: U256,
}

/// A deployed rewards token.
pub struct RewardsContract {
    rpc: Rpc,
    address: Address,
    /// How long to wait for a transaction to be mined.
    pub mine_timeout: Duration,
}

impl RewardsContract {
    /// Checks the URL and address; talks to nobody yet.
    pub fn new(rpc_url: &str, address: &str) -> Result<Self, EvmError> {
        Ok(Self {
            rpc: Rpc::new(rpc_url)?,
            address: crate::parse_address(address)?,
            mine_timeout: Duration::from_secs(120),
        })
    }

    pub fn address(&self) -> Address {
        self.address
    }

    async fn view<T: SolCall>(&self, call: T) -> Result<T::Return, EvmError> {
        let what = || format!("{}()", T::SIGNATURE.split('(').next().unwrap_or(""));
        let out = self
            .rpc
            .eth_call(self.address, &call.abi_encode())
            .await?
            .map_err(|revert| EvmError::Refused {
                what: what(),
                reason: crate::abi::describe_revert(&revert),
                conflict: false,
            })?;
        T::abi_decode_returns(&out).map_err(|e| EvmError::BadAnswer {
            method: "eth_call",
            reason: format!(
                "{} answered {} bytes that do not decode ({e}): is this Cohort's rewards token?",
                T::SIGNATURE,
                out.len()
            ),
        })
    }

    /// Checks that Cohort's rewards token is at the address; returns its
    /// schedule `(initial, halving)`.
    pub async fn check_deployed(&self) -> Result<(u64, u64), EvmError> {
        let chain_id = self.rpc.chain_id().await?;
        if self.rpc.code(self.address).await?.is_empty() {
            return Err(EvmError::NoContract {
                address: self.address,
                chain_id,
            });
        }
        let id = self.view(R::interfaceIdCall {}).await.ok();
        if id != Some(rewards_interface_id()) {
            return Err(EvmError::WrongContract {
                address: self.address,
                chain_id,
                reason: "its interfaceId() is not Cohort's rewards token's".into(),
            });
        }
        Ok((
            self.view(R::initialEmissionCall {}).await?,
            self.view(R::halvingIntervalCall {}).await?,
        ))
    }

    pub async fn distribution_count(&self) -> Result<u64, EvmError> {
        self.view(R::distributionCountCall {}).await
    }

    pub async fn distribution(&self, id: u64) -> Result<PublishedDistribution, EvmError> {
        let d = self.view(R::distributionAtCall { id }).await?;
        Ok(PublishedDistribution {
            height: d.height,
            root: d.root,
            total: d.total,
            claimed: d.claimedTotal,
        })
    }

    pub async fn claimed(&self, id: u64, account: Address) -> Result<bool, EvmError> {
        self.view(R::claimedCall { id, account }).await
    }

    pub async fn balance_of(&self, account: Address) -> Result<U256, EvmError> {
        self.view(R::balanceOfCall { account }).await
    }

    pub async fn total_supply(&self) -> Result<U256, EvmError> {
        self.view(R::totalSupplyCall {}).await
    }

    /// Publishes distribution `id` (the owner's key).
    pub async fn publish(
        &self,
        key: &EvmKey,
        id: u64,
        height: u64,
        root: B256,
        total: U256,
    ) -> Result<Receipt, EvmError> {
        let call = R::publishCall {
            id,
            height,
            root,
            total,
        };
        transact(
            &self.rpc,
            key,
            Some(self.address),
            call.abi_encode(),
            &format!("publishing distribution {id} (height {height})"),
            self.mine_timeout,
        )
        .await
    }

    /// Claims `account`'s leaf of distribution `id`; `key` pays the gas.
    pub async fn claim(
        &self,
        key: &EvmKey,
        id: u64,
        account: Address,
        amount: U256,
        proof: Vec<B256>,
    ) -> Result<Receipt, EvmError> {
        let call = R::claimCall {
            id,
            account,
            amount,
            proof,
        };
        transact(
            &self.rpc,
            key,
            Some(self.address),
            call.abi_encode(),
            &format!("claiming {amount} for {account} from distribution {id}"),
            self.mine_timeout,
        )
        .await
    }
}

/// Deploys the rewards token from `key`'s account (its publisher) with the
/// schedule `initial >> (h / halving)`.
pub async fn deploy_rewards(
    rpc_url: &str,
    key: &EvmKey,
    initial: u64,
    halving: u64,
) -> Result<Deployment, EvmError> {
    let code = rewards_init_code(initial, halving).map_err(|reason| EvmError::BadAnswer {
        method: "deploy",
        reason,
    })?;
    deploy_code(rpc_url, key, code, "deploying the rewards token").await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use alloy_sol_types::{SolError as _, SolEvent as _};

    use super::*;

    /// The hand-written interface and the compiled ABI agree on every
    /// selector, both ways.
    #[test]
    fn interface_matches_the_compiled_abi() {
        let [functions, errors, events] = crate::compiled_selectors(REWARDS_ARTIFACT_JSON);
        let ours: BTreeSet<Vec<u8>> = R::ICohortRewardsCalls::SELECTORS
            .iter()
            .map(|s| s.to_vec())
            .collect();
        assert_eq!(ours, functions);
        let ours: BTreeSet<Vec<u8>> = R::ICohortRewardsErrors::SELECTORS
            .iter()
            .map(|s| s.to_vec())
            .collect();
        assert_eq!(ours, errors);
        let ours: BTreeSet<Vec<u8>> = [
            R::Transfer::SIGNATURE_HASH.to_vec(),
            R::Approval::SIGNATURE_HASH.to_vec(),
            R::DistributionPublished::SIGNATURE_HASH.to_vec(),
            R::Claimed::SIGNATURE_HASH.to_vec(),
        ]
        .into();
        assert_eq!(ours, events);
        assert!(REWARDS_SOURCE.contains("INTERFACE_ID = keccak256(\"cohort.rewards.v1\")"));
        assert!(rewards_init_code(1, 1).unwrap().len() > 1000);
    }

    #[test]
    fn every_leaf_proves_into_the_root_and_nothing_else_does() {
        let accounts: Vec<Address> = (1u8..=5).map(Address::repeat_byte).collect();
        for n in 0..=accounts.len() {
            let leaves: Vec<B256> = accounts[..n]
                .iter()
                .enumerate()
                .map(|(i, a)| payout_leaf(3, *a, U256::from(100 + i)))
                .collect();
            let tree = PayoutTree::new(leaves.clone());
            if n == 0 {
                assert_eq!(tree.root(), B256::ZERO);
            }
            for (i, leaf) in leaves.iter().enumerate() {
                assert_eq!(PayoutTree::root_from(*leaf, &tree.proof(i)), tree.root());
                // Another amount, account or distribution is another leaf.
                let forged = payout_leaf(3, accounts[i], U256::from(1_000_000));
                assert_ne!(PayoutTree::root_from(forged, &tree.proof(i)), tree.root());
                let replayed = payout_leaf(4, accounts[i], U256::from(100 + i));
                assert_ne!(PayoutTree::root_from(replayed, &tree.proof(i)), tree.root());
            }
        }
    }

    #[test]
    fn reverts_read_as_sentences() {
        let data = R::OverEmission {
            height: 3,
            published: U256::from(11),
            emission: U256::from(10),
        }
        .abi_encode();
        let text = crate::abi::describe_revert(&data);
        assert!(
            text.contains("OverEmission") && text.contains("height 3"),
            "{text}"
        );
    }
}
