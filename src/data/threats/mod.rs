//! The threat model as code: synthetic DNS sessions of public exfiltration and C2-over-DNS
//! techniques (`malicious.rs`) and of the benign services that look like them (`benign.rs`),
//! each written from the tool's or service's public description, with its parameters drawn per
//! session from a seeded generator.
//!
//! Sessions are added to a real labelled log. A session either runs from a source of its own
//! (a host that does nothing else) or **rides** on a real host of the log: its queries are
//! interleaved with that host's own traffic of the same hours, as on an infected workstation
//! that keeps browsing. Riding hosts are chosen from the `carriers` the caller passes, so
//! training sessions ride on training hosts and evaluation sessions on held-out hosts.
//!
//! Families are grouped by **tool** (a tool may have several ciphers or modes): leave-one-out
//! evaluation leaves a whole tool out of training, so it measures tools the model never saw.

mod benign;
mod malicious;

use std::collections::{BTreeMap, HashMap};

use crate::data::dataset::Event;
use crate::util::rng::SplitMix64;

/// One kind of synthetic session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    // Malicious.
    PacketWhisperCdn,
    PacketWhisperAnalytics,
    PacketWhisperWords,
    Dnscat2,
    CobaltStrike,
    Sliver,
    DnsExfiltrator,
    Sunburst,
    Det,
    DictionaryEncoding,
    DomainRotation,
    LowAndSlow,
    EightBit,
    Randomised,
    // Benign look-alikes.
    AvReputation,
    Dnsbl,
    BrowserProbes,
    TelemetryUuid,
    CdnEdge,
    LoadBalancer,
    KubernetesSearch,
    AcmeChallenge,
    PlatformTenants,
    VisitIds,
    MailAuth,
    DirectoryLocator,
}

impl Family {
    pub const ALL: [Family; 26] = [
        Family::PacketWhisperCdn,
        Family::PacketWhisperAnalytics,
        Family::PacketWhisperWords,
        Family::Dnscat2,
        Family::CobaltStrike,
        Family::Sliver,
        Family::DnsExfiltrator,
        Family::Sunburst,
        Family::Det,
        Family::DictionaryEncoding,
        Family::DomainRotation,
        Family::LowAndSlow,
        Family::EightBit,
        Family::Randomised,
        Family::AvReputation,
        Family::Dnsbl,
        Family::BrowserProbes,
        Family::TelemetryUuid,
        Family::CdnEdge,
        Family::LoadBalancer,
        Family::KubernetesSearch,
        Family::AcmeChallenge,
        Family::PlatformTenants,
        Family::VisitIds,
        Family::MailAuth,
        Family::DirectoryLocator,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::PacketWhisperCdn => "packetwhisper_cdn",
            Family::PacketWhisperAnalytics => "packetwhisper_analytics",
            Family::PacketWhisperWords => "packetwhisper_words",
            Family::Dnscat2 => "dnscat2",
            Family::CobaltStrike => "cobaltstrike",
            Family::Sliver => "sliver",
            Family::DnsExfiltrator => "dnsexfiltrator",
            Family::Sunburst => "sunburst",
            Family::Det => "det",
            Family::DictionaryEncoding => "dictionary",
            Family::DomainRotation => "domain_rotation",
            Family::LowAndSlow => "low_and_slow",
            Family::EightBit => "eight_bit",
            Family::Randomised => "randomised",
            Family::AvReputation => "av_reputation",
            Family::Dnsbl => "dnsbl",
            Family::BrowserProbes => "browser_probes",
            Family::TelemetryUuid => "telemetry_uuid",
            Family::CdnEdge => "cdn_edge",
            Family::LoadBalancer => "load_balancer",
            Family::KubernetesSearch => "kubernetes_search",
            Family::AcmeChallenge => "acme_challenge",
            Family::PlatformTenants => "platform_tenants",
            Family::VisitIds => "visit_ids",
            Family::MailAuth => "mail_auth",
            Family::DirectoryLocator => "directory_locator",
        }
    }

    /// The tool or technique a family belongs to: the unit left out of training together.
    pub fn tool(self) -> &'static str {
        match self {
            Family::PacketWhisperCdn
            | Family::PacketWhisperAnalytics
            | Family::PacketWhisperWords => "packetwhisper",
            other => other.name(),
        }
    }

    pub fn is_malicious(self) -> bool {
        !matches!(
            self,
            Family::AvReputation
                | Family::Dnsbl
                | Family::BrowserProbes
                | Family::TelemetryUuid
                | Family::CdnEdge
                | Family::LoadBalancer
                | Family::KubernetesSearch
                | Family::AcmeChallenge
                | Family::PlatformTenants
                | Family::VisitIds
                | Family::MailAuth
                | Family::DirectoryLocator
        )
    }

    /// Generated only for the long-window recipe (`dnsexfil-v5` models): a service whose
    /// names one hour cannot tell from a slow tunnel's, only the hours before it can.
    pub fn long_window_only(self) -> bool {
        matches!(self, Family::VisitIds)
    }

    /// Generated only for the server-roles recipe (`--server-lookalikes`): the lookups a
    /// server makes because of its role (a mail server checking senders' keys, a directory's
    /// members finding its controllers), which come from few hosts of a network, so a
    /// host-disjoint split can leave every such host out of training.
    pub fn server_role_only(self) -> bool {
        matches!(self, Family::MailAuth | Family::DirectoryLocator)
    }

    pub fn malicious() -> impl Iterator<Item = Family> {
        Self::ALL.into_iter().filter(|f| f.is_malicious())
    }

    pub fn benign() -> impl Iterator<Item = Family> {
        Self::ALL.into_iter().filter(|f| !f.is_malicious())
    }
}

