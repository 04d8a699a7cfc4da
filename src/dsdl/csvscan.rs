//! A zero-copy CSV record scanner for the CSV Splunk sends (`,` separator, `"` quoting with
//! doubled quotes, `\n` or `\r\n` line ends). Fields are byte ranges into the text; only quoted
//! fields with doubled quotes need unescaping. Blank lines are skipped, like pandas and the csv crate.

use std::borrow::Cow;

/// One field of a record: `text[start..end]`, with `""` still doubled when `escaped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub start: usize,
    pub end: usize,
    pub escaped: bool,
}

impl Field {
    /// The field's text, with doubled quotes undone.
    pub fn text<'a>(&self, source: &'a str) -> Cow<'a, str> {
        let raw = &source[self.start..self.end];
        if self.escaped {
            Cow::Owned(raw.replace("\"\"", "\""))
        } else {
            Cow::Borrowed(raw)
        }
    }
}

pub struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(text: &'a str) -> Self {
        Self {
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    /// Reads the next non-blank record into `fields`. `Ok(false)` at the end of the text.
    /// The error says what is malformed; the caller knows the row number.
    pub fn next_record(&mut self, fields: &mut Vec<Field>) -> Result<bool, String> {
        loop {
            fields.clear();
            if self.pos >= self.bytes.len() {
                return Ok(false);
            }
            self.read_record(fields)?;
            let blank = fields.len() == 1 && fields[0].start == fields[0].end && !fields[0].escaped;
            if !blank {
                return Ok(true);
            }
        }
    }

    fn read_record(&mut self, fields: &mut Vec<Field>) -> Result<(), String> {
        let b = self.bytes;
        loop {
            let field_start = self.pos;
            if b.get(self.pos) == Some(&b'"') {
                // Quoted field: runs to the next quote that is not doubled.
                let start = self.pos + 1;
                let mut i = start;
                let mut escaped = false;
                loop {
                    match b[i..].iter().position(|&c| c == b'"') {
                        None => {
                            return Err("a quoted cell is never closed (a `\"` is missing)".into())
                        }
                        Some(off) => {
                            i += off;
                            if b.get(i + 1) == Some(&b'"') {
                                escaped = true;
                                i += 2;
                            } else {
                                break;
                            }
                        }
                    }
                }
                fields.push(Field {
                    start,
                    end: i,
                    escaped,
                });
                self.pos = i + 1;
                match b.get(self.pos) {
                    None => return Ok(()),
                    Some(b',') => self.pos += 1,
                    Some(b'\n') => {
                        self.pos += 1;
                        return Ok(());
                    }
                    Some(b'\r') if b.get(self.pos + 1) == Some(&b'\n') => {
                        self.pos += 2;
                        return Ok(());
                    }
                    Some(_) => return Err("text follows the closing quote of a quoted cell".into()),
                }
            } else {
                let rest = &b[field_start..];
                match rest.iter().position(|&c| c == b',' || c == b'\n') {
                    Some(off) => {
                        let end = field_start + off;
                        let sep = b[end];
                        let content_end =
                            if sep == b'\n' && end > field_start && b[end - 1] == b'\r' {
                                end - 1
                            } else {
                                end
                            };
                        fields.push(Field {
                            start: field_start,
                            end: content_end,
                            escaped: false,
                        });
                        self.pos = end + 1;
                        if sep == b'\n' {
                            return Ok(());
                        }
                        if self.pos == b.len() {
                            // A trailing separator at the very end: one more, empty field.
                            fields.push(Field {
                                start: self.pos,
                                end: self.pos,
                                escaped: false,
                            });
                            return Ok(());
                        }
                    }
                    None => {
                        let mut end = b.len();
                        if end > field_start && b[end - 1] == b'\r' {
                            end -= 1;
                        }
                        fields.push(Field {
                            start: field_start,
                            end,
                            escaped: false,
                        });
                        self.pos = b.len();
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Result<Vec<Vec<String>>, String> {
        let mut s = Scanner::new(text);
        let mut fields = Vec::new();
        let mut out = Vec::new();
        while s.next_record(&mut fields)? {
            out.push(fields.iter().map(|f| f.text(text).into_owned()).collect());
        }
        Ok(out)
    }

    #[test]
    fn reads_plain_quoted_and_crlf_records() {
        let r = records("a,b,c\n1,\"x,y\",\"say \"\"hi\"\"\"\r\n\n,,\nlast,\"\",z").unwrap();
        assert_eq!(
            r,
            vec![
                vec!["a", "b", "c"],
                vec!["1", "x,y", "say \"hi\""],
                vec!["", "", ""],
                vec!["last", "", "z"],
            ]
        );
    }

    #[test]
    fn multi_line_quoted_cells_and_trailing_separators() {
        let r = records("q\n\"line1\nline2\"\na,\n").unwrap();
        assert_eq!(r, vec![vec!["q"], vec!["line1\nline2"], vec!["a", ""]]);
        assert_eq!(records("a,").unwrap(), vec![vec!["a", ""]]);
    }

    #[test]
    fn agrees_with_the_csv_crate_on_generated_batches() {
        let text = crate::synth::dsdl_csv(2000, 3) + "x,\"q,\"\"1\"\"\",2\r\n";
        let ours = records(&text).unwrap();
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        let theirs: Vec<Vec<String>> = rdr
            .records()
            .map(|r| r.unwrap().iter().map(String::from).collect())
            .collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn malformed_quoting_is_reported() {
        assert!(records("a\n\"open").unwrap_err().contains("never closed"));
        assert!(records("a\n\"x\"y\n")
            .unwrap_err()
            .contains("follows the closing quote"));
    }
}
