//! Where models live while the service runs: the registry of loaded models that requests select
//! from, and the directory fitted models persist in.

pub mod directory;
pub mod registry;

pub use directory::{ModelStore, StoreProblem};
pub use registry::Registry;
