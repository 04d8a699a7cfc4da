//! Labelled DNS logs for training and evaluation, in the format of `data/dev`:
//! `events.csv` (`src,query,rank,_time`) and `labels.csv` (`src,query,is_exfiltration,...`).
//!
//! Features depend on the whole request, so events are replayed the way the hourly ESCU search
//! sends them (the same rules as `eval/evaluate.py`): cut into windows, ranks recomputed per
//! window (newest occurrence of a (src, query) pair = 1, only ranks below 10 kept), and the
//! features of each window's rank-1 rows computed with the window as history. A schema with
//! long-window features (`dnsexfil-v5`) also gets what the windows before it left in an
//! in-process history store, exactly as a service answering the hourly search would remember
//! them (the same store, window and buckets as `serve`'s defaults).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use crate::dsdl::csvscan::{Field, Scanner};
use crate::features::{Prepared, Row, Schema};
use crate::history::memory::MemoryHistory;
use crate::history::{Batch, HistoryConfig, Observation};
use crate::model::train::Dataset;
use crate::util::rng::SplitMix64;

/// One DNS event.
#[derive(Debug, Clone)]
pub struct Event {
    pub src: String,
    pub query: String,
    pub time: f64,
}

/// A labelled log that cannot be read or used; each message names the file, the row and what is
/// wrong.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {}: {error}", .path.display())]
    Unreadable {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("{} is empty", .path.display())]
    Empty { path: std::path::PathBuf },
    #[error("{} has no `{column}` column (its columns are: {columns})", .path.display())]
    MissingColumn {
        path: std::path::PathBuf,
        column: String,
        columns: String,
    },
    #[error("{} row {row}: {problem}", .path.display())]
    BadRow {
        path: std::path::PathBuf,
        row: usize,
        problem: String,
    },
    #[error("no event has a label ({unlabelled} rank-1 events without one): check that the labels file matches the events")]
    NoLabels { unlabelled: usize },
}

fn unreadable(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |error| DataError::Unreadable {
        path: path.to_path_buf(),
        error,
    }
}

fn bad_row(path: &Path, row: usize, problem: String) -> DataError {
    DataError::BadRow {
        path: path.to_path_buf(),
        row,
        problem,
    }
}

