//! The `dnsexfil-v3` feature schema: `dnsexfil-v2` plus signals that do not depend on the
//! encoding alphabet, so tools the model never saw still stand out.
//!
//! Tools defeat v2's two signals (encoding alphabets; many names under one registered domain)
//! by encoding with words or CDN-like names, by putting each chunk under another domain, or by
//! riding a service whose every host name is its own "registered domain" in the private section
//! of the Public Suffix List (`d1abc.cloudfront.net`). So v3 also aggregates at the **ICANN
//! boundary** of the list (`cloudfront.net`), and adds what stays true whatever the alphabet:
//! how many names of one template a source sends under one domain, whether anyone else queries
//! those names and domains, and how many long-subdomain names a source spreads over domains
//! nobody else uses (domain rotation). Linear in the rows, like v2, whose history it extends.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use rustc_hash::{FxHashMap, FxHasher};

use super::v2;
use super::{FeatureMatrix, FeatureRows, Row};

/// v3's own feature names, in column order after v2's 30 ([`v2::NAMES`], computed at the ICANN
/// boundary: `d1abc.cloudfront.net` is the subdomain `d1abc` of `cloudfront.net`).
pub const EXTRA_NAMES: [&str; 18] = [
    // v3: the full Public Suffix List view, and per (source, ICANN domain)
    "psl_pair_log_distinct",
    "icann_pair_distinct_share",
    "icann_pair_log_domains",
    "psl_domain_log_srcs",
    "icann_pair_template_share",
    "icann_pair_template_log_count",
    "name_log_srcs",
    "icann_pair_unique_name_share",
    // v3: per source
    "src_log_distinct",
    "src_log_unique_domains",
    "src_unique_domain_share",
    "src_log_payload_names_on_unique_domains",
    "src_log_unique_domains_with_payload",
    // v3: per name, and length spread per (source, ICANN domain)
    "sub_class_switch_ratio",
    "sub_ipv4_like",
    "icann_pair_sub_len_cv",
    "known_lookup_service",
    "icann_pair_excess",
];

/// Number of features per row.
pub const WIDTH: usize = V2_WIDTH + EXTRA_NAMES.len();

const V2_WIDTH: usize = v2::WIDTH;

/// Feature names in column order.
pub fn names() -> impl Iterator<Item = &'static str> {
    v2::NAMES.iter().chain(&EXTRA_NAMES).copied()
}

/// Zones of reputation services that put a hash, address or domain in the name by design
/// (endpoint-security file reputation, DNS blocklists, RFC 5782). Their bursts look exactly like
/// hex or base32 exfiltration to a host nobody else uses, so the model is told where a name
/// belongs to one. Only services whose authoritative servers belong to the vendor are listed:
/// no CDN or cloud zone, where anyone can host names (PacketWhisper's CloudFront cipher).
pub const LOOKUP_SERVICES: [&str; 20] = [
    "sophosxl.net",
    "avqs.mcafee.com",
    "avts.mcafee.com",
    "gti.mcafee.com",
    "e5.sk",
    "trendmicro.com",
    "webroot.com",
    "bitdefender.net",
    "kaspersky-labs.com",
    "hash.cymru.com",
    "spamhaus.org",
    "dq.spamhaus.net",
    "spamcop.net",
    "sorbs.net",
    "barracudacentral.org",
    "uribl.com",
    "surbl.org",
    "mailspike.net",
    "senderbase.org",
    "dnswl.org",
];

/// Whether `query` is under one of [`LOOKUP_SERVICES`] (at a label boundary, any case).
pub fn is_lookup_service(query: &str) -> bool {
    let name = query.trim_end_matches('.').as_bytes();
    LOOKUP_SERVICES.iter().any(|zone| {
        let zone = zone.as_bytes();
        name.len() >= zone.len()
            && name[name.len() - zone.len()..].eq_ignore_ascii_case(zone)
            && (name.len() == zone.len() || name[name.len() - zone.len() - 1] == b'.')
    })
}

