//! The history in this process: the default for a single replica.
//!
//! Sources are spread over shards (a lock each), so requests about different sources rarely
//! wait for each other. Each shard holds its share of the byte cap: past it, the sources seen
//! longest ago are evicted whole (an analyst's view of a source is then empty, never partial).
//! Expired entries go lazily: a source's are pruned when the window's start has moved a whole
//! bucket since its last pruning, and sources silent for a whole window are dropped as records
//! arrive, so no timer and no full sweep is needed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustc_hash::FxHashMap;

use super::{
    Batch, Earlier, HistoryConfig, HistoryError, HistoryStore, Recorded, SourceReport, StoredName,
    Usage,
};
use crate::features::prior::{PairPrior, Prior, PriorKeys, SourcePrior};

const SHARDS: usize = 16;

/// Estimated bytes of bookkeeping around each kept item (map slots, string headers, vectors).
const SOURCE_OVERHEAD: usize = 160;
const DOMAIN_OVERHEAD: usize = 112;
const NAME_OVERHEAD: usize = 120;
const BUCKET_BYTES: usize = 16;

pub struct MemoryHistory {
    config: HistoryConfig,
    shards: Vec<Mutex<Shard>>,
    evicted: AtomicU64,
}

#[derive(Default)]
struct Shard {
    sources: FxHashMap<String, Source>,
    /// Sources by the tick of their last record: the front is the least recently seen.
    by_recency: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
}

struct Source {
    domains: FxHashMap<String, Domain>,
    /// Its key in `by_recency`.
    tick: u64,
    /// Latest observation time: the source is dropped once this leaves the window.
    last_time: i64,
    /// The bucket the window started in when this source was last pruned.
    pruned_from_bucket: i64,
    bytes: usize,
}

#[derive(Default)]
struct Domain {
    /// Name -> its (bucket, earliest time in the bucket), in ascending buckets; most names
    /// have one, held without an allocation of its own.
    names: FxHashMap<String, smallvec::SmallVec<[(i64, i64); 1]>>,
}

