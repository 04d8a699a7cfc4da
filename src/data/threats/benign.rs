//! Benign services whose names look like exfiltration and that real networks emit in bursts,
//! each from the service's public documentation. They are labelled benign, and most also
//! appear on other hosts of the same hour ("fleet"), as a product installed everywhere does.

use super::draw::{self, between, chance, pick, text, text_between};
use super::{Draft, Family};
use crate::util::rng::SplitMix64;

pub(crate) fn draft(family: Family, rng: &mut SplitMix64) -> Draft {
    // (names, queries in the hour, names shared by the hosts of a site, % of hosts' queries
    // from that shared set, % of sessions that also show on other hosts, names per other host).
    let (names, count, shared, reuse, fleet_share, fleet_names): (
        Names,
        (usize, usize),
        (usize, usize),
        usize,
        usize,
        (usize, usize),
    ) = match family {
        Family::AvReputation => (av_reputation(rng), (20, 400), (30, 100), 40, 70, (1, 15)),
        Family::Dnsbl => return dnsbl(rng),
        Family::BrowserProbes => (browser_probe(rng), (3, 15), (0, 0), 0, 80, (1, 15)),
        Family::TelemetryUuid => (telemetry(rng), (5, 60), (5, 20), 60, 70, (1, 15)),
        Family::CdnEdge => (cdn_edge(rng), (5, 80), (20, 80), 70, 80, (1, 15)),
        Family::LoadBalancer => (load_balancer(rng), (3, 40), (3, 15), 80, 60, (1, 15)),
        Family::KubernetesSearch => return kubernetes_search(rng),
        Family::VisitIds => return visit_ids(rng),
        Family::MailAuth => return mail_auth(rng),
        Family::DirectoryLocator => return directory_locator(rng),
        Family::AcmeChallenge => (acme(rng), (2, 30), (0, 0), 0, 0, (1, 15)),
        // A host reaches one to four tenants of a platform; its neighbours reach others.
        Family::PlatformTenants => (platform_tenant(rng), (1, 4), (0, 0), 0, 90, (1, 4)),
        malicious => unreachable!("{malicious:?} is not a benign family"),
    };
    burst(rng, names, count, shared, reuse, fleet_share, fleet_names)
}

/// A benign session: on a busy host, from one source.
fn riding(queries: Vec<(f64, String)>, fleet: Vec<Vec<(f64, String)>>) -> Draft {
    Draft {
        queries,
        fleet,
        rides: true,
        sources: 1,
    }
}

pub(crate) type Names = Box<dyn FnMut(&mut SplitMix64) -> String>;

/// The names of a benign look-alike family that sends fresh names, with the most queries an
/// hour its sessions send from one host: for a tunnel that borrows a benign service's naming
/// (the randomised family under `--randomised-cover mimic`).
pub(crate) fn lookalike_names(rng: &mut SplitMix64) -> (Names, usize) {
    match rng.below(6) {
        0 => (av_reputation(rng), 400),
        1 => (browser_probe(rng), 15),
        2 => (telemetry(rng), 60),
        3 => (cdn_edge(rng), 80),
        4 => (load_balancer(rng), 40),
        _ => (platform_tenant(rng), 4),
    }
}

/// A burst of names in an hour on one host and, for a fleet-wide service, `fleet_names` on
/// each of up to six other hosts. Popular names (a site's common CDN objects, the same files' hashes) are shared:
/// `reuse`% of queries come from a set every host of the session draws from.
fn burst(
    rng: &mut SplitMix64,
    mut fresh: Names,
    (lo, hi): (usize, usize),
    (shared_lo, shared_hi): (usize, usize),
    reuse: usize,
    fleet_share: usize,
    (fleet_lo, fleet_hi): (usize, usize),
) -> Draft {
    let shared_len = if shared_hi > 0 {
        between(rng, shared_lo, shared_hi)
    } else {
        0
    };
    let shared: Vec<String> = (0..shared_len).map(|_| fresh(rng)).collect();
    let mut name = move |rng: &mut SplitMix64| {
        if !shared.is_empty() && chance(rng, reuse) {
            pick(rng, &shared).clone()
        } else {
            fresh(rng)
        }
    };
    let count = between(rng, lo, hi);
    let queries = draw::times(rng, count, 1.0)
        .into_iter()
        .map(|t| (t, name(rng)))
        .collect();
    let fleet = fleet(rng, fleet_share, (1, 6), (fleet_lo, fleet_hi), name);
    riding(queries, fleet)
}