/// How the PacketWhisper families write their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PacketWhisperCiphers {
    /// The generators `dnsexfil_v4` was trained with: CloudFront and two Akamai-style CDN
    /// ciphers of our own, 5+4-digit `log.optimizely.com` names, lower-case word lists, each
    /// transfer spread over one or two hours.
    #[default]
    V4,
    /// The tool's own cipher files and sender (`ciphers/`, `packetWhisper.py`): CloudFront and
    /// `cdn.optimizely.com`, 6+5-digit `log.optimizely.com`, `akstat.io` entries of 2 digits and
    /// 2 characters, capitalised word lists with a title before each name, a query every 0.5 s
    /// (or 5 s, or no delay).
    Tool,
}

impl std::str::FromStr for PacketWhisperCiphers {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "v4" => Ok(Self::V4),
            "tool" => Ok(Self::Tool),
            other => Err(format!(
                "`{}` is not a PacketWhisper generator: use v4 or tool",
                other.escape_debug()
            )),
        }
    }
}

/// Which shared zones the randomised family may hide its bursts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RandomisedCover {
    /// The twelve shared platforms `dnsexfil_v4` was trained with (`herokuapp.com`, ...).
    #[default]
    Platforms,
    /// Those, or (half the time) one of the zones most hosts of the carriers' own traffic
    /// query: a zone's popularity on this network is no proof that one host's burst under it
    /// is benign.
    PopularZones,
    /// Those, and a fifth of the sessions borrow a benign look-alike service's naming
    /// (reputation lookups, CDN edges, telemetry, load balancers, platform tenants, browser
    /// probes) at 2 to 10 times the most names an hour that service sends from one host.
    Mimic,
}

impl RandomisedCover {
    const ALL: [RandomisedCover; 3] = [Self::Platforms, Self::PopularZones, Self::Mimic];

    /// Its name on the command line and in a training report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Platforms => "platforms",
            Self::PopularZones => "popular",
            Self::Mimic => "mimic",
        }
    }
}

impl std::str::FromStr for RandomisedCover {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|cover| cover.name() == text)
            .ok_or_else(|| {
                format!(
                    "`{}` is not a cover for the randomised family: use platforms, popular or mimic",
                    text.escape_debug()
                )
            })
    }
}

/// The malicious tools, in table order (the unit of leave-one-out evaluation).
pub fn malicious_tools() -> Vec<&'static str> {
    let mut tools: Vec<&'static str> = Vec::new();
    for f in Family::malicious() {
        if !tools.contains(&f.tool()) {
            tools.push(f.tool());
        }
    }
    tools
}

/// Generated sessions: events, a label per (src, query), and the family and session of each
/// labelled name.
#[derive(Debug, Default)]
pub struct Generated {
    pub events: Vec<Event>,
    pub labels: Vec<((String, String), f32)>,
    pub families: HashMap<(String, String), Family>,
    /// The session each labelled name belongs to (the first, should two make the same name).
    pub session_of: HashMap<(String, String), String>,
    /// Every session: its family and id (for "sessions detected").
    pub sessions: Vec<(Family, String)>,
}

