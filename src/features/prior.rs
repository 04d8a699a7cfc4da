//! What was remembered of a request's sources before the request, as features see it: plain
//! counts per (source, ICANN-boundary domain) and per source. The history layer fills them from
//! its store (when serving) or from a replay of the log (when training), so both compute the
//! long-window features the same way; a request with nothing remembered has all zeros.

use rustc_hash::FxHashMap;

/// One (source, domain) pair's remembered queries, before the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairPrior {
    /// Distinct names under the domain.
    pub distinct_names: u32,
    /// Distinct (name, time bucket): a name asked in three buckets counts three times.
    pub name_buckets: u32,
    /// Distinct hours (of the Unix clock) with at least one of them.
    pub hours: u32,
}

/// One source's remembered queries, before the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourcePrior {
    /// Distinct domains it queried.
    pub domains: u32,
}

/// The pairs and sources of a request whose prior is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriorKeys {
    /// (source, domain) as the schema groups names (see `v3::split_icann`).
    pub pairs: Vec<(String, String)>,
    pub sources: Vec<String>,
}

/// The answer for some [`PriorKeys`]; a key without an entry had nothing remembered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prior {
    pub pairs: FxHashMap<(String, String), PairPrior>,
    pub sources: FxHashMap<String, SourcePrior>,
}

impl Prior {
    pub fn pair(&self, src: &str, domain: &str) -> PairPrior {
        // Looked up once per pair of a request, not per row.
        self.pairs
            .get(&(src.to_string(), domain.to_string()))
            .copied()
            .unwrap_or_default()
    }

    pub fn source(&self, src: &str) -> SourcePrior {
        self.sources.get(src).copied().unwrap_or_default()
    }
}
