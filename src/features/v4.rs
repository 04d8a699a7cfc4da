//! The `dnsexfil-v4` feature schema: `dnsexfil-v3` plus two facts about where a name lives.
//!
//! - `internal_zone`: the name is under no suffix of the Public Suffix List (`.local`, `.lan`,
//!   `.internal`, `.corp`, bare host names): only the site's own resolvers answer for it. In-cluster
//!   Kubernetes names (`<service>.<namespace>.svc.cluster.local`) come by the hundred and are made
//!   of words, as dictionary encodings are. It is no allowlist: a tunnel that sends its queries
//!   straight to the attacker's server needs no public delegation (dnsteal's file names, iodine's
//!   or dnscat2's names without a domain), and such sessions are in training.
//! - `service_label_inside`: a label other than the first starts with `_` and is a short word
//!   (`<selector>._domainkey.`, `_tcp.`, `_dmarc.`): the DNS's conventions for keys and services
//!   (RFC 6376, RFC 2782), where a random-looking first label is a DKIM selector. Whoever owns a
//!   domain can name labels so, and the randomised threat family does: it is a context for the
//!   other features, not a pass. v2's `is_service_label` only sees a first label.
//!
//! Linear in the rows: v3's history, and two checks per distinct name as v3 first splits it.

use super::v3;
use super::{FeatureMatrix, FeatureRows, Row};

/// v4's own feature names, in column order after v3's.
pub const EXTRA_NAMES: [&str; 2] = ["internal_zone", "service_label_inside"];

/// Number of features per row.
pub const WIDTH: usize = v3::WIDTH + EXTRA_NAMES.len();

/// Feature names in column order.
pub fn names() -> impl Iterator<Item = &'static str> {
    v3::names().chain(EXTRA_NAMES)
}

