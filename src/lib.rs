//! The developer-facing side of Cohort that sits on top of the library
//! crates: talking to a coordinator as a model developer, evaluating a
//! downloaded model, and the all-in-one demo. `main.rs` only parses
//! arguments and calls into here, one module per command group; the
//! Python package (`python/`) calls the same functions.

pub mod allocator;
pub mod audit;
pub mod bench;
pub mod bench_proofs;
pub mod ca;
pub mod dashboard;
pub mod data;
pub mod demo;
pub mod developer;
pub mod evaluate;
pub mod fuzzing;
pub mod jobs;
pub mod local;
pub mod models;
pub mod pki;
pub mod privacy;
pub mod rewards;
pub mod sandbox;
pub mod serve;
pub mod setup;
pub mod simulate;
pub mod split_bench;
pub mod validator;
pub mod vertical;
pub mod vertical_job;

/// The bundled Breast Cancer Wisconsin (Diagnostic) data (CC BY 4.0; see
/// `data/README.md`), embedded so the demo runs from any directory.
pub const WDBC_CSV: &[u8] = include_bytes!("../data/wdbc.csv");

/// The demo's job file, also shipped as `examples/wdbc-mlp.toml`.
pub const DEMO_JOB: &str = include_str!("../examples/wdbc-mlp.toml");
