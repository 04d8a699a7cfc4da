//! The `dnsexfil-v2` feature schema, for our own models.
//!
//! What tunnelling looks like in DNS, per the detectors that work in practice: many distinct,
//! long, high-entropy subdomains under one registered domain, queried by one host, in encoding
//! alphabets (hex, base32, base64). So each scored row gets the shape of its own name plus the
//! history of its (src, registered domain) pair in the same request, and how many sources in the
//! request use that registered domain (a CDN is queried by many hosts, a tunnel by one).
//! The registered domain comes from the Public Suffix List (`psl` crate); names without a known
//! suffix (internal zones such as `corp.lan`) fall back to their last two labels.

use rustc_hash::{FxHashMap, FxHashSet};

use super::escu::entropy;
use super::{FeatureMatrix, FeatureRows, Row};

/// Feature names in column order.
pub const NAMES: [&str; 30] = [
    "query_len",
    "sub_len",
    "sub_labels",
    "sub_longest_label",
    "sub_entropy",
    "sub_digit_ratio",
    "sub_upper_ratio",
    "sub_hex_ratio",
    "sub_base32_ratio",
    "sub_other_ratio",
    "sub_vowel_ratio",
    "sub_unique_ratio",
    "sub_max_consonant_run",
    "sub_mixed_case",
    "is_reverse_dns",
    "is_service_label",
    "escapes",
    "pair_log_volume",
    "pair_log_distinct",
    "pair_distinct_ratio",
    "pair_mean_sub_len",
    "pair_max_sub_len",
    "pair_mean_entropy",
    "pair_mean_longest_label",
    "pair_long_sub_share",
    "pair_mean_digit_ratio",
    "src_log_domains",
    "src_domain_share",
    "domain_log_srcs",
    "query_log_repeats",
];

/// Number of features per row.
pub const WIDTH: usize = NAMES.len();

/// Splits a query into (subdomain part, registered domain), both lower-cased for the lookup.
/// `a.b.example.co.uk` -> (`a.b`, `example.co.uk`).
pub fn split_registered(query: &str) -> (String, String) {
    let lower = query.trim_end_matches('.').to_ascii_lowercase();
    let registered = psl::domain_str(&lower)
        .map(str::to_string)
        .unwrap_or_else(|| last_labels(&lower, 2).to_string());
    let sub = lower
        .strip_suffix(&registered)
        .map(|s| s.trim_end_matches('.'))
        .unwrap_or("")
        .to_string();
    (sub, registered)
}

