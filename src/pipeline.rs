//! The whole per-frame path, with every buffer allocated once.

use crate::activations::Activations;
use crate::frame::{FrameBuf, FrameLimits};
use crate::gate::{Gate, Verdict};
use crate::model::{InferenceError, Model, NodeTime};
use crate::score::{top1, Detector, Scorer, ScorerKind};
use crate::source::raw::{raw_to_frame, RawError};
use crate::source::{decode_into, DecodeError, Encoding, FileReader, ReadError};
use crate::tensor::{InputTensor, Preprocessor};
use std::fmt;
use std::path::Path;

/// Error that makes the pipeline skip one frame. The pipeline stays usable after any of these.
#[derive(Debug)]
#[non_exhaustive]
pub enum FrameError {
    /// The file could not be read.
    Read(ReadError),
    /// The bytes could not be decoded.
    Decode(DecodeError),
    /// The model failed or produced non-finite values.
    Inference(InferenceError),
    /// A raw frame did not fit its declared size or the frame buffer.
    Raw(RawError),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Read(err) => err.fmt(f),
            FrameError::Decode(err) => err.fmt(f),
            FrameError::Inference(err) => err.fmt(f),
            FrameError::Raw(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Read(err) => Some(err),
            FrameError::Decode(err) => Some(err),
            FrameError::Inference(err) => Some(err),
            FrameError::Raw(err) => Some(err),
        }
    }
}

/// Outcome of one scored frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameResult {
    /// The gate's decision.
    pub verdict: Verdict,
    /// Index of the top-1 class.
    pub top1: usize,
    /// Softmax probability (T = 1) of the top-1 class.
    pub prob: f32,
}

/// Owns the model and every per-frame buffer.
///
/// Design: each stage is a separate method so that tests and benchmarks can measure them one
/// by one; [`Pipeline::step`] calls them in data-path order.
pub struct Pipeline {
    model: Model,
    limits: FrameLimits,
    reader: FileReader,
    frame: FrameBuf,
    preprocessor: Preprocessor,
    input: InputTensor,
    activations: Activations,
    /// Parameters of the closed-form scorers, for [`Pipeline::score_all`].
    scorer: Scorer,
    /// The detector the gate decides on.
    detector: Detector,
    gate: Gate,
}

impl Pipeline {
    /// Sizes every buffer from the model and `limits`, deciding on a closed-form `scorer`. This
    /// is where the pipeline allocates.
    pub fn new(model: Model, scorer: Scorer, gate: Gate, limits: FrameLimits) -> Pipeline {
        Pipeline::with_detector(model, scorer, Detector::Closed(scorer), gate, limits)
    }

    /// Like [`Pipeline::new`], deciding on `detector`; `scorer` sets the temperature and
    /// GradNorm scale of [`Pipeline::score_all`].
    pub fn with_detector(
        model: Model,
        scorer: Scorer,
        detector: Detector,
        gate: Gate,
        limits: FrameLimits,
    ) -> Pipeline {
        let spec = model.info().preprocess;
        let file_bytes = usize::try_from(limits.max_file_bytes).unwrap_or(usize::MAX);
        Pipeline {
            reader: FileReader::new(file_bytes),
            frame: FrameBuf::new(limits.pixel_buffer_bytes()),
            preprocessor: Preprocessor::new(spec, &limits),
            input: InputTensor::new(spec.size_px),
            activations: Activations::new(model.head()),
            model,
            limits,
            scorer,
            detector,
            gate,
        }
    }

    /// Returns the model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Returns the scorer in use.
    pub fn scorer(&self) -> &Scorer {
        &self.scorer
    }

    /// Returns the current frame's activations, valid after [`Pipeline::infer`].
    pub fn activations(&self) -> &Activations {
        &self.activations
    }

    /// Returns the current model input, valid after [`Pipeline::preprocess`].
    pub fn input(&self) -> &InputTensor {
        &self.input
    }

    /// Mutable access to the model input, to feed a tensor prepared elsewhere.
    pub fn input_mut(&mut self) -> &mut InputTensor {
        &mut self.input
    }

    /// Runs one image file through every stage.
    pub fn step(&mut self, path: &Path) -> Result<FrameResult, FrameError> {
        self.load_file(path)?;
        self.preprocess();
        self.infer()?;
        Ok(self.decide())
    }

