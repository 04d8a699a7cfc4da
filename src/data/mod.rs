//! Data to train and evaluate on: labelled DNS logs, the training corpus built from them, the
//! threat model's synthetic sessions, and synthetic DSDL batches for benchmarks.

pub mod corpus;
pub mod dataset;
pub mod synth;
pub mod threats;
