//! The history in a Redis shared by replicas (`--history redis://host:port/db`).
//!
//! # Data model
//!
//! Every key starts with [`KEY_PREFIX`] (`dnsexfil:h1:`; the `h1` is the layout's version). A
//! source is written length-prefixed (`<bytes>:<source>`), so no source or domain text, however
//! odd, can make two keys collide:
//!
//! | key | type | members | score |
//! |---|---|---|---|
//! | `dnsexfil:h1:s:<len>:<src>` | sorted set | the source's domains | the latest time seen under the domain |
//! | `dnsexfil:h1:n:<len>:<src>:<domain>` | sorted set | `<bucket>:<name>` (bucket in decimal) | the earliest time the name was seen in that bucket |
//!
//! Writing a batch, per (source, domain): entries older than the window (`now - window`) are
//! trimmed (`ZREMRANGEBYSCORE`), the names are added with `ZADD LT` (a new (name, bucket) is
//! added, a known one keeps the earlier of the two times: a re-sent window counts once, which
//! is what [`Recorded::new`] counts), and the key's expiry is set to the window plus a bucket;
//! the source's domain set gets the domain with `ZADD GT` (the latest time), the same trimming
//! and expiry. A source silent for a window and a bucket thus leaves no key behind, without any
//! sweep.
//! `ZADD GT`/`LT` need Redis 6.2 or later. The window is measured from the `now` each call is
//! given, the expiry by Redis's clock: a replay whose `now` is in the past still finds its keys
//! (they live a window after their last write), it only keeps them no longer.
//!
//! # Round trips
//!
//! - `record`: one pipeline per [`CHUNK_NAMES`] names of the batch (one for any request of
//!   ordinary size), never one per name;
//! - `source`: two, the source's domains in the window (the [`READ_DOMAINS`] most recently
//!   seen), then all their entries in one pipeline (the [`READ_NAMES_PER_DOMAIN`] most recent of
//!   each); the report is built by [`SourceReport::build`] like the in-process store's;
//! - `prior` (what a request's pairs and sources held before it, for the long-window
//!   features): one round trip of a Lua script per [`PRIOR_KEYS_PER_SCRIPT`] keys, in turn,
//!   which counts next to the data and answers a few integers per key;
//! - `forget`: one Lua script (`EVALSHA`, plus an `EVAL` the first time a Redis sees it) that
//!   deletes the domain set and every key it names, atomically. The script names keys it was not
//!   given, so this layout is for a single Redis (or a primary with replicas), not Redis Cluster.
//!
//! # Failures
//!
//! Nothing is connected when the store is made: the first call connects, so the service starts
//! (degraded) while Redis is down. The connection is a [`ConnectionManager`], which reconnects by
//! itself once a call finds it broken; a call that fails on a broken connection tries once more
//! on the new one, so the first call after Redis comes back succeeds. Each round trip (the
//! connection included) has a time limit ([`DEFAULT_TIMEOUT`] unless given; a record of `k`
//! chunks may thus take `k` limits): past it the call answers [`HistoryError::TimedOut`]; a
//! refused or dropped connection answers [`HistoryError::Unreachable`] with its cause.
//! [`RedisHistory::stats`] counts calls, errors, time-outs, round trips and the time spent, by
//! operation.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, RedisResult, Value};
use rustc_hash::FxHashMap;

use super::{
    Batch, Earlier, HistoryConfig, HistoryError, HistoryStore, Recorded, SourceReport, StoredName,
    Usage,
};
use crate::features::prior::{PairPrior, Prior, PriorKeys, SourcePrior};