/// The real hosts sessions may ride on: their events by hour.
pub struct Carriers<'a> {
    /// One (host, hour) entry per event of that host in that hour.
    hours: Vec<(&'a str, i64)>,
    /// (host, hour) -> that host's number of events in the hour.
    by_host_hour: BTreeMap<(&'a str, i64), usize>,
    hosts: Vec<&'a str>,
    /// The log the hosts' traffic comes from (for [`Carriers::popular_zones`]).
    events: &'a [Event],
    /// The span of the log, in seconds.
    pub start: f64,
    pub end: f64,
}

impl<'a> Carriers<'a> {
    /// Every (host, hour) of `hosts` in `events`, weighted by traffic when drawn: busy hours
    /// are drawn more often, as busy hosts hide a tunnel best.
    pub fn new(events: &'a [Event], hosts: &std::collections::BTreeSet<String>) -> Self {
        let mut by_host_hour: BTreeMap<(&str, i64), usize> = BTreeMap::new();
        let (mut start, mut end) = (f64::MAX, f64::MIN);
        for e in events {
            start = start.min(e.time);
            end = end.max(e.time);
            if hosts.contains(&e.src) {
                *by_host_hour
                    .entry((e.src.as_str(), (e.time / 3600.0).floor() as i64))
                    .or_insert(0) += 1;
            }
        }
        // One entry per event: drawing an entry draws a (host, hour) in proportion to its traffic.
        let mut hours = Vec::new();
        for (&key, &n) in &by_host_hour {
            hours.extend(std::iter::repeat_n(key, n));
        }
        let mut hosts: Vec<&str> = by_host_hour.keys().map(|(h, _)| *h).collect();
        hosts.dedup();
        if start > end {
            (start, end) = (0.0, 3600.0);
        }
        Self {
            hours,
            by_host_hour,
            hosts,
            events,
            start,
            end,
        }
    }

    fn is_empty(&self) -> bool {
        self.hours.is_empty()
    }

    /// A (host, hour start) drawn by traffic.
    fn draw(&self, rng: &mut SplitMix64) -> (&'a str, f64) {
        let (host, hour) = self.hours[rng.below(self.hours.len())];
        (host, hour as f64 * 3600.0)
    }

    /// Other hosts with traffic in the hour starting at `at` (for fleet-wide benign services).
    fn others_in_hour(&self, host: &str, at: f64) -> Vec<&'a str> {
        let hour = (at / 3600.0).floor() as i64;
        self.hosts
            .iter()
            .copied()
            .filter(|h| *h != host && self.by_host_hour.contains_key(&(*h, hour)))
            .collect()
    }
}

/// At most this many popular zones are offered to generators.
const POPULAR_ZONES: usize = 30;

impl Carriers<'_> {
    /// The public zones (ICANN-boundary domains with a known suffix) queried by at least a
    /// quarter of the hosts (and at least two), by number of hosts, most first; ties by name so
    /// the order is reproducible. Computed when asked: only one experimental recipe needs it.
    fn popular_zones(&self) -> Vec<String> {
        popular_zones(self.events, &self.hosts)
    }
}

fn popular_zones(events: &[Event], hosts: &[&str]) -> Vec<String> {
    let wanted: std::collections::HashSet<&str> = hosts.iter().copied().collect();
    let mut hosts_of: HashMap<String, std::collections::HashSet<&str>> = HashMap::new();
    for e in events {
        if !wanted.contains(e.src.as_str()) {
            continue;
        }
        let lower = e.query.trim_end_matches('.').to_ascii_lowercase();
        let zone = crate::features::v3::icann_domain_of(&lower);
        let public = psl::suffix(zone.as_bytes()).is_some_and(|s| s.is_known());
        if public && zone.contains('.') {
            hosts_of
                .entry(zone.to_string())
                .or_default()
                .insert(e.src.as_str());
        }
    }
    let least = (hosts.len() / 4).max(2);
    let mut zones: Vec<(usize, String)> = hosts_of
        .into_iter()
        .filter(|(_, h)| h.len() >= least)
        .map(|(zone, h)| (h.len(), zone))
        .collect();
    zones.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    zones
        .into_iter()
        .take(POPULAR_ZONES)
        .map(|(_, z)| z)
        .collect()
}

