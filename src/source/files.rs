use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// File extensions, lower case, taken from folders. Files named explicitly or matched by a
/// glob are read whatever their extension, so that a mislabelled file still gets an error.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// A command-line source that names no readable image.
#[derive(Debug)]
#[non_exhaustive]
pub enum SourceError {
    /// Not an existing path and not a glob pattern.
    NotFound(String),
    /// A glob pattern that does not parse.
    BadPattern {
        /// The pattern as given.
        pattern: String,
        /// The glob crate's message.
        reason: String,
    },
    /// A glob pattern or folder that yields no image file.
    NoImages(String),
    /// A folder that cannot be listed.
    Io {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::NotFound(source) => write!(
                f,
                "source '{source}' not found: expected an image file, a folder or a glob pattern"
            ),
            SourceError::BadPattern { pattern, reason } => {
                write!(f, "invalid glob pattern '{pattern}': {reason}")
            }
            SourceError::NoImages(source) => write!(
                f,
                "source '{source}' contains no image files (extensions {})",
                IMAGE_EXTENSIONS.join(", ")
            ),
            SourceError::Io { path, source } => {
                write!(f, "cannot list folder {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SourceError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Expands command-line sources into an ordered list of image files.
///
/// A source is a file (taken as is), a folder (every file with an [`IMAGE_EXTENSIONS`]
/// extension below it, recursively, sorted by path) or a glob pattern (its matches, sorted).
/// Sources keep their command-line order. Runs once at start-up and allocates freely.
pub fn expand_sources<S: AsRef<str>>(sources: &[S]) -> Result<Vec<PathBuf>, SourceError> {
    let mut files = Vec::new();
    for source in sources {
        let source = source.as_ref();
        let path = Path::new(source);
        let before = files.len();
        if path.is_dir() {
            collect_folder(path, &mut files)?;
            files[before..].sort();
        } else if path.exists() {
            files.push(path.to_path_buf());
        } else if source.contains(['*', '?', '[']) {
            let matches = glob::glob(source).map_err(|err| SourceError::BadPattern {
                pattern: source.to_string(),
                reason: err.msg.to_string(),
            })?;
            // Unreadable entries are skipped here and reported when the file is read.
            files.extend(matches.filter_map(Result::ok).filter(|p| p.is_file()));
            files[before..].sort();
        } else {
            return Err(SourceError::NotFound(source.to_string()));
        }
        if files.len() == before {
            return Err(SourceError::NoImages(source.to_string()));
        }
    }
    Ok(files)
}

fn collect_folder(folder: &Path, files: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let entries = std::fs::read_dir(folder).map_err(|source| SourceError::Io {
        path: folder.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| SourceError::Io {
                path: folder.to_path_buf(),
                source,
            })?
            .path();
        if path.is_dir() {
            collect_folder(&path, files)?;
        } else if has_image_extension(&path) {
            files.push(path);
        }
    }
    Ok(())
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        })
}

/// Error from reading a file.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadError {
    /// Opening or reading failed.
    Io(io::Error),
    /// The file is larger than the configured maximum.
    TooLarge {
        /// Size of the file in bytes, or the bytes read before the limit was hit.
        bytes: u64,
        /// The limit in bytes.
        max_bytes: u64,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(err) => write!(f, "cannot read file: {err}"),
            ReadError::TooLarge { bytes, max_bytes } => write!(
                f,
                "file has {bytes} bytes, above the limit of {max_bytes}; raise --max-file-bytes"
            ),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(err) => Some(err),
            ReadError::TooLarge { .. } => None,
        }
    }
}

/// Reads whole files into one buffer allocated at construction.
pub struct FileReader {
    buf: Box<[u8]>,
    /// Length of the last successful read; `buf[..len]` contains its bytes.
    len: usize,
}

impl FileReader {
    /// Allocates a buffer of `max_bytes` bytes.
    pub fn new(max_bytes: usize) -> FileReader {
        FileReader {
            buf: vec![0; max_bytes].into_boxed_slice(),
            len: 0,
        }
    }

    /// Returns the bytes of the last successful [`FileReader::read`] (empty before the first).
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Reads the whole of `path` and returns its bytes, valid until the next call.
    ///
    /// Allocates nothing for paths shorter than the platform's stack buffer for path
    /// conversion (384 bytes in Rust's standard library on Unix).
    pub fn read(&mut self, path: &Path) -> Result<&[u8], ReadError> {
        self.len = 0;
        let len = self.read_to_buffer(path)?;
        self.len = len;
        Ok(&self.buf[..len])
    }

    fn read_to_buffer(&mut self, path: &Path) -> Result<usize, ReadError> {
        let max_bytes = self.buf.len() as u64;
        let mut file = File::open(path).map_err(ReadError::Io)?;
        let declared = file.metadata().map_err(ReadError::Io)?.len();
        if declared > max_bytes {
            return Err(ReadError::TooLarge {
                bytes: declared,
                max_bytes,
            });
        }

        // Read until end of file; the file may have changed size since `metadata`.
        let mut len = 0;
        loop {
            if len == self.buf.len() {
                // Full: one more byte means the file outgrew the limit.
                let mut probe = [0u8; 1];
                return match file.read(&mut probe) {
                    Ok(0) => Ok(len),
                    Ok(_) => Err(ReadError::TooLarge {
                        bytes: len as u64 + 1,
                        max_bytes,
                    }),
                    Err(err) => Err(ReadError::Io(err)),
                };
            }
            match file.read(&mut self.buf[len..]) {
                Ok(0) => return Ok(len),
                Ok(n) => len += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(ReadError::Io(err)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_source_is_not_found() {
        let err = expand_sources(&["/nonexistent/gradgate/x.jpg"]).unwrap_err();
        assert!(matches!(err, SourceError::NotFound(_)), "{err}");
    }

    #[test]
    fn reader_rejects_file_over_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.jpg");
        std::fs::write(&path, [0u8; 32]).unwrap();
        let err = FileReader::new(16).read(&path).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::TooLarge {
                    bytes: 32,
                    max_bytes: 16
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn reader_returns_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.bin");
        std::fs::write(&path, b"abcdef").unwrap();
        let mut reader = FileReader::new(6);
        assert_eq!(reader.read(&path).unwrap(), b"abcdef");
    }
}
