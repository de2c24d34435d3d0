//! gradgate: gate camera frames that are out of a classifier's distribution.
//!
//! A frame flows through one module per stage:
//!
//! ```text
//! source ─▶ frame ─▶ tensor ─▶ model ─▶ activations ─▶ score ─▶ gate
//! (files)  (FrameBuf) (InputTensor) (tract) (h, z = W·h + b) (f32) (Verdict)
//! ```
//!
//! [`Pipeline::new`] loads the model and allocates every per-frame buffer once;
//! [`Pipeline::step`] runs one frame through the stages and, apart from the image decoder's
//! and tract's own internals, allocates nothing. The default scorer is GradNorm (Huang, Geng
//! and Li, NeurIPS 2021) in closed form, computed from the cached penultimate activations
//! without a backward pass; MSP, max-logit and energy come from the same cache.
//!
//! ```no_run
//! use gradgate::{Gate, Model, Pipeline, Scorer, ScorerKind};
//! use gradgate::frame::FrameLimits;
//!
//! let model = Model::load("models/efficientnet-lite0-int8.onnx".as_ref())?;
//! let scorer = Scorer::new(ScorerKind::GradNorm);
//! let mut pipeline = Pipeline::new(model, scorer, Gate::new(1.0), FrameLimits::default());
//! let result = pipeline.step("tests/data/id/llama-alpaca.jpg".as_ref())?;
//! println!("score {} ood {}", result.verdict.score, result.verdict.ood);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Known limitations
//! - tract allocates inside each inference call; gradgate's own stages do not. The image
//!   crate's decoders allocate their internal state per frame.
//! - tract 0.23 runs quantized (QDQ) ONNX graphs as simulated quantization in `f32`, which
//!   is slower than the `f32` model on the same CPU.
//! - GradNorm as published can rank out-of-distribution frames above in-distribution ones on
//!   some models, through its `‖h‖₁` factor; compare scorers on your own images.

pub mod activations;
pub mod calibration;
pub mod eval;
pub mod frame;
pub mod gate;
pub mod model;
mod pipeline;
pub mod score;
pub mod signal;
pub mod source;
pub mod tensor;

pub use activations::{Activations, Head};
pub use calibration::Calibration;
pub use gate::{Gate, Verdict};
pub use model::{Model, ModelError};
pub use pipeline::{FrameError, FrameResult, Pipeline};
pub use score::{GradNormScale, Scorer, ScorerKind};
