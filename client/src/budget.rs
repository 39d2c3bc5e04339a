//! The hospital's differential-privacy budget: its own durable ledger of
//! what each job has spent on its dataset.
//!
//! The budget (`cohort client --max-epsilon E --delta D`) caps the epsilon,
//! at the hospital's delta, of everything the hospital has ever released
//! under DP. Jobs compose: the total is computed by the PLD accountant over
//! every job's spent rounds at once, which is tighter than adding their
//! epsilons. A job is admitted only if its worst case (its noisy
//! preprocessing statistics and every planned round) still fits; each
//! statistics pass and each round is written to the ledger, and flushed to
//! disk, *before* what it pays for leaves the hospital, so a crash can
//! over-count a release but never under-count one.
//!
//! The ledger is `DATA_DIR/privacy-budget.json`, replaced atomically
//! (write, fsync, rename, fsync the directory).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cohort_privacy::dp::{self, AccountantKind, DpLevel, HospitalPlan, JobDp, StatisticsPlan};
use serde::{Deserialize, Serialize};

pub const BUDGET_FILE: &str = "privacy-budget.json";
const FORMAT: u32 = 1;

/// Delta of the ledger when the hospital set no budget.
pub const DEFAULT_DELTA: f64 = 1e-5;

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("privacy budget ledger {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("privacy budget ledger {path} is unreadable ({reason}); it was left untouched")]
    Corrupt { path: PathBuf, reason: String },
    #[error("invalid privacy budget: {0}")]
    Invalid(String),
    #[error("privacy accounting: {0}")]
    Accounting(#[from] dp::DpError),
}

/// `--max-epsilon E --delta D`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetLimit {
    pub max_epsilon: f64,
    pub delta: f64,
}

impl BudgetLimit {
    pub fn new(max_epsilon: f64, delta: f64) -> Result<Self, BudgetError> {
        if !(max_epsilon.is_finite() && max_epsilon >= 0.0) {
            return Err(BudgetError::Invalid(format!(
                "--max-epsilon must be finite and >= 0, got {max_epsilon}"
            )));
        }
        if !(delta > 0.0 && delta < 1.0) {
            return Err(BudgetError::Invalid(format!(
                "--delta must be in (0, 1), got {delta}"
            )));
        }
        Ok(Self { max_epsilon, delta })
    }
}

/// One job's line in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpend {
    pub job_id: String,
    pub level: DpLevel,
    pub accountant: AccountantKind,
    /// The job's delta (its own epsilon is reported at it).
    pub job_delta: f64,
    pub plan: HospitalPlan,
    /// The rounds this hospital trained for, in order.
    pub rounds: Vec<u32>,
}

impl JobSpend {
    fn spent_segment(&self) -> Result<Option<dp::Segment>, dp::DpError> {
        self.plan.segment(self.rounds.len() as u32)
    }
}

/// One job's preprocessing statistics in the ledger: the noisy sums this
/// hospital released before the job's rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatisticsSpend {
    pub job_id: String,
    pub level: DpLevel,
    pub accountant: AccountantKind,
    pub job_delta: f64,
    pub planned_rounds: u32,
    pub plan: StatisticsPlan,
    /// Passes released, each one Gaussian mechanism of `plan`'s noise.
    pub passes: u64,
}

