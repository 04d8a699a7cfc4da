//! Work without HTTP: scoring rows with a model, fitting models (shared by `/fit` and
//! `dnsexfil train`), leave-one-tool-out evaluation, the allowlist, and memory release after large
//! requests. Nothing here imports axum.

pub mod evaluation;
pub mod memory;
pub mod recipe;
pub mod scoring;
pub mod suppress;
pub mod training;