    /// Runs one captured frame (JPEG or raw pixels from a stream or camera) through every
    /// stage.
    pub fn step_captured(
        &mut self,
        bytes: &[u8],
        encoding: Encoding,
    ) -> Result<FrameResult, FrameError> {
        self.load_captured(bytes, encoding)?;
        self.preprocess();
        self.infer()?;
        Ok(self.decide())
    }

    /// Decodes a JPEG or converts raw pixels into the frame buffer.
    pub fn load_captured(&mut self, bytes: &[u8], encoding: Encoding) -> Result<(), FrameError> {
        match encoding {
            Encoding::Jpeg => self.decode(bytes),
            Encoding::Raw {
                format,
                width,
                height,
            } => {
                raw_to_frame(bytes, format, width, height, &mut self.frame).map_err(FrameError::Raw)
            }
        }
    }

    /// Reads and decodes an image file into the frame buffer: [`Pipeline::read_file`] then
    /// [`Pipeline::decode_file`].
    pub fn load_file(&mut self, path: &Path) -> Result<(), FrameError> {
        self.read_file(path)?;
        self.decode_file()
    }

    /// Reads an image file into the file buffer and returns its length in bytes.
    pub fn read_file(&mut self, path: &Path) -> Result<usize, FrameError> {
        self.reader
            .read(path)
            .map(<[u8]>::len)
            .map_err(FrameError::Read)
    }

    /// Decodes the bytes of the last [`Pipeline::read_file`] into the frame buffer.
    pub fn decode_file(&mut self) -> Result<(), FrameError> {
        decode_into(self.reader.bytes(), &self.limits, &mut self.frame).map_err(FrameError::Decode)
    }

    /// Decodes an encoded image held in memory into the frame buffer.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        decode_into(bytes, &self.limits, &mut self.frame).map_err(FrameError::Decode)
    }

    /// Turns the current frame into the model input.
    pub fn preprocess(&mut self) {
        self.preprocessor.fill(&self.frame, &mut self.input);
    }

    /// Runs the model on the current input and caches features and logits:
    /// [`Pipeline::infer_backbone`] then [`Pipeline::cache_activations`].
    pub fn infer(&mut self) -> Result<(), FrameError> {
        self.infer_backbone()?;
        self.cache_activations()
    }

    /// Runs tract on the current input; the one stage that allocates (inside tract).
    pub fn infer_backbone(&mut self) -> Result<(), FrameError> {
        self.model
            .run_backbone(&self.input)
            .map_err(FrameError::Inference)
    }

    /// Runs tract on the current input like [`Pipeline::infer_backbone`] and returns each
    /// node's time; see [`Model::profile_backbone`]. For profiling: allocates one entry per
    /// node.
    pub fn profile_backbone(&mut self) -> Result<Vec<NodeTime>, FrameError> {
        self.model
            .profile_backbone(&self.input)
            .map_err(FrameError::Inference)
    }

    /// Copies the backbone's features out of tract and computes `‖h‖₁` and the logits.
    pub fn cache_activations(&mut self) -> Result<(), FrameError> {
        self.model
            .copy_features(&mut self.activations)
            .map_err(FrameError::Inference)?;
        self.activations
            .finish(self.model.head())
            .map_err(|err| FrameError::Inference(crate::model::InferenceError::NonFinite(err)))
    }

    /// Returns the detector the gate decides on.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// Scores the cached activations and decides. Allocates nothing.
    pub fn decide(&mut self) -> FrameResult {
        let score = self.detector.score(&self.activations, self.model.head());
        let (top1, prob) = top1(self.activations.logits()).unwrap_or((0, 0.0));
        FrameResult {
            verdict: self.gate.decide(score),
            top1,
            prob,
        }
    }

    /// Scores the cached activations with every scorer at this pipeline's temperature and
    /// GradNorm scale, in [`ScorerKind::ALL`] order.
    pub fn score_all(&self) -> [f32; ScorerKind::ALL.len()] {
        ScorerKind::ALL.map(|kind| {
            Scorer {
                kind,
                ..self.scorer
            }
            .score(&self.activations)
        })
    }
}