impl StatisticsSpend {
    fn spent_segment(&self) -> Result<Option<dp::Segment>, dp::DpError> {
        self.plan.segment(self.passes)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ledger {
    format: u32,
    max_epsilon: Option<f64>,
    delta: f64,
    jobs: Vec<JobSpend>,
    /// Ledgers written before statistics were noised have none.
    #[serde(default)]
    statistics: Vec<StatisticsSpend>,
}

impl Ledger {
    fn job(&self, job_id: &str) -> Option<&JobSpend> {
        self.jobs.iter().find(|j| j.job_id == job_id)
    }

    fn statistics_of(&self, job_id: &str) -> Option<&StatisticsSpend> {
        self.statistics.iter().find(|s| s.job_id == job_id)
    }

    /// Every job with something spent, in the order it first spent.
    fn job_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.statistics.iter().map(|s| s.job_id.as_str()).collect();
        for job in &self.jobs {
            if !ids.contains(&job.job_id.as_str()) {
                ids.push(&job.job_id);
            }
        }
        ids
    }

    /// A job's own epsilon so far, statistics and rounds composed, at the
    /// job's delta by its accountant.
    fn job_epsilon(&self, job_id: &str) -> Result<f64, dp::DpError> {
        let (statistics, rounds) = (self.statistics_of(job_id), self.job(job_id));
        let mut segments = Vec::new();
        if let Some(s) = statistics {
            segments.extend(s.spent_segment()?);
        }
        if let Some(j) = rounds {
            segments.extend(j.spent_segment()?);
        }
        let (accountant, delta) = match (rounds, statistics) {
            (Some(j), _) => (j.accountant, j.job_delta),
            (None, Some(s)) => (s.accountant, s.job_delta),
            (None, None) => return Ok(0.0),
        };
        if segments.is_empty() {
            return Ok(0.0);
        }
        Ok(dp::epsilon(accountant, &segments, delta)?.epsilon)
    }
}

/// What `cohort client budget --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetReport {
    /// `None`: the hospital set no cap (spending is still recorded).
    pub max_epsilon: Option<f64>,
    pub delta: f64,
    /// Epsilon at `delta` of everything spent, all jobs composed.
    pub spent: f64,
    /// `max_epsilon - spent`, `None` without a cap.
    pub remaining: Option<f64>,
    pub jobs: Vec<JobReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub job_id: String,
    /// The job's own epsilon so far (statistics and rounds), at the job's
    /// delta.
    pub epsilon: f64,
    pub delta: f64,
    pub level: DpLevel,
    pub accountant: AccountantKind,
    /// Passes of noisy preprocessing statistics released.
    pub statistics_passes: u64,
    /// Their noise multiplier; `None` when none were released.
    pub statistics_noise_multiplier: Option<f64>,
    pub rounds: Vec<u32>,
    pub planned_rounds: u32,
    /// The rounds' mechanism; `None` before the first round.
    pub noise_multiplier: Option<f64>,
    pub sampling_rate: Option<f64>,
    pub steps_per_round: Option<u64>,
}

/// The ledger, in memory and on disk.
pub struct Budget {
    path: Option<PathBuf>,
    ledger: Mutex<Ledger>,
}

impl Budget {
    /// Opens `data_dir/privacy-budget.json` (no file: an empty ledger).
    /// With `limit`, the cap is set (and persisted) to it; without, a cap
    /// set by an earlier run stays in force. No data dir: an in-memory
    /// ledger, which cannot hold a cap across restarts and so refuses one.
    pub fn open(data_dir: Option<&Path>, limit: Option<BudgetLimit>) -> Result<Self, BudgetError> {
        let path = data_dir.map(|d| d.join(BUDGET_FILE));
        let mut ledger = match &path {
            Some(p) if p.exists() => read(p)?,
            _ => Ledger {
                format: FORMAT,
                max_epsilon: None,
                delta: DEFAULT_DELTA,
                jobs: Vec::new(),
                statistics: Vec::new(),
            },
        };
        if let Some(limit) = limit {
            if path.is_none() {
                return Err(BudgetError::Invalid(
                    "a privacy budget needs --data-dir, where its ledger survives restarts".into(),
                ));
            }
            ledger.max_epsilon = Some(limit.max_epsilon);
            ledger.delta = limit.delta;
        }
        let budget = Self {
            path,
            ledger: Mutex::new(ledger),
        };
        if limit.is_some() {
            let ledger = budget.lock();
            budget.persist(&ledger)?;
        }
        Ok(budget)
    }

    /// Reads a data dir's ledger without running a client.
    pub fn read_report(data_dir: &Path) -> Result<BudgetReport, BudgetError> {
        if !data_dir.is_dir() {
            return Err(BudgetError::Io {
                path: data_dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such client data directory",
                ),
            });
        }
        Self::open(Some(data_dir), None)?.report()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the hospital capped its spending.
    pub fn is_capped(&self) -> bool {
        self.lock().max_epsilon.is_some()
    }

