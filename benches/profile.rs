//! A small driver that runs one stage of `/apply` a given number of times, for profilers
//! (`valgrind --tool=callgrind`, `perf record`) and instruction counts, where criterion's
//! repetitions and statistics only get in the way.
//!
//! Build: `cargo bench --bench profile --no-run`, then run the printed executable:
//! `profile <stage> <rows> <iterations>` with stage one of envelope and csv (as `/apply` reads
//! them: the CSV stays JSON-escaped in the body), envelope_unescaping and csv_unescaped (the
//! general path of `/fit` and of CSVs that need unescaping), feature_rows, prepare (the
//! per-request history), fill (features from a prepared history; only that part is timed),
//! features (both), features_v2 and features_v4 (our schemas), forward, score, allowlist (the
//! suppression check of every scored row, alone on one core), results (with that check, as the
//! service writes them), whole, app (the whole service in-process: router, middleware, handler
//! and response body, without the network), history (every row remembered in a fresh
//! in-process history); `profile history_memory` compares the history's estimate of its size
//! with the process's growth. `PROFILE_SCHEMA=<schema>` makes `prepare` and `fill` run that
//! schema instead of the ESCU model's. `PROFILE_CSV=<file>` takes the rows from a CSV
//! file (e.g. the dev log), repeated to `<rows>`, instead of synthetic ones. Under `cargo bench` (no stage given) it runs each
//! stage once at 1,000 rows as a smoke test.

mod support;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dnsexfil::data::synth;
use dnsexfil::dsdl::envelope;
use dnsexfil::dsdl::results::{json_results, Predictions, SuppressionCheck};
use dnsexfil::dsdl::table::Table;
use dnsexfil::engine::scoring;
use dnsexfil::features::Schema;
use dnsexfil::http::dsdl::process;
use dnsexfil::http::dsdl::Endpoint;
use dnsexfil::http::state::AppState;
use dnsexfil::model::convert::ESCU_MODEL_NAME;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STAGES: [&str; 17] = [
    "envelope",
    "csv",
    "envelope_unescaping",
    "csv_unescaped",
    "feature_rows",
    "prepare",
    "fill",
    "features",
    "features_v2",
    "features_v4",
    "forward",
    "score",
    "allowlist",
    "results",
    "whole",
    "app",
    "history",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("history_memory") {
        history_memory();
        return;
    }
    let (stages, rows, iterations) = match args.first().map(String::as_str) {
        Some(stage) if STAGES.contains(&stage) => {
            let rows = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(100_000);
            let iterations = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(1);
            (vec![stage], rows, iterations)
        }
        _ => (STAGES.to_vec(), 1_000, 1),
    };
    let state = support::escu_state();
    let model = state.registry.get(ESCU_MODEL_NAME).unwrap();
    let csv = match std::env::var_os("PROFILE_CSV") {
        Some(path) => repeated_csv(&std::fs::read_to_string(path).unwrap(), rows),
        None => synth::dsdl_csv(rows, 42),
    };
    let body = synth::dsdl_envelope(&csv, ESCU_MODEL_NAME);
    let escaped = support::escaped_csv(&body);
    // The table as `/apply` reads it: cells are ranges of the escaped text.
    let table = Table::parse_json_escaped(escaped, usize::MAX)
        .unwrap()
        .unwrap();
    let (feature_rows, scored, scored_table_rows) = table.feature_rows();
    let features = model.info.schema.compute(&feature_rows, &scored);
    let scores = model.mlp.predict(&features.values, features.rows).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = dnsexfil::http::app(state.clone());
    let ctx = Ctx {
        runtime: &runtime,
        app: &app,
        state: &state,
        body: &body,
        csv: &csv,
        escaped,
        table: &table,
        scored_table_rows: &scored_table_rows,
        scores: &scores,
        features: &features.values,
        scored_rows: features.rows,
    };
    for stage in stages {
        let started = Instant::now();
        for _ in 0..iterations {
            run(stage, &ctx);
        }
        let mut elapsed = started.elapsed().as_secs_f64();
        if stage == "fill" {
            elapsed = FILL_NANOS.swap(0, Ordering::Relaxed) as f64 * 1e-9;
        }
        let per = elapsed * 1e3 / iterations as f64;
        println!("{stage} {rows} rows: {per:.3} ms per run ({iterations} runs)");
    }
}

/// The schema the `prepare` and `fill` stages run: `PROFILE_SCHEMA` (e.g. `dnsexfil-v4`, the
/// default model's), else the ESCU model's.
fn profiled_schema(model: &dnsexfil::model::Model) -> Schema {
    match std::env::var("PROFILE_SCHEMA") {
        Ok(name) => name
            .parse()
            .unwrap_or_else(|e| panic!("PROFILE_SCHEMA: {e}")),
        Err(_) => model.info.schema,
    }
}

/// A CSV file's rows repeated to `rows` rows under its header (`PROFILE_CSV`: a real log instead
/// of synthetic rows, as `benches/http_roundtrip.sh` sends the dev log).
fn repeated_csv(text: &str, rows: usize) -> String {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let body: Vec<&str> = lines.collect();
    let mut csv = String::with_capacity(text.len() * (rows / body.len().max(1) + 1));
    csv.push_str(header);
    csv.push('\n');
    for line in body.iter().cycle().take(rows) {
        csv.push_str(line);
        csv.push('\n');
    }
    csv
}

