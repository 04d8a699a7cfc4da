//! The history shared by replicas, against a real `redis-server` started for each test (on
//! 127.0.0.1, a free port, no persistence, in a temporary directory, killed when the test
//! ends): the same answers as the in-process store for the same batches, two stores (two
//! replicas) seeing each other's records, `forget`, keys expiring, Redis dying and coming back
//! under a store that keeps running, a store made while Redis is down, a bad URL.
//!
//! `redis-server` must be on PATH (CI installs it): without it these tests fail, they do not
//! skip.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dnsexfil::features::prior::PriorKeys;
use dnsexfil::history::memory::MemoryHistory;
use dnsexfil::history::redis::{self as store, RedisHistory};
use dnsexfil::history::{Batch, HistoryConfig, HistoryError, HistoryStore, Observation};

/// A `redis-server` of this test's own.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn redis_server_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server is not on PATH: these tests need a real Redis (6.2 or later); \
                 install it (Debian: apt-get install redis-server; .ci/run does)"
            )
        })
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again) on its port, and waits until it answers.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut connection) = client.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut connection).is_ok() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL) and waits until its port refuses connections.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends it a signal (`STOP` freezes it, `CONT` resumes it).
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn config() -> HistoryConfig {
    HistoryConfig {
        window_seconds: 3600,
        bucket_seconds: 300,
        max_bytes: 64 << 20,
    }
}

/// A bucket-aligned time, so that no bucket straddles the window's start.
const T0: i64 = 1_800_000_000;

fn batch(events: &[(String, String, i64)], now: i64) -> Batch {
    let observations: Vec<Observation> = events
        .iter()
        .map(|(src, query, time)| Observation {
            src,
            query,
            time: *time,
        })
        .collect();
    Batch::from_observations(&observations, now, &config())
}

fn event(src: &str, query: &str, time: i64) -> (String, String, i64) {
    (src.to_string(), query.to_string(), time)
}

/// `count` random-ish events as of `now`, across 6 sources, 9 domains, 40 names, and times
/// from an hour and a half before `now` to a little after it.
fn random_events(seed: u64, count: usize, now: i64) -> Vec<(String, String, i64)> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let domains = [
        "tunnel.net",
        "example.com",
        "cloudfront.net",
        "bbc.co.uk",
        "x.y.z.example.org",
        "a-b.io",
        "weird_name.local",
        "xn--bcher-kva.example",
        "odd:chars.com",
    ];
    (0..count)
        .map(|_| {
            let src = format!("10.0.0.{}", next(6));
            let domain = domains[next(domains.len() as u64) as usize];
            let name = format!("n{}.{domain}", next(40));
            let time = now - 5400 + next(5500) as i64;
            (src, name, time)
        })
        .collect()
}

fn sources() -> Vec<String> {
    (0..6).map(|i| format!("10.0.0.{i}")).collect()
}

#[tokio::test]
async fn the_same_batches_give_the_same_answers_as_the_in_process_store() {
    let server = RedisServer::start();
    let redis = RedisHistory::new(&server.url(), config()).unwrap();
    let memory = MemoryHistory::new(config());
    let mut steps = Vec::new();
    // Three requests, the first re-sent, then one after the window moved half an hour (with
    // events older than the new window's start: they are not kept).
    let first = random_events(1, 150, T0);
    steps.push((first.clone(), T0));
    steps.push((random_events(2, 150, T0), T0));
    steps.push((random_events(3, 100, T0), T0));
    steps.push((first, T0));
    steps.push((random_events(4, 200, T0 + 1800), T0 + 1800));
    for (step, (events, now)) in steps.iter().enumerate() {
        let in_redis = redis.record(batch(events, *now), *now).await.unwrap();
        let in_memory = memory.record(batch(events, *now), *now).await.unwrap();
        assert_eq!(in_redis.new, in_memory.new, "step {step}");
        if step == 3 {
            assert_eq!(in_redis.new, 0, "a re-sent request adds nothing");
        } else {
            assert!(in_redis.new > 0, "step {step}");
        }
        for src in sources() {
            let from_redis = redis.source(&src, *now).await.unwrap();
            let from_memory = memory.source(&src, *now).await.unwrap();
            assert_eq!(from_redis, from_memory, "step {step}, source {src}");
        }
    }
    // And as the window keeps moving, without any further write.
    for now in [T0 + 3600, T0 + 5400, T0 + 7200] {
        for src in sources() {
            let from_redis = redis.source(&src, now).await.unwrap();
            let from_memory = memory.source(&src, now).await.unwrap();
            assert_eq!(from_redis, from_memory, "at {now}, source {src}");
        }
    }
    assert!(redis.source("10.0.0.1", T0 + 1800).await.unwrap().is_some());
    assert!(redis.source("10.0.0.1", T0 + 7200).await.unwrap().is_none());
    assert!(redis.source("never", T0).await.unwrap().is_none());
}