/// Reads a CSV file into records of the named columns (in that order). Errors name the file,
/// the row and the missing column.
fn read_columns(path: &Path, columns: &[&str]) -> Result<Vec<Vec<String>>, DataError> {
    let text = std::fs::read_to_string(path).map_err(unreadable(path))?;
    let mut scanner = Scanner::new(&text);
    let mut fields: Vec<Field> = Vec::new();
    let bad = |row: usize, what: String| bad_row(path, row, what);
    if scanner
        .next_record(&mut fields)
        .map_err(|e| bad(0, e))?
        .is_none()
    {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let header: Vec<String> = fields
        .iter()
        .map(|f| f.text(&text).trim().to_string())
        .collect();
    let positions = columns
        .iter()
        .map(|c| {
            header
                .iter()
                .position(|h| h == c)
                .ok_or_else(|| DataError::MissingColumn {
                    path: path.to_path_buf(),
                    column: c.to_string(),
                    columns: header.join(", "),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    let mut row = 0;
    while let Some(problem) = scanner
        .next_record(&mut fields)
        .map_err(|e| bad(row + 1, e))?
    {
        row += 1;
        if let Some(p) = problem {
            return Err(bad(row, p.to_string()));
        }
        let record = positions
            .iter()
            .map(|&i| fields.get(i).map(|f| f.text(&text).into_owned()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                bad(
                    row,
                    format!(
                        "{} fields where the header has {}",
                        fields.len(),
                        header.len()
                    ),
                )
            })?;
        out.push(record);
    }
    Ok(out)
}

pub fn read_events(path: &Path) -> Result<Vec<Event>, DataError> {
    read_columns(path, &["src", "query", "_time"])?
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            let time = r[2]
                .trim()
                .parse::<f64>()
                .map_err(|_| bad_row(path, i + 1, format!("`_time` `{}` is not a number", r[2])))?;
            let query = std::mem::take(&mut r[1]);
            Ok(Event {
                src: std::mem::take(&mut r[0]),
                query,
                time,
            })
        })
        .collect()
}

/// Reads a label cell: 0 or 1, leniently (`1`, `1.0`, `"1"`, `true`).
pub fn parse_label(text: &str) -> Option<f32> {
    let t = crate::dsdl::envelope::unquote(text);
    match t.to_ascii_lowercase().as_str() {
        "true" => return Some(1.0),
        "false" => return Some(0.0),
        _ => {}
    }
    match t.parse::<f64>() {
        Ok(v) if v == 0.0 => Some(0.0),
        Ok(v) if v == 1.0 => Some(1.0),
        _ => None,
    }
}

/// Labels keyed by (src, query): 1 for exfiltration, 0 for benign.
pub fn read_labels(path: &Path) -> Result<HashMap<(String, String), f32>, DataError> {
    read_columns(path, &["src", "query", "is_exfiltration"])?
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            let label = parse_label(&r[2]).ok_or_else(|| {
                bad_row(
                    path,
                    i + 1,
                    format!("`is_exfiltration` must be 0 or 1, found `{}`", r[2]),
                )
            })?;
            Ok((
                (std::mem::take(&mut r[0]), std::mem::take(&mut r[1])),
                label,
            ))
        })
        .collect()
}

/// The `tool` of each malicious (src, query) of a labels file, when it has a `tool` column
/// (as `data/dev` does); empty otherwise.
pub fn read_label_tools(path: &Path) -> Result<HashMap<(String, String), String>, DataError> {
    let text = std::fs::read_to_string(path).map_err(unreadable(path))?;
    let header = text.lines().next().unwrap_or("");
    if !header
        .split(',')
        .any(|c| c.trim().trim_matches('"') == "tool")
    {
        return Ok(HashMap::new());
    }
    Ok(
        read_columns(path, &["src", "query", "is_exfiltration", "tool"])?
            .into_iter()
            .filter(|r| parse_label(&r[2]) == Some(1.0) && !r[3].trim().is_empty())
            .map(|mut r| {
                let tool = std::mem::take(&mut r[3]);
                ((std::mem::take(&mut r[0]), std::mem::take(&mut r[1])), tool)
            })
            .collect(),
    )
}

/// Encodings tunnelling tools put in names; the development log only has some of them.
const ENCODINGS: [&[u8]; 5] = [
    b"0123456789abcdef",                 // hex (dnscat2, dnsteal -x)
    b"abcdefghijklmnopqrstuvwxyz234567", // base32 (iodine)
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", // base32, upper case
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", // base64url
    b"abcdefghijklmnopqrstuvwxyz0123456789", // base36
];
const SYNTHETIC_ZONES: [&str; 8] = ["com", "net", "org", "io", "info", "biz", "co.uk", "xyz"];

/// Fixed labels some tools put before the payload (session ids, record-type tags, decoys).
const PREFIXES: [&str; 6] = ["api", "www6", "cdn", "post", "dnscat", "m"];

/// Synthetic tunnel sessions, to teach encodings and shapes the log lacks, each from its own
/// source in 198.18.0.0/15 (the benchmarking range), labelled 1: 4 to 80 queries of 1 to 3
/// encoded labels of 24 to 63 characters under one or two made-up domains, sometimes behind a
/// fixed label such as `api.` or a numeric session id. Every other session runs on a "carrier": the source also
/// makes the normal queries of a real benign host (copied, with their labels, from one of
/// `donors` in the same hour), because an infected workstation keeps browsing while it tunnels.
/// Without carriers the model learned that tunnelling sources query nothing else. Donors must be
/// training sources only, so no held-out host's traffic is copied into training.
pub fn synthetic_tunnels(
    events: &[Event],
    labels: &HashMap<(String, String), f32>,
    donors: &BTreeSet<String>,
    sessions: usize,
    seed: u64,
) -> (Vec<Event>, Vec<((String, String), f32)>) {
    let (start, end) = events.iter().fold((f64::MAX, f64::MIN), |(a, b), e| {
        (a.min(e.time), b.max(e.time))
    });
    let donor_events: Vec<&Event> = events.iter().filter(|e| donors.contains(&e.src)).collect();
    let mut rng = SplitMix64::new(seed ^ 0x5EED_7E57);
    let mut out = Vec::new();
    let mut out_labels = Vec::new();
    for s in 0..sessions {
        let src = format!("198.18.{}.{}", s / 250, s % 250 + 1);
        let alphabet = ENCODINGS[s % ENCODINGS.len()];
        let carried = s % 2 == 0 && !donor_events.is_empty();
        // A carrier's session starts at one of its donor's queries, so both share the hour.
        let (at, donor) = if carried {
            let e = donor_events[rng.below(donor_events.len())];
            (e.time, Some(e.src.as_str()))
        } else {
            (
                start + (end - start).max(1.0) * (rng.below(10_000) as f64 / 10_000.0),
                None,
            )
        };
        if let Some(donor) = donor {
            let hour = (at / 3600.0).floor();
            for e in donor_events
                .iter()
                .filter(|e| e.src == donor && (e.time / 3600.0).floor() == hour)
            {
                let y = labels
                    .get(&(e.src.clone(), e.query.clone()))
                    .copied()
                    .unwrap_or(0.0);
                out_labels.push(((src.clone(), e.query.clone()), y));
                out.push(Event {
                    src: src.clone(),
                    query: e.query.clone(),
                    time: e.time,
                });
            }
        }
        let zones: Vec<String> = (0..1 + (rng.below(4) == 0) as usize)
            .map(|_| {
                format!(
                    "t{}.tun{}.{}",
                    rng.below(10),
                    rng.next_u64() % 100_000,
                    SYNTHETIC_ZONES[rng.below(SYNTHETIC_ZONES.len())]
                )
            })
            .collect();
        let prefix = match rng.below(6) {
            0 => Some(PREFIXES[rng.below(PREFIXES.len())].to_string()),
            1 => Some(format!("{}", 10_000 + rng.below(90_000))),
            _ => None,
        };
        let labels_per_name = 1 + rng.below(3);
        let count = 4 + rng.below(77);
        for q in 0..count {
            let mut name = String::new();
            if let Some(p) = &prefix {
                name.push_str(p);
                name.push('.');
            }
            for _ in 0..labels_per_name {
                for _ in 0..(24 + rng.below(40)) {
                    name.push(alphabet[rng.below(alphabet.len())] as char);
                }
                name.push('.');
            }
            name.push_str(&zones[q % zones.len()]);
            out_labels.push(((src.clone(), name.clone()), 1.0));
            out.push(Event {
                src: src.clone(),
                query: name,
                time: at + q as f64,
            });
        }
    }
    (out, out_labels)
}

/// Splits the sources of a labelled log into (kept, held out) like [`split_sources`], from the
/// events' labels alone (before any feature is computed).
pub fn split_event_sources(
    events: &[Event],
    labels: &HashMap<(String, String), f32>,
    fraction: f64,
    seed: u64,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut by_source = Labelled {
        data: Dataset::new(0),
        srcs: Vec::new(),
    };
    for e in events {
        if let Some(&y) = labels.get(&(e.src.clone(), e.query.clone())) {
            by_source.data.push(&[], y);
            by_source.srcs.push(e.src.clone());
        }
    }
    split_sources(&by_source, fraction, seed)
}

/// A window's rows as `/apply` would get them: (src, query, rank), newest first.
pub fn windows(events: &[Event], width_secs: f64) -> Vec<Vec<(&str, &str, u32)>> {
    window_events(events, width_secs)
        .into_values()
        .map(|mut evs| ranked_rows(&mut evs))
        .collect()
}

/// Events by window number (time / width, rounded down), in time order of the windows.
fn window_events(events: &[Event], width_secs: f64) -> BTreeMap<i64, Vec<&Event>> {
    let mut by_window: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_window
            .entry((e.time / width_secs).floor() as i64)
            .or_default()
            .push(e);
    }
    by_window
}