/// The same service's names from other hosts of the hour: with `share`% chance, `hosts` other
/// hosts each sending `per_host` names made by `name`.
fn fleet(
    rng: &mut SplitMix64,
    share: usize,
    (hosts_lo, hosts_hi): (usize, usize),
    (per_host_lo, per_host_hi): (usize, usize),
    mut name: impl FnMut(&mut SplitMix64) -> String,
) -> Vec<Vec<(f64, String)>> {
    if !chance(rng, share) {
        return Vec::new();
    }
    (0..between(rng, hosts_lo, hosts_hi))
        .map(|_| {
            let n = between(rng, per_host_lo, per_host_hi);
            draw::times(rng, n, 1.0)
                .into_iter()
                .map(|t| (t, name(rng)))
                .collect()
        })
        .collect()
}

/// File-reputation lookups of endpoint security products, which put a file hash in the name:
/// Sophos Live Protection (`sophosxl.net`), McAfee GTI (`avqs.mcafee.com`), ESET LiveGrid
/// (`e5.sk`), Team Cymru's Malware Hash Registry (`<md5>.malware.hash.cymru.com`). A scan or
/// a software update makes one host send hundreds. Sophos's newer lookups, as resolvers log
/// them, carry a digest as hex with its letters rotated to `n`-`s`, in labels of 63, 63, 26 and
/// 40 characters under `i.00.<platform>.sophosxl.net`.
fn av_reputation(rng: &mut SplitMix64) -> Names {
    const ROTATED_HEX: &[u8] = b"0123456789nopqrs";
    match rng.below(5) {
        4 => Box::new(|r| {
            format!(
                "{}.{}.{}.{}.{}.i.00.{}.sophosxl.net",
                between(r, 1, 4),
                text(r, ROTATED_HEX, 63),
                text(r, ROTATED_HEX, 63),
                text(r, ROTATED_HEX, 26),
                text(r, ROTATED_HEX, 40),
                pick(r, &["w", "mac", "lin"])
            )
        }),
        0 => Box::new(|r| {
            format!(
                "{}.{}.{}.sxl.sophosxl.net",
                text(r, draw::BASE36, 2),
                text(r, draw::HEX, 40),
                text(r, draw::DIGITS, 1)
            )
        }),
        1 => Box::new(|r| {
            format!(
                "{}.{}.avqs.mcafee.com",
                text(r, draw::BASE32, 32),
                text(r, draw::BASE32, 10)
            )
        }),
        2 => Box::new(|r| {
            format!(
                "{}.{}.e5.sk",
                text(r, draw::HEX, 40),
                text(r, draw::BASE36, 6)
            )
        }),
        _ => Box::new(|r| format!("{}.malware.hash.cymru.com", text(r, draw::HEX, 32))),
    }
}

/// DNS blocklist lookups of a mail server (RFC 5782): the client's IPv4 address reversed
/// under the list's zone, or a domain from the message under a domain list.
fn dnsbl(rng: &mut SplitMix64) -> Draft {
    const ZONES: [&str; 5] = [
        "zen.spamhaus.org",
        "bl.spamcop.net",
        "b.barracudacentral.org",
        "dnsbl.sorbs.net",
        "bl.mailspike.net",
    ];
    const DOMAIN_LISTS: [&str; 3] = ["dbl.spamhaus.org", "multi.uribl.com", "multi.surbl.org"];
    let lists: Vec<&str> = (0..between(rng, 1, 3))
        .map(|_| *pick(rng, &ZONES))
        .collect();
    let count = between(rng, 30, 400);
    let mut queries = Vec::new();
    for t in draw::times(rng, count, 1.0) {
        let ip = format!(
            "{}.{}.{}.{}",
            rng.below(256),
            rng.below(256),
            rng.below(256),
            between(rng, 1, 223)
        );
        for zone in &lists {
            queries.push((t, format!("{ip}.{zone}")));
        }
        if chance(rng, 30) {
            let sender = draw::domain(rng);
            queries.push((t + 0.2, format!("{sender}.{}", pick(rng, &DOMAIN_LISTS))));
        }
    }
    let fleet = if chance(rng, 40) {
        let n = between(rng, 5, 40);
        vec![draw::times(rng, n, 1.0)
            .into_iter()
            .map(|t| {
                (
                    t,
                    format!(
                        "{}.{}.{}.{}.{}",
                        rng.below(256),
                        rng.below(256),
                        rng.below(256),
                        between(rng, 1, 223),
                        lists[0]
                    ),
                )
            })
            .collect()]
    } else {
        Vec::new()
    };
    riding(queries, fleet)
}

