//! What the service remembers of each source across requests: which names it queried, under
//! which registered domain, in which time bucket, over a sliding window (24 hours by default).
//!
//! A request's events become a [`Batch`] (pure: grouped by source and ICANN-boundary domain,
//! deduplicated by (source, name, time bucket), so a re-sent window counts once); a
//! [`HistoryStore`] keeps batches: [`memory::MemoryHistory`] in the process (bounded by a cap in
//! bytes, evicting the least recently seen sources), [`redis::RedisHistory`] in a Redis shared by
//! replicas. [`History`] is the store the service was started with (or none), and what became
//! of what it was given.
//!
//! Nothing here knows HTTP or the command line; times are Unix seconds, and `now` is always
//! passed in (the service's clock when serving, the log's when a replay trains).

pub mod memory;
pub mod redis;
pub mod snapshot;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::features::prior::{Prior, PriorKeys};

/// How much history to keep and at what grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// The window: observations older than `now - window_seconds` are forgotten.
    pub window_seconds: i64,
    /// Time buckets: a name seen twice in one bucket counts once.
    pub bucket_seconds: i64,
    /// The most bytes the in-process store may hold (Redis is bounded by its own `maxmemory`).
    pub max_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            window_seconds: 24 * 3600,
            bucket_seconds: 300,
            max_bytes: 256 << 20,
        }
    }
}

/// Events claiming to be from further in the future than this are taken as happening now: a
/// skewed clock is tolerated, a client cannot push entries past the window's end.
pub const FUTURE_SLACK_SECONDS: i64 = 300;

/// Names longer than a DNS name can be are not remembered (the scoring still answers them).
pub const MAX_NAME_BYTES: usize = 253;
/// Sources longer than this are not remembered (an address or host name is far shorter).
pub const MAX_SOURCE_BYTES: usize = 255;

/// One event to remember.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub src: &'a str,
    pub query: &'a str,
    /// When it happened (Unix seconds); the arrival time when the client gave none.
    pub time: i64,
}

/// One (name, bucket) of a batch, with the earliest time it was seen in that bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameSeen {
    /// Lower case, without a final dot.
    pub name: String,
    pub bucket: i64,
    pub time: i64,
}

/// A request's observations grouped by source and domain, deduplicated, within the window.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// (source, domain) -> its distinct (name, bucket), in first-seen order; a source's groups
    /// side by side (the store writes a run of one source's groups under one lock; a source
    /// met again later is still right, only slower).
    pub groups: Vec<Group>,
    /// Observations left out: older than the window, or a name or source too long.
    pub skipped: usize,
}

/// Everything a store holds of one source (what a snapshot writes).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SourceEntries {
    pub src: String,
    pub domains: Vec<DomainEntries>,
}

/// Everything a store holds of one (source, domain).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DomainEntries {
    pub domain: String,
    /// (name, the earliest time it was seen in each of its buckets).
    pub names: Vec<(String, Vec<i64>)>,
}

/// One (source, domain) of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub src: String,
    /// The registered domain at the ICANN boundary (`cloudfront.net` for every CloudFront name;
    /// `.` for a name under no possible top-level domain).
    pub domain: String,
    pub names: Vec<NameSeen>,
}

