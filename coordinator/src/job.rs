//! The job file a model developer submits: parsing and validation.
//!
//! Validation happens at submit time so that a typo fails in the
//! developer's terminal, naming the key, instead of hours later in a round.

use cohort_datasets::DataSpec;
use cohort_models::{ModelSpec, OptimizerSpec, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::strategy::StrategySpec;

/// A whole job file, as accepted by `cohort job submit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    pub data: DataSpec,
    pub model: ModelSpec,
    pub training: TrainingSpec,
    #[serde(default)]
    pub strategy: StrategySpec,
    #[serde(default)]
    pub privacy: PrivacySpec,
    /// `[valuation]`: value each hospital's contribution and pay rewards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valuation: Option<crate::valuation::ValuationSpec>,
    #[serde(default, skip_serializing_if = "ProofsSpec::is_off")]
    pub proofs: ProofsSpec,
    /// Vertical split learning (issue 18): `[vertical]`, read when
    /// `[training] mode = "vertical"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vertical: Option<crate::vertical::VerticalSpec>,
    /// `[preprocessing]`: every column's statistics given publicly, so
    /// that the hospitals release none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<cohort_datasets::PublicPreprocessing>,
}

/// The job's `[proofs]` table (issue 16): zero-knowledge proofs that
/// every aggregated update is well formed, and how many validators must
/// attest each round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofsSpec {
    #[serde(default)]
    pub update: UpdateProofs,
    /// L2 bound on each update (plain mode). Defaults to the client-level
    /// DP clipping norm when the job has one, else 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<f64>,
    /// Validator attestations required per round before its model is
    /// published (downloadable); 0 publishes at once.
    #[serde(default)]
    pub min_validators: u32,
    /// The proof system: `groth16` (plain aggregation's default: 128-byte
    /// proofs that snarkjs and the EVM check, after a setup the coordinator
    /// runs) or `bulletproofs` (no setup at all; secure aggregation's only
    /// system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<ProofSystemName>,
    /// Who makes groth16's keys: `coordinator` (the default: the
    /// coordinator alone, which could keep the trapdoor) or `ceremony`
    /// (the keys of a multi-party ceremony among the consortium's
    /// validators, `cohort setup`, that the coordinator was started with:
    /// nobody holds the trapdoor unless every contributor colluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<SetupSource>,
}

/// The `[proofs] setup` a job names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetupSource {
    Coordinator,
    Ceremony,
}

/// The `[proofs] system` a job names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProofSystemName {
    Groth16,
    Bulletproofs,
}

impl ProofsSpec {
    pub fn is_off(&self) -> bool {
        *self == ProofsSpec::default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateProofs {
    #[default]
    Off,
    /// Statement 1: 16-bit entries and `‖u‖₂ ≤ B` for the exact update
    /// aggregated (`cohort_proofs::circuits::update_norm`).
    Norm,
}

/// The job's `[privacy]` table: how updates are protected on their way to
/// the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySpec {
    #[serde(default)]
    pub aggregation: Aggregation,
    #[serde(default)]
    pub secagg: SecAggSpec,
    #[serde(default)]
    pub he: HeSpec,
    /// `[privacy.dp]`: differential privacy. Absent: no DP promise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<cohort_privacy::dp::DpPolicy>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// The coordinator sees each hospital's update (signed, checked, kept
    /// only in memory while the round runs).
    #[default]
    Plain,
    /// SecAgg+: the coordinator only ever learns the sum of the round's
    /// surviving updates.
    Secagg,
    /// Threshold homomorphic encryption: updates are summed while
    /// encrypted under a key no single party holds, and any `threshold` of
    /// the round's hospitals decrypt the sum.
    He,
}

impl Aggregation {
    /// The job file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Plain => "plain",
            Aggregation::Secagg => "secagg",
            Aggregation::He => "he",
        }
    }
}

impl std::str::FromStr for Aggregation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Aggregation::Plain, Aggregation::Secagg, Aggregation::He]
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown aggregation `{s}`: expected plain, secagg or he"))
    }
}

/// `[privacy] he = { threshold, bits, clip }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeSpec {
    /// Fraction of the round's hospitals whose decryption shares decrypt
    /// the sum (at least 2 hospitals, so that none decrypts alone). 0.66
    /// lets a third of the round vanish after sending its update.
    #[serde(default = "default_secagg_threshold")]
    pub threshold: f64,
    /// Plaintexts are integers mod 2^bits, the secure-aggregation encoding.
    #[serde(default = "default_secagg_bits")]
    pub bits: u32,
    /// L2 norm each update is clipped to before quantization.
    #[serde(default = "default_secagg_clip")]
    pub clip: f64,
}

