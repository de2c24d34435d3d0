//! The backend that runs the backbone: the CPU, or an NVIDIA GPU through tract-cuda.

use serde::Deserialize;
use std::fmt;
use std::str::FromStr;

/// The backend a model is requested to run on.
///
/// Parsed from `cpu`, `cuda` or `auto` on the command line ([`FromStr`]) and in board profiles
/// (serde, same names). A loaded model reports the backend it actually runs on with
/// [`Model::backend_in_use`](crate::Model::backend_in_use), which is never `Auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// tract's CPU kernels.
    #[default]
    Cpu,
    /// tract-cuda on GPU 0. Falls back to the CPU with a warning when CUDA is unavailable.
    Cuda,
    /// tract-cuda when a GPU is found, else the CPU; the fallback is logged at info level.
    Auto,
}

impl Backend {
    /// Every backend, in command-line order.
    pub const ALL: [Backend; 3] = [Backend::Cpu, Backend::Cuda, Backend::Auto];

    /// Returns the name used on the command line and in board profiles.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Auto => "auto",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = String;

    /// Parses `cpu`, `cuda` or `auto`, in lower case as the help text and profiles write them.
    fn from_str(s: &str) -> Result<Backend, String> {
        Backend::ALL
            .into_iter()
            .find(|backend| backend.name() == s)
            .ok_or_else(|| format!("unknown backend '{s}': expected cpu, cuda or auto"))
    }
}

/// Reason a model requested on CUDA runs on the CPU instead.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CudaUnavailable {
    /// This binary was built without the `cuda` or `cuda-12` feature.
    NotBuilt,
    /// The CUDA driver, a CUDA library or a GPU is missing, or the driver is older than the
    /// CUDA API this binary was built for. Detected before any model is prepared.
    NotFound(String),
    /// CUDA and a GPU were found, but tract-cuda failed to prepare the model on them, for
    /// example because NVRTC could not compile its kernels.
    PrepareFailed(String),
}

impl CudaUnavailable {
    /// Returns true when no usable GPU was found, as opposed to a GPU the model failed on.
    pub fn is_no_device(&self) -> bool {
        matches!(
            self,
            CudaUnavailable::NotBuilt | CudaUnavailable::NotFound(_)
        )
    }
}

impl fmt::Display for CudaUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaUnavailable::NotBuilt => f.write_str(
                "this gradgate was built without CUDA support; rebuild it with --features cuda \
                 (CUDA 13) or --features cuda-12 (JetPack 6)",
            ),
            CudaUnavailable::NotFound(reason) => f.write_str(reason),
            CudaUnavailable::PrepareFailed(reason) => {
                write!(f, "tract-cuda failed to prepare the model: {reason}")
            }
        }
    }
}

impl std::error::Error for CudaUnavailable {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_each_name() {
        for backend in Backend::ALL {
            assert_eq!(backend.name().parse::<Backend>(), Ok(backend));
        }
    }

    #[test]
    fn parse_rejects_unknown_name() {
        let err = "gpu".parse::<Backend>().unwrap_err();
        assert_eq!(err, "unknown backend 'gpu': expected cpu, cuda or auto");
    }

    #[test]
    fn parse_is_case_sensitive() {
        assert!("CUDA".parse::<Backend>().is_err());
    }

    #[test]
    fn display_round_trips() {
        assert_eq!(Backend::Auto.to_string(), "auto");
    }

    #[test]
    fn default_is_cpu() {
        assert_eq!(Backend::default(), Backend::Cpu);
    }

    #[test]
    fn deserialize_uses_cli_names() {
        let backend: Backend = serde_json::from_str("\"cuda\"").unwrap();
        assert_eq!(backend, Backend::Cuda);
    }

    #[test]
    fn deserialize_rejects_unknown_name() {
        let err = serde_json::from_str::<Backend>("\"gpu\"").unwrap_err();
        assert!(err.to_string().contains("expected one of"), "{err}");
    }
}
