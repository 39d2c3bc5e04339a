//! `cohort rewards deploy | publish | claim`: the ledger's payouts as an
//! ERC-20 token on an EVM chain. Every payout entry becomes one
//! distribution (a Merkle root over its payees' `(distribution, account,
//! amount)` leaves) that the operator publishes; each hospital or validator
//! claims its own leaves, and the token caps every height's distributions
//! at the halving schedule's emission on chain.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cohort_coordinator::rewards::report::{self, Distribution};
use cohort_ledger_evm::{Address, B256, EvmKey, PayoutTree, RewardsContract, U256, payout_leaf};
use serde::Serialize;

/// Which EVM account each hospital or validator is paid at: a CSV of
/// `name,address` lines (`#` starts a comment; a `name,address` header is
/// allowed).
#[derive(Debug, Clone, Default)]
pub struct PayoutAddresses(BTreeMap<String, Address>);

impl PayoutAddresses {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading payout addresses {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("payout addresses {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut names = BTreeMap::new();
        let mut accounts = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() || (i == 0 && line.replace(' ', "") == "name,address") {
                continue;
            }
            let Some((name, address)) = line.split_once(',') else {
                bail!("line {}: expected `name,address`, found `{line}`", i + 1);
            };
            let (name, address) = (name.trim(), address.trim());
            let account = cohort_ledger_evm::parse_address(address)
                .with_context(|| format!("line {}: {name}'s address", i + 1))?;
            if let Some(other) = accounts.insert(account, name.to_string()) {
                bail!(
                    "line {}: {name} and {other} are both paid at {account}; each payee needs its own account",
                    i + 1
                );
            }
            if names.insert(name.to_string(), account).is_some() {
                bail!("line {}: {name} is listed twice", i + 1);
            }
        }
        Ok(Self(names))
    }

    pub fn get(&self, name: &str) -> Option<Address> {
        self.0.get(name).copied()
    }
}

/// One distribution's leaves: `(payee, account, amount)` for every payout
/// above 0 whose payee has an address.
fn leaves(
    id: u64,
    d: &Distribution,
    addresses: &PayoutAddresses,
) -> (Vec<(String, Address, u64)>, PayoutTree) {
    let payees: Vec<(String, Address, u64)> = d
        .payouts
        .iter()
        .filter(|p| p.reward > 0)
        .filter_map(|p| {
            addresses
                .get(&p.name)
                .map(|a| (p.name.clone(), a, p.reward))
        })
        .collect();
    let tree = PayoutTree::new(
        payees
            .iter()
            .map(|(_, account, amount)| payout_leaf(id, *account, U256::from(*amount)))
            .collect(),
    );
    (payees, tree)
}

/// The ledger's distributions, after its signatures, root and every payout
/// check out (`cohort rewards verify`).
async fn ledger_distributions(
    source: &crate::audit::LedgerSource,
) -> Result<(Vec<Distribution>, Option<(u64, u64)>)> {
    let contents = super::load(source).await?;
    let verification = super::verify(&contents).context(
        "the ledger's payouts do not verify (`cohort rewards verify`); nothing is published from it",
    )?;
    let entries = super::verified_entries(&contents)?;
    Ok((report::distributions(&entries), verification.schedule))
}

