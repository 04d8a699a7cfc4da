//! Allowlist and mutes: after scoring, a row whose query falls under an allowlisted domain, or
//! whose source is muted, keeps its probability but gets label 0, and the reason is written next
//! to it (`suppressed_by`). Nothing is hidden: the analyst sees what was suppressed and why.
//!
//! - Allowlist: registered domains or any suffix (`example.com` covers `a.b.example.com`), from
//!   the built-in list of well-known benign high-entropy services and the user's file.
//! - Mutes: sources by exact value (an IP or host name) or by network (`10.1.0.0/16`), from the
//!   user's file. A `# comment` after an entry becomes part of the reason.

use std::net::IpAddr;
use std::path::Path;

use rustc_hash::FxHashMap;

/// The built-in allowlist (one domain per line, `#` comments), shipped with the binary.
pub const BUILTIN_ALLOWLIST: &str = include_str!("builtin_allowlist.txt");

/// A list (allowlist or muted sources) that cannot be used; each message names the list, the
/// line and what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{origin} line {line}: `{}` is not a domain; write one domain or suffix per line (letters, digits, `-`, `_`, dots; at most {MAX_DOMAIN_LEN} characters), e.g. `example.com` (it covers every name under it)", .entry.escape_debug())]
    NotADomain {
        origin: String,
        line: usize,
        entry: String,
    },
    #[error("{origin} line {line}: `{}` is not a network; write e.g. 10.1.0.0/16", .entry.escape_debug())]
    NotANetwork {
        origin: String,
        line: usize,
        entry: String,
    },
    #[error("{origin} line {line}: the prefix length of `{}` must be 0 to {max}", .entry.escape_debug())]
    BadPrefix {
        origin: String,
        line: usize,
        entry: String,
        max: u8,
    },
    #[error("{origin} line {line}: `{}` is an IPv4-mapped network shorter than /96, which would reach beyond IPv4; write the IPv4 network itself, e.g. 10.9.0.0/16", .entry.escape_debug())]
    MappedBeyondIpv4 {
        origin: String,
        line: usize,
        entry: String,
    },
    #[error("cannot read the {what} {}: {error}", .path.display())]
    Unreadable {
        what: &'static str,
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}

/// What suppresses rows, each entry with the reason text shown for it.
#[derive(Debug, Default, Clone)]
pub struct Suppressions {
    domains: DomainSuffixes,
    sources: FxHashMap<String, String>,
    networks: Vec<(IpAddr, u8, String)>,
    /// The longest reason of any entry, kept as entries are added: requests size their results
    /// with it, so it must not cost a walk over the lists.
    longest_reason: usize,
}