/// What one session generator returns: names with their time offsets from the session start,
/// and whether it wants to ride on a busy host.
pub(crate) struct Draft {
    pub queries: Vec<(f64, String)>,
    /// Names sent from other hosts of the same hour, one list per host: fleet-wide services.
    pub fleet: Vec<Vec<(f64, String)>>,
    pub rides: bool,
    /// Split the session's queries over this many sources (domain rotation over hosts).
    pub sources: usize,
}

/// Generates `per_family` sessions of each of `families`, riding on `carriers` or from
/// sources of their own in 198.18.0.0/15 (numbered from `first_source`).
pub fn generate(
    families: &[Family],
    per_family: usize,
    carriers: &Carriers<'_>,
    seed: u64,
    first_source: usize,
    packetwhisper: PacketWhisperCiphers,
    cover: RandomisedCover,
    long_window: bool,
) -> Generated {
    let popular = match cover {
        RandomisedCover::PopularZones => carriers.popular_zones(),
        RandomisedCover::Platforms | RandomisedCover::Mimic => Vec::new(),
    };
    let mut out = Generated::default();
    let mut next_source = first_source;
    for &family in families {
        // Seeded by the family's name, not its position: leaving one family out of the list
        // leaves every other family's sessions as they were.
        let family_key = family
            .name()
            .bytes()
            .fold(0xCBF2_9CE4_8422_2325_u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
            });
        for s in 0..per_family {
            let mut rng = SplitMix64::new(seed ^ family_key ^ (s as u64) << 32);
            let id = format!("{}#{seed:x}#{s}", family.name());
            let draft = if family.is_malicious() {
                malicious::draft(
                    family,
                    &mut rng,
                    packetwhisper,
                    &popular,
                    cover,
                    long_window,
                )
            } else {
                benign::draft(family, &mut rng)
            };
            place(
                &mut out,
                family,
                &id,
                draft,
                carriers,
                &mut rng,
                &mut next_source,
            );
        }
    }
    out
}

fn own_source(next_source: &mut usize) -> String {
    let n = *next_source;
    *next_source += 1;
    format!(
        "198.{}.{}.{}",
        18 + (n / 62_500) % 2,
        (n / 250) % 250,
        n % 250 + 1
    )
}

/// Puts a draft's queries on hosts and in time, keeping sessions inside the log's span.
fn place(
    out: &mut Generated,
    family: Family,
    id: &str,
    draft: Draft,
    carriers: &Carriers<'_>,
    rng: &mut SplitMix64,
    next_source: &mut usize,
) {
    let label = if family.is_malicious() { 1.0 } else { 0.0 };
    let duration = draft.queries.iter().map(|(t, _)| *t).fold(0.0, f64::max);
    let rides = draft.rides && !carriers.is_empty();
    let (first_host, at) = if rides {
        let (host, hour) = carriers.draw(rng);
        // Start inside the hour; a long session runs on into the host's next hours.
        (host.to_string(), hour + rng.below(3000) as f64)
    } else {
        let span = (carriers.end - carriers.start - duration).max(1.0);
        (
            own_source(next_source),
            carriers.start + span * (rng.below(10_000) as f64 / 10_000.0),
        )
    };
    let mut hosts = vec![first_host.clone()];
    for _ in 1..draft.sources.max(1) {
        hosts.push(if rides {
            carriers.draw(rng).0.to_string()
        } else {
            own_source(next_source)
        });
    }
    for (i, (offset, query)) in draft.queries.into_iter().enumerate() {
        let src = hosts[i % hosts.len()].clone();
        push(out, family, id, label, &src, query, at + offset);
    }
    out.sessions.push((family, id.to_string()));
    // Fleet-wide services: the same kind of names from other hosts of the hour.
    let others = carriers.others_in_hour(&first_host, at);
    for (k, names) in draft.fleet.into_iter().enumerate() {
        if others.is_empty() {
            break;
        }
        let host = others[(k + rng.below(others.len())) % others.len()].to_string();
        for (offset, query) in names {
            push(out, family, id, label, &host, query, at + offset);
        }
    }
}

fn push(
    out: &mut Generated,
    family: Family,
    session: &str,
    label: f32,
    src: &str,
    query: String,
    time: f64,
) {
    let key = (src.to_string(), query.clone());
    out.families.insert(key.clone(), family);
    out.session_of
        .entry(key.clone())
        .or_insert_with(|| session.to_string());
    out.labels.push((key, label));
    out.events.push(Event {
        src: src.to_string(),
        query,
        time,
    });
}

