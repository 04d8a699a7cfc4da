//! Decoding a `/v1/score` body (JSON object or NDJSON lines) into events. A bad event never fails
//! the request: it becomes a per-event error in place, so the answer keeps one result per event.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorDetail};
use crate::util::clip;

/// One DNS event as a client sends it.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // documents the wire format; events are read from JSON values one by one
pub struct Event {
    /// Source host (text as sent; any string, e.g. an IP address).
    #[schema(example = "10.0.0.5")]
    pub src: String,
    /// The DNS query name.
    #[schema(example = "mzxw6ytboi2dgnzsgq3dmnzwgq2dgnrr.t.exfil-example.net")]
    pub query: String,
    /// 1 (or absent/null): the newest event of its (src, query) pair, scored. Any other number:
    /// an older event that only feeds the per-source history (`"scored": false`), as in DSDL.
    #[schema(example = 1)]
    pub rank: Option<f64>,
    /// Event time: Unix seconds (a number or a numeric string, as Splunk's `_time`) or RFC 3339
    /// (`2024-05-01T12:00:00Z`). The history remembers the event at this time (the arrival
    /// time when absent or unreadable), so a re-sent event is counted once. When every event
    /// of a request has its time, the request is scored with what its sources sent in the hour
    /// before it, so a stream cut into small requests is labelled nearly as one request would be.
    #[schema(schema_with = time_schema)]
    pub time: Option<Value>,
}

/// `time` in the document: a string, a number or null, as the service accepts it.
fn time_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Number, Type::Null]))
        .description(Some(
            "Event time: Unix seconds (a number or a numeric string, as Splunk's `_time`) or RFC 3339 (`2024-05-01T12:00:00Z`). The history remembers the event at this time (the arrival time when absent or unreadable), so a re-sent event is counted once. When every event of a request has its time, the request is scored with what its sources sent in the hour before it, so a stream cut into small requests is labelled nearly as one request would be.",
        ))
        .examples([serde_json::json!("2024-05-01T12:00:00Z")])
        .build()
}

/// The fields a JSON scoring request may have ([`ScoreRequest`]).
const BODY_FIELDS: [&str; 2] = ["model", "events"];

/// A JSON scoring request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documents the wire format; the body is read as a JSON value
pub struct ScoreRequest {
    /// Model to use; the same as `?model=` (both may be given only if they agree). Default: the
    /// built-in `dnsexfil_v7` when loaded, else the only loaded model.
    #[schema(example = "dnsexfil_v7")]
    pub model: Option<String>,
    /// The events, in order. History events (rank other than 1) of the same request are what the
    /// per-source features are computed from, so send a source's events together.
    pub events: Vec<Event>,
}

/// What the service made of one event, as it is decoded (texts borrowed from the body where
/// they need no unescaping).
#[derive(Debug)]
struct Decoded<'a> {
    /// `(src, query)` when both are usable: the event then feeds the per-source history.
    dns: Option<(Cow<'a, str>, Cow<'a, str>)>,
    kind: Kind,
    /// `time` as Unix seconds, when given in a form the history reads.
    time: Option<i64>,
}

#[derive(Debug, PartialEq)]
enum Kind {
    /// Rank 1: scored.
    Scored,
    /// Another rank: history only.
    History,
    /// Unusable; answered with this error.
    Invalid(ErrorDetail),
}

/// A decoded request: the model named in the body (JSON only) and the events in order.
///
/// Compact, because it outlives the request's work: the answer is written from it while it is
/// sent, so a client that reads slowly holds this (16 bytes an event beside its texts and
/// errors), never the answer (about 160 bytes an event).
#[derive(Debug, Default)]
pub struct Batch {
    pub model: Option<String>,
    /// The `src` then the `query` of every usable event, one after the other.
    text: String,
    slots: Vec<Slot>,
    /// The errors of the events that have one, in order.
    errors: Vec<ErrorDetail>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Where the event's `src` starts in `text`; its `query` follows it.
    start: u32,
    src_len: u32,
    /// [`NO_DNS`]: the event has no usable `src` and `query`.
    query_len: u32,
    /// [`SCORED`], [`HISTORY`], or [`INVALID`] plus the index of its error in `errors`.
    status: u32,
    /// Its `time` in Unix seconds, [`NO_TIME`] when none was readable.
    time: i64,
}

