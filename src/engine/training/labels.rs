//! A fit's table as labelled rows: replayed in windows as the scheduled search sends them, so
//! the model learns the features it will see at `/apply`.

use std::collections::HashMap;

use crate::data::dataset::{parse_label, Labelled, ReplayHistory};
use crate::dsdl::table::{RowKind, Table};
use crate::features::{Row, Schema};
use crate::model::train::Dataset;

/// How a fit request's rows were grouped into the requests `/apply` will see.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Windowing {
    /// No `_time` column: the whole request is one batch, with the ranks as sent.
    WholeRequest,
    /// By `_time`, in windows of this many seconds, ranks recomputed in each (newest = 1).
    ByTime { seconds: f64, windows: usize },
}

impl Windowing {
    pub fn describe(&self) -> String {
        match self {
            Windowing::WholeRequest => "as one batch (send `_time` too to train in the hourly windows the search applies to)".into(),
            Windowing::ByTime { seconds, windows } => {
                format!("in {windows} windows of {seconds} s by `_time`")
            }
        }
    }
}

/// The features and labels of a fit request's rank-1 rows (older rows are history only, and
/// unreadable rows are left out). With a `_time` column the rows are replayed the way the
/// scheduled search sends them: cut into windows of `window_secs`, ranks recomputed in each
/// (newest occurrence of a (src, query) pair = 1, ranks of 10 and above dropped), so the model
/// learns the features it will see at `/apply`. Labels that are not 0/1, and times that are not
/// numbers, fail the fit, naming the rows.
/// Why a fit's table gives nothing to train on; each message names the rows at fault (up to a
/// few examples) and what to send instead.
#[derive(Debug, thiserror::Error)]
pub enum FitDataError {
    #[error("the label `{target}` must be 0 or 1 on every rank-1 row; {bad} of {rows} are not ({examples}). Fix or drop those rows before `| fit`")]
    BadLabels {
        target: String,
        bad: usize,
        rows: usize,
        examples: String,
    },
    #[error("nothing to train on: {0}")]
    NothingToTrainOn(&'static str),
    #[error("`_time` must be a number (epoch seconds) on every row; {bad} rows are not ({examples}). Send `_time` as Splunk stores it, or leave the field out")]
    BadTimes { bad: usize, examples: String },
}

pub fn labelled_from_table(
    table: &Table,
    schema: Schema,
    target: &str,
    window_secs: f64,
) -> Result<(Labelled, Windowing), FitDataError> {
    // Each batch: (table rows feeding the history, positions among them of the rows to score).
    let (batches, windowing) = if table.has_time {
        time_windows(table, window_secs)?
    } else {
        let usable: Vec<usize> = (0..table.len())
            .filter(|&i| table.feeds_history(i))
            .collect();
        let scored: Vec<usize> = (0..usable.len())
            .filter(|&k| table.kind(usable[k]) == RowKind::Rank1)
            .collect();
        (vec![(usable, scored)], Windowing::WholeRequest)
    };
    let scored_rows: Vec<usize> = batches
        .iter()
        .flat_map(|(rows, scored)| scored.iter().map(|&k| rows[k]))
        .collect();
    let mut bad = Vec::new();
    let mut labels = Vec::with_capacity(scored_rows.len());
    for &row in &scored_rows {
        match parse_label(table.target_text(row)) {
            Some(y) => labels.push(y),
            None => bad.push(row),
        }
    }
    if !bad.is_empty() {
        return Err(FitDataError::BadLabels {
            target: target.to_string(),
            bad: bad.len(),
            rows: scored_rows.len(),
            examples: row_examples(table, &bad, Table::target_text),
        });
    }
    if scored_rows.is_empty() {
        let why = if (0..table.len()).any(|row| table.kind(row) == RowKind::History) {
            "every row has a rank above 1 (send each (src, query) pair's newest event with rank 1)"
        } else {
            "no row could be read"
        };
        return Err(FitDataError::NothingToTrainOn(why));
    }
    let mut data = Dataset::new(schema.width());
    let mut srcs = Vec::with_capacity(scored_rows.len());
    let mut next_label = labels.iter();
    // Long-window features: the windows replayed in time order through an in-process history,
    // each scored with what was remembered before it, as the service would have.
    let history = table
        .has_time
        .then(|| ReplayHistory::for_schema(schema, window_secs))
        .flatten();
    for (batch, scored) in &batches {
        let rows: Vec<Row> = batch
            .iter()
            .map(|&i| Row {
                src: table.src(i),
                query: table.query(i),
            })
            .collect();
        let mut prepared = schema.prepare(&rows);
        if let Some(history) = &history {
            let events: Vec<(&str, &str, f64)> = batch
                .iter()
                .map(|&i| (table.src(i), table.query(i), time_of(table, i)))
                .collect();
            history.step(&mut prepared, &events);
        }
        let features = prepared.features(&rows, scored);
        for (k, &position) in scored.iter().enumerate() {
            let y = *next_label.next().expect("one label per scored row");
            data.push(features.row(k), y);
            srcs.push(table.src(batch[position]).to_string());
        }
    }
    Ok((Labelled { data, srcs }, windowing))
}

/// Groups usable rows by `_time` window and recomputes ranks in each, like the hourly search.
#[allow(clippy::type_complexity)]
fn time_windows(
    table: &Table,
    window_secs: f64,
) -> Result<(Vec<(Vec<usize>, Vec<usize>)>, Windowing), FitDataError> {
    let mut by_window: std::collections::BTreeMap<i64, Vec<(f64, usize)>> = Default::default();
    let mut bad = Vec::new();
    for i in 0..table.len() {
        if !table.feeds_history(i) {
            continue;
        }
        match parse_time(table, i) {
            Some(t) => by_window
                .entry((t / window_secs).floor() as i64)
                .or_default()
                .push((t, i)),
            None => bad.push(i),
        }
    }
    if !bad.is_empty() {
        return Err(FitDataError::BadTimes {
            bad: bad.len(),
            examples: row_examples(table, &bad, Table::time_text),
        });
    }
    let windows = by_window.len();
    let batches = by_window
        .into_values()
        .map(|mut events| {
            events.sort_by(|a, b| {
                b.0.total_cmp(&a.0)
                    .then_with(|| table.src(a.1).cmp(table.src(b.1)))
                    .then_with(|| table.query(a.1).cmp(table.query(b.1)))
            });
            let mut seen: HashMap<(&str, &str), u32> = HashMap::new();
            let mut rows = Vec::with_capacity(events.len());
            let mut scored = Vec::new();
            for (_, i) in events {
                let rank = seen.entry((table.src(i), table.query(i))).or_insert(0);
                *rank += 1;
                if *rank < 10 {
                    if *rank == 1 {
                        scored.push(rows.len());
                    }
                    rows.push(i);
                }
            }
            (rows, scored)
        })
        .collect();
    Ok((
        batches,
        Windowing::ByTime {
            seconds: window_secs,
            windows,
        },
    ))
}

/// "row 2: `yes`; row 4: empty; ..." for at most five rows (1-based data row numbers).
fn row_examples<'t>(
    table: &'t Table<'t>,
    rows: &[usize],
    cell: fn(&'t Table<'t>, usize) -> &'t str,
) -> String {
    let mut out: Vec<String> = rows
        .iter()
        .take(5)
        .map(|&r| {
            let text = cell(table, r);
            if text.is_empty() {
                format!("row {}: empty", r + 1)
            } else {
                format!(
                    "row {}: `{}`",
                    r + 1,
                    text.chars().take(20).collect::<String>().escape_debug()
                )
            }
        })
        .collect();
    if rows.len() > 5 {
        out.push("...".into());
    }
    out.join("; ")
}

/// A row's `_time` as Unix seconds, if it is a finite number.
fn parse_time(table: &Table, row: usize) -> Option<f64> {
    crate::dsdl::envelope::unquote(table.time_text(row))
        .parse::<f64>()
        .ok()
        .filter(|t| t.is_finite())
}

/// The `_time` of a row [`time_windows`] accepted.
fn time_of(table: &Table, row: usize) -> f64 {
    parse_time(table, row).expect("time_windows keeps only rows with a numeric _time")
}