/// What every key of this layout starts with.
pub const KEY_PREFIX: &str = "dnsexfil:h1:";
/// Names written per pipeline.
pub const CHUNK_NAMES: usize = 5_000;
/// Domains of a source read for a report: the most recently seen.
pub const READ_DOMAINS: usize = 2_000;
/// (name, bucket) entries read per domain for a report: the most recent (the report's counts
/// cover these).
pub const READ_NAMES_PER_DOMAIN: usize = 50_000;
/// The time limit of a round trip unless one is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// Deletes a source's domain set (`KEYS[1]`) and the names key of every domain in it (`ARGV[1]`
/// is the names keys' common prefix); the number of keys deleted.
const FORGET_SCRIPT: &str = r"
local domains = redis.call('ZRANGE', KEYS[1], 0, -1)
local deleted = redis.call('DEL', KEYS[1])
for _, domain in ipairs(domains) do
  deleted = deleted + redis.call('DEL', ARGV[1] .. domain)
end
return deleted
";

/// The prior of some sources and (source, domain) pairs at times in `[ARGV[1], ARGV[2])`
/// (`ARGV[3]` sources): `KEYS[1..s]` are the sources' domain sets, `ARGV[3 + i]` the i-th
/// source's names-key prefix, the other keys names keys. Answers per source the number of its
/// domains with an entry in the range, then per names key {distinct names, (name, bucket)
/// entries, distinct hours}. Computed next to the data: the answer is a few integers per key
/// however many names a busy pair holds, and at most `ARGV[4 + s]` entries are read per key.
const PRIOR_SCRIPT: &str = r"
local oldest, before, sources = ARGV[1], '(' .. ARGV[2], tonumber(ARGV[3])
local limit = tonumber(ARGV[4 + sources])
local out = {}
for i = 1, sources do
  local domains = redis.call('ZRANGE', KEYS[i], '+inf', oldest, 'BYSCORE', 'REV', 'LIMIT', 0, limit)
  local n = 0
  for _, domain in ipairs(domains) do
    if redis.call('ZCOUNT', ARGV[3 + i] .. domain, oldest, before) > 0 then n = n + 1 end
  end
  out[i] = n
end
for i = sources + 1, #KEYS do
  local entries = redis.call('ZRANGE', KEYS[i], oldest, before, 'BYSCORE', 'LIMIT', 0, limit, 'WITHSCORES')
  local names, hours = {}, {}
  local distinct, entries_in, distinct_hours = 0, 0, 0
  for j = 1, #entries, 2 do
    local member = entries[j]
    local name = string.sub(member, (string.find(member, ':', 1, true) or 0) + 1)
    if not names[name] then names[name] = true; distinct = distinct + 1 end
    local hour = math.floor(tonumber(entries[j + 1]) / 3600)
    if not hours[hour] then hours[hour] = true; distinct_hours = distinct_hours + 1 end
    entries_in = entries_in + 1
  end
  out[i] = {distinct, entries_in, distinct_hours}
end
return out
";

/// Keys given to one run of the prior script (a request with more runs several, in turn).
pub const PRIOR_KEYS_PER_SCRIPT: usize = 1_000;