impl Batch {
    /// Groups `observations` as of `now`. Linear in the observations; the texts are copied and
    /// split into their domain once per distinct (source, name, bucket), and rows that repeat
    /// one (most of a busy host's) cost a lookup of borrowed text.
    pub fn from_observations(
        observations: &[Observation<'_>],
        now: i64,
        config: &HistoryConfig,
    ) -> Batch {
        use std::hash::BuildHasher;
        let oldest = now - config.window_seconds;
        let mut batch = Batch::default();
        // (src, query as sent, bucket) -> its earliest time, in first-seen order.
        // Sized for every observation up front: growing it rehashed every key several times
        // (a sixth of the batch's instructions for 16,384 mostly distinct rows).
        let mut first_of: FxHashMap<(&str, &str, i64), usize> =
            FxHashMap::with_capacity_and_hasher(observations.len(), Default::default());
        let mut distinct: Vec<(&str, &str, i64, i64)> = Vec::with_capacity(observations.len());
        for observation in observations {
            let time = observation.time.min(now + FUTURE_SLACK_SECONDS);
            let query = observation.query.trim_end_matches('.');
            if time < oldest
                || query.is_empty()
                || query.len() > MAX_NAME_BYTES
                || observation.src.is_empty()
                || observation.src.len() > MAX_SOURCE_BYTES
            {
                batch.skipped += 1;
                continue;
            }
            let bucket = time.div_euclid(config.bucket_seconds);
            let next = distinct.len();
            let at = *first_of
                .entry((observation.src, query, bucket))
                .or_insert(next);
            if at == next {
                distinct.push((observation.src, query, bucket, time));
            } else {
                distinct[at].3 = distinct[at].3.min(time);
            }
        }
        drop(first_of);
        // (source, hash of the domain) -> its group, checked against the group's domain (a
        // collision makes a second group of that pair, which the store merges); source -> its
        // first-seen rank. No copy of a text is made to look one up.
        let mut group_of: FxHashMap<(&str, u64), usize> = FxHashMap::default();
        let mut rank_of_source: FxHashMap<&str, usize> = FxHashMap::default();
        let mut rank_of_group: Vec<usize> = Vec::new();
        // (group, hash of the lower-case name, bucket) -> its place in the group: names that
        // differ only in case meet here. The hash keys it without another copy of the name; a
        // collision is told apart by comparing the names.
        let mut seen: FxHashMap<(usize, u64, i64), usize> =
            FxHashMap::with_capacity_and_hasher(distinct.len(), Default::default());
        let hasher = rustc_hash::FxBuildHasher;
        // Each name's key and ICANN domain depend on it alone: on both cores for a large batch.
        // The domain is kept as where it starts in the name (`None`: the root `.`), copied
        // only for a group's first name.
        let name_and_domain = |&(_, query, _, _): &(&str, &str, i64, i64)| {
            let name = normalise(query);
            let domain = crate::features::v3::icann_domain_of(&name);
            let start = (domain != ".").then(|| name.len() - domain.len());
            (name, start)
        };
        let named: Vec<(String, Option<usize>)> =
            if crate::util::pool::worth_splitting(distinct.len()) {
                use rayon::prelude::*;
                distinct
                    .par_iter()
                    .with_min_len(1024)
                    .map(name_and_domain)
                    .collect()
            } else {
                distinct.iter().map(name_and_domain).collect()
            };
        for ((src, _, bucket, time), (name, start)) in distinct.into_iter().zip(named) {
            let domain = start.map_or(".", |start| &name[start..]);
            let pair = (src, hasher.hash_one(domain));
            let group = match group_of.get(&pair) {
                Some(&group) if batch.groups[group].domain == domain => group,
                _ => {
                    let group = batch.groups.len();
                    group_of.insert(pair, group);
                    let sources = rank_of_source.len();
                    rank_of_group.push(*rank_of_source.entry(src).or_insert(sources));
                    batch.groups.push(Group {
                        src: src.to_string(),
                        domain: domain.to_string(),
                        names: Vec::new(),
                    });
                    group
                }
            };
            let names = &mut batch.groups[group].names;
            let key = (group, hasher.hash_one(&name), bucket);
            match seen.get(&key) {
                Some(&at) if names[at].name == name => names[at].time = names[at].time.min(time),
                _ => {
                    seen.insert(key, names.len());
                    names.push(NameSeen { name, bucket, time });
                }
            }
        }
        // A source's groups side by side (sources in first-seen order), so the store writes each
        // source under one lock.
        let mut ranked: Vec<(usize, Group)> = rank_of_group.into_iter().zip(batch.groups).collect();
        ranked.sort_by_key(|&(rank, _)| rank);
        batch.groups = ranked.into_iter().map(|(_, group)| group).collect();
        batch
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// A name as the store keys it: lower case, no final dot.
pub fn normalise(query: &str) -> String {
    query.trim_end_matches('.').to_ascii_lowercase()
}

/// What a store did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// (source, name, bucket) the store had not seen before.
    pub new: usize,
    /// Sources evicted to stay within the memory cap.
    pub evicted_sources: usize,
    /// (source, name, bucket) not kept: their source already held its share of the cap.
    pub left_out: usize,
}

/// What the store remembers of one source, for an analyst.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceReport {
    pub src: String,
    pub window_seconds: i64,
    pub bucket_seconds: i64,
    /// Earliest and latest observation within the window (Unix seconds).
    pub first_seen: i64,
    pub last_seen: i64,
    /// Distinct names, and distinct (name, bucket): "queries" counted once per bucket.
    pub distinct_names: usize,
    pub name_buckets: usize,
    /// Its domains, most distinct names first.
    pub domains: Vec<DomainReport>,
}

/// One registered domain of a [`SourceReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainReport {
    pub domain: String,
    pub distinct_names: usize,
    pub name_buckets: usize,
    /// Buckets with at least one query: how long the source kept at it.
    pub active_buckets: usize,
    pub first_seen: i64,
    pub last_seen: i64,
    /// The most recently seen names, newest first (at most [`REPORT_NAMES`]).
    pub recent_names: Vec<String>,
}

