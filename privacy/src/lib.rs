//! Privacy tooling for Cohort.
//!
//! Currently this crate holds the differential-privacy accountants in [`dp`]:
//! Rényi-DP and privacy-loss-distribution accounting for the
//! Poisson-subsampled Gaussian mechanism (DP-SGD and client-sampled
//! DP-FedAvg), plus noise calibration. Secure aggregation (`secagg`),
//! homomorphic encryption (`he`) and update quantization (`quantization`)
//! modules are planned and will live beside it.

pub mod dp;