/// The registered domain at the ICANN boundary: a registered domain under a private-section
/// suffix (`d1abc.cloudfront.net`, suffix `cloudfront.net`) maps to the suffix's own registered
/// domain (`cloudfront.net`); others map to themselves.
pub fn icann_domain(registered: &str) -> &str {
    match psl::suffix(registered.as_bytes()) {
        Some(suffix) if suffix.typ() == Some(psl::Type::Private) => {}
        _ => return registered,
    }
    // The longest tail that is itself an ICANN suffix; the domain is one label more.
    let mut icann_suffix_start = None;
    let mut start = registered.len();
    while let Some(dot) = registered[..start].rfind('.') {
        let tail = &registered[dot + 1..];
        if is_icann_suffix(tail) {
            icann_suffix_start = Some(dot + 1);
        }
        start = dot;
    }
    match icann_suffix_start {
        Some(at) if at > 0 => {
            let label_start = registered[..at - 1].rfind('.').map_or(0, |dot| dot + 1);
            &registered[label_start..]
        }
        _ => registered,
    }
}

/// Whether `tail` is, as a whole, a suffix of the list's ICANN section.
fn is_icann_suffix(tail: &str) -> bool {
    psl::suffix(tail.as_bytes())
        .is_some_and(|s| s.typ() == Some(psl::Type::Icann) && s.as_bytes().len() == tail.len())
}

/// Splits a query into (lower-case subdomain below the ICANN-boundary domain, that domain, the
/// full Public Suffix List registered domain).
///
/// A name whose last label cannot be a top-level domain (digits, or longer than any TLD), such
/// as dnscat2's `dnscat.<hex>` sent without a domain, belongs to the root `.`: it is all
/// subdomain, instead of being its own "registered domain" that shows no history.
pub fn split_icann(query: &str) -> (String, String, Option<String>) {
    split_icann_noting_suffix(query, None)
}

/// [`split_icann`], also telling in `known_suffix` (when given) whether a known suffix of the
/// Public Suffix List covers the name (trailing dots trimmed, in lower case), as
/// `psl::suffix(..).is_some_and(|s| s.is_known())` would: v4's `internal_zone` takes it from the
/// split's own lookup instead of looking the name up again.
pub(crate) fn split_icann_noting_suffix(
    query: &str,
    known_suffix: Option<&mut bool>,
) -> (String, String, Option<String>) {
    let lower = query.trim_end_matches('.').to_ascii_lowercase();
    let known = |name: &str| psl::suffix(name.as_bytes()).is_some_and(|s| s.is_known());
    if under_the_root(&lower) {
        if let Some(k) = known_suffix {
            *k = known(&lower);
        }
        return (lower, ".".to_string(), Some(".".to_string()));
    }
    // `psl::domain_str`, keeping the suffix it found.
    let domain = psl::domain(lower.as_bytes());
    if let Some(k) = known_suffix {
        *k = match domain {
            Some(d) => d.suffix().is_known(),
            None => known(&lower),
        };
    }
    let registered = domain
        .and_then(|d| std::str::from_utf8(d.trim().as_bytes()).ok())
        .map(str::to_string)
        .unwrap_or_else(|| v2::last_labels(&lower, 2).to_string());
    let icann = icann_domain(&registered).to_string();
    let sub = lower
        .strip_suffix(&icann)
        .map(|s| s.trim_end_matches('.'))
        .unwrap_or("")
        .to_string();
    (sub, icann, Some(registered))
}

/// The ICANN-boundary domain of `lower` (a name already in lower case without final dots),
/// borrowed from it: [`split_icann`]'s second part without its copies, for the history, which
/// groups each name by it.
pub fn icann_domain_of(lower: &str) -> &str {
    if under_the_root(lower) {
        return ".";
    }
    let registered = psl::domain(lower.as_bytes())
        .and_then(|d| std::str::from_utf8(d.trim().as_bytes()).ok())
        .unwrap_or_else(|| v2::last_labels(lower, 2));
    icann_domain(registered)
}

