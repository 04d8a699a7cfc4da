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
    /// The field was written in quotes (so `""` alone is an empty field, not a blank line).
    pub quoted: bool,
}

/// A record that cannot be read as sent; the scanner has moved on to the next line.
pub const TEXT_AFTER_QUOTE: &str = "text follows the closing quote of a quoted cell";

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

enum RecordError {
    Unclosed,
    TextAfterQuote,
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

    /// A scanner that starts reading at byte `pos`, which must be the start of a record for the
    /// records to be those a scanner from the start would read.
    pub fn starting_at(text: &'a str, pos: usize) -> Self {
        Self {
            bytes: text.as_bytes(),
            pos: pos.min(text.len()),
        }
    }

    /// The whole text being read.
    pub fn text(&self) -> &'a str {
        // SAFETY: `bytes` is always the whole of a `&str`.
        unsafe { std::str::from_utf8_unchecked(self.bytes) }
    }

    /// Byte offset of the next unread text: after a record, the start of the line after it.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Reads the next non-blank record into `fields`: `Ok(Some(None))` for a good record,
    /// `Ok(Some(Some(problem)))` for a record that is malformed on its own (the scanner skips to
    /// the next line, so the rest of the text is still read), `Ok(None)` at the end of the text.
    /// `Err` means the text cannot be split into records at all (an unclosed quote).
    pub fn next_record(
        &mut self,
        fields: &mut Vec<Field>,
    ) -> Result<Option<Option<&'static str>>, String> {
        loop {
            fields.clear();
            if self.pos >= self.bytes.len() {
                return Ok(None);
            }
            match self.read_record(fields) {
                Ok(()) => {}
                Err(RecordError::Unclosed) => {
                    return Err("a quoted cell is never closed (a `\"` is missing)".into())
                }
                Err(RecordError::TextAfterQuote) => {
                    self.skip_rest_of_record()?;
                    return Ok(Some(Some(TEXT_AFTER_QUOTE)));
                }
            }
            let blank = fields.len() == 1 && fields[0].start == fields[0].end && !fields[0].quoted;
            if !blank {
                return Ok(Some(None));
            }
        }
    }

    /// Moves past the rest of a malformed record (the scanner stands just after the text that
    /// follows a closing quote). A later cell of the same record may be quoted and hold line
    /// ends, so the record ends at the first line end outside a quoted cell, not the first line
    /// end: otherwise the rest of that cell would be read as records of its own, and every
    /// result after it would land one row off.
    fn skip_rest_of_record(&mut self) -> Result<(), String> {
        let b = self.bytes;
        let mut at_field_start = false;
        while self.pos < b.len() {
            let c = b[self.pos];
            self.pos += 1;
            match c {
                b'\n' => return Ok(()),
                b',' => at_field_start = true,
                // As in a record read whole: a quote opens a quoted cell only at a cell's start.
                b'"' if at_field_start => {
                    let mut i = self.pos;
                    loop {
                        match b[i..].iter().position(|&c| c == b'"') {
                            None => {
                                return Err(
                                    "a quoted cell is never closed (a `\"` is missing)".into()
                                )
                            }
                            Some(off) if b.get(i + off + 1) == Some(&b'"') => i += off + 2,
                            Some(off) => {
                                i += off + 1;
                                break;
                            }
                        }
                    }
                    self.pos = i;
                    at_field_start = false;
                }
                _ => at_field_start = false,
            }
        }
        Ok(())
    }

    fn read_record(&mut self, fields: &mut Vec<Field>) -> Result<(), RecordError> {
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
                        None => return Err(RecordError::Unclosed),
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
                    quoted: true,
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
                    Some(_) => return Err(RecordError::TextAfterQuote),
                }
            } else {
                match find_comma_or_line_end(b, field_start) {
                    Some(end) => {
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
                            quoted: false,
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
                                quoted: false,
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
                            quoted: false,
                        });
                        self.pos = b.len();
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Why a reader stopped before the end of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// The text cannot be split into records (an unclosed quote).
    Unreadable(String),
    /// JSON-escaped text holds an escape other than a line end: it must be unescaped and read
    /// with [`Scanner`].
    NeedsUnescaping,
}

