//! The `results` CSV of a DSDL response, in the stock container's column order and number format.

use super::csvscan::{needs_quotes_or_escapes, needs_quotes_or_escapes_besides_commas};
use super::table::Table;

/// Where result text goes: a plain CSV string, or straight into the body of the JSON response
/// (escaped on the way), which saves building the CSV and escaping it in a second pass.
pub trait CsvSink {
    /// Text that needs no escaping (digits, `.`, `-`, `+`, `e`, `,`, letters).
    fn push_plain(&mut self, s: &str);
    /// Any text.
    fn push_text(&mut self, s: &str);
    fn end_row(&mut self);
}

impl CsvSink for String {
    fn push_plain(&mut self, s: &str) {
        self.push_str(s);
    }
    fn push_text(&mut self, s: &str) {
        self.push_str(s);
    }
    fn end_row(&mut self) {
        self.push('\n');
    }
}

/// The contents of a JSON string literal (without its quotes).
pub struct JsonEscaped(pub Vec<u8>);

impl CsvSink for JsonEscaped {
    fn push_plain(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }
    fn push_text(&mut self, s: &str) {
        let bytes = s.as_bytes();
        if !bytes.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
            self.0.extend_from_slice(bytes);
            return;
        }
        for &b in bytes {
            match b {
                b'"' => self.0.extend_from_slice(b"\\\""),
                b'\\' => self.0.extend_from_slice(b"\\\\"),
                b'\n' => self.0.extend_from_slice(b"\\n"),
                b'\r' => self.0.extend_from_slice(b"\\r"),
                b'\t' => self.0.extend_from_slice(b"\\t"),
                c if c < 0x20 => self.0.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
                c => self.0.push(c),
            }
        }
    }
    fn end_row(&mut self) {
        self.0.extend_from_slice(b"\\n");
    }
}

/// What the model said of a table: its scored rows and their probabilities, and what
/// suppresses some of them.
#[derive(Clone, Copy)]
pub struct Predictions<'t> {
    /// The table rows that were scored, in ascending order.
    pub rows: &'t [usize],
    /// The probability of each, in the same order.
    pub probabilities: &'t [f32],
    /// Why a scored table row is suppressed, if it is (allowlist and mutes; its label is then
    /// forced to 0). Asked once per scored row as its result is written, when the row's text is
    /// in cache. `None` when nothing is configured: then there is no `suppressed_by` column.
    pub suppressed: Option<&'t SuppressionCheck<'t>>,
}

/// Why a table row is suppressed, if it is: see [`Predictions::suppressed`].
pub type SuppressionCheck<'t> = dyn Fn(usize) -> Option<&'t str> + Sync + 't;

/// Writes one result row per table row, in order: `src,query,rank,pred_<target>_proba,pred_<target>`
/// (no `rank` column when the request had none). Rows that were not scored get empty predictions.
/// With suppression configured, a last column `suppressed_by` names why a row's label was forced
/// to 0; its probability is kept as scored.
pub fn write_results<S: CsvSink>(
    out: &mut S,
    table: &Table,
    target: &str,
    predictions: Predictions,
    threshold: f32,
) {
    let rows = Rows::new(table, predictions, threshold);
    rows.write_header(out, target);
    rows.write(out, 0..table.len());
}

/// Spare bytes before the results where the response's opening fields go (status, message and
/// the `results` key): the body is then built around the results without copying them.
pub const HEADROOM: usize = 4096;

/// The results CSV as the contents of a JSON string (see [`JsonEscaped`]), after [`HEADROOM`]
/// spare bytes; in two parts when a large table was written on two cores at once.
#[derive(Debug)]
pub struct EscapedResults {
    bytes: Vec<u8>,
    /// The text that follows `bytes` (empty when the results are in one part).
    rest: Vec<u8>,
}

impl EscapedResults {
    /// The escaped text, in one piece.
    #[cfg(test)]
    pub fn text(&self) -> Vec<u8> {
        [&self.bytes[HEADROOM..], &self.rest[..]].concat()
    }

