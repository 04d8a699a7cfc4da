//! The `escu-v1` feature schema: the exact 98 inputs of Splunk's published ESCU model.
//!
//! Per rank-1 row: counts of the 94 printable characters in the query, then `len` and `entropy`
//! of the query without its last two labels, then the mean of those two over every row of the
//! request with the same (src, "tld") key. The "tld" quirk of the stock notebook (every occurrence
//! of the subdomain part is removed) is reproduced on purpose: the published weights were trained
//! on it. Grouping is one hash-map pass, so the cost is linear in the number of rows.

use std::collections::HashMap;

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

/// Shannon entropy in bits, summed over distinct characters in first-occurrence order exactly as
/// the stock notebook does, so the float64 result is bit-identical.
pub fn entropy(text: &str) -> f64 {
    let mut counts: Vec<(char, u32)> = Vec::new();
    let mut total = 0u32;
    for ch in text.chars() {
        total += 1;
        match counts.iter_mut().find(|(c, _)| *c == ch) {
            Some((_, n)) => *n += 1,
            None => counts.push((ch, 1)),
        }
    }
    if total == 0 {
        return 0.0;
    }
    let ln2 = 2f64.ln();
    let mut sum = 0.0f64;
    for (_, n) in counts {
        let p = n as f64 / total as f64;
        sum += p * (p.ln() / ln2);
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

/// Per-row values the averages are taken over.
struct RowStats {
    len: f64,
    entropy: f64,
    group: usize,
}

/// Computes the escu-v1 features of every row in `scored` (indices into `rows`), using all
/// `rows` as the per-source history. Output row k belongs to `scored[k]`.
pub fn compute(rows: &[Row<'_>], scored: &[usize]) -> FeatureMatrix {
    let mut group_of: HashMap<(&str, String), usize> = HashMap::with_capacity(rows.len() / 4 + 1);
    // (sum of len, sum of entropy, count) per group, accumulated in input order.
    let mut sums: Vec<(f64, f64, u32)> = Vec::new();
    let mut stats = Vec::with_capacity(rows.len());
    for row in rows {
        let w = without_domain(row.query);
        let tld = tld_key(row.query, w);
        let len = w.chars().count() as f64;
        let ent = entropy(w);
        let next = sums.len();
        let group = *group_of.entry((row.src, tld)).or_insert(next);
        if group == next {
            sums.push((0.0, 0.0, 0));
        }
        let s = &mut sums[group];
        s.0 += len;
        s.1 += ent;
        s.2 += 1;
        stats.push(RowStats {
            len,
            entropy: ent,
            group,
        });
    }

    let mut matrix = FeatureMatrix::zeros(scored.len(), WIDTH);
    for (k, &i) in scored.iter().enumerate() {
        let out = matrix.row_mut(k);
        count_chars(rows[i].query, out);
        let st = &stats[i];
        let (sum_len, sum_ent, n) = sums[st.group];
        out[94] = st.len as f32;
        out[95] = st.entropy as f32;
        out[96] = (sum_len / n as f64) as f32;
        out[97] = (sum_ent / n as f64) as f32;
    }
    matrix
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