/// The long-window prior of every (source, domain) pair the events touch.
fn prior_keys_of(events: &[(String, String, i64)]) -> PriorKeys {
    let mut keys = PriorKeys::default();
    for (src, query, _) in events {
        let domain = query
            .split_once('.')
            .map_or(query.as_str(), |(_, rest)| rest);
        let pair = (src.clone(), domain.to_string());
        if !keys.pairs.contains(&pair) {
            keys.pairs.push(pair);
        }
        if !keys.sources.contains(src) {
            keys.sources.push(src.clone());
        }
    }
    keys
}

#[tokio::test]
async fn the_prior_of_a_request_is_the_same_as_the_in_process_stores() {
    let server = RedisServer::start();
    let redis = RedisHistory::new(&server.url(), config()).unwrap();
    let memory = MemoryHistory::new(config());
    let events = random_events(7, 400, T0);
    redis.record(batch(&events, T0), T0).await.unwrap();
    memory.record(batch(&events, T0), T0).await.unwrap();
    let mut keys = prior_keys_of(&events);
    keys.pairs
        .push(("10.0.0.1".into(), "never-seen.example".into()));
    keys.sources.push("never".into());
    let mut nonzero = 0;
    for (before, now) in [
        (T0, T0),
        (T0 - 1200, T0),
        (T0 + 600, T0 + 600),
        (T0, T0 + 2400),
    ] {
        let from_redis = redis.prior(keys.clone(), before, now).await.unwrap();
        let from_memory = memory.prior(keys.clone(), before, now).await.unwrap();
        for (src, domain) in &keys.pairs {
            let pair = from_redis.pair(src, domain);
            assert_eq!(
                pair,
                from_memory.pair(src, domain),
                "{src} {domain} before {before} at {now}"
            );
            assert!(pair.distinct_names <= pair.name_buckets);
            nonzero += usize::from(pair.distinct_names > 0);
        }
        for src in &keys.sources {
            assert_eq!(
                from_redis.source(src),
                from_memory.source(src),
                "{src} before {before} at {now}"
            );
        }
    }
    assert!(nonzero > 20, "the events are remembered: {nonzero}");
    let prior = redis.prior(keys.clone(), T0, T0).await.unwrap();
    assert_eq!(
        prior.pair("10.0.0.1", "never-seen.example").distinct_names,
        0
    );
    assert_eq!(prior.source("never").domains, 0);
    // Nothing before the first event, and nothing once the window has moved past them all.
    let earliest = events.iter().map(|e| e.2).min().unwrap();
    assert!(redis
        .prior(keys.clone(), earliest, T0)
        .await
        .unwrap()
        .pairs
        .values()
        .all(|p| p.distinct_names == 0));
    let later = redis.prior(keys, T0 + 7200, T0 + 7200).await.unwrap();
    assert!(later.pairs.values().all(|p| p.distinct_names == 0));
}

/// What sources sent before a request, sorted for comparison.
fn sorted(mut earlier: Vec<dnsexfil::history::Earlier>) -> Vec<(String, String, i64)> {
    let mut out: Vec<(String, String, i64)> =
        earlier.drain(..).map(|e| (e.src, e.name, e.time)).collect();
    out.sort();
    out
}

