//! Models: the network, its file format, conversion from Splunk's artifact, and the registry of
//! loaded models that requests select from.

pub mod convert;
pub mod file;
pub mod mlp;
pub mod registry;

pub use file::{Model, ModelInfo};
pub use registry::Registry;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The input exists but is not a usable model; the message says what is wrong.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
