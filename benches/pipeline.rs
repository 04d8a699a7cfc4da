//! Stage-by-stage cost of one ESCU `/apply` at 1k, 10k and 100k rows, and the whole request
//! (envelope parse to response body) next to the network's forward pass alone.
//! Run: `cargo bench --bench pipeline` (needs ../shared/artifacts for the weights).

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dnsexfil::dsdl::auth::Token;
use dnsexfil::dsdl::handlers::process;
use dnsexfil::dsdl::results::{write_results, JsonEscaped};
use dnsexfil::dsdl::table::Table;
use dnsexfil::dsdl::{envelope, DsdlResponse, Endpoint};
use dnsexfil::model::convert::{convert, ESCU_MODEL_NAME};
use dnsexfil::model::{Model, Registry};
use dnsexfil::server::{AppState, ServerConfig};
use dnsexfil::synth;

// The same allocator as the service binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn escu_state() -> AppState {
    // As the service does at start-up (see `fix_candle_threads`).
    dnsexfil::model::fix_candle_threads(dnsexfil::server::default_compute_threads());
    let artifact = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../shared/artifacts/{ESCU_MODEL_NAME}.tar.gz"));
    let converted =
        convert(&artifact, None).expect("the published artifact in ../shared/artifacts");
    let registry = Registry::new();
    registry.insert(Model::from_bytes(&converted.bytes, "escu").unwrap());
    let config = ServerConfig {
        token: Token::Unset,
        max_body_bytes: 64 << 20,
        max_rows: 1_000_000,
        staging_dir: std::env::temp_dir(),
        model_store: None,
        fit_time_limit: std::time::Duration::from_secs(60),
        max_fit_rows: 200_000,
        limits: Default::default(),
    };
    AppState::new(Arc::new(registry), config, 2)
}

fn stages(c: &mut Criterion) {
    let state = escu_state();
    let model = state.registry.get(ESCU_MODEL_NAME).unwrap();
    for rows in SIZES {
        let csv = synth::dsdl_csv(rows, 42);
        let body = synth::dsdl_envelope(&csv, ESCU_MODEL_NAME);
        let table = Table::parse(&csv).unwrap();
        let (feature_rows, scored, scored_table_rows) = table.feature_rows();
        let features = model.info.schema.compute(&feature_rows, &scored);
        let scores = model.mlp.predict(&features.values, features.rows).unwrap();
        let mut probabilities = vec![None; table.len()];
        for (k, &row) in scored_table_rows.iter().enumerate() {
            probabilities[row] = Some(scores[k]);
        }

        let mut g = c.benchmark_group(format!("apply_{rows}_rows"));
        g.throughput(Throughput::Elements(rows as u64));
        if rows == 100_000 {
            g.sample_size(10);
        }
        g.bench_function(BenchmarkId::new("envelope_parse", rows), |b| {
            b.iter(|| envelope::parse(body.as_bytes()).unwrap())
        });
        g.bench_function(BenchmarkId::new("csv_parse", rows), |b| {
            b.iter(|| Table::parse(&csv).unwrap())
        });
        g.bench_function(BenchmarkId::new("features_escu_v1", rows), |b| {
            b.iter(|| model.info.schema.compute(&feature_rows, &scored))
        });
        g.bench_function(BenchmarkId::new("forward_pass_only", rows), |b| {
            b.iter(|| model.mlp.predict(&features.values, features.rows).unwrap())
        });
        // Results are written straight into the JSON response body, escaped on the way.
        g.bench_function(BenchmarkId::new("results_json", rows), |b| {
            b.iter(|| {
                let mut out = JsonEscaped(Vec::with_capacity(csv.len() + 1024));
                let target = &model.info.target;
                write_results(
                    &mut out,
                    &table,
                    target,
                    &probabilities,
                    model.info.threshold,
                    None,
                );
                let message = "/apply done successfully".to_string();
                DsdlResponse {
                    status: "success",
                    message,
                    results: Some(out.0),
                }
                .to_json()
            })
        });
        g.bench_function(BenchmarkId::new("whole_apply", rows), |b| {
            b.iter(|| process(&state, body.as_bytes(), Endpoint::Apply).to_json())
        });
        g.finish();
    }
}

criterion_group!(benches, stages);
criterion_main!(benches);