    pub fn report(&self) -> Result<BudgetReport, BudgetError> {
        let ledger = self.lock();
        let spent = total_epsilon(&ledger, &[])?;
        let jobs = ledger
            .job_ids()
            .into_iter()
            .map(|id| {
                let (rounds, statistics) = (ledger.job(id), ledger.statistics_of(id));
                let (level, accountant, delta, planned_rounds) = match (rounds, statistics) {
                    (Some(j), _) => (j.level, j.accountant, j.job_delta, j.plan.rounds),
                    (None, Some(s)) => (s.level, s.accountant, s.job_delta, s.planned_rounds),
                    (None, None) => unreachable!("job_ids lists spending jobs only"),
                };
                Ok(JobReport {
                    job_id: id.to_string(),
                    epsilon: ledger.job_epsilon(id)?,
                    delta,
                    level,
                    accountant,
                    statistics_passes: statistics.map_or(0, |s| s.passes),
                    statistics_noise_multiplier: statistics.map(|s| s.plan.noise_multiplier),
                    rounds: rounds.map(|j| j.rounds.clone()).unwrap_or_default(),
                    planned_rounds,
                    noise_multiplier: rounds.map(|j| j.plan.noise_multiplier),
                    sampling_rate: rounds.map(|j| j.plan.sampling_rate),
                    steps_per_round: rounds.map(|j| j.plan.steps_per_round),
                })
            })
            .collect::<Result<Vec<_>, BudgetError>>()?;
        Ok(BudgetReport {
            max_epsilon: ledger.max_epsilon,
            delta: ledger.delta,
            spent,
            remaining: ledger.max_epsilon.map(|m| (m - spent).max(0.0)),
            jobs,
        })
    }

    /// The plan this hospital already follows for `job_id`, if it trained
    /// for the job before: the noise is fixed at the first round.
    pub fn plan_of(&self, job_id: &str) -> Option<HospitalPlan> {
        self.lock().job(job_id).map(|j| j.plan)
    }

    /// Refuses a job whose remaining planned rounds, and statistics passes
    /// when `statistics` is given (at preparation), would take the hospital
    /// past its cap. The message gives both the required and the remaining
    /// epsilon.
    pub fn admit(
        &self,
        job_id: &str,
        plan: &HospitalPlan,
        statistics: Option<&StatisticsPlan>,
    ) -> Result<(), String> {
        let ledger = self.lock();
        let done = ledger.job(job_id).map_or(0, |j| j.rounds.len() as u32);
        let rest = plan.rounds.saturating_sub(done);
        let mut extra: Vec<dp::Segment> = plan
            .segment(rest)
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        if let Some(statistics) = statistics {
            let released = ledger.statistics_of(job_id).map_or(0, |s| s.passes);
            extra.extend(
                statistics
                    .segment(statistics.passes.saturating_sub(released))
                    .map_err(|e| e.to_string())?,
            );
        }
        check_fits(&ledger, &extra, "this job")
    }

    /// Records one pass of noisy preprocessing statistics of `job_id` as
    /// released, durably, before it leaves; returns the job's epsilon so
    /// far. Refuses when the pass would exceed the job's planned passes
    /// (a pass asked again with the same content is resent, not released
    /// again: see `statistics.rs`) or the hospital's cap.
    pub fn spend_statistics(
        &self,
        job_id: &str,
        job: &JobDp,
        statistics: &StatisticsPlan,
    ) -> Result<f64, String> {
        let mut ledger = self.lock();
        if let Some(released) = ledger.statistics_of(job_id)
            && released.passes >= statistics.passes
        {
            return Err(format!(
                "privacy plan of job {job_id} used up: this hospital already released {} of {} \
                 planned passes of preprocessing statistics under DP and releases no more",
                released.passes, statistics.passes
            ));
        }
        let one = statistics.segment(1).map_err(|e| e.to_string())?;
        let what = (
            "this pass of preprocessing statistics",
            "the statistics are",
        );
        self.charge(&mut ledger, job_id, one, what, |next| {
            match next.statistics.iter_mut().find(|s| s.job_id == job_id) {
                Some(s) => s.passes += 1,
                None => next.statistics.push(StatisticsSpend {
                    job_id: job_id.to_string(),
                    level: job.policy.level,
                    accountant: job.policy.accountant,
                    job_delta: job.policy.delta,
                    planned_rounds: job.rounds,
                    plan: *statistics,
                    passes: 1,
                }),
            }
        })
    }

