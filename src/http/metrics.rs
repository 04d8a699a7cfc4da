//! Prometheus metrics: a small process-wide registry (counters and histograms with labels),
//! the middleware that counts every HTTP request, and the text exposition for `GET /metrics`.
//!
//! One registry per process, like Prometheus client libraries: scoring code records into it
//! without plumbing, and a scrape reads it. Label values are bounded sets (route templates,
//! known methods, status codes, loaded model names), never raw request text.
//!
//! Kept hand-written rather than the `metrics` crate with its Prometheus exporter: the exporter
//! works through one global recorder that can be installed once per process (the tests start
//! many servers in one process), renders histograms as summaries unless each metric's buckets
//! are configured, and would need the gauges read here from live state at scrape time (loaded
//! models, bodies in flight) pushed on every change instead. The exposition is pinned by tests
//! with exact counts (`tests/rest_api.rs`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::store::Registry;

/// Upper bounds (seconds) of the latency buckets: 0.5 ms to 2 minutes (the default timeout).
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];

#[derive(Default, Clone)]
struct Histogram {
    /// Observations per bucket (not cumulative), plus the `+Inf` bucket at the end.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let bucket = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum += seconds;
    }

    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Label values, in the order of the metric's label names.
type Labels = Vec<String>;

#[derive(Default)]
struct Families {
    requests: BTreeMap<Labels, u64>,
    request_seconds: BTreeMap<Labels, Histogram>,
    rows_scored: BTreeMap<Labels, u64>,
    feature_seconds: BTreeMap<Labels, Histogram>,
    inference_seconds: BTreeMap<Labels, Histogram>,
}

fn families() -> &'static Mutex<Families> {
    static FAMILIES: OnceLock<Mutex<Families>> = OnceLock::new();
    FAMILIES.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, Families> {
    // A panic while holding the lock cannot leave the maps inconsistent (plain inserts/adds).
    families().lock().unwrap_or_else(|e| e.into_inner())
}

/// The value of the series with these label values, created on first use. Series are few (route
/// templates, methods, statuses, models), so a scan finds one without allocating its labels.
fn series<'m, V: Default>(map: &'m mut BTreeMap<Labels, V>, labels: &[&str]) -> &'m mut V {
    let known = map.keys().position(|k| k.iter().eq(labels));
    match known {
        Some(i) => map.values_mut().nth(i).expect("the key was just found"),
        None => map
            .entry(labels.iter().map(|l| l.to_string()).collect())
            .or_default(),
    }
}

/// Counts one answered request and its latency.
pub fn record_request(route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
    let labels = [route, method_label(method), status.as_str()];
    let mut f = lock();
    *series(&mut f.requests, &labels) += 1;
    series(&mut f.request_seconds, &labels).observe(elapsed.as_secs_f64());
}

/// Records one scoring pass: `api` is `v1` or `dsdl`.
pub fn record_scoring(
    api: &str,
    model: &str,
    rows: usize,
    features: Duration,
    inference: Duration,
) {
    let labels = [api, model];
    let mut f = lock();
    *series(&mut f.rows_scored, &labels) += rows as u64;
    series(&mut f.feature_seconds, &labels).observe(features.as_secs_f64());
    series(&mut f.inference_seconds, &labels).observe(inference.as_secs_f64());
}

/// Methods outside the standard set share one label, so clients cannot create new series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Middleware: counts every request by route template (`unmatched` when no route matched),
/// method and final status.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    record_request(route, &method, resp.status(), start.elapsed());
    resp
}

/// Gauges read at the moment of a scrape.
pub struct Gauges {
    /// Requests in flight on the limited routes, and their limit.
    pub in_flight: usize,
    pub in_flight_limit: usize,
    /// Bytes of bodies and unsent answers counted against the in-flight budget, and the budget.
    pub body_bytes_in_flight: usize,
    pub body_bytes_budget: usize,
    /// The history store, as it stands now.
    pub history: HistoryGauges,
}

/// The history's figures at the moment of a scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct HistoryGauges {
    /// `off`, `memory` or `redis`.
    pub kind: &'static str,
    pub usage: crate::history::Usage,
    pub max_bytes: usize,
    pub recorded: u64,
    pub skipped: u64,
    pub dropped_batches: u64,
    pub record_errors: u64,
    pub read_errors: u64,
    pub degraded: bool,
    pub redis: Option<crate::history::redis::RedisStats>,
}

impl HistoryGauges {
    pub fn of(history: &crate::history::History) -> HistoryGauges {
        use std::sync::atomic::Ordering::Relaxed;
        let c = history.counters();
        HistoryGauges {
            kind: history.kind(),
            usage: history.usage(),
            max_bytes: history.config().map_or(0, |c| c.max_bytes),
            recorded: c.recorded.load(Relaxed),
            skipped: c.skipped.load(Relaxed),
            dropped_batches: c.dropped_batches.load(Relaxed),
            record_errors: c.record_errors.load(Relaxed),
            read_errors: c.read_errors.load(Relaxed),
            degraded: c.degraded.load(Relaxed),
            redis: history.redis_stats(),
        }
    }
}