/// One window's events as rows: newest first, ranked per (src, query), ranks below 10 kept.
fn ranked_rows<'a>(evs: &mut [&'a Event]) -> Vec<(&'a str, &'a str, u32)> {
    evs.sort_by(|a, b| {
        b.time
            .total_cmp(&a.time)
            .then(a.src.cmp(&b.src))
            .then(a.query.cmp(&b.query))
    });
    let mut seen: HashMap<(&str, &str), u32> = HashMap::new();
    evs.iter()
        .filter_map(|e| {
            let n = seen.entry((e.src.as_str(), e.query.as_str())).or_insert(0);
            *n += 1;
            (*n < 10).then_some((e.src.as_str(), e.query.as_str(), *n))
        })
        .collect()
}

/// Replays `events` the way the hourly search sends them to a service that remembers: window
/// by window in time order, each prepared by `schema` (with what the windows before it left,
/// for a schema with long-window features and `long_window`; see [`ReplayHistory`]) and handed to `each(window
/// number, its rows as (src, query, rank), the same as feature rows, its prepared features)`.
pub fn replay<'a>(
    events: &'a [Event],
    schema: Schema,
    window_secs: f64,
    long_window: bool,
    mut each: impl FnMut(usize, &[(&'a str, &'a str, u32)], &[Row<'a>], &Prepared),
) {
    // Without `long_window`, such a schema sees the long window empty in every window.
    let history = long_window
        .then(|| ReplayHistory::for_schema(schema, window_secs))
        .flatten();
    for (number, mut evs) in window_events(events, window_secs).into_values().enumerate() {
        let window = ranked_rows(&mut evs);
        let rows: Vec<Row> = window
            .iter()
            .map(|(src, query, _)| Row { src, query })
            .collect();
        let mut prepared = schema.prepare(&rows);
        if let Some(history) = &history {
            let events: Vec<(&str, &str, f64)> = evs
                .iter()
                .map(|e| (e.src.as_str(), e.query.as_str(), e.time))
                .collect();
            history.step(&mut prepared, &events);
        }
        each(number, &window, &rows, &prepared);
    }
}

/// The long window of a replay (training, evaluation, a `/fit` with `_time`): an in-process
/// history with the service's defaults (and room for a whole log), fed window by window as a
/// service answering the hourly search would be.
pub struct ReplayHistory {
    history: MemoryHistory,
    window_secs: f64,
}

impl ReplayHistory {
    /// `None` for a schema computed from each request alone.
    pub fn for_schema(schema: Schema, window_secs: f64) -> Option<ReplayHistory> {
        schema.uses_prior().then(|| ReplayHistory {
            history: MemoryHistory::new(HistoryConfig {
                max_bytes: 16 << 30,
                ..HistoryConfig::default()
            }),
            window_secs,
        })
    }

    /// Gives `prepared` what was remembered before its window (the one of its earliest event,
    /// as (source, name, Unix time)), then remembers the window's events as answered at the
    /// window's end. Windows must come in time order.
    pub fn step(&self, prepared: &mut Prepared, events: &[(&str, &str, f64)]) {
        let earliest = events.iter().map(|e| e.2).fold(f64::INFINITY, f64::min);
        let key = (earliest / self.window_secs).floor();
        let start = (key * self.window_secs) as i64;
        let now = ((key + 1.0) * self.window_secs) as i64;
        if let Some(keys) = prepared.prior_keys() {
            prepared.apply_prior(&self.history.prior_now(&keys, start, now));
        }
        let config = *self.history.config();
        for piece in events.chunks(crate::history::RECORD_PIECE) {
            let observations: Vec<Observation> = piece
                .iter()
                .map(|&(src, query, time)| Observation {
                    src,
                    query,
                    time: crate::history::time_from_seconds(time).unwrap_or(now),
                })
                .collect();
            let batch = Batch::from_observations(&observations, now, &config);
            self.history.record_now(batch, now);
        }
    }
}

/// Feature rows of every labelled rank-1 event, with its source, for `schema`.
pub struct Labelled {
    pub data: Dataset,
    pub srcs: Vec<String>,
}

pub fn labelled_features(
    events: &[Event],
    labels: &HashMap<(String, String), f32>,
    schema: Schema,
    window_secs: f64,
) -> Result<Labelled, DataError> {
    labelled_features_where(events, labels, schema, window_secs, true, &mut |_, _, _| {
        true
    })
}

/// [`labelled_features`] keeping only the labelled rows `keep(window number, src, query)`
/// accepts (all rows still feed the features' history), with the long window read or left
/// empty as [`replay`] says.
pub fn labelled_features_where(
    events: &[Event],
    labels: &HashMap<(String, String), f32>,
    schema: Schema,
    window_secs: f64,
    long_window: bool,
    keep: &mut dyn FnMut(usize, &str, &str) -> bool,
) -> Result<Labelled, DataError> {
    let mut data = Dataset::new(schema.width());
    let mut srcs = Vec::new();
    let mut unlabelled = 0usize;
    replay(
        events,
        schema,
        window_secs,
        long_window,
        |number, window, rows, prepared| {
            let scored: Vec<usize> = (0..window.len())
                .filter(|&i| window[i].2 == 1 && keep(number, window[i].0, window[i].1))
                .collect();
            let features = prepared.features(rows, &scored);
            for (k, &i) in scored.iter().enumerate() {
                let (src, query, _) = window[i];
                match labels.get(&(src.to_string(), query.to_string())) {
                    Some(&y) => {
                        data.push(features.row(k), y);
                        srcs.push(src.to_string());
                    }
                    None => unlabelled += 1,
                }
            }
        },
    );
    if data.is_empty() {
        return Err(DataError::NoLabels { unlabelled });
    }
    Ok(Labelled { data, srcs })
}

/// Splits sources into (kept, held out) deterministically for `seed`, separately among sources
/// with malicious rows and the others, so both sides see both classes. `fraction` of each kind
/// (at least one) is held out.
pub fn split_sources(
    labelled: &Labelled,
    fraction: f64,
    seed: u64,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut malicious = BTreeSet::new();
    let mut all = BTreeSet::new();
    for (src, &y) in labelled.srcs.iter().zip(&labelled.data.y) {
        all.insert(src.clone());
        if y == 1.0 {
            malicious.insert(src.clone());
        }
    }
    let benign: Vec<String> = all.difference(&malicious).cloned().collect();
    let mut rng = SplitMix64::new(seed);
    let mut held_out = BTreeSet::new();
    for group in [malicious.into_iter().collect::<Vec<_>>(), benign] {
        let mut group = group;
        for i in (1..group.len()).rev() {
            group.swap(i, rng.below(i + 1));
        }
        let n = ((group.len() as f64 * fraction).round() as usize)
            .max(1)
            .min(group.len().saturating_sub(1));
        held_out.extend(group.into_iter().take(n));
    }
    let kept = all.difference(&held_out).cloned().collect();
    (kept, held_out)
}

/// The rows of `labelled` whose source is in `srcs`.
pub fn subset(labelled: &Labelled, srcs: &BTreeSet<String>) -> Dataset {
    let mut d = Dataset::new(labelled.data.width);
    for (i, src) in labelled.srcs.iter().enumerate() {
        if srcs.contains(src) {
            d.push(
                &labelled.data.x[i * d.width..(i + 1) * d.width],
                labelled.data.y[i],
            );
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_recompute_ranks_like_the_evaluator() {
        let ev = |src: &str, query: &str, time: f64| Event {
            src: src.into(),
            query: query.into(),
            time,
        };
        let mut events: Vec<Event> = (0..12)
            .map(|i| ev("h", "a.example.com", 100.0 + i as f64))
            .collect();
        events.push(ev("h", "b.example.com", 50.0));
        events.push(ev("h", "a.example.com", 4000.0));
        let w = windows(&events, 3600.0);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].len(), 10, "ranks 1..9 of `a` plus `b`");
        assert_eq!(w[0][0], ("h", "a.example.com", 1));
        assert_eq!(w[0][9], ("h", "b.example.com", 1));
        assert_eq!(w[1], vec![("h", "a.example.com", 1)]);
    }
}
