//! The `escu-v1` feature schema: the exact 98 inputs of Splunk's published ESCU model.
//!
//! Per rank-1 row: counts of the 94 printable characters in the query, then `len` and `entropy`
//! of the query without its last two labels, then the mean of those two over every row of the
//! request with the same (src, "tld") key. The "tld" quirk of the stock notebook (every occurrence
//! of the subdomain part is removed) is reproduced on purpose: the published weights were trained
//! on it. Grouping is one hash-map pass, so the cost is linear in the number of rows.

use std::borrow::Cow;

use rustc_hash::FxHashMap;

use super::{FeatureMatrix, Row};

/// Python's `string.printable.strip()`: the alphabet of features c00..c93, in order.
pub const ALPHABET: &[u8; 94] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Number of inputs of the published network.
pub const WIDTH: usize = 98;

/// Feature names in column order (`c00`..`c93`, `len`, `entropy`, `size_avg`, `entropy_avg`).
pub fn feature_names() -> Vec<String> {
    let mut names: Vec<String> = (0..ALPHABET.len()).map(|i| format!("c{i:02}")).collect();
    names.extend(["len", "entropy", "size_avg", "entropy_avg"].map(String::from));
    names
}

/// Maps an ASCII byte to its position in [`ALPHABET`]; `u8::MAX` for characters not counted.
const CHAR_INDEX: [u8; 128] = {
    let mut table = [u8::MAX; 128];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The query without its last two dot-separated labels (Python `query.rsplit('.', 2)[0]`).
pub fn without_domain(query: &str) -> &str {
    match query.rfind('.') {
        None => query,
        Some(last) => match query[..last].rfind('.') {
            None => &query[..last],
            Some(second_last) => &query[..second_last],
        },
    }
}

/// The stock grouping key: the query with every occurrence of `without_domain` removed, then
/// leading dots stripped (Python `query.replace(w, '').lstrip('.')`). Usually the last two labels.
pub fn tld_key(query: &str, without_domain: &str) -> String {
    if without_domain.is_empty() {
        // Python's replace of an empty pattern leaves the string unchanged.
        return query.trim_start_matches('.').to_owned();
    }
    query
        .replace(without_domain, "")
        .trim_start_matches('.')
        .to_owned()
}

/// [`tld_key`] without allocating in the usual case: `w` is a prefix of the query, so when it does
/// not occur again the key is the rest of the query.
fn tld_key_borrowed<'a>(query: &'a str, w: &str) -> Cow<'a, str> {
    let rest = &query[w.len()..];
    if w.is_empty() || !rest.contains(w) {
        Cow::Borrowed(if w.is_empty() { query } else { rest }.trim_start_matches('.'))
    } else {
        Cow::Owned(tld_key(query, w))
    }
}

/// Shannon entropy in bits, summed over distinct characters in first-occurrence order exactly as
/// the stock notebook does, so the float64 result is bit-identical.
pub fn entropy(text: &str) -> f64 {
    if text.is_ascii() {
        return entropy_ascii(text.as_bytes());
    }
    // Distinct characters in first-occurrence order, found through a map (linear in the text).
    let mut index: FxHashMap<char, usize> = FxHashMap::default();
    let mut counts: Vec<u32> = Vec::new();
    let mut total = 0u32;
    for ch in text.chars() {
        total += 1;
        let next = counts.len();
        let i = *index.entry(ch).or_insert(next);
        if i == next {
            counts.push(0);
        }
        counts[i] += 1;
    }
    if total == 0 {
        return 0.0;
    }
    let ln2 = 2f64.ln();
    let mut sum = 0.0f64;
    for n in counts {
        let p = n as f64 / total as f64;
        sum += p * (p.ln() / ln2);
    }
    -sum
}

/// [`entropy`] for ASCII text: table counts instead of a search per character, same summation order.
fn entropy_ascii(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 128];
    let mut order = [0u8; 128];
    let mut distinct = 0;
    for &b in bytes {
        let c = &mut counts[b as usize];
        if *c == 0 {
            order[distinct] = b;
            distinct += 1;
        }
        *c += 1;
    }
    let ln2 = 2f64.ln();
    let total = bytes.len() as f64;
    // Characters with the same count add the same term: each distinct small count's term is
    // computed once (the same expression, so the same bits) and the sum keeps its order.
    let mut memo = [f64::NAN; 16];
    let mut sum = 0.0f64;
    for &b in &order[..distinct] {
        let n = counts[b as usize];
        let term = match memo.get_mut(n as usize) {
            Some(m) if !m.is_nan() => *m,
            slot => {
                let p = n as f64 / total;
                let term = p * (p.ln() / ln2);
                if let Some(m) = slot {
                    *m = term;
                }
                term
            }
        };
        sum += term;
    }
    -sum
}