/// The Prometheus text exposition (format 0.0.4) of everything recorded, plus gauges read now:
/// requests and body bytes in flight and one `dnsexfil_model_info` series per loaded model.
pub fn render(registry: &Registry, gauges: Gauges) -> String {
    let Gauges {
        in_flight,
        in_flight_limit,
        body_bytes_in_flight,
        body_bytes_budget,
        history,
    } = gauges;
    let f = lock();
    let mut out = String::with_capacity(8192);
    counter(
        &mut out,
        "dnsexfil_http_requests_total",
        "HTTP requests answered, by route template, method and status.",
        &["route", "method", "status"],
        &f.requests,
    );
    histogram(
        &mut out,
        "dnsexfil_http_request_duration_seconds",
        "Time from request to response headers, by route template, method and status.",
        &["route", "method", "status"],
        &f.request_seconds,
    );
    counter(
        &mut out,
        "dnsexfil_rows_scored_total",
        "Events (rank-1 rows) given a probability, by API and model.",
        &["api", "model"],
        &f.rows_scored,
    );
    histogram(
        &mut out,
        "dnsexfil_feature_seconds",
        "Feature computation time per scoring request, by API and model.",
        &["api", "model"],
        &f.feature_seconds,
    );
    histogram(
        &mut out,
        "dnsexfil_inference_seconds",
        "Forward-pass time per scoring request, by API and model.",
        &["api", "model"],
        &f.inference_seconds,
    );
    drop(f);
    header(
        &mut out,
        "dnsexfil_requests_in_flight",
        "Requests in flight on the limited routes.",
        "gauge",
    );
    let _ = writeln!(out, "dnsexfil_requests_in_flight {in_flight}");
    header(
        &mut out,
        "dnsexfil_max_concurrent_requests",
        "The in-flight limit (--max-concurrent-requests).",
        "gauge",
    );
    let _ = writeln!(out, "dnsexfil_max_concurrent_requests {in_flight_limit}");
    header(
        &mut out,
        "dnsexfil_body_bytes_in_flight",
        "Bytes of request bodies and unsent answers counted against the in-flight budget (in KiB steps).",
        "gauge",
    );
    let _ = writeln!(out, "dnsexfil_body_bytes_in_flight {body_bytes_in_flight}");
    header(
        &mut out,
        "dnsexfil_max_body_bytes_in_flight",
        "The in-flight budget for bodies and answers (--max-bodies-in-flight-mb).",
        "gauge",
    );
    let _ = writeln!(out, "dnsexfil_max_body_bytes_in_flight {body_bytes_budget}");
    render_history(&mut out, &history);
    header(
        &mut out,
        "dnsexfil_model_info",
        "A loaded model (value 1), with its schema and the SHA-256 of its model file.",
        "gauge",
    );
    for m in registry.all() {
        let labels = label_text(
            &["name", "schema", "sha256"],
            &[
                m.info.name.clone(),
                m.info.schema.name().to_string(),
                m.file_sha256.clone(),
            ],
            None,
        );
        let _ = writeln!(out, "dnsexfil_model_info{labels} 1");
    }
    out
}