pub(crate) fn last_labels(name: &str, n: usize) -> &str {
    let mut dots = name.rmatch_indices('.').map(|(i, _)| i);
    match dots.nth(n - 1) {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

/// Shape of one name: the per-row features 0..17 (see [`NAMES`]).
#[derive(Debug, Clone, Copy, Default)]
struct NameShape {
    values: [f32; 17],
    sub_len: f32,
    sub_entropy: f32,
    longest_label: f32,
    digit_ratio: f32,
}

/// `text.to_ascii_lowercase().ends_with(suffix)` for a lower-case ASCII `suffix`, without the copy.
fn ends_with_ignoring_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len()
        && text.as_bytes()[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// Classes of an ASCII byte for [`name_shape`], one bit each (non-ASCII characters are only
/// [`OTHER`]).
const DIGIT: u8 = 1;
const UPPER: u8 = 2;
const LOWER: u8 = 4;
const HEX: u8 = 8;
const BASE32: u8 = 16;
/// Not a letter, digit, dot or hyphen.
const OTHER: u8 = 32;
const LETTER: u8 = 64;
const VOWEL: u8 = 128;

const SHAPE_CLASS: [u8; 128] = {
    let mut table = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        let l = c.to_ascii_lowercase();
        let mut class = 0;
        if c.is_ascii_digit() {
            class |= DIGIT;
        }
        if c.is_ascii_uppercase() {
            class |= UPPER;
        }
        if c.is_ascii_lowercase() {
            class |= LOWER;
        }
        if l.is_ascii_hexdigit() {
            class |= HEX;
        }
        if l.is_ascii_lowercase() || (l >= b'2' && l <= b'7') {
            class |= BASE32;
        }
        if !(l.is_ascii_alphanumeric() || l == b'.' || l == b'-') {
            class |= OTHER;
        }
        if l.is_ascii_alphabetic() {
            class |= LETTER;
            if matches!(l, b'a' | b'e' | b'i' | b'o' | b'u') {
                class |= VOWEL;
            }
        }
        table[b] = class;
        b += 1;
    }
    table
};

/// Per-character counts of a subdomain for [`name_shape`].
#[derive(Default)]
struct CharCounts {
    chars: u32,
    digits: u32,
    upper: u32,
    lower: u32,
    hex: u32,
    base32: u32,
    other: u32,
    letters: u32,
    vowels: u32,
    /// Longest run of consonants (letters that are not vowels).
    max_run: u32,
    distinct: u32,
}

impl CharCounts {
    fn of(sub: &str) -> Self {
        let mut counts = CharCounts::default();
        let mut run = 0u32;
        // Distinct characters: a flag per ASCII character, a set only for the others.
        let mut seen_ascii = [false; 128];
        let mut seen_other: FxHashSet<char> = FxHashSet::default();
        let mut count = |class: u8, counts: &mut CharCounts| {
            counts.chars += 1;
            counts.digits += (class & DIGIT != 0) as u32;
            counts.upper += (class & UPPER != 0) as u32;
            counts.lower += (class & LOWER != 0) as u32;
            counts.hex += (class & HEX != 0) as u32;
            counts.base32 += (class & BASE32 != 0) as u32;
            counts.other += (class & OTHER != 0) as u32;
            counts.letters += (class & LETTER != 0) as u32;
            counts.vowels += (class & VOWEL != 0) as u32;
            // A consonant extends the run; anything else ends it.
            run = if class & (LETTER | VOWEL) == LETTER {
                run + 1
            } else {
                0
            };
            counts.max_run = counts.max_run.max(run);
        };
        if sub.is_ascii() {
            for &b in sub.as_bytes() {
                seen_ascii[b as usize] = true;
                count(SHAPE_CLASS[b as usize], &mut counts);
            }
        } else {
            for c in sub.chars() {
                if c.is_ascii() {
                    seen_ascii[c as usize] = true;
                    count(SHAPE_CLASS[c as usize], &mut counts);
                } else {
                    seen_other.insert(c);
                    count(OTHER, &mut counts);
                }
            }
        }
        counts.distinct =
            seen_ascii.iter().filter(|&&seen| seen).count() as u32 + seen_other.len() as u32;
        counts
    }
}

fn name_shape(query: &str, sub_original_case: &str) -> NameShape {
    let sub = sub_original_case;
    let counts = CharCounts::of(sub);
    let n = counts.chars.max(1) as f32;
    let (labels, longest) = if sub.is_empty() {
        (0, 0)
    } else {
        sub.split('.').fold((0, 0), |(count, longest), label| {
            (count + 1, longest.max(label.len()))
        })
    };
    let longest = longest as f32;
    let sub_len = sub.len() as f32;
    let sub_entropy = entropy(sub) as f32;
    let digit_ratio = counts.digits as f32 / n;
    let values = [
        query.len() as f32,
        sub_len,
        labels as f32,
        longest,
        sub_entropy,
        digit_ratio,
        counts.upper as f32 / n,
        counts.hex as f32 / n,
        counts.base32 as f32 / n,
        counts.other as f32 / n,
        if counts.letters == 0 {
            0.0
        } else {
            counts.vowels as f32 / counts.letters as f32
        },
        counts.distinct as f32 / n,
        counts.max_run as f32,
        (counts.upper > 0 && counts.lower > 0) as u8 as f32,
        (ends_with_ignoring_case(query, ".in-addr.arpa")
            || ends_with_ignoring_case(query, ".ip6.arpa")) as u8 as f32,
        query.starts_with('_') as u8 as f32,
        query.bytes().filter(|&b| b == b'\\').count() as f32,
    ];
    NameShape {
        values,
        sub_len,
        sub_entropy,
        longest_label: longest,
        digit_ratio,
    }
}

#[derive(Default)]
struct PairHistory {
    volume: u32,
    distinct: u32,
    sum_sub_len: f64,
    max_sub_len: f32,
    sum_entropy: f64,
    sum_longest: f64,
    long_subs: u32,
    sum_digit_ratio: f64,
}

/// Distinct names split at a time by [`History::build_with`] (on both cores for a large request).
pub(crate) const SPLIT_BLOCK: usize = 16_384;

/// A distinct (src, query) as [`History::build_with`] first meets it.
pub(crate) struct NewName<'a, 'd> {
    pub query: &'a str,
    /// Its (src, domain) pair, source and domain ids, and the domain's text.
    pub pair: usize,
    pub src: usize,
    pub domain: usize,
    pub domain_name: &'d str,
    /// The id of its second domain, when the split gives one.
    pub alternate: Option<u32>,
}

/// The per-request history of the dnsexfil-v2 features, built in one pass over all rows.
pub struct History {
    /// Per distinct (src, query): its name shape, its (src, domain) pair and how often it occurs.
    shapes: Vec<(NameShape, usize, u32)>,
    pairs: Vec<PairHistory>,
    /// (src id, domain id) of each pair.
    pair_src_domain: Vec<(usize, usize)>,
    src_rows: Vec<u32>,
    src_domains: Vec<u32>,
    domain_srcs: Vec<u32>,
    /// The text of each source id and domain id (dnsexfil-v5 looks pairs up in what the
    /// service remembers).
    src_names: Vec<Box<str>>,
    domain_names: Vec<Box<str>>,
    row_query: Vec<usize>,
    /// Per distinct (src, query), the id of its second domain (when the split gives one).
    pub(crate) query_alternate: Vec<u32>,
}

/// Computes the dnsexfil-v2 features of the rows at `scored`, with all `rows` as history.
pub fn compute(rows: &[Row<'_>], scored: &[usize]) -> FeatureMatrix {
    History::build(rows).features(scored)
}

impl History {
    /// Linear in the number of rows; names are examined once per distinct (src, query).
    pub fn build(rows: &[Row<'_>]) -> Self {
        Self::build_with(
            rows,
            |query| {
                let (sub, registered) = split_registered(query);
                (sub, registered, None, ())
            },
            |_, ()| {},
            super::PARALLEL_MIN_ROWS,
        )
    }

    /// [`History::build`] with another split of names into (lower-case subdomain, the domain
    /// names are grouped by, optionally a second domain to remember per name, and whatever else
    /// the schema reads from the name's text alone): v3 groups by the ICANN-boundary domain and
    /// remembers the full Public Suffix List one. `on_new_name` is told of each distinct
    /// (src, query) in the order it first appears, with what `split` made of it.
    ///
    /// Three passes: the rows are grouped into distinct (src, query) in order; each distinct
    /// name is split and shaped on its own (on both cores for large requests: that is most of
    /// the work, and it depends on nothing but the name); then the names are counted into their
    /// pairs in order, so ids and sums are those of a single sequential pass.
    /// Requests with at least `parallel_from` distinct names split them on the rayon pool.
    pub(crate) fn build_with<'a, E: Send>(
        rows: &[Row<'a>],
        split: impl Fn(&str) -> (String, String, Option<String>, E) + Sync,
        mut on_new_name: impl FnMut(NewName<'a, '_>, E),
        parallel_from: usize,
    ) -> Self {
        let mut query_of: FxHashMap<(&str, &str), usize> = FxHashMap::default();
        // Each distinct (src, query) as first met, and how many rows repeat it.
        let mut firsts: Vec<(&'a str, &'a str)> = Vec::new();
        let mut repeats: Vec<u32> = Vec::new();
        let mut row_query = Vec::with_capacity(rows.len());
        for row in rows {
            let next = firsts.len();
            let q = *query_of.entry((row.src, row.query)).or_insert(next);
            if q == next {
                firsts.push((row.src, row.query));
                repeats.push(0);
            }
            repeats[q] += 1;
            row_query.push(q);
        }
        drop(query_of);

        let split_and_shape = |&(_, query): &(&str, &str)| {
            let (sub_lower, registered, alternate, extra) = split(query);
            // The subdomain in its original case (case mixing is a signal of base64
            // encodings); lower-casing is ASCII-only, so byte positions are the same.
            let trimmed = query.trim_end_matches('.');
            let sub = trimmed.get(..sub_lower.len()).unwrap_or(&sub_lower);
            let shape = name_shape(query, sub);
            (registered, alternate, shape, extra)
        };
        let mut shapes: Vec<(NameShape, usize /* pair */, u32 /* repeats */)> =
            Vec::with_capacity(firsts.len());
        let mut pair_of: FxHashMap<(usize, usize), usize> = FxHashMap::default(); // (src id, domain id)
        let mut pairs: Vec<PairHistory> = Vec::new();
        let mut pair_src_domain: Vec<(usize, usize)> = Vec::new(); // (src id, domain id)
        let mut src_of: FxHashMap<&str, usize> = FxHashMap::default();
        let mut src_rows: Vec<u32> = Vec::new();
        let mut src_domains: Vec<u32> = Vec::new();
        let mut domain_of: FxHashMap<String, usize> = FxHashMap::default();
        let mut domain_srcs: Vec<u32> = Vec::new();
        let mut src_names: Vec<Box<str>> = Vec::new();
        let mut domain_names: Vec<Box<str>> = Vec::new();
        let mut alternate_of: FxHashMap<String, u32> = FxHashMap::default();
        let mut query_alternate: Vec<u32> = Vec::new();

        // Names are split a block at a time, so what the split makes of them is held for one
        // block, not for the whole request.
        let parallel = firsts.len() >= parallel_from && crate::util::pool::may_wait_for_pool();
        for (block, block_repeats) in firsts.chunks(SPLIT_BLOCK).zip(repeats.chunks(SPLIT_BLOCK)) {
            let named: Vec<(String, Option<String>, NameShape, E)> = if parallel {
                use rayon::prelude::*;
                block
                    .par_iter()
                    .with_min_len(super::PARALLEL_MIN_ROWS / 4)
                    .map(split_and_shape)
                    .collect()
            } else {
                block.iter().map(split_and_shape).collect()
            };
            for ((&(src_name, query), (registered, alternate, shape, extra)), &repeats) in
                block.iter().zip(named).zip(block_repeats)
            {
                let alternate = alternate.map(|alternate| {
                    let next = alternate_of.len() as u32;
                    let id = *alternate_of.entry(alternate).or_insert(next);
                    query_alternate.push(id);
                    id
                });
                let next_src = src_rows.len();
                let src = *src_of.entry(src_name).or_insert(next_src);
                if src == next_src {
                    src_rows.push(0);
                    src_domains.push(0);
                    src_names.push(src_name.into());
                }
                let next_domain = domain_srcs.len();
                let domain = match domain_of.get(registered.as_str()) {
                    Some(&d) => d,
                    None => {
                        domain_names.push(registered.as_str().into());
                        domain_of.insert(registered.clone(), next_domain);
                        domain_srcs.push(0);
                        next_domain
                    }
                };
                let next_pair = pairs.len();
                let pair = *pair_of.entry((src, domain)).or_insert(next_pair);
                if pair == next_pair {
                    pairs.push(PairHistory::default());
                    domain_srcs[domain] += 1;
                    src_domains[src] += 1;
                    pair_src_domain.push((src, domain));
                }
                on_new_name(
                    NewName {
                        query,
                        pair,
                        src,
                        domain,
                        domain_name: &registered,
                        alternate,
                    },
                    extra,
                );
                let h = &mut pairs[pair];
                h.distinct += 1;
                h.volume += repeats;
                h.sum_sub_len += shape.sub_len as f64;
                h.max_sub_len = h.max_sub_len.max(shape.sub_len);
                h.sum_entropy += shape.sub_entropy as f64;
                h.sum_longest += shape.longest_label as f64;
                h.long_subs += (shape.sub_len > 20.0) as u32;
                h.sum_digit_ratio += shape.digit_ratio as f64;
                src_rows[src] += repeats;
                shapes.push((shape, pair, repeats));
            }
        }
        Self {
            shapes,
            pairs,
            pair_src_domain,
            src_rows,
            src_domains,
            domain_srcs,
            src_names,
            domain_names,
            row_query,
            query_alternate,
        }
    }

    /// Number of (src, domain) pairs.
    pub(crate) fn pair_count(&self) -> usize {
        self.pairs.len()
    }

    /// The texts of a pair's source and domain (the domain as the split gave it).
    pub(crate) fn pair_names(&self, pair: usize) -> (&str, &str) {
        let (src, domain) = self.pair_src_domain[pair];
        (&self.src_names[src], &self.domain_names[domain])
    }

    /// The distinct (src, query) index of each row.
    pub(crate) fn row_query(&self) -> &[usize] {
        &self.row_query
    }

    /// Number of distinct (src, query) pairs.
    pub(crate) fn distinct_queries(&self) -> usize {
        self.shapes.len()
    }

    /// The (src, domain) pair of a distinct (src, query); pairs are numbered in the order their
    /// first name appears.
    pub(crate) fn query_pair(&self, q: usize) -> usize {
        self.shapes[q].1
    }

    /// (src id, domain id) of a pair.
    pub(crate) fn pair_src_domain(&self, pair: usize) -> (usize, usize) {
        self.pair_src_domain[pair]
    }

    /// Distinct names of a pair.
    pub(crate) fn pair_distinct(&self, pair: usize) -> u32 {
        self.pairs[pair].distinct
    }

    /// Number of sources that query a domain.
    pub(crate) fn domain_sources(&self, domain: usize) -> u32 {
        self.domain_srcs[domain]
    }

    /// Number of domains a source queries.
    pub(crate) fn source_domains(&self, src: usize) -> u32 {
        self.src_domains[src]
    }

    /// Features of the rows at `scored` (indices into the rows the history was built from).
    pub fn features(&self, scored: &[usize]) -> FeatureMatrix {
        FeatureMatrix::filled(scored, WIDTH, |scored, rows| self.fill(scored, rows))
    }

    /// Writes the features of the rows at `scored` into the first [`WIDTH`] columns of
    /// `matrix`'s rows: richer schemas fill their wider matrix in place instead of copying.
    pub(crate) fn fill(&self, scored: &[usize], matrix: &mut FeatureRows<'_>) {
        let Self {
            shapes,
            pairs,
            pair_src_domain,
            src_rows,
            src_domains,
            domain_srcs,
            row_query,
            ..
        } = self;
        for (k, &i) in scored.iter().enumerate() {
            let (shape, pair, repeats) = &shapes[row_query[i]];
            let h = &pairs[*pair];
            let (src, domain) = pair_src_domain[*pair];
            let d = h.distinct.max(1) as f64;
            let out = matrix.row_mut(k);
            out[..17].copy_from_slice(&shape.values);
            out[17] = (h.volume as f32).ln_1p();
            out[18] = (h.distinct as f32).ln_1p();
            out[19] = h.distinct as f32 / h.volume.max(1) as f32;
            out[20] = (h.sum_sub_len / d) as f32;
            out[21] = h.max_sub_len;
            out[22] = (h.sum_entropy / d) as f32;
            out[23] = (h.sum_longest / d) as f32;
            out[24] = (h.long_subs as f64 / d) as f32;
            out[25] = (h.sum_digit_ratio / d) as f32;
            out[26] = (src_domains[src] as f32).ln_1p();
            out[27] = h.volume as f32 / src_rows[src].max(1) as f32;
            out[28] = (domain_srcs[domain] as f32).ln_1p();
            out[29] = (*repeats as f32).ln_1p();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_domains_come_from_the_public_suffix_list() {
        assert_eq!(
            split_registered("a.b.example.co.uk"),
            ("a.b".into(), "example.co.uk".into())
        );
        assert_eq!(
            split_registered("WWW.Google.COM."),
            ("www".into(), "google.com".into())
        );
        assert_eq!(
            split_registered("example.com"),
            ("".into(), "example.com".into())
        );
        let (sub, reg) = split_registered("_ldap._tcp.dc._msdcs.hq.northwind.lan");
        assert_eq!(
            (sub.as_str(), reg.as_str()),
            ("_ldap._tcp.dc._msdcs.hq", "northwind.lan")
        );
        assert_eq!(
            split_registered("localhost"),
            ("".into(), "localhost".into())
        );
    }

    #[test]
    fn a_tunnel_stands_out_from_ordinary_browsing() {
        let mut rows = Vec::new();
        let tunnel: Vec<String> = (0..40)
            .map(|i| format!("{i:02}mzxw6ytboi2dgnzsgq3dmnzwgq2dgnrr.t.exfil-example.net"))
            .collect();
        for q in &tunnel {
            rows.push(Row {
                src: "10.0.0.9",
                query: q,
            });
        }
        for src in ["10.0.0.1", "10.0.0.2", "10.0.0.9"] {
            rows.push(Row {
                src,
                query: "www.google.com",
            });
        }
        let m = compute(&rows, &[0, rows.len() - 1]);
        let (t, b) = (m.row(0), m.row(1));
        let col = |name: &str| NAMES.iter().position(|n| *n == name).unwrap();
        assert!(t[col("sub_len")] > 30.0 && b[col("sub_len")] == 3.0);
        assert!(t[col("pair_log_distinct")] > b[col("pair_log_distinct")]);
        assert_eq!(b[col("domain_log_srcs")], 3f32.ln_1p());
        assert_eq!(t[col("domain_log_srcs")], 1f32.ln_1p());
        assert!(t[col("sub_base32_ratio")] > 0.9);
        assert!(m.values.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn odd_names_give_finite_features() {
        let names = [
            "",
            ".",
            "..",
            "a..b",
            "\\000\\001.x.y",
            "bücher.例え.jp",
            "_srv._tcp.x",
            "1.2.3.4.in-addr.arpa",
        ];
        let rows: Vec<Row> = names.iter().map(|q| Row { src: "s", query: q }).collect();
        let all: Vec<usize> = (0..rows.len()).collect();
        let m = compute(&rows, &all);
        assert!(m.values.iter().all(|v| v.is_finite()));
    }
}