/// Names listed per domain in a report.
pub const REPORT_NAMES: usize = 20;
/// Domains listed in a report (the counts cover them all).
pub const REPORT_DOMAINS: usize = 500;

/// One name of one domain as a store holds it: its buckets in the window.
#[derive(Debug, Clone)]
pub struct StoredName {
    pub name: String,
    pub bucket: i64,
    pub time: i64,
}

impl SourceReport {
    /// The report of `src` from its stored entries, grouped by domain (a domain at most once),
    /// all within the window; `None` when there are none. Both stores build their answer here.
    pub fn build(
        src: &str,
        domains: impl IntoIterator<Item = (String, Vec<StoredName>)>,
        config: &HistoryConfig,
    ) -> Option<SourceReport> {
        let mut reports: Vec<DomainReport> = domains
            .into_iter()
            .filter(|(_, names)| !names.is_empty())
            .map(|(domain, names)| DomainReport::build(domain, names))
            .collect();
        if reports.is_empty() {
            return None;
        }
        // A name lies under one domain: the source's totals are the domains' sums.
        let report = SourceReport {
            src: src.to_string(),
            window_seconds: config.window_seconds,
            bucket_seconds: config.bucket_seconds,
            first_seen: reports.iter().map(|d| d.first_seen).min().unwrap_or(0),
            last_seen: reports.iter().map(|d| d.last_seen).max().unwrap_or(0),
            distinct_names: reports.iter().map(|d| d.distinct_names).sum(),
            name_buckets: reports.iter().map(|d| d.name_buckets).sum(),
            domains: Vec::new(),
        };
        reports.sort_by(|a, b| {
            b.distinct_names
                .cmp(&a.distinct_names)
                .then_with(|| b.last_seen.cmp(&a.last_seen))
                .then_with(|| a.domain.cmp(&b.domain))
        });
        reports.truncate(REPORT_DOMAINS);
        Some(SourceReport {
            domains: reports,
            ..report
        })
    }
}

impl DomainReport {
    /// One domain's part of a report from its (name, bucket) entries (at least one).
    fn build(domain: String, mut names: Vec<StoredName>) -> DomainReport {
        names.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.name.cmp(&b.name)));
        let mut distinct = rustc_hash::FxHashSet::default();
        let mut buckets = rustc_hash::FxHashSet::default();
        let mut recent_names = Vec::new();
        for n in &names {
            if distinct.insert(n.name.as_str()) && recent_names.len() < REPORT_NAMES {
                recent_names.push(n.name.clone());
            }
            buckets.insert(n.bucket);
        }
        DomainReport {
            distinct_names: distinct.len(),
            name_buckets: names.len(),
            active_buckets: buckets.len(),
            // Sorted newest first.
            first_seen: names.last().map_or(0, |n| n.time),
            last_seen: names.first().map_or(0, |n| n.time),
            recent_names,
            domain,
        }
    }
}

/// Why a store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("the history store (Redis) is unreachable: {error}")]
    Unreachable { error: String },
    #[error("the history store (Redis) did not answer within {millis} ms")]
    TimedOut { millis: u64 },
    #[error("the history store (Redis) holds data this service cannot read: {error}")]
    Corrupt { error: String },
    #[error("`{url}` is not a Redis URL this service can use ({error}); the form is redis://host:port/db")]
    BadUrl { url: String, error: String },
}

/// Size and health figures for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes held (the in-process store's estimate; 0 for Redis, which reports its own).
    pub bytes: usize,
    pub sources: usize,
    /// Sources evicted to stay within the cap since start.
    pub evicted_sources: u64,
}

/// An event a source sent before a request, as the store remembers it: a name (lower case)
/// at the earliest time it was seen in its bucket. A request of our schemas is scored with
/// these as unscored rows (see [`History::earlier`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    pub src: String,
    pub name: String,
    pub time: i64,
}

/// What a request's sources sent in the hour before it (see [`History::earlier`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HourBefore {
    /// Where the hour read starts: a long-window read for the same request ends here.
    pub from: i64,
    pub events: Vec<Earlier>,
}

impl HourBefore {
    /// Bytes its events hold.
    pub fn held_bytes(&self) -> usize {
        self.events
            .iter()
            .map(|e| std::mem::size_of::<Earlier>() + e.src.len() + e.name.len())
            .sum()
    }
}