/// The records of a CSV text, read from either form the service receives it in.
pub trait Records<'a> {
    /// Whether every field this reader returns with `escaped` unset is unquoted text without
    /// `"`, `\\` or control characters.
    const PLAIN_CELLS: bool;
    /// Appends the text of `field` of `text` to `out`, unescaped.
    fn push_text(field: &Field, text: &str, out: &mut String) {
        out.push_str(&field.text(text));
    }
    /// The text of `field` of `text`, unescaped.
    fn field_text<'t>(field: &Field, text: &'t str) -> Cow<'t, str> {
        field.text(text)
    }
    /// A reader of `text` that starts at byte `pos`, which must be the start of a record.
    fn starting_at(text: &'a str, pos: usize) -> Self;
    /// The whole text being read.
    fn text(&self) -> &'a str;
    /// Byte offset of the next unread text.
    fn position(&self) -> usize;
    /// Like [`Scanner::next_record`].
    fn next_record(
        &mut self,
        fields: &mut Vec<Field>,
    ) -> Result<Option<Option<&'static str>>, ScanStop>;
    /// The start of the first line after byte `at`, or `None`: where a second reader may begin.
    /// It can be inside a quoted cell; the caller checks that the first reader ends there.
    fn line_start_after(text: &str, at: usize) -> Option<usize>;
}

impl<'a> Records<'a> for Scanner<'a> {
    const PLAIN_CELLS: bool = false;

    fn starting_at(text: &'a str, pos: usize) -> Self {
        Scanner::starting_at(text, pos)
    }

    fn text(&self) -> &'a str {
        Scanner::text(self)
    }

    fn position(&self) -> usize {
        self.pos
    }

    fn next_record(
        &mut self,
        fields: &mut Vec<Field>,
    ) -> Result<Option<Option<&'static str>>, ScanStop> {
        Scanner::next_record(self, fields).map_err(ScanStop::Unreadable)
    }

    fn line_start_after(text: &str, at: usize) -> Option<usize> {
        let at = at.min(text.len());
        text.as_bytes()[at..]
            .iter()
            .position(|&c| c == b'\n')
            .map(|off| at + off + 1)
    }
}

/// Reads CSV text that is still JSON-escaped, as it stands between the quotes of a JSON string
/// (line ends are the two characters `\n`, or `\r\n`), without unescaping it first. It reads
/// unquoted cells, which is what a batch of addresses and DNS names is; a cell with escapes
/// (`\\`, `\"`, `\t`, `\u00e9`, ...) is marked `escaped`, and [`Records::push_text`] unescapes
/// it. Anything [`Scanner`] would read differently from the unescaped text (a quoted cell, an
/// escaped `,`, a lone carriage return, a `"` opening a cell) or that a JSON string may not hold
/// (a control character, an unknown escape, a lone surrogate) stops it with
/// [`ScanStop::NeedsUnescaping`], so text it reads to the end is a valid JSON string. A field
/// without escapes is exactly its text, and the records are those [`Scanner`] reads from the
/// unescaped text. It moves over the text as a [`Scanner`] does.
pub struct EscapedScanner<'a>(Scanner<'a>);

/// The UTF-16 unit of the four hex digits at `b[at..]`.
fn hex_unit(b: &[u8], at: usize) -> Option<u16> {
    let digits = b.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    // from_str_radix takes a sign: only the four digits are a unit.
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u16::from_str_radix(text, 16).ok()
}

/// The character of the escape at `b[at..]` (which starts with `\`) and the escape's length,
/// for the escapes a cell may hold; `None` for an invalid escape, a line end, or a character
/// that would change how the CSV splits (`,`, a carriage return).
fn cell_escape(b: &[u8], at: usize) -> Option<(char, usize)> {
    let c = match *b.get(at + 1)? {
        b'\\' => '\\',
        b'"' => '"',
        b'/' => '/',
        b't' => '\t',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'u' => {
            let unit = hex_unit(b, at + 2)?;
            let (c, len) = match unit {
                0xD800..=0xDBFF => {
                    if b.get(at + 6..at + 8) != Some(b"\\u") {
                        return None;
                    }
                    let low = hex_unit(b, at + 8)?;
                    if !(0xDC00..=0xDFFF).contains(&low) {
                        return None;
                    }
                    let code = 0x10000 + ((unit as u32 - 0xD800) << 10) + (low as u32 - 0xDC00);
                    (char::from_u32(code)?, 12)
                }
                _ => (char::from_u32(unit as u32)?, 6),
            };
            if matches!(c, ',' | '\n' | '\r') {
                return None;
            }
            return Some((c, len));
        }
        _ => return None,
    };
    Some((c, 2))
}

