//! The CSV inside a DSDL envelope, parsed into rows of (src, query, rank) text.
//!
//! Every cell is text exactly as sent (no `NA`/`null` guessing); ranks are parsed leniently.
//! A row that cannot be used (wrong number of fields, unparsable rank) is kept in place, so the
//! results still have one row per input row, and is reported instead of failing the request.

use std::fmt;
use std::mem::MaybeUninit;

use super::csvscan::{EscapedScanner, Field, Records, ScanStop, Scanner};
use crate::features::Row;

/// Why a row was not scored.
#[derive(Debug, Clone, PartialEq)]
pub enum SkipReason {
    /// The row has a different number of fields than the header.
    Ragged { fields: usize, expected: usize },
    /// The rank cell is not a number.
    BadRank(String),
    /// The record itself cannot be read (e.g. text after a closing quote).
    Malformed(&'static str),
}

impl SkipReason {
    /// Whether the row is still a real event for the per-source history: a row with an unreadable
    /// rank is (its src and query are fine); a row whose fields are off is not.
    pub fn feeds_history(&self) -> bool {
        matches!(self, SkipReason::BadRank(_))
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Ragged { fields, expected } if fields > expected => {
                write!(f, "{fields} fields where the header has {expected} (quote cells that contain commas)")
            }
            SkipReason::Ragged { fields, expected } => {
                write!(f, "{fields} fields where the header has {expected}")
            }
            SkipReason::BadRank(text) => {
                write!(f, "rank `{}` is not a number", crate::util::clip(text, 40))
            }
            SkipReason::Malformed(what) => f.write_str(what),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// The newest event of its (src, query) pair: scored.
    Rank1,
    /// An older event: feeds the per-source history only.
    History,
    /// Not scored, for the reason [`Table::skip_reason`] gives; reported in the response message.
    Skipped,
}

/// Where a cell's text is: `start..end` of the request's CSV or, with [`UNESCAPED`] set in
/// `end`, of the table's own buffer (quoted cells with doubled quotes). Eight bytes, so a
/// 100,000-row table stays small.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    end: u32,
}

/// The flag in [`Span::end`] of a span into the table's own buffer.
const UNESCAPED: u32 = 1 << 31;

impl Span {
    fn unescaped(self) -> bool {
        self.end & UNESCAPED != 0
    }

    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..(self.end & !UNESCAPED) as usize
    }
}

/// Parsed request rows, borrowing the cell text from the request's CSV (no copy per cell).
pub struct Table<'a> {
    text: &'a str,
    unescaped: String,
    /// `slots` spans per row: src, query, rank, then the label and `_time` for a fit.
    cells: Vec<Span>,
    slots: usize,
    kinds: Vec<RowKind>,
    /// (row, why) of every skipped row, in row order.
    skips: Vec<(usize, SkipReason)>,
    /// Whether the CSV had a `rank` column (without one, every row is rank 1).
    pub has_rank: bool,
    /// Whether the label column a fit asked for was read (see [`Table::parse_with_target`]).
    pub has_target: bool,
    /// Whether the CSV had a `_time` column (read only for a fit or when asked to keep it).
    pub has_time: bool,
    /// Whether every cell that stands in the CSV (not in `unescaped`) is unquoted text without
    /// `"`, `\\` or control characters (a table read JSON-escaped): results can copy those cells
    /// without looking at them.
    plain_cells: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TableError {
    // Splunk's client sends an empty DataFrame (a search with no results) as `"\n"`: the cause
    // to name is the search, not the CSV's layout.
    #[error("no events were sent (the `data` CSV is empty, not even a header row): the search before `| apply` or `| fit` returned no results; check its time range and filters")]
    Empty,
    #[error("the CSV has no `{missing}` column (its columns are: {found}); send the fields src, query and rank, e.g. `| table src,query,rank,_time` before `| apply`")]
    MissingColumn {
        missing: &'static str,
        found: String,
    },
    #[error("the CSV has no `{target}` column to train on (its columns are: {found}); name the 0/1 label field before `from`, e.g. `| fit MLTKContainer algo=dnsexfil {target} from src query rank into app:NAME`")]
    MissingTarget { target: String, found: String },
    #[error("the `data` CSV is malformed at row {row}: {detail}")]
    Malformed { row: usize, detail: String },
    /// `rows`: counted to the end of the text (or to where it cannot be read), so the refusal
    /// says by how much.
    #[error("the request has {rows} rows, more than the {limit} allowed; send fewer rows per request (MLTK's max_inputs) or raise --max-rows (DNSEXFIL_MAX_ROWS)")]
    TooManyRows { limit: usize, rows: usize },
}

const SRC: usize = 0;
const QUERY: usize = 1;
const RANK: usize = 2;
const TARGET: usize = 3;
const TIME: usize = 4;

/// CSV texts at least this large are read on two cores.
const PARALLEL_MIN_BYTES: usize = 256 << 10;

/// Where the cells the table keeps are, and the limits rows are checked against.
struct Layout {
    columns: [Option<usize>; 5],
    header_len: usize,
    max_rows: usize,
}

/// Why reading a table stopped.
enum ReadError {
    Table(TableError),
    /// JSON-escaped text that [`EscapedScanner`] cannot read.
    NeedsUnescaping,
}

impl From<TableError> for ReadError {
    fn from(e: TableError) -> Self {
        ReadError::Table(e)
    }
}

impl ReadError {
    /// Why a reader stopped at data row `row` (0 for the header).
    fn stopped_at(row: usize) -> impl Fn(ScanStop) -> ReadError {
        move |stop| match stop {
            ScanStop::Unreadable(detail) => ReadError::Table(TableError::Malformed { row, detail }),
            ScanStop::NeedsUnescaping => ReadError::NeedsUnescaping,
        }
    }
}

