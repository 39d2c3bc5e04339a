//! `cohort._native`: the Rust side of the `cohort` Python package. Every
//! function is a thin call into the `cohort` library (the same functions
//! the CLI calls); results cross as JSON text that `cohort/__init__.py`
//! turns into dicts and DataFrames. Errors become `cohort.CohortError`
//! carrying the library's message (the coordinator's, for a refused call);
//! a panic is caught and raised the same way, never unwound into Python.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cohort::{audit, developer, jobs, models, pki, rewards, sandbox};
use cohort_identity::Role;
use cohort_protocol::Security;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

pyo3::create_exception!(
    _native,
    CohortError,
    PyException,
    "A Cohort call failed; the message says why (from the coordinator when it refused)."
);

fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("cohort")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))
        })
        .as_ref()
        .map_err(|e| CohortError::new_err(e.clone()))
}

fn error(e: anyhow::Error) -> PyErr {
    CohortError::new_err(format!("{e:#}"))
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Runs `future` on the shared runtime without holding the GIL, checking
/// for Ctrl-C (and other Python signals) every 100 ms: an interrupt
/// abandons the call and raises KeyboardInterrupt here, while whatever the
/// coordinator was asked to do (a job) carries on.
fn block_on<T, F>(py: Python<'_>, future: F) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let rt = runtime()?;
    let mut handle = rt.spawn(future);
    loop {
        let step = py.detach(|| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(100), &mut handle).await
            })
        });
        match step {
            Ok(Ok(result)) => return result.map_err(error),
            Ok(Err(join)) if join.is_panic() => {
                return Err(CohortError::new_err(format!(
                    "internal error (please report): {}",
                    panic_message(join.into_panic())
                )));
            }
            Ok(Err(join)) => return Err(CohortError::new_err(format!("call cancelled: {join}"))),
            Err(_elapsed) => {
                if let Err(interrupt) = py.check_signals() {
                    handle.abort();
                    return Err(interrupt);
                }
            }
        }
    }
}

/// Runs blocking library code without the GIL, a panic turned into an error.
fn blocking<T: Send>(py: Python<'_>, f: impl FnOnce() -> anyhow::Result<T> + Send) -> PyResult<T> {
    match py.detach(|| std::panic::catch_unwind(AssertUnwindSafe(f))) {
        Ok(result) => result.map_err(error),
        Err(payload) => Err(CohortError::new_err(format!(
            "internal error (please report): {}",
            panic_message(payload)
        ))),
    }
}

fn to_json(value: &impl serde::Serialize) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| CohortError::new_err(e.to_string()))
}

fn state_file(state: Option<PathBuf>) -> PathBuf {
    state.unwrap_or_else(audit::default_state_file)
}

/// A connection to a coordinator as a developer (or validator).
#[pyclass(module = "cohort._native", frozen)]
struct Coordinator {
    url: String,
    security: Security,
    developer: developer::Developer,
}

impl Coordinator {
    fn client(&self) -> developer::Developer {
        self.developer.clone()
    }
}

#[pymethods]
impl Coordinator {
    /// Connects now, so a wrong URL or a coordinator that is down fails here.
    #[new]
    #[pyo3(signature = (url, tls=None))]
    fn new(py: Python<'_>, url: String, tls: Option<PathBuf>) -> PyResult<Self> {
        let security = match &tls {
            Some(dir) => Security::MutualTls(Arc::new(
                pki::load_kit(dir, &[Role::Developer, Role::Validator]).map_err(error)?,
            )),
            None => Security::Insecure,
        };
        let developer = block_on(py, {
            let url = url.clone();
            let security = security.clone();
            async move { developer::connect(&url, &security).await }
        })?;
        Ok(Self {
            url,
            security,
            developer,
        })
    }

    #[getter]
    fn url(&self) -> String {
        self.url.clone()
    }

    /// Submits job-file TOML; returns the job id.
    fn submit(&self, py: Python<'_>, job_toml: String) -> PyResult<String> {
        let mut dev = self.client();
        block_on(
            py,
            async move { developer::submit(&mut dev, &job_toml).await },
        )
    }

    /// Every job, as JSON.
    fn jobs(&self, py: Python<'_>) -> PyResult<String> {
        let mut dev = self.client();
        let list = block_on(py, async move { developer::list(&mut dev).await })?;
        to_json(&list)
    }

