//! The development log as a stream of `/v1/score` events: its hours moved to the last day (the
//! history keeps a day), and the labels a service gives a slice of them.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::{fixtures, ServedBinary, TOKEN};

/// One event of the development log.
#[derive(Clone)]
pub struct DevEvent {
    pub src: String,
    pub query: String,
    pub rank: u32,
    pub time: i64,
}

/// The development log's events in time order, and its tunnel (src, query) pairs.
pub fn dev_log() -> (Vec<DevEvent>, HashSet<(String, String)>) {
    let dev = fixtures().join("dev");
    let mut reader = csv::Reader::from_path(dev.join("events.csv")).unwrap();
    let mut events: Vec<DevEvent> = reader
        .deserialize::<(String, String, u32, i64)>()
        .map(|row| {
            let (src, query, rank, time) = row.unwrap();
            DevEvent {
                src,
                query,
                rank,
                time,
            }
        })
        .collect();
    events.sort_by_key(|e| e.time);
    let labels = dnsexfil::data::dataset::read_labels(&dev.join("labels.csv")).unwrap();
    let tunnels = labels
        .into_iter()
        .filter(|&(_, label)| label == 1.0)
        .map(|(pair, _)| pair)
        .collect();
    (events, tunnels)
}

/// The `hour`-th hour of the log from its first event, moved to the last whole hours before now
/// (the history keeps a day) by a whole number of hours, so its five-minute buckets fall as in
/// the log.
pub fn dev_hour(events: &[DevEvent], hour: i64) -> Vec<DevEvent> {
    let start = events[0].time + hour * 3600;
    let end = start + 3600;
    let shift = (dnsexfil::history::unix_now() - 600 - end).div_euclid(3600) * 3600;
    events
        .iter()
        .filter(|e| (start..end).contains(&e.time))
        .map(|e| DevEvent {
            time: e.time + shift,
            ..e.clone()
        })
        .collect()
}

/// The log's hours (from its first event), those holding the most tunnel events first.
pub fn hours_by_tunnel_events(
    events: &[DevEvent],
    tunnels: &HashSet<(String, String)>,
) -> Vec<i64> {
    let hours = (events.last().unwrap().time - events[0].time) / 3600 + 1;
    let mut counted: Vec<(usize, i64)> = (0..hours)
        .map(|h| {
            let tunnel_events = dev_hour(events, h)
                .iter()
                .filter(|e| tunnels.contains(&(e.src.clone(), e.query.clone())))
                .count();
            (tunnel_events, h)
        })
        .collect();
    counted.sort_unstable_by(|a, b| b.cmp(a));
    counted.into_iter().map(|(_, h)| h).collect()
}

/// The results `served` gives `events` (JSON event objects) sent as one `/v1/score` request.
pub fn score_results(served: &ServedBinary, events: Value) -> Vec<Value> {
    let resp = super::TestServer::client()
        .post(format!("http://{}/v1/score", served.address))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .json(&json!({ "events": events }))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut answer: Value = resp.json().unwrap();
    match answer["results"].take() {
        Value::Array(results) => results,
        other => panic!("results: {other}"),
    }
}

/// The results `served` gives `events` of the log sent as one `/v1/score` request, with their
/// ranks and times.
pub fn results_of(served: &ServedBinary, events: &[DevEvent]) -> Vec<Value> {
    let body: Vec<Value> = events
        .iter()
        .map(|e| json!({"src": e.src, "query": e.query, "rank": e.rank, "time": e.time}))
        .collect();
    score_results(served, Value::Array(body))
}

/// The labels `served` gives `events` sent as one `/v1/score` request (`None` for events not
/// scored).
pub fn labels_of(served: &ServedBinary, events: &[DevEvent]) -> Vec<Option<i64>> {
    results_of(served, events)
        .iter()
        .map(|r| r["label"].as_i64())
        .collect()
}

/// The probabilities `served` gives `events` sent as one `/v1/score` request (`None` for events
/// not scored).
pub fn probabilities_of(served: &ServedBinary, events: &[DevEvent]) -> Vec<Option<f64>> {
    results_of(served, events)
        .iter()
        .map(|r| r["probability"].as_f64())
        .collect()
}
