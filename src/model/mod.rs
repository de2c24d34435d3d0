//! The classifier: loads an ONNX file with tract, finds its head, and runs the backbone.
//!
//! The only module that imports tract. [`Model::load`] reads the file once and finds the final
//! linear layer by inspecting the graph ([`HeadSpec`]). It cuts the graph at the pooled
//! features that layer reads, optimizes the backbone for a fixed `1 × 3 × S × S` input, and
//! keeps one tract state for every frame. [`Model::run`] copies an [`InputTensor`] in, runs the
//! backbone and copies the features into an [`Activations`]. The runtime computes the logits
//! itself.
//!
//! # Important notes
//! - tract's `run` returns owned tensors, and its ops allocate their outputs, so
//!   [`Model::run`] is the one per-frame step that allocates. Everything before and after it
//!   reuses buffers sized here.
//! - Quantized (QDQ) graphs run in tract 0.23 as simulated quantization in `f32`.
//! - [`Model::load_with`] can prepare the backbone for an NVIDIA GPU with tract-cuda (cargo
//!   features `cuda` and `cuda-12`), and falls back to the CPU when that fails.

mod backend;
mod cuda;
mod head;
mod metadata;
mod profile;
mod qdq;

pub use backend::{Backend, CudaUnavailable};
pub use cuda::probe_cuda;
pub use head::HeadSpec;
pub use metadata::{LABELS_KEY, PREPROCESS_KEY};
pub use profile::{time_by_op, NodeTime};
pub use qdq::{FakeQuant, FuseReport};

use crate::activations::{Activations, Head};
use crate::tensor::{InputTensor, PreprocessSpec};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tract_onnx::prelude::*;

/// Error from loading a model.
#[derive(Debug)]
#[non_exhaustive]
pub enum ModelError {
    /// The file could not be read.
    Read {
        /// The model file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not an ONNX model.
    NotOnnx {
        /// The model file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A gradgate metadata entry is malformed.
    BadMetadata {
        /// The model file.
        path: PathBuf,
        /// The metadata key.
        key: &'static str,
        /// The problem found.
        reason: String,
    },
    /// No graph output is produced by a linear layer.
    NoLinearHead {
        /// The model file.
        path: PathBuf,
        /// The graph outputs and what produces each.
        outputs: String,
    },
    /// The linear layer's input does not come from global pooling.
    HeadNotPooled {
        /// The model file.
        path: PathBuf,
        /// The linear layer.
        head: String,
        /// The operator found between the layer and the backbone.
        found: String,
    },
    /// A linear layer was found but gradgate cannot use it.
    UnsupportedHead {
        /// The model file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The class names do not match the number of logits.
    LabelCount {
        /// The model file.
        path: PathBuf,
        /// Number of names in the metadata.
        labels: usize,
        /// Number of logits of the head.
        classes: usize,
    },
    /// The backbone's output does not have the head's feature width.
    FeatureShape {
        /// The model file.
        path: PathBuf,
        /// The backbone output's shape.
        shape: String,
        /// The head's feature width D.
        expected: usize,
    },
    /// tract failed at one phase of loading.
    Tract {
        /// The model file.
        path: PathBuf,
        /// The phase, e.g. "optimize".
        phase: &'static str,
        /// tract's error chain.
        source: anyhow::Error,
    },
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Read { path, source } => {
                write!(f, "cannot read model {}: {source}", path.display())
            }
            ModelError::NotOnnx { path, reason } => {
                write!(f, "{} is not an ONNX model: {reason}", path.display())
            }
            ModelError::BadMetadata { path, key, reason } => {
                write!(f, "invalid metadata '{key}' in model {}: {reason}", path.display())
            }
            ModelError::NoLinearHead { path, outputs } => write!(
                f,
                "no final linear layer in model {}: graph outputs are {outputs}; gradgate needs a \
                 graph output computed by Gemm, or MatMul then Add, with constant weights after \
                 global pooling",
                path.display()
            ),
            ModelError::HeadNotPooled { path, head, found } => write!(
                f,
                "the {head} in model {} does not read globally pooled features (found {found}); \
                 gradgate needs GlobalAveragePool, GlobalMaxPool or ReduceMean before the head",
                path.display()
            ),
            ModelError::UnsupportedHead { path, reason } => {
                write!(f, "unsupported final layer in model {}: {reason}", path.display())
            }
            ModelError::LabelCount { path, labels, classes } => write!(
                f,
                "model {} names {labels} classes in its metadata but its head has {classes} outputs",
                path.display()
            ),
            ModelError::FeatureShape { path, shape, expected } => write!(
                f,
                "backbone of model {} outputs shape {shape}, expected {expected} features for the head",
                path.display()
            ),
            ModelError::Tract { path, phase, source } => {
                write!(f, "tract failed to {phase} model {}: {source:#}", path.display())
            }
        }
    }
}

// No `source()`: every message already contains its cause, and `main` prints the chain.
impl std::error::Error for ModelError {}

/// Facts about a loaded model, for logs, outputs and calibration files.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
    /// Preprocessing that frames need for this model.
    pub preprocess: PreprocessSpec,
    /// One name per class.
    pub labels: Vec<String>,
    /// The head as found in the graph.
    pub head: String,
    /// Name of the pooled-feature tensor the backbone is cut at.
    pub features: String,
    /// True when the head weights were stored quantized.
    pub quantized_head: bool,
    /// Number of nodes of the optimized backbone.
    pub backbone_nodes: usize,
    /// True when the graph has QuantizeLinear or DequantizeLinear nodes (a QDQ quantized
    /// model, which tract runs as quantization simulated in `f32`).
    pub qdq: bool,
    /// Counts of the QDQ rewrite (see [`LoadOptions::fuse_qdq`]), or `None` when it did not
    /// run.
    pub qdq_fused: Option<FuseReport>,
}