#[tokio::test]
async fn the_earlier_events_of_a_request_are_the_in_process_stores() {
    let server = RedisServer::start();
    let redis = RedisHistory::new(&server.url(), config()).unwrap();
    let memory = MemoryHistory::new(config());
    let events = random_events(11, 400, T0);
    redis.record(batch(&events, T0), T0).await.unwrap();
    memory.record(batch(&events, T0), T0).await.unwrap();
    let mut asked = sources();
    asked.push("never".into());
    let mut read = 0;
    let mut capped = 0;
    // Caps above and below what a source sent in the range (about 40 names over 9 domains,
    // some of them seen again after the range): both stores keep the same most recent ones.
    for per_source in [50, 10, 3] {
        for (from, before) in [(T0 - 3600, T0), (T0 - 3600, T0 - 600), (T0, T0 + 600)] {
            let from_redis = sorted(
                redis
                    .earlier(asked.clone(), from, before, per_source)
                    .await
                    .unwrap(),
            );
            let from_memory = sorted(
                memory
                    .earlier(asked.clone(), from, before, per_source)
                    .await
                    .unwrap(),
            );
            assert_eq!(from_redis, from_memory, "[{from}, {before}) {per_source}");
            assert!(from_redis
                .iter()
                .all(|(_, _, time)| (from..before).contains(time)));
            for src in &asked {
                let of_source = from_redis.iter().filter(|(s, _, _)| s == src).count();
                assert!(of_source <= per_source);
                capped += usize::from(of_source == per_source);
            }
            read += from_redis.len();
        }
    }
    assert!(read > 100, "the events are read back: {read}");
    assert!(capped > 6, "the caps bind: {capped}");
}

#[tokio::test]
async fn two_replicas_see_each_others_records_and_forgets() {
    let server = RedisServer::start();
    let one = RedisHistory::new(&server.url(), config()).unwrap();
    let two = RedisHistory::new(&server.url(), config()).unwrap();
    let now = T0;
    let events = [
        event("h", "a.tunnel.net", now - 10),
        event("h", "b.tunnel.net", now - 20),
    ];
    assert_eq!(one.record(batch(&events, now), now).await.unwrap().new, 2);
    // The other replica sees them, and counts them once when the same events reach it.
    let report = two.source("h", now).await.unwrap().unwrap();
    assert_eq!((report.distinct_names, report.name_buckets), (2, 2));
    assert_eq!(two.record(batch(&events, now), now).await.unwrap().new, 0);
    let more = [
        event("h", "c.tunnel.net", now),
        event("h", "a.tunnel.net", now - 400),
    ];
    assert_eq!(two.record(batch(&more, now), now).await.unwrap().new, 2);
    let report = one.source("h", now).await.unwrap().unwrap();
    assert_eq!((report.distinct_names, report.name_buckets), (3, 4));
    assert_eq!(report.domains[0].domain, "tunnel.net");
    // T0 is bucket-aligned: now - 10 and now - 20 are in the bucket before now's.
    assert_eq!(report.domains[0].active_buckets, 3);
    assert_eq!((report.first_seen, report.last_seen), (now - 400, now));
    assert_eq!(report.domains[0].recent_names[0], "c.tunnel.net");
    // One forgets, the other sees it gone.
    assert!(two.forget("h").await.unwrap());
    assert!(one.source("h", now).await.unwrap().is_none());
    assert!(!one.forget("h").await.unwrap());
}

