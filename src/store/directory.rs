//! The model store: the directory where fitted models persist as `<name>.safetensors` (DSDL's
//! `/srv/app/model/data`). Writes are atomic, so a crash or kill during a save leaves the
//! previous version readable, and the registry only learns of a model once it is on disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Leftovers of an interrupted save older than this are removed at start-up. Younger ones may
/// belong to a save in progress by another replica sharing the store.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// Why fits cannot be saved in the model store (without the path: readiness shows it).
#[derive(Debug, thiserror::Error)]
pub enum StoreProblem {
    #[error("the model store directory cannot be created: {0}")]
    CannotCreate(std::io::Error),
    #[error("the model store is not a directory")]
    NotADirectory,
    #[error("no file can be created in the model store: {0}")]
    NotWritable(std::io::Error),
}

#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the model `name` (already validated) lives.
    pub fn path_for(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.safetensors"))
    }

    /// Writes the model file atomically (temporary file, fsync, rename) and returns its path.
    pub fn save(&self, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.path_for(name);
        crate::util::fs::write_atomic(&path, bytes)?;
        Ok(path)
    }

    /// Whether fits can be saved here: the directory exists (or can be made) and a file can be
    /// created in it. Says what is wrong otherwise (without the path: readiness shows it).
    pub fn check_writable(&self) -> Result<(), StoreProblem> {
        std::fs::create_dir_all(&self.dir).map_err(StoreProblem::CannotCreate)?;
        if !self.dir.is_dir() {
            return Err(StoreProblem::NotADirectory);
        }
        // Named like a save's temporary file, so a leftover (a crash right here) is never
        // loaded and is removed at a later start.
        tempfile::Builder::new()
            .prefix(".write-check.safetensors.")
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map(drop)
            .map_err(StoreProblem::NotWritable)
    }

    /// Removes temporary files that interrupted saves left behind (`.<name>.safetensors.*.tmp`).
    /// They are never loaded; this only reclaims their space. Returns how many were removed.
    pub fn remove_stale_temporaries(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_temporary =
                name.starts_with('.') && name.contains(".safetensors.") && name.ends_with(".tmp");
            let old_enough = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= STALE_TEMP_AGE);
            if is_temporary && old_enough && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_replace_and_only_old_leftovers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::new(dir.path().join("models"));
        let path = store.save("a_b", b"one").unwrap();
        assert_eq!(path, dir.path().join("models/a_b.safetensors"));
        store.save("a_b", b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");

        let fresh = store.dir().join(".a_b.safetensors.x1.tmp");
        let old = store.dir().join(".a_b.safetensors.x2.tmp");
        std::fs::write(&fresh, b"partial").unwrap();
        std::fs::write(&old, b"partial").unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        assert_eq!(store.remove_stale_temporaries(), 1);
        assert!(fresh.exists() && !old.exists() && path.exists());
    }
}