    /// `head`, the results, then `tail`, as the two parts of a response body. The results are
    /// not copied: `head` goes into the headroom when it fits, and a second part is sent as it is
    /// (empty when the results are in one part).
    pub fn wrap(mut self, head: &[u8], tail: &[u8]) -> (bytes::Bytes, bytes::Bytes) {
        if self.rest.is_empty() {
            self.bytes.extend_from_slice(tail);
        } else {
            self.rest.extend_from_slice(tail);
        }
        let first = match HEADROOM.checked_sub(head.len()) {
            Some(start) => {
                self.bytes[start..HEADROOM].copy_from_slice(head);
                bytes::Bytes::from(self.bytes).slice(start..)
            }
            None => {
                let mut first = Vec::with_capacity(head.len() + self.bytes.len() - HEADROOM);
                first.extend_from_slice(head);
                first.extend_from_slice(&self.bytes[HEADROOM..]);
                bytes::Bytes::from(first)
            }
        };
        (first, bytes::Bytes::from(self.rest))
    }
}

/// [`write_results`] into the body of the JSON response; a large table is written on all cores,
/// in parts that are sent one after the other, so the text is the same.
pub fn json_results(
    table: &Table,
    target: &str,
    predictions: Predictions,
    threshold: f32,
    capacity: usize,
) -> EscapedResults {
    let rows = Rows::new(table, predictions, threshold);
    let mut bytes = Vec::with_capacity(HEADROOM + capacity + 2);
    bytes.resize(HEADROOM, 0);
    let mut out = JsonEscaped(bytes);
    rows.write_header(&mut out, target);
    let n = table.len();
    // Each half at least the parallel size.
    if !crate::util::pool::worth_splitting(n / 2) {
        rows.write(&mut out, 0..n);
        return EscapedResults {
            bytes: out.0,
            rest: Vec::new(),
        };
    }
    let half = n / 2;
    let mut second = JsonEscaped(Vec::with_capacity(capacity / 2 + 2));
    rayon::join(
        || rows.write(&mut out, 0..half),
        || rows.write(&mut second, half..n),
    );
    EscapedResults {
        bytes: out.0,
        rest: second.0,
    }
}

/// What every result row needs, shared by the parts of a table written in parallel.
struct Rows<'t, 'a, 'p> {
    table: &'t Table<'a>,
    predictions: Predictions<'p>,
    threshold: f32,
    zero: &'static str,
    one: &'static str,
}

