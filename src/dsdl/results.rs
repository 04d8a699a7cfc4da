//! The `results` CSV of a DSDL response, in the stock container's column order and number format.

use std::fmt::Write;

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

/// Writes one result row per table row, in order: `src,query,rank,pred_<target>_proba,pred_<target>`
/// (no `rank` column when the request had none). Rows that were not scored get empty predictions.
/// With `suppressed` (allowlist and mutes are configured), a last column `suppressed_by` names
/// why a row's label was forced to 0; its probability is kept as scored.
pub fn write_results<S: CsvSink>(
    out: &mut S,
    table: &Table,
    target: &str,
    probabilities: &[Option<f32>],
    threshold: f32,
    suppressed: Option<&[Option<&str>]>,
) {
    debug_assert_eq!(probabilities.len(), table.len());
    debug_assert!(suppressed.is_none_or(|s| s.len() == table.len()));
    // pandas prints labels as 0/1 when every row has one, and 0.0/1.0 when a column holds a
    // missing value; Splunk reads both, we keep the stock text.
    let all_scored = probabilities.iter().all(Option::is_some);
    let (zero, one) = if all_scored {
        ("0", "1")
    } else {
        ("0.0", "1.0")
    };

    out.push_plain("src,query,");
    if table.has_rank {
        out.push_plain("rank,");
    }
    out.push_text(&format!("pred_{target}_proba,pred_{target}"));
    if suppressed.is_some() {
        out.push_plain(",suppressed_by");
    }
    out.end_row();
    let mut number = String::with_capacity(32);
    let mut quoted = String::new();
    for (i, p) in probabilities.iter().enumerate() {
        push_cell(out, table.src(i), &mut quoted);
        out.push_plain(",");
        push_cell(out, table.query(i), &mut quoted);
        out.push_plain(",");
        if table.has_rank {
            push_cell(out, table.rank_text(i), &mut quoted);
            out.push_plain(",");
        }
        let reason = suppressed.and_then(|s| s[i]);
        if let Some(p) = p {
            number.clear();
            push_python_float(&mut number, *p as f64);
            out.push_plain(&number);
            out.push_plain(",");
            let alert = *p >= threshold && reason.is_none();
            out.push_plain(if alert { one } else { zero });
        } else {
            out.push_plain(",");
        }
        if suppressed.is_some() {
            out.push_plain(",");
            if let Some(reason) = reason {
                push_cell(out, reason, &mut quoted);
            }
        }
        out.end_row();
    }
}

/// The results as a plain CSV string.
pub fn results_csv(
    table: &Table,
    target: &str,
    probabilities: &[Option<f32>],
    threshold: f32,
) -> String {
    let mut out = String::with_capacity(64 + table.len() * 64);
    write_results(&mut out, table, target, probabilities, threshold, None);
    out
}

/// Appends a CSV cell, quoted (with doubled quotes) only when it must be, like Python's csv module.
fn push_cell<S: CsvSink>(out: &mut S, cell: &str, scratch: &mut String) {
    if cell.contains([',', '"', '\n', '\r']) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let probabilities = [Some(0.9), None];
        let csv = results_csv(&t, "t", &probabilities, 0.5);
        let mut json = JsonEscaped(Vec::new());
        write_results(&mut json, &t, "t", &probabilities, 0.5, None);
        let literal = format!("\"{}\"", String::from_utf8(json.0).unwrap());
        let decoded: String = serde_json::from_str(&literal).unwrap();
        assert_eq!(decoded, csv);
        assert!(csv.contains("\"x\ty,\"\"q\"\"\""), "{csv}");
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
        let reasons = [Some("allowlist x.y (built-in)"), None, None];
        write_results(
            &mut out,
            &t,
            "t",
            &[Some(0.75), Some(0.75), None],
            0.5,
            Some(&reasons),
        );
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
    fn labels_switch_to_float_text_when_a_row_is_unscored() {
        let t = Table::parse("src,query,rank\na,x.y,1\na,x.y,2\n").unwrap();
        let out = results_csv(&t, "t", &[Some(0.75), None], 0.5);
        assert_eq!(
            out,
            "src,query,rank,pred_t_proba,pred_t\na,x.y,1,0.75,1.0\na,x.y,2,,\n"
        );
        let out = results_csv(&t, "t", &[Some(0.25), Some(1.0)], 0.5);
        assert_eq!(
            out,
            "src,query,rank,pred_t_proba,pred_t\na,x.y,1,0.25,0\na,x.y,2,1.0,1\n"
        );
    }
}
