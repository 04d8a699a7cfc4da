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
    let fleet = if chance(rng, fleet_share) {
        (0..between(rng, 1, 6))
            .map(|_| {
                let n = between(rng, fleet_lo, fleet_hi);
                draw::times(rng, n, 1.0)
                    .into_iter()
                    .map(|t| (t, name(rng)))
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };
    riding(queries, fleet)
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
    let fleet = if chance(rng, 20) {
        (0..between(rng, 1, 3))
            .map(|_| {
                let n = between(rng, 1, 4);
                draw::times(rng, n, 1.0)
                    .into_iter()
                    .map(|t| (t, id_name(rng)))
                    .collect()
            })
            .collect()
    } else {
        Vec::new()
    };
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
}