/// Ids in host names, one per visit, message or click: web analytics and advertising served
/// from a subdomain of the site (first-party "CNAME cloaking": Dimova et al., "The CNAME of
/// the Game", PETS 2021) and e-mail open and click tracking give each page view or message a
/// name with an id under the site's or sender's own domain. A user reading mail or browsing a
/// site resolves a few such names in an hour, on one to three hours of a day. In one hour that
/// is what a slow tunnel's short chunks look like; over a day it is a few names in a few hours.
fn visit_ids(rng: &mut SplitMix64) -> Draft {
    let domain = draw::domain(rng);
    let alphabet = *pick(rng, &[draw::HEX, draw::BASE32, draw::BASE36]);
    // A service's ids have one length; some sit under a label of their own (`<id>.t.<domain>`).
    let len = between(rng, 8, 16);
    let under = if chance(rng, 50) {
        format!(
            "{}.{domain}",
            pick(rng, &["t", "px", "open", "click", "metrics", "ads"])
        )
    } else {
        domain
    };
    let id_name = move |r: &mut SplitMix64| format!("{}.{under}", text(r, alphabet, len));
    let mut queries = Vec::new();
    let mut hour = 0;
    for visit in 0..between(rng, 1, 3) {
        if visit > 0 {
            hour += between(rng, 1, 8);
        }
        for _ in 0..between(rng, 1, 6) {
            let at = (hour * 3600 + rng.below(3600)) as f64;
            let name = id_name(rng);
            // A page asks for its id's name again now and then.
            if chance(rng, 30) {
                queries.push((at + between(rng, 1, 60) as f64, name.clone()));
            }
            queries.push((at, name));
        }
    }
    // Now and then a colleague visits the same site in that hour.
    let fleet = fleet(rng, 20, (1, 3), (1, 4), id_name);
    riding(queries, fleet)
}

/// A company's domain for the server-role families: a brand, sometimes two words, under a
/// common suffix (`northwind-travel.co.uk`); always a registered domain itself.
fn company_domain(rng: &mut SplitMix64) -> String {
    const BRANDS: [&str; 32] = [
        "northwind",
        "contoso",
        "fabrikam",
        "globex",
        "initech",
        "umbrella",
        "hooli",
        "vandelay",
        "wonka",
        "tyrell",
        "aperture",
        "pioneer",
        "summit",
        "harbor",
        "evergreen",
        "bluebird",
        "redwood",
        "lakeside",
        "meridian",
        "atlas",
        "quantum",
        "sterling",
        "crescent",
        "orchid",
        "falcon",
        "keystone",
        "beacon",
        "horizon",
        "riverside",
        "granite",
        "silverline",
        "oak",
    ];
    const SECOND: [&str; 12] = [
        "travel", "bank", "shop", "news", "group", "labs", "media", "health", "energy", "legal",
        "foods", "motors",
    ];
    const SUFFIXES: [&str; 10] = [
        "com", "com", "com", "net", "org", "co.uk", "de", "fr", "io", "com.au",
    ];
    draw::registered(rng, |rng| {
        let mut name = pick(rng, &BRANDS).to_string();
        if chance(rng, 40) {
            name.push_str(if chance(rng, 50) { "-" } else { "" });
            name.push_str(*pick(rng, &SECOND));
        }
        format!("{name}.{}", pick(rng, &SUFFIXES))
    })
}

/// How one sender's mail service names its DKIM keys (RFC 6376 leaves the selector to the
/// signer; these are the services' documented conventions): Google Workspace `google` or a
/// date (`20230601`), Microsoft 365 `selector1` and `selector2`, Mailchimp `k1` to `k3`,
/// SendGrid `s1`, `s2`, Amazon SES's Easy DKIM three 32-character base32 tokens per domain,
/// HubSpot `hs1-<id>` and `hs2-<id>`, Postmark a timestamp and `pm`, and short names of
/// self-run signers.
fn dkim_selectors(rng: &mut SplitMix64) -> Vec<String> {
    match rng.below(9) {
        0 => vec![if chance(rng, 50) {
            "google".to_string()
        } else {
            format!("20{}", text(rng, draw::DIGITS, 6))
        }],
        1 => vec!["selector1".into(), "selector2".into()],
        2 => vec!["k1".into(), "k2".into(), "k3".into()],
        3 => vec!["s1".into(), "s2".into()],
        4 | 5 => (0..3).map(|_| text(rng, draw::BASE32, 32)).collect(),
        6 => {
            let id = text(rng, draw::DIGITS, 8);
            vec![format!("hs1-{id}"), format!("hs2-{id}")]
        }
        7 => vec![format!("20{}pm", text(rng, draw::DIGITS, 12))],
        _ => vec![pick(
            rng,
            &[
                "default", "dkim", "mail", "smtp", "key1", "mx", "mandrill", "zendesk1", "sf1",
            ],
        )
        .to_string()],
    }
}

