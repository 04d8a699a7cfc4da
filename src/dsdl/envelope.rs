//! The DSDL request envelope `{"data": "<CSV>", "meta": {"options": {...}, ...}}` and the options
//! the endpoints (`http::dsdl`) need from it. Parsing is separate from what they do with it.

use serde_json::{Map, Value};

/// A parsed request body. `D` is the CSV text: a `String`, or [`EscapedCsv`] text of the body.
pub struct Envelope<D = String> {
    /// The CSV text.
    pub data: D,
    /// The `meta` object as sent (may hold the user's Splunk session key: never log or echo it).
    pub meta: Value,
}

/// The CSV text still JSON-escaped, exactly as it stands between the quotes of the `data` string
/// in the request body. It has not been checked to be a valid JSON string: its reader accepts
/// only text that is (see `Table::parse_json_escaped`).
#[derive(Debug, Clone, Copy)]
pub struct EscapedCsv<'a>(pub &'a str);

/// Never prints `meta`: it may hold the user's Splunk session key.
impl<D: AsRef<str>> std::fmt::Debug for Envelope<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("data_bytes", &self.data.as_ref().len())
            .finish_non_exhaustive()
    }
}

impl AsRef<str> for EscapedCsv<'_> {
    fn as_ref(&self) -> &str {
        self.0
    }
}

/// `text` with every `\uXXXX` escape of an unpaired UTF-16 surrogate replaced by `\ufffd` (the
/// same length), or `None` when it has none.
fn with_lone_surrogates_replaced(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let surrogate_at = |i: usize| -> Option<u16> {
        let hex = b.get(i..i + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        let unit = u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()?;
        (0xD800..=0xDFFF).contains(&unit).then_some(unit)
    };
    let mut lone = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        match surrogate_at(i) {
            // A high surrogate followed by a low one: a pair, one character.
            Some(0xD800..=0xDBFF) if surrogate_at(i + 6).is_some_and(|low| low >= 0xDC00) => {
                i += 12;
            }
            Some(_) => {
                lone.push(i);
                i += 6;
            }
            // Any other escape: the backslash and the character it escapes.
            None => i += 2,
        }
    }
    if lone.is_empty() {
        return None;
    }
    let mut patched = text.as_bytes().to_vec();
    for at in lone {
        patched[at..at + 6].copy_from_slice(b"\\ufffd");
    }
    String::from_utf8(patched).ok()
}

/// What the endpoints use from `meta.options`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// From `into app:NAME` (absent means `default`).
    pub model_name: String,
    /// `params.algo`: the notebook/algorithm name.
    pub algo: Option<String>,
    /// `params.mode == "stage"`.
    pub stage: bool,
}

/// Why a request body is not a DSDL envelope, or its options cannot be used. Each message says
/// what to send instead.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the request body is not UTF-8 (invalid byte at offset {offset}); send JSON text, with non-ASCII characters as \\uXXXX escapes as Splunk does")]
    NotUtf8 { offset: usize },
    #[error("the request body is not valid JSON ({0}); send {{\"data\": \"<CSV text>\", \"meta\": {{\"options\": {{...}}}}}}")]
    NotJson(serde_json::Error),
    #[error(
        "the request body must be a JSON object {{\"data\": \"<CSV text>\", \"meta\": {{...}}}}"
    )]
    NotAnObject,
    #[error("the `data` field must be a string holding CSV text, not {kind}")]
    DataNotText { kind: &'static str },
    #[error(
        "the request has no `data` field; send {{\"data\": \"<CSV text>\", \"meta\": {{...}}}}"
    )]
    NoData,
    /// The value, clipped.
    #[error("meta.options.model_name must be text, not {0}; name the model with `into app:NAME`")]
    ModelNameNotText(String),
}

