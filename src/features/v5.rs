//! The `dnsexfil-v5` feature schema: `dnsexfil-v4` plus the long window, what was remembered of
//! each (source, ICANN domain) pair before the request (24 hours by default; see
//! [`super::prior`]).
//!
//! A tunnel that sends three names an hour shows nothing within one hour: three names under a
//! domain is what any host sends. Over six hours it is eighteen names, each asked once, in six
//! different hours, under a domain the host never used before: a channel. Benign pairs that
//! also collect many names over a day mostly ask the same names again (repeat share) or belong
//! to a lookup service (v3's `known_lookup_service`). The request's own view stays v4's; the
//! network learns how the two horizons combine, from a replay of the log in time order through
//! the same store (`data::dataset`).
//!
//! Linear in the rows: v4's history, then one prior lookup per (source, domain) pair.

use super::prior::{PairPrior, Prior, PriorKeys, SourcePrior};
use super::v4;
use super::{FeatureMatrix, FeatureRows, Row};

/// v5's own feature names, in column order after v4's.
pub const EXTRA_NAMES: [&str; 4] = [
    "prior_pair_log_distinct",
    "prior_pair_log_hours",
    "prior_pair_repeat_share",
    "prior_src_log_domains",
];

/// Number of features per row.
pub const WIDTH: usize = v4::WIDTH + EXTRA_NAMES.len();

/// Feature names in column order.
pub fn names() -> impl Iterator<Item = &'static str> {
    v4::names().chain(EXTRA_NAMES)
}

/// v4's per-request history, and the prior of each of its (source, domain) pairs (zeros until
/// [`History::apply_prior`]).
pub struct History {
    v4: v4::History,
    pair_prior: Vec<(PairPrior, SourcePrior)>,
}

impl History {
    pub fn build(rows: &[Row<'_>]) -> Self {
        let v4 = v4::History::build(rows);
        let pairs = v4.v3().base().pair_count();
        Self {
            v4,
            pair_prior: vec![Default::default(); pairs],
        }
    }

    /// The request's (source, domain) pairs and sources, for the store to answer.
    pub fn prior_keys(&self) -> PriorKeys {
        let base = self.v4.v3().base();
        let mut keys = PriorKeys::default();
        let mut seen_sources = rustc_hash::FxHashSet::default();
        for pair in 0..base.pair_count() {
            let (src, domain) = base.pair_names(pair);
            keys.pairs.push((src.to_string(), domain.to_string()));
            if seen_sources.insert(src) {
                keys.sources.push(src.to_string());
            }
        }
        keys
    }

    pub fn apply_prior(&mut self, prior: &Prior) {
        let base = self.v4.v3().base();
        for (pair, slot) in self.pair_prior.iter_mut().enumerate() {
            let (src, domain) = base.pair_names(pair);
            *slot = (prior.pair(src, domain), prior.source(src));
        }
    }

    /// Features of the rows at `scored` (indices into the rows the history was built from).
    pub fn features(&self, scored: &[usize]) -> FeatureMatrix {
        FeatureMatrix::filled(scored, WIDTH, |scored, rows| self.fill(scored, rows))
    }

    /// Writes the features of the rows at `scored` into `matrix`'s rows.
    fn fill(&self, scored: &[usize], matrix: &mut FeatureRows<'_>) {
        self.v4.fill(scored, matrix);
        let base = self.v4.v3().base();
        let row_query = base.row_query();
        for (k, &i) in scored.iter().enumerate() {
            let (pair, source) = self.pair_prior[base.query_pair(row_query[i])];
            let out = &mut matrix.row_mut(k)[v4::WIDTH..];
            out[0] = (pair.distinct_names as f32).ln_1p();
            out[1] = (pair.hours as f32).ln_1p();
            out[2] = if pair.name_buckets == 0 {
                0.0
            } else {
                1.0 - pair.distinct_names as f32 / pair.name_buckets as f32
            };
            out[3] = (source.domains as f32).ln_1p();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str) -> usize {
        names().position(|n| n == name).unwrap()
    }

    #[test]
    fn the_prior_of_a_pair_reaches_its_rows_and_nothing_else() {
        let rows = [
            Row {
                src: "10.0.0.9",
                query: "0a1b2c3d4e5f.t.exfil-example.net",
            },
            Row {
                src: "10.0.0.9",
                query: "www.example.com",
            },
            Row {
                src: "10.0.0.1",
                query: "1a2b3c.t.exfil-example.net",
            },
        ];
        let mut history = History::build(&rows);
        let keys = history.prior_keys();
        assert_eq!(keys.sources, vec!["10.0.0.9", "10.0.0.1"]);
        assert!(keys
            .pairs
            .contains(&("10.0.0.9".into(), "exfil-example.net".into())));
        let mut prior = Prior::default();
        prior.pairs.insert(
            ("10.0.0.9".into(), "exfil-example.net".into()),
            PairPrior {
                distinct_names: 15,
                name_buckets: 20,
                hours: 5,
            },
        );
        prior
            .sources
            .insert("10.0.0.9".into(), SourcePrior { domains: 40 });
        let without = history.features(&[0, 1, 2]);
        history.apply_prior(&prior);
        let with = history.features(&[0, 1, 2]);
        // The request's own features do not change.
        assert_eq!(without.row(0)[..v4::WIDTH], with.row(0)[..v4::WIDTH]);
        assert_eq!(with.row(0)[col("prior_pair_log_distinct")], 15f32.ln_1p());
        assert_eq!(with.row(0)[col("prior_pair_log_hours")], 5f32.ln_1p());
        assert_eq!(with.row(0)[col("prior_pair_repeat_share")], 0.25);
        assert_eq!(with.row(0)[col("prior_src_log_domains")], 40f32.ln_1p());
        // Another domain of the same source: only the source's part.
        assert_eq!(with.row(1)[col("prior_pair_log_distinct")], 0.0);
        assert_eq!(with.row(1)[col("prior_src_log_domains")], 40f32.ln_1p());
        // Another source under the same domain: nothing.
        assert!(with.row(2)[v4::WIDTH..].iter().all(|&v| v == 0.0));
        assert!(without
            .values
            .chunks(WIDTH)
            .all(|r| r[v4::WIDTH..] == [0.0; 4]));
    }
}