/// A mail server authenticating the mail it receives: for each message the key of its DKIM
/// signature (`<selector>._domainkey.<signing domain>`, RFC 6376), often a second signature
/// by the sending service's own domain, the sender's DMARC policy (`_dmarc.<domain>`, RFC
/// 7489), its SPF record and the services it includes (RFC 7208), and now and then BIMI
/// (`default._bimi.`), MTA-STS (`_mta-sts.`, RFC 8461) and TLS reporting (`_smtp._tls.`, RFC
/// 8460) policies. Tens to hundreds of sender domains an hour, one to a few names under each,
/// some selectors random tokens: the shape of a tunnel rotating its domains, on one host.
fn mail_auth(rng: &mut SplitMix64) -> Draft {
    const SPF_INCLUDES: [&str; 8] = [
        "_spf.google.com",
        "spf.protection.outlook.com",
        "_spf.salesforce.com",
        "mailgun.org",
        "sendgrid.net",
        "amazonses.com",
        "servers.mcsv.net",
        "spf.mandrillapp.com",
    ];
    // (signing domain, its selectors, its organisational domain); a few senders send most mail.
    let senders: Vec<(String, Vec<String>, String)> = (0..between(rng, 10, 200))
        .map(|_| {
            let domain = company_domain(rng);
            let signing = if chance(rng, 30) {
                format!(
                    "{}.{domain}",
                    pick(rng, &["email", "mail", "news", "e", "mg"])
                )
            } else {
                domain.clone()
            };
            (signing, dkim_selectors(rng), domain)
        })
        .collect();
    let service_keys: Vec<String> = (0..between(rng, 1, 4))
        .map(|_| {
            format!(
                "{}._domainkey.{}",
                text(rng, draw::BASE32, 32),
                pick(
                    rng,
                    &["amazonses.com", "sendgrid.net", "mcsv.net", "mailgun.org"]
                )
            )
        })
        .collect();
    let message = |rng: &mut SplitMix64, at: f64, out: &mut Vec<(f64, String)>| {
        let popular = senders.len().div_ceil(10);
        let (signing, selectors, domain) = if chance(rng, 50) {
            &senders[rng.below(popular)]
        } else {
            pick(rng, &senders)
        };
        out.push((at, format!("{}._domainkey.{signing}", pick(rng, selectors))));
        if chance(rng, 25) {
            out.push((at + 0.05, pick(rng, &service_keys).clone()));
        }
        if chance(rng, 70) {
            out.push((at + 0.1, format!("_dmarc.{domain}")));
        }
        if chance(rng, 50) {
            out.push((at + 0.15, domain.clone()));
            if chance(rng, 50) {
                out.push((at + 0.2, pick(rng, &SPF_INCLUDES).to_string()));
            }
        }
        if chance(rng, 5) {
            let policy = pick(rng, &["default._bimi", "_mta-sts", "_smtp._tls"]);
            out.push((at + 0.25, format!("{policy}.{domain}")));
        }
    };
    let mut queries = Vec::new();
    let messages = between(rng, 20, 400);
    for at in draw::times(rng, messages, 1.0) {
        message(rng, at, &mut queries);
    }
    // A second mail exchanger of the site receives some of the same senders' mail.
    let fleet = if chance(rng, 30) {
        let mut second = Vec::new();
        let messages = between(rng, 5, 60);
        for at in draw::times(rng, messages, 1.0) {
            message(rng, at, &mut second);
        }
        vec![second]
    } else {
        Vec::new()
    };
    riding(queries, fleet)
}

/// A 128-bit id written as Active Directory writes GUIDs in DNS (8-4-4-4-12 hex).
fn guid(rng: &mut SplitMix64) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        text(rng, draw::HEX, 8),
        text(rng, draw::HEX, 4),
        text(rng, draw::HEX, 4),
        text(rng, draw::HEX, 4),
        text(rng, draw::HEX, 12)
    )
}

