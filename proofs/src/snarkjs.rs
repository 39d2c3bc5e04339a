//! snarkjs's Groth16 JSON layout (curve `bn128`).