const NO_TIME: i64 = i64::MIN;

const NO_DNS: u32 = u32::MAX;
const SCORED: u32 = 0;
const HISTORY: u32 = 1;
const INVALID: u32 = 2;

/// One event of a [`Batch`].
#[derive(Debug, Clone, Copy)]
pub struct DecodedEvent<'a> {
    /// `(src, query)` when both are usable: the event then feeds the per-source history.
    pub dns: Option<(&'a str, &'a str)>,
    pub status: Status<'a>,
    /// Its `time` in Unix seconds, when given as a number, a numeric string or RFC 3339.
    pub time: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Status<'a> {
    /// Rank 1: scored.
    Scored,
    /// Another rank: history only.
    History,
    /// Unusable; answered with this error.
    Invalid(&'a ErrorDetail),
}

impl Batch {
    fn with_capacity(model: Option<String>, events: usize) -> Self {
        Self {
            model,
            slots: Vec::with_capacity(events),
            ..Default::default()
        }
    }

    fn push(&mut self, decoded: Decoded<'_>) {
        let Decoded {
            dns,
            mut kind,
            time,
        } = decoded;
        // Offsets are 32-bit: texts past 4 GiB in one request (a body limit raised that far) are
        // the event's error.
        let start = u32::try_from(self.text.len()).ok();
        let fits = |(src, query): &(Cow<str>, Cow<str>)| {
            let end = start? as usize + src.len() + query.len();
            (end < NO_DNS as usize).then_some((start?, src.len() as u32, query.len() as u32))
        };
        let (start, src_len, query_len) = match &dns {
            Some(texts) => match fits(texts) {
                Some(place) => {
                    self.text.push_str(&texts.0);
                    self.text.push_str(&texts.1);
                    place
                }
                None => {
                    kind = Kind::Invalid(ErrorDetail {
                        code: "invalid_event".into(),
                        message: format!(
                            "event {}: the texts of the request's events pass 4 GiB; send fewer events per request",
                            self.slots.len()
                        ),
                    });
                    (0, 0, NO_DNS)
                }
            },
            None => (0, 0, NO_DNS),
        };
        let status = match kind {
            Kind::Scored => SCORED,
            Kind::History => HISTORY,
            Kind::Invalid(error) => {
                // Each error takes far more than a byte: 4 billion of them cannot be held.
                let index = u32::try_from(self.errors.len())
                    .ok()
                    .and_then(|i| i.checked_add(INVALID))
                    .expect("fewer than 2^32 errors");
                self.errors.push(error);
                index
            }
        };
        self.slots.push(Slot {
            start,
            src_len,
            query_len,
            status,
            time: time.unwrap_or(NO_TIME),
        });
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Number of events with an error.
    pub fn errors(&self) -> usize {
        self.errors.len()
    }

    /// The `index`-th event (panics past the end, like a slice).
    pub fn get(&self, index: usize) -> DecodedEvent<'_> {
        let slot = self.slots[index];
        let dns = (slot.query_len != NO_DNS).then(|| {
            let start = slot.start as usize;
            let query_start = start + slot.src_len as usize;
            (
                &self.text[start..query_start],
                &self.text[query_start..query_start + slot.query_len as usize],
            )
        });
        let status = match slot.status {
            SCORED => Status::Scored,
            HISTORY => Status::History,
            error => Status::Invalid(&self.errors[(error - INVALID) as usize]),
        };
        let time = (slot.time != NO_TIME).then_some(slot.time);
        DecodedEvent { dns, status, time }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = DecodedEvent<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Bytes of memory it holds (what a client that has not read its answer yet keeps).
    pub fn held_bytes(&self) -> usize {
        self.text.capacity()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.errors.capacity() * std::mem::size_of::<ErrorDetail>()
            + self
                .errors
                .iter()
                .map(|e| e.code.capacity() + e.message.capacity())
                .sum::<usize>()
    }
}

/// The model a JSON body names, if it is a JSON object with a text `model` (not checked
/// further: [`from_json`] names any problem).
pub fn model_named(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<String>,
    }
    serde_json::from_slice::<Named>(body)
        .ok()?
        .model
        .filter(|m| !m.is_empty())
}

