//! Request limits: at most N requests in flight (more are refused at once with 429, so a burst
//! cannot queue unbounded work), and a time limit per request (503). Each route family answers
//! in its own error format: /v1 JSON errors, or DSDL's `{"status": "error", ...}` body.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tokio::sync::Semaphore;

use crate::engine::memory::LargeRequest;
use crate::http::refusal::{Flavor, Refusal};

pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 256;
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 120;
/// Default for `--max-bodies-in-flight-mb`.
pub const DEFAULT_MAX_BODIES_IN_FLIGHT_MB: usize = 256;

/// The limits `serve` enforces (`--max-concurrent-requests`, `--request-timeout-secs`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests in flight at once on the limited routes (health, readiness and metrics are not).
    pub max_concurrent_requests: usize,
    /// Longest a request may take, body upload included (`POST /fit`: its upload only).
    pub request_timeout: Duration,
    /// Bytes of request bodies held at once by all requests together; a body that would go
    /// over is refused with 503 and `Retry-After`.
    pub max_body_bytes_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            request_timeout: Duration::from_secs(DEFAULT_REQUEST_TIMEOUT_SECS),
            max_body_bytes_in_flight: DEFAULT_MAX_BODIES_IN_FLIGHT_MB << 20,
        }
    }
}

#[derive(Clone)]
struct Guard {
    in_flight: Arc<Semaphore>,
    limit: usize,
    timeout: Option<Duration>,
    flavor: Flavor,
    /// The budget for bodies in flight, which answers not yet sent count against too.
    body_budget: Arc<Semaphore>,
}

/// Marks an answer whose memory its handler counted against the budget before making it, and
/// keeps counted until it is sent: not counted again here.
#[derive(Debug, Clone, Copy)]
pub struct Budgeted;

/// Counts an answer not yet sent against the budget for bodies in flight, as far as the budget
/// goes (the answer exists already: it is sent whatever the budget). New bodies are then refused
/// while answers that clients do not read hold the memory.
fn count_answer(
    budget: &Arc<Semaphore>,
    resp: &Response,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if resp.extensions().get::<Budgeted>().is_some() {
        return None;
    }
    let bytes = http_body::Body::size_hint(resp.body()).exact()?;
    let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    let available = u32::try_from(budget.available_permits()).unwrap_or(u32::MAX);
    let take = kib.min(available);
    (take > 0)
        .then(|| budget.clone().try_acquire_many_owned(take).ok())
        .flatten()
}

/// Puts the routes of `router` under the in-flight limit shared by all limited routes
/// (`in_flight`, one permit per request), and under the time limit when `timed`; answers not yet
/// sent count against `body_budget`.
pub fn guard<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    in_flight: &Arc<Semaphore>,
    body_budget: &Arc<Semaphore>,
    limits: &Limits,
    flavor: Flavor,
    timed: bool,
) -> Router<S> {
    let guard = Guard {
        in_flight: in_flight.clone(),
        limit: limits.max_concurrent_requests,
        timeout: timed.then_some(limits.request_timeout),
        flavor,
        body_budget: body_budget.clone(),
    };
    router.route_layer(middleware::from_fn_with_state(guard, enforce))
}

async fn enforce(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    // A request in flight holds a permit until its answer has been sent (or the connection is
    // gone), not only until the answer is made: a client that reads slowly, or not at all, still
    // counts, and so does the memory its answer holds.
    let Ok(permit) = guard.in_flight.clone().try_acquire_owned() else {
        return Refusal::TooManyRequests { limit: guard.limit }.answer(guard.flavor, &path);
    };
    let Some(limit) = guard.timeout else {
        let resp = next.run(req).await;
        let answer = count_answer(&guard.body_budget, &resp);
        return holding_until_sent(resp, (permit, answer));
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => {
            let answer = count_answer(&guard.body_budget, &resp);
            holding_until_sent(resp, (permit, answer))
        }
        // CPU work already started finishes in the background (it holds its compute slot), so
        // the cores are never oversubscribed; only the answer is given up.
        Err(_) => Refusal::TimedOut { limit }.answer(guard.flavor, &path),
    }
}

/// `resp` with `held` kept alive until its body has been sent or dropped, and until the last
/// piece of a large answer has been written (see [`AnswerBuffer`]).
pub(crate) fn holding_until_sent<T: Send + Sync + 'static>(resp: Response, held: T) -> Response {
    resp.map(|inner| {
        Body::new(Holding {
            inner,
            rest: Bytes::new(),
            held: Arc::new(held),
        })
    })
}

/// Largest piece of an answer handed to hyper at once. hyper asks for the next piece only when
/// it has room to send it, so a body is finished (and dropped) only when all but its last
/// piece or two have gone to the client; a whole answer handed over at once would end its
/// body at once, however slowly the client reads.
///
/// The pieces of an answer larger than one piece are slices of it, not copies (a copy cost a
/// 100,000-row `/apply` 7.7 MB of memory copied): the answer then lives until hyper drops its
/// last piece, and so does what the body holds ([`AnswerBuffer`]).
const PIECE_BYTES: usize = 1 << 20;

/// A large answer's buffer, owned by the slices it is sent in: when hyper drops the last of
/// them, the buffer is freed first (fields drop in order), then the guard whose end hands the
/// memory back ([`LargeRequest::answer`], one per large part of an answer), then its share of
/// what the body holds: the request's in-flight permit and its answer's place in the budget
/// end only when the body has ended and every buffer of its answer is freed, however slowly
/// the client reads the last pieces.
struct AnswerBuffer<T> {
    data: Bytes,
    _release: Option<LargeRequest>,
    _held: Arc<T>,
}