impl MemoryHistory {
    pub fn new(config: HistoryConfig) -> MemoryHistory {
        MemoryHistory {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            evicted: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    fn shard_of(&self, src: &str) -> &Mutex<Shard> {
        use std::hash::BuildHasher;
        // The hash's top bits: Fx mixes its last multiply into them.
        let hash = rustc_hash::FxBuildHasher.hash_one(src);
        &self.shards[(hash >> 59) as usize % SHARDS]
    }

    fn shard_cap(&self) -> usize {
        (self.config.max_bytes / SHARDS).max(4096)
    }

    /// Adds a batch, synchronously (the service calls it off the async workers for large ones).
    pub fn record_now(&self, batch: Batch, now: i64) -> Recorded {
        let mut recorded = Recorded::default();
        let cutoff = now - self.config.window_seconds;
        let cutoff_bucket = cutoff.div_euclid(self.config.bucket_seconds);
        let shard_cap = self.shard_cap();
        // One source may hold at most half its shard, so that one busy source cannot evict all
        // others; beyond it, its new names are not kept (what is kept already shows the burst).
        let source_cap = shard_cap / 2;
        // A run of one source's groups (a batch keeps them side by side) is written under one
        // lock and one touch.
        let mut groups = batch.groups.into_iter().peekable();
        while let Some(first) = groups.next() {
            let src = first.src.clone();
            let mut shard = self
                .shard_of(&src)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let shard = &mut *shard;
            shard.drop_silent_sources(cutoff);
            shard.tick += 1;
            let tick = shard.tick;
            let source = match shard.sources.get_mut(&src) {
                Some(source) => {
                    shard.by_recency.remove(&source.tick);
                    source
                }
                None => {
                    shard.bytes += SOURCE_OVERHEAD + src.len();
                    shard.sources.entry(src.clone()).or_insert(Source {
                        domains: FxHashMap::default(),
                        tick,
                        last_time: i64::MIN,
                        pruned_from_bucket: cutoff_bucket,
                        bytes: SOURCE_OVERHEAD + src.len(),
                    })
                }
            };
            source.tick = tick;
            let before = source.bytes;
            if cutoff_bucket > source.pruned_from_bucket {
                source.prune(cutoff);
                source.pruned_from_bucket = cutoff_bucket;
            }
            let mut next = Some(first);
            while let Some(group) = next {
                let (new, left_out) = source.add(group, source_cap);
                recorded.new += new;
                recorded.left_out += left_out;
                next = groups.next_if(|g| g.src == src);
            }
            // Bytes are kept as the sources' sum; `before` may exceed the new size after pruning.
            shard.bytes = shard.bytes + source.bytes - before;
            shard.by_recency.insert(tick, src);
            let evicted = shard.evict_to(shard_cap * 9 / 10, shard_cap, tick);
            recorded.evicted_sources += evicted;
        }
        self.evicted
            .fetch_add(recorded.evicted_sources as u64, Ordering::Relaxed);
        recorded
    }

    /// The report of `src` as of `now`.
    pub fn source_now(&self, src: &str, now: i64) -> Option<SourceReport> {
        let cutoff = now - self.config.window_seconds;
        let shard = self.shard_of(src).lock().unwrap_or_else(|e| e.into_inner());
        let source = shard.sources.get(src)?;
        let domains = source.domains.iter().map(|(domain, d)| {
            let names =
                d.names
                    .iter()
                    .flat_map(|(name, buckets)| {
                        buckets.iter().filter(|&&(_, time)| time >= cutoff).map(
                            |&(bucket, time)| StoredName {
                                name: name.clone(),
                                bucket,
                                time,
                            },
                        )
                    })
                    .collect();
            (domain.clone(), names)
        });
        SourceReport::build(src, domains, &self.config)
    }

    /// What `sources` sent at times in `[from, before)` (see [`HistoryStore::earlier`]).
    pub fn earlier_now(
        &self,
        sources: &[String],
        from: i64,
        before: i64,
        per_source: usize,
    ) -> Vec<Earlier> {
        let mut earlier = Vec::new();
        for src in sources {
            let shard = self.shard_of(src).lock().unwrap_or_else(|e| e.into_inner());
            let Some(source) = shard.sources.get(src) else {
                continue;
            };
            let in_range: Vec<(&str, i64)> = source
                .domains
                .values()
                .flat_map(|domain| &domain.names)
                .flat_map(|(name, buckets)| {
                    buckets
                        .iter()
                        .filter(|&&(_, time)| time >= from && time < before)
                        .map(move |&(_, time)| (name.as_str(), time))
                })
                .collect();
            super::keep_most_recent(src, in_range, per_source, &mut earlier);
        }
        earlier
    }

    /// What was remembered of `keys` at times in `[now - window, before)`: what a request whose
    /// events start at `before` adds to (a re-sent request does not see itself).
    pub fn prior_now(&self, keys: &PriorKeys, before: i64, now: i64) -> Prior {
        let oldest = now - self.config.window_seconds;
        let in_range = |time: i64| time >= oldest && time < before;
        let mut prior = Prior::default();
        let mut pairs_of: FxHashMap<&str, Vec<&str>> = FxHashMap::default();
        for (src, domain) in &keys.pairs {
            pairs_of.entry(src).or_default().push(domain);
        }
        for src in &keys.sources {
            let shard = self.shard_of(src).lock().unwrap_or_else(|e| e.into_inner());
            let Some(source) = shard.sources.get(src.as_str()) else {
                continue;
            };
            let domains = source
                .domains
                .values()
                .filter(|d| d.names.values().flatten().any(|&(_, time)| in_range(time)))
                .count();
            if domains > 0 {
                prior.sources.insert(
                    src.clone(),
                    SourcePrior {
                        domains: domains as u32,
                    },
                );
            }
            for &domain in pairs_of.get(src.as_str()).into_iter().flatten() {
                let Some(d) = source.domains.get(domain) else {
                    continue;
                };
                let mut pair = PairPrior::default();
                let mut hours = rustc_hash::FxHashSet::default();
                for buckets in d.names.values() {
                    let mut counted = false;
                    for &(_, time) in buckets.iter().filter(|&&(_, time)| in_range(time)) {
                        pair.name_buckets += 1;
                        hours.insert(time.div_euclid(3600));
                        counted = true;
                    }
                    pair.distinct_names += counted as u32;
                }
                pair.hours = hours.len() as u32;
                if pair.name_buckets > 0 {
                    prior.pairs.insert((src.clone(), domain.to_string()), pair);
                }
            }
        }
        prior
    }

    /// Every source's entries, least recently seen first (for a snapshot).
    pub(super) fn export(&self) -> Vec<super::SourceEntries> {
        let mut sources: Vec<(i64, super::SourceEntries)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (src, source) in &shard.sources {
                let domains = source
                    .domains
                    .iter()
                    .map(|(domain, d)| super::DomainEntries {
                        domain: domain.clone(),
                        names: d
                            .names
                            .iter()
                            .map(|(name, buckets)| {
                                (name.clone(), buckets.iter().map(|&(_, t)| t).collect())
                            })
                            .collect(),
                    })
                    .collect();
                let snapshot = super::SourceEntries {
                    src: src.clone(),
                    domains,
                };
                sources.push((source.last_time, snapshot));
            }
        }
        sources.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.src.cmp(&b.1.src)));
        sources.into_iter().map(|(_, s)| s).collect()
    }

    /// Forgets `src`; whether it was remembered.
    pub fn forget_now(&self, src: &str) -> bool {
        let mut shard = self.shard_of(src).lock().unwrap_or_else(|e| e.into_inner());
        shard.remove(src)
    }
}