impl<'t, 'a, 'p> Rows<'t, 'a, 'p> {
    fn new(table: &'t Table<'a>, predictions: Predictions<'p>, threshold: f32) -> Self {
        debug_assert_eq!(predictions.rows.len(), predictions.probabilities.len());
        debug_assert!(predictions.rows.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(predictions.rows.last().is_none_or(|&r| r < table.len()));
        // pandas prints labels as 0/1 when every row has one, and 0.0/1.0 when a column holds a
        // missing value; Splunk reads both, we keep the stock text.
        let all_scored = predictions.rows.len() == table.len();
        let (zero, one) = if all_scored {
            ("0", "1")
        } else {
            ("0.0", "1.0")
        };
        Self {
            table,
            predictions,
            threshold,
            zero,
            one,
        }
    }

    fn write_header<S: CsvSink>(&self, out: &mut S, target: &str) {
        out.push_plain("src,query,");
        if self.table.has_rank {
            out.push_plain("rank,");
        }
        // The target is a validated name; quoted as needed all the same, so a header cell can
        // never spill into another column or row.
        let mut quoted = String::new();
        push_cell(out, &format!("pred_{target}_proba"), &mut quoted);
        out.push_plain(",");
        push_cell(out, &format!("pred_{target}"), &mut quoted);
        if self.predictions.suppressed.is_some() {
            out.push_plain(",suppressed_by");
        }
        out.end_row();
    }

    fn write<S: CsvSink>(&self, out: &mut S, range: std::ops::Range<usize>) {
        let Self {
            table,
            predictions,
            threshold,
            zero,
            one,
        } = *self;
        let mut number = PythonFloat::new();
        let mut quoted = String::new();
        let plain_cells = table.cells_are_plain();
        // The next scored row at or after the range's start, and its position in the predictions.
        let mut next_scored = predictions.rows.partition_point(|&row| row < range.start);
        for i in range {
            // Usually the input cells can be copied as they stand, in one piece.
            match table
                .leading_cells_text(i)
                .filter(|text| plain_cells || !needs_quotes_or_escapes_besides_commas(text))
            {
                Some(text) => {
                    out.push_plain(text);
                    out.push_plain(",");
                }
                None => {
                    push_cell(out, table.src(i), &mut quoted);
                    out.push_plain(",");
                    push_cell(out, table.query(i), &mut quoted);
                    out.push_plain(",");
                    if table.has_rank {
                        push_cell(out, table.rank_text(i), &mut quoted);
                        out.push_plain(",");
                    }
                }
            }
            let scored = predictions.rows.get(next_scored) == Some(&i);
            let mut reason = None;
            if scored {
                let p = predictions.probabilities[next_scored];
                next_scored += 1;
                // Only scored rows can be suppressed.
                reason = predictions.suppressed.and_then(|suppressed| suppressed(i));
                out.push_plain(number.format(p as f64));
                out.push_plain(",");
                let alert = p >= threshold && reason.is_none();
                out.push_plain(if alert { one } else { zero });
            } else {
                out.push_plain(",");
            }
            if predictions.suppressed.is_some() {
                out.push_plain(",");
                if let Some(reason) = reason {
                    push_cell(out, reason, &mut quoted);
                }
            }
            out.end_row();
        }
    }
}

/// The results as a plain CSV string.
pub fn results_csv(
    table: &Table,
    target: &str,
    predictions: Predictions,
    threshold: f32,
) -> String {
    let mut out = String::with_capacity(64 + table.len() * 64);
    write_results(&mut out, table, target, predictions, threshold);
    out
}

/// Appends a CSV cell, quoted (with doubled quotes) only when it must be, like Python's csv module.
fn push_cell<S: CsvSink>(out: &mut S, cell: &str, scratch: &mut String) {
    // The usual cell needs neither CSV quotes nor JSON escapes: one word-at-a-time pass says so.
    if !needs_quotes_or_escapes(cell) {
        out.push_plain(cell);
    } else if cell.contains([',', '"', '\n', '\r']) {
        scratch.clear();
        scratch.push('"');
        scratch.push_str(&cell.replace('"', "\"\""));
        scratch.push('"');
        out.push_text(scratch);
    } else {
        out.push_text(cell);
    }
}

/// Appends Python's `repr` of a float: the shortest text that round-trips, in scientific notation
/// with a two-digit exponent below 1e-4 or from 1e16 up (`1.0441447985637224e-14`, `0.0`, `1.0`).
pub fn push_python_float(out: &mut String, x: f64) {
    out.push_str(PythonFloat::new().format(x));
}

/// A reusable buffer for Python's float `repr` (see [`push_python_float`]), without allocating.
///
/// The digits are ryu's shortest round-trip digits (the same as Rust's and Python's); ryu's layout
/// already matches Python's except for the exponent (`e-5` vs `e-05`, `e16` vs `e+16`) and for
/// numbers in [1e-5, 1e-4), which ryu writes in fixed notation and Python in scientific.
pub struct PythonFloat {
    ryu: ryu::Buffer,
    text: [u8; 32],
}

impl Default for PythonFloat {
    fn default() -> Self {
        Self::new()
    }
}

impl PythonFloat {
    pub fn new() -> Self {
        Self {
            ryu: ryu::Buffer::new(),
            text: [0; 32],
        }
    }

