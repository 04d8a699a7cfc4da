//! The `escu-v1` feature schema: the exact 98 inputs of Splunk's published ESCU model.
//!
//! Per rank-1 row: counts of the 94 printable characters in the query, then `len` and `entropy`
//! of the query without its last two labels, then the mean of those two over every row of the
//! request with the same (src, "tld") key. The "tld" quirk of the stock notebook (every occurrence
//! of the subdomain part is removed) is reproduced on purpose: the published weights were trained
//! on it. Grouping is by hash tables (split across the cores for large requests), so the cost is
//! linear in the number of rows.

use std::borrow::Cow;
use std::hash::Hasher;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU32, Ordering};

use hashbrown::hash_table::{Entry, HashTable};

use rustc_hash::{FxHashMap, FxHasher};

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

/// Maps a byte to its position in [`ALPHABET`]; bytes not counted (space, tab, control
/// characters, every byte of a non-ASCII character) map to [`UNCOUNTED`].
const CHAR_INDEX: [u8; 256] = {
    let mut table = [UNCOUNTED as u8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The counting slot of bytes outside the alphabet, right after the alphabet's.
const UNCOUNTED: usize = ALPHABET.len();

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
    let mut order = [0u8; 129]; // one spare slot: the branchless loop writes before counting
    let mut distinct = 0;
    for &b in bytes {
        // Without a branch: random text would mispredict "first occurrence?" every few bytes.
        let c = &mut counts[b as usize];
        order[distinct] = b;
        distinct += (*c == 0) as usize;
        *c += 1;
    }
    if let Some(terms) = entropy_terms(bytes.len()) {
        let mut sum = 0.0f64;
        for &b in &order[..distinct] {
            sum += terms[counts[b as usize] as usize];
        }
        return -sum;
    }
    let ln2 = 2f64.ln();
    let total = bytes.len() as f64;
    let mut sum = 0.0f64;
    for &b in &order[..distinct] {
        let p = counts[b as usize] as f64 / total;
        sum += p * (p.ln() / ln2);
    }
    -sum
}

/// Texts up to this long take their entropy terms from a table.
const TERM_TABLE_MAX_LEN: usize = 64;

/// The entropy terms `p * (p.ln() / ln2)` with `p = n / len`, indexed by `n`, for texts of length
/// `len` up to [`TERM_TABLE_MAX_LEN`]: the very expression of the definition, evaluated once per
/// (n, len), so the sums stay bit-identical while the logarithms leave the per-row path.
fn entropy_terms(len: usize) -> Option<&'static [f64]> {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    if len > TERM_TABLE_MAX_LEN {
        return None;
    }
    let table = TABLE.get_or_init(|| {
        let ln2 = 2f64.ln();
        let mut table = Vec::new();
        for total in 0..=TERM_TABLE_MAX_LEN {
            for n in 0..=total {
                let p = n as f64 / total as f64;
                table.push(p * (p.ln() / ln2));
            }
        }
        table
    });
    let start = len * (len + 1) / 2;
    Some(&table[start..start + len + 1])
}

/// Writes the character counts of `query` into the first 94 slots of `out`. Characters outside
/// the alphabet (space, tab, non-ASCII) are not counted (stock: the whole request failed).
/// Counting is in integers (no branch per byte, no float add chained through memory); the
/// counts are exact in f32, so the values equal adding 1.0 per character.
fn count_chars(query: &str, out: &mut [MaybeUninit<f32>]) {
    let mut counts = [0u32; UNCOUNTED + 1];
    for &b in query.as_bytes() {
        counts[CHAR_INDEX[b as usize] as usize] += 1;
    }
    for (slot, &n) in out[..UNCOUNTED].iter_mut().zip(&counts) {
        slot.write(n as f32);
    }
}

/// Hash of a two-string key (src and query, or src and tld).
fn hash_key(a: &str, b: &str) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(a.as_bytes());
    hasher.write_u8(0xff);
    hasher.write(b.as_bytes());
    hasher.finish()
}

/// How a build splits its keys: one shard for small requests, two (one per core) for large ones.
#[derive(Clone, Copy)]
struct Shards {
    count: usize,
}

impl Shards {
    fn for_len(rows: usize) -> Self {
        Self {
            count: if crate::util::pool::worth_splitting(rows) {
                2
            } else {
                1
            },
        }
    }

    /// The shard of a key: a hash bit that neither a table's bucket index (low bits) nor its
    /// control tag (top seven bits) uses.
    fn of(self, hash: u64) -> usize {
        if self.count == 1 {
            0
        } else {
            (hash >> 40) as usize & 1
        }
    }

