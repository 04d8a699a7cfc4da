//! Streaming equivalence: an hour of a network's DNS events sent to `/v1/score` as one request,
//! as 100-event requests or one event per request (in time order, each with its `time`) gets
//! the same labels, because each request is scored with what its sources sent earlier in the
//! hour (the in-process history; Redis in `tests/history_redis.rs`). Over the development
//! log's hours and over a tunnel riding on a busy host's hour, through the real binary.

mod common;

use common::dev_stream::{
    dev_hour, dev_log, hours_by_tunnel_events, labels_of, probabilities_of, DevEvent,
};
use common::ServedBinary;

/// A fresh service (its own empty history) with `history` (`memory` or `off`).
fn service(history: &str) -> ServedBinary {
    ServedBinary::start(&[
        "--enable-https".as_ref(),
        "false".as_ref(),
        "--history".as_ref(),
        history.as_ref(),
    ])
}

/// The labels of `events` sent in time order, `per_request` at a time, to a fresh service
/// (`None` for events not scored).
fn labels_streamed(history: &str, events: &[DevEvent], per_request: usize) -> Vec<Option<i64>> {
    let served = service(history);
    let mut labels = Vec::with_capacity(events.len());
    for part in events.chunks(per_request) {
        labels.extend(labels_of(&served, part));
    }
    labels
}

/// Of the scored events (by `one_request`) among `which`: how many, and how many of them got
/// the same label when streamed.
fn agreeing(
    one_request: &[Option<i64>],
    streamed: &[Option<i64>],
    which: impl Fn(usize) -> bool,
) -> (usize, usize) {
    let scored: Vec<usize> = (0..one_request.len())
        .filter(|&i| one_request[i].is_some() && which(i))
        .collect();
    let same = scored
        .iter()
        .filter(|&&i| one_request[i] == streamed[i])
        .count();
    (scored.len(), same)
}

/// The dev log's four hours with the most tunnel events: 6,000 events from every source of the
/// network, the tunnels among them.
#[test]
fn a_dev_hour_streamed_in_small_requests_gets_the_labels_of_one_request() {
    let (events, tunnels) = dev_log();
    let chosen: Vec<Vec<DevEvent>> = hours_by_tunnel_events(&events, &tunnels)[..4]
        .iter()
        .map(|&h| dev_hour(&events, h))
        .collect();
    let is_tunnel = |e: &DevEvent| tunnels.contains(&(e.src.clone(), e.query.clone()));
    for per_request in [100, 1] {
        let (mut scored, mut same, mut tunnel_caught, mut tunnel_caught_streamed) = (0, 0, 0, 0);
        for hour in &chosen {
            let one_request = labels_streamed("memory", hour, hour.len());
            let streamed = labels_streamed("memory", hour, per_request);
            let (n, s) = agreeing(&one_request, &streamed, |_| true);
            scored += n;
            same += s;
            for (i, event) in hour.iter().enumerate() {
                if is_tunnel(event) {
                    tunnel_caught += usize::from(one_request[i] == Some(1));
                    tunnel_caught_streamed += usize::from(streamed[i] == Some(1));
                }
            }
        }
        let share = same as f64 / scored as f64;
        println!(
            "{per_request} per request: {same} of {scored} labels as in one request ({share:.4}); tunnel events caught {tunnel_caught_streamed} streamed, {tunnel_caught} in one request"
        );
        assert!(scored > 4_000, "{scored} scored events");
        if per_request == 1 {
            // Each request scored alone (no history): the labels depend on how the stream
            // was cut, which is what the history removes.
            let (mut alone_scored, mut alone_same) = (0, 0);
            for hour in &chosen {
                let one_request = labels_streamed("off", hour, hour.len());
                let alone = labels_streamed("off", hour, 1);
                let (n, s) = agreeing(&one_request, &alone, |_| true);
                alone_scored += n;
                alone_same += s;
            }
            println!("1 per request without history: {alone_same} of {alone_scored} labels as in one request");
            assert!(alone_same < same, "{alone_same} alone, {same} with history");
        }
        assert!(share >= 0.99, "{same} of {scored} labels the same");
        assert!(
            tunnel_caught_streamed as f64 >= 0.9 * tunnel_caught as f64 && tunnel_caught > 2_000,
            "tunnel events caught: {tunnel_caught_streamed} streamed, {tunnel_caught} in one request"
        );
    }
}