/// Whether `lower` has several labels and its last cannot be a top-level domain (digits in it,
/// or longer than 24 characters): such a name belongs to the root `.`.
fn under_the_root(lower: &str) -> bool {
    let tld = lower.rsplit('.').next().unwrap_or("");
    let plausible_tld = (2..=24).contains(&tld.len())
        && (tld.bytes().all(|b| b.is_ascii_alphabetic()) || tld.starts_with("xn--"));
    !plausible_tld && lower.contains('.')
}

/// Whether `domain` is `zone` or a parent of it at a label boundary.
fn zone_parent_is(zone: &str, domain: &str) -> bool {
    zone.strip_suffix(domain)
        .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
}

/// What v3 needs of one name beyond v2's shape.
#[derive(Debug, Clone, Copy, Default)]
struct NameExtras {
    /// Label lengths and character classes of the subdomain, hashed (names are grouped by
    /// template within their (source, ICANN domain) pair).
    template: u64,
    class_switch_ratio: f32,
    ipv4_like: bool,
    known_service: bool,
    /// A label of 20 or more characters and no `_service` label (DKIM, SRV): a chunk of data.
    payload_like: bool,
}

/// Byte classes of [`name_extras`]: ASCII letter, ASCII digit, anything else.
const OTHER: u8 = 0;
const LETTER: u8 = 1;
const DIGIT: u8 = 2;
/// No letter or digit yet.
const NONE: u8 = 3;

const BYTE_CLASS: [u8; 256] = {
    let mut table = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        if byte.is_ascii_alphabetic() {
            table[b] = LETTER;
        } else if byte.is_ascii_digit() {
            table[b] = DIGIT;
        }
        b += 1;
    }
    table
};

fn name_extras(sub: &str) -> NameExtras {
    let mut hasher = FxHasher::default();
    // Class of the last letter or digit, across labels.
    let (mut switches, mut classed, mut previous_class) = (0u32, 0u32, NONE);
    let (mut labels, mut numeric_labels, mut longest, mut service) = (0u32, 0u32, 0usize, false);
    for label in sub.split('.').filter(|l| !l.is_empty()) {
        labels += 1;
        longest = longest.max(label.len());
        service |= label.starts_with('_');
        // One table look-up per byte instead of three class tests; `seen` has a bit per class.
        let mut seen = 0u8;
        for b in label.bytes() {
            let class = BYTE_CLASS[b as usize];
            seen |= 1 << class;
            if class != OTHER {
                switches += (previous_class != NONE && previous_class != class) as u32;
                previous_class = class;
                classed += 1;
            }
        }
        let letters = seen & (1 << LETTER) != 0;
        let digits = seen & (1 << DIGIT) != 0;
        let others = seen & (1 << OTHER) != 0;
        numeric_labels += (digits && !letters && !others && label.len() <= 3) as u32;
        (label.len(), letters, digits, others).hash(&mut hasher);
    }
    labels.hash(&mut hasher);
    NameExtras {
        template: hasher.finish(),
        class_switch_ratio: switches as f32 / classed.max(1) as f32,
        ipv4_like: labels >= 4 && numeric_labels >= 4,
        payload_like: longest >= 20 && !service,
        known_service: false,
    }
}

/// What v3 adds to one of v2's (source, ICANN domain) pairs.
#[derive(Default, Clone, Copy)]
struct PairExtras {
    /// ln(1 + its distinct names) - ln(1 + the mean of the other sources' under the domain):
    /// a source sending far more names under a popular domain than anyone else.
    excess: f32,
    /// No other source queries this ICANN domain.
    unique_domain: bool,
    /// Full Public Suffix List registered domains among its names.
    domains: u32,
    /// Its names that no other source queries.
    unique_names: u32,
    /// A payload-like name of it was counted for its source (domain rotation).
    payload_counted: bool,
    sum_len: f64,
    sum_len_sq: f64,
}