/// Helpers the generators share.
pub(crate) mod draw {
    use crate::util::rng::SplitMix64;

    pub const HEX: &[u8] = b"0123456789abcdef";
    pub const BASE32: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    pub const BASE36: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    pub const BASE64URL: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    pub const DIGITS: &[u8] = b"0123456789";
    pub const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

    pub fn text(rng: &mut SplitMix64, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())] as char)
            .collect()
    }

    /// Text of a length uniform in `lo..=hi`.
    pub fn text_between(rng: &mut SplitMix64, alphabet: &[u8], lo: usize, hi: usize) -> String {
        let len = between(rng, lo, hi);
        text(rng, alphabet, len)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(rng: &mut SplitMix64, lo: usize, hi: usize) -> usize {
        lo + rng.below(hi - lo + 1)
    }

    pub fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
        &items[rng.below(items.len())]
    }

    pub fn chance(rng: &mut SplitMix64, percent: usize) -> bool {
        rng.below(100) < percent
    }

    /// Splits `payload` into labels of at most `label_len` characters, joined by dots.
    pub fn labels(payload: &str, label_len: usize) -> String {
        let bytes = payload.as_bytes();
        bytes
            .chunks(label_len.max(1))
            .map(|c| std::str::from_utf8(c).expect("ASCII"))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// A made-up registered domain under a common top-level domain, e.g. `cdn-metrics42.net`;
    /// never a public suffix itself (`net.co` is one), so chunks stay below the domain.
    pub fn domain(rng: &mut SplitMix64) -> String {
        registered(rng, domain_candidate)
    }

    /// The first of `candidate`'s names that is a registered domain itself (not a public
    /// suffix such as `net.co`, nor below a registered domain).
    pub fn registered(
        rng: &mut SplitMix64,
        candidate: impl Fn(&mut SplitMix64) -> String,
    ) -> String {
        loop {
            let name = candidate(rng);
            if psl::domain_str(&name) == Some(name.as_str()) {
                return name;
            }
        }
    }

    fn domain_candidate(rng: &mut SplitMix64) -> String {
        const WORDS: [&str; 24] = [
            "cdn", "cloud", "sync", "update", "metrics", "static", "api", "edge", "data", "files",
            "secure", "net", "app", "track", "stat", "svc", "host", "link", "media", "portal",
            "ops", "info", "web", "mail",
        ];
        const TLDS: [&str; 10] = [
            "com", "net", "org", "io", "info", "biz", "co", "xyz", "top", "co.uk",
        ];
        let mut name = pick(rng, &WORDS).to_string();
        if chance(rng, 60) {
            name.push(if chance(rng, 50) { '-' } else { 'x' });
            name.push_str(*pick(rng, &WORDS));
        }
        if chance(rng, 50) {
            name.push_str(&between(rng, 1, 999).to_string());
        }
        format!("{name}.{}", pick(rng, &TLDS))
    }

    /// Seconds between queries so that `count` queries fill `hours` hours, with jitter.
    pub fn times(rng: &mut SplitMix64, count: usize, hours: f64) -> Vec<f64> {
        let step = hours * 3600.0 / count.max(1) as f64;
        (0..count)
            .map(|i| i as f64 * step + step * (rng.below(1000) as f64 / 1000.0) * 0.9)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn popular_zones_are_those_most_hosts_query_at_the_icann_boundary() {
        let mut events = Vec::new();
        let mut event = |src: &str, query: &str| {
            events.push(Event {
                src: src.into(),
                query: query.into(),
                time: 0.0,
            })
        };
        for (i, host) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().enumerate() {
            // Each host its own CloudFront distribution: together, one zone every host uses.
            event(host, &format!("d{i}abcdef.cloudfront.net"));
            if i < 5 {
                event(host, "www.example.com");
            }
        }
        event("a", "x.rare-site.org");
        event("b", "y.rare-site.org");
        event("a", "printer.corp");
        event("z", "not-a-carrier.net");
        let hosts: Vec<&str> = vec!["a", "b", "c", "d", "e", "f", "g", "h"];
        let zones = popular_zones(&events, &hosts);
        // At least a quarter of the 8 hosts (2): an internal zone, a zone of one host and a
        // host that is no carrier do not count.
        assert_eq!(zones, ["cloudfront.net", "example.com", "rare-site.org"]);
    }
}