impl Default for HeSpec {
    fn default() -> Self {
        Self {
            threshold: default_secagg_threshold(),
            bits: default_secagg_bits(),
            clip: default_secagg_clip(),
        }
    }
}

impl HeSpec {
    /// Decryptors needed out of `hospitals`: `⌈threshold · n⌉`, at least 2.
    pub fn decryptors(&self, hospitals: u32) -> u32 {
        ((f64::from(hospitals) * self.threshold).ceil() as u32).clamp(2, hospitals.max(2))
    }
}

/// `[privacy] secagg = { threshold, neighbours, bits, clip }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecAggSpec {
    /// Fraction of the selected hospitals that must survive every stage,
    /// and of each neighbourhood needed to rebuild a secret. Above 1/2 so
    /// that no two disjoint groups could each rebuild a secret; 0.66 lets a
    /// third of a round drop out.
    #[serde(default = "default_secagg_threshold")]
    pub threshold: f64,
    /// Neighbours per hospital in the masking graph (Bell et al. 2020: on
    /// the order of log n suffices). 8 keeps a client's work flat from 10
    /// to hundreds of hospitals; rounds with at most 9 hospitals use the
    /// complete graph.
    #[serde(default = "default_secagg_neighbours")]
    pub neighbours: u32,
    /// Integers are summed mod 2^bits. 32 leaves about 2 x 10^7
    /// quantization levels per unit of `clip` with 100 hospitals.
    #[serde(default = "default_secagg_bits")]
    pub bits: u32,
    /// L2 norm each update is clipped to before quantization. Large enough
    /// not to bind for ordinary local training; lower it if updates are
    /// known to be small, to gain precision.
    #[serde(default = "default_secagg_clip")]
    pub clip: f64,
}

impl Default for SecAggSpec {
    fn default() -> Self {
        Self {
            threshold: default_secagg_threshold(),
            neighbours: default_secagg_neighbours(),
            bits: default_secagg_bits(),
            clip: default_secagg_clip(),
        }
    }
}

fn default_secagg_threshold() -> f64 {
    0.66
}
fn default_secagg_neighbours() -> u32 {
    8
}
fn default_secagg_bits() -> u32 {
    32
}
fn default_secagg_clip() -> f64 {
    10.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    pub rounds: u32,
    pub min_clients: u32,
    pub clients_per_round: u32,
    #[serde(default = "default_local_epochs")]
    pub local_epochs: u32,
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    pub optimizer: OptimizerSpec,
    #[serde(default = "default_round_timeout")]
    pub round_timeout_secs: u64,
    #[serde(default)]
    pub seed: u64,
    /// How often a round that got fewer than `min_clients` answers is tried
    /// again before the job fails. Hospitals come and go; this only keeps a
    /// job from waiting forever on a consortium that is gone.
    #[serde(default = "default_max_round_attempts")]
    pub max_round_attempts: u32,
    /// `federated` (the default), or `splitfed`: split learning with the
    /// network cut at `[model] cut` (see [`crate::split`]).
    #[serde(default)]
    pub mode: TrainingMode,
    /// SplitFed only: the U-shaped split, the labels and the last layer
    /// stay at the hospital and the coordinator runs the layers between the
    /// cut and the last (see [`crate::split`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub u_shaped: bool,
}

/// How a round trains: whole models at the hospitals, or split at a cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainingMode {
    /// Every hospital trains the whole model (FedAvg and its relatives).
    #[default]
    Federated,
    /// SplitFed v1 (Thapa et al. 2022): hospitals train the bottom part,
    /// the coordinator a copy of the top part per hospital; both are
    /// averaged every round.
    Splitfed,
    /// Vertical split learning (issue 18): sites hold different columns of
    /// the same patients, aligned by private set intersection on `[data]
    /// id`; the site with the label column holds the labels and the top
    /// of the network (see [`crate::vertical`]).
    Vertical,
}