/// `cohort rewards deploy`: the token, with the coordinator's schedule.
pub async fn deploy(
    rpc_url: &str,
    key_file: &Path,
    initial: u64,
    halving: u64,
) -> Result<cohort_ledger_evm::Deployment> {
    if halving == 0 {
        bail!("--emission-halving must be at least 1");
    }
    let key = EvmKey::from_file(key_file)?;
    cohort_ledger_evm::deploy_rewards(rpc_url, &key, initial, halving)
        .await
        .context("deploying the rewards token")
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishedRow {
    pub distribution: u64,
    pub job_id: String,
    pub round: u32,
    pub height: u64,
    /// Base units its leaves can mint.
    pub total: u64,
    pub payees: usize,
    /// Payees with a reward but no address: their part stays unminted.
    pub unmapped: Vec<String>,
    /// Gas of the publishing transaction; absent when it was already on
    /// chain (and matched the ledger).
    pub gas_used: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    pub contract: String,
    pub distributions: Vec<PublishedRow>,
}

/// `cohort rewards publish`: every distribution of the ledger not yet on
/// chain, in order; those already there must match the ledger.
pub async fn publish(
    source: &crate::audit::LedgerSource,
    rpc_url: &str,
    contract: &str,
    key_file: &Path,
    addresses: &PayoutAddresses,
) -> Result<PublishReport> {
    let key = EvmKey::from_file(key_file)?;
    let token = RewardsContract::new(rpc_url, contract)?;
    let schedule = token.check_deployed().await?;
    let (distributions, ledger_schedule) = ledger_distributions(source).await?;
    if let Some(ledger) = ledger_schedule
        && ledger != schedule
    {
        bail!(
            "the token's schedule is {} halving every {}, the ledger's {} halving every {}: deploy a token with the ledger's (`cohort rewards deploy --emission-initial {} --emission-halving {}`)",
            schedule.0,
            schedule.1,
            ledger.0,
            ledger.1,
            ledger.0,
            ledger.1
        );
    }
    let on_chain = token.distribution_count().await?;
    if on_chain > distributions.len() as u64 {
        bail!(
            "the token holds {on_chain} distributions, the ledger only {}: is this the token of another coordinator?",
            distributions.len()
        );
    }
    let mut rows = Vec::new();
    for (id, d) in distributions.iter().enumerate() {
        let id = id as u64;
        let (payees, tree) = leaves(id, d, addresses);
        let total: u64 = payees.iter().map(|(_, _, amount)| amount).sum();
        let unmapped = d
            .payouts
            .iter()
            .filter(|p| p.reward > 0 && addresses.get(&p.name).is_none())
            .map(|p| p.name.clone())
            .collect();
        let gas_used = if id < on_chain {
            let published = token.distribution(id).await?;
            if published.root != tree.root()
                || published.total != U256::from(total)
                || published.height != d.height
            {
                bail!(
                    "distribution {id} on chain (height {}, total {}, root {}) is not the ledger's (height {}, total {total}, root {}): the addresses file or the ledger changed since it was published",
                    published.height,
                    published.total,
                    published.root,
                    d.height,
                    tree.root()
                );
            }
            None
        } else {
            let receipt = token
                .publish(&key, id, d.height, tree.root(), U256::from(total))
                .await?;
            eprintln!(
                "published distribution {id}: job {} round {} height {}, {total} base units to {} payees ({} gas)",
                d.job_id,
                d.round,
                d.height,
                payees.len(),
                receipt.gas_used
            );
            Some(receipt.gas_used)
        };
        rows.push(PublishedRow {
            distribution: id,
            job_id: d.job_id.clone(),
            round: d.round,
            height: d.height,
            total,
            payees: payees.len(),
            unmapped,
            gas_used,
        });
    }
    Ok(PublishReport {
        contract: token.address().to_string(),
        distributions: rows,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ClaimRow {
    pub distribution: u64,
    pub amount: u64,
    pub gas_used: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClaimReport {
    pub name: String,
    pub account: String,
    pub claims: Vec<ClaimRow>,
    /// Published distributions paying it that were claimed before.
    pub already_claimed: u64,
    /// Its token balance afterwards, in base units.
    pub balance: String,
}

/// `cohort rewards claim NAME`: mints every published, unclaimed part of
/// NAME's rewards to its address, with proofs built from the ledger; `key`
/// pays the gas (any account may).
pub async fn claim(
    source: &crate::audit::LedgerSource,
    rpc_url: &str,
    contract: &str,
    key_file: &Path,
    addresses: &PayoutAddresses,
    name: &str,
) -> Result<ClaimReport> {
    let Some(account) = addresses.get(name) else {
        bail!("{name} has no address in the payout addresses file");
    };
    let key = EvmKey::from_file(key_file)?;
    let token = RewardsContract::new(rpc_url, contract)?;
    token.check_deployed().await?;
    let (distributions, _) = ledger_distributions(source).await?;
    let on_chain = token.distribution_count().await?;
    let mut claims = Vec::new();
    let mut already_claimed = 0;
    for (id, d) in distributions.iter().enumerate().take(on_chain as usize) {
        let id = id as u64;
        let (payees, tree) = leaves(id, d, addresses);
        let Some(index) = payees.iter().position(|(payee, _, _)| payee == name) else {
            continue;
        };
        if tree.root() != token.distribution(id).await?.root {
            bail!(
                "distribution {id} on chain was published with other addresses or amounts than this ledger and addresses file give"
            );
        }
        if token.claimed(id, account).await? {
            already_claimed += 1;
            continue;
        }
        let amount = payees[index].2;
        let proof: Vec<B256> = tree.proof(index);
        let receipt = token
            .claim(&key, id, account, U256::from(amount), proof)
            .await?;
        claims.push(ClaimRow {
            distribution: id,
            amount,
            gas_used: receipt.gas_used,
        });
    }
    Ok(ClaimReport {
        name: name.to_string(),
        account: account.to_string(),
        claims,
        already_claimed,
        balance: token.balance_of(account).await?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payout_addresses_are_checked() {
        let a = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
        let b = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
        let ok = PayoutAddresses::parse(&format!(
            "name,address\n# hospitals\nhospital-0, {a}\nvalidator-1,{b} # a validator\n"
        ))
        .unwrap();
        assert_eq!(ok.get("hospital-0").unwrap().to_string(), a);
        assert_eq!(ok.get("validator-1").unwrap().to_string(), b);
        assert!(ok.get("hospital-9").is_none());
        for (text, why) in [
            (format!("h0 {a}"), "expected `name,address`"),
            ("h0,0x1234".to_string(), "h0's address"),
            (format!("h0,{a}\nh1,{a}"), "both paid at"),
            (format!("h0,{a}\nh0,{b}"), "listed twice"),
        ] {
            let err = format!("{:#}", PayoutAddresses::parse(&text).unwrap_err());
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
