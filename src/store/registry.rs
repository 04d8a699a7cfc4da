//! The read-mostly set of loaded models, shared by all requests. Requests take an `Arc` to the
//! model they use, so replacing a model never disturbs a request in flight.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::model::convert;
use crate::model::{Model, ModelError};

pub struct Registry {
    models: RwLock<BTreeMap<String, Arc<Model>>>,
    /// Model files of the store as last loaded (modification time, size), so a rescan only
    /// reloads what another replica (or a person) changed.
    store_files: Mutex<HashMap<PathBuf, FileStamp>>,
    /// Models the service was started with (built in, `--model`): a fit may not replace them,
    /// nor may the store. With the file each came from, when it came from one.
    pinned: Mutex<BTreeMap<String, Option<PathBuf>>>,
    /// Largest model file read from the store.
    max_file_bytes: u64,
    /// Set while a scan of the store is under way: concurrent requests wait for it rather than
    /// start more.
    scanning: std::sync::atomic::AtomicBool,
    /// Scans of the store that have ended, so a request can wait for the one it needs.
    scans_ended: std::sync::atomic::AtomicU64,
    /// Longest a model file's read may take before it is abandoned and the file skipped.
    read_time_limit: Duration,
    /// Runs on the reading thread before each model file is read (tests: a slow disk).
    read_hook: Option<ReadHook>,
}

/// See [`Registry::with_read_hook`].
pub type ReadHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// Longest a model file's read may take (start-up, rescans, `--model`). Models are read in
/// milliseconds; a read still running after this is stuck (a hung network mount, a device),
/// and waiting longer would hold up the start-up or the scan behind it.
pub const READ_TIME_LIMIT: Duration = Duration::from_secs(10);

impl Default for Registry {
    fn default() -> Self {
        Self {
            models: Default::default(),
            store_files: Default::default(),
            pinned: Default::default(),
            max_file_bytes: crate::model::file::DEFAULT_MAX_FILE_BYTES,
            scanning: Default::default(),
            scans_ended: Default::default(),
            read_time_limit: READ_TIME_LIMIT,
            read_hook: None,
        }
    }
}

