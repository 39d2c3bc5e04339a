//! Validators and round verification (issue 16): re-checking a round's
//! update proofs from the ledger alone, signing attestations
//! (`cohort validator`), and checking proofs and attestations together
//! (`cohort verify round`).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use cohort_identity::{Kit, Role};
use cohort_ledger::{ATTESTATION_CONTEXT, Entry, Record, Verdict, attestation_statement};
use cohort_proofs::{Context, VerifyingKey, committed};
use cohort_protocol::Security;
use serde::Serialize;
use tracing::{info, warn};

use crate::developer::{self, Developer};

/// `cohort verify round --json`.
#[derive(Debug, Clone, Serialize)]
pub struct RoundCheck {
    pub job_id: String,
    pub round: u32,
    pub proofs: Vec<ProofCheck>,
    pub attestations: Vec<AttestationCheck>,
    /// Hospitals whose update the round left out.
    pub excluded: Vec<String>,
    /// Where the job's Groth16 keys came from; absent for proofs that need
    /// no setup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup: Option<SetupProvenance>,
}

/// Where a job's Groth16 keys came from, as its `proof_setup` entry says.
#[derive(Debug, Clone, Serialize)]
pub struct SetupProvenance {
    /// `coordinator` (made by it alone) or `ceremony` (`cohort setup`).
    pub keys: &'static str,
    /// With a ceremony: the SHA-256 of its file, which `cohort setup verify
    /// FILE --tls KIT` checks (every contribution and its signature).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceremony_sha256: Option<String>,
    /// With a ceremony: `phase: name` of every contribution, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub contributors: Vec<String>,
}

/// A job's latest `proof_setup` entry.
pub(crate) struct RecordedSetup<'a> {
    pub verifying_key_hex: &'a str,
    pub verifying_key_sha256: &'a str,
    pub ceremony: Option<&'a cohort_ledger::SetupCeremony>,
}

/// The job's latest `proof_setup` entry, if its proofs needed keys.
pub(crate) fn recorded_setup<'a>(entries: &'a [Entry], job_id: &str) -> Option<RecordedSetup<'a>> {
    entries.iter().rev().find_map(|e| match &e.record {
        Record::ProofSetup {
            job_id: j,
            verifying_key,
            verifying_key_sha256,
            ceremony,
            ..
        } if j == job_id => Some(RecordedSetup {
            verifying_key_hex: verifying_key,
            verifying_key_sha256,
            ceremony: ceremony.as_ref(),
        }),
        _ => None,
    })
}