fn render_history(out: &mut String, h: &HistoryGauges) {
    let mut one = |name: &str, help: &str, kind: &str, value: u64| {
        header(out, name, help, kind);
        let _ = writeln!(out, "{name} {value}");
    };
    one(
        "dnsexfil_history_bytes",
        "Bytes the in-process history holds (estimated; 0 with Redis or off).",
        "gauge",
        h.usage.bytes as u64,
    );
    one(
        "dnsexfil_history_max_bytes",
        "The in-process history's cap (--history-max-mb).",
        "gauge",
        h.max_bytes as u64,
    );
    one(
        "dnsexfil_history_sources",
        "Sources the in-process history remembers.",
        "gauge",
        h.usage.sources as u64,
    );
    one(
        "dnsexfil_history_evicted_sources_total",
        "Sources evicted from the in-process history to stay within its cap.",
        "counter",
        h.usage.evicted_sources,
    );
    one(
        "dnsexfil_history_recorded_total",
        "(source, name, bucket) the history had not seen before.",
        "counter",
        h.recorded,
    );
    one(
        "dnsexfil_history_skipped_total",
        "Events not remembered: older than the window, a name or source too long, or a source already holding its share of the in-process cap.",
        "counter",
        h.skipped,
    );
    one(
        "dnsexfil_history_dropped_batches_total",
        "Requests' events not written to Redis (it failed, or too many writes were pending).",
        "counter",
        h.dropped_batches,
    );
    one(
        "dnsexfil_history_degraded",
        "1 while the history store's last call failed (requests are scored from their own events).",
        "gauge",
        h.degraded as u64,
    );
    header(
        out,
        "dnsexfil_history_errors_total",
        "Failed calls to the history store, by operation.",
        "counter",
    );
    let _ = writeln!(
        out,
        "dnsexfil_history_errors_total{{operation=\"record\"}} {}",
        h.record_errors
    );
    let _ = writeln!(
        out,
        "dnsexfil_history_errors_total{{operation=\"read\"}} {}",
        h.read_errors
    );
    header(
        out,
        "dnsexfil_history_info",
        "The history store the service runs with (value 1).",
        "gauge",
    );
    let _ = writeln!(out, "dnsexfil_history_info{{store=\"{}\"}} 1", h.kind);
    if let Some(redis) = h.redis {
        let operations = [
            ("record", redis.record),
            ("read", redis.source),
            ("forget", redis.forget),
            ("prior", redis.prior),
        ];
        let families: [(&str, &str, fn(&crate::history::redis::OperationStats) -> String); 4] = [
            (
                "dnsexfil_history_redis_calls_total",
                "Calls to Redis, by operation.",
                |o| o.calls.to_string(),
            ),
            (
                "dnsexfil_history_redis_errors_total",
                "Calls to Redis that failed (time-outs included), by operation.",
                |o| o.errors.to_string(),
            ),
            (
                "dnsexfil_history_redis_timeouts_total",
                "Calls to Redis that failed by taking longer than the time limit, by operation.",
                |o| o.timeouts.to_string(),
            ),
            (
                "dnsexfil_history_redis_seconds_total",
                "Time spent in calls to Redis, by operation (divide by the calls for the mean latency).",
                |o| format!("{}", o.latency_micros as f64 / 1e6),
            ),
        ];
        for (name, help, value) in families {
            header(out, name, help, "counter");
            for (operation, stats) in &operations {
                let _ = writeln!(out, "{name}{{operation=\"{operation}\"}} {}", value(stats));
            }
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(
    out: &mut String,
    name: &str,
    help: &str,
    names: &[&str],
    values: &BTreeMap<Labels, u64>,
) {
    header(out, name, help, "counter");
    for (labels, v) in values {
        let _ = writeln!(out, "{name}{} {v}", label_text(names, labels, None));
    }
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    names: &[&str],
    values: &BTreeMap<Labels, Histogram>,
) {
    header(out, name, help, "histogram");
    for (labels, h) in values {
        let mut cumulative = 0;
        for (i, count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{} {cumulative}",
                label_text(names, labels, Some(&le))
            );
        }
        let plain = label_text(names, labels, None);
        let _ = writeln!(out, "{name}_sum{plain} {}", h.sum);
        let _ = writeln!(out, "{name}_count{plain} {}", h.count());
    }
}

/// `{a="x",b="y"}` (with `le` last for buckets), values escaped as the format requires.
fn label_text(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        return String::new();
    }
    format!("{{{}}}", parts.join(","))
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_found_again_by_its_label_values() {
        let mut map: BTreeMap<Labels, u64> = BTreeMap::new();
        for labels in [
            ["/apply", "POST", "200"],
            ["/apply", "POST", "500"],
            ["/apply", "POST", "200"],
        ] {
            *series(&mut map, &labels) += 1;
        }
        *series(&mut map, &["/fit", "POST", "200"]) += 5;
        let key = |labels: [&str; 3]| labels.map(String::from).to_vec();
        assert_eq!(map.len(), 3);
        assert_eq!(map[&key(["/apply", "POST", "200"])], 2);
        assert_eq!(map[&key(["/apply", "POST", "500"])], 1);
        assert_eq!(map[&key(["/fit", "POST", "200"])], 5);
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut h = Histogram::default();
        h.observe(0.0004);
        h.observe(0.003);
        h.observe(500.0);
        let mut values = BTreeMap::new();
        values.insert(vec!["/x".to_string()], h);
        let mut out = String::new();
        histogram(&mut out, "t_seconds", "help", &["route"], &values);
        assert!(
            out.contains("t_seconds_bucket{route=\"/x\",le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{route=\"/x\",le=\"0.0025\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{route=\"/x\",le=\"0.005\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{route=\"/x\",le=\"120\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("t_seconds_bucket{route=\"/x\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("t_seconds_count{route=\"/x\"} 3\n"), "{out}");
        assert!(
            out.contains("t_seconds_sum{route=\"/x\"} 500.0034\n"),
            "{out}"
        );
    }

    #[test]
    fn label_values_are_escaped_and_methods_bounded() {
        assert_eq!(
            label_text(&["a"], &["x\"y\\z\nw".to_string()], None),
            "{a=\"x\\\"y\\\\z\\nw\"}"
        );
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