    /// `work(shard)` for every shard, both at once when there are two.
    fn run<T: Send>(self, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
        if self.count == 1 {
            vec![work(0)]
        } else {
            let (a, b) = rayon::join(|| work(0), || work(1));
            vec![a, b]
        }
    }
}

/// A shard-local number with its shard in the top bit, as the shards record them side by side.
fn tag(shard: usize, local: u32) -> u32 {
    debug_assert!(local < 1 << 31);
    local | (shard as u32) << 31
}

/// The global number of a [`tag`]ged one: shard 1's numbers follow shard 0's.
fn untag(tagged: u32, offsets: [u32; 2]) -> u32 {
    (tagged & !(1 << 31)) + offsets[(tagged >> 31) as usize]
}

/// What every row of one (src, query) pair shares, and its group's key.
struct PairStrings<'a> {
    len: f64,
    entropy: f64,
    src: &'a str,
    tld: Cow<'a, str>,
    /// Hash of (src, tld): the group's shard and its slot in that shard's table.
    group_hash: u64,
}

impl<'a> PairStrings<'a> {
    fn of(row: &Row<'a>) -> Self {
        let w = without_domain(row.query);
        let len = if w.is_ascii() {
            w.len()
        } else {
            w.chars().count()
        } as f64;
        let tld = tld_key_borrowed(row.query, w);
        Self {
            len,
            entropy: entropy(w),
            src: row.src,
            group_hash: hash_key(row.src, &tld),
            tld,
        }
    }
}

/// What the features of one pair need once every group is summed.
struct PairStats {
    len: f64,
    entropy: f64,
    group: u32,
}

/// The per-request history the features need: string features per (src, query) pair, each
/// pair's (src, tld) group, and the group sums, built from all rows. Features of any subset of
/// rows can then be produced in chunks, so memory stays bounded however many rows a request has.
///
/// Rows of the same pair share their string features, so those are computed once per pair. The
/// group sums are accumulated row by row in input order. The stock container's float64 sums
/// are numpy's pairwise ones, so a float64 average may differ in its last bits (in about one
/// row in five of the golden cases); the features are float32, and after that cast none of the
/// golden cases' values differs (a difference needs the float64 sum to straddle a float32
/// rounding boundary). Large requests are built on both cores, split by hash into two shards:
/// each shard owns its pairs and groups and scans the rows in input order, so every group's sum
/// adds its rows in the same order as one core would.
pub struct History {
    /// Pair of each row.
    row_pair: Vec<u32>,
    pairs: Vec<PairStats>,
    /// (sum of len, sum of entropy, count) per (src, tld) group.
    sums: Vec<(f64, f64, u32)>,
}