/// Active Directory's domain controller locator (Microsoft Learn, "How DNS support for Active
/// Directory works"; SRV records of RFC 2782): members look up `_ldap._tcp.<domain>`,
/// `_ldap._tcp.<site>._sites.dc._msdcs.<domain>`, `_kerberos._tcp|_udp.<domain>`,
/// `_kpasswd`, `_gc._tcp.<forest>`, `_ldap._tcp.pdc._msdcs.<domain>`,
/// `_ldap._tcp.<domain GUID>.domains._msdcs.<forest>` and KMS's `_vlmcs._tcp.<domain>`; a
/// controller resolves each replication partner as `<DSA GUID>._msdcs.<forest>`. The domain is
/// an internal zone (`ad.contoso.local`) or under the company's public one. Names of a fixed
/// set, asked again and again, hex GUIDs among them; every member of the domain asks.
fn directory_locator(rng: &mut SplitMix64) -> Draft {
    let company = company_domain(rng);
    let stem = company.split('.').next().unwrap_or("corp").to_string();
    let forest = match rng.below(4) {
        0 => format!("{stem}.local"),
        1 => format!("{}.{stem}.lan", pick(rng, &["hq", "ad", "corp"])),
        2 => format!("ad.{stem}.internal"),
        _ => format!("{}.{company}", pick(rng, &["corp", "ad", "hq"])),
    };
    let domains: Vec<String> = std::iter::once(forest.clone())
        .chain((0..between(rng, 0, 2)).map(|_| {
            format!(
                "{}.{forest}",
                pick(rng, &["eu", "na", "apac", "emea", "us", "uk"])
            )
        }))
        .collect();
    let sites: Vec<String> = std::iter::once("Default-First-Site-Name".to_string())
        .chain((0..between(rng, 0, 7)).map(|_| {
            format!(
                "{}{}",
                pick(
                    rng,
                    &["LON", "NYC", "AMS", "FRA", "SYD", "HQ", "BRANCH", "DC"]
                ),
                pick(rng, &["", "-DC", "-Site", "1", "2", "-Branch"])
            )
        }))
        .collect();
    let domain_guid = guid(rng);
    let partners: Vec<String> = (0..between(rng, 1, 30))
        .map(|_| format!("{}._msdcs.{forest}", guid(rng)))
        .collect();
    let locator = move |rng: &mut SplitMix64| -> String {
        let domain = pick(rng, &domains);
        let site = pick(rng, &sites);
        match rng.below(10) {
            0 => format!("_ldap._tcp.{domain}"),
            1 => format!("_ldap._tcp.{site}._sites.dc._msdcs.{domain}"),
            2 => format!("_ldap._tcp.dc._msdcs.{domain}"),
            3 => format!("_kerberos._{}.{domain}", pick(rng, &["tcp", "udp"])),
            4 => format!("_kerberos._tcp.{site}._sites.dc._msdcs.{domain}"),
            5 => format!("_kpasswd._{}.{domain}", pick(rng, &["tcp", "udp"])),
            6 => format!("_ldap._tcp.gc._msdcs.{forest}"),
            7 => format!("_gc._tcp.{forest}"),
            8 => format!("_ldap._tcp.{domain_guid}.domains._msdcs.{forest}"),
            _ => format!("_vlmcs._tcp.{domain}"),
        }
    };
    let is_controller = chance(rng, 40);
    let mut queries = Vec::new();
    let lookups = between(rng, 10, 300);
    for at in draw::times(rng, lookups, 1.0) {
        let name = if is_controller && chance(rng, 50) {
            pick(rng, &partners).clone()
        } else {
            locator(rng)
        };
        queries.push((at, name));
    }
    // Every member of the domain locates its controllers too.
    let fleet = fleet(rng, 80, (1, 6), (1, 15), locator);
    riding(queries, fleet)
}

/// Chromium's intranet redirect detector: at start-up and on network changes it resolves three
/// random single-label names of 7 to 15 letters, which the resolver expands with the search
/// domain (`qwhzvbkdpa.corp.example.com`).
fn browser_probe(rng: &mut SplitMix64) -> Names {
    let search = format!(
        "{}.{}",
        pick(rng, &["corp", "office", "ad", "lan", "hq"]),
        draw::domain(rng)
    );
    Box::new(move |r| {
        let label = text_between(r, draw::LETTERS, 7, 15);
        if chance(r, 50) {
            format!("{label}.{search}")
        } else {
            label
        }
    })
}

/// Telemetry and crash-report hosts with a UUID or a long token per app or device (error
/// trackers' ingest hosts, mobile analytics).
fn telemetry(rng: &mut SplitMix64) -> Names {
    let zone = *pick(
        rng,
        &[
            "ingest.sentry.io",
            "telemetry.vendor-apps.com",
            "events.data.microsoft.com",
            "in.appcenter.ms",
            "device-metrics-us.amazon.com",
        ],
    );
    Box::new(move |r| {
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            text(r, draw::HEX, 8),
            text(r, draw::HEX, 4),
            text(r, draw::HEX, 4),
            text(r, draw::HEX, 4),
            text(r, draw::HEX, 12)
        );
        if chance(r, 50) {
            format!("{uuid}.{zone}")
        } else {
            format!("o{}.{zone}", text(r, draw::DIGITS, 6))
        }
    })
}

/// CDN edge names a media-heavy host resolves: YouTube caches
/// (`rr3---sn-<8 characters>.googlevideo.com`), Akamai (`e1234.dscb.akamaiedge.net`),
/// CloudFront distributions (`d` + 13 characters), Facebook's `scontent-` hosts.
fn cdn_edge(rng: &mut SplitMix64) -> Names {
    let kind = rng.below(4);
    Box::new(move |r| match kind {
        0 => format!(
            "rr{}---sn-{}.googlevideo.com",
            between(r, 1, 8),
            text(r, draw::BASE36, 8)
        ),
        1 => format!(
            "e{}.{}.akamaiedge.net",
            text_between(r, draw::DIGITS, 4, 5),
            pick(r, &["dscb", "dscx", "a", "b"])
        ),
        2 => format!("d{}.cloudfront.net", text(r, draw::BASE36, 13)),
        _ => format!(
            "scontent-{}{}-{}.xx.fbcdn.net",
            text(r, draw::LETTERS, 3),
            between(r, 1, 9),
            between(r, 1, 2)
        ),
    })
}

