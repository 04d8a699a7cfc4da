//! dnsexfil: a DNS data-exfiltration detection service that speaks Splunk's DSDL container protocol.
//!
//! The flow of one request: HTTP -> DSDL envelope -> rows -> features (the model's schema) ->
//! candle network -> results CSV -> HTTP. Every stage is a plain function over plain data.
//!
//! # Layout
//!
//! Layers, top to bottom; each module imports only from its own layer's lower modules and from
//! the layers below (`.ci/module-cycles.py` fails CI on an import cycle, an upward import, or
//! an HTTP or command-line crate outside its layer):
//!
//! - `app`: the command line (clap): `serve`, `train`, `evaluate`, `convert`, `synth`,
//!   `openapi`, `healthcheck`.
//! - `http`: everything that imports axum or hyper: the router and shutdown (`http`), what
//!   handlers share (`state`), bodies within their limits (`body`), admission (`limits`,
//!   `connections`), refusals in each API's shape (`refusal`), `request_id`, `tls`, `auth`, `ops`,
//!   `openapi`, `metrics`; the DSDL endpoints (`http::dsdl`) and the REST API (`http::v1`).
//! - `engine`: work without HTTP: scoring rows, fitting (what `/fit` and `train` share, with
//!   its `recipe`), leave-one-tool-out `evaluation`, the allowlist (`suppress`), `memory`
//!   release after large requests.
//! - `store`: the registry of loaded models and the directory they persist in.
//! - `data` and `history`: labelled logs (`dataset`, replayed in time order through an
//!   in-process history so training sees the long-window features serving sees), the training
//!   corpus, the threat model's synthetic sessions (`threats`), synthetic DSDL batches
//!   (`synth`); what the service remembers of each source across requests (in the process or
//!   in Redis).
//! - `dsdl`: the DSDL wire format (envelope, CSV scanner, table, results CSV), no HTTP.
//! - `features` (the schemas) and `model` (network, model files, conversion, training loop).
//! - `util`: `clip`, `validate_name`, atomic files (`util::fs`), the seeded generator.

pub mod app;
pub mod data;
pub mod dsdl;
pub mod engine;
pub mod features;
pub mod history;
pub mod http;
pub mod model;
pub mod store;
pub mod util;
