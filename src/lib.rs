//! dnsexfil: a DNS data-exfiltration detection service that speaks Splunk's DSDL container protocol.
//!
//! The flow of one request: HTTP -> DSDL envelope -> rows -> features (the model's schema) ->
//! candle network -> results CSV -> HTTP. Every stage is a plain function over plain data.
//!
//! # Layout
//!
//! Layers, each importing only those below it (`.ci/module-cycles.py` fails CI on a cycle):
//!
//! - command line: `cli` (clap; `serve`, `train`, `evaluate`, `convert`, `synth`, `openapi`),
//!   `healthcheck`, `recipe` (the arguments of `train` and `evaluate`);
//! - HTTP: `server` (router, shutdown) over `dsdl::handlers`, `dsdl::auth`, `rest` (`/v1`),
//!   `ops`, `openapi`, `limits`, `connections`, `request_id`, `metrics`, `tls`; all of them over
//!   `state` (what handlers share) and `body` (bodies within their limits);
//! - work without HTTP: `training` (what `/fit` and `train` share), `evaluation`, `scoring`,
//!   `suppress`, `memory`, `corpus`, `dataset`, `threats`, `synth`;
//! - the DSDL wire format: `dsdl::{envelope, csvscan, table, results, body}`;
//! - `features` (schemas) and `model` (network, model files, registry and store, training loop);
//! - `fsutil`, `validate_name` and `clip` below everything.

pub mod body;
pub mod cli;
pub mod connections;
pub mod corpus;
pub mod dataset;
pub mod dsdl;
pub mod evaluation;
pub mod features;
pub mod fsutil;
pub mod healthcheck;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod ops;
pub mod recipe;
pub mod request_id;
pub mod rest;
pub mod scoring;
pub mod server;
pub mod state;
pub mod suppress;
pub mod synth;
pub mod threats;
pub mod tls;
pub mod training;

/// At most `max` characters of client-supplied text (an ellipsis marks the cut), so that error
/// messages quoting it stay short.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// Checks a model or algorithm name from a request before it is used in a file path:
/// 1 to 128 of `A-Z a-z 0-9 _ . -`, and no `..`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    // A leading `.` would make hidden files (and `.` itself names the directory).
    if name.is_empty()
        || name.len() > 128
        || !ok_chars
        || name.contains("..")
        || name.starts_with('.')
    {
        return Err(format!(
            "`{}` is not a valid name: use 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` and without `..`",
            name.escape_debug()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn names_that_could_escape_a_directory_are_refused() {
        assert!(
            validate_name("detect_dns_data_exfiltration_using_pretrained_model_in_dsdl").is_ok()
        );
        assert!(validate_name("model-1.v2").is_ok());
        for bad in [
            "",
            "../../etc/passwd",
            "a/b",
            "..",
            "a..b",
            "x y",
            "ü",
            &"a".repeat(129),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