/// Rows read from one stretch of the CSV (spans into the CSV or into `unescaped`; skipped rows
/// numbered from the part's first row).
struct Part {
    unescaped: String,
    cells: Vec<Span>,
    kinds: Vec<RowKind>,
    skips: Vec<(usize, SkipReason)>,
}

impl Layout {
    /// Spans kept per row: src, query and rank, and the label and `_time` when a fit reads them.
    fn slots(&self) -> usize {
        if self.columns[TARGET].is_some() || self.columns[TIME].is_some() {
            5
        } else {
            3
        }
    }

    /// Reads records from `scanner` to the end of the text, or until the record that ends at or
    /// after `end`; says whether the last record read ended exactly at `end`. Row numbers in
    /// errors count from the scanner's position: only a read from the first data row reports
    /// its errors (a split read that fails is read again whole).
    /// `room_for_bytes`: how much CSV text the part's lists get room for (the first part of a
    /// split read makes room for the second, which is appended to it).
    fn read<'a, R: Records<'a>>(
        &self,
        mut scanner: R,
        end: Option<usize>,
        room_for_bytes: usize,
    ) -> Result<(Part, bool), ReadError> {
        let text = scanner.text();
        // Rarely less than 32 bytes a row; untouched capacity costs no memory.
        let expected_rows = (room_for_bytes / 32).min(self.max_rows);
        let slots = self.slots();
        let mut part = Part {
            unescaped: String::new(),
            cells: Vec::with_capacity(expected_rows * slots),
            kinds: Vec::with_capacity(expected_rows),
            skips: Vec::new(),
        };
        let mut fields: Vec<Field> = Vec::new();
        let mut row_number = 0;
        loop {
            if let Some(end) = end {
                if scanner.position() >= end {
                    return Ok((part, scanner.position() == end));
                }
            }
            row_number += 1;
            let problem = match scanner
                .next_record(&mut fields)
                .map_err(ReadError::stopped_at(row_number))?
            {
                None => break,
                Some(problem) => problem,
            };
            if row_number > self.max_rows {
                // The rest is only counted (no cell kept): a refusal says how many rows came.
                // Text this reader cannot read is counted by the general reader.
                let mut rows = row_number;
                loop {
                    match scanner.next_record(&mut fields) {
                        Ok(Some(_)) => rows += 1,
                        Err(ScanStop::NeedsUnescaping) => return Err(ReadError::NeedsUnescaping),
                        Ok(None) | Err(ScanStop::Unreadable(_)) => break,
                    }
                }
                return Err(ReadError::Table(TableError::TooManyRows {
                    limit: self.max_rows,
                    rows,
                }));
            }
            let row_cells = part.cells.len();
            for col in &self.columns[..slots] {
                let span = match col.and_then(|c| fields.get(c)) {
                    None => Span::default(),
                    Some(f) if f.escaped => {
                        let start = part.unescaped.len() as u32;
                        R::push_text(f, text, &mut part.unescaped);
                        Span {
                            start,
                            end: part.unescaped.len() as u32 | UNESCAPED,
                        }
                    }
                    Some(f) => Span {
                        start: f.start as u32,
                        end: f.end as u32,
                    },
                };
                part.cells.push(span);
            }
            let kind = if let Some(problem) = problem {
                Err(SkipReason::Malformed(problem))
            } else if fields.len() != self.header_len {
                Err(SkipReason::Ragged {
                    fields: fields.len(),
                    expected: self.header_len,
                })
            } else if self.columns[RANK].is_some() {
                let rank = part.cells[row_cells + RANK];
                let source = if rank.unescaped() {
                    part.unescaped.as_str()
                } else {
                    text
                };
                classify_rank(&source[rank.range()])
            } else {
                Ok(RowKind::Rank1)
            };
            let kind = kind.unwrap_or_else(|reason| {
                part.skips.push((part.kinds.len(), reason));
                RowKind::Skipped
            });
            part.kinds.push(kind);
        }
        Ok((part, end.is_none()))
    }
}

impl<'a> Table<'a> {
    /// Parses a CSV of any number of rows.
    pub fn parse(csv_text: &'a str) -> Result<Table<'a>, TableError> {
        Self::parse_limited(csv_text, usize::MAX)
    }

    /// Parses a CSV, refusing more than `max_rows` data rows before spending memory on them.
    pub fn parse_limited(csv_text: &'a str, max_rows: usize) -> Result<Table<'a>, TableError> {
        Self::parse_with_target(csv_text, max_rows, None)
    }

    /// [`Table::parse_limited`], also keeping the `_time` cells when there is such a column (the
    /// history remembers when each name was queried).
    pub fn parse_limited_keeping_time(
        csv_text: &'a str,
        max_rows: usize,
    ) -> Result<Table<'a>, TableError> {
        Self::parse_plain_in_parts(csv_text, max_rows, None, true, PARALLEL_MIN_BYTES)
    }

    /// Like [`Table::parse_limited`], also keeping the cells of the label column `target` (for
    /// `/fit`), which must then exist, and of `_time` when there is one.
    pub fn parse_with_target(
        csv_text: &'a str,
        max_rows: usize,
        target: Option<&str>,
    ) -> Result<Table<'a>, TableError> {
        Self::parse_plain_in_parts(csv_text, max_rows, target, false, PARALLEL_MIN_BYTES)
    }