#[tokio::test]
async fn forget_deletes_every_key_of_the_source_and_only_them() {
    let server = RedisServer::start();
    let history = RedisHistory::new(&server.url(), config()).unwrap();
    let now = T0;
    // Sources and domains with the key separator in them cannot reach each other's keys.
    let events = [
        event("a:b", "x.c.example.com", now),
        event("a:b", "y.tunnel.net", now),
        event("a:b", "z.cloudfront.net", now),
        event("a", "q.b.example.com", now),
    ];
    history.record(batch(&events, now), now).await.unwrap();
    let mut raw = server.connection();
    let keys = |raw: &mut redis::Connection| -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", store::KEY_PREFIX))
            .query(raw)
            .unwrap();
        keys.sort();
        keys
    };
    // Two domain sets, four names keys.
    assert_eq!(keys(&mut raw).len(), 2 + 4, "{:?}", keys(&mut raw));
    assert_eq!(
        history
            .source("a", now)
            .await
            .unwrap()
            .unwrap()
            .distinct_names,
        1
    );
    assert!(history.forget("a:b").await.unwrap());
    assert!(history.source("a:b", now).await.unwrap().is_none());
    assert_eq!(
        keys(&mut raw),
        [
            store::names_key("a", "example.com"),
            store::domains_key("a")
        ]
    );
    assert!(history.source("a", now).await.unwrap().is_some());
    assert!(!history.forget("a:b").await.unwrap());
    assert_eq!(history.stats().forget.calls, 2);
}

#[tokio::test]
async fn every_key_expires_within_the_window_and_a_bucket() {
    let server = RedisServer::start();
    let history = RedisHistory::new(&server.url(), config()).unwrap();
    let now = T0;
    let events = [
        event("h", "a.tunnel.net", now),
        event("h", "b.example.com", now - 1000),
    ];
    history.record(batch(&events, now), now).await.unwrap();
    let mut raw = server.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", store::KEY_PREFIX))
        .query(&mut raw)
        .unwrap();
    assert_eq!(keys.len(), 3);
    let limit = config().window_seconds + config().bucket_seconds;
    for key in &keys {
        let ttl: i64 = redis::cmd("TTL").arg(key).query(&mut raw).unwrap();
        assert!(ttl > 0 && ttl <= limit, "{key}: TTL {ttl}");
    }
    // A key lasting a second (as if its expiry were near) is refreshed by the next write.
    let key = store::names_key("h", "tunnel.net");
    let _: () = redis::cmd("EXPIRE")
        .arg(&key)
        .arg(1)
        .query(&mut raw)
        .unwrap();
    history
        .record(batch(&[event("h", "c.tunnel.net", now)], now), now)
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut raw).unwrap();
    assert!(ttl > limit - 60 && ttl <= limit, "TTL {ttl}");
}

#[tokio::test]
async fn a_large_batch_is_written_in_a_few_pipelines() {
    let server = RedisServer::start();
    let history = RedisHistory::new(&server.url(), config()).unwrap();
    let now = T0;
    let events: Vec<(String, String, i64)> = (0..12_000)
        .map(|i| event(&format!("s{}", i % 3), &format!("n{i}.d{}.com", i % 7), now))
        .collect();
    let recorded = history.record(batch(&events, now), now).await.unwrap();
    assert_eq!(recorded.new, 12_000);
    let stats = history.stats().record;
    assert_eq!((stats.calls, stats.round_trips, stats.errors), (1, 3, 0));
    let report = history.source("s1", now).await.unwrap().unwrap();
    assert_eq!(report.distinct_names, 4_000);
    assert_eq!(history.stats().source.round_trips, 2);
}

/// Asserts `result` is the failure of a store whose Redis is gone or frozen.
fn assert_failed<T: std::fmt::Debug>(result: Result<T, HistoryError>, what: &str) {
    match result {
        Err(HistoryError::Unreachable { .. } | HistoryError::TimedOut { .. }) => {}
        other => panic!("{what}: {other:?}"),
    }
}