/// Reads a JSON body `{"model": ..., "events": [...]}`. The body is read shallowly first (the
/// events stay slices of the body) and the events are counted before any is decoded, so an
/// oversized request costs little more memory than its body.
pub fn from_json(body: &[u8], max_events: usize) -> Result<Batch, ApiError> {
    let invalid_json = |e: &dyn std::fmt::Display| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body is not valid JSON ({e}); send {{\"events\": [{{\"src\": \"...\", \"query\": \"...\"}}]}}"),
        )
    };
    let text = std::str::from_utf8(body).map_err(|e| invalid_json(&e))?;
    // Valid JSON at all? (`IgnoredAny` allocates nothing.)
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| invalid_json(&e))?;
    let object: HashMap<String, &RawValue> = serde_json::from_str(text).map_err(|_| {
        ApiError::unprocessable(
            "invalid_request",
            format!(
                "the body is JSON {}, not an object; send {{\"events\": [{{\"src\": \"...\", \"query\": \"...\"}}]}}",
                raw_type_name(text)
            ),
        )
    })?;
    // A misspelt `model` ("Model", "model_name") would otherwise score with the default model
    // without a word, so a field the body does not take is refused, named.
    let mut unknown: Vec<&str> = object
        .keys()
        .map(String::as_str)
        .filter(|key| !BODY_FIELDS.contains(key))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        let named: Vec<String> = unknown
            .iter()
            .take(3)
            .map(|key| format!("`{}`", clip(key, 40)))
            .collect();
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!(
                "the body has {} field{} it does not take: {}{}; a body takes only `model` and `events` (fields of an event go inside `events`)",
                unknown.len(),
                if unknown.len() == 1 { "" } else { "s" },
                named.join(", "),
                if unknown.len() > 3 { ", ..." } else { "" }
            ),
        ));
    }
    let model = match object.get("model").map(|raw| raw.get()) {
        None => None,
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(Value::Null) => None,
            Ok(Value::String(name)) => Some(name),
            _ => {
                return Err(ApiError::unprocessable(
                    "invalid_request",
                    format!(
                    "`model` must be a string naming a loaded model (see GET /v1/models), not {}",
                    raw_type_name(raw)
                ),
                ))
            }
        },
    };
    let Some(events) = object.get("events") else {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "the body has no `events` array; send {\"events\": [{\"src\": \"...\", \"query\": \"...\"}]}",
        ));
    };
    if !events.get().trim_start().starts_with('[') {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!(
                "`events` must be an array of event objects, not {}",
                raw_type_name(events.get())
            ),
        ));
    }
    let events = bounded_array(events.get(), max_events).map_err(|e| match e {
        Bounded::TooMany => too_many(max_events),
        Bounded::Invalid(e) => invalid_json(&e),
    })?;
    let mut batch = Batch::with_capacity(model, events.len());
    decode_into(&mut batch, &events, |i, raw| {
        decode_text(i, raw.get())
            .unwrap_or_else(|e| not_json(format!("event {i} is not JSON ({e})")))
    });
    Ok(batch)
}

enum Bounded {
    TooMany,
    Invalid(serde_json::Error),
}