impl History {
    pub fn build(rows: &[Row<'_>]) -> Self {
        let shards = Shards::for_len(rows.len());
        // Every row's pair hash, by halves of the rows when there are two shards.
        let hash_all = |rows: &[Row<'_>]| -> Vec<u64> {
            rows.iter().map(|r| hash_key(r.src, r.query)).collect()
        };
        let pair_hashes = if shards.count == 2 {
            let (first, second) = rows.split_at(rows.len() / 2);
            let (mut a, b) = rayon::join(|| hash_all(first), || hash_all(second));
            a.extend(b);
            a
        } else {
            hash_all(rows)
        };

        // Pairs, numbered per shard in order of first occurrence. Tables hold (first row, number)
        // and find hashes in `pair_hashes`, so a lookup never rehashes a string.
        let row_pair: Vec<AtomicU32> = (0..rows.len()).map(|_| AtomicU32::new(0)).collect();
        let pair_shards = shards.run(|shard| {
            let mut table: HashTable<(u32, u32)> = HashTable::new();
            let mut pairs: Vec<PairStrings> = Vec::new();
            for (i, (&hash, row)) in pair_hashes.iter().zip(rows).enumerate() {
                if shards.of(hash) != shard {
                    continue;
                }
                let same = |&(first, _): &(u32, u32)| {
                    let other = &rows[first as usize];
                    pair_hashes[first as usize] == hash
                        && other.query == row.query
                        && other.src == row.src
                };
                let rehash = |&(first, _): &(u32, u32)| pair_hashes[first as usize];
                let pair = match table.entry(hash, same, rehash) {
                    Entry::Occupied(e) => e.get().1,
                    Entry::Vacant(e) => {
                        let pair = pairs.len() as u32;
                        e.insert((i as u32, pair));
                        pairs.push(PairStrings::of(row));
                        pair
                    }
                };
                row_pair[i].store(tag(shard, pair), Ordering::Relaxed);
            }
            pairs
        });
        let pair_offsets = [0, pair_shards[0].len() as u32];
        let pairs: Vec<PairStrings> = pair_shards.into_iter().flatten().collect();

        // Groups, numbered per shard in pair order; tables hold (a pair of the group, number).
        let pair_group: Vec<AtomicU32> = (0..pairs.len()).map(|_| AtomicU32::new(0)).collect();
        let group_counts = shards.run(|shard| {
            let mut table: HashTable<(u32, u32)> = HashTable::new();
            for (p, strings) in pairs.iter().enumerate() {
                let hash = strings.group_hash;
                if shards.of(hash) != shard {
                    continue;
                }
                let same = |&(q, _): &(u32, u32)| {
                    let other = &pairs[q as usize];
                    other.group_hash == hash && other.tld == strings.tld && other.src == strings.src
                };
                let rehash = |&(q, _): &(u32, u32)| pairs[q as usize].group_hash;
                let next = table.len() as u32;
                let group = match table.entry(hash, same, rehash) {
                    Entry::Occupied(e) => e.get().1,
                    Entry::Vacant(e) => {
                        e.insert((p as u32, next));
                        next
                    }
                };
                pair_group[p].store(tag(shard, group), Ordering::Relaxed);
            }
            table.len() as u32
        });
        let group_offsets = [0, group_counts[0]];
        let pairs: Vec<PairStats> = pairs
            .iter()
            .zip(pair_group)
            .map(|(strings, group)| PairStats {
                len: strings.len,
                entropy: strings.entropy,
                group: untag(group.into_inner(), group_offsets),
            })
            .collect();
        let row_pair: Vec<u32> = row_pair
            .into_iter()
            .map(|pair| untag(pair.into_inner(), pair_offsets))
            .collect();

        // Sums row by row in input order; each shard adds into its own groups.
        let mut sums = vec![(0.0, 0.0, 0u32); group_counts.iter().sum::<u32>() as usize];
        let accumulate = |sums: &mut [(f64, f64, u32)], first_group: u32| {
            for &pair in &row_pair {
                let p = &pairs[pair as usize];
                if let Some(sum) = p
                    .group
                    .checked_sub(first_group)
                    .and_then(|g| sums.get_mut(g as usize))
                {
                    sum.0 += p.len;
                    sum.1 += p.entropy;
                    sum.2 += 1;
                }
            }
        };
        let (first, second) = sums.split_at_mut(group_offsets[1] as usize);
        if shards.count == 2 {
            rayon::join(
                || accumulate(first, 0),
                || accumulate(second, group_offsets[1]),
            );
        } else {
            accumulate(first, 0);
        }
        Self {
            row_pair,
            pairs,
            sums,
        }
    }

    /// Features of the rows at `scored` (indices into the rows the history was built from).
    /// Large batches are split across the cores.
    pub fn features(&self, rows: &[Row<'_>], scored: &[usize]) -> FeatureMatrix {
        // Every value is written below, so the matrix is not zeroed first (a serial pass over
        // megabytes for a large request).
        let len = scored.len() * WIDTH;
        let mut values: Vec<f32> = Vec::with_capacity(len);
        self.fill(rows, scored, &mut values.spare_capacity_mut()[..len]);
        // SAFETY: `fill` wrote all `len` values (each row's `WIDTH` slots).
        unsafe { values.set_len(len) };
        FeatureMatrix {
            rows: scored.len(),
            width: WIDTH,
            values,
        }
    }

    fn fill(&self, rows: &[Row<'_>], scored: &[usize], out: &mut [MaybeUninit<f32>]) {
        if crate::util::pool::worth_splitting(scored.len()) {
            let half = scored.len() / 2;
            let (first, second) = out.split_at_mut(half * WIDTH);
            rayon::join(
                || self.fill(rows, &scored[..half], first),
                || self.fill(rows, &scored[half..], second),
            );
            return;
        }
        for (k, (&i, out)) in scored.iter().zip(out.chunks_exact_mut(WIDTH)).enumerate() {
            // Scored rows are scattered over the request, and each reads its row, its text and
            // its pair: waiting for those loads was most of this loop. Ask for them some rows
            // ahead, the row itself first (its text's address is in it).
            if let Some(&ahead) = scored.get(k + 16) {
                prefetch(&rows[ahead]);
                prefetch(&self.row_pair[ahead]);
            }
            if let Some(&ahead) = scored.get(k + 8) {
                prefetch(rows[ahead].query.as_ptr());
                prefetch(&self.pairs[self.row_pair[ahead] as usize]);
            }
            count_chars(rows[i].query, out);
            let p = &self.pairs[self.row_pair[i] as usize];
            let (sum_len, sum_ent, n) = self.sums[p.group as usize];
            out[94].write(p.len as f32);
            out[95].write(p.entropy as f32);
            out[96].write((sum_len / n as f64) as f32);
            out[97].write((sum_ent / n as f64) as f32);
        }
    }
}

/// Asks the CPU to bring `p`'s cache line in (a hint: no effect on results, none off x86-64).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
    // SAFETY: a prefetch never faults, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
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
            // Longer than the entropy term table.
            "4a6f686e20446f65206c6f676765642d696e2061742031303a3030206e6f772d3132333435363738.x.tunnel.example",
            "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789.ex.com",
        ];
        // Entropy summed over distinct characters in first-occurrence order.
        let definition = |w: &str| -> f64 {
            let chars: Vec<char> = w.chars().collect();
            let mut seen: Vec<char> = Vec::new();
            let mut sum = 0.0;
            for c in &chars {
                if !seen.contains(c) {
                    seen.push(*c);
                    let p = chars.iter().filter(|x| *x == c).count() as f64 / chars.len() as f64;
                    sum += p * (p.ln() / 2f64.ln());
                }
            }
            -sum
        };
        for q in queries {
            let w = without_domain(q);
            assert_eq!(tld_key_borrowed(q, w), tld_key(q, w), "{q}");
            assert!(
                entropy(w) == definition(w),
                "{q}: {} vs {}",
                entropy(w),
                definition(w)
            );
        }
        // Every ASCII character, then some again: the most distinct characters a text can have.
        let every_ascii: String = (0u8..128).map(char::from).chain("again".chars()).collect();
        assert!(entropy(&every_ascii) == definition(&every_ascii));
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

    /// The features by their definition, one row at a time: what the sharded, parallel build
    /// must reproduce bit for bit.
    fn reference(rows: &[Row<'_>], scored: &[usize]) -> FeatureMatrix {
        let mut sums: FxHashMap<(String, String), (f64, f64, u32)> = FxHashMap::default();
        for row in rows {
            let w = without_domain(row.query);
            let sum = sums
                .entry((row.src.to_string(), tld_key(row.query, w)))
                .or_default();
            sum.0 += w.chars().count() as f64;
            sum.1 += entropy(w);
            sum.2 += 1;
        }
        let mut m = FeatureMatrix::zeros(scored.len(), WIDTH);
        for (k, &i) in scored.iter().enumerate() {
            let q = rows[i].query;
            let w = without_domain(q);
            let out = m.row_mut(k);
            for b in q.bytes() {
                if let Some(slot) = ALPHABET.iter().position(|&a| a == b) {
                    out[slot] += 1.0;
                }
            }
            let (sl, se, n) = sums[&(rows[i].src.to_string(), tld_key(q, w))];
            out[94] = w.chars().count() as f32;
            out[95] = entropy(w) as f32;
            out[96] = (sl / n as f64) as f32;
            out[97] = (se / n as f64) as f32;
        }
        m
    }

    #[test]
    fn large_requests_built_on_both_cores_equal_the_definition() {
        // Enough rows for the parallel paths; few sources and domains so groups span both
        // halves of the rows, and names whose tld key hits the every-occurrence quirk.
        let queries: Vec<String> = (0..12_000)
            .map(|i| match i % 5 {
                0 => format!("{:x}{}.t{}.example.com", i * 7919, i % 13, i % 3),
                1 => format!("www.site{}.org", i % 17),
                2 => "e.example.com".to_string(),
                3 => format!("a{}.a{}.amazon.com", i % 4, i % 4),
                _ => format!("x{}.bücher.de", i % 7),
            })
            .collect();
        let srcs = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "fe80::1"];
        let rows: Vec<Row> = queries
            .iter()
            .enumerate()
            .map(|(i, q)| Row {
                src: srcs[(i / 7) % srcs.len()],
                query: q,
            })
            .collect();
        assert!(rows.len() >= 2 * crate::features::PARALLEL_MIN_ROWS);
        let scored: Vec<usize> = (0..rows.len()).filter(|i| i % 3 != 1).collect();
        let fast = compute(&rows, &scored);
        let slow = reference(&rows, &scored);
        for k in 0..scored.len() {
            let (f, s) = (fast.row(k), slow.row(k));
            assert!(
                f.iter().zip(s).all(|(a, b)| a.to_bits() == b.to_bits()),
                "row {}: {f:?} vs {s:?}",
                scored[k]
            );
        }
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
