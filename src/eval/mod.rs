//! Offline evaluation: how well each scorer separates in-distribution from OOD images.
//!
//! [`collect_activations`] runs the model once per image through a [`FeatureCache`] keyed by
//! model and image hash, so a second evaluation does not run the model again.
//! [`score_cached`] scores the cached activations, and [`metrics`] turns two score sets into
//! AUROC, AUPR and FPR at 95% TPR. Not on the per-frame path: this module allocates freely.

pub mod cache;
mod collect;
pub mod metrics;
pub mod plot;

pub use cache::{sha256_hex, CachedActivations, FeatureCache};
pub use collect::{collect_activations, score_cached, Collected};