    /// Records one round of `job_id` as spent, durably, and returns the
    /// job's epsilon so far (at the job's delta). Refuses when the round
    /// would exceed the job's planned rounds (retrying a round must not
    /// spend beyond what was admitted) or the hospital's cap.
    ///
    /// Under client-level DP a round already recorded is not charged again:
    /// what is released is the round's one noisy aggregate, and an attempt
    /// that was abandoned released none (its updates were masked, or seen
    /// only by the coordinator this level trusts). A SplitFed hospital
    /// retrying a round trains again (its seat is new), so it reaches here
    /// twice. Record-level DP protects each update, so every training
    /// counts (FedAvg resends the update already paid for instead).
    pub fn spend_round(
        &self,
        job_id: &str,
        job: &JobDp,
        plan: &HospitalPlan,
        round: u32,
    ) -> Result<f64, String> {
        let mut ledger = self.lock();
        if job.policy.level == DpLevel::Client
            && ledger
                .job(job_id)
                .is_some_and(|j| j.rounds.contains(&round))
        {
            return ledger.job_epsilon(job_id).map_err(|e| e.to_string());
        }
        if let Some(existing) = ledger.job(job_id)
            && existing.rounds.len() as u32 >= existing.plan.rounds
        {
            return Err(format!(
                "privacy plan of job {job_id} used up: this hospital already trained {} of \
                 {} planned rounds under DP and does not spend more on it",
                existing.rounds.len(),
                existing.plan.rounds
            ));
        }
        let one = plan.segment(1).map_err(|e| e.to_string())?;
        self.charge(
            &mut ledger,
            job_id,
            one,
            ("this round", "the update is"),
            |next| match next.jobs.iter_mut().find(|j| j.job_id == job_id) {
                Some(j) => j.rounds.push(round),
                None => next.jobs.push(JobSpend {
                    job_id: job_id.to_string(),
                    level: job.policy.level,
                    accountant: job.policy.accountant,
                    job_delta: job.policy.delta,
                    plan: *plan,
                    rounds: vec![round],
                }),
            },
        )
    }

    /// Checks that one more mechanism `one` fits the cap, applies `record`
    /// to a copy of the ledger, persists it and only then adopts it;
    /// returns the job's epsilon so far. `what`: the release as a refusal
    /// names it, and what is withheld when the disk fails.
    fn charge(
        &self,
        ledger: &mut std::sync::MutexGuard<'_, Ledger>,
        job_id: &str,
        one: Option<dp::Segment>,
        (what, withheld): (&str, &str),
        record: impl FnOnce(&mut Ledger),
    ) -> Result<f64, String> {
        let one: Vec<dp::Segment> = one.into_iter().collect();
        check_fits(ledger, &one, what)?;
        let mut next = (**ledger).clone();
        record(&mut next);
        self.persist(&next).map_err(|e| {
            format!("could not record the privacy spending, so {withheld} withheld: {e}")
        })?;
        **ledger = next;
        ledger.job_epsilon(job_id).map_err(|e| e.to_string())
    }

