//! The `dnsexfil-v4` feature schema: `dnsexfil-v3` plus two facts about where a name lives
//! that no tunnel can fake, because a tunnel needs a domain delegated on the public internet.
//!
//! - `internal_zone`: the name's top-level domain is not in the Public Suffix List (`.local`,
//!   `.lan`, `.internal`, `.corp`): only the site's own resolvers answer for it, so its queries
//!   never reach an attacker's server. In-cluster Kubernetes names
//!   (`<service>.<namespace>.svc.cluster.local`) come by the hundred and are made of words, as
//!   dictionary encodings are.
//! - `service_label_inside`: a label other than the first starts with `_` and is a short
//!   lower-case word (`<selector>._domainkey.`, `_tcp.`, `_dmarc.`): the DNS's own
//!   conventions for keys and services (RFC 6376, RFC 2782), where a random-looking first label
//!   is a DKIM selector, not a payload. v2's `is_service_label` only sees a first label.
//!
//! Linear in the rows: v3's history plus one pass over each scored row's name.

use super::v3;
use super::{FeatureMatrix, Row};

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
    History::build(rows).features(rows, scored)
}

/// v3's per-request history; v4's own features need only the row's name.
pub struct History(v3::History);

impl History {
    pub fn build(rows: &[Row<'_>]) -> Self {
        Self(v3::History::build(rows))
    }

    /// Features of the rows at `scored` (indices into `rows`, the rows the history was built
    /// from).
    pub fn features(&self, rows: &[Row<'_>], scored: &[usize]) -> FeatureMatrix {
        let v3_part = self.0.features(scored);
        let mut matrix = FeatureMatrix::zeros(scored.len(), WIDTH);
        for (k, &i) in scored.iter().enumerate() {
            let query = rows[i].query;
            let out = matrix.row_mut(k);
            out[..v3::WIDTH].copy_from_slice(v3_part.row(k));
            out[v3::WIDTH] = is_internal_zone(query) as u8 as f32;
            out[v3::WIDTH + 1] = has_service_label_inside(query) as u8 as f32;
        }
        matrix
    }
}

/// The last label is no top-level domain of the Public Suffix List (which lists every
/// delegated one). A name without a dot is a bare host name, also resolved locally.
pub fn is_internal_zone(query: &str) -> bool {
    let name = query.trim_end_matches('.');
    let Some((_, tld)) = name.rsplit_once('.') else {
        return !name.is_empty();
    };
    if tld.is_empty() {
        return false;
    }
    let tld = tld.to_ascii_lowercase();
    !psl::suffix(tld.as_bytes()).is_some_and(|s| s.is_known())
}

/// A label after the first is `_` and 2 to 24 lower-case letters, digits or hyphens.
pub fn has_service_label_inside(query: &str) -> bool {
    query.split('.').skip(1).any(|label| {
        label.strip_prefix('_').is_some_and(|word| {
            (2..=24).contains(&word.len())
                && word
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
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
            "trailing.",
        ] {
            assert!(!is_internal_zone(name), "{name}");
        }
    }

    #[test]
    fn service_labels_are_found_after_the_first_label() {
        assert!(has_service_label_inside(
            "mzxw6ytboi2dgnzsgq3dmnzw._domainkey.example.com"
        ));
        assert!(has_service_label_inside("_ldap._tcp.dc._msdcs.corp.example"));
        assert!(has_service_label_inside("x._dmarc.example.org"));
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