    pub fn format(&mut self, x: f64) -> &str {
        if !x.is_finite() {
            return if x.is_nan() {
                "nan"
            } else if x > 0.0 {
                "inf"
            } else {
                "-inf"
            };
        }
        let s = self.ryu.format_finite(x).as_bytes();
        let (sign, body) = match s.split_first() {
            Some((b'-', rest)) => (&s[..1], rest),
            _ => (&s[..0], s),
        };
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            self.text[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        if let Some(e) = body.iter().position(|&b| b == b'e') {
            // `1e30`, `1.5e-7`: the mantissa is Python's already.
            put(sign);
            put(&body[..e]);
            let exp = &body[e + 1..];
            let (exp_sign, digits) = match exp.split_first() {
                Some((b'-', digits)) => (b"e-", digits),
                _ => (b"e+", exp),
            };
            put(exp_sign);
            if digits.len() < 2 {
                put(b"0");
            }
            put(digits);
        } else if let Some(digits) = body.strip_prefix(b"0.0000") {
            // [1e-5, 1e-4): `0.0000123` is `1.23e-05` (zero itself is `0.0`).
            put(sign);
            put(&digits[..1]);
            if digits.len() > 1 {
                put(b".");
                put(&digits[1..]);
            }
            put(b"e-05");
        } else {
            return std::str::from_utf8(s).expect("ryu writes ASCII");
        }
        std::str::from_utf8(&self.text[..len]).expect("ryu writes ASCII")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    /// Probabilities per table row (`None`: not scored) as the scored rows and their scores.
    fn scored(probabilities: &[Option<f32>]) -> (Vec<usize>, Vec<f32>) {
        probabilities
            .iter()
            .enumerate()
            .filter_map(|(row, p)| p.map(|p| (row, p)))
            .unzip()
    }

    fn unsuppressed(scored: &(Vec<usize>, Vec<f32>)) -> Predictions<'_> {
        Predictions {
            rows: &scored.0,
            probabilities: &scored.1,
            suppressed: None,
        }
    }

    /// The first implementation (std's float formatting, twice), kept as the reference the fast one
    /// must equal byte for byte.
    /// Appends Python's `repr` of a float: the shortest text that round-trips, in scientific notation
    /// with a two-digit exponent below 1e-4 or from 1e16 up (`1.0441447985637224e-14`, `0.0`, `1.0`).
    fn push_python_float_reference(out: &mut String, x: f64) {
        if x.is_nan() {
            out.push_str("nan");
            return;
        }
        if x.is_infinite() {
            out.push_str(if x > 0.0 { "inf" } else { "-inf" });
            return;
        }
        let sci = format!("{x:e}");
        let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
        let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
        if x != 0.0 && !(-4..16).contains(&exp) {
            let _ = write!(
                out,
                "{mantissa}e{}{:02}",
                if exp < 0 { '-' } else { '+' },
                exp.abs()
            );
        } else {
            let start = out.len();
            let _ = write!(out, "{x}");
            if !out[start..].contains('.') {
                out.push_str(".0");
            }
        }
    }

    /// The fast text equals the reference's, except where the reference is not Python's: when
    /// two shortest texts are equally close to the float, std rounds the last digit up and Python
    /// (like ryu) to even (`0.9999160766601562`, not `...563`).
    fn check_same(x: f64) {
        let mut old = String::new();
        push_python_float_reference(&mut old, x);
        let mut new = String::new();
        push_python_float(&mut new, x);
        if new == old {
            return;
        }
        let what = format!("bits {:#018x}: {new} vs {old}", x.to_bits());
        assert_eq!(new.len(), old.len(), "{what}");
        assert_eq!(new.parse::<f64>().unwrap(), x, "{what}");
        assert_eq!(old.parse::<f64>().unwrap(), x, "{what}");
        let digit = |s: &str| -> u8 {
            let mantissa = s.split('e').next().unwrap();
            mantissa.as_bytes()[mantissa.len() - 1] - b'0'
        };
        assert_eq!(digit(&old), digit(&new) + 1, "{what}");
        assert_eq!(digit(&new) % 2, 0, "{what}");
    }

    #[test]
    fn ties_round_to_even_like_python() {
        // From Python 3: repr(float(numpy.float32(x))) for float32 probabilities.
        assert_eq!(py(0.9999160766601562), "0.9999160766601562");
        assert_eq!(py(0.24589920043945312), "0.24589920043945312");
        assert_eq!(py(0.9999771118164062), "0.9999771118164062");
        assert_eq!(py(1223383794756801.2), "1223383794756801.2");
    }

    #[test]
    fn fast_float_text_equals_the_reference_on_edge_and_random_floats_but_ties() {
        let mut edges = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            0.1,
            1e-4,
            1e-5,
            9.999999999999999e-5,
            f64::from_bits(1e-4f64.to_bits() + 1),
            0.00012,
            1.2345e-5,
            -1.2345e-5,
            1e15,
            9999999999999998.0,
            1e16,
            1.5e16,
            123456789012345680.0,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f32::MIN_POSITIVE as f64,
            f32::MAX as f64,
            1e-45f32 as f64,
        ];
        for e in -330..=310 {
            let p = format!("1e{e}").parse::<f64>().unwrap();
            edges.extend([p, -p, p * 1.5, p * 9.87654321, p * 0.999999]);
        }
        for x in edges {
            check_same(x);
        }
        let mut rng = crate::util::rng::SplitMix64::new(7);
        for _ in 0..200_000 {
            let bits = rng.next_u64();
            // Any float64, any float32 widened (what probabilities are), and probabilities-like.
            check_same(f64::from_bits(bits));
            check_same(f32::from_bits(bits as u32) as f64);
            check_same((bits >> 11) as f64 / (1u64 << 53) as f64);
            let z = ((bits >> 40) as f32 / (1u32 << 24) as f32 - 0.5) * 200.0;
            check_same(crate::model::mlp::sigmoid(z) as f64);
        }
    }