/// Adds to `earlier` the most recent `per_source` of `src`'s (name, time) entries, ties broken
/// by name, so that both stores keep the same ones; only the names kept are copied.
pub(crate) fn keep_most_recent<N: AsRef<str> + Into<String>>(
    src: &str,
    mut entries: Vec<(N, i64)>,
    per_source: usize,
    earlier: &mut Vec<Earlier>,
) {
    if entries.len() > per_source {
        entries.select_nth_unstable_by(per_source, |a, b| {
            b.1.cmp(&a.1).then_with(|| a.0.as_ref().cmp(b.0.as_ref()))
        });
        entries.truncate(per_source);
    }
    earlier.extend(entries.into_iter().map(|(name, time)| Earlier {
        src: src.to_string(),
        name: name.into(),
        time,
    }));
}

/// How far back a request's earlier events are read: its features describe an hour of a
/// source's queries, as the ESCU search sends them.
pub const EARLIER_SECONDS: i64 = 3_600;

/// Most earlier events read per source for one request (the most recent): a host that sent
/// more (name, bucket) entries in the hour before a request is described by these.
pub const EARLIER_PER_SOURCE: usize = 20_000;

/// Most sources of one request whose earlier events are read: a request from more sources
/// than this is scored from its own rows (it is a bulk upload, not a stream).
pub const EARLIER_MAX_SOURCES: usize = 1_000;

/// Most earlier events read for one request, all its sources together (each then gets at most
/// its share): a request's added rows stay within what one large request may bring.
pub const EARLIER_MAX_EVENTS: usize = 200_000;

/// A store of observations. Implementations are cheap to share (`&self`) across requests.
pub trait HistoryStore: Send + Sync {
    /// Adds a batch (as of `now`, which also expires what fell out of the window).
    fn record(
        &self,
        batch: Batch,
        now: i64,
    ) -> impl Future<Output = Result<Recorded, HistoryError>> + Send;

    /// What is remembered of `src` within the window ending at `now`.
    fn source(
        &self,
        src: &str,
        now: i64,
    ) -> impl Future<Output = Result<Option<SourceReport>, HistoryError>> + Send;

    /// Forgets everything about `src`; whether anything was remembered.
    fn forget(&self, src: &str) -> impl Future<Output = Result<bool, HistoryError>> + Send;

    /// What was remembered of `keys` at times in `[now - window, before)`, for the long-window
    /// features of a request whose events start at `before`.
    fn prior(
        &self,
        keys: PriorKeys,
        before: i64,
        now: i64,
    ) -> impl Future<Output = Result<Prior, HistoryError>> + Send;

    /// What `sources` sent at times in `[from, before)`, at most `per_source` (the most
    /// recent) per source.
    fn earlier(
        &self,
        sources: Vec<String>,
        from: i64,
        before: i64,
        per_source: usize,
    ) -> impl Future<Output = Result<Vec<Earlier>, HistoryError>> + Send;

    /// Size figures (for the in-process store; Redis reports zeros).
    fn usage(&self) -> Usage;
}

/// The store the service runs with.
#[derive(Clone)]
pub enum Backend {
    /// `--history off`: nothing is remembered.
    Off,
    Memory(Arc<memory::MemoryHistory>),
    Redis(Arc<redis::RedisHistory>),
}

/// Observations made into one batch at a time (see [`History::record`]).
pub const RECORD_PIECE: usize = 16_384;

/// Batches being written to Redis at once; more are dropped (and counted) rather than queued,
/// so a slow Redis cannot make recording hold the memory of every request.
pub const MAX_PENDING_WRITES: usize = 64;

/// The service's history: its store, and what became of what it was given.
///
/// Recording never delays or fails a request: the in-process store is written on the request's
/// own compute thread (it only takes locks), Redis in the background on the runtime the store
/// was opened on. When Redis cannot be reached the service is degraded: requests are scored from
/// their own rows, a warning is logged when it starts and when it ends, and `/metrics` counts it.
/// A clone shares the store and the counters.
#[derive(Clone)]
pub struct History {
    backend: Backend,
    runtime: Option<tokio::runtime::Handle>,
    pending_writes: Arc<tokio::sync::Semaphore>,
    counters: Arc<Counters>,
}

/// What became of recordings and reads (for `/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    /// (source, name, bucket) the store had not seen before.
    pub recorded: AtomicU64,
    /// Observations not remembered: too old, a name or source too long, or (in-process) a
    /// source already holding its share of the cap.
    pub skipped: AtomicU64,
    /// Batches not written: Redis was failing or too many writes were pending.
    pub dropped_batches: AtomicU64,
    /// Failed store calls, by operation.
    pub record_errors: AtomicU64,
    pub read_errors: AtomicU64,
    /// Whether the last call to the store failed.
    pub degraded: AtomicBool,
}