/// Tenants' own hosts under cloud and SaaS platforms: each customer's endpoint carries its
/// chosen or generated name (`<name>-<token>.onrender.com`, Azure Static Web Apps'
/// `<adjective>-<noun>-<hex>.azurestaticapps.net`, Amplify's `<branch>.d<13>.amplifyapp.com`,
/// `<registry>.azurecr.io`, `<shop>.myshopify.com`). A host reaches one to four of them in an
/// hour, and up to six other hosts of the network reach one to four other tenants of the same
/// platform. None of these platforms is one the randomised family sends bursts under.
fn platform_tenant(rng: &mut SplitMix64) -> Names {
    // Each platform with the shape of its customers' host names.
    #[derive(Clone, Copy)]
    enum Shape {
        /// A chosen name (`contoso.okta.com`, `billing-api.azure-api.net`).
        Chosen,
        /// A chosen name and a generated token (`portal-7f3k2m9q.onrender.com`).
        ChosenToken,
        /// A generated token (`k3j5h6g7f8d9s0a1b2.azurecr.io`).
        Token,
        /// Two words and hex (`happy-sea-0a1b2c3d4.azurestaticapps.net`).
        WordsHex,
        /// A branch and an app id (`main.d1a2b3c4d5e6f7.amplifyapp.com`).
        BranchApp,
    }
    const PLATFORMS: [(&str, Shape); 17] = [
        ("azure-api.net", Shape::Chosen),
        ("trafficmanager.net", Shape::Chosen),
        ("azurecr.io", Shape::Token),
        ("vault.azure.net", Shape::Chosen),
        ("servicebus.windows.net", Shape::Chosen),
        ("database.windows.net", Shape::Chosen),
        ("azurestaticapps.net", Shape::WordsHex),
        ("amplifyapp.com", Shape::BranchApp),
        ("elasticbeanstalk.com", Shape::ChosenToken),
        ("cloudfunctions.net", Shape::ChosenToken),
        ("firebaseio.com", Shape::ChosenToken),
        ("myshopify.com", Shape::Chosen),
        ("zendesk.com", Shape::Chosen),
        ("okta.com", Shape::Chosen),
        ("service-now.com", Shape::Chosen),
        ("github.io", Shape::Chosen),
        ("onrender.com", Shape::ChosenToken),
    ];
    const WORDS: [&str; 16] = [
        "orders",
        "portal",
        "billing",
        "happy",
        "green",
        "sea",
        "status",
        "docs",
        "acme",
        "shop",
        "crm",
        "hr",
        "contoso",
        "fabrikam",
        "northwind",
        "api",
    ];
    let (zone, shape) = *pick(rng, &PLATFORMS);
    Box::new(move |r| match shape {
        Shape::Chosen => format!("{}{}.{zone}", pick(r, &WORDS), between(r, 0, 99)),
        Shape::ChosenToken => format!(
            "{}-{}.{zone}",
            pick(r, &WORDS),
            text_between(r, draw::BASE36, 6, 20)
        ),
        Shape::Token => format!("{}.{zone}", text_between(r, draw::BASE36, 8, 24)),
        Shape::WordsHex => format!(
            "{}-{}-{}.{zone}",
            pick(r, &WORDS),
            pick(r, &WORDS),
            text(r, draw::HEX, 9)
        ),
        Shape::BranchApp => format!(
            "{}.d{}.{zone}",
            pick(r, &["main", "dev", "staging", "prod"]),
            text(r, draw::BASE36, 13)
        ),
    })
}