/// Adds the character counts of `query` into the first 94 slots of `out`. Characters outside
/// the alphabet (space, tab, non-ASCII) are not counted (stock: the whole request failed).
fn count_chars(query: &str, out: &mut [f32]) {
    for &b in query.as_bytes() {
        if b < 128 {
            let idx = CHAR_INDEX[b as usize];
            if idx != u8::MAX {
                out[idx as usize] += 1.0;
            }
        }
    }
}

/// The features of a query's name that do not depend on the source.
struct PairStrings<'a> {
    len: f64,
    entropy: f64,
    tld: Cow<'a, str>,
}

impl<'a> PairStrings<'a> {
    fn of(query: &'a str) -> Self {
        let w = without_domain(query);
        let len = if w.is_ascii() {
            w.len()
        } else {
            w.chars().count()
        } as f64;
        Self {
            len,
            entropy: entropy(w),
            tld: tld_key_borrowed(query, w),
        }
    }
}

/// What every row of one (src, query) pair shares.
struct PairStats {
    len: f64,
    entropy: f64,
    group: usize,
}

/// The per-request history the features need: string features per (src, query) pair and the
/// (src, tld) group sums, built in one pass over all rows. Features of any subset of rows can
/// then be produced in chunks, so memory stays bounded however many rows a request has.
///
/// Rows of the same (src, query) pair share their string features, so those are computed once
/// per pair; the group sums are still accumulated row by row in input order, which keeps the
/// float64 averages identical to the stock computation.
pub struct History {
    pairs: Vec<PairStats>,
    /// (sum of len, sum of entropy, count) per (src, tld) group.
    sums: Vec<(f64, f64, u32)>,
    row_pair: Vec<usize>,
}

