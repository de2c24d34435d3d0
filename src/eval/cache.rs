//! On-disk cache of per-image activations, so that evaluating again does not run the model.
//!
//! Entries are keyed by the model file's SHA-256 and the image file's SHA-256:
//! `<root>/<model sha256>/<image sha256>.act`. The model hash covers the preprocessing too,
//! because the bundled models carry it in their metadata. Each entry is a 16-byte header
//! (magic `GGAC`, format version, D, C as little-endian `u32`) followed by the D features and
//! the C logits as little-endian `f32`.

use sha2::{Digest, Sha256};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGAC";
const VERSION: u32 = 1;

/// Features and logits of one image, as cached.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedActivations {
    /// Penultimate features `h`.
    pub features: Vec<f32>,
    /// Logits `z = W·h + b`.
    pub logits: Vec<f32>,
}

/// A feature cache for one model.
#[derive(Clone, Debug)]
pub struct FeatureCache {
    dir: PathBuf,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl FeatureCache {
    /// Opens (without creating) the cache of the model with hash `model_sha256` under `root`.
    pub fn new(root: &Path, model_sha256: &str) -> FeatureCache {
        FeatureCache {
            dir: root.join(model_sha256),
        }
    }

    /// Returns the default cache root: `$XDG_CACHE_HOME/gradgate`, else `$HOME/.cache/gradgate`, else
    /// `.gradgate-cache` in the working folder.
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("gradgate");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(home).join(".cache").join("gradgate");
        }
        PathBuf::from(".gradgate-cache")
    }

    fn entry(&self, image_sha256: &str) -> PathBuf {
        self.dir.join(format!("{image_sha256}.act"))
    }

    /// Returns the cached activations of the image with hash `image_sha256`, or `None` when
    /// there is no entry or it does not have `features` × `classes` values. A damaged entry
    /// is logged and treated as missing, so the caller recomputes and overwrites it.
    pub fn get(
        &self,
        image_sha256: &str,
        features: usize,
        classes: usize,
    ) -> Option<CachedActivations> {
        let path = self.entry(image_sha256);
        let bytes = fs::read(&path).ok()?;
        match decode(&bytes, features, classes) {
            Some(entry) => Some(entry),
            None => {
                log::warn!("ignoring damaged cache entry {}", path.display());
                None
            }
        }
    }

    /// Stores activations for the image with hash `image_sha256`, atomically (write to a
    /// temporary file, then rename).
    pub fn put(&self, image_sha256: &str, entry: &CachedActivations) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let mut bytes = Vec::with_capacity(16 + 4 * (entry.features.len() + entry.logits.len()));
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(entry.features.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(entry.logits.len() as u32).to_le_bytes());
        for value in entry.features.iter().chain(&entry.logits) {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        let path = self.entry(image_sha256);
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&temporary, &bytes)?;
        fs::rename(&temporary, &path)
    }
}

fn decode(bytes: &[u8], features: usize, classes: usize) -> Option<CachedActivations> {
    let word = |i: usize| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
    if bytes.len() < 16 || &bytes[..4] != MAGIC || word(1) != VERSION {
        return None;
    }
    if word(2) as usize != features
        || word(3) as usize != classes
        || bytes.len() != 16 + 4 * (features + classes)
    {
        return None;
    }
    let values: Vec<f32> = bytes[16..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Some(CachedActivations {
        features: values[..features].to_vec(),
        logits: values[features..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path(), "model");
        let entry = CachedActivations {
            features: vec![1.0, 2.5],
            logits: vec![-3.0, 0.0, 7.25],
        };
        cache.put("image", &entry).unwrap();
        assert_eq!(cache.get("image", 2, 3), Some(entry));
    }

    #[test]
    fn entry_with_other_sizes_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path(), "model");
        cache
            .put(
                "image",
                &CachedActivations {
                    features: vec![1.0],
                    logits: vec![2.0],
                },
            )
            .unwrap();
        assert_eq!(cache.get("image", 2, 1), None);
    }

    #[test]
    fn truncated_entry_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path(), "model");
        cache
            .put(
                "image",
                &CachedActivations {
                    features: vec![1.0],
                    logits: vec![2.0],
                },
            )
            .unwrap();
        let path = dir.path().join("model").join("image.act");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(cache.get("image", 1, 1), None);
    }
}
