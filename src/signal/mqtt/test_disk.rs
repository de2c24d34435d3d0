//! Test helper: a tiny tmpfs that runs out of space, for tests of full-disk handling.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A 16 KiB tmpfs on a temporary folder, unmounted on drop: a real file system that
/// runs out of space.
pub(crate) struct TinyDisk {
    dir: tempfile::TempDir,
    /// Allocation unit of the tmpfs (the memory page size), in bytes.
    pub(crate) page: u64,
}

impl TinyDisk {
    /// Mounts the tmpfs; `None`, after printing why, where mounting is not allowed (it
    /// needs root or CAP_SYS_ADMIN).
    pub(crate) fn mount() -> Option<TinyDisk> {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
            .arg(dir.path())
            .output();
        match output {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                eprintln!("skipped: cannot mount a tmpfs: {}", stderr.trim());
                return None;
            }
            Err(error) => {
                eprintln!("skipped: cannot run mount: {error}");
                return None;
            }
        }
        // tmpfs reports its page size as the block size.
        use std::os::unix::fs::MetadataExt;
        let page = fs::metadata(dir.path()).unwrap().blksize();
        Some(TinyDisk { dir, page })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the tmpfs is full; returns its path.
    pub(crate) fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = File::create(&path).unwrap();
        let chunk = vec![0u8; 512];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    assert_eq!(
                        error.kind(),
                        std::io::ErrorKind::StorageFull,
                        "filling the tmpfs: {error}"
                    );
                    break;
                }
            }
        }
        path
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        // Lazy, so that a file a failed test left open cannot keep it mounted.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