/// The elements of a JSON array as slices of its text, refusing more than `max` before storing
/// them all.
fn bounded_array(text: &str, max: usize) -> Result<Vec<&RawValue>, Bounded> {
    struct Elements {
        max: usize,
    }
    const TOO_MANY: &str = "dnsexfil: too many elements";
    impl<'de> serde::de::Visitor<'de> for Elements {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(element) = seq.next_element::<&'de RawValue>()? {
                if out.len() == self.max {
                    return Err(serde::de::Error::custom(TOO_MANY));
                }
                out.push(element);
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserializer::deserialize_seq(&mut de, Elements { max }).map_err(|e| {
        if e.to_string().starts_with(TOO_MANY) {
            Bounded::TooMany
        } else {
            Bounded::Invalid(e)
        }
    })
}

/// The JSON type of a (valid) JSON text, from its first character.
fn raw_type_name(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't') | Some(b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Reads NDJSON: one event object per line; blank lines are skipped. A line that is not JSON is a
/// per-event error, like any other bad event. Lines are listed, up to the limit, before any is
/// decoded.
pub fn from_ndjson(body: &[u8], max_events: usize) -> Result<Batch, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the body is not UTF-8 text ({e}); send one JSON event object per line"),
        )
    })?;
    // Listed in one pass that stops past the limit: an oversized body never lists more.
    let mut lines: Vec<(usize, &str)> = Vec::new();
    for line in text
        .split('\n')
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        if lines.len() == max_events {
            return Err(too_many(max_events));
        }
        lines.push(line);
    }
    let mut batch = Batch::with_capacity(None, lines.len());
    decode_into(&mut batch, &lines, |i, &(line_no, line)| {
        decode_text(i, line).unwrap_or_else(|e| {
            not_json(format!(
                "line {} is not JSON ({e}); send one event object per line",
                line_no + 1
            ))
        })
    });
    Ok(batch)
}

/// An event that is not JSON, answered with `message`.
fn not_json(message: String) -> Decoded<'static> {
    Decoded {
        time: None,
        dns: None,
        kind: Kind::Invalid(ErrorDetail {
            code: "invalid_json".into(),
            message,
        }),
    }
}

/// Events decoded from a block at a time (bounding what is held besides the batch); a large
/// block is decoded on both cores, each event on its own, then added in order.
const DECODE_BLOCK: usize = 8192;

/// Decodes `items` (the `i`-th with `decode(i, item)`) into `batch`, in order.
fn decode_into<'a, T: Sync>(
    batch: &mut Batch,
    items: &'a [T],
    decode: impl Fn(usize, &'a T) -> Decoded<'a> + Sync,
) {
    use rayon::prelude::*;
    for (block_index, block) in items.chunks(DECODE_BLOCK).enumerate() {
        let first = block_index * DECODE_BLOCK;
        if !crate::util::pool::worth_splitting(block.len()) {
            for (k, item) in block.iter().enumerate() {
                batch.push(decode(first + k, item));
            }
            continue;
        }
        let decoded: Vec<Decoded<'a>> = block
            .par_iter()
            .enumerate()
            .with_min_len(1024)
            .map(|(k, item)| decode(first + k, item))
            .collect();
        for event in decoded {
            batch.push(event);
        }
    }
}

fn too_many(max_events: usize) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_events",
        format!("the request has more than {max_events} events, the limit; send fewer per request or raise --max-rows (DNSEXFIL_MAX_ROWS)"),
    )
}

/// Decodes one event from its JSON text; `Err` when the text is not JSON. Valid JSON that
/// serde_json cannot hold as a value (a number beyond f64's range, `1e999`) is read field by
/// field: an unreadable `src`, `query`, `rank` or `time` is the event's error, and an event
/// whose `src` and `query` are good still counts in its source's history, as with any other
/// bad rank. Other fields are ignored, readable or not.
fn decode_text(index: usize, text: &str) -> Result<Decoded<'_>, serde_json::Error> {
    match decode_plain(text) {
        Some(decoded) => Ok(decoded),
        None => decode_general(index, text),
    }
}

