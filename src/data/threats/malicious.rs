//! Exfiltration and C2-over-DNS sessions, each written from the tool's public documentation or
//! published analyses (cited per generator). The names are ours: cipher tables, domains and
//! payloads are drawn from the seeded generator, never copied from a tool or from a holdout.

use super::draw::{self, between, chance, pick, text, text_between};
use super::{Draft, Family, PacketWhisperCiphers, RandomisedCover};
use crate::util::rng::SplitMix64;

/// `popular` lists zones of the carriers' traffic the randomised family may also hide under
/// (empty: only its shared platforms); `cover` says whether it may also mimic benign services.
pub(crate) fn draft(
    family: Family,
    rng: &mut SplitMix64,
    pw: PacketWhisperCiphers,
    popular: &[String],
    cover: RandomisedCover,
    long_window: bool,
) -> Draft {
    use PacketWhisperCiphers::{Tool, V4};
    match family {
        Family::PacketWhisperCdn => match pw {
            V4 => v4_packetwhisper::cdn(rng),
            Tool => packetwhisper_cdn(rng),
        },
        Family::PacketWhisperAnalytics => match pw {
            V4 => v4_packetwhisper::analytics(rng),
            Tool => packetwhisper_analytics(rng),
        },
        Family::PacketWhisperWords => match pw {
            V4 => v4_packetwhisper::words(rng),
            Tool => packetwhisper_words(rng),
        },
        Family::Dnscat2 => dnscat2(rng),
        Family::CobaltStrike => cobalt_strike(rng),
        Family::Sliver => sliver(rng),
        Family::DnsExfiltrator => dnsexfiltrator(rng),
        Family::Sunburst => sunburst(rng),
        Family::Det => det(rng),
        Family::DictionaryEncoding => dictionary(rng),
        Family::DomainRotation => domain_rotation(rng),
        Family::LowAndSlow => low_and_slow(rng, long_window),
        Family::EightBit => eight_bit(rng),
        Family::Randomised => {
            // Drawn only under `mimic`, so the other covers' sessions stay as they were.
            if cover == RandomisedCover::Mimic && chance(rng, 20) {
                mimic(rng)
            } else {
                randomised(rng, popular)
            }
        }
        benign => unreachable!("{benign:?} is not a malicious family"),
    }
}

fn session(queries: Vec<(f64, String)>, rides: bool) -> Draft {
    Draft {
        queries,
        fleet: Vec::new(),
        rides,
        sources: 1,
    }
}

/// Names at evenly jittered times over `hours`.
fn spread(rng: &mut SplitMix64, names: Vec<String>, hours: f64) -> Vec<(f64, String)> {
    draw::times(rng, names.len(), hours)
        .into_iter()
        .zip(names)
        .collect()
}

