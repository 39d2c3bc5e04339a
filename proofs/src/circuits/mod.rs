//! One file per statement; each is a `ConstraintSynthesizer` built from
//! [`crate::gadgets`].

pub mod update_norm;
