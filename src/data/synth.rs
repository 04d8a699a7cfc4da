//! Synthetic DSDL batches for benchmarks and load tests: many sources, benign names and
//! tunnel-like names, up to nine ranks per (src, query) pair, deterministic for a seed.

use std::fmt::Write;

use crate::util::rng::SplitMix64;

const BENIGN_SUFFIXES: [&str; 16] = [
    "google.com",
    "microsoft.com",
    "apple.com",
    "amazonaws.com",
    "akamaiedge.net",
    "cloudfront.net",
    "windows.net",
    "office.com",
    "github.com",
    "slack.com",
    "zoom.us",
    "example.org",
    "trafficmanager.net",
    "googlevideo.com",
    "northwind.lan",
    "in-addr.arpa",
];
const BENIGN_LABELS: [&str; 12] = [
    "www",
    "api",
    "mail",
    "login",
    "cdn",
    "static",
    "assets",
    "update",
    "telemetry",
    "eu-west-1",
    "s3",
    "edge",
];
const TUNNEL_DOMAINS: [&str; 4] = [
    "t.exfil-example.net",
    "x.tunnel.io",
    "d.badcorp.biz",
    "ns.c2-example.com",
];
const BASE32: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Writes `rows` CSV rows `src,query,rank` (with header): about one query in ten is tunnel-like,
/// and each (src, query) pair repeats with ranks 1, 2, ... up to 9 like the ESCU search sends.
pub fn dsdl_csv(rows: usize, seed: u64) -> String {
    let mut rng = SplitMix64::new(seed);
    let sources = (rows / 50).clamp(1, 5000);
    let mut out = String::with_capacity(rows * 56 + 16);
    out.push_str("src,query,rank\n");
    let mut written = 0;
    let mut query = String::new();
    while written < rows {
        let src = rng.below(sources);
        query.clear();
        if rng.below(10) == 0 {
            for _ in 0..(1 + rng.below(3)) {
                for _ in 0..(16 + rng.below(40)) {
                    query.push(BASE32[rng.below(BASE32.len())] as char);
                }
                query.push('.');
            }
            query.push_str(TUNNEL_DOMAINS[rng.below(TUNNEL_DOMAINS.len())]);
        } else {
            for _ in 0..rng.below(3) {
                query.push_str(BENIGN_LABELS[rng.below(BENIGN_LABELS.len())]);
                query.push('.');
            }
            if rng.below(4) == 0 {
                let _ = write!(query, "h{:x}.", rng.next_u64() & 0xffff_ffff);
            }
            query.push_str(BENIGN_SUFFIXES[rng.below(BENIGN_SUFFIXES.len())]);
        }
        let repeats = 1 + rng.below(9);
        for rank in 1..=repeats.min(rows - written) {
            let _ = writeln!(
                out,
                "10.{}.{}.{},{query},{rank}",
                src >> 16,
                (src >> 8) & 255,
                src & 255
            );
            written += 1;
        }
    }
    out
}

/// The DSDL `/apply` envelope the ESCU search would send for `csv`.
pub fn dsdl_envelope(csv: &str, model_name: &str) -> String {
    serde_json::json!({
        "data": csv,
        "meta": {
            "options": {
                "params": {"mode": "stage", "algo": model_name},
                "model_name": model_name,
                "algo_name": "MLTKContainer",
                "mlspl_limits": {"max_inputs": "100000"}
            },
            "feature_variables": ["src", "query", "rank"]
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_deterministic_sized_and_parse() {
        let a = dsdl_csv(1000, 7);
        assert_eq!(a, dsdl_csv(1000, 7));
        assert_ne!(a, dsdl_csv(1000, 8));
        let t = crate::dsdl::table::Table::parse(&a).unwrap();
        assert_eq!(t.len(), 1000);
        let rank1 = (0..t.len())
            .filter(|&row| t.kind(row) == crate::dsdl::table::RowKind::Rank1)
            .count();
        assert!(rank1 > 100 && rank1 < 1000, "{rank1}");
        assert!(t.skipped().next().is_none());
    }
}