#[tokio::test]
async fn a_store_outlives_redis_dying_and_coming_back() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let history = RedisHistory::with_timeout(&server.url(), config(), timeout).unwrap();
    let now = T0;
    let first = [event("h", "a.tunnel.net", now)];
    assert_eq!(
        history.record(batch(&first, now), now).await.unwrap().new,
        1
    );

    server.kill();
    // Every call fails fast, none hangs.
    for round in 0..3 {
        let started = Instant::now();
        assert_failed(
            history.record(batch(&first, now), now).await,
            "record while down",
        );
        assert_failed(history.source("h", now).await, "source while down");
        assert_failed(history.forget("h").await, "forget while down");
        let spent = started.elapsed();
        assert!(
            spent < 3 * timeout + Duration::from_millis(500),
            "round {round}: three calls took {spent:?}"
        );
    }
    let errors = history.stats();
    assert_eq!(
        (
            errors.record.errors,
            errors.source.errors,
            errors.forget.errors
        ),
        (3, 3, 3)
    );

    // Back on the same port (empty: no persistence): the same store writes again at once.
    server.restart();
    let second = [event("h", "b.tunnel.net", now)];
    assert_eq!(
        history.record(batch(&second, now), now).await.unwrap().new,
        1
    );
    let report = history.source("h", now).await.unwrap().unwrap();
    assert_eq!(report.distinct_names, 1);

    // Frozen (it accepts nothing and answers nothing): the call gives up at the time limit.
    server.signal("STOP");
    let started = Instant::now();
    let result = history.source("h", now).await;
    let spent = started.elapsed();
    server.signal("CONT");
    assert!(
        matches!(result, Err(HistoryError::TimedOut { millis: 300 })),
        "{result:?}"
    );
    assert!(
        spent < timeout + Duration::from_millis(400),
        "took {spent:?}"
    );
    assert!(history.stats().source.timeouts >= 1);
    // And answers again once it resumes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match history.source("h", now).await {
            Ok(report) => {
                assert!(report.is_some());
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_store_made_while_redis_is_down_works_once_it_is_up() {
    let mut server = RedisServer::start();
    server.kill();
    let history = RedisHistory::new(&server.url(), config()).unwrap();
    let now = T0;
    let events = [event("h", "a.tunnel.net", now)];
    let started = Instant::now();
    match history.record(batch(&events, now), now).await {
        Err(HistoryError::Unreachable { error }) => {
            assert!(error.to_lowercase().contains("refused"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    server.restart();
    assert_eq!(
        history.record(batch(&events, now), now).await.unwrap().new,
        1
    );
}

#[test]
fn a_bad_url_is_a_clear_error() {
    for url in [
        "redis://",
        "redis://localhost:port/0",
        "redis://localhost:6379/zero",
        "localhost:6379",
    ] {
        let error = RedisHistory::new(url, config()).err().expect(url);
        assert!(matches!(error, HistoryError::BadUrl { .. }), "{url}");
        let message = error.to_string();
        assert!(message.contains("redis://host:port/db"), "{url}: {message}");
    }
}

// Two `dnsexfil serve` replicas sharing one Redis, over HTTP: one history, and Redis dying and
// coming back under them.

mod common;

fn serve_with_redis(url: &str) -> common::ServedBinary {
    common::ServedBinary::start(&[
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--history".as_ref(),
        url.as_ref(),
    ])
}

/// `POST /v1/score` of `events`; the probabilities, in order.
fn score(served: &common::ServedBinary, events: serde_json::Value) -> Vec<f64> {
    common::dev_stream::score_results(served, events)
        .iter()
        .map(|r| r["probability"].as_f64().unwrap())
        .collect()
}

/// `GET /v1/history/{src}`: status and body.
fn history_of(served: &common::ServedBinary, src: &str) -> (u16, serde_json::Value) {
    let resp = common::TestServer::client()
        .get(format!("http://{}/v1/history/{src}", served.address))
        .header("Authorization", format!("Bearer {}", common::TOKEN))
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.json().unwrap())
}

fn metric(served: &common::ServedBinary, line_start: &str) -> f64 {
    let text = common::TestServer::client()
        .get(format!("http://{}/metrics", served.address))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(line_start))
        .unwrap_or_else(|| panic!("no `{line_start}` in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn two_replicas_share_one_history_and_score_on_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let (a, b) = (
        serve_with_redis(&redis.url()),
        serve_with_redis(&redis.url()),
    );
    let t = dnsexfil::history::unix_now() - 60;
    let event = |i: i64| serde_json::json!({"src": "10.7.7.7", "query": format!("{i:04x}beef.tunnel-r.net"), "time": t + i});
    // What replica A is sent, replica B shows (A writes in the background: wait for it).
    let before = score(&a, serde_json::json!([event(1), event(2)]));
    common::wait_until(common::PATIENCE, "B to see A's events", || {
        history_of(&b, "10.7.7.7").1["distinct_names"] == 2
    });
    assert_eq!(metric(&a, "dnsexfil_history_degraded "), 0.0);
    assert!(
        metric(
            &a,
            "dnsexfil_history_redis_calls_total{operation=\"record\"} "
        ) >= 1.0
    );

    // Redis dies: scoring answers as before, the history says it is unavailable, and the
    // replica says it is degraded.
    redis.kill();
    assert_eq!(score(&a, serde_json::json!([event(1), event(2)])), before);
    common::wait_until(common::PATIENCE, "A to count the failed write", || {
        metric(&a, "dnsexfil_history_errors_total{operation=\"record\"} ") >= 1.0
    });
    assert_eq!(metric(&a, "dnsexfil_history_degraded "), 1.0);
    let (status, answer) = history_of(&b, "10.7.7.7");
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "history_unavailable");

    // Redis comes back (empty: no persistence): the replicas resume without a restart.
    // A write may still meet the connection that broke (it is then dropped and counted): the
    // event is sent again until it lands, which a history counts once.
    redis.restart();
    common::wait_until(
        common::PATIENCE,
        "B to see A's event after Redis returned",
        || {
            score(&a, serde_json::json!([event(3)]));
            history_of(&b, "10.7.7.7").0 == 200
        },
    );
    assert_eq!(history_of(&b, "10.7.7.7").1["distinct_names"], 1);
    assert_eq!(metric(&a, "dnsexfil_history_degraded "), 0.0);
}

/// Streaming equivalence with Redis: the dev log's hour with the most tunnel events, sent in
/// 100-event requests alternately to two replicas sharing one Redis, gets the labels one
/// request gets, and exactly those the same stream gets from one in-process service.
#[test]
fn two_replicas_sharing_redis_label_a_streamed_hour_as_one_request_does() {
    use common::dev_stream::{dev_hour, dev_log, hours_by_tunnel_events, labels_of};
    let redis = RedisServer::start();
    let (a, b) = (
        serve_with_redis(&redis.url()),
        serve_with_redis(&redis.url()),
    );
    let (events, tunnels) = dev_log();
    let hour = dev_hour(&events, hours_by_tunnel_events(&events, &tunnels)[0]);
    let in_process = || serve_with_redis("memory");
    let one_request = labels_of(&in_process(), &hour);
    let alone = in_process();
    let streamed_in_process: Vec<Option<i64>> = hour
        .chunks(100)
        .flat_map(|part| labels_of(&alone, part))
        .collect();
    let writes = "dnsexfil_history_redis_calls_total{operation=\"record\"} ";
    let mut streamed = Vec::with_capacity(hour.len());
    for (k, part) in hour.chunks(100).enumerate() {
        let replica = if k % 2 == 0 { &a } else { &b };
        let written = metric(replica, writes);
        streamed.extend(labels_of(replica, part));
        // A replica writes to Redis in the background: the next request (to the other
        // replica) waits until this one's events are there, as a client's next batch would
        // a moment later.
        common::wait_until(common::PATIENCE, "the replica's write", || {
            metric(replica, writes) > written
        });
    }
    assert_eq!(metric(&a, "dnsexfil_history_degraded "), 0.0);
    let scored: Vec<usize> = (0..hour.len())
        .filter(|&i| one_request[i].is_some())
        .collect();
    let same = scored
        .iter()
        .filter(|&&i| streamed[i] == one_request[i])
        .count();
    assert!(scored.len() > 1_000, "{} scored", scored.len());
    assert!(
        same as f64 >= 0.99 * scored.len() as f64,
        "{same} of {} labels as in one request",
        scored.len()
    );
    assert_eq!(streamed, streamed_in_process);
}