impl<T> AsRef<[u8]> for AnswerBuffer<T> {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// A response body that keeps something alive (the request's in-flight permit) as long as the
/// body itself: until hyper has taken its last piece, or drops it with the connection, and
/// until the buffers of a large answer are freed.
struct Holding<T> {
    inner: Body,
    /// What is left of a data frame larger than a piece (a slice of an [`AnswerBuffer`]).
    rest: Bytes,
    held: Arc<T>,
}

impl<T: Send + Sync + 'static> http_body::Body for Holding<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.len() <= PIECE_BYTES => {
                        return Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Ok(data) => {
                        let release = LargeRequest::answer(data.len());
                        this.rest = Bytes::from_owner(AnswerBuffer {
                            data,
                            _release: release,
                            _held: this.held.clone(),
                        });
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return Poll::Ready(other),
            }
        }
        let take = this.rest.len().min(PIECE_BYTES);
        let piece = this.rest.split_to(take);
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A route `/big` answering `len` bytes behind the in-flight guard (one request at a time, a
    /// budget of 4 MiB counted in KiB), with the guard's semaphores.
    fn guarded_answer_of(len: usize) -> (Router, Arc<Semaphore>, Arc<Semaphore>) {
        let in_flight = Arc::new(Semaphore::new(1));
        let body_budget = Arc::new(Semaphore::new(4096));
        let guard = Guard {
            in_flight: in_flight.clone(),
            limit: 1,
            timeout: Some(Duration::from_secs(60)),
            flavor: Flavor::V1,
            body_budget: body_budget.clone(),
        };
        let app = Router::new()
            .route("/big", get(move || async move { vec![b'x'; len] }))
            .route_layer(middleware::from_fn_with_state(guard, enforce));
        (app, in_flight, body_budget)
    }

    #[tokio::test]
    async fn an_answer_counts_as_in_flight_until_its_body_is_sent() {
        let (app, in_flight, body_budget) = guarded_answer_of(1 << 20);
        let request = || Request::get("/big").body(Body::empty()).unwrap();
        let resp = app.clone().oneshot(request()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // Made but not yet read: still in flight, so the next request is refused, and its
        // 1 MiB counts against the budget for bodies.
        assert_eq!(in_flight.available_permits(), 0);
        assert_eq!(body_budget.available_permits(), 4096 - 1024);
        let refused = app.clone().oneshot(request()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 1 << 20);
        assert_eq!(in_flight.available_permits(), 1);
        assert_eq!(body_budget.available_permits(), 4096);
        // An answer dropped unsent (the client went away) gives its permit back too.
        let resp = app.clone().oneshot(request()).await.unwrap();
        assert_eq!(in_flight.available_permits(), 0);
        drop(resp);
        assert_eq!(in_flight.available_permits(), 1);
        assert_eq!(body_budget.available_permits(), 4096);
    }

    #[tokio::test]
    async fn a_large_answer_counts_until_its_last_piece_is_dropped() {
        let (app, in_flight, body_budget) = guarded_answer_of(5 * PIECE_BYTES / 2);
        let resp = app
            .oneshot(Request::get("/big").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let mut body = resp.into_body();
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            pieces.push(frame.unwrap().into_data().unwrap());
        }
        drop(body);
        // The body has ended, but hyper would still hold pieces not yet written: the answer's
        // buffer lives, so the request still counts, its answer too.
        assert_eq!(pieces.len(), 3);
        assert_eq!(in_flight.available_permits(), 0);
        assert_eq!(body_budget.available_permits(), 4096 - 2560);
        drop(pieces);
        assert_eq!(in_flight.available_permits(), 1);
        assert_eq!(body_budget.available_permits(), 4096);
    }

    #[tokio::test]
    async fn a_large_answer_is_handed_over_in_pieces_with_its_exact_length() {
        let resp = holding_until_sent(vec![7u8; 5 * PIECE_BYTES / 2].into_response(), ());
        let mut body = resp.into_body();
        assert_eq!(
            http_body::Body::size_hint(&body).exact(),
            Some(5 * PIECE_BYTES as u64 / 2)
        );
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            pieces.push(frame.unwrap().into_data().unwrap().len());
        }
        assert_eq!(pieces, [PIECE_BYTES, PIECE_BYTES, PIECE_BYTES / 2]);
    }

    #[tokio::test]
    async fn a_large_answer_is_sent_as_slices_of_itself_in_order() {
        let answer: Vec<u8> = (0..5 * PIECE_BYTES / 2).map(|i| (i % 251) as u8).collect();
        let expected = answer.clone();
        let start = answer.as_ptr() as usize;
        let resp = holding_until_sent(Response::new(Body::from(bytes::Bytes::from(answer))), ());
        let mut body = resp.into_body();
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            pieces.push(frame.unwrap().into_data().unwrap());
        }
        // Not copies: each piece is where it lies in the answer's own buffer, which the
        // pieces keep alive after the body is gone.
        drop(body);
        let mut offset = 0;
        for piece in &pieces {
            assert_eq!(piece.as_ptr() as usize, start + offset);
            offset += piece.len();
        }
        assert_eq!(pieces.concat(), expected);
    }
}
