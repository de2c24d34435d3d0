//! The statistics file: every fitted detector of one model, as JSON.

use super::{DetectorStats, FittedKind};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Version of the statistics file format this build reads and writes.
pub const STATS_FORMAT: u32 = 1;

/// Fitted statistics of one model, one entry per detector, stored as JSON.
///
/// NOTE: JSON stores each `f32` as about 11 characters of text. A KNN bank of N fit images
/// takes about 11·N·D bytes (14 MB per thousand images at D = 1280), and ViM's residual basis
/// about 11·D·(D − k) bytes (11 MB at k = 512).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsFile {
    /// File format version, [`STATS_FORMAT`].
    pub format: u32,
    /// Lower-case hex SHA-256 of the model file the statistics were fitted for.
    pub model_sha256: String,
    /// Number of fit images.
    pub fit_images: usize,
    /// The folders or files the fit images came from, as given.
    pub fit_sources: Vec<String>,
    /// One entry per fitted detector, at most one per kind.
    pub detectors: Vec<DetectorStats>,
}

/// Returns the statistics file that belongs to `model`: `m.onnx` → `m.stats.json`.
pub fn path_for_model(model: &Path) -> std::path::PathBuf {
    model.with_extension("stats.json")
}

/// Error for a statistics file that cannot be read, written or used.
#[derive(Debug)]
#[non_exhaustive]
pub enum StatsFileError {
    /// The file is missing or unreadable.
    Read {
        /// The statistics file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file could not be written.
    Write {
        /// The statistics file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid statistics JSON.
    Parse {
        /// The statistics file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// The file has another format version.
    UnsupportedFormat {
        /// The statistics file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
    },
    /// The statistics were fitted for another model file.
    WrongModel {
        /// The statistics file.
        path: PathBuf,
        /// Model hash stored in the file.
        fitted: String,
        /// Hash of the loaded model.
        loaded: String,
    },
}

impl fmt::Display for StatsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatsFileError::Read { path, source } => {
                write!(
                    f,
                    "cannot read statistics file {}: {source}",
                    path.display()
                )
            }
            StatsFileError::Write { path, source } => {
                write!(
                    f,
                    "cannot write statistics file {}: {source}",
                    path.display()
                )
            }
            StatsFileError::Parse { path, reason } => write!(
                f,
                "invalid statistics file {}: {reason}; refit the statistics",
                path.display()
            ),
            StatsFileError::UnsupportedFormat { path, found } => write!(
                f,
                "statistics file {} has format version {found}, but this build reads version \
                 {STATS_FORMAT}; refit the statistics",
                path.display()
            ),
            StatsFileError::WrongModel {
                path,
                fitted,
                loaded,
            } => write!(
                f,
                "statistics file {} was fitted for model SHA-256 {fitted}, but the loaded model \
                 is {loaded}; refit the statistics for this model",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StatsFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StatsFileError::Read { source, .. } | StatsFileError::Write { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// The one field read when a file does not parse, to tell an old format from a broken file.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

impl StatsFile {
    /// Creates a file of the current [`STATS_FORMAT`].
    pub fn new(
        model_sha256: String,
        fit_images: usize,
        fit_sources: Vec<String>,
        detectors: Vec<DetectorStats>,
    ) -> StatsFile {
        StatsFile {
            format: STATS_FORMAT,
            model_sha256,
            fit_images,
            fit_sources,
            detectors,
        }
    }

    /// Reads a statistics file and checks its format version. It does not check the model;
    /// see [`StatsFile::load_for_model`].
    pub fn load(path: &Path) -> Result<StatsFile, StatsFileError> {
        let bytes = std::fs::read(path).map_err(|source| StatsFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: StatsFile = match serde_json::from_slice(&bytes) {
            Ok(file) => file,
            Err(err) => {
                return Err(match serde_json::from_slice::<FormatOnly>(&bytes) {
                    Ok(header) if header.format != STATS_FORMAT => {
                        StatsFileError::UnsupportedFormat {
                            path: path.to_path_buf(),
                            found: header.format,
                        }
                    }
                    _ => StatsFileError::Parse {
                        path: path.to_path_buf(),
                        reason: err.to_string(),
                    },
                })
            }
        };
        if file.format != STATS_FORMAT {
            return Err(StatsFileError::UnsupportedFormat {
                path: path.to_path_buf(),
                found: file.format,
            });
        }
        Ok(file)
    }

    /// Reads a statistics file and checks that it was fitted for the model with hash
    /// `model_sha256`.
    pub fn load_for_model(path: &Path, model_sha256: &str) -> Result<StatsFile, StatsFileError> {
        let file = StatsFile::load(path)?;
        file.check_model(path, model_sha256)?;
        Ok(file)
    }

    /// Returns an error naming `path` unless the file was fitted for the model with hash
    /// `model_sha256`.
    pub fn check_model(&self, path: &Path, model_sha256: &str) -> Result<(), StatsFileError> {
        if self.model_sha256 == model_sha256 {
            Ok(())
        } else {
            Err(StatsFileError::WrongModel {
                path: path.to_path_buf(),
                fitted: self.model_sha256.clone(),
                loaded: model_sha256.to_string(),
            })
        }
    }

    /// Writes the file as compact JSON. It writes to `PATH.tmp` first and renames that over
    /// `path`, so a failed write leaves any previous file intact.
    pub fn save(&self, path: &Path) -> Result<(), StatsFileError> {
        let write_error = |source| StatsFileError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);

        let file = std::fs::File::create(&temporary).map_err(write_error)?;
        let mut writer = BufWriter::new(file);
        serde_json::to_writer(&mut writer, self)
            .map_err(|err| write_error(std::io::Error::other(err)))?;
        writer.flush().map_err(write_error)?;
        drop(writer);
        std::fs::rename(&temporary, path).map_err(write_error)
    }

    /// Returns the statistics of `kind`, if the file has them.
    pub fn detector(&self, kind: FittedKind) -> Option<&DetectorStats> {
        self.detectors.iter().find(|stats| stats.kind() == kind)
    }
}
