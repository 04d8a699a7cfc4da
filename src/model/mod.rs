//! Models: the network, its file format, conversion from Splunk's artifact, and the registry of
//! loaded models that requests select from.

pub mod convert;
pub mod eval;
pub mod file;
pub mod mlp;
pub mod monotone;
pub mod train;

pub use file::{Model, ModelInfo};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The input exists but is not a usable model; the message says what is wrong.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
}

/// Name of the built-in default model, which its file carries; written once here for the service
/// (the default of requests), `train` (its default `--name`) and `/fit` (an algorithm name).
pub const DEFAULT_MODEL_NAME: &str = "dnsexfil_v7";

/// The project's own default model (`DEFAULT_MODEL_NAME`, schema dnsexfil-v4), built into the
/// binary; `models/README.md` says how it was trained and how to reproduce it bit for bit.
pub const DEFAULT_MODEL_BYTES: &[u8] = include_bytes!("../../models/dnsexfil_v7.safetensors");

pub fn default_model() -> Result<Model, ModelError> {
    Model::from_bytes(DEFAULT_MODEL_BYTES, "the built-in default model")
}

/// Fixes the thread count candle's matrix multiply uses. Without `RAYON_NUM_THREADS`, candle
/// works the count out again on every matmul by reading /proc/cpuinfo, which costs more than the
/// whole forward pass of a small request. Call before any other thread starts; a value the user
/// already set is kept.
pub fn fix_candle_threads(threads: usize) {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