impl Shard {
    /// Drops sources whose latest observation left the window (least recently seen first).
    fn drop_silent_sources(&mut self, cutoff: i64) {
        while let Some((_, src)) = self.by_recency.first_key_value() {
            let silent = self
                .sources
                .get(src)
                .is_none_or(|source| source.last_time < cutoff);
            if !silent {
                break;
            }
            let src = src.clone();
            self.remove(&src);
        }
    }

    /// Evicts the least recently seen sources (never the one at `keep`) until the shard holds at
    /// most `target` bytes, once it holds more than `cap`; how many were evicted.
    fn evict_to(&mut self, target: usize, cap: usize, keep: u64) -> usize {
        if self.bytes <= cap {
            return 0;
        }
        let mut evicted = 0;
        while self.bytes > target {
            let Some((&tick, src)) = self.by_recency.first_key_value() else {
                break;
            };
            if tick == keep {
                break;
            }
            let src = src.clone();
            self.remove(&src);
            evicted += 1;
        }
        evicted
    }

    fn remove(&mut self, src: &str) -> bool {
        match self.sources.remove(src) {
            Some(source) => {
                self.by_recency.remove(&source.tick);
                self.bytes -= source.bytes;
                true
            }
            None => false,
        }
    }
}

impl Source {
    /// Adds one group's names, within `cap` bytes for the source; how many were new, and how
    /// many were left out for want of room.
    fn add(&mut self, group: super::Group, cap: usize) -> (usize, usize) {
        let (mut new, mut left_out) = (0, 0);
        let domain = match self.domains.get_mut(&group.domain) {
            Some(domain) => domain,
            None => {
                self.bytes += DOMAIN_OVERHEAD + group.domain.len();
                self.domains.entry(group.domain).or_default()
            }
        };
        for seen in group.names {
            self.last_time = self.last_time.max(seen.time);
            if let Some(buckets) = domain.names.get_mut(&seen.name) {
                match buckets.binary_search_by_key(&seen.bucket, |&(b, _)| b) {
                    Ok(at) => buckets[at].1 = buckets[at].1.min(seen.time),
                    Err(at) => {
                        if self.bytes + BUCKET_BYTES > cap {
                            left_out += 1;
                            continue;
                        }
                        buckets.insert(at, (seen.bucket, seen.time));
                        self.bytes += BUCKET_BYTES;
                        new += 1;
                    }
                }
            } else {
                let bytes = NAME_OVERHEAD + seen.name.len() + BUCKET_BYTES;
                if self.bytes + bytes > cap {
                    left_out += 1;
                    continue;
                }
                domain
                    .names
                    .insert(seen.name, smallvec::smallvec![(seen.bucket, seen.time)]);
                self.bytes += bytes;
                new += 1;
            }
        }
        (new, left_out)
    }

