//! Offline evaluation: how well each scorer separates in-distribution from OOD images.
//!
//! Not on the per-frame path: this module allocates freely.

pub mod metrics;