    /// One job's state and rounds, as JSON; only the rounds after
    /// `rounds_after` and the events after the first `events_after`, so that
    /// polling a long job stays cheap.
    #[pyo3(signature = (job_id, rounds_after=0, events_after=0))]
    fn status(
        &self,
        py: Python<'_>,
        job_id: String,
        rounds_after: u32,
        events_after: u32,
    ) -> PyResult<String> {
        let mut dev = self.client();
        let view = block_on(py, async move {
            developer::status_after(&mut dev, &job_id, rounds_after, events_after).await
        })?;
        to_json(&view)
    }

    /// Downloads a job's model (and its signature) into `out`, as JSON.
    #[pyo3(signature = (job_id, out, round=None))]
    fn model(
        &self,
        py: Python<'_>,
        job_id: String,
        out: PathBuf,
        round: Option<u32>,
    ) -> PyResult<String> {
        let mut dev = self.client();
        let model = block_on(py, async move {
            models::get(&mut dev, &job_id, round, &out).await
        })?;
        to_json(&model)
    }

    /// Fetches the coordinator's ledger and verifies it, as JSON.
    #[pyo3(signature = (state=None))]
    fn verify_ledger(&self, py: Python<'_>, state: Option<PathBuf>) -> PyResult<String> {
        let source = audit::LedgerSource::Coordinator {
            url: self.url.clone(),
            security: self.security.clone(),
        };
        let state = state_file(state);
        let verified = block_on(py, async move {
            audit::verify_ledger_from(&source, &state, None).await
        })?;
        to_json(&verified)
    }

    /// Contribution values and rewards from the coordinator's verified
    /// ledger (`cohort rewards show --json`), optionally one job's and
    /// with the per-round SVG plot written to `plot`, as JSON.
    #[pyo3(signature = (job_id=None, plot=None))]
    fn rewards(
        &self,
        py: Python<'_>,
        job_id: Option<String>,
        plot: Option<PathBuf>,
    ) -> PyResult<String> {
        let source = audit::LedgerSource::Coordinator {
            url: self.url.clone(),
            security: self.security.clone(),
        };
        let options = rewards::ShowOptions {
            job: job_id,
            plot,
            price_csv: None,
            price_unit: 1,
        };
        let shown = block_on(
            py,
            async move { rewards::show_from(&source, &options).await },
        )?;
        to_json(&shown)
    }
}

/// A throwaway consortium running in this process (`cohort.demo()`).
#[pyclass(module = "cohort._native", frozen)]
struct Sandbox {
    info: String,
    running: Mutex<Option<sandbox::Sandbox>>,
}