/// What some sources sent at times in `[ARGV[1], ARGV[2])`: `KEYS[i]` is the i-th source's
/// domain set and `ARGV[4 + i]` the prefix of its names keys. For each source, its (bucket,
/// name) members in that range with their times, flat: at most `ARGV[3]` of each domain, the
/// domains taken most recently seen first (at most `ARGV[4]` of them) until every later one
/// was last seen before the `ARGV[3]`-th newest time already read (it cannot hold a newer one).
const EARLIER_SCRIPT: &str = r"
local from, before, limit = tonumber(ARGV[1]), '(' .. ARGV[2], tonumber(ARGV[3])
local max_domains = tonumber(ARGV[4])
local out = {}
for i = 1, #KEYS do
  local got, threshold = {}, nil
  local domains = redis.call('ZRANGE', KEYS[i], '+inf', from, 'BYSCORE', 'REV', 'LIMIT', 0, max_domains, 'WITHSCORES')
  for d = 1, #domains, 2 do
    if threshold and tonumber(domains[d + 1]) < threshold then break end
    local low = threshold and math.max(from, threshold) or from
    local entries = redis.call('ZRANGE', ARGV[4 + i] .. domains[d], before, low, 'BYSCORE', 'REV', 'LIMIT', 0, limit, 'WITHSCORES')
    for j = 1, #entries, 2 do
      got[#got + 1] = {entries[j], tonumber(entries[j + 1])}
    end
    if #got >= limit then
      -- The limit-th newest time read: older entries cannot be among the newest; ties stay.
      table.sort(got, function(a, b) return a[2] > b[2] end)
      threshold = got[limit][2]
      local kept = {}
      for _, entry in ipairs(got) do
        if entry[2] >= threshold then kept[#kept + 1] = entry end
      end
      got = kept
    end
  end
  local flat = {}
  for _, entry in ipairs(got) do
    flat[#flat + 1] = entry[1]
    flat[#flat + 1] = tostring(entry[2])
  end
  out[i] = flat
end
return out
";

pub struct RedisHistory {
    config: HistoryConfig,
    client: Client,
    /// Made on first use (it needs the runtime), then shared: it reconnects by itself.
    connection: OnceLock<ConnectionManager>,
    timeout: Duration,
    forget_script: ::redis::Script,
    prior_script: ::redis::Script,
    earlier_script: ::redis::Script,
    stats: [OperationCounters; 4],
}

/// The operations counted in [`RedisStats`].
#[derive(Debug, Clone, Copy)]
enum Operation {
    Record = 0,
    Source = 1,
    Forget = 2,
    Prior = 3,
}

#[derive(Debug, Default)]
struct OperationCounters {
    calls: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    round_trips: AtomicU64,
    micros: AtomicU64,
}

/// Figures of one operation since start (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperationStats {
    pub calls: u64,
    /// Calls that failed (time-outs included).
    pub errors: u64,
    /// Calls that failed because a round trip took longer than the time limit.
    pub timeouts: u64,
    pub round_trips: u64,
    /// Time spent in calls, successful or not, in microseconds.
    pub latency_micros: u64,
}

/// What the Redis store did since start, by operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStats {
    pub record: OperationStats,
    pub source: OperationStats,
    pub forget: OperationStats,
    /// Reads of what was remembered before a request, for the long-window features.
    pub prior: OperationStats,
}

impl RedisHistory {
    /// A store at `url` (`redis://host:port/db`) with the default time limit. Connects nothing.
    pub fn new(url: &str, config: HistoryConfig) -> Result<RedisHistory, HistoryError> {
        RedisHistory::with_timeout(url, config, DEFAULT_TIMEOUT)
    }

    /// A store at `url` whose round trips each take at most `timeout`.
    pub fn with_timeout(
        url: &str,
        config: HistoryConfig,
        timeout: Duration,
    ) -> Result<RedisHistory, HistoryError> {
        let bad = |error: String| HistoryError::BadUrl {
            url: redact(url),
            error,
        };
        if !url.starts_with("redis://") {
            return Err(bad("it does not start with redis://".to_string()));
        }
        let client = Client::open(url).map_err(|e| bad(e.to_string()))?;
        let db = client.get_connection_info().redis_settings().db();
        if db < 0 {
            return Err(bad(format!("database {db} is negative")));
        }
        Ok(RedisHistory {
            config,
            client,
            connection: OnceLock::new(),
            timeout: timeout.max(Duration::from_millis(1)),
            forget_script: ::redis::Script::new(FORGET_SCRIPT),
            prior_script: ::redis::Script::new(PRIOR_SCRIPT),
            earlier_script: ::redis::Script::new(EARLIER_SCRIPT),
            stats: Default::default(),
        })
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    /// The time limit of each round trip.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn stats(&self) -> RedisStats {
        let read = |c: &OperationCounters| OperationStats {
            calls: c.calls.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            round_trips: c.round_trips.load(Ordering::Relaxed),
            latency_micros: c.micros.load(Ordering::Relaxed),
        };
        RedisStats {
            record: read(&self.stats[Operation::Record as usize]),
            source: read(&self.stats[Operation::Source as usize]),
            forget: read(&self.stats[Operation::Forget as usize]),
            prior: read(&self.stats[Operation::Prior as usize]),
        }
    }

    /// Seconds a key lives after its last write: the window and a bucket.
    fn key_seconds(&self) -> i64 {
        self.config.window_seconds + self.config.bucket_seconds
    }

    fn connection(&self) -> Result<ConnectionManager, HistoryError> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            // One attempt per failed call: a call waits for no back-off, and the next call
            // tries again.
            .set_number_of_retries(0);
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(unreachable)?;
        // Two first calls at once may both make one; the first kept is used by all.
        Ok(self.connection.get_or_init(|| made).clone())
    }

    /// Runs `operation`'s calls through [`Self::round_trip`], counting the call.
    async fn counted<T>(
        &self,
        operation: Operation,
        call: impl Future<Output = Result<T, HistoryError>>,
    ) -> Result<T, HistoryError> {
        let counters = &self.stats[operation as usize];
        let started = Instant::now();
        let result = call.await;
        counters.calls.fetch_add(1, Ordering::Relaxed);
        counters
            .micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Err(error) = &result {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            if matches!(error, HistoryError::TimedOut { .. }) {
                counters.timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// One request to Redis within the time limit; tried again once when it failed on a broken
    /// connection (the manager has begun a new one), within the same limit.
    async fn round_trip<T, F, Fut>(&self, operation: Operation, send: F) -> Result<T, HistoryError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.stats[operation as usize]
            .round_trips
            .fetch_add(1, Ordering::Relaxed);
        let connection = self.connection()?;
        let attempt = async {
            match send(connection.clone()).await {
                Err(error) if is_connection_error(&error) => send(connection).await,
                result => result,
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.failure(error)),
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> HistoryError {
        HistoryError::TimedOut {
            millis: self.timeout.as_millis() as u64,
        }
    }

    fn failure(&self, error: RedisError) -> HistoryError {
        if error.is_timeout() {
            self.timed_out()
        } else if error.code() == Some("WRONGTYPE") {
            HistoryError::Corrupt {
                error: format!("a key under {KEY_PREFIX} is not a sorted set ({error})"),
            }
        } else {
            unreachable(error)
        }
    }

    async fn record_batch(&self, batch: Batch, now: i64) -> Result<Recorded, HistoryError> {
        let cutoff = now - self.config.window_seconds;
        let mut writer = Writer::new(cutoff, self.key_seconds());
        let mut recorded = Recorded::default();
        for group in &batch.groups {
            let names_key = names_key(&group.src, &group.domain);
            let mut rest = group.names.as_slice();
            while !rest.is_empty() {
                let (part, after) = rest.split_at(rest.len().min(CHUNK_NAMES - writer.names));
                rest = after;
                writer.add(&group.src, &group.domain, &names_key, part);
                if writer.names >= CHUNK_NAMES {
                    recorded.new += self.write(writer.finish()).await?;
                    writer = Writer::new(cutoff, self.key_seconds());
                }
            }
        }
        if writer.names > 0 {
            recorded.new += self.write(writer.finish()).await?;
        }
        Ok(recorded)
    }

    /// Sends one chunk's pipeline; the (name, bucket) it added.
    async fn write(&self, pipe: ::redis::Pipeline) -> Result<usize, HistoryError> {
        let pipe = &pipe;
        let added: Vec<Value> = self
            .round_trip(Operation::Record, |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await?;
        added.iter().map(|v| integer(v).map(|n| n as usize)).sum()
    }

    async fn read_source(&self, src: &str, now: i64) -> Result<Option<SourceReport>, HistoryError> {
        let cutoff = now - self.config.window_seconds;
        let domains_key = domains_key(src);
        let newest_domains = &newest_in_window(&domains_key, cutoff, READ_DOMAINS);
        let domains: Vec<Vec<u8>> = self
            .round_trip(Operation::Source, |mut c| async move {
                newest_domains.query_async(&mut c).await
            })
            .await?;
        if domains.is_empty() {
            return Ok(None);
        }
        let domains = domains
            .into_iter()
            .map(|d| String::from_utf8(d).map_err(|_| corrupt("a domain is not UTF-8")))
            .collect::<Result<Vec<String>, _>>()?;
        let mut pipe = ::redis::pipe();
        for domain in &domains {
            let mut newest =
                newest_in_window(&names_key(src, domain), cutoff, READ_NAMES_PER_DOMAIN);
            newest.arg("WITHSCORES");
            pipe.add_command(newest);
        }
        let pipe = &pipe;
        let replies: Vec<Value> = self
            .round_trip(Operation::Source, |mut c| async move {
                pipe.query_async(&mut c).await
            })
            .await?;
        if replies.len() != domains.len() {
            return Err(corrupt("a pipeline answered a different number of replies"));
        }
        let mut read = Vec::with_capacity(domains.len());
        for (domain, reply) in domains.into_iter().zip(replies) {
            let names = scored(reply)?
                .into_iter()
                .map(|(member, time)| {
                    let (bucket, name) = parse_member(&member)?;
                    Ok(StoredName { name, bucket, time })
                })
                .collect::<Result<Vec<_>, HistoryError>>()?;
            read.push((domain, names));
        }
        Ok(SourceReport::build(src, read, &self.config))
    }

    async fn read_prior(
        &self,
        keys: PriorKeys,
        before: i64,
        now: i64,
    ) -> Result<Prior, HistoryError> {
        let oldest = now - self.config.window_seconds;
        let mut prior = Prior::default();
        // Runs of the script, each over at most PRIOR_KEYS_PER_SCRIPT keys: sources first.
        enum Key<'k> {
            Source(&'k String),
            Pair(&'k (String, String)),
        }
        let all: Vec<Key> = keys
            .sources
            .iter()
            .map(Key::Source)
            .chain(keys.pairs.iter().map(Key::Pair))
            .collect();
        for run in all.chunks(PRIOR_KEYS_PER_SCRIPT) {
            let mut invocation = self.prior_script.prepare_invoke();
            let sources: Vec<&String> = run
                .iter()
                .filter_map(|k| match k {
                    Key::Source(src) => Some(*src),
                    Key::Pair(_) => None,
                })
                .collect();
            invocation.arg(oldest).arg(before).arg(sources.len());
            for src in &sources {
                invocation.key(domains_key(src)).arg(names_key_prefix(src));
            }
            invocation.arg(READ_NAMES_PER_DOMAIN);
            for key in run {
                if let Key::Pair((src, domain)) = key {
                    invocation.key(names_key(src, domain));
                }
            }
            let reply = self
                .one_answer_each(&invocation, run.len(), "the prior script")
                .await?;
            for (key, value) in run.iter().zip(reply) {
                match key {
                    Key::Source(src) => {
                        let domains = integer(&value)? as u32;
                        if domains > 0 {
                            prior
                                .sources
                                .insert((*src).clone(), SourcePrior { domains });
                        }
                    }
                    Key::Pair(pair) => {
                        let Value::Array(counts) = value else {
                            return Err(corrupt("the prior script answered a pair without counts"));
                        };
                        let [distinct, entries, hours] = counts.as_slice() else {
                            return Err(corrupt("the prior script answered a pair without counts"));
                        };
                        let counts = PairPrior {
                            distinct_names: integer(distinct)? as u32,
                            name_buckets: integer(entries)? as u32,
                            hours: integer(hours)? as u32,
                        };
                        if counts.name_buckets > 0 {
                            prior.pairs.insert((*pair).clone(), counts);
                        }
                    }
                }
            }
        }
        Ok(prior)
    }

    /// Runs a read script (counted with the `prior` reads) that answers one value for each of
    /// `keys` keys or sources.
    async fn one_answer_each(
        &self,
        invocation: &::redis::ScriptInvocation<'_>,
        keys: usize,
        script: &str,
    ) -> Result<Vec<Value>, HistoryError> {
        let reply: Vec<Value> = self
            .round_trip(Operation::Prior, |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        if reply.len() != keys {
            return Err(corrupt(&format!(
                "{script} answered {} values for {keys} keys",
                reply.len()
            )));
        }
        Ok(reply)
    }

    async fn read_earlier(
        &self,
        sources: Vec<String>,
        from: i64,
        before: i64,
        per_source: usize,
    ) -> Result<Vec<Earlier>, HistoryError> {
        let mut earlier = Vec::new();
        // Runs of the script, each over at most PRIOR_KEYS_PER_SCRIPT sources.
        for run in sources.chunks(PRIOR_KEYS_PER_SCRIPT) {
            let mut invocation = self.earlier_script.prepare_invoke();
            invocation
                .arg(from)
                .arg(before)
                .arg(per_source)
                .arg(READ_DOMAINS);
            for src in run {
                invocation.key(domains_key(src)).arg(names_key_prefix(src));
            }
            let reply = self
                .one_answer_each(&invocation, run.len(), "the earlier-events script")
                .await?;
            for (src, entries) in run.iter().zip(reply) {
                let of_source = scored(entries)?
                    .into_iter()
                    .map(|(member, time)| Ok((parse_member(&member)?.1, time)))
                    .collect::<Result<Vec<(String, i64)>, HistoryError>>()?;
                super::keep_most_recent(src, of_source, per_source, &mut earlier);
            }
        }
        Ok(earlier)
    }

    async fn forget_source(&self, src: &str) -> Result<bool, HistoryError> {
        let mut invocation = self.forget_script.key(domains_key(src));
        invocation.arg(names_key_prefix(src));
        let invocation = &invocation;
        let deleted: i64 = self
            .round_trip(Operation::Forget, |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(deleted > 0)
    }
}

/// One chunk's pipeline being built.
struct Writer<'a> {
    pipe: ::redis::Pipeline,
    /// Source -> its domains written in this chunk, with the latest time of each.
    domains: FxHashMap<&'a str, FxHashMap<&'a str, i64>>,
    names: usize,
    cutoff: i64,
    key_seconds: i64,
}

impl<'a> Writer<'a> {
    fn new(cutoff: i64, key_seconds: i64) -> Writer<'a> {
        Writer {
            pipe: ::redis::pipe(),
            domains: FxHashMap::default(),
            names: 0,
            cutoff,
            key_seconds,
        }
    }

    /// Trims, adds (keeping the earlier time of a known member: its answer is the members
    /// added) and refreshes the expiry of one names key.
    fn add(&mut self, src: &'a str, domain: &'a str, key: &str, names: &[super::NameSeen]) {
        if names.is_empty() {
            return;
        }
        self.trim(key);
        let mut add = ::redis::cmd("ZADD");
        add.arg(key).arg("LT");
        let mut latest = i64::MIN;
        for seen in names {
            add.arg(seen.time).arg(member(seen.bucket, &seen.name));
            latest = latest.max(seen.time);
        }
        self.pipe.add_command(add);
        self.keep_alive(key);
        let time = self
            .domains
            .entry(src)
            .or_default()
            .entry(domain)
            .or_insert(latest);
        *time = (*time).max(latest);
        self.names += names.len();
    }

    /// The pipeline, with each source's domain set updated, trimmed and kept alive.
    fn finish(mut self) -> ::redis::Pipeline {
        for (src, domains) in std::mem::take(&mut self.domains) {
            let key = domains_key(src);
            let mut add = ::redis::cmd("ZADD");
            add.arg(&key).arg("GT");
            for (domain, time) in domains {
                add.arg(time).arg(domain);
            }
            self.pipe.add_command(add).ignore();
            self.trim(&key);
            self.keep_alive(&key);
        }
        self.pipe
    }

    /// Removes the key's entries older than the window.
    fn trim(&mut self, key: &str) {
        self.pipe
            .cmd("ZREMRANGEBYSCORE")
            .arg(key)
            .arg("-inf")
            .arg(format!("({}", self.cutoff))
            .ignore();
    }

    /// Makes the key live a window and a bucket from now.
    fn keep_alive(&mut self, key: &str) {
        self.pipe
            .cmd("EXPIRE")
            .arg(key)
            .arg(self.key_seconds)
            .ignore();
    }
}

/// The members of a sorted set scored since `cutoff`, newest first, at most `limit`.
fn newest_in_window(key: &str, cutoff: i64, limit: usize) -> ::redis::Cmd {
    let mut cmd = ::redis::cmd("ZRANGE");
    cmd.arg(key)
        .arg("+inf")
        .arg(cutoff)
        .arg("BYSCORE")
        .arg("REV")
        .arg("LIMIT")
        .arg(0)
        .arg(limit);
    cmd
}

/// The key of a source's domain set.
pub fn domains_key(src: &str) -> String {
    format!("{KEY_PREFIX}s:{}:{src}", src.len())
}

/// The key of the names of one (source, domain).
pub fn names_key(src: &str, domain: &str) -> String {
    format!("{}{domain}", names_key_prefix(src))
}

/// What every names key of a source starts with.
fn names_key_prefix(src: &str) -> String {
    format!("{KEY_PREFIX}n:{}:{src}:", src.len())
}

/// A names key's member: the bucket in decimal, a colon, the name.
fn member(bucket: i64, name: &str) -> String {
    format!("{bucket}:{name}")
}

fn parse_member(member: &[u8]) -> Result<(i64, String), HistoryError> {
    let colon = member
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| corrupt("a member has no bucket"))?;
    let bucket = std::str::from_utf8(&member[..colon])
        .ok()
        .and_then(|b| b.parse().ok())
        .ok_or_else(|| corrupt("a member's bucket is not a number"))?;
    let name = String::from_utf8(member[colon + 1..].to_vec())
        .map_err(|_| corrupt("a member's name is not UTF-8"))?;
    Ok((bucket, name))
}

/// The (member, score) pairs of a `WITHSCORES` reply: flat in RESP2, pairs in RESP3.
fn scored(reply: Value) -> Result<Vec<(Vec<u8>, i64)>, HistoryError> {
    let Value::Array(items) = reply else {
        return Err(corrupt("a range reply is not an array"));
    };
    let mut pairs = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let Some(item) = items.next() {
        let (member, score) = match item {
            Value::Array(pair) if pair.len() == 2 => {
                let mut pair = pair.into_iter();
                (pair.next(), pair.next())
            }
            member => (Some(member), items.next()),
        };
        let (Some(Value::BulkString(member)), Some(score)) = (member, score) else {
            return Err(corrupt("a range reply is not (member, score) pairs"));
        };
        pairs.push((member, score_of(&score)?));
    }
    Ok(pairs)
}

fn score_of(value: &Value) -> Result<i64, HistoryError> {
    let score = match value {
        Value::Double(d) => Some(*d),
        Value::Int(n) => Some(*n as f64),
        Value::BulkString(text) => std::str::from_utf8(text).ok().and_then(|t| t.parse().ok()),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    };
    match score {
        Some(s) if s.is_finite() => Ok(s as i64),
        _ => Err(corrupt("a score is not a number")),
    }
}

fn integer(value: &Value) -> Result<i64, HistoryError> {
    match value {
        Value::Int(n) => Ok(*n),
        _ => Err(corrupt("ZADD did not answer a count")),
    }
}

fn corrupt(what: &str) -> HistoryError {
    HistoryError::Corrupt {
        error: what.to_string(),
    }
}

fn unreachable(error: RedisError) -> HistoryError {
    HistoryError::Unreachable {
        error: error.to_string(),
    }
}

/// Whether a request failed for want of a working connection (the manager then reconnects).
fn is_connection_error(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal()
}

/// `url` without a password, for messages.
fn redact(url: &str) -> String {
    let clipped: String = url.chars().take(200).collect();
    match (clipped.find("://"), clipped.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &clipped[..scheme + 3], &clipped[at..])
        }
        _ => clipped,
    }
}

impl HistoryStore for RedisHistory {
    async fn record(&self, batch: Batch, now: i64) -> Result<Recorded, HistoryError> {
        self.counted(Operation::Record, self.record_batch(batch, now))
            .await
    }

    async fn source(&self, src: &str, now: i64) -> Result<Option<SourceReport>, HistoryError> {
        self.counted(Operation::Source, self.read_source(src, now))
            .await
    }

    async fn forget(&self, src: &str) -> Result<bool, HistoryError> {
        self.counted(Operation::Forget, self.forget_source(src))
            .await
    }

    async fn prior(&self, keys: PriorKeys, before: i64, now: i64) -> Result<Prior, HistoryError> {
        self.counted(Operation::Prior, self.read_prior(keys, before, now))
            .await
    }

    async fn earlier(
        &self,
        sources: Vec<String>,
        from: i64,
        before: i64,
        per_source: usize,
    ) -> Result<Vec<Earlier>, HistoryError> {
        self.counted(
            Operation::Prior,
            self.read_earlier(sources, from, before, per_source),
        )
        .await
    }

    /// Zeros: Redis reports its own size.
    fn usage(&self) -> Usage {
        Usage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_collide_whatever_the_text() {
        // Without the length, ("a:b", "c") and ("a", "b:c") would share a names key.
        assert_ne!(names_key("a:b", "c"), names_key("a", "b:c"));
        assert_eq!(
            names_key("10.0.0.1", "t.net"),
            "dnsexfil:h1:n:8:10.0.0.1:t.net"
        );
        assert_eq!(domains_key("10.0.0.1"), "dnsexfil:h1:s:8:10.0.0.1");
        assert!(!domains_key("x").starts_with(&names_key_prefix("x")));
    }

    #[test]
    fn members_hold_a_bucket_and_any_name() {
        let m = member(-3, "a:b.example.com");
        assert_eq!(
            parse_member(m.as_bytes()).unwrap(),
            (-3, "a:b.example.com".to_string())
        );
        assert!(parse_member(b"nobucket").is_err());
        assert!(parse_member(b"x1:a.com").is_err());
    }

    #[test]
    fn scores_come_flat_or_in_pairs() {
        let flat = Value::Array(vec![
            Value::BulkString(b"1:a".to_vec()),
            Value::BulkString(b"300".to_vec()),
        ]);
        let pairs = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"1:a".to_vec()),
            Value::Double(300.0),
        ])]);
        assert_eq!(scored(flat).unwrap(), [(b"1:a".to_vec(), 300)]);
        assert_eq!(scored(pairs).unwrap(), [(b"1:a".to_vec(), 300)]);
    }

    #[test]
    fn a_url_is_checked_without_connecting_and_a_password_is_not_repeated() {
        let config = HistoryConfig::default();
        assert!(RedisHistory::new("redis://127.0.0.1:1/0", config).is_ok());
        for bad in [
            "redis://",
            "redis://h:notaport/0",
            "redis://h:6379/notadb",
            "http://h:6379/0",
            "rediss://h:6379/0",
            "redis://h:6379/-1",
        ] {
            let error = RedisHistory::new(bad, config).err().expect(bad).to_string();
            assert!(error.contains("redis://host:port/db"), "{bad}: {error}");
        }
        let error = RedisHistory::new("redis://user:secret@h:bad/0", config)
            .err()
            .unwrap()
            .to_string();
        assert!(!error.contains("secret"), "{error}");
    }
}
