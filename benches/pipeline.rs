//! Stage-by-stage cost of one ESCU `/apply` at 1k, 10k and 100k rows, the whole request
//! (envelope parse to response body) next to the network's forward pass alone, and the whole
//! request with the default model's schema against the one before (`-- schemas`), and with an
//! in-process history against none (`-- history`).
//! Run: `cargo bench --bench pipeline` (the weights come from tests/fixtures/escu).

mod support;

use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use dnsexfil::data::synth;
use dnsexfil::dsdl::envelope;
use dnsexfil::dsdl::results::{json_results, Predictions, SuppressionCheck};
use dnsexfil::dsdl::table::Table;
use dnsexfil::features::Schema;
use dnsexfil::http::dsdl::process;
use dnsexfil::http::dsdl::{DsdlResponse, Endpoint};
use dnsexfil::http::v1::models::DEFAULT_MODEL_NAME;
use dnsexfil::model::convert::ESCU_MODEL_NAME;

// The same allocator as the service binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn stages(c: &mut Criterion) {
    let state = support::escu_state();
    let model = state.registry.get(ESCU_MODEL_NAME).unwrap();
    for rows in SIZES {
        let csv = synth::dsdl_csv(rows, 42);
        let body = synth::dsdl_envelope(&csv, ESCU_MODEL_NAME);
        // As `/apply` reads them: the CSV stays JSON-escaped where it is in the body.
        let escaped = support::escaped_csv(&body);
        let table = Table::parse_json_escaped(escaped, usize::MAX)
            .unwrap()
            .unwrap();
        let (feature_rows, scored, scored_table_rows) = table.feature_rows();
        let features = model.info.schema.compute(&feature_rows, &scored);
        let scores = model.mlp.predict(&features.values, features.rows).unwrap();
        // As the service writes results: the allowlist is checked as each scored row is written.
        let suppressed = |row: usize| state.suppressions.reason(table.src(row), table.query(row));
        let predictions = Predictions {
            rows: &scored_table_rows,
            probabilities: &scores,
            suppressed: Some(&suppressed as &SuppressionCheck),
        };

        let mut g = c.benchmark_group(format!("apply_{rows}_rows"));
        g.throughput(Throughput::Elements(rows as u64));
        if rows == 100_000 {
            g.sample_size(10);
        }
        g.bench_function(BenchmarkId::new("envelope_parse", rows), |b| {
            b.iter(|| envelope::parse_keeping_data_escaped(body.as_bytes()).unwrap())
        });
        g.bench_function(BenchmarkId::new("csv_parse", rows), |b| {
            b.iter(|| {
                Table::parse_json_escaped(escaped, usize::MAX)
                    .unwrap()
                    .unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("features_escu_v1", rows), |b| {
            b.iter(|| model.info.schema.compute(&feature_rows, &scored))
        });
        // Our own schemas (the default model's, and v2, the smallest), over the same rows.
        g.bench_function(BenchmarkId::new("features_dnsexfil_v4", rows), |b| {
            b.iter(|| Schema::DnsexfilV4.compute(&feature_rows, &scored))
        });
        g.bench_function(BenchmarkId::new("features_dnsexfil_v2", rows), |b| {
            b.iter(|| Schema::DnsexfilV2.compute(&feature_rows, &scored))
        });
        g.bench_function(BenchmarkId::new("forward_pass_only", rows), |b| {
            b.iter(|| model.mlp.predict(&features.values, features.rows).unwrap())
        });
        // Results are written straight into the JSON response body, escaped on the way.
        g.bench_function(BenchmarkId::new("results_json", rows), |b| {
            b.iter(|| {
                let results = json_results(
                    &table,
                    &model.info.target,
                    predictions,
                    model.info.threshold,
                    csv.len() + 1024,
                );
                DsdlResponse {
                    status: "success",
                    message: "/apply done successfully".to_string(),
                    results: Some(results),
                }
                .into_body()
            })
        });
        g.bench_function(BenchmarkId::new("whole_apply", rows), |b| {
            b.iter(|| process(&state, body.as_bytes(), Endpoint::Apply).into_body())
        });
        g.finish();
    }
}

/// The goal's ratio, measured honestly under a noisy machine: the whole request and the forward
/// pass alone on the same rank-1 rows run alternately, so both see the same conditions; prints
/// the medians and `ratio whole/forward = X` per size.
fn ratio() {
    if !requested("ratio") {
        return;
    }
    let state = support::escu_state();
    let model = state.registry.get(ESCU_MODEL_NAME).unwrap();
    println!("\nwhole /apply vs forward pass alone, run alternately (median of the runs):");
    for rows in SIZES {
        let csv = synth::dsdl_csv(rows, 42);
        let body = synth::dsdl_envelope(&csv, ESCU_MODEL_NAME);
        let table = Table::parse(&csv).unwrap();
        let (feature_rows, scored, _) = table.feature_rows();
        let features = model.info.schema.compute(&feature_rows, &scored);
        let runs = (2_000_000 / rows).clamp(60, 201);
        let (mut whole, mut forward) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            std::hint::black_box(process(&state, body.as_bytes(), Endpoint::Apply).into_body());
            whole.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(model.mlp.predict(&features.values, features.rows).unwrap());
            forward.push(t.elapsed());
        }
        let (w, f) = (median(&mut whole), median(&mut forward));
        println!(
            "{rows:>7} rows ({} rank 1, {runs} runs): whole {:.2} ms, forward {:.2} ms, ratio whole/forward = {:.2}",
            scored.len(),
            w.as_secs_f64() * 1e3,
            f.as_secs_f64() * 1e3,
            w.as_secs_f64() / f.as_secs_f64()
        );
    }
}

/// The default model's schema against the one before: the whole `/apply` of the same batch with
/// the built-in default (schema `dnsexfil-v4`) and with `dnsexfil_v2` (its file in `models/`), run alternately;
/// prints the medians and `ratio v4/v2 = X` per size.
fn schemas() {
    if !requested("schemas") {
        return;
    }
    let state = support::escu_state();
    state
        .registry
        .insert(dnsexfil::model::default_model().unwrap());
    let v2_file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/dnsexfil_v2.safetensors");
    state
        .registry
        .insert(dnsexfil::model::Model::load(&v2_file).unwrap());
    println!(
        "\nwhole /apply with the default model (schema dnsexfil-v4) vs dnsexfil_v2, run alternately (median of the runs):"
    );
    for rows in SIZES {
        let csv = synth::dsdl_csv(rows, 42);
        let v4 = synth::dsdl_envelope(&csv, DEFAULT_MODEL_NAME);
        let v2 = synth::dsdl_envelope(&csv, "dnsexfil_v2");
        let runs = (2_000_000 / rows).clamp(30, 201);
        let (mut with_v4, mut with_v2) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            for (body, times) in [(&v4, &mut with_v4), (&v2, &mut with_v2)] {
                let t = Instant::now();
                let answer = process(&state, body.as_bytes(), Endpoint::Apply).into_body();
                times.push(t.elapsed());
                assert!(!answer.is_empty());
            }
        }
        let (a, b) = (median(&mut with_v4), median(&mut with_v2));
        println!(
            "{rows:>7} rows ({runs} runs): v4 {:.2} ms, v2 {:.2} ms, ratio v4/v2 = {:.2}",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
}

/// What remembering a request's events costs: the whole `/apply` with the default model and an
/// in-process history against the same request with none, run alternately. Each run with the
/// history starts from an empty store (every event new: the most a request's recording costs;
/// dropping the store is not timed). Prints the medians and `ratio history/none = X` per size.
fn history() {
    if !requested("history") {
        return;
    }
    use dnsexfil::history::{History, HistoryConfig};
    let state = support::escu_state();
    state
        .registry
        .insert(dnsexfil::model::default_model().unwrap());
    println!(
        "\nwhole /apply with the default model, with an in-process history vs none, run alternately:"
    );
    for rows in SIZES {
        let csv = synth::dsdl_csv(rows, 42);
        let body = synth::dsdl_envelope(&csv, DEFAULT_MODEL_NAME);
        let runs = (2_000_000 / rows).clamp(30, 201);
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let remembering = state
                .clone()
                .with_history(History::memory(HistoryConfig::default()));
            let t = Instant::now();
            let answer = process(&remembering, body.as_bytes(), Endpoint::Apply).into_body();
            with.push(t.elapsed());
            assert!(remembering.history.usage().sources > 0);
            drop((answer, remembering));
            let t = Instant::now();
            std::hint::black_box(process(&state, body.as_bytes(), Endpoint::Apply).into_body());
            without.push(t.elapsed());
        }
        let (a, b) = (median(&mut with), median(&mut without));
        println!(
            "{rows:>7} rows ({runs} runs): history {:.2} ms, none {:.2} ms, ratio history/none = {:.2}",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
}

/// Whether the hand-timed measurement `name` runs: only under `cargo bench` (not the one-shot
/// run of `cargo test`), and unless a filter names other benchmarks (`cargo bench --bench
/// pipeline -- ratio` runs only `ratio`).
fn requested(name: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    args.iter().any(|a| a == "--bench")
        && (filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())))
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

criterion_group!(benches, stages);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratio();
    schemas();
    history();
}