/// The provenance of the job's keys from its latest `proof_setup` entry.
fn setup_provenance(entries: &[Entry], job_id: &str) -> Option<SetupProvenance> {
    Some(match recorded_setup(entries, job_id)?.ceremony {
        None => SetupProvenance {
            keys: "coordinator",
            ceremony_sha256: None,
            contributors: Vec::new(),
        },
        Some(c) => SetupProvenance {
            keys: "ceremony",
            ceremony_sha256: Some(c.sha256.clone()),
            contributors: c
                .contributors
                .iter()
                .map(|c| format!("{}: {}", c.phase, c.name))
                .collect(),
        },
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ProofCheck {
    pub client: String,
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttestationCheck {
    pub validator: String,
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Entries of a ledger whose every signature and Merkle root checked out.
pub fn checked_entries(contents: &cohort_coordinator::store::LedgerContents) -> Result<Vec<Entry>> {
    let checkpoint = contents
        .checkpoint
        .as_ref()
        .ok_or_else(|| anyhow!("the ledger has no signed checkpoint"))?;
    cohort_ledger::audit(
        &contents.leaves,
        &contents.withheld,
        &contents.openings,
        &checkpoint.note,
        &checkpoint.key_name,
        None,
    )
    .context("the ledger does not verify")?;
    Ok(crate::audit::entries_in(contents, None)?
        .into_iter()
        .map(|(_, entry)| entry)
        .collect())
}

/// The job's verifying key from its latest `proof_setup` entry, checked
/// against the digest recorded beside it.
fn verifying_key(entries: &[Entry], job_id: &str) -> Result<Option<VerifyingKey>> {
    let Some(setup) = recorded_setup(entries, job_id) else {
        return Ok(None);
    };
    let bytes =
        hex::decode(setup.verifying_key_hex).context("the recorded verifying key is not hex")?;
    if cohort_proofs::keys::digest(&bytes) != setup.verifying_key_sha256 {
        bail!("the recorded verifying key does not match its recorded SHA-256");
    }
    Ok(Some(
        VerifyingKey::from_bytes(&bytes).context("the recorded verifying key")?,
    ))
}

/// This machine's verdicts on one round's proofs.
pub struct RoundVerdicts {
    /// One per aggregated update.
    pub verdicts: Vec<Verdict>,
    /// The clients the coordinator recorded as excluded.
    pub excluded: Vec<String>,
    /// Why each verdict is invalid (`None` for a valid one), in verdict order.
    pub reasons: Vec<Option<String>>,
}

/// The recorded round `(job_id, round)`: its aggregated updates and who
/// was excluded.
fn recorded_round<'a>(
    entries: &'a [Entry],
    job_id: &str,
    round: u32,
) -> Result<(
    &'a [cohort_ledger::UpdateRecord],
    &'a [cohort_ledger::Exclusion],
)> {
    entries
        .iter()
        .find_map(|e| match &e.record {
            Record::RoundCompleted {
                job_id: j,
                round: r,
                updates,
                excluded,
                ..
            } if j == job_id && *r == round => Some((&updates[..], &excluded[..])),
            _ => None,
        })
        .ok_or_else(|| anyhow!("the ledger records no round {round} of job `{job_id}`"))
}

/// The committed updates of a round's hospitals (secure aggregation with
/// proofs), as fetched from the coordinator, or why they could not be.
pub type Commitments = std::collections::BTreeMap<String, Result<Vec<u8>, String>>;

/// Fetches the commitments of every update of `(job_id, round)` proved
/// over commitments (`GetCommitments`); the ledger's SHA-256 of each is
/// checked when its proof is.
pub async fn fetch_commitments(
    dev: &mut Developer,
    entries: &[Entry],
    job_id: &str,
    round: u32,
) -> Result<Commitments> {
    let (updates, _) = recorded_round(entries, job_id, round)?;
    let mut fetched = Commitments::new();
    for update in updates {
        let committed = update
            .proof
            .as_ref()
            .is_some_and(|p| p.statement == committed::STATEMENT_COMMITTED_UPDATE_NORM);
        if !committed {
            continue;
        }
        let bytes = developer::fetch_commitments(dev, job_id, round, &update.client)
            .await
            .map_err(|e| format!("its commitments could not be fetched: {e:#}"));
        fetched.insert(update.client.clone(), bytes);
    }
    Ok(fetched)
}

/// Re-checks every proof of `(job_id, round)` with this code and the
/// ledger's verifying key (or, for updates proved over their commitments,
/// the `commitments` fetched): one verdict per aggregated update.
pub fn verdicts(
    entries: &[Entry],
    job_id: &str,
    round: u32,
    commitments: &Commitments,
) -> Result<RoundVerdicts> {
    let (updates, excluded) = recorded_round(entries, job_id, round)?;
    let vk = verifying_key(entries, job_id)?;
    let mut verdicts = Vec::new();
    let mut reasons = Vec::new();
    for update in updates {
        let context = Context {
            job_id: job_id.to_string(),
            round,
            client: update.client.clone(),
        };
        let outcome = match (&vk, &update.proof) {
            (_, None) => Err("aggregated without a proof".to_string()),
            (_, Some(p)) if p.statement == committed::STATEMENT_COMMITTED_UPDATE_NORM => {
                match commitments.get(&update.client) {
                    Some(Ok(bytes)) => committed::verify_recorded(
                        &context,
                        p.bound,
                        &p.update_hash,
                        bytes,
                        &p.proof,
                    )
                    .map_err(|e| e.to_string()),
                    Some(Err(e)) => Err(e.clone()),
                    None => Err("its commitments were not fetched".to_string()),
                }
            }
            (None, Some(_)) => Err("the job has no verifying key on the ledger".to_string()),
            (Some(vk), Some(p)) => {
                cohort_proofs::verify_recorded(vk, &context, p.bound, &p.update_hash, &p.proof)
                    .map_err(|e| e.to_string())
            }
        };
        verdicts.push(Verdict {
            client: update.client.clone(),
            statement: update
                .proof
                .as_ref()
                .map(|p| p.statement.clone())
                .unwrap_or_else(|| cohort_proofs::STATEMENT_UPDATE_NORM.to_string()),
            valid: outcome.is_ok(),
        });
        reasons.push(outcome.err());
    }
    let excluded = excluded.iter().map(|e| e.client.clone()).collect();
    Ok(RoundVerdicts {
        verdicts,
        excluded,
        reasons,
    })
}

/// Proofs and attestations of one round, from a checked ledger. An
/// attestation counts as valid when its certificate is a validator's from
/// this consortium (with `kit`), its signature verifies, and its verdicts
/// agree with this machine's own.
pub fn check_round(
    entries: &[Entry],
    job_id: &str,
    round: u32,
    commitments: &Commitments,
    kit: Option<&Kit>,
) -> Result<RoundCheck> {
    let RoundVerdicts {
        verdicts,
        excluded,
        reasons,
    } = verdicts(entries, job_id, round, commitments)?;
    let proofs = verdicts
        .iter()
        .zip(reasons)
        .map(|(v, reason)| ProofCheck {
            client: v.client.clone(),
            valid: v.valid,
            reason,
        })
        .collect();
    let attestations = entries
        .iter()
        .filter_map(|e| match &e.record {
            Record::Attestation {
                job_id: j,
                round: r,
                validator,
                verdicts: claimed,
                validator_certificate,
                validator_signature,
            } if j == job_id && *r == round => {
                let outcome = check_attestation(
                    kit,
                    (job_id, round, validator, claimed),
                    validator_certificate,
                    validator_signature,
                    &verdicts,
                );
                Some(AttestationCheck {
                    validator: validator.clone(),
                    valid: outcome.is_ok(),
                    reason: outcome.err(),
                })
            }
            _ => None,
        })
        .collect();
    Ok(RoundCheck {
        job_id: job_id.to_string(),
        round,
        proofs,
        attestations,
        excluded,
        setup: setup_provenance(entries, job_id),
    })
}

fn check_attestation(
    kit: Option<&Kit>,
    (job_id, round, validator, claimed): (&str, u32, &str, &[Verdict]),
    certificate_hex: &str,
    signature_hex: &str,
    ours: &[Verdict],
) -> Result<(), String> {
    let der = hex::decode(certificate_hex).map_err(|e| format!("certificate: {e}"))?;
    let principal = match kit {
        Some(kit) => kit.verify_member(&der),
        None => cohort_identity::Principal::from_certificate(&der),
    }
    .map_err(|e| format!("certificate: {e}"))?;
    if principal.role != Role::Validator || principal.name != validator {
        return Err(format!(
            "the certificate names {} `{}`, not validator `{validator}`",
            principal.role, principal.name
        ));
    }
    let signature = hex::decode(signature_hex).map_err(|e| format!("signature: {e}"))?;
    principal
        .signing_key
        .verify(
            ATTESTATION_CONTEXT,
            &attestation_statement(job_id, round, validator, claimed),
            &signature,
        )
        .map_err(|e| e.to_string())?;
    if claimed != ours {
        return Err("its verdicts disagree with this machine's check of the proofs".into());
    }
    Ok(())
}

/// `cohort verify round`: fetches and checks the ledger, then the round.
pub async fn verify_round(
    url: &str,
    security: &Security,
    job_id: &str,
    round: u32,
) -> Result<RoundCheck> {
    let mut dev = developer::connect(url, security).await?;
    let contents = crate::audit::fetch_ledger(&mut dev).await?;
    let entries = checked_entries(&contents)?;
    let commitments = fetch_commitments(&mut dev, &entries, job_id, round).await?;
    check_round(&entries, job_id, round, &commitments, security.kit())
}

/// One pass of a validator: attests every recorded round with proofs that
/// it has not attested yet; returns how many it attested.
pub async fn attest_pending(
    dev: &mut Developer,
    kit: &Kit,
    mut onchain: Option<&mut OnchainVerifiers>,
) -> Result<usize> {
    let contents = crate::audit::fetch_ledger(dev).await?;
    let entries = checked_entries(&contents)?;
    let me = &kit.principal.name;
    let done: BTreeSet<(String, u32)> = entries
        .iter()
        .filter_map(|e| match &e.record {
            Record::Attestation {
                job_id,
                round,
                validator,
                ..
            } if validator == me => Some((job_id.clone(), *round)),
            _ => None,
        })
        .collect();
    let pending: Vec<(String, u32)> = entries
        .iter()
        .filter_map(|e| match &e.record {
            Record::RoundCompleted {
                job_id,
                round,
                updates,
                ..
            } if *round > 0
                && updates.iter().any(|u| u.proof.is_some())
                && !done.contains(&(job_id.clone(), *round)) =>
            {
                Some((job_id.clone(), *round))
            }
            _ => None,
        })
        .collect();
    let mut attested = 0;
    for (job_id, round) in pending {
        let commitments = fetch_commitments(dev, &entries, &job_id, round).await?;
        let RoundVerdicts {
            mut verdicts,
            mut reasons,
            ..
        } = verdicts(&entries, &job_id, round, &commitments)?;
        if let Some(chain) = onchain.as_deref_mut() {
            chain
                .check(&entries, (&job_id, round), &mut verdicts, &mut reasons)
                .await?;
        }
        for (v, reason) in verdicts.iter().zip(&reasons) {
            if let Some(reason) = reason {
                warn!(
                    job = job_id,
                    round,
                    client = v.client,
                    "proof INVALID: {reason}"
                );
            }
        }
        let statement = attestation_statement(&job_id, round, me, &verdicts);
        let signature = kit
            .signing_key
            .sign(ATTESTATION_CONTEXT, &statement)
            .map_err(|e| anyhow!("signing the attestation: {e}"))?;
        let reply = dev
            .submit_attestation(cohort_protocol::v1::SubmitAttestationRequest {
                job_id: job_id.clone(),
                round,
                verdicts_json: serde_json::to_string(&verdicts)?,
                signature,
            })
            .await
            .map_err(|s| anyhow!("the coordinator refused the attestation: {}", s.message()))?
            .into_inner();
        info!(
            job = job_id,
            round,
            proofs = verdicts.len(),
            valid = verdicts.iter().filter(|v| v.valid).count(),
            ledger_index = reply.ledger_index,
            "round attested"
        );
        attested += 1;
    }
    Ok(attested)
}

/// `cohort validator`: attests finished rounds as they are recorded, every
/// `interval`, until stopped (or after one pass with `once`).
pub async fn run(
    url: &str,
    security: &Security,
    interval: Duration,
    once: bool,
    mut onchain: Option<OnchainVerifiers>,
) -> Result<()> {
    let kit = security
        .kit()
        .ok_or_else(|| anyhow!("a validator is known by its certificate: pass --tls KIT"))?;
    if kit.principal.role != Role::Validator {
        bail!(
            "the kit in {} is a {}'s; `cohort validator` needs a validator kit \
             (`cohort ca issue --role validator --name NAME`)",
            kit.dir.display(),
            kit.principal.role
        );
    }
    loop {
        let pass = async {
            let mut dev = developer::connect(url, security).await?;
            attest_pending(&mut dev, kit, onchain.as_mut()).await
        }
        .await;
        match pass {
            Ok(n) if n > 0 => info!(rounds = n, "attestations appended to the ledger"),
            Ok(_) => {}
            Err(e) if once => return Err(e),
            Err(e) => warn!("validation pass failed: {e:#}; retrying"),
        }
        if once {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

/// Prints a [`RoundCheck`]: the JSON that scripts read, or one line per
/// proof and attestation. Fails (after printing) when anything is invalid.
pub fn print_round(check: &RoundCheck, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(check)?);
    } else {
        println!("job {} round {}", check.job_id, check.round);
        for p in &check.proofs {
            let verdict = if p.valid { "valid" } else { "INVALID" };
            println!(
                "  proof of {:<24} {verdict} {}",
                p.client,
                p.reason.as_deref().unwrap_or("")
            );
        }
        for a in &check.attestations {
            let verdict = if a.valid { "valid" } else { "INVALID" };
            println!(
                "  attestation by {:<18} {verdict} {}",
                a.validator,
                a.reason.as_deref().unwrap_or("")
            );
        }
        for e in &check.excluded {
            println!("  excluded: {e}");
        }
        if let Some(setup) = &check.setup {
            match &setup.ceremony_sha256 {
                None => println!("  keys made by the coordinator alone"),
                Some(sha) => println!(
                    "  keys from setup ceremony {sha} ({}); check it with `cohort setup verify FILE --tls KIT`",
                    setup.contributors.join(", ")
                ),
            }
        }
    }
    let bad = check.proofs.iter().filter(|p| !p.valid).count()
        + check.attestations.iter().filter(|a| !a.valid).count();
    if bad > 0 {
        bail!(
            "{bad} proofs or attestations of round {} did not verify",
            check.round
        );
    }
    Ok(())
}

/// `cohort proof export`: one hospital's proof of a round, from the
/// checked ledger, in `format` (only `snarkjs`).
pub async fn export(
    url: &str,
    security: &Security,
    (job_id, round, client): (&str, u32, &str),
    format: &str,
    out: &std::path::Path,
) -> Result<()> {
    if format != "snarkjs" {
        bail!("unknown proof format `{format}` (expected snarkjs)");
    }
    let mut dev = developer::connect(url, security).await?;
    let contents = crate::audit::fetch_ledger(&mut dev).await?;
    let entries = checked_entries(&contents)?;
    let record = recorded_round(&entries, job_id, round)?
        .0
        .iter()
        .find(|u| u.client == client)
        .ok_or_else(|| {
            anyhow!("round {round} of job `{job_id}` aggregated no update of `{client}`")
        })?
        .proof
        .clone()
        .ok_or_else(|| anyhow!("`{client}`'s update in round {round} carries no proof"))?;
    if !cohort_proofs::is_update_norm(&record.statement) {
        bail!(
            "`{client}`'s proof in round {round} is `{}` (Bulletproofs over the update's \
             commitments); snarkjs and the EVM verifier check Groth16 proofs only. `cohort \
             verify round` checks it.",
            record.statement
        );
    }
    let vk = verifying_key(&entries, job_id)?
        .ok_or_else(|| anyhow!("job `{job_id}` has no verifying key on the ledger"))?;
    let context = Context {
        job_id: job_id.to_string(),
        round,
        client: client.to_string(),
    };
    let files = cohort_proofs::snarkjs::export(
        &vk,
        &context,
        record.bound,
        &record.update_hash,
        &record.proof,
    )
    .map_err(|e| anyhow!("{e}"))?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, text) in files {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// One proof checked by the on-chain verifier.
#[derive(Debug, Clone, Serialize)]
pub struct OnchainVerdict {
    pub client: String,
    pub valid: bool,
    /// Gas of a transaction calling `verifyProof` with it.
    pub gas: u64,
}

/// What `cohort proof onchain` did.
#[derive(Debug, Clone, Serialize)]
pub struct OnchainCheck {
    pub job_id: String,
    pub round: u32,
    pub contract: String,
    /// Gas of the verifier's deployment, when this run deployed it.
    pub deploy_gas: Option<u64>,
    pub proofs: Vec<OnchainVerdict>,
}

fn words<const N: usize>(texts: &[String; N]) -> Result<[cohort_ledger_evm::U256; N]> {
    let mut out = [cohort_ledger_evm::U256::ZERO; N];
    for (o, t) in out.iter_mut().zip(texts) {
        *o = cohort_ledger_evm::verifier::word(t)?;
    }
    Ok(out)
}

/// The job's verifying key as the on-chain verifier takes it.
pub fn verifier_key_words(vk: &VerifyingKey) -> Result<cohort_ledger_evm::VerifierKeyWords> {
    let vk = cohort_proofs::snarkjs::evm_verifying_key(vk).map_err(|e| anyhow!("{e}"))?;
    Ok(cohort_ledger_evm::VerifierKeyWords {
        alpha: words(&vk.alpha)?,
        beta: words(&vk.beta)?,
        gamma: words(&vk.gamma)?,
        delta: words(&vk.delta)?,
        ic: vk.ic.iter().map(words).collect::<Result<_>>()?,
    })
}

/// A recorded proof as `verifyProof` takes it.
pub fn proof_words(
    context: &Context,
    record: &cohort_ledger::ProofRecord,
) -> Result<cohort_ledger_evm::ProofWords> {
    let p = cohort_proofs::snarkjs::evm_proof(
        context,
        record.bound,
        &record.update_hash,
        &record.proof,
    )
    .map_err(|e| anyhow!("{e}"))?;
    Ok(cohort_ledger_evm::ProofWords {
        a: words(&p.a)?,
        b: words(&p.b)?,
        c: words(&p.c)?,
        inputs: p
            .inputs
            .iter()
            .map(|t| Ok(cohort_ledger_evm::verifier::word(t)?))
            .collect::<Result<_>>()?,
    })
}

/// `cohort proof onchain`: every accepted proof of a round checked by the
/// job's Solidity verifier on an EVM chain (deployed from the ledger's
/// verifying key unless `contract` names one), with the gas of each call.
pub async fn onchain(
    url: &str,
    security: &Security,
    (job_id, round): (&str, u32),
    rpc_url: &str,
    key_file: &std::path::Path,
    contract: Option<&str>,
) -> Result<OnchainCheck> {
    let mut dev = developer::connect(url, security).await?;
    let contents = crate::audit::fetch_ledger(&mut dev).await?;
    let entries = checked_entries(&contents)?;
    let vk = verifying_key(&entries, job_id)?
        .ok_or_else(|| anyhow!("job `{job_id}` has no verifying key on the ledger"))?;
    let (updates, _) = recorded_round(&entries, job_id, round)?;
    let (address, deploy_gas) = match contract {
        Some(address) => (address.to_string(), None),
        None => {
            let key = cohort_ledger_evm::EvmKey::from_file(key_file)?;
            let deployed =
                cohort_ledger_evm::deploy_update_verifier(rpc_url, &key, &verifier_key_words(&vk)?)
                    .await
                    .context("deploying the job's update-proof verifier")?;
            eprintln!(
                "deployed job {job_id}'s update-proof verifier at {} ({} gas)",
                deployed.address, deployed.gas_used
            );
            (deployed.address.to_string(), Some(deployed.gas_used))
        }
    };
    let verifier = cohort_ledger_evm::UpdateVerifierContract::new(rpc_url, &address)?;
    verifier.check_deployed().await?;
    let mut proofs = Vec::new();
    for update in updates {
        let Some(record) = &update.proof else {
            continue;
        };
        let context = Context {
            job_id: job_id.to_string(),
            round,
            client: update.client.clone(),
        };
        let (valid, gas) = verifier.verify(&proof_words(&context, record)?).await?;
        proofs.push(OnchainVerdict {
            client: update.client.clone(),
            valid,
            gas,
        });
    }
    if proofs.is_empty() {
        bail!("round {round} of job `{job_id}` has no update proofs");
    }
    Ok(OnchainCheck {
        job_id: job_id.to_string(),
        round,
        contract: address,
        deploy_gas,
        proofs,
    })
}

/// A validator's on-chain checks: each job's Solidity verifier, deployed
/// from the ledger's verifying key the first time one of its rounds is
/// attested.
pub struct OnchainVerifiers {
    rpc_url: String,
    key: cohort_ledger_evm::EvmKey,
    deployed: std::collections::BTreeMap<String, String>,
}

impl OnchainVerifiers {
    pub fn new(rpc_url: String, key: cohort_ledger_evm::EvmKey) -> Self {
        Self {
            rpc_url,
            key,
            deployed: Default::default(),
        }
    }

    /// Checks each proof of the round on chain too: a proof the chain
    /// rejects is invalid (with the reason) whatever the local check said.
    async fn check(
        &mut self,
        entries: &[Entry],
        (job_id, round): (&str, u32),
        verdicts: &mut [Verdict],
        reasons: &mut [Option<String>],
    ) -> Result<()> {
        let Some(vk) = verifying_key(entries, job_id)? else {
            return Ok(());
        };
        let address = match self.deployed.get(job_id) {
            Some(address) => address.clone(),
            None => {
                let deployed = cohort_ledger_evm::deploy_update_verifier(
                    &self.rpc_url,
                    &self.key,
                    &verifier_key_words(&vk)?,
                )
                .await
                .with_context(|| format!("deploying job {job_id}'s update-proof verifier"))?;
                info!(
                    job = job_id,
                    contract = %deployed.address,
                    gas = deployed.gas_used,
                    "update-proof verifier deployed"
                );
                let address = deployed.address.to_string();
                self.deployed.insert(job_id.to_string(), address.clone());
                address
            }
        };
        let verifier = cohort_ledger_evm::UpdateVerifierContract::new(&self.rpc_url, &address)?;
        let (updates, _) = recorded_round(entries, job_id, round)?;
        for ((verdict, reason), update) in verdicts.iter_mut().zip(reasons).zip(updates) {
            let Some(record) = &update.proof else {
                continue;
            };
            let context = Context {
                job_id: job_id.to_string(),
                round,
                client: update.client.clone(),
            };
            let (valid, gas) = verifier.verify(&proof_words(&context, record)?).await?;
            info!(
                job = job_id,
                round,
                client = update.client,
                valid,
                gas,
                "checked on chain"
            );
            if !valid && verdict.valid {
                warn!(
                    job = job_id,
                    round,
                    client = update.client,
                    "the on-chain verifier rejects a proof this machine accepts"
                );
                verdict.valid = false;
                *reason = Some("rejected by the on-chain verifier".into());
            }
        }
        Ok(())
    }
}