/// [`decode_text`] through a JSON value of the event, or field by field.
fn decode_general(index: usize, text: &str) -> Result<Decoded<'static>, serde_json::Error> {
    let not_a_value = match serde_json::from_str::<Value>(text) {
        Ok(event) => return Ok(decode(index, &event)),
        Err(e) => e,
    };
    let Ok(fields) = serde_json::from_str::<HashMap<String, &RawValue>>(text) else {
        return Err(not_a_value);
    };
    let mut readable = serde_json::Map::new();
    let mut unreadable = Vec::new();
    for (name, raw) in fields {
        if !KNOWN_FIELDS.contains(&name.as_str()) {
            continue;
        }
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(value) => {
                readable.insert(name, value);
            }
            Err(e) => unreadable.push(format!("`{name}` cannot be read ({e})")),
        }
    }
    if unreadable.is_empty() {
        return Ok(decode(index, &Value::Object(readable)));
    }
    unreadable.sort();
    let dns = decode(index, &Value::Object(readable)).dns;
    Ok(Decoded {
        time: None,
        dns,
        kind: Kind::Invalid(ErrorDetail {
            code: "invalid_event".into(),
            message: format!("event {index}: {}", unreadable.join("; ")),
        }),
    })
}

/// An event as most clients send it: an object with string `src` and `query`, a numeric or
/// null `rank` and a `time` that is a number, a string or null, each field once.
#[derive(Deserialize)]
struct PlainEvent<'a> {
    #[serde(borrow)]
    src: Option<Text<'a>>,
    #[serde(borrow)]
    query: Option<Text<'a>>,
    rank: Option<f64>,
    #[serde(borrow)]
    time: Option<Time<'a>>,
}

/// A `time` of a [`PlainEvent`] in the forms the history reads, its text borrowed from the body
/// (a JSON value of it would copy every event's time; null is `None` of the `Option`).
enum Time<'a> {
    Number(f64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Time<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Time<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a string")
            }
            // As `Value::as_f64` reads a JSON number.
            fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
                Ok(Time::Number(n))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Time::Number(n as f64))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Time::Number(n as f64))
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Time::Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Time::Text(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Time<'_> {
    /// As Unix seconds, when it is a time the history reads.
    fn seconds(&self) -> Option<i64> {
        match self {
            Time::Number(n) => crate::history::time_from_seconds(*n),
            Time::Text(text) => crate::history::parse_time(text),
        }
    }
}

/// A JSON string, borrowed from the body unless it had escapes (serde's own `Cow` would always
/// copy inside an `Option`).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// [`decode`] of an event that is a [`PlainEvent`], without building a JSON value of it and
/// keeping the texts in the body; `None` for anything else (a missing or mistyped field, a
/// repeated one, a number beyond f64, not JSON), which the general way decodes or explains.
fn decode_plain(text: &str) -> Option<Decoded<'_>> {
    // A derived struct also reads a JSON array by position (`["a","b",1,null]`): only objects.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let event: PlainEvent = serde_json::from_str(text).ok()?;
    let dns = (event.src?.0, event.query?.0);
    // A `time` that is not a number, text or null (an object, a boolean) failed the struct
    // above, for the general way to explain.
    let time = event.time.as_ref().and_then(Time::seconds);
    Some(Decoded {
        dns: Some(dns),
        kind: kind_of_rank(event.rank),
        time,
    })
}

/// An event's `time` as Unix seconds (`None`: null, or not a time the history reads); `Err`
/// when it is neither a number, a string nor null.
fn seconds_of(time: &Value) -> Result<Option<i64>, ()> {
    match time {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_f64().and_then(|n| Time::Number(n).seconds())),
        Value::String(text) => Ok(Time::Text(Cow::Borrowed(text)).seconds()),
        _ => Err(()),
    }
}

