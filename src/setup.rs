//! `cohort setup`: a multi-party setup ceremony for the Groth16 keys of
//! update proofs (`[proofs] setup = "ceremony"`), run by passing one file
//! from validator to validator. See `cohort_proofs::ceremony` for the
//! mathematics and ARCHITECTURE.md for the trust argument.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cohort_identity::Role;
use cohort_proofs::ceremony::{self, CONTRIBUTION_CONTEXT, Ceremony, Phase};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::pki::load_kit;

/// What `cohort setup verify --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The parameter count the keys are for.
    pub entries: usize,
    /// The phase the next contribution would go to.
    pub open_phase: Phase,
    /// Hex SHA-256 of the file, as the ledger records it.
    pub sha256: String,
    pub contributions: Vec<ContributionReport>,
    /// Hex SHA-256 of the verifying key, once both phases have a
    /// contribution: the `verifying_key_sha256` of the jobs that use it.
    pub verifying_key_sha256: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ContributionReport {
    pub phase: Phase,
    pub index: usize,
    pub contributor: String,
    /// `valid`, or `not checked` without a kit to check it with.
    pub signature: &'static str,
}

/// A spinner with the elapsed time while `what` runs (on a terminal; the
/// library's stage lines go to the log either way).
fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed_precise}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn read(file: &Path) -> Result<(Vec<u8>, Ceremony)> {
    let bar = spinner("reading and checking every point of the file");
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let ceremony = Ceremony::from_bytes(&bytes).with_context(|| file.display().to_string())?;
    bar.finish_and_clear();
    Ok((bytes, ceremony))
}

fn write(file: &Path, ceremony: &Ceremony) -> Result<()> {
    cohort_models::write_atomically(file, &ceremony.to_bytes())?;
    Ok(())
}

/// `cohort setup new`: a ceremony for `entries` parameters, nobody's
/// contribution yet.
pub fn new(entries: usize, out: &Path) -> Result<()> {
    if out.exists() {
        bail!(
            "{} exists; a new ceremony would overwrite its contributions",
            out.display()
        );
    }
    let ceremony = Ceremony::new(entries)?;
    write(out, &ceremony)?;
    eprintln!(
        "wrote a setup ceremony for {entries} parameters to {}; next: each validator runs \
         `cohort setup contribute {} --tls KIT`",
        out.display(),
        out.display()
    );
    Ok(())
}

/// `cohort setup contribute`: this validator's contribution to the open
/// phase, signed with its kit; the file is replaced atomically.
pub fn contribute(file: &Path, kit_dir: &Path) -> Result<()> {
    let kit = load_kit(kit_dir, &[Role::Validator])?;
    let (_, mut ceremony) = read(file)?;
    let phase = ceremony.phase();
    eprintln!(
        "contributing to the {phase} phase of the ceremony for {} parameters as {} \
         (fresh secrets from the operating system; never stored)…",
        ceremony.len(),
        kit.principal.name
    );
    let started = Instant::now();
    let certificate = kit.cert_der()?.to_vec();
    let bar = spinner("contributing");
    let contribution = ceremony.contribute(&kit.principal.name, &certificate, |statement| {
        kit.signing_key
            .sign(CONTRIBUTION_CONTEXT, statement)
            .map_err(|e| e.to_string())
    })?;
    bar.finish_and_clear();
    write(file, &ceremony)?;
    eprintln!(
        "added {phase} contribution {} in {:.1} s; the file's SHA-256 is now {}",
        contribution.index,
        started.elapsed().as_secs_f64(),
        ceremony::digest(&ceremony.to_bytes())
    );
    Ok(())
}

/// `cohort setup seal`: closes the powers phase and derives the circuit
/// phase's starting point from it.
pub fn seal(file: &Path) -> Result<()> {
    let (_, mut ceremony) = read(file)?;
    let started = Instant::now();
    let bar = spinner("checking the powers phase, then sealing it");
    ceremony.verify()?;
    ceremony.seal_powers()?;
    bar.finish_and_clear();
    write(file, &ceremony)?;
    eprintln!(
        "sealed the powers phase in {:.1} s; the circuit phase is open for contributions",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cohort setup fetch`: the ceremony file a job's keys came from, checked
/// against the digest in the job's `proof_setup` entry of the audited
/// ledger, written to `out`.
pub async fn fetch(dev: &mut crate::developer::Developer, job_id: &str, out: &Path) -> Result<()> {
    if out.exists() {
        bail!("{} exists; not overwriting it", out.display());
    }
    let contents = crate::audit::fetch_ledger(dev).await?;
    let entries = crate::validator::checked_entries(&contents)?;
    let recorded = crate::validator::recorded_setup(&entries, job_id)
        .map(|setup| setup.ceremony)
        .ok_or_else(|| anyhow::anyhow!("job `{job_id}` has no update-proof keys on the ledger"))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "job `{job_id}`'s keys were made by the coordinator alone, not a ceremony"
            )
        })?;
    let bytes = crate::developer::fetch_setup_ceremony(dev, job_id).await?;
    let got = ceremony::digest(&bytes);
    if got != recorded.sha256 {
        bail!(
            "the coordinator sent a ceremony with SHA-256 {got}; the ledger records {}",
            recorded.sha256
        );
    }
    cohort_models::write_atomically(out, &bytes)?;
    eprintln!(
        "wrote the setup ceremony of job {job_id} ({} bytes, SHA-256 {got}, as the ledger          records) to {}; check it with `cohort setup verify {} --tls KIT`",
        bytes.len(),
        out.display(),
        out.display()
    );
    Ok(())
}

/// `cohort setup verify`: every contribution's mathematics, and with a kit
/// that each was signed by a validator of that kit's consortium.
pub fn verify(file: &Path, kit_dir: Option<&Path>) -> Result<Report> {
    let kit = kit_dir.map(|dir| load_kit(dir, &Role::ALL)).transpose()?;
    let (bytes, ceremony) = read(file)?;
    let bar = spinner("checking every contribution");
    let verified = ceremony
        .verify()
        .with_context(|| format!("{} does not verify", file.display()))?;
    bar.finish_and_clear();
    let mut contributions = Vec::new();
    for c in &verified.contributions {
        let signature = match &kit {
            Some(kit) => {
                cohort_coordinator::setup::check_contributor(kit, c).map_err(|reason| {
                    anyhow::anyhow!(
                        "{} contribution {} by {:?}: {reason}",
                        c.phase,
                        c.index,
                        c.contributor
                    )
                })?;
                "valid"
            }
            None => "not checked",
        };
        contributions.push(ContributionReport {
            phase: c.phase,
            index: c.index,
            contributor: c.contributor.clone(),
            signature,
        });
    }
    Ok(Report {
        entries: ceremony.len(),
        open_phase: ceremony.phase(),
        sha256: ceremony::digest(&bytes),
        contributions,
        verifying_key_sha256: verified.keys.map(|(_, vk)| vk.sha256()),
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "setup ceremony for {} parameters, SHA-256 {}",
            self.entries, self.sha256
        )?;
        for c in &self.contributions {
            writeln!(
                f,
                "  {} #{} by {} (signature {})",
                c.phase, c.index, c.contributor, c.signature
            )?;
        }
        match &self.verifying_key_sha256 {
            Some(vk) => write!(f, "finished: verifying key SHA-256 {vk}"),
            None => write!(
                f,
                "not finished: the {} phase needs a contribution{}",
                self.open_phase,
                if self.open_phase == Phase::Powers {
                    ", then `cohort setup seal`"
                } else {
                    ""
                }
            ),
        }
    }
}