    fn py(x: f64) -> String {
        let mut s = String::new();
        push_python_float(&mut s, x);
        s
    }

    #[test]
    fn floats_print_like_python_repr() {
        assert_eq!(py(0.0), "0.0");
        assert_eq!(py(1.0), "1.0");
        assert_eq!(py(0.5), "0.5");
        assert_eq!(py(1.0441447985637224e-14), "1.0441447985637224e-14");
        assert_eq!(py(7.376628491329029e-05), "7.376628491329029e-05");
        assert_eq!(py(1e-5), "1e-05");
        assert_eq!(py(0.0001), "0.0001");
        assert_eq!(py(0.00012), "0.00012");
        assert_eq!(py(1.5303405366314237e-32), "1.5303405366314237e-32");
        assert_eq!(py(1e16), "1e+16");
        assert_eq!(py(123.25), "123.25");
        assert_eq!(py(f64::NAN), "nan");
        // A float32 probability widened to float64 prints its float64 digits, as the stock does.
        assert_eq!(py(0.1f32 as f64), "0.10000000149011612");
    }

    #[test]
    fn cells_are_quoted_only_when_needed() {
        let mut s = String::new();
        let mut scratch = String::new();
        push_cell(&mut s, "plain", &mut scratch);
        s.push('|');
        push_cell(&mut s, "a,b", &mut scratch);
        s.push('|');
        push_cell(&mut s, "say \"hi\"", &mut scratch);
        assert_eq!(s, "plain|\"a,b\"|\"say \"\"hi\"\"\"");
    }

    #[test]
    fn json_escaped_output_is_the_csv_as_a_json_string() {
        let t =
            Table::parse("src,query,rank\n\"a\\b\",\"x\ty,\"\"q\"\"\",1\nh,\"multi\nline\",2\n")
                .unwrap();
        let predictions = scored(&[Some(0.9), None]);
        let csv = results_csv(&t, "t", unsuppressed(&predictions), 0.5);
        let mut json = JsonEscaped(Vec::new());
        write_results(&mut json, &t, "t", unsuppressed(&predictions), 0.5);
        let literal = format!("\"{}\"", String::from_utf8(json.0).unwrap());
        let decoded: String = serde_json::from_str(&literal).unwrap();
        assert_eq!(decoded, csv);
        assert!(csv.contains("\"x\ty,\"\"q\"\"\""), "{csv}");
    }

    #[test]
    fn cells_copied_in_one_piece_read_as_cell_by_cell_output() {
        // Layouts where src,query,rank are and are not one unquoted stretch of the input.
        let inputs = [
            "src,query,rank\na,x.y,1\n\"a\",x.y,2\n\"a,b\",x.y,3\na,\"x\"\"y\",1\na\\b,x\ty,1\n,,1\n",
            "rank,src,query\n1,a,x.y\n2,\"b\",x.y\n",
            "src,_time,query,rank\na,5,x.y,1\n",
            "src,query\na,x.y\n\"a\",\"x.y\"\n",
            "query,src,rank\nx.y,a,1\n",
        ];
        for input in inputs {
            let t = Table::parse(input).unwrap();
            let probabilities: Vec<Option<f32>> = (0..t.len()).map(|_| Some(0.5)).collect();
            let predictions = scored(&probabilities);
            let mut expected = String::new();
            let mut scratch = String::new();
            for i in 0..t.len() {
                push_cell(&mut expected, t.src(i), &mut scratch);
                expected.push(',');
                push_cell(&mut expected, t.query(i), &mut scratch);
                if t.has_rank {
                    expected.push(',');
                    push_cell(&mut expected, t.rank_text(i), &mut scratch);
                }
                expected.push_str(",0.5,1\n");
            }
            let out = results_csv(&t, "t", unsuppressed(&predictions), 0.5);
            let (_, rows) = out.split_once('\n').unwrap();
            assert_eq!(rows, expected, "{input:?}");
            let mut json = JsonEscaped(Vec::new());
            write_results(&mut json, &t, "t", unsuppressed(&predictions), 0.5);
            let decoded: String =
                serde_json::from_str(&format!("\"{}\"", String::from_utf8(json.0).unwrap()))
                    .unwrap();
            assert_eq!(decoded, out, "{input:?}");
        }
    }

