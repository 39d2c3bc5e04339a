//! Reading the anchor contract ([`AnchorContract`]), appending to it
//! ([`AnchorWriter`], which is the coordinator's [`Anchor`]) and deploying
//! it ([`deploy`]).

use std::time::{Duration, Instant};

use alloy_consensus::{SignableTransaction as _, TxEip1559, TxLegacy};
use alloy_eips::eip2718::Encodable2718 as _;
use alloy_primitives::{Address, B256, Bytes, TxKind, U256};
use alloy_sol_types::SolCall;
use cohort_ledger::{Anchor, AnchorError, AnchorFuture, AnchorReceipt, Hash};

use crate::abi::{self, ICohortLedgerAnchor as C};
use crate::key::EvmKey;
use crate::rpc::{NodeError, Receipt, Rpc};
use crate::{Deployment, EvmError};

/// How many leaf hashes one `entriesFrom` read asks for.
const PAGE: u64 = 1024;

/// Parses a contract address: `0x` and 40 hex digits; mixed case must be a
/// valid EIP-55 checksum (it catches a mistyped digit).
pub fn parse_address(text: &str) -> Result<Address, EvmError> {
    let bad = || EvmError::BadAddress {
        text: text.to_string(),
        reason: "expected 0x and 40 hex digits".into(),
    };
    let digits = text.strip_prefix("0x").ok_or_else(bad)?;
    if digits.len() != 40 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mixed = digits.bytes().any(|b| b.is_ascii_lowercase())
        && digits.bytes().any(|b| b.is_ascii_uppercase());
    if mixed {
        Address::parse_checksummed(text, None).map_err(|_| EvmError::BadAddress {
            text: text.to_string(),
            reason: "its mixed case is not a valid EIP-55 checksum (a mistyped digit?)".into(),
        })
    } else {
        text.parse().map_err(|_| bad())
    }
}

/// A deployed anchor contract, read-only: what a validator needs.
pub struct AnchorContract {
    rpc: Rpc,
    address: Address,
}

impl AnchorContract {
    /// Checks the URL and address; talks to nobody yet.
    pub fn new(rpc_url: &str, address: &str) -> Result<Self, EvmError> {
        Ok(Self {
            rpc: Rpc::new(rpc_url)?,
            address: parse_address(address)?,
        })
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// The node's URL without path or query (which may hold an API key).
    pub fn node(&self) -> &str {
        self.rpc.shown()
    }

    /// Checks that Cohort's anchor contract is at the address; returns the
    /// chain id.
    pub async fn check_deployed(&self) -> Result<u64, EvmError> {
        let chain_id = self.rpc.chain_id().await?;
        if self.rpc.code(self.address).await?.is_empty() {
            return Err(EvmError::NoContract {
                address: self.address,
                chain_id,
            });
        }
        let wrong = |reason: String| EvmError::WrongContract {
            address: self.address,
            chain_id,
            reason,
        };
        match self
            .rpc
            .eth_call(self.address, &C::interfaceIdCall {}.abi_encode())
            .await?
        {
            Ok(out) => match C::interfaceIdCall::abi_decode_returns(&out) {
                Ok(id) if id == abi::interface_id() => Ok(chain_id),
                Ok(id) => Err(wrong(format!("its interfaceId() is {id}"))),
                Err(_) => Err(wrong("it has no interfaceId()".into())),
            },
            Err(_) => Err(wrong("it has no interfaceId()".into())),
        }
    }

    async fn view<T: SolCall>(&self, call: T) -> Result<T::Return, EvmError> {
        let out = self
            .rpc
            .eth_call(self.address, &call.abi_encode())
            .await?
            .map_err(|revert| EvmError::Refused {
                what: format!("{}()", T::SIGNATURE.split('(').next().unwrap_or("")),
                reason: abi::describe_revert(&revert),
                conflict: false,
            })?;
        T::abi_decode_returns(&out).map_err(|e| EvmError::BadAnswer {
            method: "eth_call",
            reason: format!(
                "{} answered {} bytes that do not decode ({e}): is this the anchor contract?",
                T::SIGNATURE,
                out.len()
            ),
        })
    }

    pub async fn owner(&self) -> Result<Address, EvmError> {
        self.view(C::ownerCall {}).await
    }

    /// How many leaf hashes are anchored.
    pub async fn entry_count(&self) -> Result<u64, EvmError> {
        self.view(C::entryCountCall {}).await
    }

    /// Up to `count` leaf hashes from `start`, in pages.
    pub async fn entries(&self, start: u64, count: u64) -> Result<Vec<Hash>, EvmError> {
        let mut out = Vec::new();
        let end = start.saturating_add(count);
        let mut at = start;
        while at < end {
            let want = (end - at).min(PAGE);
            let page = self
                .view(C::entriesFromCall {
                    start: at,
                    count: want,
                })
                .await?;
            let got = page.len() as u64;
            out.extend(page.into_iter().map(|h| h.0));
            if got < want {
                break;
            }
            at += got;
        }
        Ok(out)
    }

    /// The checkpoint with the largest tree size, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<(u64, Hash)>, EvmError> {
        let latest = self.view(C::latestCheckpointCall {}).await?;
        Ok((latest.treeSize > 0).then_some((latest.treeSize, latest.root.0)))
    }