/// A hex tunnel of 60 names riding on the busiest host of the dev log's busiest hour without a
/// tunnel: streamed one event per request, its events keep the labels one request gives them.
#[test]
fn a_tunnel_riding_on_a_busy_host_streamed_one_event_at_a_time_keeps_its_labels() {
    let (events, tunnels) = dev_log();
    // The busiest hour without a tunnel.
    let hours = (events.last().unwrap().time - events[0].time) / 3600 + 1;
    let mut hour = (0..hours)
        .map(|h| dev_hour(&events, h))
        .filter(|hour| {
            hour.iter()
                .all(|e| !tunnels.contains(&(e.src.clone(), e.query.clone())))
        })
        .max_by_key(|hour| hour.len())
        .unwrap();
    let mut per_source = std::collections::HashMap::<&str, usize>::new();
    for e in &hour {
        *per_source.entry(&e.src).or_default() += 1;
    }
    let (busiest, busy) = per_source
        .iter()
        .max_by_key(|&(src, n)| (*n, *src))
        .map(|(src, n)| (src.to_string(), *n))
        .unwrap();
    assert!(busy >= 50, "the busiest host sent {busy} events");
    let start = hour[0].time;
    let mut state = 0x5eed_u64;
    let tunnel: Vec<DevEvent> = (0..60)
        .map(|i| {
            let chunk: String = (0..24)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    char::from(b"0123456789abcdef"[(state >> 60) as usize])
                })
                .collect();
            DevEvent {
                src: busiest.clone(),
                query: format!("{chunk}.s{i}.sync-relay-cdn.net"),
                rank: 1,
                time: start + 30 + i * 59,
            }
        })
        .collect();
    hour.extend(tunnel.iter().cloned());
    hour.sort_by_key(|e| e.time);
    let riding = |e: &DevEvent| e.query.ends_with(".sync-relay-cdn.net");
    let one_request = labels_streamed("memory", &hour, hour.len());
    let caught = hour
        .iter()
        .zip(&one_request)
        .filter(|(e, l)| riding(e) && **l == Some(1))
        .count();
    assert!(
        caught >= 54,
        "one request caught {caught} of 60 tunnel events"
    );
    let tunnel_events =
        |labels: &[Option<i64>]| agreeing(&one_request, labels, |i| riding(&hour[i]));
    let streamed = labels_streamed("memory", &hour, 1);
    let (n, same) = tunnel_events(&streamed);
    println!("tunnel events with the one request's label when streamed: {same} of {n}");
    assert!(same as f64 >= 0.9 * n as f64, "{same} of {n}");
    let (scored, agree) = agreeing(&one_request, &streamed, |_| true);
    assert!(agree as f64 >= 0.99 * scored as f64, "{agree} of {scored}");
}

/// A retried request (the same events, the same times) is scored exactly as the first time:
/// what it reads from the hour before it never includes itself, even the events of its first
/// second, which other requests of that second do see.
#[test]
fn a_retried_request_gets_the_same_answer() {
    let (events, tunnels) = dev_log();
    let hour = dev_hour(&events, hours_by_tunnel_events(&events, &tunnels)[0]);
    let served = service("memory");
    let parts: Vec<&[DevEvent]> = hour.chunks(50).take(12).collect();
    for part in &parts {
        let first = probabilities_of(&served, part);
        let again = probabilities_of(&served, part);
        assert_eq!(first, again);
        assert!(first.iter().any(Option::is_some));
    }
}