    fn parse_plain_in_parts(
        csv_text: &'a str,
        max_rows: usize,
        target: Option<&str>,
        keep_time: bool,
        parallel_min_bytes: usize,
    ) -> Result<Table<'a>, TableError> {
        match Self::parse_in_parts::<Scanner>(
            csv_text,
            max_rows,
            target,
            keep_time,
            parallel_min_bytes,
        ) {
            Ok(table) => Ok(table),
            Err(ReadError::Table(e)) => Err(e),
            Err(ReadError::NeedsUnescaping) => unreachable!("plain CSV text needs no unescaping"),
        }
    }

    /// Parses CSV text that is still JSON-escaped, as it stands between the quotes of a JSON
    /// string, without unescaping it first: `Ok(None)` when it must be unescaped first (quoted
    /// cells, control characters; see [`EscapedScanner`]), else the table
    /// [`Table::parse_limited`] makes of the unescaped text. Cells are ranges of `escaped`, but
    /// for the cells with escapes, which are unescaped into the table's own buffer.
    pub fn parse_json_escaped(
        escaped: &'a str,
        max_rows: usize,
    ) -> Result<Option<Table<'a>>, TableError> {
        Self::parse_json_escaped_in_parts(escaped, max_rows, false, PARALLEL_MIN_BYTES)
    }

    /// [`Table::parse_json_escaped`], also keeping the `_time` cells when there is such a column.
    pub fn parse_json_escaped_keeping_time(
        escaped: &'a str,
        max_rows: usize,
    ) -> Result<Option<Table<'a>>, TableError> {
        Self::parse_json_escaped_in_parts(escaped, max_rows, true, PARALLEL_MIN_BYTES)
    }

    fn parse_json_escaped_in_parts(
        escaped: &'a str,
        max_rows: usize,
        keep_time: bool,
        parallel_min_bytes: usize,
    ) -> Result<Option<Table<'a>>, TableError> {
        match Self::parse_in_parts::<EscapedScanner>(
            escaped,
            max_rows,
            None,
            keep_time,
            parallel_min_bytes,
        ) {
            Ok(table) => Ok(Some(table)),
            Err(ReadError::Table(e)) => Err(e),
            Err(ReadError::NeedsUnescaping) => Ok(None),
        }
    }

    /// Reads the table from `csv_text` with reader `R`, reading texts of `parallel_min_bytes` or
    /// more in two halves at once.
    fn parse_in_parts<R: Records<'a>>(
        csv_text: &'a str,
        max_rows: usize,
        target: Option<&str>,
        keep_time: bool,
        parallel_min_bytes: usize,
    ) -> Result<Table<'a>, ReadError> {
        if csv_text.len() >= UNESCAPED as usize {
            return Err(ReadError::Table(TableError::Malformed {
                row: 0,
                detail: "the CSV is larger than 2 GiB".into(),
            }));
        }
        let mut scanner = R::starting_at(csv_text, 0);
        let mut fields: Vec<Field> = Vec::new();
        match scanner
            .next_record(&mut fields)
            .map_err(ReadError::stopped_at(0))?
        {
            None => return Err(ReadError::Table(TableError::Empty)),
            Some(Some(problem)) => {
                return Err(ReadError::Table(TableError::Malformed {
                    row: 0,
                    detail: format!("header: {problem}"),
                }))
            }
            Some(None) => {}
        }
        // Saved from a spreadsheet, a CSV may start with a byte-order mark: not part of a name.
        let header: Vec<String> = fields
            .iter()
            .map(|f| {
                let text = R::field_text(f, csv_text);
                text.trim()
                    .trim_start_matches('\u{feff}')
                    .trim()
                    .to_string()
            })
            .collect();
        if header.iter().any(|h| h.contains('\r')) {
            return Err(ReadError::Table(TableError::Malformed {
                row: 0,
                detail: "header: lines end with a lone `\\r`; end each line with `\\n` or `\\r\\n`"
                    .into(),
            }));
        }
        let position = |name: &str| header.iter().position(|h| h == name);
        let found = || crate::util::clip(&header.join(", "), 200);
        let missing = |missing: &'static str| TableError::MissingColumn {
            missing,
            found: found(),
        };
        let src_col = position("src").ok_or_else(|| missing("src"))?;
        let query_col = position("query").ok_or_else(|| missing("query"))?;
        let rank_col = position("rank");
        let target_col = match target {
            None => None,
            Some(t) => Some(position(t).ok_or_else(|| TableError::MissingTarget {
                target: t.to_string(),
                found: found(),
            })?),
        };
        let time_col = (target.is_some() || keep_time)
            .then(|| position("_time"))
            .flatten();
        let layout = Layout {
            columns: [
                Some(src_col),
                Some(query_col),
                rank_col,
                target_col,
                time_col,
            ],
            header_len: header.len(),
            max_rows,
        };
        let body_start = scanner.position();
        let mut table = Table {
            text: csv_text,
            unescaped: String::new(),
            cells: Vec::new(),
            slots: layout.slots(),
            kinds: Vec::new(),
            skips: Vec::new(),
            plain_cells: R::PLAIN_CELLS,
            has_rank: rank_col.is_some(),
            has_target: target_col.is_some(),
            has_time: time_col.is_some(),
        };
        // A large CSV is read in two halves at once: the second from the first line end after
        // the middle. That line end may be inside a quoted cell, so the halves are only used when
        // the first half's records end exactly there and neither half met an error; otherwise
        // the text is read again from the start, as one part.
        let body_len = csv_text.len() - body_start;
        let middle = body_start + body_len / 2;
        let split = R::line_start_after(csv_text, middle);
        let may_split =
            csv_text.len() >= parallel_min_bytes && crate::util::pool::may_wait_for_pool();
        if let Some(split) = split.filter(|_| may_split) {
            let (first, second) = rayon::join(
                || layout.read(R::starting_at(csv_text, body_start), Some(split), body_len),
                || {
                    layout.read(
                        R::starting_at(csv_text, split),
                        None,
                        csv_text.len() - split,
                    )
                },
            );
            if let (Ok((first, true)), Ok((second, _))) = (first, second) {
                let rows = first.kinds.len() + second.kinds.len();
                if rows > max_rows {
                    return Err(TableError::TooManyRows {
                        limit: max_rows,
                        rows,
                    }
                    .into());
                }
                table.append(first);
                table.append(second);
                return Ok(table);
            }
        }
        let (part, _) = layout.read(R::starting_at(csv_text, body_start), None, body_len)?;
        table.append(part);
        Ok(table)
    }

    fn append(&mut self, part: Part) {
        let rows_before = self.kinds.len();
        self.skips.extend(
            part.skips
                .into_iter()
                .map(|(row, reason)| (rows_before + row, reason)),
        );
        if self.kinds.is_empty() {
            self.unescaped = part.unescaped;
            self.cells = part.cells;
            self.kinds = part.kinds;
            return;
        }
        let offset = self.unescaped.len() as u32;
        self.unescaped.push_str(&part.unescaped);
        self.cells.extend(part.cells.into_iter().map(|mut span| {
            if span.unescaped() {
                span.start += offset;
                span.end += offset;
            }
            span
        }));
        self.kinds.extend(part.kinds);
    }

    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// Whether every cell that [`Table::leading_cells_text`] can return is unquoted text without
    /// `"`, `\\` or control characters, so it needs neither CSV quotes nor JSON escapes.
    pub fn cells_are_plain(&self) -> bool {
        self.plain_cells
    }

    /// What the row is for: scored, history only, or skipped.
    pub fn kind(&self, row: usize) -> RowKind {
        self.kinds[row]
    }

    /// Why the row was skipped (`None` for a usable row).
    pub fn skip_reason(&self, row: usize) -> Option<&SkipReason> {
        if self.kinds[row] != RowKind::Skipped {
            return None;
        }
        let at = self.skips.binary_search_by_key(&row, |(r, _)| *r).ok()?;
        Some(&self.skips[at].1)
    }

    /// The spans of a row's kept cells.
    fn spans(&self, row: usize) -> &[Span] {
        &self.cells[row * self.slots..(row + 1) * self.slots]
    }

    fn cell(&self, row: usize, slot: usize) -> &str {
        // Slots a table does not keep (the label and `_time` when not fitting) are empty.
        match self.spans(row).get(slot) {
            Some(&span) => self.text_of(span),
            None => "",
        }
    }

    fn text_of(&self, span: Span) -> &str {
        let source = if span.unescaped() {
            self.unescaped.as_str()
        } else {
            self.text
        };
        &source[span.range()]
    }

    pub fn src(&self, row: usize) -> &str {
        self.cell(row, SRC)
    }

    pub fn query(&self, row: usize) -> &str {
        self.cell(row, QUERY)
    }

    /// The rank cell as sent (empty when there is no rank column).
    pub fn rank_text(&self, row: usize) -> &str {
        self.cell(row, RANK)
    }

    /// The row's `src,query,rank` cells (`src,query` without a rank column) as one stretch of
    /// the CSV, when they stand there side by side in that order, unquoted: results can then
    /// copy them at once.
    pub fn leading_cells_text(&self, row: usize) -> Option<&str> {
        let cells = self.spans(row);
        let last = if self.has_rank { RANK } else { QUERY };
        if cells[SRC..=last].iter().any(|c| c.unescaped()) {
            return None;
        }
        let side_by_side = (SRC..last).all(|slot| cells[slot].end + 1 == cells[slot + 1].start);
        side_by_side.then(|| &self.text[cells[SRC].start as usize..cells[last].end as usize])
    }

    /// The label cell as sent (empty when no target column was read).
    pub fn target_text(&self, row: usize) -> &str {
        self.cell(row, TARGET)
    }

    /// The `_time` cell as sent (empty when no time column was read).
    pub fn time_text(&self, row: usize) -> &str {
        self.cell(row, TIME)
    }

    /// The rows that feed the features (all but unreadable ones) and, among them, the positions of
    /// the rows to score. Returns (feature rows, index into feature rows of each scored row,
    /// table row of each scored row). A large table's halves are listed on both cores, each
    /// straight into its part of the list.
    pub fn feature_rows(&self) -> (Vec<Row<'_>>, Vec<usize>, Vec<usize>) {
        let n = self.len();
        let half = if crate::util::pool::worth_splitting(n / 2) {
            n / 2
        } else {
            n
        };
        let first_count = half - self.rows_not_feeding_history(0..half);
        let total = first_count + (n - half) - self.rows_not_feeding_history(half..n);
        let mut rows: Vec<Row<'_>> = Vec::with_capacity(total);
        let (first_out, second_out) = rows.spare_capacity_mut()[..total].split_at_mut(first_count);
        let ((mut scored, mut scored_table_rows), (scored_2, scored_table_rows_2)) = if half < n {
            rayon::join(
                || self.list_feature_rows(0..half, first_out, 0),
                || self.list_feature_rows(half..n, second_out, first_count),
            )
        } else {
            let first = self.list_feature_rows(0..n, first_out, 0);
            (first, (Vec::new(), Vec::new()))
        };
        // SAFETY: each part wrote every row of its slice (`list_feature_rows` asserts it).
        unsafe { rows.set_len(total) };
        scored.extend(scored_2);
        scored_table_rows.extend(scored_table_rows_2);
        (rows, scored, scored_table_rows)
    }

    /// How many rows of `range` do not feed the history (only some skipped rows).
    fn rows_not_feeding_history(&self, range: std::ops::Range<usize>) -> usize {
        self.skips
            .iter()
            .filter(|(row, reason)| range.contains(row) && !reason.feeds_history())
            .count()
    }

    /// Writes the feature rows of table rows `range` into `out` (exactly its length), the first
    /// being feature row `first_feature_row`; returns the feature-row and table-row indices of
    /// the rows to score among them.
    fn list_feature_rows<'t>(
        &'t self,
        range: std::ops::Range<usize>,
        out: &mut [MaybeUninit<Row<'t>>],
        first_feature_row: usize,
    ) -> (Vec<usize>, Vec<usize>) {
        let mut scored = Vec::new();
        let mut scored_table_rows = Vec::new();
        let mut written = 0;
        let spans =
            self.cells[range.start * self.slots..range.end * self.slots].chunks_exact(self.slots);
        for ((i, &kind), spans) in range.clone().zip(&self.kinds[range]).zip(spans) {
            if !self.feeds_history(i) {
                continue;
            }
            if kind == RowKind::Rank1 {
                scored.push(first_feature_row + written);
                scored_table_rows.push(i);
            }
            out[written].write(Row {
                src: self.text_of(spans[SRC]),
                query: self.text_of(spans[QUERY]),
            });
            written += 1;
        }
        assert_eq!(
            written,
            out.len(),
            "every feature row of the range is written"
        );
        (scored, scored_table_rows)
    }

    /// Whether `row` is a DNS event for the per-source history: every row but unreadable ones.
    pub fn feeds_history(&self, row: usize) -> bool {
        self.skip_reason(row).is_none_or(SkipReason::feeds_history)
    }

    /// Skipped rows as (1-based row number, reason).
    pub fn skipped(&self) -> impl Iterator<Item = (usize, &SkipReason)> {
        self.skips.iter().map(|(row, reason)| (row + 1, reason))
    }
}