/// Rank 1 (or none) is scored; any other number feeds the history only.
fn kind_of_rank(rank: Option<f64>) -> Kind {
    match rank {
        None => Kind::Scored,
        Some(rank) if rank == 1.0 => Kind::Scored,
        Some(_) => Kind::History,
    }
}

/// The fields of an event the service reads.
const KNOWN_FIELDS: [&str; 4] = ["src", "query", "rank", "time"];

/// Checks one event. Like a DSDL row with an unreadable rank, an event whose `src` and `query`
/// are fine but whose `rank` or `time` is not still counts in its source's history.
fn decode(index: usize, event: &Value) -> Decoded<'static> {
    let invalid = |dns, message: String| Decoded {
        time: None,
        dns,
        kind: Kind::Invalid(ErrorDetail {
            code: "invalid_event".into(),
            message: format!("event {index}: {message}"),
        }),
    };
    let Value::Object(fields) = event else {
        return invalid(
            None,
            format!(
                "is JSON {}, not an object with string fields `src` and `query`",
                type_name(event)
            ),
        );
    };
    let text = |name: &str| match fields.get(name) {
        Some(Value::String(s)) => Ok(Cow::Owned(s.clone())),
        None => Err(format!(
            "`{name}` is missing; every event needs string fields `src` and `query`"
        )),
        Some(other) => Err(format!(
            "`{name}` must be a string, not {}",
            type_name(other)
        )),
    };
    let dns = match (text("src"), text("query")) {
        (Ok(src), Ok(query)) => (src, query),
        (Err(e), _) | (_, Err(e)) => return invalid(None, e),
    };
    let time = match fields.get("time").map(seconds_of) {
        None => None,
        Some(Ok(time)) => time,
        Some(Err(())) => {
            return invalid(
                Some(dns),
                format!(
                    "`time` must be a string or a number, not {}",
                    type_name(&fields["time"])
                ),
            )
        }
    };
    let kind = match fields.get("rank") {
        None | Some(Value::Null) => kind_of_rank(None),
        // A number f64 cannot hold is not 1.
        Some(Value::Number(n)) => kind_of_rank(Some(n.as_f64().unwrap_or(f64::NAN))),
        Some(other) => {
            return invalid(
                Some(dns),
                format!(
                    "`rank` must be a number (1 = score this event), not {}",
                    type_name(other)
                ),
            )
        }
    };
    Decoded {
        dns: Some(dns),
        kind,
        time,
    }
}