pub fn parse(body: &[u8]) -> Result<Envelope, EnvelopeError> {
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            return Err(EnvelopeError::NotUtf8 {
                offset: e.valid_up_to(),
            })
        }
    };
    // From text already known to be UTF-8, serde_json does not check the strings again.
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        // Python's json writes a string holding a lone surrogate (from bytes that were not
        // UTF-8) as `\udXXX`; serde_json refuses it. Such a character becomes U+FFFD, so one odd
        // query does not fail the whole batch.
        Err(e) => match with_lone_surrogates_replaced(text) {
            Some(patched) => serde_json::from_str(&patched),
            None => Err(e),
        }
        .map_err(EnvelopeError::NotJson)?,
    };
    let Value::Object(mut obj) = value else {
        return Err(EnvelopeError::NotAnObject);
    };
    let data = match obj.remove("data") {
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(EnvelopeError::DataNotText {
                kind: json_kind(&other),
            })
        }
        None => return Err(EnvelopeError::NoData),
    };
    let meta = obj.remove("meta").unwrap_or(Value::Null);
    Ok(Envelope { data, meta })
}

/// The body with `data` left unparsed: serde_json checks the string but does not copy it.
#[derive(serde::Deserialize)]
struct BodyWithRawData<'a> {
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
    #[serde(default)]
    meta: Value,
}

/// [`parse`] without unescaping the CSV: its text stays where it is in the body, so a 100,000-row
/// batch is neither copied nor read twice (the table reads it escaped, see
/// `Table::parse_json_escaped`). `None` when the body is not a JSON object with a string `data`
/// (and at most one `data`): [`parse`] then reads it and names the problem.
pub fn parse_keeping_data_escaped(body: &[u8]) -> Option<Envelope<EscapedCsv<'_>>> {
    let text = std::str::from_utf8(body).ok()?;
    data_first(text).or_else(|| {
        // serde would also read the struct from an array: only an object is a request.
        skip_whitespace(text).starts_with('{').then_some(())?;
        let parsed: BodyWithRawData = serde_json::from_str(text).ok()?;
        let escaped = parsed.data.get().strip_prefix('"')?.strip_suffix('"')?;
        Some(Envelope {
            data: EscapedCsv(escaped),
            meta: parsed.meta,
        })
    })
}

/// JSON's whitespace (narrower than Unicode's).
const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

fn skip_whitespace(s: &str) -> &str {
    s.trim_start_matches(JSON_WHITESPACE)
}

/// The layout DSDL sends, `{"data": "<CSV>", "meta": {...}}`, read without walking the CSV: its
/// end is the first quote that no backslash escapes, found with a vectorised search, and only
/// the (small) rest of the body is parsed. `None` for any other layout.
fn data_first(text: &str) -> Option<Envelope<EscapedCsv<'_>>> {
    let after_key =
        skip_whitespace(skip_whitespace(text).strip_prefix('{')?).strip_prefix("\"data\"")?;
    let data = skip_whitespace(skip_whitespace(after_key).strip_prefix(':')?).strip_prefix('"')?;
    let bytes = data.as_bytes();
    let mut from = 0;
    let end = loop {
        let quote = from + memchr::memchr(b'"', &bytes[from..])?;
        let backslashes = bytes[..quote]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 0 {
            break quote;
        }
        from = quote + 1;
    };
    let rest = skip_whitespace(&data[end + 1..]);
    let meta = if let Some(after) = rest.strip_prefix('}') {
        if !skip_whitespace(after).is_empty() {
            return None;
        }
        Value::Null
    } else {
        let members = skip_whitespace(rest.strip_prefix(',')?);
        if members.starts_with('}') {
            return None; // a trailing comma
        }
        let mut others: Map<String, Value> = serde_json::from_str(&format!("{{{members}")).ok()?;
        if others.contains_key("data") {
            return None;
        }
        others.remove("meta").unwrap_or(Value::Null)
    };
    Some(Envelope {
        data: EscapedCsv(&data[..end]),
        meta,
    })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// MLTK passes SPL arguments as strings that may still carry their double quotes.