/// `profile history_memory`: 1,000,000 names from 5,000 sources remembered in an in-process
/// history without a cap; prints its own estimate of its bytes next to the process's growth in
/// RSS (what `--history-max-mb` bounds is the estimate).
fn history_memory() {
    use dnsexfil::history::{History, HistoryConfig, Observation};
    fn rss_mib() -> f64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }
    let config = HistoryConfig {
        max_bytes: 4 << 30,
        ..Default::default()
    };
    let history = History::memory(config);
    let before = rss_mib();
    let now = 1_700_000_000;
    for round in 0..100i64 {
        let events: Vec<(String, String)> = (0..10_000usize)
            .map(|i| {
                (
                    format!("10.0.{}.{}", i % 50, round),
                    format!("{:016x}n{round}x{i}.example{}.com", i * 7919, i % 20),
                )
            })
            .collect();
        let observations: Vec<Observation> = events
            .iter()
            .map(|(src, query)| Observation {
                src,
                query,
                time: now - round * 60,
            })
            .collect();
        history.record(&observations, now);
    }
    let usage = history.usage();
    println!(
        "history of {} sources: estimated {:.1} MiB, process grew {:.1} MiB",
        usage.sources,
        usage.bytes as f64 / (1 << 20) as f64,
        rss_mib() - before
    );
}

/// Time spent in the `fill` stage proper (its set-up is not what it measures).
static FILL_NANOS: AtomicU64 = AtomicU64::new(0);

struct Ctx<'a> {
    runtime: &'a tokio::runtime::Runtime,
    app: &'a axum::Router,
    state: &'a AppState,
    body: &'a str,
    csv: &'a str,
    /// The CSV as it stands in the body, JSON-escaped.
    escaped: &'a str,
    table: &'a Table<'a>,
    /// The table rows that were scored, and their probabilities.
    scored_table_rows: &'a [usize],
    scores: &'a [f32],
    features: &'a [f32],
    scored_rows: usize,
}

#[inline(never)]
fn run(stage: &str, ctx: &Ctx) {
    let model = ctx.state.registry.get(ESCU_MODEL_NAME).unwrap();
    match stage {
        "envelope" => {
            black_box(envelope::parse_keeping_data_escaped(ctx.body.as_bytes()).unwrap());
        }
        "csv" => {
            black_box(Table::parse_json_escaped(ctx.escaped, usize::MAX).unwrap());
        }
        "envelope_unescaping" => {
            black_box(envelope::parse(ctx.body.as_bytes()).unwrap());
        }
        "csv_unescaped" => {
            black_box(Table::parse(ctx.csv).unwrap());
        }
        "feature_rows" => {
            black_box(ctx.table.feature_rows());
        }
        "prepare" => {
            let (rows, _, _) = ctx.table.feature_rows();
            black_box(profiled_schema(&model).prepare(&rows));
        }
        "fill" => {
            let (rows, scored, _) = ctx.table.feature_rows();
            let prepared = profiled_schema(&model).prepare(&rows);
            let started = Instant::now();
            black_box(prepared.features(&rows, &scored));
            FILL_NANOS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        "features" => {
            let (rows, scored, _) = ctx.table.feature_rows();
            black_box(model.info.schema.compute(&rows, &scored));
        }
        "features_v2" => {
            let (rows, scored, _) = ctx.table.feature_rows();
            black_box(Schema::DnsexfilV2.compute(&rows, &scored));
        }
        "history" => {
            // Remembering every row in a fresh in-process history, as `/apply` does.
            let history = dnsexfil::history::History::memory(Default::default());
            let observations: Vec<dnsexfil::history::Observation> = (0..ctx.table.len())
                .map(|row| dnsexfil::history::Observation {
                    src: ctx.table.src(row),
                    query: ctx.table.query(row),
                    time: 1_700_000_000,
                })
                .collect();
            history.record(&observations, 1_700_000_000);
            black_box(history);
        }
        "features_v4" => {
            let (rows, scored, _) = ctx.table.feature_rows();
            black_box(Schema::DnsexfilV4.compute(&rows, &scored));
        }
        "forward" => {
            black_box(model.mlp.predict(ctx.features, ctx.scored_rows).unwrap());
        }
        "score" => {
            let (rows, scored, _) = ctx.table.feature_rows();
            black_box(scoring::score(&model, &rows, &scored).unwrap());
        }
        "allowlist" => {
            // The allowlist and mute check of every scored row, serially and on its own (the
            // service makes it as it writes each row's result).
            for &row in ctx.scored_table_rows {
                black_box(
                    ctx.state
                        .suppressions
                        .reason(ctx.table.src(row), ctx.table.query(row)),
                );
            }
        }
        "results" => {
            // As the service writes them, checking the allowlist of each scored row.
            let suppressed = |row: usize| {
                ctx.state
                    .suppressions
                    .reason(ctx.table.src(row), ctx.table.query(row))
            };
            let predictions = Predictions {
                rows: ctx.scored_table_rows,
                probabilities: ctx.scores,
                suppressed: Some(&suppressed as &SuppressionCheck),
            };
            black_box(json_results(
                ctx.table,
                &model.info.target,
                predictions,
                model.info.threshold,
                ctx.csv.len() + 1024,
            ));
        }
        "whole" => {
            black_box(process(ctx.state, ctx.body.as_bytes(), Endpoint::Apply).into_body());
        }
        "app" => {
            use http_body_util::BodyExt;
            use tower::ServiceExt;
            let request = axum::http::Request::post("/apply")
                .header("content-type", "application/json")
                .header("authorization", support::BENCH_TOKEN)
                .body(axum::body::Body::from(ctx.body.to_string()))
                .unwrap();
            let body = ctx.runtime.block_on(async {
                let response = ctx.app.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), 200);
                response.into_body().collect().await.unwrap().to_bytes()
            });
            black_box(body);
        }
        _ => unreachable!(),
    }
}
