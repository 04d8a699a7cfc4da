//! Seeded property tests (a stand-in for fuzz targets, issue 19): the CSV scanner, the DSDL
//! envelope, the NDJSON and JSON event readers, the model file loader and the `.pt` reader get
//! random and mutated input and must answer (an error is fine) without panicking; where two
//! readers must agree, they are compared. The seeds are fixed, so every run checks the same
//! cases; `DNSEXFIL_FUZZ_CASES` multiplies the count for a longer run.

mod common;

use common::*;
use dnsexfil::dsdl::{envelope, table::Table};
use dnsexfil::model::Model;

/// xorshift64*: small, seeded, good enough to pick bytes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn cases(base: usize) -> usize {
    let factor = std::env::var("DNSEXFIL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize);
    base * factor.max(1)
}

/// `bytes` with a few random changes: flips, insertions, deletions, truncation, copies.
fn mutate(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if at < out.len() => out[at] ^= 1 << rng.below(8),
            1 if at < out.len() => out[at] = rng.next() as u8,
            2 => out.insert(at, *rng.pick(b"\",\\{}[]:\n\r0aX\x00\xff")),
            3 if at < out.len() => {
                out.remove(at);
            }
            4 => out.truncate(at),
            _ => {
                let len = rng.below(16).min(out.len() - at.min(out.len()));
                let piece = out[at.min(out.len())..at.min(out.len()) + len].to_vec();
                let to = rng.below(out.len() + 1);
                out.splice(to..to, piece);
            }
        }
    }
    out
}

/// Random CSV-like text: the characters the scanner treats specially, often.
fn csv_like(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "a", "b.c", "10.1.1.1", ",", ",", "\"", "\"\"", "\n", "\n", "\r\n", "\r", " ", "1", "2",
        "x", "é", "\\", "\t", "\u{feff}", "_time", "src", "query", "rank",
    ];
    let mut text = String::new();
    if rng.below(4) > 0 {
        text.push_str(rng.pick::<&str>(&[
            "src,query,rank\n",
            "src,query\n",
            "query,src,rank,_time\n",
        ]));
    }
    for _ in 0..rng.below(60) {
        let piece: &str = rng.pick::<&str>(PIECES);
        text.push_str(piece);
    }
    text
}

/// What a table says about each row, to compare two readings.
fn summary(table: &Table) -> Vec<(String, String, String, bool)> {
    (0..table.len())
        .map(|i| {
            (
                table.src(i).to_string(),
                table.query(i).to_string(),
                table.rank_text(i).to_string(),
                table.skip_reason(i).is_some(),
            )
        })
        .collect()
}

#[test]
fn the_csv_scanner_reads_escaped_and_plain_text_alike() {
    let mut rng = Rng::new(19);
    for _ in 0..cases(20_000) {
        let text = csv_like(&mut rng);
        let plain = Table::parse_limited(&text, 1_000);
        // The same text as it stands in a JSON body, read without unescaping.
        let json = serde_json::to_string(&text).unwrap();
        let escaped = &json[1..json.len() - 1];
        let read = Table::parse_json_escaped(escaped, 1_000);
        match (&plain, &read) {
            (Ok(p), Ok(Some(e))) => assert_eq!(summary(p), summary(e), "{text:?}"),
            (Err(p), Err(e)) => assert_eq!(p, e, "{text:?}"),
            (_, Ok(None)) => {} // needs unescaping: read the plain way
            _ => panic!(
                "{text:?}: plain {:?}, escaped {:?}",
                plain.as_ref().map(|t| t.len()),
                read.as_ref().map(|t| t.as_ref().map(|t| t.len()))
            ),
        }
    }
}

#[test]
fn the_envelope_readers_never_panic_and_agree_on_the_data() {
    let mut rng = Rng::new(20);
    let valid = serde_json::to_vec(&escu_envelope(
        "src,query,rank\n10.1.1.1,a.b.c,1\n\"q,\"\"x\",y\\z,2\n",
    ))
    .unwrap();
    for _ in 0..cases(20_000) {
        let body = mutate(&mut rng, &valid);
        let general = envelope::parse(&body);
        if let Some(kept) = envelope::parse_keeping_data_escaped(&body) {
            let _ = kept.options_summary();
            if let Ok(general) = &general {
                let unescaped: Result<String, _> =
                    serde_json::from_str(&format!("\"{}\"", kept.data.0));
                if let Ok(unescaped) = unescaped {
                    assert_eq!(
                        unescaped,
                        general.data,
                        "{}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
        if let Ok(e) = general {
            let _ = e.options_summary();
            let _ = e.target_variable();
            let _ = e.params();
        }
    }
}

#[test]
fn the_event_readers_never_panic() {
    let mut rng = Rng::new(21);
    let ndjson = b"{\"src\": \"10.1.1.1\", \"query\": \"a.b.c\"}\n{\"src\": \"h\", \"query\": \"x.y\", \"rank\": 2, \"_time\": 1700000000}\n\n{\"query\": \"q\"}\n";
    let json =
        br#"{"model": "m", "events": [{"src": "a", "query": "b.c", "rank": "1"}, {"src": 1}]}"#;
    for _ in 0..cases(20_000) {
        let _ = dnsexfil::http::v1::events::from_ndjson(&mutate(&mut rng, ndjson), 100);
        let _ = dnsexfil::http::v1::events::from_json(&mutate(&mut rng, json), 100);
    }
}

#[test]
fn the_model_file_loader_never_panics() {
    let mut rng = Rng::new(22);
    let valid = dnsexfil::model::DEFAULT_MODEL_BYTES;
    for _ in 0..cases(3_000) {
        let _ = Model::from_bytes(&mutate(&mut rng, valid), "fuzz");
    }
}

#[test]
fn the_pt_reader_never_panics() {
    let mut rng = Rng::new(23);
    let published = dnsexfil::model::convert::find_pt(&artifact()).unwrap();
    for _ in 0..cases(400) {
        let pt = dnsexfil::model::convert::PtFile {
            origin: "fuzz.pt".into(),
            file_name: "fuzz.pt".into(),
            bytes: mutate(&mut rng, &published.bytes),
        };
        let _ = dnsexfil::model::convert::convert_pt(&pt, None);
    }
}