pub fn unquote(s: &str) -> &str {
    let t = s.trim();
    t.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(t)
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(unquote(s).to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl<D> Envelope<D> {
    fn options(&self) -> Option<&Map<String, Value>> {
        self.meta.get("options").and_then(Value::as_object)
    }

    /// A `params` value from the SPL, unquoted.
    pub fn param(&self, key: &str) -> Option<String> {
        self.options()?.get("params")?.get(key).and_then(text_of)
    }

    /// Every `params` entry from the SPL as (key, unquoted text); values that are not text,
    /// numbers or booleans come back as `None`.
    pub fn params(&self) -> Vec<(String, Option<String>)> {
        self.options()
            .and_then(|o| o.get("params"))
            .and_then(Value::as_object)
            .map(|p| p.iter().map(|(k, v)| (k.clone(), text_of(v))).collect())
            .unwrap_or_default()
    }

    /// The label field a fit trains on: `meta.target_variables[0]` (what DSDL sends), else
    /// `meta.options.target_variable` (a string or a one-element list).
    pub fn target_variable(&self) -> Option<String> {
        let first = |v: &Value| match v {
            Value::Array(items) => items.first().and_then(text_of),
            other => text_of(other),
        };
        self.meta
            .get("target_variables")
            .and_then(first)
            .or_else(|| self.options()?.get("target_variable").and_then(first))
            .filter(|t| !t.is_empty())
    }

    /// The request's model name (`default` when absent, as in the stock container), algorithm
    /// and mode. A model name that is not text is refused: read as `default`, a fit would save
    /// over another model.
    pub fn options_summary(&self) -> Result<Options, EnvelopeError> {
        let model_name = match self.options().and_then(|o| o.get("model_name")) {
            None | Some(Value::Null) => None,
            Some(value) => Some(text_of(value).ok_or_else(|| {
                EnvelopeError::ModelNameNotText(crate::util::clip(&value.to_string(), 60))
            })?),
        };
        Ok(Options {
            model_name: model_name
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_string()),
            algo: self.param("algo").filter(|s| !s.is_empty()),
            stage: self.param("mode").as_deref() == Some("stage"),
        })
    }

    /// `meta` without the user's Splunk session key, safe to write to disk.
    pub fn meta_without_secrets(&self) -> Value {
        let mut meta = self.meta.clone();
        if let Some(options) = meta.get_mut("options").and_then(Value::as_object_mut) {
            options.remove("session_key");
        }
        meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_unquoted_and_defaulted() {
        let env = parse(br#"{"data":"src,query\n","meta":{"options":{"params":{"algo":"\"my_algo\"","mode":"\"stage\""},"model_name":"m1","session_key":"s3cret"}}}"#).unwrap();
        let o = env.options_summary().unwrap();
        assert_eq!(
            o,
            Options {
                model_name: "m1".into(),
                algo: Some("my_algo".into()),
                stage: true
            }
        );
        assert!(!env.meta_without_secrets().to_string().contains("s3cret"));
        let env = parse(br#"{"data":""}"#).unwrap();
        assert_eq!(
            env.options_summary().unwrap(),
            Options {
                model_name: "default".into(),
                algo: None,
                stage: false
            }
        );
    }

    #[test]
    fn lone_surrogate_escapes_become_the_replacement_character() {
        let env = parse(
            br#"{"data":"src,query,rank\na,x\ud800y.com,1\nb,\udc00\\ud800\ud83d\ude00.com,1\n"}"#,
        )
        .unwrap();
        // The paired escape stays the emoji; a `\\ud800` after an escaped backslash is text.
        assert_eq!(
            env.data,
            "src,query,rank\na,x\u{fffd}y.com,1\nb,\u{fffd}\\ud800\u{1f600}.com,1\n"
        );
        assert!(parse(br#"{"data": 1"#)
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
    }

    #[test]
    fn a_model_name_that_is_not_text_is_refused_not_defaulted() {
        let env = parse(br#"{"data":"","meta":{"options":{"model_name":["corp"]}}}"#).unwrap();
        let e = env.options_summary().unwrap_err().to_string();
        assert!(
            e.contains("model_name must be text") && e.contains("[\"corp\"]"),
            "{e}"
        );
        let env = parse(br#"{"data":"","meta":{"options":{"model_name":null}}}"#).unwrap();
        assert_eq!(env.options_summary().unwrap().model_name, "default");
    }

    #[test]
    fn fit_target_and_params_are_read_from_meta() {
        let env = parse(br#"{"data":"","meta":{"target_variables":["is_exfiltration"],"options":{"params":{"algo":"dnsexfil","epochs":"\"5\"","seed":3}}}}"#).unwrap();
        assert_eq!(env.target_variable().as_deref(), Some("is_exfiltration"));
        let mut params = env.params();
        params.sort();
        assert_eq!(
            params,
            vec![
                ("algo".into(), Some("dnsexfil".into())),
                ("epochs".into(), Some("5".into())),
                ("seed".into(), Some("3".into())),
            ]
        );
        let env = parse(br#"{"data":"","meta":{"options":{"target_variable":["y"]}}}"#).unwrap();
        assert_eq!(env.target_variable().as_deref(), Some("y"));
        let env = parse(br#"{"data":"","meta":{"target_variables":[]}}"#).unwrap();
        assert_eq!(env.target_variable(), None);
    }

    #[test]
    fn bad_bodies_are_explained() {
        assert!(parse(b"{\"data\": \"\xff\"}")
            .unwrap_err()
            .to_string()
            .contains("not UTF-8"));
        assert!(parse(b"{not json")
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        assert!(parse(b"[1]")
            .unwrap_err()
            .to_string()
            .contains("JSON object"));
        assert!(parse(b"{\"meta\":{}}")
            .unwrap_err()
            .to_string()
            .contains("no `data` field"));
        assert!(parse(b"{\"data\":5}")
            .unwrap_err()
            .to_string()
            .contains("not a number"));
    }

    /// What [`parse_keeping_data_escaped`] gives, with the data unescaped, next to [`parse`].
    fn both_ways(body: &str) -> (Option<(String, Value)>, Option<(String, Value)>) {
        let kept = parse_keeping_data_escaped(body.as_bytes()).map(|e| {
            let data: String = serde_json::from_str(&format!("\"{}\"", e.data.0)).unwrap();
            (data, e.meta)
        });
        let general = parse(body.as_bytes()).ok().map(|e| (e.data, e.meta));
        (kept, general)
    }

    #[test]
    fn data_kept_escaped_reads_as_the_general_parse() {
        let meta = r#"{"options": {"model_name": "m", "params": {"algo": "a"}}}"#;
        for body in [
            format!(r#"{{"data": "src,query\nh,q.example.com\n", "meta": {meta}}}"#),
            format!("\n {{ \"data\" :\t\"a,b\\nc,d\" ,\r\n \"meta\" : {meta} }} \n"),
            // Escaped quotes and backslashes, and backslash runs right before the closing quote.
            format!(r#"{{"data": "say \"hi\",\\", "meta": {meta}}}"#),
            format!(r#"{{"data": "x\\\"y\\\\", "meta": {meta}}}"#),
            r#"{"data": ""}"#.to_string(),
            r#"{"data": "a,b", "other": [1, {"data": 2}]}"#.to_string(),
            // Layouts for serde_json: `meta` first, or `data` written with an escape.
            format!(r#"{{"meta": {meta}, "data": "a,b\nc,d"}}"#),
            format!(r#"{{"d\u0061ta": "a,b", "meta": {meta}}}"#),
        ] {
            let (kept, general) = both_ways(&body);
            assert!(kept.is_some(), "{body}");
            assert_eq!(kept, general, "{body}");
        }
        // Not a well-formed body, or two `data` fields: left to the general parse, which names
        // the problem or keeps the last `data`.
        for body in [
            r#"{"data": "a,b",}"#,
            r#"{"data": "a,b"} x"#,
            r#"{"data": "a,b", "meta": {}"#,
            r#"{"data": "a,b", "data": "c,d"}"#,
            r#"{"data": "a,b""#,
            r#"{"data": 5}"#,
            r#"["data"]"#,
        ] {
            assert!(
                parse_keeping_data_escaped(body.as_bytes()).is_none(),
                "{body}"
            );
        }
        let (kept, general) = both_ways(r#"{"data": "a,b", "data": "c,d"}"#);
        assert_eq!((kept, general.unwrap().0), (None, "c,d".to_string()));
    }
}