/// `1`, `1.0`, `"1"` and ` 1 ` are all rank 1; other numbers are history rows.
fn classify_rank(text: &str) -> Result<RowKind, SkipReason> {
    // The ESCU search sends ranks 1 to 9 as one digit: no float parsing for those.
    match text.as_bytes() {
        [b'1'] => return Ok(RowKind::Rank1),
        [b'2'..=b'9'] => return Ok(RowKind::History),
        _ => {}
    }
    let t = text.trim().trim_matches('"').trim();
    match t.parse::<f64>() {
        Ok(r) if r == 1.0 => Ok(RowKind::Rank1),
        Ok(r) if r.is_finite() => Ok(RowKind::History),
        _ => Err(SkipReason::BadRank(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_text_as_sent_and_ranks_are_lenient() {
        let t = Table::parse(
            "rank,src,query,_time\n1,NA,null,5\n1.0,,None,6\n2,a,\"x,y\",7\nabc,a,b,8\n",
        )
        .unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!((t.src(0), t.query(0)), ("NA", "null"));
        assert_eq!((t.src(1), t.query(1)), ("", "None"));
        assert_eq!(t.query(2), "x,y");
        assert_eq!(t.kind(0), RowKind::Rank1);
        assert_eq!(t.kind(1), RowKind::Rank1);
        assert_eq!(t.kind(2), RowKind::History);
        assert_eq!(t.kind(3), RowKind::Skipped);
        assert_eq!(t.skip_reason(3), Some(&SkipReason::BadRank("abc".into())));
        assert_eq!(t.skip_reason(2), None);
    }

    #[test]
    fn ragged_rows_are_kept_in_place_and_skipped() {
        let t = Table::parse("src,query,rank\na,b.c,1\na,b,c,1\nz\n").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.skip_reason(1),
            Some(&SkipReason::Ragged {
                fields: 4,
                expected: 3
            })
        );
        assert_eq!(
            t.skip_reason(2),
            Some(&SkipReason::Ragged {
                fields: 1,
                expected: 3
            })
        );
        assert_eq!((t.src(2), t.query(2)), ("z", ""));
        let (rows, scored, table_rows) = t.feature_rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(scored, vec![0]);
        assert_eq!(table_rows, vec![0]);
    }

    #[test]
    fn time_cells_are_kept_only_when_asked_both_ways_of_reading() {
        let csv = "_time,src,query,rank\n1735862391,a,x.y.com,1\n1735862392.5,b,z.y.com,1\n";
        let escaped = csv.replace('\n', "\\n");
        for keep in [false, true] {
            let plain = Table::parse_plain_in_parts(csv, 10, None, keep, 0).unwrap();
            let from_json = Table::parse_json_escaped_in_parts(&escaped, 10, keep, 0)
                .unwrap()
                .unwrap();
            for t in [&plain, &from_json] {
                assert_eq!(t.has_time, keep);
                let times: Vec<&str> = (0..t.len()).map(|i| t.time_text(i)).collect();
                let expected = if keep {
                    ["1735862391", "1735862392.5"]
                } else {
                    ["", ""]
                };
                assert_eq!(times, expected);
                assert_eq!(t.query(1), "z.y.com");
            }
        }
        let kept = Table::parse_limited_keeping_time(csv, 10).unwrap();
        assert_eq!(kept.time_text(0), "1735862391");
        let kept = Table::parse_json_escaped_keeping_time(&escaped, 10)
            .unwrap()
            .unwrap();
        assert_eq!(kept.time_text(1), "1735862392.5");
    }

    #[test]
    fn rows_with_an_unreadable_rank_still_count_as_history() {
        let t = Table::parse("src,query,rank\na,x.y.z,1\na,q.y.z,abc\n").unwrap();
        let (rows, scored, table_rows) = t.feature_rows();
        assert_eq!(rows.len(), 2);
        assert_eq!((scored, table_rows), (vec![0], vec![0]));
    }

    #[test]
    fn feature_rows_of_a_large_table_are_listed_as_row_by_row() {
        // Large enough to be listed in two halves, with ragged rows (not history) and bad ranks
        // (history, not scored) in both.
        let mut rng = crate::util::rng::SplitMix64::new(5);
        let mut csv = String::from("src,query,rank\n");
        for i in 0..(3 * crate::features::PARALLEL_MIN_ROWS) {
            match rng.below(20) {
                0 => csv.push_str(&format!("h{i},ragged.example\n")),
                1 => csv.push_str(&format!("h{i},bad{i}.example,x\n")),
                _ => csv.push_str(&format!("h{},q{i}.example,{}\n", i % 9, 1 + rng.below(3))),
            }
        }
        let t = Table::parse(&csv).unwrap();
        assert_reads_like_the_csv_crate(&csv, &t, None, "large table");
        let (rows, scored, table_rows) = t.feature_rows();
        let feeding: Vec<usize> = (0..t.len()).filter(|&i| t.feeds_history(i)).collect();
        assert!(feeding.len() < t.len() && t.skipped().count() > feeding.len() / 30);
        assert_eq!(rows.len(), feeding.len());
        for (row, &i) in rows.iter().zip(&feeding) {
            assert_eq!((row.src, row.query), (t.src(i), t.query(i)));
        }
        let expected: Vec<usize> = (0..t.len())
            .filter(|&i| t.kind(i) == RowKind::Rank1)
            .collect();
        assert_eq!(table_rows, expected);
        let expected: Vec<usize> = expected
            .iter()
            .map(|i| feeding.binary_search(i).unwrap())
            .collect();
        assert_eq!(scored, expected);
    }

    #[test]
    fn the_row_limit_is_checked_while_parsing() {
        let e = Table::parse_limited("src,query\na,b\nc,d\n", 1).err();
        assert_eq!(e, Some(TableError::TooManyRows { limit: 1, rows: 2 }));
        let e = Table::parse_limited("src,query\na,b\nc,d\ne,f\n", 1).err();
        assert_eq!(e, Some(TableError::TooManyRows { limit: 1, rows: 3 }));
        // The same count when read in two halves, and from JSON-escaped text (also when its
        // rows past the limit need unescaping: counted by the general reader).
        let mut csv = String::from("src,query\n");
        for i in 0..40 {
            csv.push_str(&format!("h{i},q{i}.example\n"));
        }
        for (max_rows, rows) in [(10, 40), (30, 40)] {
            let e = Table::parse_plain_in_parts(&csv, max_rows, None, false, 0).err();
            assert_eq!(
                e,
                Some(TableError::TooManyRows {
                    limit: max_rows,
                    rows
                })
            );
            let escaped = serde_json::to_string(&csv).unwrap();
            let e = Table::parse_json_escaped_in_parts(
                &escaped[1..escaped.len() - 1],
                max_rows,
                false,
                0,
            )
            .err();
            assert_eq!(
                e,
                Some(TableError::TooManyRows {
                    limit: max_rows,
                    rows
                })
            );
        }
        let escaped = serde_json::to_string(&format!("{csv}\"quoted\",x\n")).unwrap();
        assert_eq!(
            Table::parse_json_escaped_in_parts(&escaped[1..escaped.len() - 1], 10, false, 0).err(),
            None,
            "left to the general reader"
        );
        assert_eq!(
            Table::parse_limited("src,query\na,b\n", 1).unwrap().len(),
            1
        );
    }

    #[test]
    fn a_record_with_text_after_a_quote_is_skipped_alone() {
        let t = Table::parse("src,query,rank\n\"a\"x,b.c,1\nh,d.e,1\n").unwrap();
        assert_eq!(t.len(), 2);
        assert!(matches!(t.skip_reason(0), Some(SkipReason::Malformed(_))));
        assert_eq!(t.kind(1), RowKind::Rank1);
    }

    #[test]
    fn a_malformed_record_ends_at_its_own_end_even_past_a_quoted_line_end() {
        // A later cell of the bad record holds line ends: its rest is not read as records, so
        // the good rows after it keep their own positions (Splunk joins results by position).
        for csv in [
            "src,query,rank\n\"h\"x,\"a\nb.com\",1\nc,d.e,1\n",
            "src,query,rank\n\"h\"x,\"a\nb\n\"\"c\"\".com\",1\r\nc,d.e,1\n",
            // A quote inside an unquoted cell is text, as in a record read whole.
            "src,query,rank\n\"h\"x,a\"b,\"c\nd\",1\nc,d.e,1\n",
        ] {
            let t = Table::parse(csv).unwrap();
            assert_eq!(t.len(), 2, "{csv:?}");
            assert!(matches!(t.skip_reason(0), Some(SkipReason::Malformed(_))));
            assert_eq!(
                (t.src(1), t.query(1), t.kind(1)),
                ("c", "d.e", RowKind::Rank1)
            );
        }
        let e = Table::parse("src,query,rank\n\"h\"x,\"never closed\nc,d.e,1\n").err();
        assert!(e.unwrap().to_string().contains("never closed"));
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_name_and_lone_cr_line_ends_are_named() {
        let t = Table::parse("\u{feff}src,query,rank\na,www.google.com,1\n").unwrap();
        assert_eq!((t.len(), t.src(0), t.kind(0)), (1, "a", RowKind::Rank1));
        let e = Table::parse("src,query,rank\ra,b.com,1\rc,d.com,1\r")
            .err()
            .unwrap();
        assert!(e.to_string().contains("lone `\\r`"), "{e}");
    }

    #[test]
    fn missing_rank_column_means_every_row_is_rank_1() {
        let t = Table::parse("query,src\nx.y.z,h\n").unwrap();
        assert!(!t.has_rank);
        assert_eq!(t.kind(0), RowKind::Rank1);
        assert_eq!(t.rank_text(0), "");
    }

    #[test]
    fn missing_columns_and_empty_data_are_named() {
        assert_eq!(Table::parse("").err(), Some(TableError::Empty));
        let e = Table::parse("src,rank\na,1\n").err().unwrap().to_string();
        assert!(
            e.contains("no `query` column") && e.contains("src, rank"),
            "{e}"
        );
    }

    type RowText = (String, String, String, String, RowKind, Option<SkipReason>);

    fn rows_of(t: &Table) -> Vec<RowText> {
        (0..t.len())
            .map(|i| {
                let cells = (t.src(i), t.query(i), t.rank_text(i), t.target_text(i));
                let (a, b, c, d) = cells;
                let why = t.skip_reason(i).cloned();
                (a.into(), b.into(), c.into(), d.into(), t.kind(i), why)
            })
            .collect()
    }

    /// Asserts `t` holds the records of `csv` as the `csv` crate reads them (an independent
    /// reader): the same records in order, the same cells, and ragged rows with the crate's
    /// field count. `target` names the label column, if any.
    fn assert_reads_like_the_csv_crate(csv: &str, t: &Table, target: Option<&str>, what: &str) {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(csv.as_bytes());
        let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        let records: Vec<Vec<String>> = reader
            .records()
            .map(|r| r.unwrap().iter().map(String::from).collect())
            .collect();
        assert_eq!(t.len(), records.len(), "{what}: records");
        let column = |name: &str| header.iter().position(|h| h == name);
        for (i, record) in records.iter().enumerate() {
            if let Some(SkipReason::Ragged { fields, expected }) = t.skip_reason(i) {
                assert_eq!(
                    (*fields, *expected),
                    (record.len(), header.len()),
                    "{what}: row {}",
                    i + 1
                );
                continue;
            }
            let cell =
                |name: Option<&str>| name.and_then(column).map_or("", |c| record[c].as_str());
            assert_eq!(
                (t.src(i), t.query(i), t.rank_text(i), t.target_text(i)),
                (
                    cell(Some("src")),
                    cell(Some("query")),
                    cell(Some("rank")),
                    cell(target)
                ),
                "{what}: row {}",
                i + 1
            );
        }
    }

    #[test]
    fn reading_in_two_halves_gives_the_same_table_or_falls_back() {
        // Quoted cells with line ends and doubled quotes everywhere, so that some splits land
        // inside a quoted cell; blank lines and bad rows too.
        let mut rng = crate::util::rng::SplitMix64::new(11);
        for case in 0..40 {
            let mut csv = String::from("src,query,rank,y\n");
            for i in 0..(50 + rng.below(400)) {
                match rng.below(8) {
                    0 => csv.push_str(&format!("\"h{i}\",\"a\n\"\"b\"\".c{i}.com\",1,0\n")),
                    1 => csv.push_str(&format!("h{i},\"x\ny\nz.com\",2,1\r\n")),
                    2 => csv.push('\n'),
                    3 => csv.push_str(&format!("h{i},bad{i}.com,abc,0\n")),
                    4 => csv.push_str(&format!("h{i},ragged\n")),
                    _ => csv.push_str(&format!("h{},q{i}.example.com,{},0\n", i % 7, 1 + i % 3)),
                }
            }
            if case % 5 == 0 {
                csv.push_str("tail,\"no line end\",1,1");
            }
            let whole = Table::parse_plain_in_parts(&csv, usize::MAX, Some("y"), false, usize::MAX)
                .unwrap();
            let halves =
                Table::parse_plain_in_parts(&csv, usize::MAX, Some("y"), false, 0).unwrap();
            assert_eq!(rows_of(&halves), rows_of(&whole), "case {case}");
            assert_reads_like_the_csv_crate(&csv, &whole, Some("y"), &format!("case {case}"));
            let n = whole.len();
            for limit in [n - 1, n] {
                let a = Table::parse_plain_in_parts(&csv, limit, Some("y"), false, usize::MAX)
                    .map(|t| t.len());
                let b =
                    Table::parse_plain_in_parts(&csv, limit, Some("y"), false, 0).map(|t| t.len());
                assert_eq!(a, b, "case {case} limit {limit}");
            }
        }
        let open = "src,query\na,b\nc,\"d\ne,f\ng,h\n";
        assert_eq!(
            Table::parse_plain_in_parts(open, 100, None, false, 0).err(),
            Table::parse_plain_in_parts(open, 100, None, false, usize::MAX).err()
        );
    }

    /// The text of `csv` inside a JSON string, as serde_json (and Splunk) write it.
    fn json_escaped(csv: &str) -> String {
        let quoted = serde_json::to_string(csv).unwrap();
        quoted[1..quoted.len() - 1].to_string()
    }

    /// The text of `csv` inside a JSON string as Python's json.dumps writes it: every character
    /// beyond ASCII as `\uXXXX` (a surrogate pair beyond the BMP).
    fn json_escaped_ascii(csv: &str) -> String {
        let mut out = String::new();
        for c in json_escaped(csv).chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        out
    }

    /// The JSON-escaped results of `t`, every rank-1 row scored 0.5.
    fn results(t: &Table) -> Vec<u8> {
        use crate::dsdl::results::{write_results, JsonEscaped, Predictions};
        let rows: Vec<usize> = (0..t.len())
            .filter(|&r| t.kind(r) == RowKind::Rank1)
            .collect();
        let probabilities = vec![0.5f32; rows.len()];
        let predictions = Predictions {
            rows: &rows,
            probabilities: &probabilities,
            suppressed: None,
        };
        let mut out = JsonEscaped(Vec::new());
        write_results(&mut out, t, "y", predictions, 0.5);
        out.0
    }

    #[test]
    fn json_escaped_csv_reads_as_its_unescaped_text_or_gives_up() {
        let mut rng = crate::util::rng::SplitMix64::new(23);
        // Rows whose cells hold escapes: read, unescaped, wherever they are.
        let escaped_cells = [
            "h,tab\there.com,1\n",
            "h,back\\slash.com,1\n",
            "h,say\"hi\".com,1\n",
            "h\\0,\\202\\190x.t1.example,1\n",
            "h,ctl\u{1}\u{7f}.com,\\\n",
            "h/1,\u{1f600}\u{e9}/.com,2\n",
        ];
        // Rows that must be unescaped before they are split: the escaped reader gives up.
        let needs_unescaping = ["h,\"quoted,cell\",1\n", "h,lone\rcr.com,1\n"];
        for case in 0..90 {
            let mut csv = String::from("src,query,rank\n");
            let special = case % 3 == 0;
            let rows = 20 + rng.below(300);
            let special_at = rng.below(rows);
            for i in 0..rows {
                if special && i == special_at {
                    csv.push_str(needs_unescaping[rng.below(needs_unescaping.len())]);
                }
                if case % 3 == 1 && rng.below(10) == 0 {
                    csv.push_str(escaped_cells[rng.below(escaped_cells.len())]);
                }
                match rng.below(9) {
                    0 => csv.push_str(&format!("h{i},crlf{i}.example.com,1\r\n")),
                    1 => csv.push('\n'),
                    2 => csv.push_str("\r\n"),
                    3 => csv.push_str(&format!("h{i},bad{i}.com,abc\n")),
                    4 => csv.push_str(&format!("h{i},ragged\n")),
                    5 => csv.push_str(&format!("h{i},trailing.com,2,\n")),
                    6 => csv.push_str(&format!("h{i},caf\u{e9}{i}.example,1\n")),
                    7 => csv.push_str(&format!(",,{}\n", 1 + i % 2)),
                    _ => csv.push_str(&format!("h{},q{i}.example.com,{}\n", i % 7, 1 + i % 3)),
                }
            }
            match case % 4 {
                0 => csv.push_str("tail,no.line.end,1"),
                1 => csv.push_str("tail,trailing.comma,"),
                _ => {}
            }
            let escaped = if case % 2 == 0 {
                json_escaped(&csv)
            } else {
                json_escaped_ascii(&csv)
            };
            let plain = Table::parse(&csv).unwrap();
            for parallel_min_bytes in [usize::MAX, 0] {
                let read = Table::parse_json_escaped_in_parts(
                    &escaped,
                    usize::MAX,
                    false,
                    parallel_min_bytes,
                )
                .unwrap();
                match read {
                    None => assert!(special, "case {case} gave up without a reason"),
                    Some(table) => {
                        assert!(!special, "case {case} read a row that needs unescaping");
                        assert_eq!(rows_of(&table), rows_of(&plain), "case {case}");
                        assert_eq!(table.has_rank, plain.has_rank);
                        assert_eq!(results(&table), results(&plain), "case {case}");
                    }
                }
            }
            if !special {
                assert_reads_like_the_csv_crate(&csv, &plain, None, &format!("case {case}"));
                let n = plain.len();
                for limit in [n - 1, n] {
                    let want = Table::parse_limited(&csv, limit).map(|t| t.len());
                    for parallel_min_bytes in [usize::MAX, 0] {
                        let got = Table::parse_json_escaped_in_parts(
                            &escaped,
                            limit,
                            false,
                            parallel_min_bytes,
                        )
                        .map(|t| t.expect("plain rows").len());
                        assert_eq!(got, want, "case {case} limit {limit}");
                    }
                }
            }
        }
        // Escapes that change how the CSV splits, or that JSON does not have, are left to the
        // general way.
        for escaped in [
            "src,query\\na,b\\u002cc\\n",
            "src,query\\na,b\\u000ac\\n",
            "src,query\\na,\\u0022b\\n",
            "src,query\\na,\\\"b\\n",
            "src,query\\na,b\\x\\n",
            "src,query\\na,b\\ud800c\\n",
            "src,query\\na,b\\udc00\\ud800c\\n",
            "src,query\\na,b\\u00g0\\n",
            "src,query\\na,b\\u+0a0\\n",
            "src,query\\na,b\\",
        ] {
            assert!(
                Table::parse_json_escaped_in_parts(escaped, 10, false, usize::MAX)
                    .unwrap()
                    .is_none(),
                "{escaped}"
            );
        }
        let table = Table::parse_json_escaped_in_parts(
            "src,query\\na\\/b,x\\\"\\ud83d\\ude00\\n",
            10,
            false,
            0,
        )
        .unwrap()
        .unwrap();
        assert_eq!((table.src(0), table.query(0)), ("a/b", "x\"\u{1f600}"));
        assert!(table.leading_cells_text(0).is_none());
        // The header is read the same way, and its errors are the plain reader's.
        for csv in ["", "\n", "src,rank\na,1\n", "query\nx\n"] {
            let want = Table::parse(csv).err();
            let got =
                Table::parse_json_escaped_in_parts(&json_escaped(csv), 10, false, usize::MAX).err();
            assert_eq!(got, want, "{csv:?}");
        }
        // A control character is not allowed in a JSON string: left to serde_json to report.
        assert!(
            Table::parse_json_escaped_in_parts("src,query\\na,b\tc\\n", 10, false, usize::MAX)
                .unwrap()
                .is_none()
        );
        assert!(
            Table::parse_json_escaped_in_parts("\\\"src\\\",query\\na,b", 10, false, 0)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn header_only_is_an_empty_table() {
        let t = Table::parse("src,query,rank,_time\n").unwrap();
        assert!(t.is_empty());
    }
}