    /// The root anchored for a tree size, if one was.
    pub async fn checkpoint_at(&self, tree_size: u64) -> Result<Option<Hash>, EvmError> {
        let root = self
            .view(C::checkpointAtCall {
                treeSize: tree_size,
            })
            .await?;
        Ok((root != B256::ZERO).then_some(root.0))
    }
}

/// The contract plus the owner's key: appends entries and checkpoints.
pub struct AnchorWriter {
    contract: AnchorContract,
    key: EvmKey,
    /// How long to wait for a transaction to be mined.
    pub mine_timeout: Duration,
}

impl AnchorWriter {
    pub fn new(rpc_url: &str, address: &str, key: EvmKey) -> Result<Self, EvmError> {
        Ok(Self {
            contract: AnchorContract::new(rpc_url, address)?,
            key,
            mine_timeout: Duration::from_secs(120),
        })
    }

    pub fn contract(&self) -> &AnchorContract {
        &self.contract
    }

    pub fn account(&self) -> Address {
        self.key.address()
    }

    /// Checks the contract is Cohort's, that this key owns it, and that the
    /// account holds something to pay gas with.
    pub async fn check(&self) -> Result<u64, EvmError> {
        let chain_id = self.contract.check_deployed().await?;
        let owner = self.contract.owner().await?;
        if owner != self.key.address() {
            return Err(EvmError::NotOwner {
                contract: self.contract.address,
                owner,
                key: self.key.address(),
            });
        }
        let balance = self.contract.rpc.balance(self.key.address()).await?;
        if balance.is_zero() {
            return Err(EvmError::InsufficientFunds {
                account: self.key.address(),
                balance,
                needed: None,
                what: "anchoring".into(),
            });
        }
        Ok(chain_id)
    }

    /// Appends `leaves` at `first_index` and the root of the tree they
    /// complete, in one transaction.
    pub async fn anchor(
        &self,
        first_index: u64,
        leaves: &[Hash],
        root: Hash,
    ) -> Result<Receipt, EvmError> {
        let call = C::anchorCall {
            firstIndex: first_index,
            hashes: leaves.iter().map(|h| B256::from(*h)).collect(),
            root: B256::from(root),
        };
        let what = if leaves.len() == 1 {
            format!("anchoring entry {first_index}")
        } else {
            format!(
                "anchoring entries {first_index}..={}",
                first_index + leaves.len() as u64 - 1
            )
        };
        transact(
            &self.contract.rpc,
            &self.key,
            Some(self.contract.address),
            call.abi_encode(),
            &what,
            self.mine_timeout,
        )
        .await
    }