    #[test]
    fn suppressed_rows_keep_their_probability_get_label_0_and_a_reason() {
        let t = Table::parse(
            "src,query,rank
a,x.y,1
b,z.y,1
c,w.y,2
",
        )
        .unwrap();
        let mut out = String::new();
        // Row 2 is not scored, so it is not suppressed whatever the check says.
        let reasons = [Some("allowlist x.y (built-in)"), None, Some("muted")];
        let suppressed = |row: usize| reasons[row];
        let (rows, probabilities) = scored(&[Some(0.75), Some(0.75), None]);
        let predictions = Predictions {
            rows: &rows,
            probabilities: &probabilities,
            suppressed: Some(&suppressed),
        };
        write_results(&mut out, &t, "t", predictions, 0.5);
        assert_eq!(
            out,
            concat!(
                "src,query,rank,pred_t_proba,pred_t,suppressed_by\n",
                "a,x.y,1,0.75,0.0,allowlist x.y (built-in)\n",
                "b,z.y,1,0.75,1.0,\n",
                "c,w.y,2,,,\n"
            )
        );
    }

    #[test]
    fn a_large_table_written_in_parts_reads_as_one_written_row_by_row() {
        // Large enough to be written in two parts at once; scored rows, suppressed ones and
        // neither on both sides of the split.
        let mut rng = crate::util::rng::SplitMix64::new(3);
        let mut csv = String::from("src,query,rank\n");
        for i in 0..(3 * crate::features::PARALLEL_MIN_ROWS + 7) {
            let _ = writeln!(csv, "h{},q{i}.example,{}", i % 13, 1 + rng.below(3));
        }
        let t = Table::parse(&csv).unwrap();
        let (rows, probabilities): (Vec<usize>, Vec<f32>) = (0..t.len())
            .filter(|&row| t.rank_text(row) == "1")
            .map(|row| (row, rng.below(1000) as f32 / 999.0))
            .unzip();
        let suppressed = |row: usize| (row % 5 == 0).then_some("muted");
        let predictions = Predictions {
            rows: &rows,
            probabilities: &probabilities,
            suppressed: Some(&suppressed),
        };
        let mut one_by_one = String::new();
        write_results(&mut one_by_one, &t, "t", predictions, 0.5);
        let in_parts = json_results(&t, "t", predictions, 0.5, 0);
        let decoded: String = serde_json::from_str(&format!(
            "\"{}\"",
            std::str::from_utf8(&in_parts.text()).unwrap()
        ))
        .unwrap();
        assert_eq!(decoded, one_by_one);
        assert_eq!(one_by_one.lines().count(), t.len() + 1);
        assert!(one_by_one.contains(",muted\n") && one_by_one.contains(",1.0,\n"));
    }

    #[test]
    fn labels_switch_to_float_text_when_a_row_is_unscored() {
        let t = Table::parse("src,query,rank\na,x.y,1\na,x.y,2\n").unwrap();
        let out = results_csv(&t, "t", unsuppressed(&scored(&[Some(0.75), None])), 0.5);
        assert_eq!(
            out,
            "src,query,rank,pred_t_proba,pred_t\na,x.y,1,0.75,1.0\na,x.y,2,,\n"
        );
        let out = results_csv(
            &t,
            "t",
            unsuppressed(&scored(&[Some(0.25), Some(1.0)])),
            0.5,
        );
        assert_eq!(
            out,
            "src,query,rank,pred_t_proba,pred_t\na,x.y,1,0.25,0\na,x.y,2,1.0,1\n"
        );
    }

    #[test]
    fn header_cells_are_quoted_as_needed() {
        let t = Table::parse("src,query,rank\na,x.y,1\n").unwrap();
        let out = results_csv(
            &t,
            "x\",evil\ncol",
            unsuppressed(&scored(&[Some(0.25)])),
            0.5,
        );
        assert_eq!(
            out,
            "src,query,rank,\"pred_x\"\",evil\ncol_proba\",\"pred_x\"\",evil\ncol\"\na,x.y,1,0.25,0\n"
        );
    }
}