/// Features of the rows at `scored`, with all of `rows` as history.
pub fn compute(rows: &[Row<'_>], scored: &[usize]) -> FeatureMatrix {
    History::build(rows).features(scored)
}

/// v3's per-request history, and v4's own two features per distinct (src, query): they need
/// only the name, so they are computed as v3 first splits it, while its text is at hand, and
/// from the same Public Suffix List lookup.
pub struct History {
    v3: v3::History,
    /// Per distinct (src, query): (`internal_zone`, `service_label_inside`).
    own: Vec<(bool, bool)>,
}

impl History {
    pub fn build(rows: &[Row<'_>]) -> Self {
        Self::build_parallel_from(rows, super::PARALLEL_MIN_ROWS)
    }

    /// [`History::build`], splitting names on the rayon pool from `parallel_from` distinct
    /// names (the tests compare both ways).
    fn build_parallel_from(rows: &[Row<'_>], parallel_from: usize) -> Self {
        let own_of = |query: &str, known_suffix: bool| {
            (
                internal_zone_given(query, known_suffix),
                has_service_label_inside(query),
            )
        };
        let (v3, own) = v3::History::build_with_own(rows, own_of, parallel_from);
        Self { v3, own }
    }

    /// The v3 history v4 extends.
    pub(crate) fn v3(&self) -> &v3::History {
        &self.v3
    }

    /// Features of the rows at `scored` (indices into `rows`, the rows the history was built
    /// from).
    pub fn features(&self, scored: &[usize]) -> FeatureMatrix {
        FeatureMatrix::filled(scored, WIDTH, |scored, rows| self.fill(scored, rows))
    }

    /// Writes the features of the rows at `scored` into the first [`WIDTH`] columns of
    /// `matrix`'s rows (v5 fills its wider matrix in place).
    pub(crate) fn fill(&self, scored: &[usize], matrix: &mut FeatureRows<'_>) {
        self.v3.fill(scored, matrix);
        let row_query = self.v3.row_query();
        for (k, &i) in scored.iter().enumerate() {
            let (internal, service) = self.own[row_query[i]];
            let out = matrix.row_mut(k);
            out[v3::WIDTH] = internal as u8 as f32;
            out[v3::WIDTH + 1] = service as u8 as f32;
        }
    }
}

/// No suffix of the Public Suffix List (which lists every delegated top-level domain) covers
/// the name. The whole name is looked up: some countries are listed only below their top level
/// (`*.ck`, `co.za`), so their last label alone is unknown. A name without a dot is a bare host
/// name, also resolved locally.
pub fn is_internal_zone(query: &str) -> bool {
    let name = query.trim_end_matches('.').to_ascii_lowercase();
    let known_suffix = psl::suffix(name.as_bytes()).is_some_and(|s| s.is_known());
    internal_zone_given(query, known_suffix)
}

/// [`is_internal_zone`] given whether a known suffix covers the name (trailing dots trimmed, in
/// lower case).
fn internal_zone_given(query: &str, known_suffix: bool) -> bool {
    let name = query.trim_end_matches('.');
    if name.is_empty() || name.ends_with('.') {
        return false;
    }
    if !name.contains('.') {
        return true;
    }
    !known_suffix
}

/// A label after the first is `_` and 2 to 24 letters, digits or hyphens in one case (`_tcp`
/// or `_TCP`; a mixed-case label is an encoding's, not a service's).
pub fn has_service_label_inside(query: &str) -> bool {
    // Such a label follows a dot: most names have no `._` and need no look at their labels.
    if !query.contains("._") {
        return false;
    }
    query.split('.').skip(1).any(|label| {
        label.strip_prefix('_').is_some_and(|word| {
            let one_case = !word.bytes().any(|b| b.is_ascii_lowercase())
                || !word.bytes().any(|b| b.is_ascii_uppercase());
            (2..=24).contains(&word.len())
                && one_case
                && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_zones_are_those_no_public_suffix_covers() {
        for name in [
            "api.payments.svc.cluster.local",
            "fileserver.hq.northwind.lan",
            "db.corp",
            "printer",
            "x.y.internal",
            "NAS.LAN.",
            // A bare name, with or without the final dot, is resolved by the search list.
            "printer.",
        ] {
            assert!(is_internal_zone(name), "{name}");
        }
        for name in [
            "www.example.com",
            "d1abc.cloudfront.net",
            "a.b.co.uk",
            "x.xn--p1ai",
            "4.3.2.1.in-addr.arpa",
            "",
            "www.example.com.",
            // Countries listed only below their top level.
            "www.standardbank.co.za",
            "x.com.np",
            "a.b.ck",
        ] {
            assert!(!is_internal_zone(name), "{name}");
        }
    }

    #[test]
    fn service_labels_are_found_after_the_first_label() {
        assert!(has_service_label_inside(
            "mzxw6ytboi2dgnzsgq3dmnzw._domainkey.example.com"
        ));
        assert!(has_service_label_inside(
            "_ldap._tcp.dc._msdcs.corp.example"
        ));
        assert!(has_service_label_inside("x._dmarc.example.org"));
        assert!(has_service_label_inside("_SIP._TCP.EXAMPLE.COM"));
        // A first label alone is v2's `is_service_label`; base64url chunks may start with `_`
        // but carry upper case or run long.
        assert!(!has_service_label_inside("_dmarc.example.org"));
        assert!(!has_service_label_inside("abc._Zq9xK.example.com"));
        assert!(!has_service_label_inside(
            "abc._aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.com"
        ));
        assert!(!has_service_label_inside("www.example.com"));
    }

    #[test]
    fn internal_zone_from_the_split_is_the_direct_lookup() {
        let labels = [
            "",
            "www",
            "WWW",
            "example",
            "co",
            "uk",
            "CO.UK",
            "com",
            "ck",
            "www.ck",
            "b.ck",
            "za",
            "co.za",
            "local",
            "svc.cluster",
            "lan",
            "xn--p1ai",
            "35a1009c1eb0",
            "123",
            "cloudfront.net",
            "d1abc",
            "github.io",
            "blogspot",
            "bücher",
            "例え",
            "jp",
            "arpa",
            "in-addr",
            "_tcp",
            "x-y",
        ];
        let mut names: Vec<String> = Vec::new();
        for a in labels {
            names.push(a.to_string());
            for b in labels {
                names.push(format!("{a}.{b}"));
                names.push(format!("{a}.{b}."));
                names.push(format!("q.{a}.{b}.."));
            }
        }
        let rows: Vec<Row> = names.iter().map(|q| Row { src: "s", query: q }).collect();
        let all: Vec<usize> = (0..rows.len()).collect();
        let m = compute(&rows, &all);
        for (k, name) in names.iter().enumerate() {
            let expected = is_internal_zone(name) as u8 as f32;
            assert_eq!(m.row(k)[v3::WIDTH], expected, "{name}");
        }
    }

    #[test]
    fn names_split_on_the_pool_give_the_features_of_one_sequential_pass() {
        // Enough distinct names for two blocks of the parallel split, of every kind it treats apart:
        // private-section CDN names, internal zones, root names, service labels, mixed case,
        // non-ASCII, repeats and names shared between sources.
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let suffixes = [
            "cloudfront.net",
            "example.com",
            "corp.lan",
            "shop.svc.cluster.local",
            "b\u{e4}ckerei.de",
            "co.uk",
        ];
        let mut names = Vec::new();
        for i in 0..20_000u64 {
            let label = format!(
                "{:x}{}",
                next(1 << 40),
                ["", "Ab", "_tcp", "x-1"][i as usize % 4]
            );
            let name = match next(5) {
                0 => format!("d{label}.{}", suffixes[next(6) as usize]),
                1 => format!("{label}._domainkey.{}", suffixes[next(6) as usize]),
                2 => format!("dnscat.{label}"),
                3 => format!("{label}.{}.{}", next(50), suffixes[next(6) as usize]),
                _ => format!("www.site{}.{}", next(300), suffixes[next(6) as usize]),
            };
            names.push((format!("10.0.{}.{}", next(3), next(40)), name));
        }
        // Repeats, some by other sources.
        for i in 0..4_000 {
            let (src, name) = names[(i * 7) % names.len()].clone();
            let src = if i % 3 == 0 {
                format!("10.9.0.{}", i % 5)
            } else {
                src
            };
            names.push((src, name));
        }
        let rows: Vec<Row> = names
            .iter()
            .map(|(src, query)| Row { src, query })
            .collect();
        let scored: Vec<usize> = (0..rows.len()).step_by(3).collect();
        let parallel = History::build_parallel_from(&rows, 1).features(&scored);
        let sequential = History::build_parallel_from(&rows, usize::MAX).features(&scored);
        // More than one block of the split, each large enough for the pool.
        assert!(
            History::build(&rows).v3().base().distinct_queries() > crate::features::v2::SPLIT_BLOCK
        );
        assert_eq!(parallel.values.len(), scored.len() * WIDTH);
        for k in 0..scored.len() {
            let (p, s) = (parallel.row(k), sequential.row(k));
            assert!(
                p.iter().zip(s).all(|(a, b)| a.to_bits() == b.to_bits()),
                "row {k} ({:?}): {p:?} != {s:?}",
                names[scored[k]]
            );
        }
    }

    #[test]
    fn v4_is_v3_then_its_own_columns() {
        let rows = [
            Row {
                src: "10.0.0.1",
                query: "web.shop.svc.cluster.local",
            },
            Row {
                src: "10.0.0.1",
                query: "s1._domainkey.example.com",
            },
            Row {
                src: "10.0.0.2",
                query: "www.example.com",
            },
        ];
        let scored = [0, 1, 2];
        let v4 = compute(&rows, &scored);
        let v3 = v3::compute(&rows, &scored);
        assert_eq!(v4.width, WIDTH);
        assert_eq!(names().count(), WIDTH);
        for k in 0..3 {
            assert_eq!(&v4.row(k)[..v3::WIDTH], v3.row(k));
        }
        assert_eq!(&v4.row(0)[v3::WIDTH..], &[1.0, 0.0]);
        assert_eq!(&v4.row(1)[v3::WIDTH..], &[0.0, 1.0]);
        assert_eq!(&v4.row(2)[v3::WIDTH..], &[0.0, 0.0]);
    }
}