/// Cloud load balancer names: `<name>-<10 digits>.<region>.elb.amazonaws.com`,
/// `internal-<name>-<9 digits>...`, and Azure `*.cloudapp.azure.com` hosts; and the endpoints of
/// cloud storage and functions, whose accounts are often named by generated tokens: Azure
/// storage (`<8-24 [a-z0-9]>.blob.core.windows.net`; names may be as short as 3), AWS Lambda function URLs
/// (`<32 [a-z0-9]>.lambda-url.<region>.on.aws`), API Gateway (`<10 [a-z0-9]>.execute-api...`).
fn load_balancer(rng: &mut SplitMix64) -> Names {
    let region = *pick(
        rng,
        &["us-east-1", "eu-west-1", "us-west-2", "ap-southeast-2"],
    );
    Box::new(move |r| {
        let app = format!(
            "{}-{}",
            pick(r, &["api", "web", "prod", "stage", "orders", "auth"]),
            pick(r, &["lb", "alb", "nlb", "ingress"])
        );
        match r.below(6) {
            3 => format!(
                "{}.{}.core.windows.net",
                text_between(r, draw::BASE36, 8, 24),
                pick(r, &["blob", "queue", "table", "file"])
            ),
            4 => format!("{}.lambda-url.{region}.on.aws", text(r, draw::BASE36, 32)),
            5 => format!(
                "{}.execute-api.{region}.amazonaws.com",
                text(r, draw::BASE36, 10)
            ),
            0 => format!(
                "{app}-{}.{region}.elb.amazonaws.com",
                text(r, draw::DIGITS, 10)
            ),
            1 => format!(
                "internal-{app}-{}.{region}.elb.amazonaws.com",
                text(r, draw::DIGITS, 9)
            ),
            _ => format!(
                "{app}-{}.{}.cloudapp.azure.com",
                text(r, draw::BASE36, 6),
                pick(r, &["westeurope", "eastus"])
            ),
        }
    })
}

/// Kubernetes pods resolve with `ndots:5`, so every external name is first tried under each
/// search domain (`api.github.com.default.svc.cluster.local`, `...svc.cluster.local`,
/// `...cluster.local`) before the name itself. A node also resolves the cluster's own services,
/// named from words by their teams (`order-fulfilment-worker-v2.payments-prod.svc.cluster.local`,
/// `<pod>.<headless service>.<namespace>...`): hundreds of distinct word names an hour, the
/// shape of a dictionary encoding, in a zone only the cluster's resolver answers.
fn kubernetes_search(rng: &mut SplitMix64) -> Draft {
    let namespace = *pick(
        rng,
        &["default", "prod", "payments", "monitoring", "kube-system"],
    );
    const TARGETS: [&str; 10] = [
        "api.github.com",
        "registry-1.docker.io",
        "s3.amazonaws.com",
        "sts.amazonaws.com",
        "api.stripe.com",
        "hooks.slack.com",
        "oauth2.googleapis.com",
        "login.microsoftonline.com",
        "sqs.us-east-1.amazonaws.com",
        "pypi.org",
    ];
    let lookups = between(rng, 10, 100);
    let mut queries = Vec::new();
    for t in draw::times(rng, lookups, 1.0) {
        let target = if chance(rng, 70) {
            pick(rng, &TARGETS).to_string()
        } else {
            format!(
                "{}.{namespace}",
                pick(
                    rng,
                    &["redis", "postgres", "kafka-0.kafka", "orders", "auth"]
                )
            )
        };
        for search in [
            format!("{namespace}.svc.cluster.local"),
            "svc.cluster.local".to_string(),
            "cluster.local".to_string(),
        ] {
            queries.push((t, format!("{target}.{search}")));
        }
        queries.push((t + 0.01, target));
    }
    if chance(rng, 60) {
        const PARTS: [&str; 24] = [
            "order",
            "fulfilment",
            "worker",
            "user",
            "profile",
            "service",
            "api",
            "gateway",
            "ingress",
            "nginx",
            "controller",
            "admission",
            "cert",
            "manager",
            "webhook",
            "prometheus",
            "grafana",
            "loki",
            "billing",
            "checkout",
            "search",
            "indexer",
            "cache",
            "events",
        ];
        const NAMESPACES: [&str; 8] = [
            "payments-prod",
            "team-checkout-staging",
            "data-platform",
            "monitoring",
            "istio-system",
            "cert-manager",
            "search-prod",
            "default",
        ];
        let services: Vec<String> = (0..between(rng, 10, 80))
            .map(|_| {
                let words: Vec<&str> = (0..between(rng, 2, 4))
                    .map(|_| *pick(rng, &PARTS))
                    .collect();
                let mut name = words.join("-");
                if chance(rng, 30) {
                    name.push_str(&format!("-v{}", between(rng, 1, 3)));
                }
                if chance(rng, 25) {
                    // A pod of a headless service: `<service>-<ordinal>.<service>`.
                    name = format!("{name}-{}.{name}", between(rng, 0, 5));
                }
                format!("{name}.{}", pick(rng, &NAMESPACES))
            })
            .collect();
        let lookups = between(rng, 30, 400);
        for t in draw::times(rng, lookups, 1.0) {
            queries.push((t, format!("{}.svc.cluster.local", pick(rng, &services))));
        }
    }
    riding(queries, Vec::new())
}

