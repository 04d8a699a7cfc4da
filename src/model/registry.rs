//! The read-mostly set of loaded models, shared by all requests. Requests take an `Arc` to the
//! model they use, so replacing a model never disturbs a request in flight.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::convert;
use super::{Model, ModelError};

#[derive(Default)]
pub struct Registry {
    models: RwLock<BTreeMap<String, Arc<Model>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
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
    pub fn resolve(&self, model_name: &str, algo: Option<&str>) -> Option<Arc<Model>> {
        let models = self.models.read().expect("registry lock");
        let mut candidates = Vec::with_capacity(3);
        if let Some(algo) = algo {
            candidates.push(format!("{algo}_{model_name}"));
        }
        candidates.push(model_name.to_string());
        if let Some(algo) = algo {
            candidates.push(algo.to_string());
        }
        candidates.iter().find_map(|c| models.get(c).cloned())
    }

    /// Loads every model file in `dir` (`*.safetensors`), and converts in memory a published
    /// `.pt` that DSDL deployments keep there (flat or in a sub-folder) when no converted file
    /// of that name exists. Returns the names loaded.
    pub fn load_dir(&self, dir: &Path) -> Result<Vec<String>, ModelError> {
        let mut loaded = Vec::new();
        if !dir.is_dir() {
            return Ok(loaded);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| ModelError::Io(format!("cannot list {}: {e}", dir.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("safetensors"))
            .collect();
        files.sort();
        for f in files {
            let model = Model::load(&f)?;
            loaded.push(self.insert(model).info.name.clone());
        }
        let escu = convert::ESCU_MODEL_NAME;
        let has_escu_pt = dir.join(format!("{escu}.pt")).is_file()
            || dir.join(escu).join(format!("{escu}.pt")).is_file();
        if has_escu_pt && self.get(escu).is_none() {
            let converted = convert::convert(dir, Some(escu))?;
            let model = Model::from_bytes(&converted.bytes, escu)?;
            loaded.push(self.insert(model).info.name.clone());
        }
        Ok(loaded)
    }

    /// Loads one model given on the command line: a model file, or an artifact/`.pt` converted in memory.
    pub fn load_file(&self, path: &Path) -> Result<String, ModelError> {
        let model = if path.extension().and_then(|x| x.to_str()) == Some("safetensors") {
            Model::load(path)?
        } else {
            let converted = convert::convert(path, None)?;
            Model::from_bytes(&converted.bytes, &path.display().to_string())?
        };
        Ok(self.insert(model).info.name.clone())
    }
}
