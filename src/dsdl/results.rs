//! The `results` CSV of a DSDL response, in the stock container's column order and number format.

use std::fmt::Write;

use super::table::Table;

/// Writes one result row per table row, in order: `src,query,rank,pred_<target>_proba,pred_<target>`
/// (no `rank` column when the request had none). Rows that were not scored get empty predictions.
pub fn write_results(
    table: &Table,
    target: &str,
    probabilities: &[Option<f32>],
    threshold: f32,
) -> String {
    debug_assert_eq!(probabilities.len(), table.len());
    // pandas prints labels as 0/1 when every row has one, and 0.0/1.0 when a column holds a
    // missing value; Splunk reads both, we keep the stock text.
    let all_scored = probabilities.iter().all(Option::is_some);
    let (zero, one) = if all_scored {
        ("0", "1")
    } else {
        ("0.0", "1.0")
    };

    let mut out = String::with_capacity(64 + table.len() * 96);
    out.push_str("src,query,");
    if table.has_rank {
        out.push_str("rank,");
    }
    let _ = writeln!(out, "pred_{target}_proba,pred_{target}");
    for (i, p) in probabilities.iter().enumerate() {
        push_cell(&mut out, table.src(i));
        out.push(',');
        push_cell(&mut out, table.query(i));
        out.push(',');
        if table.has_rank {
            push_cell(&mut out, table.rank_text(i));
            out.push(',');
        }
        if let Some(p) = p {
            push_python_float(&mut out, *p as f64);
            out.push(',');
            out.push_str(if *p >= threshold { one } else { zero });
        } else {
            out.push(',');
        }
        out.push('\n');
    }
    out
}

/// Appends a CSV cell, quoted (with doubled quotes) only when it must be, like Python's csv module.
pub fn push_cell(out: &mut String, cell: &str) {
    if cell.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&cell.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(cell);
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
        push_cell(&mut s, "plain");
        s.push('|');
        push_cell(&mut s, "a,b");
        s.push('|');
        push_cell(&mut s, "say \"hi\"");
        assert_eq!(s, "plain|\"a,b\"|\"say \"\"hi\"\"\"");
    }

    #[test]
    fn labels_switch_to_float_text_when_a_row_is_unscored() {
        let t = Table::parse("src,query,rank\na,x.y,1\na,x.y,2\n").unwrap();
        let out = write_results(&t, "t", &[Some(0.75), None], 0.5);
        assert_eq!(
            out,
            "src,query,rank,pred_t_proba,pred_t\na,x.y,1,0.75,1.0\na,x.y,2,,\n"
        );
        let out = write_results(&t, "t", &[Some(0.25), Some(1.0)], 0.5);
        assert_eq!(
            out,
            "src,query,rank,pred_t_proba,pred_t\na,x.y,1,0.25,0\na,x.y,2,1.0,1\n"
        );
    }
}