impl Counters {
    /// Notes a call's outcome; logs when the store becomes unreachable and when it is back.
    fn outcome<T>(&self, operation: &str, result: &Result<T, HistoryError>) {
        match result {
            Ok(_) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::warn!(operation, "history store reachable again");
                }
            }
            Err(error) => {
                match operation {
                    "record" => &self.record_errors,
                    _ => &self.read_errors,
                }
                .fetch_add(1, Ordering::Relaxed);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(operation, %error,
                        "history store failing: requests are scored from their own rows until it answers again");
                }
            }
        }
    }
}

impl History {
    pub fn off() -> History {
        History::with_backend(Backend::Off, None)
    }

    pub fn memory(config: HistoryConfig) -> History {
        History::with_backend(
            Backend::Memory(Arc::new(memory::MemoryHistory::new(config))),
            None,
        )
    }

    /// A Redis store; its writes run on `runtime`.
    pub fn redis(store: redis::RedisHistory, runtime: tokio::runtime::Handle) -> History {
        History::with_backend(Backend::Redis(Arc::new(store)), Some(runtime))
    }

    fn with_backend(backend: Backend, runtime: Option<tokio::runtime::Handle>) -> History {
        History {
            backend,
            runtime,
            pending_writes: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_WRITES)),
            counters: Arc::new(Counters::default()),
        }
    }

    pub fn is_on(&self) -> bool {
        !matches!(self.backend, Backend::Off)
    }

    /// Whether the events of requests scored with `schema` are remembered: our schemas' are,
    /// the published ESCU model's are not (its features stay the published model's, per
    /// request).
    pub fn remembers(&self, schema: crate::features::Schema) -> bool {
        self.is_on() && schema != crate::features::Schema::EscuV1
    }

    /// The in-process store, when that is the backend (for its snapshot).
    pub fn in_process(&self) -> Option<&memory::MemoryHistory> {
        match &self.backend {
            Backend::Memory(store) => Some(store),
            _ => None,
        }
    }

    pub fn config(&self) -> Option<&HistoryConfig> {
        match &self.backend {
            Backend::Off => None,
            Backend::Memory(store) => Some(store.config()),
            Backend::Redis(store) => Some(store.config()),
        }
    }

    /// The kind, for logs and metrics: `off`, `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Off => "off",
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Remembers `observations` as of `now`. Called from a request's compute thread (never an
    /// async worker with a large batch: the in-process store is written right here).
    pub fn record(&self, observations: &[Observation<'_>], now: i64) {
        let Some(config) = self.config() else {
            return;
        };
        // In pieces: a batch's maps and copies cost a few hundred bytes a distinct name, which
        // for a whole 200,000-row request would add tens of MiB to its peak. Repeats across
        // pieces are found by the store, as repeats across requests are.
        let batch_of = |piece: &[Observation<'_>]| {
            let batch = Batch::from_observations(piece, now, config);
            self.counters
                .skipped
                .fetch_add(batch.skipped as u64, Ordering::Relaxed);
            (!batch.is_empty()).then_some(batch)
        };
        match &self.backend {
            Backend::Off => {}
            Backend::Memory(store) => {
                let store_one = |batch: Option<Batch>| {
                    let Some(batch) = batch else { return };
                    let recorded = store.record_now(batch, now);
                    self.counters
                        .recorded
                        .fetch_add(recorded.new as u64, Ordering::Relaxed);
                    self.counters
                        .skipped
                        .fetch_add(recorded.left_out as u64, Ordering::Relaxed);
                };
                // Pipelined for a large request: while one piece is written into the store, the
                // next one's batch is built on the other core (at most two batches alive), in
                // the pieces' order, so the store ends the same as one piece after another.
                let split = crate::util::pool::worth_splitting(observations.len());
                let mut pieces = observations.chunks(RECORD_PIECE);
                let mut built = pieces.next().and_then(batch_of);
                for piece in pieces {
                    let (next, ()) = crate::util::pool::join(
                        split,
                        || batch_of(piece),
                        || store_one(built.take()),
                    );
                    built = next;
                }
                store_one(built);
            }
            Backend::Redis(store) => {
                let batches: Vec<Batch> = observations
                    .chunks(RECORD_PIECE)
                    .filter_map(batch_of)
                    .collect();
                if batches.is_empty() {
                    return;
                }
                let (Some(runtime), Ok(permit)) = (
                    &self.runtime,
                    self.pending_writes.clone().try_acquire_owned(),
                ) else {
                    self.counters
                        .dropped_batches
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let store = store.clone();
                let counters = self.counters.clone();
                runtime.spawn(async move {
                    for batch in batches {
                        let result = store.record(batch, now).await;
                        counters.outcome("record", &result);
                        match result {
                            Ok(recorded) => counters
                                .recorded
                                .fetch_add(recorded.new as u64, Ordering::Relaxed),
                            Err(_) => {
                                counters.dropped_batches.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        };
                    }
                    drop(permit);
                });
            }
        }
    }

    pub async fn source(&self, src: &str, now: i64) -> Result<Option<SourceReport>, HistoryError> {
        let result = match &self.backend {
            Backend::Off => Ok(None),
            // A busy source's report copies thousands of names under its shard's lock: off the
            // async workers.
            Backend::Memory(store) => {
                let (store, src) = (store.clone(), src.to_string());
                Ok(
                    tokio::task::spawn_blocking(move || store.source_now(&src, now))
                        .await
                        .expect("a report does not panic"),
                )
            }
            Backend::Redis(store) => store.source(src, now).await,
        };
        self.counters.outcome("read", &result);
        result
    }

    pub async fn forget(&self, src: &str) -> Result<bool, HistoryError> {
        let result = match &self.backend {
            Backend::Off => Ok(false),
            // Freeing a busy source's names takes a while too.
            Backend::Memory(store) => {
                let (store, src) = (store.clone(), src.to_string());
                Ok(tokio::task::spawn_blocking(move || store.forget_now(&src))
                    .await
                    .expect("forgetting does not panic"))
            }
            Backend::Redis(store) => store.forget(src).await,
        };
        self.counters.outcome("forget", &result);
        result
    }

    /// What was remembered of `keys` before `before` (see [`HistoryStore::prior`]), as of
    /// `now`. Called from a request's compute thread, before its features. Never fails: with
    /// the history off, or Redis failing (degraded, logged and counted), the prior is empty and
    /// the request is scored from its own rows.
    pub fn prior(&self, keys: PriorKeys, before: i64, now: i64) -> Prior {
        match &self.backend {
            Backend::Off => Prior::default(),
            Backend::Memory(store) => store.prior_now(&keys, before, now),
            Backend::Redis(store) => self.read_blocking("prior", store.prior(keys, before, now)),
        }
    }

    /// What `sources` sent in the hour before a request's events, the request being scored as
    /// the last part of that hour: times from `latest - EARLIER_SECONDS + 1` to `earliest` (and
    /// within the window), where `earliest` and `latest` are its events' first and last times;
    /// at `earliest` itself, all but the request's own names (`first_second`: its (source,
    /// query) at that time), so events of one second sent in several requests see each other
    /// and a re-sent request never sees itself. A request that spans the hour (the ESCU
    /// search's) reads nothing; a stream cut into small requests is scored with what came
    /// before each, so its scores do not depend on how it was cut. `None` when there is nothing
    /// to read: the history off, a request spanning the hour, or more than
    /// [`EARLIER_MAX_SOURCES`] sources; with Redis failing (degraded, logged, counted) the
    /// events are empty. At most [`EARLIER_PER_SOURCE`] per source and [`EARLIER_MAX_EVENTS`] in
    /// all, the most recent (ties by name).
    pub fn earlier(
        &self,
        sources: Vec<String>,
        (earliest, latest): (i64, i64),
        first_second: &[(&str, &str)],
    ) -> Option<HourBefore> {
        let config = self.config()?;
        let oldest = unix_now() - config.window_seconds;
        let from = latest.saturating_sub(EARLIER_SECONDS - 1).max(oldest);
        if from >= earliest || sources.is_empty() || sources.len() > EARLIER_MAX_SOURCES {
            return None;
        }
        let per_source = EARLIER_PER_SOURCE.min(EARLIER_MAX_EVENTS / sources.len());
        let until = earliest.saturating_add(1);
        let mut events = match &self.backend {
            Backend::Off => return None,
            Backend::Memory(store) => store.earlier_now(&sources, from, until, per_source),
            Backend::Redis(store) => {
                self.read_blocking("prior", store.earlier(sources, from, until, per_source))
            }
        };
        let own: rustc_hash::FxHashSet<(&str, String)> = first_second
            .iter()
            .map(|&(src, query)| (src, normalise(query)))
            .collect();
        events.retain(|e| e.time != earliest || !own.contains(&(e.src.as_str(), e.name.clone())));
        Some(HourBefore { from, events })
    }

    /// Waits for a read of the Redis store from a request's thread; its default when the
    /// store fails (the outcome counted and logged) or cannot be waited for here.
    fn read_blocking<T: Default>(
        &self,
        operation: &str,
        read: impl Future<Output = Result<T, HistoryError>>,
    ) -> T {
        let Some(runtime) = &self.runtime else {
            return T::default();
        };
        let result = match tokio::runtime::Handle::try_current() {
            // A compute-pool thread: outside the runtime, it may wait for it.
            Err(_) => runtime.block_on(read),
            // An async worker (a small request): it hands its other tasks over while it waits
            // (the read is bounded by the store's timeout).
            Ok(current)
                if current.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(|| current.block_on(read))
            }
            Ok(_) => return T::default(),
        };
        self.counters.outcome(operation, &result);
        result.unwrap_or_default()
    }

    /// Calls, errors and latency of the Redis store, by operation (`None` without Redis).
    pub fn redis_stats(&self) -> Option<redis::RedisStats> {
        match &self.backend {
            Backend::Redis(store) => Some(store.stats()),
            _ => None,
        }
    }

    pub fn usage(&self) -> Usage {
        match &self.backend {
            Backend::Off => Usage::default(),
            Backend::Memory(store) => store.usage(),
            Backend::Redis(store) => store.usage(),
        }
    }
}

/// Unix seconds from a number of seconds (fractions dropped); `None` when not finite or beyond
/// the year 9999.
pub fn time_from_seconds(seconds: f64) -> Option<i64> {
    (seconds.is_finite() && seconds.abs() < 253_402_300_800.0).then(|| seconds.floor() as i64)
}

/// Unix seconds from an event's time as text: a number of seconds (`1735862391`,
/// `1735862391.250`, as Splunk's `_time`) or RFC 3339 (`2025-01-03T00:39:51Z`,
/// `2025-01-03T01:39:51.5+01:00`). `None` for anything else.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return time_from_seconds(seconds);
    }
    parse_rfc3339(text)
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, &d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    if b[at] == b'.' {
        at += 1;
        let start = at;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        if at == start {
            return None;
        }
    }
    let offset = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == b.len() && b[at + 3] == b':' => {
            let minutes = digits(at + 1..at + 3)? * 60 + digits(at + 4..at + 6)?;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's civil algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// The current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs<'a>(src: &'a str, query: &'a str, time: i64) -> Observation<'a> {
        Observation { src, query, time }
    }

    #[test]
    fn a_large_request_recorded_in_pipelined_pieces_leaves_the_store_as_piece_by_piece() {
        // Four and a half pieces of observations, sources and names repeating across pieces
        // and buckets, some too old: recorded at once (pipelined) and one piece per call. The
        // store is small enough that sources reach their share and are evicted, which depends on
        // the order the pieces are written in.
        let now = 2_000_000;
        let texts: Vec<(String, String, i64)> = (0..RECORD_PIECE * 9 / 2)
            .map(|i| {
                (
                    format!("10.0.{}.{}", i % 7, i % 13),
                    format!("n{}.d{}.example{}.com", i % 5_000, i % 11, i % 3),
                    now - (i as i64 * 37) % 90_000,
                )
            })
            .collect();
        let observations: Vec<Observation> = texts
            .iter()
            .map(|(src, query, time)| obs(src, query, *time))
            .collect();
        let config = HistoryConfig {
            max_bytes: 1 << 20,
            ..Default::default()
        };
        let at_once = History::memory(config.clone());
        at_once.record(&observations, now);
        let piece_by_piece = History::memory(config);
        for piece in observations.chunks(RECORD_PIECE) {
            piece_by_piece.record(piece, now);
        }
        let counters = |h: &History| {
            (
                h.counters().recorded.load(Ordering::Relaxed),
                h.counters().skipped.load(Ordering::Relaxed),
            )
        };
        assert_eq!(counters(&at_once), counters(&piece_by_piece));
        assert!(counters(&at_once).0 > 0 && counters(&at_once).1 > 0);
        assert_eq!(at_once.usage(), piece_by_piece.usage());
        assert!(at_once.usage().evicted_sources > 0, "{:?}", at_once.usage());
        for i in 0..7 * 13 {
            let src = format!("10.0.{}.{}", i % 7, i % 13);
            let report = |h: &History| h.in_process().unwrap().source_now(&src, now);
            assert_eq!(report(&at_once), report(&piece_by_piece), "{src}");
        }
    }

    #[test]
    fn a_batch_groups_by_source_and_icann_domain_and_counts_a_name_once_per_bucket() {
        let config = HistoryConfig::default();
        let now = 1_000_000;
        let batch = Batch::from_observations(
            &[
                obs("h1", "d1abc.cloudfront.net", now - 10),
                obs("h1", "D2XYZ.cloudfront.net.", now - 20),
                obs("h1", "d1abc.cloudfront.net", now - 30), // same bucket: once
                obs("h1", "d1abc.cloudfront.net", now - 900), // another bucket
                obs("h2", "a.example.com", now),
                obs("h1", "old.example.com", now - config.window_seconds - 1),
                obs("", "x.example.com", now),
            ],
            now,
            &config,
        );
        assert_eq!(batch.skipped, 2);
        assert_eq!(batch.groups.len(), 2);
        let cloudfront = &batch.groups[0];
        assert_eq!(
            (cloudfront.src.as_str(), cloudfront.domain.as_str()),
            ("h1", "cloudfront.net")
        );
        let names: Vec<(&str, i64)> = cloudfront
            .names
            .iter()
            .map(|n| (n.name.as_str(), n.time))
            .collect();
        assert_eq!(
            names,
            [
                ("d1abc.cloudfront.net", now - 30),
                ("d2xyz.cloudfront.net", now - 20),
                ("d1abc.cloudfront.net", now - 900)
            ]
        );
        assert_eq!(batch.groups[1].names.len(), 1);
    }

    #[test]
    fn a_request_recorded_in_pieces_counts_repeats_across_pieces_once() {
        let history = History::memory(HistoryConfig::default());
        let now = 50_000_000;
        let names: Vec<String> = (0..RECORD_PIECE + 100)
            .map(|i| format!("{i:x}.t.example.net"))
            .collect();
        // Every name twice, the second time in another piece.
        let observations: Vec<Observation> = names
            .iter()
            .chain(names.iter())
            .map(|q| obs("h", q, now))
            .collect();
        history.record(&observations, now);
        assert_eq!(
            history.counters().recorded.load(Ordering::Relaxed),
            names.len() as u64
        );
        let report = history.usage();
        assert_eq!(report.sources, 1);
    }

    #[test]
    fn event_times_are_read_as_seconds_or_rfc_3339() {
        assert_eq!(parse_time("1735862391"), Some(1_735_862_391));
        assert_eq!(parse_time(" 1735862391.750 "), Some(1_735_862_391));
        assert_eq!(parse_time("2025-01-03T00:39:51Z"), Some(1_735_864_791));
        assert_eq!(
            parse_time("2025-01-03T01:39:51.25+01:00"),
            Some(1_735_864_791)
        );
        assert_eq!(parse_time("2025-01-02T23:39:51-01:00"), Some(1_735_864_791));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        for bad in [
            "",
            "yesterday",
            "2025-13-03T00:39:51Z",
            "2025-01-03T00:39:51",
            "NaN",
            "inf",
            "1e300",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn future_times_are_taken_as_now_and_long_names_are_skipped() {
        let config = HistoryConfig::default();
        let long = format!("{}.example.com", "a".repeat(250));
        let batch = Batch::from_observations(
            &[obs("h", "x.example.com", 10_000_000), obs("h", &long, 100)],
            100,
            &config,
        );
        assert_eq!(batch.skipped, 1);
        assert_eq!(batch.groups[0].names[0].time, 100 + FUTURE_SLACK_SECONDS);
    }

    #[test]
    fn a_report_counts_names_buckets_and_lists_the_newest_names_first() {
        let config = HistoryConfig::default();
        let name = |name: &str, bucket: i64, time: i64| StoredName {
            name: name.to_string(),
            bucket,
            time,
        };
        let report = SourceReport::build(
            "h",
            [
                (
                    "example.com".to_string(),
                    vec![
                        name("a.example.com", 1, 300),
                        name("a.example.com", 2, 600),
                        name("b.example.com", 2, 650),
                    ],
                ),
                (
                    "tunnel.net".to_string(),
                    vec![
                        name("x1.tunnel.net", 3, 900),
                        name("x2.tunnel.net", 3, 910),
                        name("x3.tunnel.net", 4, 1200),
                    ],
                ),
                ("empty.org".to_string(), vec![]),
            ],
            &config,
        )
        .unwrap();
        assert_eq!((report.first_seen, report.last_seen), (300, 1200));
        assert_eq!((report.distinct_names, report.name_buckets), (5, 6));
        assert_eq!(report.domains.len(), 2);
        let tunnel = &report.domains[0];
        assert_eq!(tunnel.domain, "tunnel.net");
        assert_eq!((tunnel.distinct_names, tunnel.active_buckets), (3, 2));
        assert_eq!((tunnel.first_seen, tunnel.last_seen), (900, 1200));
        assert_eq!(tunnel.recent_names[0], "x3.tunnel.net");
        let example = &report.domains[1];
        assert_eq!((example.distinct_names, example.name_buckets), (2, 3));
        assert_eq!(example.recent_names, ["b.example.com", "a.example.com"]);
        assert!(SourceReport::build("h", Vec::new(), &config).is_none());
    }
}