/// ACME DNS-01 challenges (RFC 8555): `_acme-challenge.<host>` TXT lookups while certificates
/// are issued or renewed, for many hosts of one zone at once.
fn acme(rng: &mut SplitMix64) -> Names {
    let zone = draw::domain(rng);
    Box::new(move |r| {
        format!(
            "_acme-challenge.{}{}.{zone}",
            pick(r, &["www", "api", "mail", "vpn", "app", "shop", "git"]),
            between(r, 1, 99)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visit_ids_are_a_few_names_of_one_shape_in_one_to_three_hours() {
        for seed in 0..200 {
            let d = visit_ids(&mut SplitMix64::new(seed));
            let ids: std::collections::HashSet<&str> =
                d.queries.iter().map(|(_, n)| n.as_str()).collect();
            // One id length and one zone per service.
            let shapes: std::collections::HashSet<(usize, &str)> = ids
                .iter()
                .map(|n| n.split_once('.').unwrap())
                .map(|(id, zone)| (id.len(), zone))
                .collect();
            assert_eq!(shapes.len(), 1, "{ids:?}");
            let (len, _) = shapes.into_iter().next().unwrap();
            assert!((8..=16).contains(&len));
            let mut hours: std::collections::HashMap<u64, std::collections::HashSet<&str>> =
                Default::default();
            for (t, n) in &d.queries {
                hours.entry((*t / 3600.0) as u64).or_default().insert(n);
            }
            // At most three visits of at most six ids; a repeat may spill into the next hour,
            // which may be the next visit's.
            assert!(hours.len() <= 6, "{hours:?}");
            assert!(ids.len() <= 18 && hours.values().all(|h| h.len() <= 12));
        }
    }

    /// The organisational (ICANN-boundary) domain of a name, as the features count them.
    fn zone(name: &str) -> &str {
        crate::features::v3::icann_domain_of(name)
    }

    #[test]
    fn mail_servers_check_a_few_names_under_each_of_many_sender_domains() {
        let mut busiest = 0;
        for seed in 0..200 {
            let d = mail_auth(&mut SplitMix64::new(seed));
            let mut per_zone: std::collections::HashMap<&str, std::collections::HashSet<&str>> =
                Default::default();
            for (t, name) in &d.queries {
                assert!((0.0..3601.0).contains(t), "{t}");
                per_zone.entry(zone(name)).or_default().insert(name);
            }
            // Every DKIM lookup is `<selector>._domainkey.<domain>`, and a sender's names are
            // its key(s), its policies and its SPF record, so few per domain; the sending
            // services' own zones collect several senders' keys.
            assert!(d
                .queries
                .iter()
                .filter(|(_, n)| n.contains("._domainkey."))
                .all(|(_, n)| n.split('.').nth(1) == Some("_domainkey")));
            let services = ["amazonses.com", "sendgrid.net", "mcsv.net", "mailgun.org"];
            let senders: Vec<usize> = per_zone
                .iter()
                .filter(|(zone, _)| !services.contains(zone))
                .map(|(_, names)| names.len())
                .collect();
            let mean = senders.iter().sum::<usize>() as f64 / senders.len() as f64;
            assert!(mean <= 6.0, "{mean}: {per_zone:?}");
            busiest = busiest.max(per_zone.len());
            assert!(d.rides);
        }
        // Some servers hear from scores of domains in the hour: the shape of domain rotation.
        assert!(busiest >= 60, "{busiest}");
    }

    #[test]
    fn directory_lookups_are_service_records_and_guids_of_one_forest_asked_again() {
        let mut with_guids = 0;
        for seed in 0..200 {
            let d = directory_locator(&mut SplitMix64::new(seed));
            let names: Vec<&str> = d.queries.iter().map(|(_, n)| n.as_str()).collect();
            let distinct: std::collections::HashSet<&str> = names.iter().copied().collect();
            // A fixed set of names, asked again: fewer distinct names than lookups once busy.
            if names.len() >= 100 {
                assert!(
                    distinct.len() * 2 < names.len(),
                    "{} of {}",
                    distinct.len(),
                    names.len()
                );
            }
            for name in &distinct {
                let first = name.split('.').next().unwrap();
                let is_guid = first.len() == 36 && first.split('-').count() == 5;
                assert!(first.starts_with('_') || is_guid, "{name}");
                if is_guid {
                    assert!(name.contains("._msdcs."), "{name}");
                }
            }
            with_guids += usize::from(distinct.iter().any(|n| !n.starts_with('_')));
            for member in &d.fleet {
                assert!(member.iter().all(|(_, n)| n.starts_with('_')));
            }
        }
        // Controllers (about two in five sessions) resolve their partners' GUIDs.
        assert!((40..=120).contains(&with_guids), "{with_guids}");
    }

    #[test]
    fn company_domains_are_registered_domains() {
        let mut rng = SplitMix64::new(3);
        for _ in 0..500 {
            let d = company_domain(&mut rng);
            assert_eq!(psl::domain_str(&d), Some(d.as_str()));
        }
    }
}