    /// Removes entries older than `cutoff`, and names and domains left without any.
    fn prune(&mut self, cutoff: i64) {
        let mut freed = 0;
        self.domains.retain(|domain, d| {
            d.names.retain(|name, buckets| {
                let before = buckets.len();
                buckets.retain(|&mut (_, time)| time >= cutoff);
                freed += (before - buckets.len()) * BUCKET_BYTES;
                if buckets.is_empty() {
                    freed += NAME_OVERHEAD + name.len();
                    false
                } else {
                    true
                }
            });
            if d.names.is_empty() {
                freed += DOMAIN_OVERHEAD + domain.len();
                false
            } else {
                true
            }
        });
        self.bytes -= freed;
    }
}

impl HistoryStore for MemoryHistory {
    async fn record(&self, batch: Batch, now: i64) -> Result<Recorded, HistoryError> {
        Ok(self.record_now(batch, now))
    }

    async fn source(&self, src: &str, now: i64) -> Result<Option<SourceReport>, HistoryError> {
        Ok(self.source_now(src, now))
    }

    async fn forget(&self, src: &str) -> Result<bool, HistoryError> {
        Ok(self.forget_now(src))
    }

    async fn prior(&self, keys: PriorKeys, before: i64, now: i64) -> Result<Prior, HistoryError> {
        Ok(self.prior_now(&keys, before, now))
    }

    async fn earlier(
        &self,
        sources: Vec<String>,
        from: i64,
        before: i64,
        per_source: usize,
    ) -> Result<Vec<Earlier>, HistoryError> {
        Ok(self.earlier_now(&sources, from, before, per_source))
    }

    fn usage(&self) -> Usage {
        let (mut bytes, mut sources) = (0, 0);
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            bytes += shard.bytes;
            sources += shard.sources.len();
        }
        Usage {
            bytes,
            sources,
            evicted_sources: self.evicted.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Observation;
    use super::*;

    fn batch(events: &[(&str, &str, i64)], now: i64, config: &HistoryConfig) -> Batch {
        let observations: Vec<Observation> = events
            .iter()
            .map(|&(src, query, time)| Observation { src, query, time })
            .collect();
        Batch::from_observations(&observations, now, config)
    }

    #[test]
    fn earlier_events_are_those_in_range_the_most_recent_within_the_cap() {
        let config = HistoryConfig::default();
        let store = MemoryHistory::new(config);
        let now = 1_800_000_000;
        let cap = 500;
        let names: Vec<String> = (0..cap + 10).map(|i| format!("n{i}.tunnel.net")).collect();
        // One name a second, the last a second before `now`; one other source.
        let mut events: Vec<(&str, &str, i64)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| ("s", name.as_str(), now - names.len() as i64 + i as i64))
            .collect();
        events.push(("other", "www.example.com", now - 10));
        store.record_now(batch(&events, now, &config), now);
        let sources = vec!["s".to_string(), "none".to_string()];
        // Only the range, never `before` itself.
        let few = store.earlier_now(&sources, now - 5, now - 2, cap);
        let mut times: Vec<i64> = few.iter().map(|e| e.time).collect();
        times.sort_unstable();
        assert_eq!(times, [now - 5, now - 4, now - 3]);
        assert!(few
            .iter()
            .all(|e| e.src == "s" && e.name.ends_with(".tunnel.net")));
        // Over the cap: the most recent.
        let all = store.earlier_now(&sources, now - 86_400, now, cap);
        assert_eq!(all.len(), cap);
        let oldest = all.iter().map(|e| e.time).min().unwrap();
        assert_eq!(oldest, now - cap as i64);
    }
    #[test]
    fn a_re_sent_window_counts_once_and_a_new_bucket_counts_again() {
        let config = HistoryConfig::default();
        let store = MemoryHistory::new(config);
        let now = 10_000_000;
        let events = [("h", "a.t.net", now - 50), ("h", "b.t.net", now - 40)];
        assert_eq!(store.record_now(batch(&events, now, &config), now).new, 2);
        assert_eq!(store.record_now(batch(&events, now, &config), now).new, 0);
        let later = [("h", "a.t.net", now + 600)];
        assert_eq!(
            store
                .record_now(batch(&later, now + 600, &config), now + 600)
                .new,
            1
        );
        let report = store.source_now("h", now + 600).unwrap();
        assert_eq!((report.distinct_names, report.name_buckets), (2, 3));
        assert_eq!(report.domains[0].active_buckets, 2);
        assert!(store.source_now("other", now).is_none());
    }