    /// Appends leaf hashes without a checkpoint (tests use it to play an
    /// intruder holding the owner's key).
    pub async fn append_entries(
        &self,
        first_index: u64,
        leaves: &[Hash],
    ) -> Result<Receipt, EvmError> {
        let call = C::appendEntriesCall {
            firstIndex: first_index,
            hashes: leaves.iter().map(|h| B256::from(*h)).collect(),
        };
        transact(
            &self.contract.rpc,
            &self.key,
            Some(self.contract.address),
            call.abi_encode(),
            &format!("appending entries at {first_index}"),
            self.mine_timeout,
        )
        .await
    }
}

impl From<EvmError> for AnchorError {
    fn from(e: EvmError) -> Self {
        let message = e.to_string();
        match e {
            EvmError::NoContract { .. }
            | EvmError::WrongContract { .. }
            | EvmError::NotOwner { .. }
            | EvmError::Key { .. }
            | EvmError::BadAddress { .. }
            | EvmError::BadUrl { .. }
            | EvmError::Refused {
                conflict: false, ..
            } => AnchorError::Fatal(message),
            _ => AnchorError::Retry(message),
        }
    }
}

impl Anchor for AnchorWriter {
    fn describe(&self) -> String {
        format!(
            "EVM contract {} via {} (account {})",
            self.contract.address,
            self.contract.node(),
            self.key.address()
        )
    }

    fn check(&self) -> AnchorFuture<'_, ()> {
        Box::pin(async move {
            AnchorWriter::check(self).await?;
            Ok(())
        })
    }

    fn anchored_count(&self) -> AnchorFuture<'_, u64> {
        Box::pin(async move { Ok(self.contract.entry_count().await?) })
    }

    fn anchored_leaves(&self, start: u64, count: u64) -> AnchorFuture<'_, Vec<Hash>> {
        Box::pin(async move { Ok(self.contract.entries(start, count).await?) })
    }

    fn anchor<'a>(
        &'a self,
        first_index: u64,
        leaves: &'a [Hash],
        root: Hash,
    ) -> AnchorFuture<'a, AnchorReceipt> {
        Box::pin(async move {
            let receipt = AnchorWriter::anchor(self, first_index, leaves, root).await?;
            Ok(AnchorReceipt {
                reference: receipt.transaction.to_string(),
                block: Some(receipt.block),
                cost: Some(receipt.gas_used),
            })
        })
    }
}

/// Deploys the anchor contract from `key`'s account, which becomes its
/// owner.
pub async fn deploy(rpc_url: &str, key: &EvmKey) -> Result<Deployment, EvmError> {
    let code = abi::init_code().map_err(|reason| EvmError::BadAnswer {
        method: "deploy",
        reason,
    })?;
    deploy_code(rpc_url, key, code, "deploying the anchor contract").await
}

/// Sends `code` (init code with its constructor arguments) as a contract
/// creation from `key`'s account and waits for the contract's address.
pub(crate) async fn deploy_code(
    rpc_url: &str,
    key: &EvmKey,
    code: Vec<u8>,
    what: &str,
) -> Result<Deployment, EvmError> {
    let rpc = Rpc::new(rpc_url)?;
    let chain_id = rpc.chain_id().await?;
    let receipt = transact(&rpc, key, None, code, what, Duration::from_secs(120)).await?;
    let address = receipt
        .contract_address
        .ok_or_else(|| EvmError::BadAnswer {
            method: "eth_getTransactionReceipt",
            reason: "the deployment's receipt names no contract address".into(),
        })?;
    Ok(Deployment {
        address,
        chain_id,
        owner: key.address(),
        transaction: receipt.transaction,
        block: receipt.block,
        gas_used: receipt.gas_used,
    })
}

fn refused(what: &str, node: NodeError) -> EvmError {
    match node.revert {
        Some(data) => EvmError::Refused {
            what: what.to_string(),
            reason: abi::describe_revert(&data),
            conflict: abi::is_index_conflict(&data),
        },
        None => EvmError::Refused {
            what: what.to_string(),
            reason: node.message,
            conflict: false,
        },
    }
}