#[pymethods]
impl Sandbox {
    #[new]
    #[pyo3(signature = (hospitals=3, seed=42, alpha=5.0, tls=true, workdir=None, max_epsilon=None, delta=1e-5, emission_initial=None, emission_halving=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        hospitals: usize,
        seed: u64,
        alpha: f64,
        tls: bool,
        workdir: Option<PathBuf>,
        max_epsilon: Option<f64>,
        delta: f64,
        emission_initial: Option<u64>,
        emission_halving: Option<u64>,
    ) -> PyResult<Self> {
        let bitcoin = cohort_coordinator::rewards::EmissionSchedule::BITCOIN;
        let rewards = cohort_coordinator::rewards::RewardsConfig::new(
            emission_initial.unwrap_or(bitcoin.initial()),
            emission_halving.unwrap_or(bitcoin.halving()),
            0,
        )
        .map_err(|e| CohortError::new_err(e.to_string()))?;
        let budget = match max_epsilon {
            Some(epsilon) => Some(
                cohort_client::budget::BudgetLimit::new(epsilon, delta)
                    .map_err(|e| CohortError::new_err(e.to_string()))?,
            ),
            None => None,
        };
        let options = sandbox::SandboxOptions {
            workdir,
            hospitals,
            alpha,
            seed,
            tls,
            client: cohort_client::ClientOptions {
                budget,
                ..Default::default()
            },
            rewards,
        };
        let started = block_on(py, async move { sandbox::Sandbox::start(options).await })?;
        Ok(Self {
            info: to_json(&started.info)?,
            running: Mutex::new(Some(started)),
        })
    }

    /// Where its parts are, as JSON.
    #[getter]
    fn info(&self) -> String {
        self.info.clone()
    }

    #[getter]
    fn running(&self) -> bool {
        self.running
            .lock()
            .map(|s| s.as_ref().is_some_and(sandbox::Sandbox::is_running))
            .unwrap_or(false)
    }

    /// Stops the coordinator and clients (files stay). Idempotent.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self
            .running
            .lock()
            .map_err(|_| CohortError::new_err("the sandbox's lock is poisoned"))?
            .take();
        if let Some(mut sandbox) = taken {
            block_on(py, async move {
                sandbox.stop().await;
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// Metrics of the model in `model_dir` on a labelled file, as JSON.
#[pyfunction]
fn evaluate(py: Python<'_>, model_dir: PathBuf, data: PathBuf) -> PyResult<String> {
    let (_, metrics) = blocking(py, || cohort::evaluate::evaluate_file(&model_dir, &data))?;
    to_json(&metrics)
}

/// Preprocessed features, probabilities and labels on a labelled file, as JSON.
#[pyfunction]
fn predict(py: Python<'_>, model_dir: PathBuf, data: PathBuf) -> PyResult<String> {
    let predictions = blocking(py, || cohort::evaluate::predict_file(&model_dir, &data))?;
    to_json(&predictions)
}

/// Checks a downloaded model's signature (and, with `data_dir`, that the
/// verified ledger records it), as JSON.
#[pyfunction]
#[pyo3(signature = (model_dir, public_key=None, data_dir=None, state=None))]
fn verify_model(
    py: Python<'_>,
    model_dir: PathBuf,
    public_key: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    state: Option<PathBuf>,
) -> PyResult<String> {
    let state = state_file(state);
    let verified = blocking(py, || {
        audit::verify_model(
            &model_dir,
            public_key.as_deref(),
            data_dir.as_deref(),
            &state,
        )
    })?;
    to_json(&verified)
}

/// Verifies the ledger in a coordinator's data directory, as JSON.
#[pyfunction]
#[pyo3(signature = (data_dir, state=None))]
fn verify_ledger(py: Python<'_>, data_dir: PathBuf, state: Option<PathBuf>) -> PyResult<String> {
    let source = audit::LedgerSource::DataDir(data_dir);
    let state = state_file(state);
    let verified = block_on(py, async move {
        audit::verify_ledger_from(&source, &state, None).await
    })?;
    to_json(&verified)
}

/// The ledger's entries (optionally one job's), as JSON.
#[pyfunction]
#[pyo3(signature = (data_dir, job_id=None))]
fn ledger_entries(py: Python<'_>, data_dir: PathBuf, job_id: Option<String>) -> PyResult<String> {
    let source = audit::LedgerSource::DataDir(data_dir);
    let entries = block_on(py, async move {
        audit::indexed_entries(&source, job_id.as_deref()).await
    })?;
    to_json(&entries)
}

/// An entry's Merkle inclusion proof, as JSON.
#[pyfunction]
fn inclusion_proof(py: Python<'_>, data_dir: PathBuf, index: u64) -> PyResult<String> {
    let proof = blocking(py, || audit::inclusion_proof(&data_dir, index))?;
    to_json(&proof)
}

/// The openings of entry `index`'s sealed parts (`name`, `salt`, `body`),
/// as JSON.
#[pyfunction]
fn ledger_openings(py: Python<'_>, data_dir: PathBuf, index: u64) -> PyResult<String> {
    let openings = blocking(py, || audit::ledger_openings(&data_dir, index))?;
    to_json(&openings)
}

/// A job given as JSON, as checked job-file TOML.
#[pyfunction]
fn job_toml_from_json(json: &str) -> PyResult<String> {
    jobs::job_toml_from_json(json).map_err(error)
}

/// A job's `[preprocessing]` table from reference data the developer holds
/// (`cohort data preprocessing --json`), as JSON.
#[pyfunction]
fn reference_preprocessing(py: Python<'_>, data: PathBuf, job_toml: &str) -> PyResult<String> {
    let reference = blocking(py, || {
        cohort::data::reference_preprocessing_of(&data, job_toml)
    })?;
    to_json(&reference)
}

/// Checks job-file TOML the way the coordinator will.
#[pyfunction]
fn validate_job(job_toml: &str) -> PyResult<()> {
    jobs::validate_job_toml(job_toml).map_err(error)
}

/// Writes the model in `model_dir` as an ONNX file at `out`.
#[pyfunction]
fn export_onnx(py: Python<'_>, model_dir: PathBuf, out: PathBuf) -> PyResult<()> {
    blocking(py, || cohort::models::export_onnx(&model_dir, &out))
}

/// Issues a startup kit from the CA in `ca_dir` (`cohort ca issue`), as JSON.
#[pyfunction]
#[pyo3(signature = (ca_dir, role, name, out, days=365))]
fn ca_issue(
    py: Python<'_>,
    ca_dir: PathBuf,
    role: &str,
    name: String,
    out: PathBuf,
    days: u32,
) -> PyResult<String> {
    let role: Role =
        serde_json::from_value(serde_json::Value::String(role.to_string())).map_err(|_| {
            CohortError::new_err(format!(
                "unknown role `{role}`: hospital, developer, validator or coordinator"
            ))
        })?;
    let request = cohort::ca::KitRequest {
        role,
        name,
        days,
        hosts: Vec::new(),
    };
    let kit = blocking(py, || cohort::ca::issue(&ca_dir, &request, &out))?;
    to_json(&kit)
}

/// Revokes every certificate of a member (`cohort ca revoke`), as JSON.
#[pyfunction]
fn ca_revoke(py: Python<'_>, ca_dir: PathBuf, name: String) -> PyResult<String> {
    let revocation = blocking(py, || cohort::ca::revoke(&ca_dir, &name))?;
    to_json(&revocation)
}

/// A hospital client's privacy budget report (`cohort client budget`), as JSON.
#[pyfunction]
fn budget(py: Python<'_>, client_dir: PathBuf) -> PyResult<String> {
    let report = blocking(py, || {
        Ok(cohort_client::budget::Budget::read_report(&client_dir)?)
    })?;
    to_json(&report)
}

/// The public key (PEM) that signs a coordinator's ledger and models, from
/// its data directory (`cohort coordinator signing-key`).
#[pyfunction]
fn coordinator_key(py: Python<'_>, data_dir: PathBuf) -> PyResult<String> {
    blocking(py, || Ok(audit::coordinator_key(&data_dir)?.spki_pem()))
}

/// One round of SecAgg+ with every party in this process (`cohort bench
/// secagg`): CPU time and bytes per client, as JSON.
#[pyfunction]
#[pyo3(signature = (clients, entries, dropout=0.0, neighbours=8, threshold=0.66, bits=32))]
fn bench_secagg(
    py: Python<'_>,
    clients: u32,
    entries: usize,
    dropout: f64,
    neighbours: u32,
    threshold: f64,
    bits: u32,
) -> PyResult<String> {
    let result = blocking(py, || {
        cohort::bench::secagg(clients, entries, dropout, neighbours, threshold, bits)
    })?;
    to_json(&result)
}

/// One round of threshold homomorphic aggregation with every party in this
/// process (`cohort bench he`): times and bytes per hospital, as JSON.
#[pyfunction]
#[pyo3(signature = (params, hospitals=3, threshold=0.66, bits=32))]
fn bench_he(
    py: Python<'_>,
    params: usize,
    hospitals: u32,
    threshold: f64,
    bits: u32,
) -> PyResult<String> {
    let result = blocking(py, || cohort::bench::he(params, hospitals, threshold, bits))?;
    to_json(&result)
}

/// The bundled demo job file (examples/wdbc-mlp.toml).
#[pyfunction]
fn demo_job() -> &'static str {
    cohort::DEMO_JOB
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CohortError", m.py().get_type::<CohortError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Coordinator>()?;
    m.add_class::<Sandbox>()?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(predict, m)?)?;
    m.add_function(wrap_pyfunction!(verify_model, m)?)?;
    m.add_function(wrap_pyfunction!(verify_ledger, m)?)?;
    m.add_function(wrap_pyfunction!(ledger_entries, m)?)?;
    m.add_function(wrap_pyfunction!(inclusion_proof, m)?)?;
    m.add_function(wrap_pyfunction!(ledger_openings, m)?)?;
    m.add_function(wrap_pyfunction!(job_toml_from_json, m)?)?;
    m.add_function(wrap_pyfunction!(validate_job, m)?)?;
    m.add_function(wrap_pyfunction!(reference_preprocessing, m)?)?;
    m.add_function(wrap_pyfunction!(export_onnx, m)?)?;
    m.add_function(wrap_pyfunction!(demo_job, m)?)?;
    m.add_function(wrap_pyfunction!(ca_issue, m)?)?;
    m.add_function(wrap_pyfunction!(ca_revoke, m)?)?;
    m.add_function(wrap_pyfunction!(budget, m)?)?;
    m.add_function(wrap_pyfunction!(bench_secagg, m)?)?;
    m.add_function(wrap_pyfunction!(bench_he, m)?)?;
    m.add_function(wrap_pyfunction!(coordinator_key, m)?)?;
    Ok(())
}