/// The unescaped text of a cell whose escapes [`cell_escape`] accepted.
fn unescape_cell(raw: &str, out: &mut String) {
    let b = raw.as_bytes();
    let mut from = 0;
    while let Some(off) = memchr::memchr(b'\\', &b[from..]) {
        let at = from + off;
        out.push_str(&raw[from..at]);
        let (c, len) = cell_escape(b, at).expect("an escape the scanner accepted");
        out.push(c);
        from = at + len;
    }
    out.push_str(&raw[from..]);
}

impl EscapedScanner<'_> {
    fn read_record(&mut self, fields: &mut Vec<Field>) -> Result<(), ScanStop> {
        let Scanner { bytes: b, pos } = &mut self.0;
        let b = *b;
        let field = |start: usize, end: usize, escaped: bool| Field {
            start,
            end,
            escaped,
            quoted: false,
        };
        loop {
            let field_start = *pos;
            let mut escaped = false;
            let mut from = field_start;
            loop {
                let Some(at) = find_comma_backslash_or_control(b, from) else {
                    fields.push(field(field_start, b.len(), escaped));
                    *pos = b.len();
                    return Ok(());
                };
                if b[at] == b',' {
                    fields.push(field(field_start, at, escaped));
                    *pos = at + 1;
                    if *pos == b.len() {
                        // A trailing separator at the very end: one more, empty field.
                        fields.push(field(*pos, *pos, false));
                        return Ok(());
                    }
                    break;
                }
                if b[at] < 0x20 {
                    return Err(ScanStop::NeedsUnescaping);
                }
                let line_end = match &b[at + 1..] {
                    [b'n', ..] => Some(at + 2),
                    [b'r', b'\\', b'n', ..] => Some(at + 4),
                    _ => None,
                };
                if let Some(next) = line_end {
                    fields.push(field(field_start, at, escaped));
                    *pos = next;
                    return Ok(());
                }
                match cell_escape(b, at) {
                    // A quote that opens a cell makes it a quoted cell.
                    Some(('"', _)) if at == field_start => return Err(ScanStop::NeedsUnescaping),
                    Some((_, len)) => {
                        escaped = true;
                        from = at + len;
                    }
                    None => return Err(ScanStop::NeedsUnescaping),
                }
            }
        }
    }
}

impl<'a> Records<'a> for EscapedScanner<'a> {
    // Cells with escapes are marked; anything else that is not plain makes it stop.
    const PLAIN_CELLS: bool = true;

    fn push_text(field: &Field, text: &str, out: &mut String) {
        let raw = &text[field.start..field.end];
        if field.escaped {
            unescape_cell(raw, out);
        } else {
            out.push_str(raw);
        }
    }

    fn field_text<'t>(field: &Field, text: &'t str) -> Cow<'t, str> {
        if field.escaped {
            let mut out = String::new();
            Self::push_text(field, text, &mut out);
            Cow::Owned(out)
        } else {
            Cow::Borrowed(&text[field.start..field.end])
        }
    }

    fn starting_at(text: &'a str, pos: usize) -> Self {
        Self(Scanner::starting_at(text, pos))
    }

    fn text(&self) -> &'a str {
        self.0.text()
    }

    fn position(&self) -> usize {
        self.0.pos
    }

    fn next_record(
        &mut self,
        fields: &mut Vec<Field>,
    ) -> Result<Option<Option<&'static str>>, ScanStop> {
        loop {
            fields.clear();
            if self.0.pos >= self.0.bytes.len() {
                return Ok(None);
            }
            self.read_record(fields)?;
            let blank = fields.len() == 1 && fields[0].start == fields[0].end;
            if !blank {
                return Ok(Some(None));
            }
        }
    }

    fn line_start_after(text: &str, at: usize) -> Option<usize> {
        // A `\n` whose backslash follows another character is a line end: in valid JSON string
        // text a lone backslash always starts an escape.
        let b = text.as_bytes();
        let mut from = at.min(b.len());
        while let Some(off) = b[from..].windows(2).position(|w| w == b"\\n") {
            let at = from + off;
            if at == 0 || b[at - 1] != b'\\' {
                return Some(at + 2);
            }
            from = at + 1;
        }
        None
    }
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit of each byte of `word` that equals `byte` (exact for the lowest one; any bit is
/// set only when some byte matches).
#[inline(always)]
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * byte as u64);
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The high bit of each byte of `word` below `limit` (at most 0x80), with the same guarantees.
#[inline(always)]
fn bytes_below(word: u64, limit: u8) -> u64 {
    word.wrapping_sub(ONES * limit as u64) & !word & HIGHS
}