/// A cipher table of 66 entries (one per symbol of Cloakify's base64 alphabet plus padding),
/// fixed per cipher (seeded by its name), as PacketWhisper's cipher files are fixed lists.
fn cipher_table(name: &str, entry: impl Fn(&mut SplitMix64) -> String) -> Vec<String> {
    let seed = name
        .bytes()
        .fold(0xC1F_u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    let mut rng = SplitMix64::new(seed);
    (0..66).map(|_| entry(&mut rng)).collect()
}

/// PacketWhisper (TryCatchHCF, DEF CON 26; README "FQDN-Based Ciphers"): the payload is
/// Cloakified, one base64 symbol per DNS query, and each symbol's cipher entry gets random
/// "subdomain noise" so no two names repeat ("Unique Random Subdomain FQDNs"). Its CDN ciphers
/// (`ciphers/subdomain_randomizer_scripts/`): `cloudfront_prefixes`, `d` + 5 characters of the
/// table + 7 random `[a-z0-9]` under `cloudfront.net` (`cloudfront_prefixes.py`), and
/// `cdn_optimizely_prefixes`, `a` + 4 table digits + 4 random digits under
/// `cdn.optimizely.com`. The tool has no Akamai list. The attacker needs no domain of its own,
/// only a vantage point on the resolution path.
fn packetwhisper_cdn(rng: &mut SplitMix64) -> Draft {
    let cloudfront = cipher_table("cloudfront", |r| format!("d{}", text(r, draw::BASE36, 5)));
    let optimizely = cipher_table("cdn_optimizely", |r| {
        format!("a{}", text(r, draw::DIGITS, 4))
    });
    let variant = rng.below(2);
    one_query_per_symbol(rng, |rng, symbol| match variant {
        0 => format!(
            "{}{}.cloudfront.net",
            cloudfront[symbol],
            text(rng, draw::BASE36, 7)
        ),
        _ => format!(
            "{}{}.cdn.optimizely.com",
            optimizely[symbol],
            text(rng, draw::DIGITS, 4)
        ),
    })
}

/// Seconds between a PacketWhisper sender's queries (`packetWhisper.py`, CloakAndTransferFile):
/// the user picks half a second (the default, "recommended"), 5 seconds ("extremely slow but
/// stealthy") or no delay; each query also waits for its lookup, so we add up to 0.2 s.
fn packetwhisper_delay(rng: &mut SplitMix64) -> f64 {
    match rng.below(10) {
        0..=6 => 0.5,
        7 | 8 => 5.0,
        _ => 0.0,
    }
}

/// Times of `count` PacketWhisper queries sent one after another, `delay` seconds apart plus
/// the lookup's own time.
fn packetwhisper_times(rng: &mut SplitMix64, count: usize) -> Vec<f64> {
    let delay = packetwhisper_delay(rng);
    let mut t = 0.0;
    (0..count)
        .map(|_| {
            let at = t;
            t += delay + 0.02 + rng.below(180) as f64 / 1000.0;
            at
        })
        .collect()
}

/// A PacketWhisper transfer: 150 to 1,500 queries, one per payload symbol, sent in sequence at
/// the sender's pace, `name` making each query from its symbol.
fn one_query_per_symbol(
    rng: &mut SplitMix64,
    mut name: impl FnMut(&mut SplitMix64, usize) -> String,
) -> Draft {
    let count = between(rng, 150, 1500);
    let names: Vec<String> = (0..count)
        .map(|_| {
            let symbol = rng.below(66);
            name(rng, symbol)
        })
        .collect();
    let times = packetwhisper_times(rng, count);
    session(times.into_iter().zip(names).collect(), chance(rng, 60))
}

/// PacketWhisper's analytics ciphers (`ciphers/subdomain_randomizer_scripts/`):
/// `log_optimizely_prefixes`, 6 table digits + 5 random digits under `log.optimizely.com`, and
/// `akstat_io_prefixes`, 2 digits and 2 `[a-z0-9]` of the table + 4 random `[a-z0-9]` under
/// `akstat.io`; one query per payload symbol, each name unique.
fn packetwhisper_analytics(rng: &mut SplitMix64) -> Draft {
    let numbered = cipher_table("log_optimizely", |r| text(r, draw::DIGITS, 6));
    let akstat = cipher_table("akstat_io", |r| {
        format!("{}{}", text(r, draw::DIGITS, 2), text(r, draw::BASE36, 2))
    });
    let variant = rng.below(2);
    one_query_per_symbol(rng, |rng, symbol| match variant {
        0 => format!(
            "{}{}.log.optimizely.com",
            numbered[symbol],
            text(rng, draw::DIGITS, 5)
        ),
        _ => format!("{}{}.akstat.io", akstat[symbol], text(rng, draw::BASE36, 4)),
    })
}

const FIRST_NAMES: [&str; 12] = [
    "John", "Mary", "Alex", "Sam", "Kim", "Lee", "Max", "Ann", "Joe", "Eva", "Tom", "Zoe",
];

/// Common English words: the vocabulary of word-list ciphers and dictionary encodings.
const WORDS: [&str; 64] = [
    "apple", "river", "stone", "cloud", "green", "table", "house", "light", "water", "paper",
    "music", "north", "south", "east", "west", "field", "bread", "glass", "horse", "tiger",
    "eagle", "maple", "ocean", "storm", "candle", "silver", "garden", "winter", "summer", "button",
    "pencil", "window", "forest", "planet", "rocket", "mirror", "castle", "dragon", "bridge",
    "island", "valley", "copper", "orange", "purple", "yellow", "shadow", "thunder", "harbor",
    "meadow", "pepper", "cotton", "marble", "velvet", "falcon", "otter", "badger", "cedar",
    "willow", "amber", "coral", "ember", "frost", "lunar", "solar",
];

/// `word` with its first letter in upper case.
fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// PacketWhisper's "Unique Repeating FQDNs" ciphers (`ciphers/repeated_unique_fqdn/`, e.g.
/// `red_lectroids`: `John.Whorfin.yoyodyne.com`, `John.Careful.Walker.yoyodyne.com`): a fixed
/// list of 66 capitalised names (a first name, then one or two words) under one domain. The
/// sender (`packetWhisper.py`, SelectAndGenerateUniqueRepeatingFQDNs) puts a random title from
/// `Mr`, `Dr`, `Sir`, `Prof`, `Lord`, `Capt`, `Duke` before each name, never the previous
/// name's title (`Dr.John.Whorfin.yoyodyne.com`), so consecutive queries never repeat; a name
/// still recurs whenever its symbol and title do.
fn packetwhisper_words(rng: &mut SplitMix64) -> Draft {
    const TITLES: [&str; 7] = ["Mr", "Dr", "Sir", "Prof", "Lord", "Capt", "Duke"];
    let domain = draw::domain(rng);
    let first = pick(rng, &FIRST_NAMES).to_string();
    let table: Vec<String> = (0..66)
        .map(|i| {
            let a = capitalised(WORDS[i % WORDS.len()]);
            if i % 3 == 0 {
                let b = capitalised(WORDS[(i * 7 + 3) % WORDS.len()]);
                format!("{first}.{a}.{b}.{domain}")
            } else {
                format!("{first}.{a}{}.{domain}", if i >= 64 { "s" } else { "" })
            }
        })
        .collect();
    let count = between(rng, 200, 1500);
    let mut last_title = usize::MAX;
    let names = (0..count)
        .map(|_| {
            let entry = &table[rng.below(66)];
            let mut title = rng.below(TITLES.len());
            while title == last_title {
                title = rng.below(TITLES.len());
            }
            last_title = title;
            format!("{}.{entry}", TITLES[title])
        })
        .collect::<Vec<_>>();
    let times = packetwhisper_times(rng, count);
    session(times.into_iter().zip(names).collect(), chance(rng, 60))
}

/// dnscat2 (iagox86; doc/protocol.md): every packet is hex-encoded into the name, after the
/// `dnscat.` tag when no domain is configured or under the attacker's domain otherwise. A MSG
/// packet is packet id (2 bytes), type, session id (2), seq (2) and ack (2), then data; an idle
/// client still polls about once a second with empty MSG packets (18 hex characters). With
/// encryption (the default) the data is random-looking; without it, the hex of plain text.
fn dnscat2(rng: &mut SplitMix64) -> Draft {
    let domain = chance(rng, 60).then(|| draw::domain(rng));
    let session_id = text(rng, draw::HEX, 4);
    let encrypted = chance(rng, 70);
    let count = between(rng, 60, 1200);
    let hours = between(rng, 1, 2) as f64;
    let busy = between(rng, 10, 90);
    let mut seq = rng.below(65_536);
    let names = (0..count)
        .map(|_| {
            let mut hex = format!(
                // Packet id, type 0x01 (MSG), session id, seq, ack.
                "{}01{session_id}{:04x}{:04x}",
                text(rng, draw::HEX, 4),
                seq & 0xffff,
                rng.below(65_536)
            );
            if chance(rng, busy) {
                let bytes = between(rng, 8, 100);
                seq += bytes;
                if encrypted {
                    hex.push_str(&text(rng, draw::HEX, bytes * 2));
                } else {
                    for _ in 0..bytes {
                        let c = *pick(
                            rng,
                            b"etaoin shrdlu\ncmfwypvbgkqjxz0123456789ETAOINSHRDLU.:/-",
                        );
                        hex.push_str(&format!("{c:02x}"));
                    }
                }
            }
            let payload = draw::labels(&hex, 63);
            match &domain {
                Some(d) => format!("{payload}.{d}"),
                None => format!("dnscat.{payload}"),
            }
        })
        .collect();
    session(spread(rng, names, hours), chance(rng, 60))
}

/// Cobalt Strike's DNS Beacon (Malleable C2 `dns-beacon` options: `beacon`, `get_A`, `get_AAAA`,
/// `get_TXT`, `put_metadata`, `put_output`, `maxdns`): the beacon checks in with an A query for
/// its id every sleep interval (the same name, so one rank-1 row an hour), then sends metadata
/// and task output as lower-case hex under configurable prefixes (`www.`, `post.` by default),
/// with a counter/nonce label and the beacon id, and fetches tasks under `api.`/`cdn.`.
fn cobalt_strike(rng: &mut SplitMix64) -> Draft {
    let domain = draw::domain(rng);
    let beacon = text(rng, draw::HEX, 8);
    let prefixes: Vec<&str> = if chance(rng, 50) {
        vec!["www", "post", "api", "cdn"]
    } else {
        (0..4)
            .map(|_| {
                *pick(
                    rng,
                    &["mail", "ns1", "img", "static", "m", "en", "news", "s3"],
                )
            })
            .collect()
    };
    let hours = between(rng, 1, 3) as f64;
    let sleep = between(rng, 5, 120) as f64;
    let mut queries = Vec::new();
    let mut t = 0.0;
    while t < hours * 3600.0 {
        queries.push((t, format!("{beacon}.{domain}")));
        t += sleep * (0.7 + rng.below(600) as f64 / 1000.0);
    }
    let outputs = between(rng, 20, 600);
    let start = rng.below(1800) as f64;
    for i in 0..outputs {
        let kind = if i < 4 {
            prefixes[0]
        } else if chance(rng, 80) {
            prefixes[1]
        } else {
            prefixes[2 + rng.below(2)]
        };
        let data_len = between(rng, 20, 168);
        let data = draw::labels(&text(rng, draw::HEX, data_len), between(rng, 52, 63));
        let nonce = text_between(rng, draw::HEX, 7, 8);
        let name = if kind == prefixes[2] || kind == prefixes[3] {
            format!("{kind}.{nonce}.{beacon}.{domain}")
        } else {
            format!("{kind}.{data}.{nonce}.{beacon}.{domain}")
        };
        queries.push((start + i as f64 * 0.5, name));
    }
    session(queries, chance(rng, 70))
}

/// Sliver's DNS C2 (BishopFox; the dnsclient of its implant): messages are encoded with a
/// base32 alphabet of its own (lower-case letters and digits in a shuffled order), split into
/// labels of up to 63 characters, and names filled close to the 254-character limit, plus
/// short polling names between messages.
fn sliver(rng: &mut SplitMix64) -> Draft {
    const ALPHABET: &[u8] = b"ab1c2d3e4f5g6h7j8k9m0npqrtuvwxyz";
    let domain = draw::domain(rng);
    let count = between(rng, 40, 900);
    let hours = between(rng, 1, 2) as f64;
    let names = (0..count)
        .map(|_| {
            let room = 250usize.saturating_sub(domain.len() + 5);
            let len = if chance(rng, 30) {
                between(rng, 12, 30)
            } else {
                between(rng, room / 2, room)
            };
            format!("{}.{domain}", draw::labels(&text(rng, ALPHABET, len), 63))
        })
        .collect();
    session(spread(rng, names, hours), chance(rng, 60))
}

/// DNSExfiltrator (Arno0x): an `init.<base32 of file name and chunk count>.base64.<domain>`
/// query, then one query per chunk: `<chunk number>.<data>.<domain>`, the data RC4-encrypted
/// and base64url (or base32 with `-b32`) encoded, split into labels of a configurable size
/// (`-l`, often short) up to the request size limit (`-r`).
fn dnsexfiltrator(rng: &mut SplitMix64) -> Draft {
    let domain = draw::domain(rng);
    let base32 = chance(rng, 50);
    let alphabet = if base32 {
        draw::BASE32
    } else {
        draw::BASE64URL
    };
    let label_len = between(rng, 20, 63);
    let request = between(rng, 100, 240).min(250 - domain.len());
    let count = between(rng, 20, 800);
    let mut names = vec![format!(
        "init.{}.{}.{domain}",
        text_between(rng, draw::BASE32, 16, 40),
        if base32 { "base32" } else { "base64" }
    )];
    for chunk in 0..count {
        let number = chunk.to_string();
        // The request size counts the dots between the data's labels too (names stay within
        // DNS's 253 characters).
        let room = request.saturating_sub(number.len() + 2);
        let len = (room * label_len / (label_len + 1)).max(8);
        let len = if chunk + 1 == count {
            between(rng, 4, len)
        } else {
            len
        };
        names.push(format!(
            "{number}.{}.{domain}",
            draw::labels(&text(rng, alphabet, len), label_len)
        ));
    }
    let hours = between(rng, 1, 2) as f64;
    session(spread(rng, names, hours), chance(rng, 60))
}

/// SUNBURST (FireEye and Microsoft analyses, December 2020): the backdoor resolves
/// `<encoded>.appsync-api.<region>.avsvmcloud.com`, the first label a victim id and host data
/// in a custom base32-like alphabet (15 to 32 characters), a few queries an hour for days,
/// from a busy server. Ours uses other fixed middle labels and domains.
fn sunburst(rng: &mut SplitMix64) -> Draft {
    const ALPHABET: &[u8] = b"ph2eifo3n5utg1j8d94qrvbmk0sal76c";
    let domain = draw::domain(rng);
    let middle = format!(
        "{}.{}",
        pick(
            rng,
            &["appsync-api", "api-gw", "sync-api", "svc-edge", "telemetry"]
        ),
        pick(
            rng,
            &[
                "eu-west-1",
                "us-west-2",
                "us-east-1",
                "us-east-2",
                "ap-south-1"
            ]
        )
    );
    let victim = text(rng, ALPHABET, 15);
    let hours = between(rng, 6, 30);
    let mut queries = Vec::new();
    for h in 0..hours {
        for _ in 0..between(rng, 1, 5) {
            let extra = between(rng, 0, 17);
            let name = format!("{victim}{}.{middle}.{domain}", text(rng, ALPHABET, extra));
            queries.push((h as f64 * 3600.0 + rng.below(3600) as f64, name));
        }
    }
    session(queries, chance(rng, 85))
}

/// DET, the Data Exfiltration Toolkit (PaulSec; its DNS plugin): each packet is
/// `<job id>|!|<sequence>|!|<data>` (the first carries the file name and checksum),
/// hex-encoded into labels under the attacker's domain, with a random sleep between packets.
fn det(rng: &mut SplitMix64) -> Draft {
    let domain = draw::domain(rng);
    let job = text(rng, draw::BASE36, 7);
    let count = between(rng, 20, 600);
    let label_len = between(rng, 30, 63);
    let names = (0..count)
        .map(|seq| {
            let body = if seq == 0 {
                format!(
                    "{job}|!|{}.{}|!|REGISTER|!|{}",
                    text(rng, draw::LETTERS, 6),
                    pick(rng, &["docx", "xlsx", "pdf", "zip"]),
                    text(rng, draw::HEX, 32)
                )
            } else {
                format!(
                    "{job}|!|{seq}|!|{}",
                    text_between(rng, draw::BASE64URL, 10, 60)
                )
            };
            let hex: String = body.bytes().map(|b| format!("{b:02x}")).collect();
            format!("{}.{domain}", draw::labels(&hex, label_len))
        })
        .collect();
    let hours = between(rng, 1, 2) as f64;
    session(spread(rng, names, hours), chance(rng, 60))
}

/// Dictionary (word-list) encodings, as in Cloakify-style ciphers and text steganography: each
/// byte of the payload becomes a word, so names are long but made of ordinary words and score
/// like natural language on entropy and vowel measures.
fn dictionary(rng: &mut SplitMix64) -> Draft {
    let domain = draw::domain(rng);
    let joiner = if chance(rng, 50) { "" } else { "-" };
    let count = between(rng, 30, 600);
    let names = (0..count)
        .map(|_| {
            let labels = between(rng, 1, 3);
            let parts: Vec<String> = (0..labels)
                .map(|_| {
                    let words: Vec<&str> = (0..between(rng, 2, 4))
                        .map(|_| *pick(rng, &WORDS))
                        .collect();
                    words.join(joiner)
                })
                .collect();
            format!("{}.{domain}", parts.join("."))
        })
        .collect();
    let hours = between(rng, 1, 2) as f64;
    session(spread(rng, names, hours), chance(rng, 60))
}

/// A lower-case encoding a tool might use for chunks, and a chunk of it.
fn encoded_chunk(rng: &mut SplitMix64, alphabet: &[u8], lo: usize, hi: usize) -> String {
    let len = between(rng, lo, hi);
    draw::labels(&text(rng, alphabet, len), between(rng, 30, 63))
}

/// Domain rotation (seen in DNS exfiltration malware such as OilRig's and in red-team
/// frameworks): each chunk goes under another registered domain of a pool, so no domain
/// collects many names; optionally the chunks are spread over several infected hosts.
fn domain_rotation(rng: &mut SplitMix64) -> Draft {
    let pool: Vec<String> = (0..between(rng, 5, 40))
        .map(|_| draw::domain(rng))
        .collect();
    let alphabet = *pick(rng, &[draw::HEX, draw::BASE32, draw::BASE36]);
    let count = between(rng, 20, 400);
    let names: Vec<String> = (0..count)
        .map(|i| {
            format!(
                "{}.{}",
                encoded_chunk(rng, alphabet, 20, 60),
                pool[i % pool.len()]
            )
        })
        .collect();
    let hours = between(rng, 1, 3) as f64;
    let sources = if chance(rng, 30) {
        between(rng, 2, 4)
    } else {
        1
    };
    Draft {
        queries: spread(rng, names, hours),
        fleet: Vec::new(),
        rides: chance(rng, 60),
        sources,
    }
}

/// Low-and-slow exfiltration (T1048.003 with T1029, scheduled transfer): a handful of
/// lower-case hex or base32 queries an hour for many hours, from a host that keeps working.
/// In the long-window recipe (`long_window`) half the sessions send short chunks (8 to 16
/// characters, one to four an hour): in one hour they look like a site's visit ids (the benign
/// `visit_ids` family), and only the hours before give them away.
fn low_and_slow(rng: &mut SplitMix64, long_window: bool) -> Draft {
    let domain = draw::domain(rng);
    let alphabet = *pick(rng, &[draw::HEX, draw::BASE32]);
    let hours = between(rng, 8, 40);
    // Drawn only in the long-window recipe, so the other recipes' sessions stay as they were.
    let short = long_window && chance(rng, 50);
    let ((chunk_lo, chunk_hi), most_an_hour) = if short { ((8, 16), 4) } else { ((24, 60), 6) };
    let mut queries = Vec::new();
    for h in 0..hours {
        for _ in 0..between(rng, 1, most_an_hour) {
            queries.push((
                h as f64 * 3600.0 + rng.below(3600) as f64,
                format!(
                    "{}.{domain}",
                    encoded_chunk(rng, alphabet, chunk_lo, chunk_hi)
                ),
            ));
        }
    }
    session(queries, chance(rng, 80))
}

/// 8-bit labels: where the resolvers pass them, tunnels put raw bytes in names (iodine's Base128
/// and Raw encodings, documented in its README), which logs show in presentation form as
/// `\DDD` escapes beside the printable bytes.
fn eight_bit(rng: &mut SplitMix64) -> Draft {
    let domain = draw::domain(rng);
    let high_share = between(rng, 30, 70);
    let count = between(rng, 30, 600);
    let names = (0..count)
        .map(|_| {
            let labels: Vec<String> = (0..between(rng, 1, 3))
                .map(|_| {
                    (0..between(rng, 30, 63))
                        .map(|_| {
                            if chance(rng, high_share) {
                                format!("\\{:03}", between(rng, 128, 255))
                            } else {
                                (*pick(rng, draw::BASE64URL) as char).to_string()
                            }
                        })
                        .collect()
                })
                .collect();
            format!("{}.{domain}", labels.join("."))
        })
        .collect();
    let hours = between(rng, 1, 2) as f64;
    session(spread(rng, names, hours), chance(rng, 60))
}

/// Shared platforms that hand out names under their own zone (a tenant such as
/// `<app>.herokuapp.com`, or bare names under a provider's zone that a sniffer on the resolution
/// path reads): an attacker needs no domain of its own, and the zone is popular on every network.
const SHARED_PLATFORMS: [&str; 12] = [
    "herokuapp.com",
    "azurewebsites.net",
    "workers.dev",
    "appspot.com",
    "netlify.app",
    "vercel.app",
    "ngrok.io",
    "r2.dev",
    "firebaseapp.com",
    "pages.dev",
    "azureedge.net",
    "fastly.net",
];

/// Words of a cipher of our own (not the dictionary family's list), and syllables for
/// pronounceable encodings.
const OTHER_WORDS: [&str; 32] = [
    "alpha", "bravo", "delta", "echo", "golf", "hotel", "india", "kilo", "lima", "mike", "oscar",
    "papa", "romeo", "sierra", "tango", "victor", "zulu", "blue", "red", "gold", "iron", "jade",
    "onyx", "ruby", "sand", "snow", "rain", "wind", "fire", "moon", "star", "leaf",
];
const CONSONANTS: &[u8] = b"bcdfghjklmnprstvz";
const VOWELS: &[u8] = b"aeiou";

/// A tool we have no generator for: an encoding, a parent zone, a pace and a cover drawn from
/// a grammar of what tunnels vary (alphabet, label and chunk lengths, a fixed session label, a
/// counter, a substitution table with noise, words or syllables; an own domain, a tenant of a
/// shared platform or bare names under one; bursts, a few names an hour, or in between; one
/// source or several; rotated parents). Trained on, it teaches what every tunnel shares (many
/// names of one template that no other host asks for) instead of one tool's alphabet; it is
/// never the only family of a shape, and the leave-one-out table scores it like the others.
fn randomised(rng: &mut SplitMix64, popular: &[String]) -> Draft {
    // The pace: a burst, a few names an hour for many hours, or in between.
    let (hours, per_hour): (usize, (usize, usize)) = match rng.below(100) {
        0..60 => (between(rng, 1, 2), (30, 900)),
        60..85 => (between(rng, 6, 30), (1, 8)),
        _ => (between(rng, 2, 6), (8, 40)),
    };
    let parents: Vec<String> = {
        let rotate = chance(rng, 20);
        let count = if rotate { between(rng, 3, 30) } else { 1 };
        let platform = pick(rng, &SHARED_PLATFORMS).to_string();
        // Drawn only when offered, so the default recipe's sessions stay as they were.
        let platform = if !popular.is_empty() && chance(rng, 50) {
            pick(rng, popular).clone()
        } else {
            platform
        };
        // A few names an hour under a zone every host uses are what that zone's real users
        // send: only a burst there is a tunnel. Slow sessions use a domain of their own.
        let kind = if per_hour.1 >= 30 { rng.below(100) } else { 0 };
        (0..count)
            .map(|_| {
                if kind < 55 {
                    draw::domain(rng)
                } else if kind < 85 {
                    format!("{}.{platform}", text_between(rng, draw::BASE36, 5, 14))
                } else {
                    platform.clone()
                }
            })
            .collect()
    };
    // Labels between the chunk and the parent; the owner of a domain may also borrow the DNS's
    // service conventions (`<chunk>._domainkey.`), so those are no sign of a benign name.
    let middle: Vec<String> = (0..between(rng, 0, 2))
        .map(|_| match rng.below(4) {
            0 => pick(rng, &["api", "v2", "cdn", "img", "ns", "t", "s3", "edge"]).to_string(),
            1 => text_between(rng, draw::LETTERS, 2, 8),
            2 => text_between(rng, draw::BASE36, 3, 10),
            _ => pick(
                rng,
                &[
                    "_domainkey",
                    "_tcp",
                    "_udp",
                    "_dmarc",
                    "_sip",
                    "_acme-challenge",
                ],
            )
            .to_string(),
        })
        .collect();
    let session_label = chance(rng, 40).then(|| text_between(rng, draw::BASE36, 4, 12));
    let counter = chance(rng, 35).then(|| rng.below(2));
    // How a chunk is spelled.
    let alphabet: &[u8] = *pick(
        rng,
        &[
            draw::HEX,
            draw::BASE32,
            draw::BASE36,
            draw::LETTERS,
            draw::DIGITS,
            b"abcdefghijklmnopqrstuvwxyz0123456789-",
        ],
    );
    let style = rng.below(100); // < 55 alphabet, < 70 words, < 85 syllables, else table + noise
    let (lo, hi) = {
        let lo = between(rng, 4, 40);
        if chance(rng, 50) {
            (lo, lo)
        } else {
            (lo, between(rng, lo, 150))
        }
    };
    let label_len = between(rng, 8, 63);
    let table: Vec<String> = (0..between(rng, 16, 256))
        .map(|_| text_between(rng, alphabet, 3, 10))
        .collect();
    let noise = between(rng, 0, 8);
    let joiner = if chance(rng, 50) { "" } else { "-" };
    let chunk = |rng: &mut SplitMix64| -> String {
        match style {
            // A label may not start or end with a hyphen (resolver libraries refuse it).
            0..55 => draw::labels(&text_between(rng, alphabet, lo, hi), label_len)
                .split('.')
                .map(|label| {
                    let mut label = label.as_bytes().to_vec();
                    for edge in [0, label.len() - 1] {
                        if label[edge] == b'-' {
                            label[edge] = b'0';
                        }
                    }
                    String::from_utf8(label).expect("ASCII")
                })
                .collect::<Vec<_>>()
                .join("."),
            55..70 => {
                let n = between(rng, 2, 6);
                let words: Vec<&str> = (0..n).map(|_| *pick(rng, &OTHER_WORDS)).collect();
                words.join(joiner)
            }
            70..85 => {
                let n = between(rng, 2, 8);
                (0..n)
                    .map(|_| {
                        format!(
                            "{}{}",
                            *pick(rng, CONSONANTS) as char,
                            *pick(rng, VOWELS) as char
                        )
                    })
                    .collect()
            }
            _ => format!("{}{}", pick(rng, &table), text(rng, draw::BASE36, noise)),
        }
    };
    let mut queries = Vec::new();
    let mut sequence = rng.below(5000);
    for h in 0..hours {
        let n = between(rng, per_hour.0, per_hour.1);
        for t in draw::times(rng, n, 1.0) {
            let mut labels = Vec::new();
            if let Some(base) = counter {
                sequence += 1;
                labels.push(if base == 0 {
                    sequence.to_string()
                } else {
                    format!("{sequence:x}")
                });
            }
            labels.push(chunk(rng));
            if let Some(id) = &session_label {
                labels.push(id.clone());
            }
            labels.extend(middle.iter().cloned());
            labels.push(pick(rng, &parents).clone());
            queries.push((h as f64 * 3600.0 + t, labels.join(".")));
        }
    }
    let sources = if chance(rng, 15) {
        between(rng, 2, 4)
    } else {
        1
    };
    Draft {
        queries,
        fleet: Vec::new(),
        rides: chance(rng, 70),
        sources,
    }
}

/// A tunnel that names its chunks as a benign service names its hosts (one of the benign
/// look-alike generators), the premise of PacketWhisper's CDN ciphers for any service: what
/// betrays it is volume, 2 to 10 times the most names an hour that service sends from one host
/// (at most 1,500), for one or two hours, from one host, names no other host asks for.
fn mimic(rng: &mut SplitMix64) -> Draft {
    let (mut name, most) = super::benign::lookalike_names(rng);
    let per_hour = between(rng, 2 * most, (10 * most).min(1500));
    let mut queries = Vec::new();
    for h in 0..between(rng, 1, 2) {
        for t in draw::times(rng, per_hour, 1.0) {
            queries.push((h as f64 * 3600.0 + t, name(rng)));
        }
    }
    session(queries, chance(rng, 70))
}

/// The PacketWhisper generators `dnsexfil_v4` was trained with (`--packetwhisper v4`, the
/// default), kept so that its recipe still rebuilds it bit for bit. They differ from the tool:
/// two Akamai-style CDN ciphers of our own (the tool has no Akamai list), 5+4-digit
/// `log.optimizely.com` names, 4-character `akstat.io` entries, lower-case word lists without
/// titles, each transfer spread over one or two hours.
mod v4_packetwhisper {
    use super::draw::{self, between, chance, pick, text};
    use super::{cipher_table, session, spread, Draft};
    use crate::util::rng::SplitMix64;

    /// CloudFront (`d` + 5 characters of the table + 7 random `[a-z0-9]`) and two Akamai-style
    /// edge-name ciphers of our own.
    pub(super) fn cdn(rng: &mut SplitMix64) -> Draft {
        let cloudfront = cipher_table("cloudfront", |r| format!("d{}", text(r, draw::BASE36, 5)));
        // Real edge names carry up to 5 digits: 3 from the table, 2 of noise.
        let akamai = cipher_table("akamai", |r| format!("a{}", text(r, draw::DIGITS, 3)));
        let variant = rng.below(3);
        one_query_per_symbol(rng, |rng, symbol| match variant {
            0 => format!(
                "{}{}.cloudfront.net",
                cloudfront[symbol],
                text(rng, draw::BASE36, 7)
            ),
            1 => format!(
                "{}{}.{}.akamai.net",
                akamai[symbol],
                text(rng, draw::DIGITS, 2),
                pick(rng, &["g", "b", "d", "dsp", "cdn"])
            ),
            _ => format!(
                "e{}{}.{}.akamaiedge.net",
                &akamai[symbol][1..],
                text(rng, draw::DIGITS, 2),
                pick(rng, &["dscx", "dscb", "a", "b"])
            ),
        })
    }

    /// A PacketWhisper transfer: 150 to 1,500 queries (one per payload symbol, 0.5 s apart at most)
    /// over one or two hours, `name` making each query from its symbol.
    fn one_query_per_symbol(
        rng: &mut SplitMix64,
        mut name: impl FnMut(&mut SplitMix64, usize) -> String,
    ) -> Draft {
        let count = between(rng, 150, 1500);
        let hours = between(rng, 1, 2) as f64;
        let names = (0..count)
            .map(|_| {
                let symbol = rng.below(66);
                name(rng, symbol)
            })
            .collect();
        session(spread(rng, names, hours), chance(rng, 60))
    }

    /// PacketWhisper's analytics ciphers: numbered labels of the kind web analytics use
    /// (`<digits>.log.optimizely.com`) and `akstat.io` beacons (4 characters of the table plus 4
    /// random `[a-z0-9]`), one query per payload symbol, each name unique.
    pub(super) fn analytics(rng: &mut SplitMix64) -> Draft {
        let numbered = cipher_table("log_optimizely", |r| text(r, draw::DIGITS, 5));
        let akstat = cipher_table("akstat_io", |r| text(r, draw::BASE36, 4));
        let variant = rng.below(2);
        one_query_per_symbol(rng, |rng, symbol| match variant {
            0 => format!(
                "{}{}.log.optimizely.com",
                numbered[symbol],
                text(rng, draw::DIGITS, 4)
            ),
            _ => format!("{}{}.akstat.io", akstat[symbol], text(rng, draw::BASE36, 4)),
        })
    }

    const FIRST_NAMES: [&str; 12] = [
        "john", "mary", "alex", "sam", "kim", "lee", "max", "ann", "joe", "eva", "tom", "zoe",
    ];

    /// PacketWhisper's "Unique Repeating FQDNs" ciphers: a fixed list of 66 odd but wordy names
    /// (first name plus one or two words under one domain, like its "John.<alias>.yoyodyne.com"
    /// list). Names repeat whenever a symbol repeats, so an hour holds at most 66 distinct names.
    pub(super) fn words(rng: &mut SplitMix64) -> Draft {
        let domain = draw::domain(rng);
        let first = pick(rng, &FIRST_NAMES).to_string();
        let table: Vec<String> = (0..66)
            .map(|i| {
                let a = super::WORDS[i % super::WORDS.len()];
                if i % 3 == 0 {
                    format!(
                        "{first}.{a}.{}.{domain}",
                        super::WORDS[(i * 7 + 3) % super::WORDS.len()]
                    )
                } else {
                    format!("{first}.{a}{}.{domain}", if i >= 64 { "s" } else { "" })
                }
            })
            .collect();
        let count = between(rng, 200, 1500);
        let names = (0..count).map(|_| table[rng.below(66)].clone()).collect();
        session(spread(rng, names, 1.0), chance(rng, 60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(family: Family, seed: u64) -> Draft {
        draft(
            family,
            &mut SplitMix64::new(seed),
            PacketWhisperCiphers::Tool,
            &[],
            RandomisedCover::Platforms,
            false,
        )
    }

    #[test]
    fn mimic_sessions_borrow_benign_names_at_several_times_their_volume_only_under_mimic() {
        let benign_zones = [
            "sophosxl.net",
            "mcafee.com",
            "e5.sk",
            "cymru.com",
            "googlevideo.com",
            "akamaiedge.net",
            "cloudfront.net",
            "fbcdn.net",
        ];
        let borrowing = |cover: RandomisedCover| {
            (0..200)
                .map(|seed| {
                    draft(
                        Family::Randomised,
                        &mut SplitMix64::new(seed),
                        PacketWhisperCiphers::V4,
                        &[],
                        cover,
                        false,
                    )
                })
                .filter(|d| {
                    d.queries
                        .iter()
                        .all(|(_, n)| benign_zones.iter().any(|z| n.ends_with(z)))
                })
                .map(|d| {
                    // At least twice the look-alike's most an hour (CDN edges 80, reputation
                    // lookups 400) in the first hour.
                    let first_hour = d.queries.iter().filter(|(t, _)| *t < 3600.0).count();
                    assert!(first_hour >= 160, "{first_hour}");
                })
                .count()
        };
        assert!(borrowing(RandomisedCover::Mimic) >= 5);
        assert_eq!(borrowing(RandomisedCover::Platforms), 0);
    }

    /// Queries per hour of a session's start (hours with none are absent).
    fn per_hour(draft: &Draft) -> std::collections::HashMap<u64, usize> {
        let mut counts = std::collections::HashMap::new();
        for (t, _) in &draft.queries {
            *counts.entry((*t / 3600.0) as u64).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn short_slow_chunks_only_in_the_long_window_recipe() {
        let is_short = |d: &Draft| {
            d.queries
                .iter()
                .all(|(_, n)| n.split('.').next().unwrap().len() <= 16)
        };
        let sessions = |long_window: bool| -> Vec<Draft> {
            (0..200)
                .map(|seed| low_and_slow(&mut SplitMix64::new(seed), long_window))
                .collect()
        };
        let long = sessions(true);
        let short = long.iter().filter(|d| is_short(d)).count();
        assert!((70..=130).contains(&short), "{short} of 200 short");
        for d in &long {
            let most = if is_short(d) { 4 } else { 6 };
            assert!(per_hour(d).values().all(|&n| (1..=most).contains(&n)));
        }
        // The other recipes: never short, as before.
        assert!(!sessions(false).iter().any(is_short));
    }

    #[test]
    fn randomised_sessions_hide_under_popular_zones_only_when_offered() {
        let popular = ["popular-zone.example".to_string()];
        let under_popular = |offered: &[String]| {
            (0..300)
                .filter(|&seed| {
                    let session = randomised(&mut SplitMix64::new(seed), offered);
                    session
                        .queries
                        .iter()
                        .any(|(_, name)| name.ends_with(".popular-zone.example"))
                })
                .count()
        };
        // Bursts (about 60% of sessions) pick a shared zone 45% of the time, half of those a
        // popular one.
        let offered = under_popular(&popular);
        assert!((15..=80).contains(&offered), "{offered} of 300");
        assert_eq!(under_popular(&[]), 0);
    }

    fn is(chars: &str, alphabet: &[u8]) -> bool {
        chars.bytes().all(|b| alphabet.contains(&b))
    }

    #[test]
    fn tool_packetwhisper_names_follow_the_cipher_files() {
        for seed in 0..20 {
            for (_, name) in names(Family::PacketWhisperCdn, seed).queries {
                let (label, zone) = name.split_once('.').unwrap();
                match zone {
                    "cloudfront.net" => {
                        assert!(label.len() == 13 && label.starts_with('d'), "{name}");
                        assert!(is(&label[1..], draw::BASE36), "{name}");
                    }
                    "cdn.optimizely.com" => {
                        assert!(label.len() == 9 && label.starts_with('a'), "{name}");
                        assert!(is(&label[1..], draw::DIGITS), "{name}");
                    }
                    _ => panic!("{name}"),
                }
            }
            for (_, name) in names(Family::PacketWhisperAnalytics, seed).queries {
                let (label, zone) = name.split_once('.').unwrap();
                match zone {
                    "log.optimizely.com" => {
                        assert!(label.len() == 11 && is(label, draw::DIGITS), "{name}")
                    }
                    "akstat.io" => {
                        assert!(label.len() == 8 && is(&label[..2], draw::DIGITS), "{name}");
                        assert!(is(&label[2..], draw::BASE36), "{name}");
                    }
                    _ => panic!("{name}"),
                }
            }
        }
    }

    #[test]
    fn tool_packetwhisper_words_carry_a_new_title_each_query_at_the_senders_pace() {
        const TITLES: [&str; 7] = ["Mr", "Dr", "Sir", "Prof", "Lord", "Capt", "Duke"];
        for seed in 0..20 {
            let queries = names(Family::PacketWhisperWords, seed).queries;
            let titles: Vec<&str> = queries
                .iter()
                .map(|(_, n)| n.split('.').next().unwrap())
                .collect();
            assert!(titles.iter().all(|t| TITLES.contains(t)), "{titles:?}");
            assert!(titles.windows(2).all(|w| w[0] != w[1]));
            for (_, name) in &queries {
                let second = name.split('.').nth(1).unwrap();
                assert!(
                    second.starts_with(|c: char| c.is_ascii_uppercase()),
                    "{name}"
                );
            }
            // One query after another: 0 s, 0.5 s or 5 s apart plus the lookup (at most 0.2 s).
            let gaps: Vec<f64> = queries.windows(2).map(|w| w[1].0 - w[0].0).collect();
            let lo = gaps.iter().cloned().fold(f64::MAX, f64::min);
            let hi = gaps.iter().cloned().fold(0.0, f64::max);
            assert!(
                hi - lo <= 0.2
                    && [0.0, 0.5, 5.0]
                        .iter()
                        .any(|d| lo >= d + 0.019 && hi <= d + 0.2),
                "{lo} {hi}"
            );
        }
    }
}