#[derive(Default, Clone, Copy)]
struct SourceTotals {
    distinct: u32,
    unique_domains: u32,
    payload_on_unique: u32,
    unique_with_payload: u32,
}

/// The per-request history of the dnsexfil-v3 features: v2's history at the ICANN boundary (its
/// (source, domain) pairs are v3's (source, ICANN domain) pairs), and what v3 adds to it.
pub struct History {
    base: v2::History,
    /// Per distinct (src, query): name extras, names of the same template in its pair, sources
    /// sending the same name, and names of its (src, full registered domain) pair with the
    /// sources of that registered domain.
    query_extras: Vec<NameExtras>,
    query_template_count: Vec<u32>,
    query_name_srcs: Vec<u32>,
    query_registered: Vec<(u32, u32)>,
    pairs: Vec<PairExtras>,
    sources: Vec<SourceTotals>,
}

/// Computes the dnsexfil-v3 features of the rows at `scored`, with all `rows` as history.
pub fn compute(rows: &[Row<'_>], scored: &[usize]) -> FeatureMatrix {
    History::build(rows).features(scored)
}

impl History {
    /// Linear in the number of rows: v2's history at the ICANN boundary, with v3's look at each
    /// distinct name as v2 first meets it, then one pass over the distinct names.
    pub fn build(rows: &[Row<'_>]) -> Self {
        Self::build_with_own(rows, |_, _| (), super::PARALLEL_MIN_ROWS).0
    }

    /// [`History::build`], also computing `own` of each distinct (src, query)'s text and whether
    /// a known public suffix covers the name (see [`split_icann_noting_suffix`]), in the order
    /// the names first appear: a richer schema's per-name values, computed with v3's (on both
    /// cores from `parallel_from` distinct names) from the same Public Suffix List lookup.
    pub(crate) fn build_with_own<'a, O: Send>(
        rows: &[Row<'a>],
        own: impl Fn(&str, bool) -> O + Sync,
        parallel_from: usize,
    ) -> (Self, Vec<O>) {
        // ICANN domains that hold a lookup service's zone: only their names need the check.
        let mut lookup_domains: Vec<bool> = Vec::new();
        let mut icann_names: Vec<u32> = Vec::new();
        let mut registered_srcs: Vec<u32> = Vec::new();
        // Each map gives a key its slot in a Vec of counts, and each name remembers its slots:
        // the second pass reads counts by index instead of hashing every key again.
        // (src, full registered domain) -> slot of its distinct names.
        let mut registered_pair: FxHashMap<(u32, u32), u32> = FxHashMap::default();
        let mut registered_names: Vec<u32> = Vec::new();
        // (pair, template) -> slot of its names.
        let mut template_of: FxHashMap<(u32, u64), u32> = FxHashMap::default();
        let mut template_names: Vec<u32> = Vec::new();
        // Name text -> slot of the sources sending it.
        let mut name_of: FxHashMap<&'a str, u32> = FxHashMap::default();
        let mut name_srcs: Vec<u32> = Vec::new();
        // Per distinct (src, query): its (registered pair, template, name) slots.
        let mut query_slots: Vec<(u32, u32, u32)> = Vec::new();
        let mut pairs: Vec<PairExtras> = Vec::new();
        let mut sources: Vec<SourceTotals> = Vec::new();
        let mut query_extras = Vec::new();
        let mut owns = Vec::new();

        // What depends on the name's text alone: computed per distinct name by v2's build, in
        // parallel when the request is large.
        let split = |query: &str| {
            let mut known_suffix = false;
            let (sub_lower, icann, registered) =
                split_icann_noting_suffix(query, Some(&mut known_suffix));
            let trimmed = query.trim_end_matches('.');
            // The subdomain below the ICANN domain (`d1abc` of `d1abc.cloudfront.net`), in its
            // original case.
            let icann_len = match icann.as_str() {
                "." => 0,
                domain => domain.len(),
            };
            let sub = trimmed
                .get(..trimmed.len().saturating_sub(icann_len))
                .unwrap_or("")
                .trim_end_matches('.');
            let extras = name_extras(sub);
            let sub_len = sub.len();
            let own = own(query, known_suffix);
            (sub_lower, icann, registered, (extras, sub_len, own))
        };
        // Ids of pairs, sources and domains are handed out in order: a new one is the next index.
        let on_new_name =
            |name: v2::NewName<'a, '_>, (mut extras, sub_len, own): (NameExtras, usize, O)| {
                let (pair, src, icann) = (name.pair, name.src, name.domain);
                let registered = name.alternate.unwrap_or(0);
                let query = name.query;
                if icann == icann_names.len() {
                    icann_names.push(0);
                    let d = name.domain_name;
                    lookup_domains.push(LOOKUP_SERVICES.iter().any(|zone| zone_parent_is(zone, d)));
                }
                if registered as usize == registered_srcs.len() {
                    registered_srcs.push(0);
                }
                if pair == pairs.len() {
                    pairs.push(PairExtras::default());
                }
                if src == sources.len() {
                    sources.push(SourceTotals::default());
                }
                extras.known_service = lookup_domains[icann] && is_lookup_service(query);
                icann_names[icann] += 1;
                let p = &mut pairs[pair];
                let len = sub_len as f64;
                p.sum_len += len;
                p.sum_len_sq += len * len;
                let registered_slot = slot(
                    &mut registered_pair,
                    &mut registered_names,
                    (src as u32, registered),
                );
                if registered_names[registered_slot as usize] == 0 {
                    p.domains += 1;
                    registered_srcs[registered as usize] += 1;
                }
                registered_names[registered_slot as usize] += 1;
                // The template's pair fixes its ICANN domain, so names of one template in one pair
                // share the domain too.
                let template_slot = slot(
                    &mut template_of,
                    &mut template_names,
                    (pair as u32, extras.template),
                );
                template_names[template_slot as usize] += 1;
                let name_slot = slot(&mut name_of, &mut name_srcs, query);
                name_srcs[name_slot as usize] += 1;
                query_slots.push((registered_slot, template_slot, name_slot));
                sources[src].distinct += 1;
                query_extras.push(extras);
                owns.push(own);
            };
        let base = v2::History::build_with(rows, split, on_new_name, parallel_from);
        let distinct = base.distinct_queries();

        // Second pass: counts that need the whole request first.
        let mut query_template_count = Vec::with_capacity(distinct);
        let mut query_name_srcs = Vec::with_capacity(distinct);
        let mut query_registered = Vec::with_capacity(distinct);
        for q in 0..distinct {
            let pair = base.query_pair(q);
            let (src, icann) = base.pair_src_domain(pair);
            let extras = query_extras[q];
            let (registered_slot, template_slot, name_slot) = query_slots[q];
            query_template_count.push(template_names[template_slot as usize]);
            let registered = base.query_alternate[q];
            query_registered.push((
                registered_names[registered_slot as usize],
                registered_srcs[registered as usize],
            ));
            let srcs = name_srcs[name_slot as usize];
            query_name_srcs.push(srcs);
            if srcs == 1 {
                pairs[pair].unique_names += 1;
            }
            if base.domain_sources(icann) == 1 && extras.payload_like {
                let totals = &mut sources[src];
                totals.payload_on_unique += 1;
                if !pairs[pair].payload_counted {
                    pairs[pair].payload_counted = true;
                    totals.unique_with_payload += 1;
                }
            }
        }
        for (pair, extras) in pairs.iter_mut().enumerate() {
            let (src, icann) = base.pair_src_domain(pair);
            let domain_srcs = base.domain_sources(icann);
            if domain_srcs == 1 {
                sources[src].unique_domains += 1;
                extras.unique_domain = true;
            }
            let distinct = base.pair_distinct(pair);
            let others = domain_srcs.saturating_sub(1).max(1) as f32;
            let others_mean = (icann_names[icann] - distinct) as f32 / others;
            extras.excess = (distinct as f32).ln_1p() - others_mean.ln_1p();
        }

        let history = Self {
            base,
            query_extras,
            query_template_count,
            query_name_srcs,
            query_registered,
            pairs,
            sources,
        };
        (history, owns)
    }

    /// The distinct (src, query) index of each row.
    pub(crate) fn row_query(&self) -> &[usize] {
        self.base.row_query()
    }

    /// The v2 history v3 extends (its pairs are at the ICANN boundary).
    pub(crate) fn base(&self) -> &v2::History {
        &self.base
    }

    /// Features of the rows at `scored` (indices into the rows the history was built from).
    pub fn features(&self, scored: &[usize]) -> FeatureMatrix {
        FeatureMatrix::filled(scored, WIDTH, |scored, rows| self.fill(scored, rows))
    }

    /// Writes the features of the rows at `scored` into the first [`WIDTH`] columns of
    /// `matrix`'s rows (v4 fills its wider matrix in place).
    pub(crate) fn fill(&self, scored: &[usize], matrix: &mut FeatureRows<'_>) {
        self.base.fill(scored, matrix);
        let row_query = self.base.row_query();
        for (k, &i) in scored.iter().enumerate() {
            let q = row_query[i];
            let pair_id = self.base.query_pair(q);
            let pair = &self.pairs[pair_id];
            let pair_distinct = self.base.pair_distinct(pair_id);
            let (src, _) = self.base.pair_src_domain(pair_id);
            let (registered_names, registered_srcs) = self.query_registered[q];
            let source = &self.sources[src];
            let extras = &self.query_extras[q];
            let distinct = pair_distinct.max(1) as f64;
            let mean = pair.sum_len / distinct;
            let variance = (pair.sum_len_sq / distinct - mean * mean).max(0.0);
            let out = matrix.row_mut(k);
            let log = log_count;
            out[30] = log(registered_names);
            out[31] = pair_distinct as f32 / source.distinct.max(1) as f32;
            out[32] = log(pair.domains);
            out[33] = log(registered_srcs);
            out[34] = self.query_template_count[q] as f32 / pair_distinct.max(1) as f32;
            out[35] = log(self.query_template_count[q]);
            out[36] = log(self.query_name_srcs[q]);
            out[37] = pair.unique_names as f32 / pair_distinct.max(1) as f32;
            out[38] = log(source.distinct);
            // What the source does elsewhere counts only for a name that could be part of it:
            // else every benign name of an infected host would inherit the host's score.
            if pair.unique_domain {
                out[39] = log(source.unique_domains);
                let icann_domains = self.base.source_domains(src);
                out[40] = source.unique_domains as f32 / icann_domains.max(1) as f32;
                if extras.payload_like {
                    out[41] = log(source.payload_on_unique);
                    out[42] = log(source.unique_with_payload);
                }
            }
            out[43] = extras.class_switch_ratio;
            out[44] = extras.ipv4_like as u8 as f32;
            out[45] = if mean > 0.0 {
                (variance.sqrt() / mean) as f32
            } else {
                0.0
            };
            out[46] = extras.known_service as u8 as f32;
            out[47] = pair.excess;
        }
    }
}

/// The slot of `key` in `counts`, a new zero count if the key is new.
fn slot<K: Hash + Eq>(slots: &mut FxHashMap<K, u32>, counts: &mut Vec<u32>, key: K) -> u32 {
    let next = counts.len() as u32;
    let slot = *slots.entry(key).or_insert(next);
    if slot == next {
        counts.push(0);
    }
    slot
}

/// Counts below this take their logarithm from a table.
const LOG_TABLE_LEN: usize = 1024;

/// `(v as f32).ln_1p()`, bit for bit: small counts (nearly all of them) read it from a table
/// made by that very expression, once per process, instead of calling `log1pf` per feature.
fn log_count(v: u32) -> f32 {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..LOG_TABLE_LEN as u32)
            .map(|v| (v as f32).ln_1p())
            .collect()
    });
    match table.get(v as usize) {
        Some(&log) => log,
        None => (v as f32).ln_1p(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_borrowed_icann_domain_is_the_splits_for_every_name_of_the_dev_log() {
        let log = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/dev/events.csv"
        ))
        .unwrap();
        let odd = [
            "dnscat.0a1b2c3d",
            "WWW.Example.CO.UK.",
            "d1abc.CloudFront.net..",
            "localhost",
            "printer.corp",
            "a.b.xn--p1ai",
            "x.1234",
            "",
            ".",
            "a..b.com",
            "s3.amazonaws.com",
            "bucket.s3.us-east-1.amazonaws.com",
        ];
        let mut checked = 0;
        for query in log.lines().flat_map(|l| l.split(',')).chain(odd) {
            let lower = query.trim_end_matches('.').to_ascii_lowercase();
            assert_eq!(icann_domain_of(&lower), split_icann(query).1, "{query}");
            checked += 1;
        }
        assert!(checked > 100_000, "{checked}");
    }

    fn col(name: &str) -> usize {
        names().position(|n| n == name).unwrap()
    }

    #[test]
    fn private_suffixes_fold_to_their_icann_registered_domain() {
        assert_eq!(icann_domain("d1abc.cloudfront.net"), "cloudfront.net");
        assert_eq!(icann_domain("example.com"), "example.com");
        assert_eq!(icann_domain("northwind.lan"), "northwind.lan");
        assert_eq!(icann_domain("x.github.io"), "github.io");
        assert_eq!(icann_domain("a.b.elb.amazonaws.com"), "amazonaws.com");
        assert_eq!(
            icann_domain("x.s3.eu-west-1.amazonaws.com"),
            "amazonaws.com"
        );
        assert_eq!(icann_domain("bbc.co.uk"), "bbc.co.uk");
    }

    #[test]
    fn cdn_like_names_from_one_source_add_up_under_the_icann_domain() {
        let mut names: Vec<String> = (0..60)
            .map(|i| format!("d5ip4p{:07}.cloudfront.net", i * 7919))
            .collect();
        names.push("dabc123xyz.cloudfront.net".into());
        let mut rows: Vec<Row> = names
            .iter()
            .map(|q| Row {
                src: "10.0.0.66",
                query: q,
            })
            .collect();
        rows.push(Row {
            src: "10.0.0.2",
            query: "dabc123xyz.cloudfront.net",
        });
        let m = compute(&rows, &[0, rows.len() - 1]);
        let (exfil, benign) = (m.row(0), m.row(1));
        // v2's columns now group at the ICANN boundary: one source, 61 names of cloudfront.net.
        assert_eq!(exfil[col("pair_log_distinct")], 61f32.ln_1p());
        assert_eq!(benign[col("pair_log_distinct")], 1f32.ln_1p());
        assert_eq!(exfil[col("domain_log_srcs")], 2f32.ln_1p());
        assert_eq!(exfil[col("sub_len")], 13.0);
        assert_eq!(exfil[col("name_log_srcs")], 1f32.ln_1p());
        assert_eq!(benign[col("name_log_srcs")], 2f32.ln_1p());
        assert!(exfil[col("icann_pair_template_share")] > 0.95);
        assert_eq!(exfil[col("icann_pair_log_domains")], 61f32.ln_1p());
        assert_eq!(
            exfil[col("icann_pair_excess")],
            61f32.ln_1p() - 1f32.ln_1p()
        );
        assert_eq!(
            benign[col("icann_pair_excess")],
            1f32.ln_1p() - 61f32.ln_1p()
        );
        // The full Public Suffix List view sees one name per "registered domain".
        assert_eq!(exfil[col("psl_pair_log_distinct")], 1f32.ln_1p());
        assert_eq!(exfil[col("psl_domain_log_srcs")], 1f32.ln_1p());
        assert_eq!(benign[col("psl_domain_log_srcs")], 2f32.ln_1p());
        assert!(m.values.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn chunks_rotated_over_domains_show_at_the_source() {
        let names: Vec<String> = (0..12)
            .map(|i| format!("{}.rot{i}-files.com", "a1b2c3d4e5f6a7b8c9d0e1f2"))
            .collect();
        let mut rows: Vec<Row> = names.iter().map(|q| Row { src: "h", query: q }).collect();
        rows.push(Row {
            src: "h",
            query: "www.example.com",
        });
        rows.push(Row {
            src: "g",
            query: "www.example.com",
        });
        let m = compute(&rows, &[0, 12]);
        assert_eq!(
            m.row(0)[col("src_log_unique_domains_with_payload")],
            12f32.ln_1p()
        );
        assert_eq!(m.row(0)[col("src_log_unique_domains")], 12f32.ln_1p());
        assert_eq!(m.row(0)[col("src_unique_domain_share")], 12.0 / 13.0);
        assert_eq!(m.row(1)[col("pair_log_volume")], 1f32.ln_1p());
        // A name under a domain other sources use does not inherit the source's rotation.
        assert_eq!(m.row(1)[col("src_log_unique_domains_with_payload")], 0.0);
        assert_eq!(m.row(1)[col("src_log_unique_domains")], 0.0);
    }

    #[test]
    fn names_without_a_possible_top_level_domain_belong_to_the_root() {
        assert_eq!(
            split_icann("dnscat.35a1009c1eb026e623"),
            (
                "dnscat.35a1009c1eb026e623".into(),
                ".".into(),
                Some(".".into())
            )
        );
        assert_eq!(split_icann("host.corp.lan").1, "corp.lan");
        assert_eq!(split_icann("localhost").1, "localhost");
        assert_eq!(split_icann("a.b.xn--p1ai").1, "b.xn--p1ai");
    }

    #[test]
    fn lookup_services_are_recognised_at_label_boundaries() {
        assert!(is_lookup_service("4.3.2.1.zen.spamhaus.org"));
        assert!(is_lookup_service("ab.CD.avqs.McAfee.com."));
        assert!(!is_lookup_service("x.notspamhaus.org"));
        assert!(!is_lookup_service("www.mcafee.com"));
        let rows = [
            Row {
                src: "m",
                query: "4.3.2.1.zen.spamhaus.org",
            },
            Row {
                src: "m",
                query: "www.mcafee.com",
            },
        ];
        let m = compute(&rows, &[0, 1]);
        assert_eq!(m.row(0)[col("known_lookup_service")], 1.0);
        assert_eq!(m.row(1)[col("known_lookup_service")], 0.0);
    }

    #[test]
    fn name_structure_features() {
        let e = name_extras("4.3.2.1.zen");
        assert!(e.ipv4_like);
        let words = name_extras("john.whorfin");
        assert_eq!(words.class_switch_ratio, 0.0);
        let mixed = name_extras("a1b2");
        assert_eq!(mixed.class_switch_ratio, 0.75);
        assert!(name_extras("abcdefghijabcdefghijk").payload_like);
        assert!(!name_extras("abcdefghijabcdefghijk._domainkey").payload_like);
        assert_ne!(
            name_extras("abc.de").template,
            name_extras("abc.def").template
        );
        assert_eq!(
            name_extras("abc.de").template,
            name_extras("xyz.uv").template
        );
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
        ];
        let rows: Vec<Row> = names.iter().map(|q| Row { src: "s", query: q }).collect();
        let all: Vec<usize> = (0..rows.len()).collect();
        let m = compute(&rows, &all);
        assert!(m.values.iter().all(|v| v.is_finite()));
        assert_eq!(m.width, WIDTH);
    }
}