    #[test]
    fn entries_leave_with_the_window_and_silent_sources_are_dropped() {
        let config = HistoryConfig {
            window_seconds: 3600,
            bucket_seconds: 300,
            max_bytes: 1 << 20,
        };
        let store = MemoryHistory::new(config);
        let t0 = 7_200_000;
        store.record_now(
            batch(&[("h", "a.t.net", t0), ("q", "x.y.com", t0)], t0, &config),
            t0,
        );
        let t1 = t0 + 3000;
        store.record_now(batch(&[("h", "b.t.net", t1)], t1, &config), t1);
        assert_eq!(store.source_now("h", t1).unwrap().distinct_names, 2);
        // An hour after the first: it has left the window, the second has not.
        let t2 = t0 + 3700;
        store.record_now(batch(&[("h", "c.t.net", t2)], t2, &config), t2);
        let report = store.source_now("h", t2).unwrap();
        assert_eq!(report.distinct_names, 2);
        assert!(!report.domains[0]
            .recent_names
            .contains(&"a.t.net".to_string()));
        // `q` was silent for the whole window: gone, and its bytes with it, once its shard
        // records again (every shard is visited by recording many sources).
        let many: Vec<(String, i64)> = (0..200).map(|i| (format!("s{i}"), t2)).collect();
        let events: Vec<(&str, &str, i64)> = many
            .iter()
            .map(|(s, t)| (s.as_str(), "z.example.com", *t))
            .collect();
        store.record_now(batch(&events, t2, &config), t2);
        assert!(store.source_now("q", t2).is_none());
        assert_eq!(store.usage().sources, 201);
    }

    #[test]
    fn the_cap_holds_by_evicting_the_least_recently_seen_sources() {
        let config = HistoryConfig {
            window_seconds: 86_400,
            bucket_seconds: 300,
            max_bytes: 1 << 20,
        };
        let store = MemoryHistory::new(config);
        let now = 100_000_000;
        let mut evicted = 0;
        for round in 0..200 {
            let names: Vec<(String, String)> = (0..100)
                .map(|i| {
                    (
                        format!("10.0.{round}.{i}"),
                        format!("n{round}x{i}.example.com"),
                    )
                })
                .collect();
            let events: Vec<(&str, &str, i64)> = names
                .iter()
                .map(|(s, q)| (s.as_str(), q.as_str(), now))
                .collect();
            evicted += store
                .record_now(batch(&events, now, &config), now)
                .evicted_sources;
            assert!(
                store.usage().bytes <= config.max_bytes,
                "round {round}: {:?}",
                store.usage()
            );
        }
        assert!(evicted > 0);
        assert_eq!(store.usage().evicted_sources, evicted as u64);
        // The newest sources are kept, the oldest went.
        assert!(store.source_now("10.0.199.5", now).is_some());
        assert!(store.source_now("10.0.0.5", now).is_none());
    }

    #[test]
    fn one_busy_source_cannot_take_more_than_half_its_shard() {
        let config = HistoryConfig {
            window_seconds: 86_400,
            bucket_seconds: 300,
            max_bytes: 1 << 20,
        };
        let store = MemoryHistory::new(config);
        let now = 100_000_000;
        let names: Vec<String> = (0..50_000).map(|i| format!("{i:08x}.tunnel.net")).collect();
        let events: Vec<(&str, &str, i64)> =
            names.iter().map(|q| ("busy", q.as_str(), now)).collect();
        let recorded = store.record_now(batch(&events, now, &config), now);
        let usage = store.usage();
        assert!(usage.bytes <= (config.max_bytes / SHARDS) / 2, "{usage:?}");
        let report = store.source_now("busy", now).unwrap();
        assert!(report.distinct_names > 100, "{}", report.distinct_names);
        // What was not kept is counted, not lost silently.
        assert_eq!(recorded.new, report.distinct_names);
        assert_eq!(recorded.new + recorded.left_out, names.len());
        assert!(store.forget_now("busy"));
        assert!(!store.forget_now("busy"));
        assert_eq!(store.usage().bytes, 0);
    }
}