    fn persist(&self, ledger: &Ledger) -> Result<(), BudgetError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| BudgetError::Io {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(ledger)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&json).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        // The rename itself must reach the disk before the update leaves.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

fn read(path: &Path) -> Result<Ledger, BudgetError> {
    let bytes = std::fs::read(path).map_err(|source| BudgetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let ledger: Ledger = serde_json::from_slice(&bytes).map_err(|e| BudgetError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if ledger.format != FORMAT {
        return Err(BudgetError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("format {} (this version reads {FORMAT})", ledger.format),
        });
    }
    Ok(ledger)
}

/// Epsilon at the ledger's delta of everything spent (every job's rounds
/// and statistics) and the `extra` mechanisms, composed by PLD.
fn total_epsilon(ledger: &Ledger, extra: &[dp::Segment]) -> Result<f64, BudgetError> {
    let mut segments = Vec::new();
    for job in &ledger.jobs {
        segments.extend(job.spent_segment()?);
    }
    for statistics in &ledger.statistics {
        segments.extend(statistics.spent_segment()?);
    }
    segments.extend_from_slice(extra);
    if segments.is_empty() {
        return Ok(0.0);
    }
    Ok(dp::epsilon(AccountantKind::Pld, &segments, ledger.delta)?.epsilon)
}

fn check_fits(ledger: &Ledger, extra: &[dp::Segment], what: &str) -> Result<(), String> {
    let Some(max) = ledger.max_epsilon else {
        return Ok(());
    };
    let spent = total_epsilon(ledger, &[]).map_err(|e| e.to_string())?;
    let after = total_epsilon(ledger, extra).map_err(|e| e.to_string())?;
    if after > max {
        let required = after - spent;
        let remaining = (max - spent).max(0.0);
        return Err(format!(
            "privacy budget exceeded: {what} needs epsilon {required:.4} (delta {:e}) from this \
             hospital, which has {remaining:.4} of its {max} remaining",
            ledger.delta
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_privacy::dp::DpPolicy;

    fn job(target: f64, rounds: u32) -> JobDp {
        JobDp {
            policy: DpPolicy::new(DpLevel::Record, Some(target), None),
            rounds,
            local_epochs: 1,
            batch_size: 32,
            noised_statistics: true,
        }
    }

    #[test]
    fn spending_is_durable_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let limit = BudgetLimit::new(2.5, 1e-5).unwrap();
        let budget = Budget::open(Some(dir.path()), Some(limit)).unwrap();
        let j = job(2.0, 4);
        let plan = j.plan(0.25, 4).unwrap();
        let statistics = j.statistics_plan().unwrap();
        budget.admit("job-a", &plan, Some(&statistics)).unwrap();
        let mut last = 0.0;
        for _ in 0..statistics.passes {
            let eps = budget.spend_statistics("job-a", &j, &statistics).unwrap();
            assert!(eps > last);
            last = eps;
        }
        // A fourth pass is beyond the job's plan.
        let err = budget
            .spend_statistics("job-a", &j, &statistics)
            .unwrap_err();
        assert!(err.contains("used up") && err.contains("3 of 3"), "{err}");
        // A quarter of the job's target by default.
        assert!(last <= 0.5 && last > 0.49, "{last}");
        for round in 1..=4 {
            let eps = budget.spend_round("job-a", &j, &plan, round).unwrap();
            assert!(eps > last);
            last = eps;
        }
        assert!(last <= 2.0 && last > 1.9, "{last}");
        // A fifth round is beyond the admitted plan.
        let err = budget.spend_round("job-a", &j, &plan, 5).unwrap_err();
        assert!(err.contains("used up"), "{err}");

        // A second job of the same size does not fit in the remaining ~0.5
        // (composed by PLD the two would be about 2.9, less than 2 + 2).
        let err = budget.admit("job-b", &plan, None).unwrap_err();
        assert!(
            err.contains("needs epsilon") && err.contains("remaining"),
            "{err}"
        );

        // The ledger survives a restart, cap included.
        drop(budget);
        let report = Budget::read_report(dir.path()).unwrap();
        assert_eq!(report.max_epsilon, Some(2.5));
        assert_eq!(report.jobs.len(), 1);
        assert_eq!(report.jobs[0].rounds, vec![1, 2, 3, 4]);
        assert_eq!(report.jobs[0].statistics_passes, 3);
        assert!((report.spent - last).abs() < 1e-9);
        assert!((report.remaining.unwrap() - (2.5 - last)).abs() < 1e-9);
        let reopened = Budget::open(Some(dir.path()), None).unwrap();
        assert!(reopened.is_capped());
        assert!(reopened.admit("job-b", &plan, None).is_err());
    }

    #[test]
    fn statistics_alone_are_a_job_in_the_report_and_old_ledgers_still_read() {
        let dir = tempfile::tempdir().unwrap();
        // A ledger written before statistics were recorded.
        std::fs::write(
            dir.path().join(BUDGET_FILE),
            br#"{"format": 1, "max_epsilon": 3.0, "delta": 1e-5, "jobs": []}"#,
        )
        .unwrap();
        let budget = Budget::open(Some(dir.path()), None).unwrap();
        let j = job(2.0, 4);
        let statistics = j.statistics_plan().unwrap();
        let eps = budget.spend_statistics("job-s", &j, &statistics).unwrap();
        let report = budget.report().unwrap();
        assert_eq!(report.jobs.len(), 1);
        let line = &report.jobs[0];
        assert_eq!((line.job_id.as_str(), line.statistics_passes), ("job-s", 1));
        assert!(line.rounds.is_empty() && line.noise_multiplier.is_none());
        assert_eq!(line.planned_rounds, 4);
        assert!((line.epsilon - eps).abs() < 1e-12 && eps > 0.0);
        assert!((report.spent - eps).abs() < 1e-9, "{report:?}");
        // Passes are capped by the hospital's budget like rounds.
        let before = budget.report().unwrap().spent;
        let greedy = JobDp {
            policy: DpPolicy {
                statistics_epsilon: Some(3.5),
                ..DpPolicy::new(DpLevel::Record, Some(10.0), None)
            },
            ..job(10.0, 4)
        };
        let expensive = greedy.statistics_plan().unwrap();
        // Its three passes would spend 3.5 of the 3.0 cap.
        let err = (0..expensive.passes)
            .find_map(|_| budget.spend_statistics("job-g", &greedy, &expensive).err())
            .expect("a pass beyond the cap");
        assert!(
            err.contains("preprocessing statistics") && err.contains("remaining"),
            "{err}"
        );
        let after = budget.report().unwrap().spent;
        assert!(after > before && after <= 3.0, "{before} then {after}");
    }

    #[test]
    fn a_retried_round_is_charged_again_at_record_level_only() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget::open(Some(dir.path()), None).unwrap();
        let record = job(2.0, 3);
        let plan = record.plan(0.25, 4).unwrap();
        let first = budget.spend_round("rec", &record, &plan, 1).unwrap();
        let again = budget.spend_round("rec", &record, &plan, 1).unwrap();
        assert!(again > first, "{first} then {again}");

        let client = JobDp {
            policy: DpPolicy::new(DpLevel::Client, Some(2.0), None),
            ..job(2.0, 3)
        };
        let plan = client.client_plan().unwrap();
        let first = budget.spend_round("cli", &client, &plan, 1).unwrap();
        let again = budget.spend_round("cli", &client, &plan, 1).unwrap();
        assert_eq!(first, again);
        let second = budget.spend_round("cli", &client, &plan, 2).unwrap();
        assert!(second > first);
        let report = Budget::read_report(dir.path()).unwrap();
        let cli = report.jobs.iter().find(|j| j.job_id == "cli").unwrap();
        assert_eq!(cli.rounds, vec![1, 2]);
    }

    #[test]
    fn a_corrupt_ledger_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BUDGET_FILE);
        std::fs::write(&path, b"{ not json").unwrap();
        let err = Budget::open(Some(dir.path()), None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unreadable"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{ not json");
        assert!(BudgetLimit::new(-1.0, 1e-5).is_err());
        assert!(BudgetLimit::new(1.0, 0.0).is_err());
        assert!(Budget::open(None, Some(BudgetLimit::new(1.0, 1e-5).unwrap())).is_err());
        let missing = Budget::read_report(&dir.path().join("typo"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            missing.contains("no such client data directory"),
            "{missing}"
        );
    }
}