impl Suppressions {
    /// No allowlist and no mutes: results carry no `suppressed_by` column.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.sources.is_empty() && self.networks.is_empty()
    }

    pub fn domain_count(&self) -> usize {
        self.domains.entries
    }

    pub fn mute_count(&self) -> usize {
        self.sources.len() + self.networks.len()
    }

    /// The length of the longest reason any row can be given.
    pub fn longest_reason(&self) -> usize {
        self.longest_reason
    }

    /// Adds allowlist entries from `text`; `origin` names the list in reasons and errors
    /// (e.g. `built-in` or a file name).
    pub fn add_allowlist(&mut self, text: &str, origin: &str) -> Result<(), ListError> {
        for (line_no, entry, comment) in entries(text) {
            let domain = entry
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let valid = !domain.is_empty()
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
                && !domain.contains("..")
                && domain.len() <= MAX_DOMAIN_LEN;
            if !valid {
                return Err(ListError::NotADomain {
                    origin: origin.to_string(),
                    line: line_no,
                    entry: entry.to_string(),
                });
            }
            let reason = match comment {
                Some(c) => format!("allowlist {domain} ({origin}: {c})"),
                None => format!("allowlist {domain} ({origin})"),
            };
            self.longest_reason = self.longest_reason.max(reason.len());
            self.domains.insert(&domain, reason);
        }
        Ok(())
    }

    /// Adds muted sources from `text`: an exact source per line, or a network in CIDR form.
    pub fn add_mutes(&mut self, text: &str, origin: &str) -> Result<(), ListError> {
        for (line_no, entry, comment) in entries(text) {
            let reason = match comment {
                Some(c) => format!("muted source {entry} ({origin}: {c})"),
                None => format!("muted source {entry} ({origin})"),
            };
            self.longest_reason = self.longest_reason.max(reason.len());
            if let Some((addr, bits)) = entry.split_once('/') {
                let at = |line: usize| (origin.to_string(), line, entry.to_string());
                let addr: IpAddr = addr.parse().map_err(|_| {
                    let (origin, line, entry) = at(line_no);
                    ListError::NotANetwork {
                        origin,
                        line,
                        entry,
                    }
                })?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let bits: u8 = bits.parse().ok().filter(|b| *b <= max).ok_or_else(|| {
                    let (origin, line, entry) = at(line_no);
                    ListError::BadPrefix {
                        origin,
                        line,
                        entry,
                        max,
                    }
                })?;
                let (net, bits) = canonical_network(addr, bits).ok_or_else(|| {
                    let (origin, line, entry) = at(line_no);
                    ListError::MappedBeyondIpv4 {
                        origin,
                        line,
                        entry,
                    }
                })?;
                self.networks.push((net, bits, reason));
            } else if let Ok(addr) = entry.parse::<IpAddr>() {
                // An address is a one-address network, so `FD00::1` also mutes `fd00:0::1`.
                let bits = if addr.is_ipv4() { 32 } else { 128 };
                let (net, bits) =
                    canonical_network(addr, bits).expect("a whole address is a valid network");
                self.networks.push((net, bits, reason));
            } else {
                self.sources.insert(entry.to_ascii_lowercase(), reason);
            }
        }
        Ok(())
    }

    /// Reads a user's allowlist file.
    pub fn add_allowlist_file(&mut self, path: &Path) -> Result<(), ListError> {
        let text = std::fs::read_to_string(path).map_err(|error| ListError::Unreadable {
            what: "allowlist",
            path: path.to_path_buf(),
            error,
        })?;
        self.add_allowlist(&text, &file_label(path))
    }

    /// Reads a user's mutes file.
    pub fn add_mutes_file(&mut self, path: &Path) -> Result<(), ListError> {
        let text = std::fs::read_to_string(path).map_err(|error| ListError::Unreadable {
            what: "muted sources",
            path: path.to_path_buf(),
            error,
        })?;
        self.add_mutes(&text, &file_label(path))
    }

    /// Why the row (`src`, `query`) is suppressed, if it is. A muted source wins over the allowlist.
    pub fn reason(&self, src: &str, query: &str) -> Option<&str> {
        if self.is_empty() {
            return None;
        }
        if let Some(r) = self.source_reason(src) {
            return Some(r);
        }
        self.domain_reason(query)
    }

    fn source_reason(&self, src: &str) -> Option<&str> {
        let src = src.trim();
        if !self.sources.is_empty() {
            let found = if src.bytes().any(|b| b.is_ascii_uppercase()) {
                self.sources.get(&src.to_ascii_lowercase())
            } else {
                self.sources.get(src)
            };
            if let Some(r) = found {
                return Some(r);
            }
        }
        if self.networks.is_empty() {
            return None;
        }
        let ip = canonical(src.parse().ok()?);
        self.networks
            .iter()
            .find(|(net, bits, _)| in_network(ip, *net, *bits))
            .map(|(_, _, r)| r.as_str())
    }

    fn domain_reason(&self, query: &str) -> Option<&str> {
        if self.domains.is_empty() {
            return None;
        }
        self.domains
            .longest_entry_under(query.trim().trim_end_matches('.').as_bytes())
    }
}