/// Position of the first `,` or `\n` at or after `from`, eight bytes at a time.
#[inline]
fn find_comma_or_line_end(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let hits = bytes_equal(word, b',') | bytes_equal(word, b'\n');
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&c| c == b',' || c == b'\n')
        .map(|off| i + off)
}

/// Position of the first `,`, `\\` or control character at or after `from`, eight bytes at a time.
#[inline]
fn find_comma_backslash_or_control(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let hits = bytes_equal(word, b',') | bytes_equal(word, b'\\') | bytes_below(word, 0x20);
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&c| c == b',' || c == b'\\' || c < 0x20)
        .map(|off| i + off)
}

/// Whether `text` holds a byte that a CSV cell must be quoted for (`,` `"` CR LF) or that a
/// JSON string must escape (`"` `\\` control characters), eight bytes at a time.
#[inline]
pub fn needs_quotes_or_escapes(text: &str) -> bool {
    holds_special_bytes(text, true)
}

/// Whether `text` (cells joined by commas) holds a byte that a CSV cell must be quoted for or a
/// JSON string must escape, commas apart.
#[inline]
pub fn needs_quotes_or_escapes_besides_commas(text: &str) -> bool {
    holds_special_bytes(text, false)
}

#[inline(always)]
fn holds_special_bytes(text: &str, commas: bool) -> bool {
    let b = text.as_bytes();
    let comma = if commas { b',' } else { b'"' };
    let mut chunks = b.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let hits = bytes_below(word, 0x20)
            | bytes_equal(word, comma)
            | bytes_equal(word, b'"')
            | bytes_equal(word, b'\\');
        if hits != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == comma || c == b'"' || c == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Result<Vec<Vec<String>>, String> {
        let mut s = Scanner::new(text);
        let mut fields = Vec::new();
        let mut out = Vec::new();
        while let Some(problem) = s.next_record(&mut fields)? {
            match problem {
                None => out.push(fields.iter().map(|f| f.text(text).into_owned()).collect()),
                Some(p) => out.push(vec![format!("<{p}>")]),
            }
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
        let text = crate::data::synth::dsdl_csv(2000, 3) + "x,\"q,\"\"1\"\"\",2\r\n";
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
    fn word_at_a_time_searches_agree_with_byte_loops() {
        let mut rng = crate::util::rng::SplitMix64::new(5);
        let alphabet = b"ab,\n\"\\\r\t\x01\x1f\x20\x7f\xc3\xa9.-0";
        for _ in 0..20_000 {
            let len = rng.below(40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(4) == 0 {
                        alphabet[rng.below(alphabet.len())]
                    } else {
                        b'a' + rng.below(26) as u8
                    }
                })
                .collect();
            let from = rng.below(len + 1);
            let expected = bytes[from..]
                .iter()
                .position(|&c| c == b',' || c == b'\n')
                .map(|o| from + o);
            assert_eq!(find_comma_or_line_end(&bytes, from), expected, "{bytes:?}");
            let text = String::from_utf8_lossy(&bytes);
            let expected = text
                .bytes()
                .any(|c| c < 0x20 || c == b',' || c == b'"' || c == b'\\');
            assert_eq!(needs_quotes_or_escapes(&text), expected, "{text:?}");
            let expected = text.bytes().any(|c| c < 0x20 || c == b'"' || c == b'\\');
            assert_eq!(
                needs_quotes_or_escapes_besides_commas(&text),
                expected,
                "{text:?}"
            );
        }
    }

    #[test]
    fn malformed_quoting_is_reported() {
        assert!(records("a\n\"open").unwrap_err().contains("never closed"));
        // Text after a closing quote spoils that record only; the next line is read as usual.
        let r = records("a\n\"x\"y,1\nb\n").unwrap();
        let expected = vec![
            vec!["a".to_string()],
            vec![format!("<{TEXT_AFTER_QUOTE}>")],
            vec!["b".to_string()],
        ];
        assert_eq!(r, expected);
    }

    #[test]
    fn a_quoted_empty_line_is_a_record_not_a_blank_line() {
        assert_eq!(
            records("q\n\"\"\n\nz\n").unwrap(),
            vec![vec!["q"], vec![""], vec!["z"]]
        );
    }
}