/// What tells one version of a file from another without reading it: size and modification
/// time alone miss a same-size replacement that keeps the time (`cp -p`, `rsync -t`, coarse
/// timestamps). The inode changes with every atomic save (a rename), and the change time with
/// every write in place; neither can be set back by the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    modified: SystemTime,
    len: u64,
    device: u64,
    inode: u64,
    changed_ns: i128,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (device, inode, changed_ns) = {
        use std::os::unix::fs::MetadataExt;
        (
            meta.dev(),
            meta.ino(),
            i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        )
    };
    #[cfg(not(unix))]
    let (device, inode, changed_ns) = (0, 0, 0);
    Some(FileStamp {
        modified: meta.modified().ok()?,
        len: meta.len(),
        device,
        inode,
        changed_ns,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn model_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::Io(format!("cannot list {}: {e}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("safetensors"))
        .collect();
    files.sort();
    Ok(files)
}

/// Loads a model file of the store. The store keeps each model in `<name>.safetensors`, so a
/// file must hold the model it is named after: a copy under another name (`x_old.safetensors`)
/// would otherwise serve its old weights under the original's name, replacing the original at
/// every scan, in the order the files happen to sort.
fn load_store_file(registry: &Registry, path: &Path) -> Result<Model, String> {
    let model = registry
        .read_in_time(path, Model::load_limited)
        .map_err(|e| e.to_string())?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if model.info.name != stem {
        return Err(format!(
            "it holds the model `{}`, but a model file in the store must be named after its model: rename it to {}.safetensors, or move it out of the store",
            model.info.name, model.info.name
        ));
    }
    Ok(model)
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry that reads model files of at most `max_file_bytes` (default 64 MiB).
    pub fn with_max_file_bytes(max_file_bytes: u64) -> Self {
        Self {
            max_file_bytes,
            ..Self::default()
        }
    }

    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }

    /// The same registry, abandoning a model file's read after `limit` (default
    /// [`READ_TIME_LIMIT`]).
    pub fn with_read_time_limit(mut self, limit: Duration) -> Self {
        self.read_time_limit = limit;
        self
    }

    /// The same registry, running `hook` with each model file's path on the reading thread
    /// before the file is read: tests make a read as slow as a hung mount with it.
    #[doc(hidden)]
    pub fn with_read_hook(mut self, hook: impl Fn(&Path) + Send + Sync + 'static) -> Self {
        self.read_hook = Some(Arc::new(hook));
        self
    }

    /// Reads the model file `path` with `read` (given the file size limit) on a thread of its
    /// own, within the read time limit: a file that cannot be read in time is given up with a
    /// reason, and whatever waits for it (start-up, a scan) goes on.
    fn read_in_time(
        &self,
        path: &Path,
        read: impl FnOnce(&Path, u64) -> Result<Model, ModelError> + Send + 'static,
    ) -> Result<Model, ModelError> {
        let (path, limit, hook) = (
            path.to_path_buf(),
            self.max_file_bytes,
            self.read_hook.clone(),
        );
        let origin = path.display().to_string();
        crate::util::fs::run_with_time_limit(self.read_time_limit, move || {
            if let Some(hook) = hook {
                hook(&path);
            }
            read(&path, limit)
        })
        .unwrap_or_else(|e| {
            Err(ModelError::Io(format!(
                "{origin}: {e}; it is read again when it changes"
            )))
        })
    }

    /// Adds or replaces the model under its own name.
    pub fn insert(&self, model: Model) -> Arc<Model> {
        let model = Arc::new(model);
        self.models
            .write()
            .expect("registry lock")
            .insert(model.info.name.clone(), model.clone());
        model
    }

    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.models
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.models
            .read()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<Model>> {
        self.models
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.models.read().expect("registry lock").is_empty()
    }

    /// Finds the model a DSDL request means. The stock container loads `<algo>_<model_name>`; we
    /// also accept the bare model name or the algorithm name, so the ESCU search's
    /// `apply detect_dns_..._in_dsdl` reaches the converted ESCU model.
    ///
    /// A model the service was started with always answers to its own name: otherwise a fit
    /// (or a store file) named `<algo>_<that name>` would be found first and take over the
    /// searches that apply it (the ESCU search applies with algo = model_name).
    pub fn resolve(&self, model_name: &str, algo: Option<&str>) -> Option<Arc<Model>> {
        if self.is_pinned(model_name) {
            if let Some(model) = self.get(model_name) {
                return Some(model);
            }
        }
        let models = self.models.read().expect("registry lock");
        // Only the joined name is made; the others are looked up as they are (every DSDL request
        // resolves its model).
        let joined = algo.map(|algo| format!("{algo}_{model_name}"));
        let found = joined
            .as_deref()
            .into_iter()
            .chain([model_name])
            .chain(algo)
            .find_map(|name| models.get(name).cloned());
        found
    }

    /// Loads every model file in `dir` (`*.safetensors`), and converts in memory a published
    /// `.pt` that DSDL deployments keep there (flat or in a sub-folder) when no converted file
    /// of that name exists. Returns the names loaded.
    pub fn load_dir(&self, dir: &Path) -> Result<Vec<String>, ModelError> {
        let mut loaded = Vec::new();
        if !dir.is_dir() {
            return Ok(loaded);
        }
        for f in model_files(dir)? {
            let before = stamp(&f);
            // One unreadable file (copied by hand, or from a newer version sharing the store)
            // must not keep the service, or every replica, from starting.
            match self.load_unpinned_store_file(&f) {
                Ok(Some(model)) => loaded.push(self.insert(model).info.name.clone()),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(file = %f.display(), problem = %e, "model file in the store skipped")
                }
            }
            self.remember(&f, before);
        }
        let escu = convert::ESCU_MODEL_NAME;
        let has_escu_pt = dir.join(format!("{escu}.pt")).is_file()
            || dir.join(escu).join(format!("{escu}.pt")).is_file();
        if has_escu_pt && self.get(escu).is_none() {
            // A half-copied or foreign `.pt` is skipped like any bad file in the store; one that
            // cannot be read in time too.
            let read = |dir: &Path, _: u64| {
                let escu = convert::ESCU_MODEL_NAME;
                convert::convert(dir, Some(escu))
                    .and_then(|converted| Model::from_bytes(&converted.bytes, escu))
            };
            match self.read_in_time(dir, read) {
                Ok(model) => {
                    loaded.push(self.insert(model).info.name.clone());
                    self.pin(escu);
                }
                Err(e) => {
                    tracing::error!(dir = %dir.display(), problem = %e, "the ESCU model's .pt in the store skipped")
                }
            }
        }
        Ok(loaded)
    }

    /// Loads a model file of the store unless it holds a model the service was started with:
    /// the store never replaces those, as a fit may not (another replica, started without that
    /// model, could otherwise fit it and change what every replica's searches get).
    /// `None`: the very file a pinned model was loaded from (`--model` pointing into the store),
    /// nothing to load or report.
    fn load_unpinned_store_file(&self, path: &Path) -> Result<Option<Model>, String> {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if self
            .pinned_from(stem)
            .is_some_and(|from| same_file(&from, path))
        {
            return Ok(None);
        }
        let model = load_store_file(self, path)?;
        if self.is_pinned(&model.info.name) {
            return Err(format!(
                "it holds `{}`, a model this service was started with (built in, --model or the ESCU model), which the store does not replace: train it under another name (a fit's model name, or `train --name`), or start the service without that model (--no-default-model for the built-in one)",
                model.info.name
            ));
        }
        Ok(Some(model))
    }

    /// Claims the store scan; false when another is under way.
    pub fn begin_scan(&self) -> bool {
        !self
            .scanning
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    pub fn end_scan(&self) {
        self.scans_ended
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.scanning
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// How many scans of the store have ended (each [`Registry::end_scan`] counts one).
    pub fn scans_ended(&self) -> u64 {
        self.scans_ended.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn scan_running(&self) -> bool {
        self.scanning.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks `name` as a model the service was started with.
    pub fn pin(&self, name: &str) {
        self.pinned
            .lock()
            .expect("pinned lock")
            .insert(name.to_string(), None);
    }

    /// Marks `name` as a model the service was started with, loaded from `file`.
    pub fn pin_from(&self, name: &str, file: &Path) {
        self.pinned
            .lock()
            .expect("pinned lock")
            .insert(name.to_string(), Some(file.to_path_buf()));
    }

    pub fn is_pinned(&self, name: &str) -> bool {
        self.pinned.lock().expect("pinned lock").contains_key(name)
    }

    /// A model the service was started with, `P`, that a model named `name` = `<x>_P` would
    /// answer for under the stock lookup order (`<algo>_<model_name>` first), which replicas of
    /// earlier versions sharing the store still use.
    pub fn shadowed_pinned(&self, name: &str) -> Option<String> {
        self.pinned
            .lock()
            .expect("pinned lock")
            .keys()
            .find(|p| {
                name.len() > p.len() + 1
                    && name.ends_with(p.as_str())
                    && name.as_bytes()[name.len() - p.len() - 1] == b'_'
            })
            .cloned()
    }

    fn pinned_from(&self, name: &str) -> Option<PathBuf> {
        self.pinned
            .lock()
            .expect("pinned lock")
            .get(name)
            .cloned()?
    }

    /// Notes that `path` holds the version just loaded or saved (stamped before reading, so a
    /// change during the read is seen by the next rescan).
    pub fn remember(&self, path: &Path, at: Option<FileStamp>) {
        if let Some(at) = at.or_else(|| stamp(path)) {
            self.store_files
                .lock()
                .expect("store files lock")
                .insert(path.to_path_buf(), at);
        }
    }

    /// Loads the model files of the store that are new or changed since they were last loaded:
    /// models fitted by another replica sharing the store, or files copied in by hand. A file
    /// that does not load is reported and skipped; the model already served stays. Returns
    /// (names loaded, (file, problem) for files skipped).
    pub fn refresh_dir(&self, dir: &Path) -> (Vec<String>, Vec<(PathBuf, String)>) {
        let mut loaded = Vec::new();
        let mut failed = Vec::new();
        let files = match model_files(dir) {
            Ok(f) => f,
            Err(_) => return (loaded, failed),
        };
        for f in files {
            let now = stamp(&f);
            let known = self
                .store_files
                .lock()
                .expect("store files lock")
                .get(&f)
                .copied();
            if now.is_none() || now == known {
                continue;
            }
            match self.load_unpinned_store_file(&f) {
                Ok(Some(model)) => loaded.push(self.insert(model).info.name.clone()),
                Ok(None) => {}
                Err(e) => failed.push((f.clone(), e)),
            }
            // A bad file is not retried until it changes again.
            self.remember(&f, now);
        }
        (loaded, failed)
    }

    /// Loads one model given on the command line: a model file, or an artifact/`.pt` converted in memory.
    pub fn load_file(&self, path: &Path) -> Result<String, ModelError> {
        let model = if path.extension().and_then(|x| x.to_str()) == Some("safetensors") {
            self.read_in_time(path, Model::load_limited)?
        } else {
            let convert = |path: &Path, _: u64| {
                let converted = convert::convert(path, None)?;
                Model::from_bytes(&converted.bytes, &path.display().to_string())
            };
            self.read_in_time(path, convert)?
        };
        Ok(self.insert(model).info.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rescan_loads_new_and_changed_files_and_skips_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new();
        assert!(registry.load_dir(dir.path()).unwrap().is_empty());
        // Another replica saves a model into the shared store.
        let bytes = crate::model::DEFAULT_MODEL_BYTES;
        let mut model = crate::model::default_model().unwrap();
        model.info.name = "fitted".into();
        let tensors = model.mlp.tensors().unwrap();
        let fitted = crate::model::file::encode(&model.info, &tensors).unwrap();
        std::fs::write(dir.path().join("fitted.safetensors"), &fitted).unwrap();
        std::fs::write(dir.path().join("broken.safetensors"), b"not a model").unwrap();
        let (loaded, failed) = registry.refresh_dir(dir.path());
        assert_eq!(loaded, vec!["fitted".to_string()]);
        assert_eq!(failed.len(), 1);
        assert!(failed[0].0.ends_with("broken.safetensors"));
        // Nothing changed: nothing reloaded, the bad file is not retried.
        assert_eq!(registry.refresh_dir(dir.path()), (vec![], vec![]));
        // A changed file is reloaded; a file must hold the model it is named after.
        std::fs::write(dir.path().join("broken.safetensors"), bytes).unwrap();
        let (loaded, failed) = registry.refresh_dir(dir.path());
        assert!(loaded.is_empty());
        assert!(
            failed[0].1.contains("rename it to dnsexfil_v7.safetensors"),
            "{failed:?}"
        );
        model.info.name = "broken".into();
        let repaired = crate::model::file::encode(&model.info, &tensors).unwrap();
        std::fs::write(dir.path().join("broken.safetensors"), repaired).unwrap();
        let (loaded, failed) = registry.refresh_dir(dir.path());
        assert_eq!((loaded, failed.len()), (vec!["broken".to_string()], 0));
    }

    #[test]
    fn a_copy_of_a_model_file_under_another_name_does_not_take_over_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new();
        let mut model = crate::model::default_model().unwrap();
        model.info.name = "corp".into();
        let tensors = model.mlp.tensors().unwrap();
        let old = crate::model::file::encode(&model.info, &tensors).unwrap();
        std::fs::write(dir.path().join("corp_old.safetensors"), &old).unwrap();
        model.info.threshold = 0.25;
        let new = crate::model::file::encode(&model.info, &tensors).unwrap();
        std::fs::write(dir.path().join("corp.safetensors"), &new).unwrap();
        // `corp_old` sorts after `corp`: it used to be loaded last and win, at start-up and scans.
        assert_eq!(
            registry.load_dir(dir.path()).unwrap(),
            vec!["corp".to_string()]
        );
        assert_eq!(registry.get("corp").unwrap().info.threshold, 0.25);
        // Changed by hand later (another length, so the scan sees the change): still not loaded.
        model.info.threshold = 0.125;
        let changed = crate::model::file::encode(&model.info, &tensors).unwrap();
        std::fs::write(dir.path().join("corp_old.safetensors"), changed).unwrap();
        let (loaded, failed) = registry.refresh_dir(dir.path());
        assert!(loaded.is_empty());
        assert!(failed[0].1.contains("named after its model"), "{failed:?}");
        assert_eq!(registry.get("corp").unwrap().info.threshold, 0.25);
    }

    #[test]
    fn the_store_never_replaces_a_model_the_service_was_started_with() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new();
        let started_with = registry.insert(crate::model::default_model().unwrap());
        let name = started_with.info.name.clone();
        registry.pin(&name);
        // A file of that name in the store: fitted by a replica started without the model.
        let mut other = crate::model::default_model().unwrap();
        other.info.threshold = 0.125;
        let tensors = other.mlp.tensors().unwrap();
        let path = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(
            &path,
            crate::model::file::encode(&other.info, &tensors).unwrap(),
        )
        .unwrap();
        // Neither at start-up nor at a rescan.
        assert_eq!(registry.load_dir(dir.path()).unwrap(), Vec::<String>::new());
        std::fs::write(
            &path,
            crate::model::file::encode(&other.info, &tensors).unwrap(),
        )
        .unwrap();
        registry.store_files.lock().unwrap().clear();
        let (loaded, failed) = registry.refresh_dir(dir.path());
        assert!(loaded.is_empty());
        assert!(
            failed[0]
                .1
                .contains("a model this service was started with"),
            "{failed:?}"
        );
        assert_eq!(
            registry.get(&name).unwrap().info.threshold,
            started_with.info.threshold
        );
        // Started with that very file (`--model` into the store): nothing to load or report.
        let from_store = Registry::new();
        from_store.pin_from(&name, &path);
        assert_eq!(
            from_store.load_dir(dir.path()).unwrap(),
            Vec::<String>::new()
        );
        from_store.store_files.lock().unwrap().clear();
        assert_eq!(from_store.refresh_dir(dir.path()), (vec![], vec![]));
        // A name it was not started with loads as before.
        let unpinned = Registry::new();
        assert_eq!(unpinned.load_dir(dir.path()).unwrap(), vec![name.clone()]);
        assert_eq!(unpinned.get(&name).unwrap().info.threshold, 0.125);
    }

    #[test]
    fn a_store_file_whose_read_hangs_is_skipped_at_the_time_limit_and_the_rest_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = crate::model::default_model().unwrap();
        let tensors = model.mlp.tensors().unwrap();
        for name in ["a_stuck", "b_fine"] {
            model.info.name = name.into();
            let bytes = crate::model::file::encode(&model.info, &tensors).unwrap();
            std::fs::write(dir.path().join(format!("{name}.safetensors")), bytes).unwrap();
        }
        // The read of `a_stuck` hangs (as on a hung mount) until the test ends.
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let stuck = Mutex::new(stuck);
        let registry = Registry::new()
            .with_read_time_limit(Duration::from_millis(300))
            .with_read_hook(move |path| {
                if path.ends_with("a_stuck.safetensors") {
                    let _ = stuck.lock().unwrap().recv();
                }
            });
        // At start-up: the stuck file is given up, the files after it load.
        assert_eq!(
            registry.load_dir(dir.path()).unwrap(),
            vec!["b_fine".to_string()]
        );
        assert!(registry.get("a_stuck").is_none());
        // At a rescan (once it has changed): the same, with the reason.
        std::fs::write(dir.path().join("a_stuck.safetensors"), b"changed").unwrap();
        registry.store_files.lock().unwrap().clear();
        let (loaded, failed) = registry.refresh_dir(dir.path());
        assert_eq!(loaded, vec!["b_fine".to_string()]);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].0.ends_with("a_stuck.safetensors"));
        assert!(
            failed[0].1.contains("it was not read within 0.3 s"),
            "{failed:?}"
        );
        // Not retried until it changes again.
        assert_eq!(registry.refresh_dir(dir.path()), (vec![], vec![]));
        drop(release);
    }

    #[test]
    fn a_bad_escu_pt_in_the_store_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let pt = dir.path().join(format!("{}.pt", convert::ESCU_MODEL_NAME));
        std::fs::write(pt, b"junk").unwrap();
        let registry = Registry::new();
        assert_eq!(registry.load_dir(dir.path()).unwrap(), Vec::<String>::new());
        assert!(registry.get(convert::ESCU_MODEL_NAME).is_none());
    }
}