/// Allowlisted domains, found from the top-level label down: a name is checked against its
/// suffixes `com`, `example.com`, `b.example.com`, ... and the walk stops at the first suffix no
/// entry ends with, so most names cost one or two lookups of short keys (a DNS tunnel's long
/// labels are never hashed).
#[derive(Debug, Default, Clone)]
struct DomainSuffixes {
    /// Every entry and every suffix of one (after a dot).
    nodes: FxHashMap<Box<[u8]>, SuffixNode>,
    entries: usize,
    /// The longest entry's length: only that many of a name's last bytes (and the byte before
    /// them) are ever looked at, however long the name.
    longest: usize,
}

/// The longest domain name DNS allows, and so the longest allowlist entry.
const MAX_DOMAIN_LEN: usize = 253;

#[derive(Debug, Default, Clone)]
struct SuffixNode {
    /// The reason, when this suffix is itself an entry.
    reason: Option<String>,
    /// Whether some entry is longer than this suffix and ends with it.
    has_longer_entries: bool,
}

impl DomainSuffixes {
    fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Adds `domain` (lower case, no leading or trailing dot); a repeated entry takes the new
    /// reason.
    fn insert(&mut self, domain: &str, reason: String) {
        debug_assert!(domain.len() <= MAX_DOMAIN_LEN);
        let domain = domain.as_bytes();
        let node = self.nodes.entry(domain.into()).or_default();
        if node.reason.replace(reason).is_none() {
            self.entries += 1;
        }
        self.longest = self.longest.max(domain.len());
        for dot in (0..domain.len()).filter(|&i| domain[i] == b'.') {
            self.nodes
                .entry(domain[dot + 1..].into())
                .or_default()
                .has_longer_entries = true;
        }
    }

    /// The reason of the longest entry that is `name` or a suffix of it after a dot (the most
    /// specific entry wins).
    /// Upper-case ASCII letters match their lower-case entries.
    fn longest_entry_under(&self, name: &[u8]) -> Option<&str> {
        // The name's tail, lower-cased: a suffix longer than every entry is no entry's suffix,
        // so one more byte than the longest entry is enough to see where the walk stops.
        let mut tail = [0u8; MAX_DOMAIN_LEN + 1];
        let tail_len = name.len().min(self.longest + 1);
        let tail = &mut tail[..tail_len];
        tail.copy_from_slice(&name[name.len() - tail_len..]);
        tail.make_ascii_lowercase();
        let mut found = None;
        let mut start = tail_len;
        loop {
            // The next suffix: one more label to the left.
            start = tail[..start.saturating_sub(1)]
                .iter()
                .rposition(|&b| b == b'.')
                .map_or(0, |dot| dot + 1);
            let Some(node) = self.nodes.get(&tail[start..]) else {
                return found;
            };
            if let Some(reason) = &node.reason {
                found = Some(reason.as_str());
            }
            if !node.has_longer_entries || start == 0 {
                return found;
            }
        }
    }
}

/// (line number, entry, optional comment) of every non-blank, non-comment line.
fn entries(text: &str) -> impl Iterator<Item = (usize, &str, Option<&str>)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let (entry, comment) = match line.split_once('#') {
            Some((e, c)) => (e.trim(), Some(c.trim()).filter(|c| !c.is_empty())),
            None => (line.trim(), None),
        };
        (!entry.is_empty()).then_some((i + 1, entry, comment))
    })
}

fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.9.0.1`) as the IPv4 address they carry, so an IPv4
/// network mutes a source however a resolver logged it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A network as [`in_network`] compares it: an IPv4-mapped IPv6 network (`::ffff:10.9.0.0/120`)
/// becomes the IPv4 network it covers (`10.9.0.0/24`), its prefix shortened by the 96 mapping
/// bits. `None` for a mapped network shorter than /96, which covers more than IPv4.
fn canonical_network(addr: IpAddr, bits: u8) -> Option<(IpAddr, u8)> {
    match canonical(addr) {
        IpAddr::V4(v4) if addr.is_ipv6() => Some((IpAddr::V4(v4), bits.checked_sub(96)?)),
        net => Some((net, bits)),
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - bits.min(32) as u32).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX
                .checked_shl(128 - bits.min(128) as u32)
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_covers_names_under_a_domain_only() {
        let mut s = Suppressions::none();
        s.add_allowlist(
            "# CDN\nexample.com\n*.Sophosxl.NET  # AV lookups\n",
            "mine.txt",
        )
        .unwrap();
        assert_eq!(
            s.reason("h", "example.com"),
            Some("allowlist example.com (mine.txt)")
        );
        assert_eq!(
            s.reason("h", "A.b.EXAMPLE.com."),
            Some("allowlist example.com (mine.txt)")
        );
        assert_eq!(
            s.reason("h", "x1.sophosxl.net"),
            Some("allowlist sophosxl.net (mine.txt: AV lookups)")
        );
        assert_eq!(s.reason("h", "notexample.com"), None);
        assert_eq!(s.reason("h", "example.com.evil.net"), None);
        let e = s
            .add_allowlist("ok.com\nbad domain\n", "f.txt")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("f.txt line 2: `bad domain` is not a domain"),
            "{e}"
        );
    }

    #[test]
    fn mutes_match_exact_sources_and_networks() {
        let mut s = Suppressions::none();
        s.add_mutes(
            "10.0.0.5 # backup server\n192.168.0.0/16\nfd00::/8\nscanner-01\n",
            "mutes.txt",
        )
        .unwrap();
        assert_eq!(
            s.reason("10.0.0.5", "q.example.com"),
            Some("muted source 10.0.0.5 (mutes.txt: backup server)")
        );
        // The longest reason, as results size their room for it.
        assert_eq!(
            s.longest_reason(),
            "muted source 10.0.0.5 (mutes.txt: backup server)".len()
        );
        assert_eq!(
            s.reason("192.168.7.1", "q"),
            Some("muted source 192.168.0.0/16 (mutes.txt)")
        );
        assert!(s.reason("fd12::1", "q").is_some());
        assert!(s.reason("scanner-01", "q").is_some());
        assert!(
            s.reason(" Scanner-01 ", "q").is_some(),
            "host names ignore case and spaces"
        );
        assert!(
            s.reason("::ffff:192.168.3.4", "q").is_some(),
            "IPv4-mapped IPv6"
        );
        let mut exact = Suppressions::none();
        exact
            .add_mutes("FD00::1\n0.0.0.0/0 # everything v4\n", "m")
            .unwrap();
        assert!(
            exact.reason("fd00:0::1", "q").is_some(),
            "addresses compare as addresses"
        );
        assert!(
            exact.reason("203.0.113.9", "q").is_some(),
            "/0 covers every IPv4 source"
        );
        assert_eq!(
            exact.reason("fd00::2", "q"),
            None,
            "a single address is /128"
        );
        assert_eq!(s.reason("10.0.0.6", "q"), None);
        assert_eq!(s.reason("192.169.0.1", "q"), None);
        for bad in ["10.0.0.0/33", "nonsense/8", "::ffff:10.0.0.0/95"] {
            assert!(s.add_mutes(bad, "m").is_err(), "{bad}");
        }
    }

    #[test]
    fn an_ipv4_mapped_entry_mutes_its_ipv4_addresses_only() {
        let mut s = Suppressions::none();
        s.add_mutes(
            "::ffff:10.9.0.1
::ffff:172.16.0.0/112
",
            "m",
        )
        .unwrap();
        assert!(s.reason("10.9.0.1", "q").is_some());
        assert!(s.reason("::ffff:10.9.0.1", "q").is_some());
        // /112 of the mapped space is 172.16.0.0/16.
        assert!(s.reason("172.16.200.1", "q").is_some());
        for other in ["10.9.0.2", "203.0.113.9", "172.17.0.1", "::1"] {
            assert_eq!(s.reason(other, "q"), None, "{other}");
        }
    }

    /// The allowlist's definition: the longest of the name and its suffixes after each dot that
    /// is an entry, looked for from the whole name down.
    fn longest_entry_by_definition<'a>(
        entries: &'a FxHashMap<String, String>,
        name: &str,
    ) -> Option<&'a str> {
        let mut rest = name;
        loop {
            if let Some(reason) = entries.get(rest) {
                return Some(reason);
            }
            rest = &rest[rest.find('.')? + 1..];
        }
    }

    #[test]
    fn the_top_down_walk_finds_the_longest_entry() {
        // Entries nested in each other, and names built from the same labels, so that names often
        // fall under one, two or none of them; plus empty labels, leading dots and upper case.
        let entries = [
            "com",
            "example.com",
            "a.example.com",
            "b.a.example.com",
            "x.b",
            "b",
            "co.uk",
            "shop.co.uk",
            "a-b.c_d.net",
        ];
        // Also labels longer than any entry and non-ASCII ones, which the walk cuts through.
        let long = "q".repeat(40);
        let labels = [
            "a", "b", "x", "example", "com", "co", "uk", "shop", "", "A", "net", "c_d", "a-b",
            "ExAmple", "é", "bücher", "xé", &long,
        ];
        let mut suppressions = Suppressions::none();
        let mut by_definition = FxHashMap::default();
        for (i, entry) in entries.iter().enumerate() {
            suppressions
                .add_allowlist(&format!("{entry} # {i}"), "t")
                .unwrap();
            by_definition.insert(entry.to_string(), format!("allowlist {entry} (t: {i})"));
        }
        assert_eq!(suppressions.domain_count(), entries.len());
        let mut seed = 7u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let mut found = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let count = next(6);
            let mut name = String::new();
            for k in 0..count {
                if k > 0 || next(8) == 0 {
                    name.push('.');
                }
                name.push_str(labels[next(labels.len())]);
            }
            // Half the names end in an entry (random labels in front of it).
            if next(2) == 0 {
                name.push('.');
                name.push_str(entries[next(entries.len())]);
            }
            // A fully qualified name's final dot does not count.
            let lower = name.to_ascii_lowercase();
            let expected = longest_entry_by_definition(&by_definition, lower.trim_end_matches('.'));
            found.insert(expected);
            assert_eq!(suppressions.reason("h", &name), expected, "{name:?}");
            assert_eq!(
                suppressions.reason("h", &format!(" {name}. ")),
                expected,
                "{name:?}"
            );
        }
        // Every entry was the answer for some name (nested ones included), and so was none.
        assert_eq!(found.len(), entries.len() + 1, "{found:?}");
        // Entries are at most as long as a DNS name can be.
        let longest = format!("{}.com", "a".repeat(249));
        assert!(suppressions.add_allowlist(&longest, "t").is_ok());
        assert_eq!(
            suppressions.reason("h", &format!("x.{}", longest.to_uppercase())),
            Some(format!("allowlist {longest} (t)").as_str())
        );
        let e = suppressions
            .add_allowlist(&format!("a{longest}"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 253 characters"), "{e}");
        suppressions = Suppressions::none();
        for (i, entry) in entries.iter().enumerate() {
            suppressions
                .add_allowlist(&format!("{entry} # {i}"), "t")
                .unwrap();
        }
        // A repeated entry keeps one count and takes the last reason.
        suppressions
            .add_allowlist("example.com # again", "t")
            .unwrap();
        assert_eq!(suppressions.domain_count(), entries.len());
        assert_eq!(
            suppressions.reason("h", "q.example.com"),
            Some("allowlist example.com (t: again)")
        );
    }

    #[test]
    fn the_builtin_allowlist_parses() {
        let mut s = Suppressions::none();
        s.add_allowlist(BUILTIN_ALLOWLIST, "built-in").unwrap();
        assert!(s.domain_count() >= 20);
        assert!(s.reason("h", "r3---sn-abc.googlevideo.com").is_some());
    }
}