fn type_name(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) => format!("the number {}", clip(&n.to_string(), 20)),
        Value::String(s) => format!("the string \"{}\"", clip(s, 40)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(batch: &Batch) -> Vec<&str> {
        batch
            .iter()
            .map(|e| match e.status {
                Status::Scored => "scored",
                Status::History => "history",
                Status::Invalid(_) => "invalid",
            })
            .collect()
    }

    #[test]
    fn numbers_beyond_f64_are_the_events_error_and_a_good_src_and_query_still_count() {
        let body = br#"{"events": [
            {"src": "a", "query": "x.y", "rank": 1e999},
            {"src": "a", "query": "x.y", "extra": [1e999]},
            {"src": 1e999, "query": "x.y"}
        ]}"#;
        let batch = from_json(body, 100).unwrap();
        assert_eq!(kinds(&batch), ["invalid", "scored", "invalid"]);
        let feeds: Vec<bool> = batch.iter().map(|e| e.dns.is_some()).collect();
        assert_eq!(feeds, [true, true, false]);
        let Status::Invalid(e) = batch.get(0).status else {
            unreachable!()
        };
        assert_eq!(e.code, "invalid_event");
        assert!(
            e.message
                .starts_with("event 0: `rank` cannot be read (number out of range"),
            "{}",
            e.message
        );
        // NDJSON reads its lines the same way.
        let lines = from_ndjson(
            b"{\"src\": \"a\", \"query\": \"x.y\", \"rank\": 1e999}\n",
            10,
        )
        .unwrap();
        assert_eq!(
            (kinds(&lines)[0], lines.get(0).dns.is_some()),
            ("invalid", true)
        );
    }

    #[test]
    fn plain_events_decode_the_same_without_a_json_value() {
        let plain = [
            r#"{"src":"10.0.0.1","query":"a.example.com"}"#,
            r#"{"query":"a.example.com","src":"10.0.0.1","rank":1}"#,
            r#"{"src":"10.0.0.1","query":"a.example.com","rank":1.0,"time":1735862391}"#,
            r#"{"src":"10.0.0.1","query":"a.example.com","rank":2,"time":"1735862391.5"}"#,
            r#"{"src":"10.0.0.1","query":"a.example.com","rank":-0.0,"time":"2024-05-01T12:00:00Z"}"#,
            r#"{"src":"10.0.0.1","query":"a.example.com","rank":null,"time":null,"other":[1e999]}"#,
            r#" {"src":"h\u00e9\"x","query":"\\202.b\/c.example.com","time":"not a time"} "#,
            r#"{"src":"","query":"","rank":18446744073709551615,"time":-1e300}"#,
            r#"{"src":"a","query":"b","time":-86400}"#,
            r#"{"src":"a","query":"b","time":18446744073709551615}"#,
            r#"{"src":"a","query":"b","time":"17358\u003623\/"}"#,
            r#"{"src":"a","query":"b","time":" 2024-05-01T12:00:00+02:00 "}"#,
        ];
        for text in plain {
            let fast = decode_plain(text).unwrap_or_else(|| panic!("not plain: {text}"));
            let general = decode_general(0, text).unwrap();
            let owned = |d: &Decoded| d.dns.as_ref().map(|(s, q)| (s.to_string(), q.to_string()));
            assert_eq!(owned(&fast), owned(&general), "{text}");
            assert_eq!(
                (fast.kind, fast.time),
                (general.kind, general.time),
                "{text}"
            );
        }
        // Texts without escapes stay in the body.
        let text = r#"{"src":"10.0.0.1","query":"a.example.com"}"#;
        let (src, query) = decode_plain(text).unwrap().dns.unwrap();
        assert!(matches!((src, query), (Cow::Borrowed(_), Cow::Borrowed(_))));
        // Everything else is left to the general way, which names the problem.
        for text in [
            r#"{"src":"10.0.0.1"}"#,
            r#"{"src":1,"query":"a"}"#,
            r#"{"src":"a","query":"b","src":"c"}"#,
            r#"{"src":"a","query":"b","rank":"1"}"#,
            r#"{"src":"a","query":"b","time":true}"#,
            r#"{"src":"a","query":"b","time":{"s":1}}"#,
            r#"{"src":"a","query":"b","time":[1]}"#,
            r#"{"src":"a","query":"b","rank":1e999}"#,
            r#"["a","b"]"#,
            r#"["10.0.0.1","evil.example.com",1,null]"#,
            r#" ["a","b",2,5]"#,
            "not json",
        ] {
            assert!(decode_plain(text).is_none(), "{text}");
        }
    }

    #[test]
    fn the_model_a_body_names_is_read_without_its_events() {
        assert_eq!(
            model_named(br#"{"events": [{"src": "a"}], "model": "m"}"#).as_deref(),
            Some("m")
        );
        for body in [
            &br#"{"events": []}"#[..],
            br#"{"model": "", "events": []}"#,
            br#"{"model": null}"#,
            br#"{"model": 3}"#,
            b"[1]",
            b"not json",
        ] {
            assert_eq!(model_named(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn ranks_decide_what_is_scored_and_bad_events_stay_in_place() {
        let body = br#"{"model": "m", "events": [
            {"src": "a", "query": "x.y"},
            {"src": "a", "query": "x.y", "rank": 1.0, "time": 5},
            {"src": "a", "query": "x.y", "rank": 3},
            {"src": 7, "query": "x.y"},
            {"src": "a"},
            {"src": "a", "query": "q.y", "rank": "1"},
            "text"
        ]}"#;
        let batch = from_json(body, 100).unwrap();
        assert_eq!(batch.model.as_deref(), Some("m"));
        assert_eq!(
            kinds(&batch),
            ["scored", "scored", "history", "invalid", "invalid", "invalid", "invalid"]
        );
        // A bad rank keeps the event in the history, a bad src or query does not.
        let feeds: Vec<bool> = batch.iter().map(|e| e.dns.is_some()).collect();
        assert_eq!(feeds, [true, true, true, false, false, true, false]);
        let Status::Invalid(e) = batch.get(3).status else {
            unreachable!()
        };
        assert_eq!(
            e.message,
            "event 3: `src` must be a string, not the number 7"
        );
        let Status::Invalid(e) = batch.get(4).status else {
            unreachable!()
        };
        assert!(e.message.contains("`query` is missing"), "{}", e.message);
    }

    #[test]
    fn request_level_problems_are_errors_with_codes() {
        let code = |r: Result<Batch, ApiError>| r.unwrap_err().code;
        assert_eq!(code(from_json(b"{", 10)), "invalid_json");
        assert_eq!(code(from_json(b"[]", 10)), "invalid_request");
        assert_eq!(code(from_json(b"{}", 10)), "invalid_request");
        assert_eq!(code(from_json(br#"{"events": {}}"#, 10)), "invalid_request");
        assert_eq!(
            code(from_json(br#"{"events": [], "model": 3}"#, 10)),
            "invalid_request"
        );
        assert_eq!(
            code(from_json(br#"{"events": [1, 2, 3]}"#, 2)),
            "too_many_events"
        );
        assert_eq!(code(from_ndjson(b"{}\n{}\n{}\n", 2)), "too_many_events");
        // Exactly at the limit is fine: two events, each answered in place.
        assert_eq!(
            from_json(br#"{"events": [1, {"src": "a"}]}"#, 2)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(from_ndjson(b"{}\n{}\n", 2).unwrap().len(), 2);
        assert_eq!(code(from_ndjson(b"\xff", 2)), "invalid_json");
    }

    #[test]
    fn a_field_the_body_does_not_take_is_refused_by_name() {
        let refused = from_json(br#"{"Model": "escu", "events": []}"#, 10).unwrap_err();
        assert_eq!(refused.code, "invalid_request");
        assert!(refused.message.contains("`Model`"), "{}", refused.message);
        assert!(
            refused.message.contains("`model` and `events`"),
            "{}",
            refused.message
        );
        let refused =
            from_json(br#"{"events": [], "a": 1, "b": 2, "c": 3, "d": 4}"#, 10).unwrap_err();
        assert!(
            refused.message.contains("4 fields") && refused.message.contains("`a`, `b`, `c`, ..."),
            "{}",
            refused.message
        );
        // The two fields it takes, null model included.
        assert!(from_json(br#"{"model": null, "events": []}"#, 10).is_ok());
    }

    #[test]
    fn ndjson_skips_blank_lines_and_reports_bad_lines_in_place() {
        let body = b"{\"src\":\"a\",\"query\":\"b.c\"}\r\n\n  \nnot json\n{\"src\":\"a\",\"query\":\"d.c\",\"rank\":2}";
        let batch = from_ndjson(body, 10).unwrap();
        assert_eq!(kinds(&batch), ["scored", "invalid", "history"]);
        let Status::Invalid(e) = batch.get(1).status else {
            unreachable!()
        };
        assert_eq!(e.code, "invalid_json");
        assert!(e.message.starts_with("line 4 is not JSON"), "{}", e.message);
    }
}
