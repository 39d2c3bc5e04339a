//! Privacy tooling for Cohort.
//!
//! * [`dp`]: Rényi-DP and privacy-loss-distribution accounting for the
//!   Poisson-subsampled Gaussian mechanism (DP-SGD and client-sampled
//!   DP-FedAvg), plus noise calibration.
//! * [`distributed`]: the distributed discrete Gaussian mechanism: each
//!   hospital's share of the noise under secure aggregation.
//! * [`he`]: threshold homomorphic aggregation: a per-job key ceremony
//!   (collective RLWE key, Shamir-shared secret), encryption of quantized
//!   updates, ciphertext sums, smudged decryption shares, `t`-of-`N`
//!   decryption.
//! * [`noise`]: exact, floating-point-safe Gaussian and discrete Gaussian
//!   noise on a lattice.
//! * [`quantize`]: clipping, weighting and unbiased stochastic quantization
//!   of model updates into `Z_{2^bits}` such that a sum of them cannot wrap,
//!   and decoding of the example-weighted mean. Shared by secure
//!   aggregation and homomorphic encryption.
//! * [`secagg`]: the cryptographic core of SecAgg+ secure aggregation
//!   (pairwise masks from X25519 agreements, Shamir shares for dropout
//!   recovery): the coordinator learns only the sum of the surviving
//!   clients' quantized updates. Transport-free: the coordinator and client
//!   move the byte encodings it defines.

pub mod distributed;
pub mod dp;
pub mod he;
pub mod noise;
pub mod quantize;
pub mod secagg;
