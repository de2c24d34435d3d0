use std::collections::HashSet;
use std::ffi::OsStr;
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
    NotFound(PathBuf),
    /// An existing path that is neither a regular file nor a folder (a named pipe, a device).
    NotRegularFile(PathBuf),
    /// A glob pattern that does not parse.
    BadPattern {
        /// The pattern as given.
        pattern: String,
        /// The glob crate's message.
        reason: String,
    },
    /// A glob pattern or folder that yields no image file.
    NoImages(PathBuf),
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::NotFound(source) => write!(
                f,
                "source '{}' not found: expected an image file, a folder or a glob pattern",
                source.display()
            ),
            SourceError::NotRegularFile(source) => write!(
                f,
                "source '{}' is not a regular file or a folder; pipe camera streams through a file or folder instead",
                source.display()
            ),
            SourceError::BadPattern { pattern, reason } => {
                write!(f, "invalid glob pattern '{pattern}': {reason}")
            }
            SourceError::NoImages(source) => write!(
                f,
                "source '{}' contains no image files (folders are searched for extensions {})",
                source.display(),
                IMAGE_EXTENSIONS.join(", ")
            ),
        }
    }
}

impl std::error::Error for SourceError {}

/// Expands command-line sources into an ordered list of image files.
///
/// A regular file is taken as is. A folder yields every regular file with an
/// [`IMAGE_EXTENSIONS`] extension below it, recursively, sorted by path. A glob pattern yields
/// its matching files as is and searches its matching folders like a folder, sorted.
/// Sources keep their command-line order, and a source given twice is expanded twice (to
/// loop over a test set). Symbolic links are followed, but within one source each folder is
/// searched once, so a link cycle ends the walk instead of repeating it. Folders and glob
/// entries that cannot be read are logged and skipped. Runs once at start-up and allocates
/// freely.
pub fn expand_sources<S: AsRef<OsStr>>(sources: &[S]) -> Result<Vec<PathBuf>, SourceError> {
    let mut files = Vec::new();
    for source in sources {
        let mut visited = HashSet::new();
        let path = Path::new(source.as_ref());
        let before = files.len();
        if path.is_dir() {
            collect_folder(path, &mut files, &mut visited);
            files[before..].sort();
        } else if path.is_file() {
            files.push(path.to_path_buf());
        } else if path.exists() {
            return Err(SourceError::NotRegularFile(path.to_path_buf()));
        } else if let Some(pattern) = path.to_str().filter(|p| p.contains(['*', '?', '['])) {
            collect_glob(pattern, &mut files, &mut visited)?;
            files[before..].sort();
        } else {
            return Err(SourceError::NotFound(path.to_path_buf()));
        }
        if files.len() == before {
            return Err(SourceError::NoImages(path.to_path_buf()));
        }
    }
    Ok(files)
}

fn collect_glob(
    pattern: &str,
    files: &mut Vec<PathBuf>,
    visited: &mut HashSet<PathBuf>,
) -> Result<(), SourceError> {
    let matches = glob::glob(pattern).map_err(|err| SourceError::BadPattern {
        pattern: pattern.to_string(),
        reason: err.msg.to_string(),
    })?;
    for entry in matches {
        match entry {
            Ok(path) if path.is_dir() => collect_folder(&path, files, visited),
            Ok(path) if path.is_file() => files.push(path),
            Ok(path) => log::warn!("skipped {}: not a regular file", path.display()),
            Err(err) => log::warn!("skipped {}: {}", err.path().display(), err.error()),
        }
    }
    Ok(())
}

fn collect_folder(folder: &Path, files: &mut Vec<PathBuf>, visited: &mut HashSet<PathBuf>) {
    // Canonical paths identify a folder however it was reached, so link cycles stop here.
    match folder.canonicalize() {
        Ok(canonical) => {
            if !visited.insert(canonical) {
                return;
            }
        }
        Err(err) => {
            log::warn!("skipped folder {}: {err}", folder.display());
            return;
        }
    }
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(err) => {
            log::warn!("skipped folder {}: cannot list it: {err}", folder.display());
            return;
        }
    };
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(err) => {
                log::warn!("skipped an entry of folder {}: {err}", folder.display());
                continue;
            }
        };
        if path.is_dir() {
            collect_folder(&path, files, visited);
        } else if path.is_file() && has_image_extension(&path) {
            files.push(path);
        }
    }
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
    /// The path is not a regular file (a named pipe or device would block or never end).
    NotRegularFile,
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
            ReadError::NotRegularFile => f.write_str("not a regular file"),
            ReadError::TooLarge { bytes, max_bytes } => write!(
                f,
                "file has {bytes} bytes, above the limit of {max_bytes}; raise --max-file-bytes"
            ),
        }
    }
}

impl std::error::Error for ReadError {}

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
        // Check before opening: opening a named pipe blocks until a writer appears.
        if !std::fs::metadata(path).map_err(ReadError::Io)?.is_file() {
            return Err(ReadError::NotRegularFile);
        }
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
    fn folder_link_cycle_is_searched_once() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("x.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path(), inner.join("loop")).unwrap();
        let files = expand_sources(&[dir.path()]).unwrap();
        assert_eq!(files, vec![inner.join("x.jpg")]);
    }

    // Used to fail: the second copy of a folder found every folder already visited and
    // reported "contains no image files".
    #[test]
    fn folder_given_twice_is_expanded_twice() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.jpg"), b"x").unwrap();
        let files = expand_sources(&[dir.path(), dir.path()]).unwrap();
        assert_eq!(
            files,
            vec![dir.path().join("x.jpg"), dir.path().join("x.jpg")]
        );
    }

    #[test]
    fn glob_matching_folders_searches_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("set")).unwrap();
        std::fs::write(dir.path().join("set").join("x.png"), b"x").unwrap();
        let pattern = format!("{}/*", dir.path().display());
        assert_eq!(
            expand_sources(&[pattern]).unwrap(),
            vec![dir.path().join("set").join("x.png")]
        );
    }

    #[test]
    fn named_pipe_source_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("cam.jpg");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let err = expand_sources(&[&fifo]).unwrap_err();
        assert!(matches!(err, SourceError::NotRegularFile(_)), "{err}");
    }

    #[test]
    fn reader_rejects_named_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("cam.jpg");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let err = FileReader::new(16).read(&fifo).unwrap_err();
        assert!(matches!(err, ReadError::NotRegularFile), "{err}");
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