impl History {
    pub fn build<'a>(rows: &[Row<'a>]) -> Self {
        // Pairs in order of first occurrence: one hash lookup per row.
        let mut pair_of: FxHashMap<(&str, &str), usize> = FxHashMap::default();
        let mut first_rows: Vec<usize> = Vec::new();
        let mut row_pair = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let next_pair = first_rows.len();
            let pair = *pair_of.entry((row.src, row.query)).or_insert(next_pair);
            if pair == next_pair {
                first_rows.push(i);
            }
            row_pair.push(pair);
        }
        drop(pair_of);
        // The string features of each pair, on all cores for large requests.
        fn strings<'a>(rows: &[Row<'a>], first: &[usize], out: &mut Vec<PairStrings<'a>>) {
            out.extend(first.iter().map(|&i| PairStrings::of(rows[i].query)));
        }
        let mut pair_strings = Vec::with_capacity(first_rows.len());
        if first_rows.len() >= super::PARALLEL_MIN_ROWS {
            let half = first_rows.len() / 2;
            let mut second = Vec::with_capacity(first_rows.len() - half);
            rayon::join(
                || strings(rows, &first_rows[..half], &mut pair_strings),
                || strings(rows, &first_rows[half..], &mut second),
            );
            pair_strings.append(&mut second);
        } else {
            strings(rows, &first_rows, &mut pair_strings);
        }
        // Groups numbered in pair order; sums accumulated row by row in input order.
        let mut group_of: FxHashMap<(&str, &str), usize> = FxHashMap::default();
        let mut sums: Vec<(f64, f64, u32)> = Vec::new();
        let pairs: Vec<PairStats> = first_rows
            .iter()
            .zip(&pair_strings)
            .map(|(&i, strings)| {
                let next_group = sums.len();
                let group = *group_of
                    .entry((rows[i].src, strings.tld.as_ref()))
                    .or_insert(next_group);
                if group == next_group {
                    sums.push((0.0, 0.0, 0));
                }
                PairStats {
                    len: strings.len,
                    entropy: strings.entropy,
                    group,
                }
            })
            .collect();
        for &pair in &row_pair {
            let p = &pairs[pair];
            let s = &mut sums[p.group];
            s.0 += p.len;
            s.1 += p.entropy;
            s.2 += 1;
        }
        Self {
            pairs,
            sums,
            row_pair,
        }
    }

    /// Features of the rows at `scored` (indices into the rows the history was built from).
    /// Large batches are split across the cores (candle's rayon pool, which the forward pass
    /// uses too, so the two never oversubscribe the machine).
    pub fn features(&self, rows: &[Row<'_>], scored: &[usize]) -> FeatureMatrix {
        let mut matrix = FeatureMatrix::zeros(scored.len(), WIDTH);
        self.fill(rows, scored, &mut matrix.values);
        matrix
    }

    fn fill(&self, rows: &[Row<'_>], scored: &[usize], out: &mut [f32]) {
        if scored.len() >= super::PARALLEL_MIN_ROWS {
            let half = scored.len() / 2;
            let (first, second) = out.split_at_mut(half * WIDTH);
            rayon::join(
                || self.fill(rows, &scored[..half], first),
                || self.fill(rows, &scored[half..], second),
            );
            return;
        }
        for (&i, out) in scored.iter().zip(out.chunks_exact_mut(WIDTH)) {
            count_chars(rows[i].query, out);
            let p = &self.pairs[self.row_pair[i]];
            let (sum_len, sum_ent, n) = self.sums[p.group];
            out[94] = p.len as f32;
            out[95] = p.entropy as f32;
            out[96] = (sum_len / n as f64) as f32;
            out[97] = (sum_ent / n as f64) as f32;
        }
    }
}

/// Computes the escu-v1 features of every row in `scored` (indices into `rows`), using all
/// `rows` as the per-source history. Output row k belongs to `scored[k]`.
pub fn compute(rows: &[Row<'_>], scored: &[usize]) -> FeatureMatrix {
    History::build(rows).features(rows, scored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_domain_follows_python_rsplit() {
        assert_eq!(without_domain("www.google.com"), "www");
        assert_eq!(without_domain("a.b.c.example.co.uk"), "a.b.c.example");
        assert_eq!(without_domain("google.com"), "google");
        assert_eq!(without_domain("localhost"), "localhost");
        assert_eq!(without_domain("example.com."), "example");
        assert_eq!(without_domain(""), "");
        assert_eq!(without_domain(".com"), "");
    }

    #[test]
    fn tld_key_reproduces_every_occurrence_quirk() {
        assert_eq!(tld_key("www.google.com", "www"), "google.com");
        assert_eq!(tld_key("e.example.com", "e"), "xampl.com");
        assert_eq!(tld_key("a.amazon.com", "a"), "mzon.com");
        assert_eq!(tld_key("None", "None"), "");
        assert_eq!(tld_key(".com", ""), "com");
        assert_eq!(tld_key("", ""), "");
    }

    #[test]
    fn fast_paths_agree_with_the_reference_definitions() {
        let queries = [
            "www.google.com",
            "e.example.com",
            "a.amazon.com",
            "com.example.com",
            "c.c.com",
            "a.a.a",
            "ns1.ns1.net",
            "www.www.com",
            "",
            ".com",
            "..x",
            "None",
            "a.b.c.example.co.uk",
            "example.com.",
            "bücher.example",
            "aa.aa.aa.aa",
            "x.xx.xxx",
            "abab.ab.abab.com",
        ];
        for q in queries {
            let w = without_domain(q);
            assert_eq!(tld_key_borrowed(q, w), tld_key(q, w), "{q}");
            let slow: f64 = {
                let chars: Vec<char> = w.chars().collect();
                let mut seen: Vec<char> = Vec::new();
                let mut sum = 0.0;
                for c in &chars {
                    if !seen.contains(c) {
                        seen.push(*c);
                        let p =
                            chars.iter().filter(|x| *x == c).count() as f64 / chars.len() as f64;
                        sum += p * (p.ln() / 2f64.ln());
                    }
                }
                -sum
            };
            assert!(entropy(w) == slow, "{q}: {} vs {slow}", entropy(w));
        }
    }

    #[test]
    fn entropy_matches_known_values() {
        assert_eq!(entropy(""), 0.0);
        assert_eq!(entropy("aaaa"), 0.0);
        assert_eq!(entropy("ab"), 1.0);
        assert_eq!(entropy("abcd"), 2.0);
        assert!((entropy("www") - 0.0).abs() < 1e-15);
        // Non-ASCII counts as one character per code point, like Python's str.
        assert_eq!(entropy("üü"), 0.0);
        assert_eq!(entropy("üa"), 1.0);
    }

    #[test]
    fn characters_outside_the_alphabet_are_ignored_but_still_count_in_len() {
        let rows = [Row {
            src: "s",
            query: "a b\tü.x.y",
        }];
        let m = compute(&rows, &[0]);
        let r = m.row(0);
        assert_eq!(r[10], 1.0); // 'a'
        assert_eq!(r[11], 1.0); // 'b'
        assert_eq!(r[75], 2.0); // '.'
        let counted: f32 = r[..94].iter().sum();
        assert_eq!(counted, 6.0); // a b ü . x . y minus space, tab, ü
        assert_eq!(r[94], 5.0); // "a b\tü" has five characters
    }

    #[test]
    fn averages_group_by_source_and_tld_over_all_rows() {
        let rows = [
            Row {
                src: "h1",
                query: "aaaa.example.com",
            },
            Row {
                src: "h1",
                query: "bb.example.com",
            },
            Row {
                src: "h2",
                query: "cccccc.example.com",
            },
        ];
        let m = compute(&rows, &[0, 2]);
        assert_eq!(m.row(0)[96], 3.0); // (4 + 2) / 2 within h1
        assert_eq!(m.row(1)[96], 6.0); // h2 alone
    }
}
