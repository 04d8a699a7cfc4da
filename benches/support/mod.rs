//! What the benchmarks share: the service's state with the published ESCU model loaded.

use std::path::Path;
use std::sync::Arc;

use dnsexfil::engine::suppress::{Suppressions, BUILTIN_ALLOWLIST};
use dnsexfil::http::auth::Token;
use dnsexfil::http::state::{AppState, ServerConfig};
use dnsexfil::model::convert::{convert, ESCU_MODEL_NAME};
use dnsexfil::model::Model;
use dnsexfil::store::Registry;

/// The API token of the benchmarks' service.
#[allow(dead_code)] // only the profile driver sends requests through the router
pub const BENCH_TOKEN: &str = "bench-token";

/// The service's state with the published ESCU model, set up as `dnsexfil serve` does.
pub fn escu_state() -> AppState {
    // As the service does at start-up (see `fix_candle_threads`).
    dnsexfil::model::fix_candle_threads(dnsexfil::http::state::default_compute_threads());
    let artifact = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/escu/{ESCU_MODEL_NAME}.tar.gz"));
    let converted =
        convert(&artifact, None).expect("the published artifact in tests/fixtures/escu");
    let registry = Registry::new();
    registry.insert(Model::from_bytes(&converted.bytes, "escu").unwrap());
    let config = ServerConfig {
        token: Token::Set(BENCH_TOKEN.to_string()),
        max_body_bytes: 64 << 20,
        max_rows: 1_000_000,
        staging_dir: std::env::temp_dir(),
        model_store: None,
        fit_time_limit: std::time::Duration::from_secs(60),
        max_fit_rows: 200_000,
        limits: Default::default(),
    };
    // `dnsexfil serve` checks scored rows against the built-in allowlist unless told not to.
    let mut suppressions = Suppressions::none();
    suppressions
        .add_allowlist(BUILTIN_ALLOWLIST, "built-in")
        .expect("the built-in allowlist parses");
    AppState::new(Arc::new(registry), config, 2).with_suppressions(suppressions)
}

/// The CSV of a DSDL `/apply` body as the service reads it: still JSON-escaped, where it stands.
pub fn escaped_csv(body: &str) -> &str {
    dnsexfil::dsdl::envelope::parse_keeping_data_escaped(body.as_bytes())
        .expect("a DSDL request body")
        .data
        .0
}
