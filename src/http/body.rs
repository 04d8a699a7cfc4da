//! Reading request bodies within their size limit and the in-flight budget, and what a request
//! refused for either is answered.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;

use crate::http::refusal::Refusal;
use crate::http::state::AppState;

#[derive(Debug)]
pub enum BodyError {
    TooLarge {
        limit: usize,
        received: usize,
    },
    Read(String),
    /// The bodies of the requests in flight already take the budget (`--max-bodies-in-flight-mb`).
    Busy {
        budget: usize,
        /// The body's bytes, read to its end and discarded.
        received: usize,
    },
}

/// Memory of a request counted against the budget for bodies in flight, until dropped: its body,
/// then its answer (which is counted before it is made, see [`BodyBudget::grow_to`]).
pub struct BodyBudget {
    budget: Option<Arc<tokio::sync::Semaphore>>,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The bytes a refused answer needed, and whether it could ever fit; kept for the log.
    refusal: Option<(usize, Room)>,
}

impl BodyBudget {
    /// Counts nothing, and has room for anything.
    pub fn none() -> Self {
        Self {
            budget: None,
            held: None,
            refusal: None,
        }
    }

    /// Counts `bytes` in all for this request (more than its body: the answer it is about to
    /// make), if the budget has room now. Never waits: the caller holds a compute permit.
    pub fn grow_to(&mut self, bytes: usize, state: &AppState) -> Room {
        let Some(budget) = &self.budget else {
            return Room::Counted;
        };
        let held = self.held.as_ref().map_or(0, |p| p.num_permits());
        let more = bytes.div_ceil(1024).saturating_sub(held);
        if more == 0 {
            return Room::Counted;
        }
        if bytes > state.config.limits.max_body_bytes_in_flight {
            self.refusal = Some((bytes, Room::Never));
            return Room::Never;
        }
        let acquired = u32::try_from(more)
            .ok()
            .and_then(|more| budget.clone().try_acquire_many_owned(more).ok());
        match (acquired, self.held.as_mut()) {
            (Some(permit), Some(held)) => held.merge(permit),
            (Some(permit), None) => self.held = Some(permit),
            (None, _) => {
                self.refusal = Some((bytes, Room::Busy));
                return Room::Busy;
            }
        }
        Room::Counted
    }

    /// Whether [`BodyBudget::grow_to`] found no room now (`Room::Busy`).
    pub fn refused(&self) -> bool {
        self.refused_answer_bytes().is_some()
    }

    /// The bytes of the answer [`BodyBudget::grow_to`] found no room for now (`Room::Busy`).
    pub fn refused_answer_bytes(&self) -> Option<usize> {
        self.refusal
            .filter(|(_, room)| *room == Room::Busy)
            .map(|(bytes, _)| bytes)
    }

    /// The bytes of an answer larger than the whole budget (`Room::Never`).
    pub fn too_large_answer_bytes(&self) -> Option<usize> {
        self.refusal
            .filter(|(_, room)| *room == Room::Never)
            .map(|(bytes, _)| bytes)
    }
}

/// Whether the budget has room for a request's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Counted: make it.
    Counted,
    /// Not now ([`BodyBudget::refused`]): refuse with 503 and `Retry-After`.
    Busy,
    /// Never: it is larger than the whole budget.
    Never,
}

impl Room {
    /// What the request is told when there is no room, `None` when counted.
    pub fn refusal(self, needed: usize, budget: usize) -> Option<String> {
        match self {
            Room::Counted => None,
            Room::Busy => Some(format!(
                "the bodies and answers of the requests in flight already take the {} MiB they may hold at once (--max-bodies-in-flight-mb, DNSEXFIL_MAX_BODIES_IN_FLIGHT_MB), and this request's answer would not fit; retry shortly",
                budget >> 20
            )),
            Room::Never => Some(format!(
                "the answer to this request needs up to {} MiB, more than the {} MiB all requests in flight may hold at once (--max-bodies-in-flight-mb, DNSEXFIL_MAX_BODIES_IN_FLIGHT_MB); send fewer rows or events per request, or raise it",
                needed.div_ceil(1 << 20),
                budget >> 20
            )),
        }
    }
}

/// Reads the body up to `limit` bytes, counting it against `state`'s budget for bodies in
/// flight as it arrives. An over-limit body is read to its end and discarded (up to 1 GiB), so a
/// client that sends the whole body before reading (Splunk's urllib does) receives our error
/// message instead of a reset connection; likewise a body that would take the bodies of all requests over the budget is read to its
/// end and discarded (so the client gets the answer), then refused with `BodyError::Busy`.
/// The returned guard keeps the body counted; drop it when the body's memory is freed.
pub async fn read_body_budgeted(
    body: Body,
    limit: usize,
    state: &AppState,
) -> Result<(Bytes, BodyBudget), BodyError> {
    let mut body = body;
    let budget = &state.body_budget;
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut counted_kib = 0usize;
    let declared = http_body::Body::size_hint(&body)
        .exact()
        .and_then(|n| usize::try_from(n).ok());
    let mut buf: Vec<u8> = Vec::new();
    let mut reserved = false;
    let (mut received, mut refused) = (0usize, false);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len();
        if received > limit || refused {
            if received > DRAIN_CAP {
                break;
            }
            buf = Vec::new();
            held = None;
            continue;
        }
        let needed_kib = received.div_ceil(1024);
        if needed_kib > counted_kib {
            let more = u32::try_from(needed_kib - counted_kib).unwrap_or(u32::MAX);
            match budget.clone().try_acquire_many_owned(more) {
                Ok(permit) => {
                    counted_kib = needed_kib;
                    match held.as_mut() {
                        Some(h) => h.merge(permit),
                        None => held = Some(permit),
                    }
                }
                Err(_) => {
                    refused = true;
                    buf = Vec::new();
                    held = None;
                    continue;
                }
            }
        }
        if !reserved {
            // A declared length within the limit is reserved at once (once it is counted):
            // a large body is then copied once, not at every doubling of the buffer.
            buf.reserve(declared.filter(|&n| n <= limit).unwrap_or(0));
            reserved = true;
        }
        buf.extend_from_slice(&data);
    }
    if received > limit {
        return Err(BodyError::TooLarge { limit, received });
    }
    if refused {
        return Err(BodyError::Busy {
            budget: state.config.limits.max_body_bytes_in_flight,
            received,
        });
    }
    Ok((
        Bytes::from(buf),
        BodyBudget {
            budget: Some(budget.clone()),
            held,
            refusal: None,
        },
    ))
}

/// Bodies larger than this are not even drained: the connection is dropped instead.
const DRAIN_CAP: usize = 1 << 30;

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { limit, received } => Refusal::BodyTooLarge { limit, received },
            BodyError::Read(e) => Refusal::BodyUnreadable(e),
            BodyError::Busy { budget, received } => Refusal::BodiesInFlight { budget, received },
        }
    }
}