/// Options of [`Model::load_opts`] for preparing the backbone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Backend that runs the backbone.
    pub backend: Backend,
    /// On the CPU, replace each QuantizeLinear → DequantizeLinear pair of a QDQ graph with
    /// one in-place op and drop the requantization after zero padding. The features are
    /// the same bit for bit (see the `qdq` module); only the time changes. On by default;
    /// off to measure what it saves.
    pub fuse_qdq: bool,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            backend: Backend::Cpu,
            fuse_qdq: true,
        }
    }
}

/// A loaded classifier: the optimized backbone, its head, and one reusable tract state.
pub struct Model {
    info: ModelInfo,
    head: Head,
    state: TypedSimpleState,
    /// The tract input tensor, refilled every frame. Invariant: between calls to
    /// [`Model::run`] this is the only reference, so it can be written in place.
    input: Arc<Tensor>,
    /// tract's outputs between [`Model::run_backbone`] and [`Model::copy_features`].
    outputs: TVec<TValue>,
    /// Backend the backbone runs on: `Cpu` or `Cuda`.
    backend_in_use: Backend,
    /// Reason a model requested on CUDA runs on the CPU.
    fallback: Option<CudaUnavailable>,
}

impl Model {
    /// Loads, inspects and optimizes the model at `path` for the CPU.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        Model::load_with(path, Backend::Cpu)
    }

    /// Loads and inspects the model at `path` like [`Model::load`], and prepares its backbone
    /// for `backend`.
    ///
    /// CUDA never makes loading fail. With [`Backend::Cuda`] or [`Backend::Auto`], a model
    /// that cannot run on the GPU runs on the CPU: the binary lacks the `cuda` or `cuda-12`
    /// feature, the CUDA libraries or the GPU are missing, or tract-cuda fails on the model.
    /// One log line gives the reason: a warning for `Cuda`, info for `Auto` when no GPU was
    /// found, a warning for `Auto` when a GPU was found but failed. [`Model::backend_in_use`]
    /// and [`Model::cuda_fallback`] report the outcome.
    ///
    /// The first CUDA load in a process creates the CUDA context, which compiles tract's
    /// kernels with NVRTC, or reads them from the cubin cache (see the crate's README).
    pub fn load_with(path: &Path, backend: Backend) -> Result<Model, ModelError> {
        Model::load_opts(
            path,
            &LoadOptions {
                backend,
                ..LoadOptions::default()
            },
        )
    }

    /// Loads the model at `path` like [`Model::load_with`], with every option.
    pub fn load_opts(path: &Path, options: &LoadOptions) -> Result<Model, ModelError> {
        let backend = options.backend;
        let tract_error = |phase: &'static str| tract_failure(path, phase);

        // Read the file once: for the hash and for the protobuf.
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let proto = <tract_onnx::pb::ModelProto as prost::Message>::decode(bytes.as_slice())
            .map_err(|e| ModelError::NotOnnx {
                path: path.to_path_buf(),
                reason: format!("{e:#}"),
            })?;
        // The file, the protobuf and tract's graph each hold every weight. Each copy is
        // dropped as soon as the next exists, so `run`'s peak resident memory stays about two
        // weight copies lower (docs/benchmarks.md).
        drop(bytes);
        let Some(graph) = proto.graph.as_ref().filter(|g| !g.node.is_empty()) else {
            return Err(ModelError::NotOnnx {
                path: path.to_path_buf(),
                reason: "it contains no graph nodes".into(),
            });
        };

        let qdq = graph
            .node
            .iter()
            .any(|n| matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear"));

        // Find the head, then the class names and preprocessing that go with it.
        let mut spec = head::find_head(graph, path)?;
        let head =
            Head::from_row_major(&spec.weights, &spec.bias, spec.feature_dim).map_err(|e| {
                ModelError::UnsupportedHead {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            })?;
        // The head now holds its own copy of the weights.
        spec.weights = Vec::new();
        let labels = match metadata::labels(&proto, path)? {
            Some(labels) if labels.len() != head.num_classes() => {
                return Err(ModelError::LabelCount {
                    path: path.to_path_buf(),
                    labels: labels.len(),
                    classes: head.num_classes(),
                })
            }
            Some(labels) => labels,
            None => {
                log::warn!(
                    "model {} has no '{LABELS_KEY}' metadata; classes are named by index",
                    path.display()
                );
                (0..head.num_classes())
                    .map(|i| format!("class {i}"))
                    .collect()
            }
        };
        let preprocess = match metadata::preprocess(&proto, path)? {
            Some(preprocess) => preprocess,
            None => {
                let preprocess = default_preprocess(graph);
                log::warn!(
                    "model {} has no '{PREPROCESS_KEY}' metadata; assuming a {} px input, crop fraction 0.875 \
                     and ImageNet mean and standard deviation",
                    path.display(),
                    preprocess.size_px
                );
                preprocess
            }
        };

        // Cut the graph at the features and optimize it for one fixed-size frame.
        let size = preprocess.size_px as usize;
        let dir = path.parent().and_then(Path::to_str);
        let parsed = onnx().parse(&proto, dir).map_err(tract_error("parse"))?;
        drop(proto);
        if !parsed.unresolved_inputs.is_empty() {
            return Err(ModelError::NotOnnx {
                path: path.to_path_buf(),
                reason: format!("unresolved inputs {:?}", parsed.unresolved_inputs),
            });
        }
        let model = parsed
            .model
            .with_input_fact(0, f32::fact([1, 3, size, size]).into())
            .and_then(|m| m.with_outputs_by_name([spec.features.as_str()]))
            .map_err(tract_error("set the input and output of"))?;
        // Only QDQ graphs have pairs to fuse; the rewrite is skipped for the others.
        let fuse = options.fuse_qdq && qdq;
        let ((plan, qdq_fused), fallback) = match backend {
            Backend::Cpu => (plan_for_cpu(model, path, fuse)?, None),
            Backend::Cuda | Backend::Auto => plan_for_cuda(model, path, fuse)?,
        };
        if let Some(reason) = &fallback {
            log_fallback(backend, reason, path);
        }

        let output_fact = plan
            .model()
            .output_fact(0)
            .map_err(tract_error("inspect"))?
            .clone();
        let feature_count: Option<usize> = output_fact
            .shape
            .as_concrete()
            .map(|dims| dims.iter().product());
        if feature_count != Some(head.feature_dim()) {
            return Err(ModelError::FeatureShape {
                path: path.to_path_buf(),
                shape: format!("{:?}", output_fact.shape),
                expected: head.feature_dim(),
            });
        }
        let backbone_nodes = plan.model().nodes().len();
        let state = plan.spawn().map_err(tract_error("start"))?;
        release_freed_memory();
        let input = Arc::new(
            Tensor::zero::<f32>(&[1, 3, size, size]).map_err(tract_error("allocate input for"))?,
        );

        let info = ModelInfo {
            path: path.to_path_buf(),
            sha256,
            preprocess,
            labels,
            head: spec.description,
            features: spec.features,
            quantized_head: spec.dequantized,
            backbone_nodes,
            qdq,
            qdq_fused,
        };
        let backend_in_use = match fallback {
            None if backend != Backend::Cpu => Backend::Cuda,
            _ => Backend::Cpu,
        };
        Ok(Model {
            info,
            head,
            state,
            input,
            outputs: tvec!(),
            backend_in_use,
            fallback,
        })
    }

    /// Returns the backend the backbone runs on: [`Backend::Cpu`] or [`Backend::Cuda`], never
    /// [`Backend::Auto`].
    pub fn backend_in_use(&self) -> Backend {
        self.backend_in_use
    }

    /// Returns the reason a model requested on CUDA or `auto` runs on the CPU, or `None` when
    /// it runs where it was requested.
    pub fn cuda_fallback(&self) -> Option<&CudaUnavailable> {
        self.fallback.as_ref()
    }

    /// Returns the facts about what was loaded.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Returns the final linear layer, read from the file.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Runs the backbone on `input` and writes the pooled features into `out`, then computes
    /// `‖h‖₁` and the logits with [`Activations::finish`]: [`Model::run_backbone`],
    /// [`Model::copy_features`] and [`Activations::finish`] in turn.
    pub fn run(
        &mut self,
        input: &InputTensor,
        out: &mut Activations,
    ) -> Result<(), InferenceError> {
        self.run_backbone(input)?;
        self.copy_features(out)?;
        out.finish(&self.head).map_err(InferenceError::NonFinite)
    }

    /// Writes the frame into tract's input tensor in place.
    fn fill_input(&mut self, input: &InputTensor) -> Result<(), InferenceError> {
        let tensor = match Arc::get_mut(&mut self.input) {
            Some(tensor) => tensor,
            None => {
                // Not reached with tract 0.23.9, which drops its input references after
                // each run; fall back to a fresh tensor rather than fail.
                log::debug!("tract kept a reference to the input tensor; allocating a new one");
                let shape = input.shape();
                self.input = Arc::new(Tensor::zero::<f32>(&shape).map_err(InferenceError::tract)?);
                Arc::get_mut(&mut self.input).expect("a new Arc is unique")
            }
        };
        let mut view = tensor
            .try_as_plain_ram_mut()
            .map_err(InferenceError::tract)?;
        view.as_slice_mut::<f32>()
            .map_err(InferenceError::tract)?
            .copy_from_slice(input.as_slice());
        Ok(())
    }

    /// Runs tract on `input` and keeps its outputs until [`Model::copy_features`].
    ///
    /// The one per-frame step that allocates: tract allocates each node's output tensor.
    pub fn run_backbone(&mut self, input: &InputTensor) -> Result<(), InferenceError> {
        self.fill_input(input)?;
        self.outputs = self
            .state
            .run(tvec!(TValue::from_const(self.input.clone())))
            .map_err(InferenceError::tract)?;
        Ok(())
    }

    /// Copies the features of the last [`Model::run_backbone`] into `out` and releases tract's
    /// outputs. Allocates nothing.
    pub fn copy_features(&mut self, out: &mut Activations) -> Result<(), InferenceError> {
        let Some(output) = self.outputs.first() else {
            return Err(InferenceError::Tract(
                "no backbone output: run_backbone was not called".into(),
            ));
        };
        let view = output.try_as_plain_ram().map_err(InferenceError::tract)?;
        out.features_mut()
            .copy_from_slice(view.as_slice::<f32>().map_err(InferenceError::tract)?);
        self.outputs.clear();
        Ok(())
    }
}

/// Returns a mapper from a tract error at `phase` of loading `path` to a [`ModelError`].
fn tract_failure(path: &Path, phase: &'static str) -> impl FnOnce(anyhow::Error) -> ModelError {
    let path = path.to_path_buf();
    move |source| ModelError::Tract {
        path,
        phase,
        source,
    }
}

/// Optimizes the cut backbone for tract's CPU kernels and plans it. With `fuse`, rewrites its
/// simulated quantization first and returns what the rewrite changed beside the plan.
///
/// NOTE: tract's depthwise convolution takes 42% of the bundled backbone. It runs at about 2 G
/// multiply-adds per second on x86_64, a tenth of the matrix products (docs/benchmarks.md).
fn plan_for_cpu(
    model: InferenceModel,
    path: &Path,
    fuse: bool,
) -> Result<PlanWithReport, ModelError> {
    let decluttered = model
        .into_typed()
        .and_then(TypedModel::into_decluttered)
        .map_err(tract_failure(path, "declutter"))?;
    optimize_decluttered(decluttered, path, fuse)
}

/// A tract plan and, when the QDQ rewrite ran, what it changed.
type PlanWithReport = (Arc<TypedSimplePlan>, Option<FuseReport>);

/// Optimizes and plans a decluttered graph for the CPU: the second half of [`plan_for_cpu`].
fn optimize_decluttered(
    mut decluttered: TypedModel,
    path: &Path,
    fuse: bool,
) -> Result<PlanWithReport, ModelError> {
    // The passes so far freed the inference graph; release it before optimizing adds the
    // packed weights, the peak of the load.
    release_freed_memory();
    let mut fused = None;
    if fuse {
        let report =
            qdq::fuse(&mut decluttered).map_err(tract_failure(path, "rewrite the QDQ nodes of"))?;
        log::info!(
            "model {}: {} QuantizeLinear/DequantizeLinear pairs fused, {} requantizations after padding removed",
            path.display(),
            report.pairs,
            report.after_pad
        );
        fused = Some(report);
    }
    let plan = decluttered
        .into_optimized()
        .map_err(tract_failure(path, "optimize"))?
        .into_runnable()
        .map_err(tract_failure(path, "plan"))?;
    Ok((plan, fused))
}

/// Plans the cut backbone on the GPU, or on the CPU with the reason CUDA could not be used.
///
/// When CUDA is unavailable before any preparation (the usual case) the CPU plan is built
/// exactly as [`plan_for_cpu`] builds it. When tract-cuda fails on the model, the CPU plan is
/// built from the same decluttered graph the GPU was given.
fn plan_for_cuda(
    model: InferenceModel,
    path: &Path,
    fuse: bool,
) -> Result<(PlanWithReport, Option<CudaUnavailable>), ModelError> {
    if let Err(reason) = probe_cuda() {
        return Ok((plan_for_cpu(model, path, fuse)?, Some(reason)));
    }
    let decluttered = model
        .into_typed()
        .and_then(TypedModel::into_decluttered)
        .map_err(tract_failure(path, "declutter"))?;
    match cuda::prepare(decluttered.clone()) {
        // The GPU plan runs the graph as declared: the QDQ rewrite is a CPU-side change.
        Ok(plan) => Ok(((plan, None), None)),
        Err(reason) => {
            let plan = optimize_decluttered(decluttered, path, fuse)?;
            Ok((plan, Some(reason)))
        }
    }
}

/// Hands heap pages freed while loading back to the kernel.
///
/// Optimizing frees the unpacked weights and many small tensors of the intermediate graphs.
/// glibc keeps such memory for reuse, so it stays resident; `malloc_trim` releases whole free
/// pages, which lowers the resident memory of a running `gradgate run` (docs/benchmarks.md).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own heap bookkeeping and takes no pointers.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Logs, once per load, that a model requested on `requested` runs on the CPU, and why.
fn log_fallback(requested: Backend, reason: &CudaUnavailable, path: &Path) {
    let path = path.display();
    if requested == Backend::Auto && reason.is_no_device() {
        log::info!("backend auto: no usable GPU, running model {path} on the CPU: {reason}");
    } else {
        log::warn!(
            "backend {requested}: running model {path} on the CPU instead of CUDA: {reason}"
        );
    }
}

/// Error from running one frame through the model.
#[derive(Debug)]
#[non_exhaustive]
pub enum InferenceError {
    /// tract reported an error.
    Tract(String),
    /// The features or logits contain NaN or infinity.
    NonFinite(crate::activations::NonFiniteActivation),
}

impl InferenceError {
    fn tract(err: anyhow::Error) -> InferenceError {
        InferenceError::Tract(format!("{err:#}"))
    }
}

impl fmt::Display for InferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InferenceError::Tract(err) => write!(f, "inference failed: {err}"),
            InferenceError::NonFinite(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for InferenceError {}

/// Preprocessing assumed for a model without gradgate metadata: its static square input size
/// (or 224), crop fraction 0.875 and the ImageNet mean and standard deviation.
fn default_preprocess(graph: &tract_onnx::pb::GraphProto) -> PreprocessSpec {
    use tract_onnx::pb::type_proto::Value;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let size = graph
        .input
        .iter()
        .find(|i| !initializers.contains(i.name.as_str()))
        .and_then(|i| match i.r#type.as_ref()?.value.as_ref()? {
            Value::TensorType(t) => {
                let dims = &t.shape.as_ref()?.dim;
                let side = |d: &tract_onnx::pb::tensor_shape_proto::Dimension| match d.value {
                    Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                        Some(v)
                    }
                    _ => None,
                };
                match (dims.get(2).and_then(side), dims.get(3).and_then(side)) {
                    (Some(h), Some(w)) if h == w && h > 0 => u32::try_from(h).ok(),
                    _ => None,
                }
            }
            #[allow(unreachable_patterns)]
            _ => None,
        })
        .unwrap_or(224);
    PreprocessSpec {
        size_px: size,
        crop_fraction: 0.875,
        mean: [123.675, 116.28, 103.53],
        std: [58.395, 57.12, 57.375],
        alpha_background: 255,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