fn default_local_epochs() -> u32 {
    1
}
fn default_batch_size() -> u32 {
    32
}
fn default_round_timeout() -> u64 {
    120
}
fn default_max_round_attempts() -> u32 {
    20
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// TOML syntax, unknown keys and wrong types; toml's message names the key
    /// and the line.
    #[error("invalid job file: {0}")]
    Parse(String),
    #[error("invalid job file: {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> JobError {
    JobError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

impl JobSpec {
    /// Parses and validates a job file.
    pub fn from_toml(text: &str) -> Result<Self, JobError> {
        let spec: JobSpec = toml::from_str(text).map_err(|e| JobError::Parse(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), JobError> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        self.data
            .validate()
            .map_err(|e| invalid("data", e.to_string()))?;
        self.validate_preprocessing()?;
        self.model
            .validate()
            .map_err(|e| invalid("model", e.to_string()))?;
        let t = &self.training;
        if t.rounds == 0 {
            return Err(invalid("training.rounds", "must be at least 1"));
        }
        if t.min_clients == 0 {
            return Err(invalid("training.min_clients", "must be at least 1"));
        }
        if t.clients_per_round < t.min_clients {
            return Err(invalid(
                "training.clients_per_round",
                format!(
                    "{} is fewer than training.min_clients = {}",
                    t.clients_per_round, t.min_clients
                ),
            ));
        }
        if t.local_epochs == 0 {
            return Err(invalid("training.local_epochs", "must be at least 1"));
        }
        if t.batch_size == 0 {
            return Err(invalid("training.batch_size", "must be at least 1"));
        }
        if t.round_timeout_secs == 0 {
            return Err(invalid("training.round_timeout_secs", "must be at least 1"));
        }
        if t.max_round_attempts == 0 {
            return Err(invalid("training.max_round_attempts", "must be at least 1"));
        }
        t.optimizer
            .validate()
            .map_err(|e| invalid("training.optimizer", e.to_string()))?;
        match t.mode {
            TrainingMode::Splitfed => crate::split::check_job(self)?,
            TrainingMode::Vertical => crate::vertical::check_job(self)?,
            TrainingMode::Federated => {}
        }
        if t.u_shaped && t.mode != TrainingMode::Splitfed {
            return Err(invalid(
                "training.u_shaped",
                "the U-shaped split is a SplitFed option ([training] mode = \"splitfed\")",
            ));
        }
        if t.mode != TrainingMode::Vertical {
            if self.data.id.is_some() {
                return Err(invalid(
                    "data.id",
                    "an id column aligns sites in vertical jobs only ([training] mode =                      \"vertical\"); list it in data.drop instead",
                ));
            }
            if self.vertical.is_some() {
                return Err(invalid(
                    "vertical",
                    "[vertical] applies to [training] mode = \"vertical\" only",
                ));
            }
        }
        self.strategy
            .validate()
            .map_err(|(key, message)| invalid(&format!("strategy.{key}"), message))?;
        if let Some(dp) = &self.privacy.dp {
            dp.validate()
                .map_err(|(key, message)| invalid(&key, message))?;
            if dp.level == cohort_privacy::dp::DpLevel::Client {
                // Client level: one calibration for every hospital, so an
                // unreachable target fails here rather than in round 1.
                let sigma = self
                    .job_dp()
                    .map(|job| job.client_plan())
                    .transpose()
                    .map_err(|e| invalid("privacy.dp.target_epsilon", e.to_string()))?
                    .map(|plan| plan.noise_multiplier);
                if dp.clipping == cohort_privacy::dp::Clipping::Adaptive {
                    if self.privacy.aggregation != Aggregation::Plain {
                        return Err(invalid(
                            "privacy.dp.clipping",
                            "adaptive clipping works with aggregation = \"plain\" only: the \
                             count of unclipped updates would need secure aggregation too",
                        ));
                    }
                    if let Some(sigma) = sigma {
                        dp.adaptive_noise(sigma, t.clients_per_round)
                            .map_err(|e| invalid("privacy.dp.clipped_count_stddev", e))?;
                    }
                }
                if self.privacy.aggregation != Aggregation::Plain {
                    self.check_distributed_dp()?;
                }
            }
        }
        if self.privacy.aggregation == Aggregation::Secagg {
            let n = t.clients_per_round;
            if n < 2 {
                return Err(invalid(
                    "training.clients_per_round",
                    "secure aggregation needs at least 2 hospitals per round",
                ));
            }
            let secagg = &self.privacy.secagg;
            cohort_privacy::secagg::Params::from_fractions(
                n,
                secagg.neighbours,
                secagg.threshold,
                secagg.bits,
            )
            .map_err(|e| invalid("privacy.secagg", e.to_string()))?;
            // Example counts are only known at enrollment; the wrap check
            // runs again then with the hospitals' real row counts.
            cohort_privacy::quantize::Quantizer::for_weighted_sum(secagg.clip, secagg.bits, n, 1)
                .map_err(|e| invalid("privacy.secagg", e.to_string()))?;
        }
        if self.privacy.aggregation == Aggregation::He {
            let n = t.clients_per_round;
            if n < 2 {
                return Err(invalid(
                    "training.clients_per_round",
                    "homomorphic aggregation needs at least 2 hospitals per round, so that none \
                     decrypts alone",
                ));
            }
            let he = &self.privacy.he;
            if !(he.threshold > 0.0 && he.threshold <= 1.0) {
                return Err(invalid(
                    "privacy.he.threshold",
                    format!("must be a fraction in (0, 1], got {}", he.threshold),
                ));
            }
            cohort_privacy::he::HeParams::new(n, he.decryptors(n), he.bits, 2)
                .map_err(|e| invalid("privacy.he", e.to_string()))?;
            cohort_privacy::quantize::Quantizer::for_weighted_sum(he.clip, he.bits, n, 1)
                .map_err(|e| invalid("privacy.he", e.to_string()))?;
        }
        if let Some(valuation) = &self.valuation {
            let grouped = self.privacy.aggregation != Aggregation::Plain;
            valuation
                .validate(t.clients_per_round, t.min_clients, grouped)
                .map_err(|(key, message)| invalid(&key, message))?;
            // Record-level DP needs nothing more: each update is private on
            // its own, and a group's sum is post-processing of it.
            if self.client_level_dp().is_some() {
                return Err(invalid(
                    "valuation",
                    "valuation shows every scoring hospital the players' updates, and under \
                     client-level DP a hospital's clipped update is protected only by the \
                     noise added to the sum: use record-level DP (each update is then private \
                     on its own) or leave [valuation] out",
                ));
            }
        }
        self.validate_proofs()?;
        Ok(())
    }

    /// A `[preprocessing]` table's numbers, and, where the job lists its
    /// columns, that it covers every numeric one and names no other (with
    /// `numeric = "*"` the hospitals' columns are checked at preparation).
    fn validate_preprocessing(&self) -> Result<(), JobError> {
        let Some(table) = &self.preprocessing else {
            return Ok(());
        };
        table.validate().map_err(|(key, msg)| invalid(&key, msg))?;
        if let cohort_datasets::NumericColumns::Listed(columns) = &self.data.numeric {
            if let Some(missing) = columns.iter().find(|c| !table.numeric.contains_key(*c)) {
                return Err(invalid(
                    "preprocessing.numeric",
                    format!("gives no statistics for the numeric column `{missing}`"),
                ));
            }
            if let Some(unknown) = table.numeric.keys().find(|c| !columns.contains(c)) {
                return Err(invalid(
                    "preprocessing.numeric",
                    format!("names `{unknown}`, which is not in data.numeric"),
                ));
            }
        }
        if let Some(unknown) = table
            .categorical
            .keys()
            .find(|c| !self.data.categorical.contains_key(*c))
        {
            return Err(invalid(
                "preprocessing.categorical",
                format!("names `{unknown}`, which is not in data.categorical"),
            ));
        }
        if self.training.mode == TrainingMode::Vertical {
            return Err(invalid(
                "preprocessing",
                "vertical jobs standardize each site's own columns; give no [preprocessing]",
            ));
        }
        Ok(())
    }

    fn validate_proofs(&self) -> Result<(), JobError> {
        let proofs = &self.proofs;
        if proofs.update == UpdateProofs::Off {
            if proofs.clip.is_some() {
                return Err(invalid(
                    "proofs.clip",
                    "only applies with proofs.update = \"norm\"",
                ));
            }
            if proofs.system.is_some() {
                return Err(invalid(
                    "proofs.system",
                    "only applies with proofs.update = \"norm\"",
                ));
            }
            if proofs.setup.is_some() {
                return Err(invalid(
                    "proofs.setup",
                    "only applies with proofs.update = \"norm\"",
                ));
            }
            return Ok(());
        }
        if proofs.setup.is_some() && self.proof_system() != ProofSystemName::Groth16 {
            return Err(invalid(
                "proofs.setup",
                "only groth16 has a setup; bulletproofs needs none",
            ));
        }
        let protected = matches!(
            self.privacy.aggregation,
            Aggregation::Secagg | Aggregation::He
        );
        if protected && proofs.system == Some(ProofSystemName::Groth16) {
            return Err(invalid(
                "proofs.system",
                "under secure and homomorphic aggregation updates are proved over their \
                 commitments with bulletproofs; groth16 proves plain updates only",
            ));
        }
        if protected && self.valuation.is_some() {
            return Err(invalid(
                "proofs.update",
                "valuation under secure or homomorphic aggregation sums groups of hospitals; \
                 update proofs in grouped rounds are not built: leave out [valuation] or \
                 [proofs], or use aggregation = \"plain\"",
            ));
        }
        if self.training.mode == TrainingMode::Splitfed
            && self.proof_system() == ProofSystemName::Bulletproofs
        {
            return Err(invalid(
                "proofs.system",
                "SplitFed parts are proved with groth16 under aggregation = \"plain\" only",
            ));
        }
        match self.privacy.aggregation {
            Aggregation::Plain => {}
            Aggregation::Secagg | Aggregation::He => {
                // Proved over commitments (the masked input, or beside the
                // ciphertext). Record-level DP-SGD noises training, before
                // the update is committed; client-level noise would be
                // added to it.
                if self.client_level_dp().is_some() {
                    return Err(invalid(
                        "proofs.update",
                        "under secure and homomorphic aggregation the proved update is the \
                         committed one; client-level (distributed) DP noise added to it would \
                         have to be proved too, which is not built: use record-level DP, or \
                         aggregation = \"plain\"",
                    ));
                }
            }
        }
        if self
            .client_level_dp()
            .is_some_and(|dp| dp.clipping == cohort_privacy::dp::Clipping::Adaptive)
        {
            return Err(invalid(
                "proofs.update",
                "adaptive clipping changes the bound every round; proofs need a fixed one",
            ));
        }
        let grid = self
            .update_grid()
            .map_err(|e| invalid("proofs.clip", e.to_string()))?;
        if grid.bound < 256 {
            return Err(invalid("proofs.clip", "leaves fewer than 256 levels"));
        }
        Ok(())
    }

    /// The proof system of a job with update proofs: as named, else
    /// Bulletproofs under secure and homomorphic aggregation and Groth16
    /// otherwise.
    pub fn proof_system(&self) -> ProofSystemName {
        match (self.proofs.system, self.privacy.aggregation) {
            (Some(system), _) => system,
            (None, Aggregation::Secagg | Aggregation::He) => ProofSystemName::Bulletproofs,
            (None, _) => ProofSystemName::Groth16,
        }
    }

    /// The L2 bound updates are proved under, on the 16-bit grid.
    pub fn update_grid(&self) -> Result<cohort_proofs::FixedPoint, cohort_proofs::ProofError> {
        let dp_clip = self.client_level_dp().map(|dp| dp.clipping_norm);
        cohort_proofs::FixedPoint::for_clip(self.proofs.clip.or(dp_clip).unwrap_or(10.0))
    }

    /// The job's DP policy when it is client-level (noise added to the
    /// aggregate of clipped updates).
    pub fn client_level_dp(&self) -> Option<&cohort_privacy::dp::DpPolicy> {
        self.privacy
            .dp
            .as_ref()
            .filter(|dp| dp.level == cohort_privacy::dp::DpLevel::Client)
    }

    /// The bits and fewest survivors of the round's aggregation mode, for
    /// sizing distributed DP noise.
    pub fn noise_shape(&self) -> Result<(u32, u32), JobError> {
        let n = self.training.clients_per_round;
        match self.privacy.aggregation {
            Aggregation::He => Ok((self.privacy.he.bits, self.privacy.he.decryptors(n))),
            _ => {
                let secagg = &self.privacy.secagg;
                let (params, _) = cohort_privacy::secagg::Params::from_fractions(
                    n,
                    secagg.neighbours,
                    secagg.threshold,
                    secagg.bits,
                )
                .map_err(|e| invalid("privacy.secagg", e.to_string()))?;
                Ok((secagg.bits, params.min_survivors))
            }
        }
    }

    /// Distributed DP must fit in the secure-aggregation modulus: checked
    /// here for one parameter (the model's width is only known once the
    /// hospitals have enrolled) and again every round.
    fn check_distributed_dp(&self) -> Result<(), JobError> {
        let bad = |e: String| invalid("privacy.dp", e);
        let (clip, sigma) = self
            .encoded_client_dp()
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("missing".into()))?;
        let n = self.training.clients_per_round;
        let (bits, min_survivors) = self.noise_shape()?;
        cohort_privacy::distributed::quantizer(clip, bits, n, sigma, min_survivors, 1)
            .map_err(|e| bad(e.to_string()))?;
        Ok(())
    }

    /// Client-level DP of what each hospital encodes into a protected sum
    /// (secagg, he): its clipping bound and noise multiplier. A SplitFed
    /// hospital encodes only its part of the update, and the coordinator
    /// noises the seats' parts ([`cohort_privacy::distributed::per_part`]).
    /// `None` without client-level DP.
    pub fn encoded_client_dp(&self) -> Result<Option<(f64, f64)>, cohort_privacy::dp::DpError> {
        let Some(job) = self.job_dp() else {
            return Ok(None);
        };
        if job.policy.level != cohort_privacy::dp::DpLevel::Client {
            return Ok(None);
        }
        let (clip, sigma) = (
            job.policy.clipping_norm,
            job.client_plan()?.noise_multiplier,
        );
        Ok(Some(match self.training.mode {
            TrainingMode::Splitfed => cohort_privacy::distributed::per_part(clip, sigma),
            _ => (clip, sigma),
        }))
    }

    /// The local training configuration a client gets for `round`.
    ///
    /// The seed differs per round so that clients do not replay the same
    /// mini-batch order every round.
    pub fn train_config(&self, round: u32) -> TrainConfig {
        TrainConfig {
            epochs: self.training.local_epochs as usize,
            batch_size: self.training.batch_size as usize,
            optimizer: self.training.optimizer.clone(),
            seed: self
                .training
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(u64::from(round)),
            proximal_mu: self.strategy.proximal_mu(),
            // Each hospital sets its own DP-SGD noise from `job_dp()`.
            dp: None,
        }
    }

    /// What every task of a DP job carries (`TaskHeader.dp_json`).
    pub fn job_dp(&self) -> Option<cohort_privacy::dp::JobDp> {
        self.privacy
            .dp
            .as_ref()
            .map(|policy| cohort_privacy::dp::JobDp {
                policy: policy.clone(),
                rounds: self.training.rounds,
                local_epochs: self.training.local_epochs,
                batch_size: self.training.batch_size,
                noised_statistics: self.preprocessing.is_none(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the job-file documentation, verbatim.
    pub(crate) const EXAMPLE: &str = r#"
name = "wdbc-mlp"

[data]
label = "diagnosis"
positive = "M"
drop = ["patient_id"]
numeric = "*"                       # every column not named elsewhere
categorical = {}                    # e.g. { tgrade = ["I", "II", "III"] }
validation_fraction = 0.2

[model]
kind = "mlp"                        # or "logistic"
hidden = [32, 16]

[training]
rounds = 20
min_clients = 3
clients_per_round = 3
local_epochs = 2
batch_size = 32
optimizer = { kind = "sgd", learning_rate = 0.05, momentum = 0.9 }
round_timeout_secs = 120
seed = 7

[strategy]
kind = "fedavg"                     # fedprox: mu; fedadam/fedyogi: server_learning_rate, beta1, beta2, tau
"#;

    #[test]
    fn documented_example_is_accepted() {
        let spec = JobSpec::from_toml(EXAMPLE).unwrap();
        assert_eq!(spec.training.rounds, 20);
        assert_eq!(
            spec.model,
            ModelSpec::Mlp {
                hidden: vec![32, 16],
                cut: None,
            }
        );
        assert_eq!(spec.strategy, StrategySpec::FedAvg {});
        assert_eq!(spec.privacy.aggregation, Aggregation::Plain);
    }

    #[test]
    fn update_proofs_are_checked_against_the_aggregation_mode() {
        let with = |privacy: &str| {
            EXAMPLE.to_string() + "\n[proofs]\nupdate = \"norm\"\n\n[privacy]\n" + privacy
        };
        let plain = JobSpec::from_toml(&with("aggregation = \"plain\"")).unwrap();
        assert_eq!(plain.proof_system(), ProofSystemName::Groth16);
        let secure = JobSpec::from_toml(&with("aggregation = \"secagg\"")).unwrap();
        assert_eq!(secure.proof_system(), ProofSystemName::Bulletproofs);
        let encrypted = JobSpec::from_toml(&with("aggregation = \"he\"")).unwrap();
        assert_eq!(encrypted.proof_system(), ProofSystemName::Bulletproofs);
        let transparent = JobSpec::from_toml(
            &(EXAMPLE.to_string() + "\n[proofs]\nupdate = \"norm\"\nsystem = \"bulletproofs\"\n"),
        )
        .unwrap();
        assert_eq!(transparent.proof_system(), ProofSystemName::Bulletproofs);
        let e = JobSpec::from_toml(
            &(EXAMPLE.to_string()
                + "\n[proofs]\nupdate = \"norm\"\nsystem = \"groth16\"\n\n[privacy]\naggregation = \"secagg\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("proofs.system"), "{e}");
        JobSpec::from_toml(&with(
            "aggregation = \"secagg\"\n[privacy.dp]\nlevel = \"record\"\ntarget_epsilon = 3.0\ndelta = 1e-5\nmax_grad_norm = 1.0\naccountant = \"rdp\"",
        ))
        .unwrap();
        for (privacy, says) in [
            (
                "aggregation = \"he\"\n[privacy.dp]\nlevel = \"client\"\nnoise_multiplier = 1.1\nclipping_norm = 0.5",
                "client-level",
            ),
            (
                "aggregation = \"secagg\"\n[privacy.dp]\nlevel = \"client\"\nnoise_multiplier = 1.1\nclipping_norm = 0.5",
                "client-level",
            ),
            (
                "aggregation = \"he\"\n\n[valuation]\ngroup_size = 2\n",
                "grouped rounds",
            ),
        ] {
            let e = JobSpec::from_toml(&with(privacy)).unwrap_err().to_string();
            assert!(e.contains("proofs.update") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn secure_aggregation_table_is_read_and_checked() {
        let with = |table: &str| EXAMPLE.to_string() + "\n[privacy]\n" + table;
        let spec = JobSpec::from_toml(&with(
            "aggregation = \"secagg\"\nsecagg = { threshold = 0.8, neighbours = 4, bits = 24 }",
        ))
        .unwrap();
        assert_eq!(spec.privacy.aggregation, Aggregation::Secagg);
        assert_eq!(spec.privacy.secagg.neighbours, 4);
        assert_eq!(spec.privacy.secagg.clip, 10.0);
        let spec = JobSpec::from_toml(&with("aggregation = \"secagg\"")).unwrap();
        assert_eq!(spec.privacy.secagg, SecAggSpec::default());
        for (table, named) in [
            (
                "aggregation = \"secagg\"\nsecagg = { threshold = 0.4 }",
                "privacy.secagg",
            ),
            (
                "aggregation = \"secagg\"\nsecagg = { bits = 4 }",
                "privacy.secagg",
            ),
            (
                "aggregation = \"secagg\"\nsecagg = { clip = -1.0 }",
                "privacy.secagg",
            ),
            (
                "aggregation = \"secagg\"\nsecagg = { neighbors = 4 }",
                "neighbors",
            ),
            ("aggregation = \"masked\"", "masked"),
        ] {
            let msg = JobSpec::from_toml(&with(table)).unwrap_err().to_string();
            assert!(msg.contains(named), "{table}: {msg}");
        }
    }

    #[test]
    fn dp_table_is_read_and_checked_naming_the_key() {
        let with = |table: &str| EXAMPLE.to_string() + "\n[privacy.dp]\n" + table;
        let spec = JobSpec::from_toml(&with(
            "level = \"record\"\ntarget_epsilon = 3.0\ndelta = 1e-5\nmax_grad_norm = 1.0\naccountant = \"rdp\"",
        ))
        .unwrap();
        let job = spec.job_dp().unwrap();
        assert_eq!(job.rounds, 20);
        assert_eq!(job.batch_size, 32);
        assert_eq!(job.policy.target_epsilon, Some(3.0));
        assert_eq!(
            job.policy.accountant,
            cohort_privacy::dp::AccountantKind::Rdp
        );
        // A noise multiplier instead of a target; client level.
        let spec = JobSpec::from_toml(&with(
            "level = \"client\"\nnoise_multiplier = 1.1\nclipping_norm = 0.5",
        ))
        .unwrap();
        assert_eq!(
            spec.privacy.dp.unwrap().level,
            cohort_privacy::dp::DpLevel::Client
        );
        for (table, named) in [
            ("delta = 1e-5", "privacy.dp.target_epsilon"),
            ("target_epsilon = 0.0", "privacy.dp.target_epsilon"),
            ("target_epsilon = 1.0\ndelta = 2.0", "privacy.dp.delta"),
            (
                "target_epsilon = 1.0\nmax_grad_norm = 0.0",
                "privacy.dp.max_grad_norm",
            ),
            ("noise_multiplier = -1.0", "privacy.dp.noise_multiplier"),
            (
                "target_epsilon = 1.0\nclipping_norm = -2.0",
                "privacy.dp.clipping_norm",
            ),
            ("target_epsilon = 1.0\nlevel = \"patient\"", "patient"),
            ("target_epsilon = 1.0\naccountant = \"moments\"", "moments"),
            ("target_epsilon = 1.0\nepsilon = 2.0", "epsilon"),
            (
                "level = \"client\"\ntarget_epsilon = 0.001",
                "privacy.dp.target_epsilon",
            ),
            (
                "target_epsilon = 1.0\nclipping = \"adaptive\"",
                "privacy.dp.clipping",
            ),
            (
                "level = \"client\"\nnoise_multiplier = 1.0\nclipping = \"adaptive\"\nclipped_count_stddev = 0.4",
                "privacy.dp.clipped_count_stddev",
            ),
            (
                "level = \"client\"\nnoise_multiplier = 1.0\nclipping = \"adaptive\"\ntarget_quantile = 1.5",
                "privacy.dp.target_quantile",
            ),
        ] {
            let msg = JobSpec::from_toml(&with(table)).unwrap_err().to_string();
            assert!(msg.contains(named), "{table}: {msg}");
        }
        // Distributed DP that cannot fit in 12 bits is refused up front.
        let msg = JobSpec::from_toml(
            &(EXAMPLE.to_string()
                + "\n[privacy]\naggregation = \"secagg\"\nsecagg = { bits = 12 }\n[privacy.dp]\nlevel = \"client\"\nnoise_multiplier = 5.0"),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("privacy.dp"), "{msg}");
    }

    fn error_for(edit: impl Fn(&str) -> String) -> String {
        JobSpec::from_toml(&edit(EXAMPLE)).unwrap_err().to_string()
    }

    #[test]
    fn unknown_key_is_named() {
        let msg = error_for(|s| s.replace("seed = 7", "seed = 7\nsede = 8"));
        assert!(msg.contains("sede"), "{msg}");
    }

    #[test]
    fn homomorphic_aggregation_is_checked_at_submit() {
        let with = |privacy: &str| {
            let toml = format!("{EXAMPLE}\n[privacy]\n{privacy}\n");
            JobSpec::from_toml(&toml)
        };
        let spec = with("aggregation = \"he\"").unwrap();
        assert_eq!(spec.privacy.aggregation, Aggregation::He);
        assert_eq!(spec.privacy.he.decryptors(3), 2);
        assert_eq!(spec.privacy.he.decryptors(10), 7);
        let msg = with("aggregation = \"he\"\nhe = { threshold = 1.5 }")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("privacy.he.threshold"), "{msg}");
        let msg = with("aggregation = \"he\"\nhe = { bits = 61 }")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("privacy.he") && msg.contains("61"), "{msg}");
        let msg = with("aggregation = \"he\"\nhe = { rounds = 3 }")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("rounds"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named() {
        let msg = error_for(|s| s.replace("rounds = 20", "rounds = \"twenty\""));
        assert!(msg.contains("rounds"), "{msg}");
    }

    #[test]
    fn impossible_values_are_named() {
        let msg = error_for(|s| s.replace("rounds = 20", "rounds = 0"));
        assert!(msg.contains("training.rounds"), "{msg}");
        let msg = error_for(|s| s.replace("hidden = [32, 16]", "hidden = []"));
        assert!(msg.contains("hidden"), "{msg}");
        let msg = error_for(|s| s.replace("drop = [\"patient_id\"]", "drop = [\"diagnosis\"]"));
        assert!(msg.contains("diagnosis"), "{msg}");
        let msg = error_for(|s| s.replace("clients_per_round = 3", "clients_per_round = 2"));
        assert!(msg.contains("clients_per_round"), "{msg}");
        let msg = error_for(|s| s.replace("kind = \"fedavg\"", "kind = \"fedprox\"\nmu = -1.0"));
        assert!(msg.contains("strategy.mu"), "{msg}");
    }

    #[test]
    fn valuation_tables_are_checked_at_submit() {
        let with = |extra: &str| JobSpec::from_toml(&format!("{EXAMPLE}\n{extra}"));
        let spec = with("[valuation]\nmethod = \"exact\"\n").unwrap();
        assert_eq!(
            spec.valuation.map(|v| v.method),
            Some(crate::valuation::Method::Exact)
        );
        let secagg = "[privacy]\naggregation = \"secagg\"\n";
        let e = with(&format!("{secagg}[valuation]\ngroup_size = 4\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("valuation.group_size: 4 is larger than the round"),
            "{e}"
        );
        let e = with(&format!("{secagg}[valuation]\ngroup_size = 1\n")).unwrap_err();
        assert!(e.to_string().contains("valuation.group_size"), "{e}");
        let e = with("[valuation]\nshapley = true\n").unwrap_err();
        assert!(e.to_string().contains("shapley"), "{e}");
        let e = with("[valuation]\nexact_up_to = 20\n").unwrap_err();
        assert!(e.to_string().contains("valuation.exact_up_to"), "{e}");
        assert!(with(&format!("{secagg}[valuation]\ngroup_size = 3\n")).is_ok());
        let client_dp =
            "[privacy.dp]\nlevel = \"client\"\nnoise_multiplier = 1.1\nclipping_norm = 0.5\n";
        let e = with(&format!("{client_dp}\n[valuation]\n")).unwrap_err();
        assert!(e.to_string().contains("client-level DP"), "{e}");
        let e = with(&format!("{secagg}{client_dp}\n[valuation]\n")).unwrap_err();
        assert!(e.to_string().contains("client-level DP"), "{e}");
        let record_dp = "[privacy.dp]\nlevel = \"record\"\ntarget_epsilon = 4.0\n";
        assert!(
            with(&format!(
                "{secagg}{record_dp}\n[valuation]\ngroup_size = 3\n"
            ))
            .is_ok()
        );
    }
}