/// Signs and sends one transaction from `key` (EIP-1559 where the chain has
/// a base fee, else legacy with EIP-155), then waits for its receipt.
pub(crate) async fn transact(
    rpc: &Rpc,
    key: &EvmKey,
    to: Option<Address>,
    input: Vec<u8>,
    what: &str,
    mine_timeout: Duration,
) -> Result<Receipt, EvmError> {
    let from = key.address();
    let estimate = rpc
        .estimate_gas(from, to, &input)
        .await?
        .map_err(|node| refused(what, node))?;
    let gas_limit = estimate + estimate / 5 + 10_000;
    let chain_id = rpc.chain_id().await?;
    let nonce = rpc.nonce(from).await?;
    let kind = to.map_or(TxKind::Create, TxKind::Call);
    let input = Bytes::from(input);
    let (raw, max_price) = match rpc.base_fee().await? {
        Some(base_fee) => {
            let tip = rpc.priority_fee().await?;
            let max_fee = base_fee.saturating_mul(2).saturating_add(tip);
            let tx = TxEip1559 {
                chain_id,
                nonce,
                gas_limit,
                max_fee_per_gas: max_fee,
                max_priority_fee_per_gas: tip,
                to: kind,
                value: U256::ZERO,
                access_list: Default::default(),
                input,
            };
            let signature = key.sign_hash(tx.signature_hash());
            (tx.into_signed(signature).encoded_2718(), max_fee)
        }
        None => {
            let gas_price = rpc.gas_price().await?;
            let tx = TxLegacy {
                chain_id: Some(chain_id),
                nonce,
                gas_price,
                gas_limit,
                to: kind,
                value: U256::ZERO,
                input,
            };
            let signature = key.sign_hash(tx.signature_hash());
            (tx.into_signed(signature).encoded_2718(), gas_price)
        }
    };
    let needed = U256::from(gas_limit) * U256::from(max_price);
    let balance = rpc.balance(from).await?;
    if balance < needed {
        return Err(EvmError::InsufficientFunds {
            account: from,
            balance,
            needed: Some(needed),
            what: what.to_string(),
        });
    }
    let tx = rpc.send_raw(&raw).await?;
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(receipt) = rpc.receipt(tx).await? {
            if !receipt.success {
                return Err(EvmError::Reverted {
                    what: what.to_string(),
                    transaction: tx,
                });
            }
            return Ok(receipt);
        }
        if started.elapsed() >= mine_timeout {
            return Err(EvmError::NotMined {
                what: what.to_string(),
                transaction: tx,
                secs: mine_timeout.as_secs(),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        let good = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
        assert_eq!(parse_address(good).unwrap().to_string(), good);
        assert!(parse_address(&good.to_lowercase()).is_ok());
        // One digit changed: the checksum catches it.
        let err = parse_address("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92267").unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        for bad in [
            "",
            "f39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
            "0x1234",
            "0xzz",
        ] {
            let err = parse_address(bad).unwrap_err();
            assert!(err.to_string().contains("40 hex digits"), "{err}");
        }
    }

    #[test]
    fn errors_split_into_retry_and_fatal() {
        let retry = AnchorError::from(EvmError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "refused".into(),
        });
        assert!(matches!(retry, AnchorError::Retry(_)));
        let conflict = AnchorError::from(EvmError::Refused {
            what: "anchoring entry 3".into(),
            reason: "UnexpectedIndex".into(),
            conflict: true,
        });
        assert!(matches!(conflict, AnchorError::Retry(_)));
        let fatal = AnchorError::from(EvmError::NotOwner {
            contract: Address::ZERO,
            owner: Address::ZERO,
            key: Address::ZERO,
        });
        assert!(matches!(fatal, AnchorError::Fatal(_)));
    }
}
