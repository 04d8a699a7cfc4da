//! Why a request is refused before its work is done, in one type, answered in each API's shape
//! in one place: DSDL's `{"status": "error", "message": "/apply: ERROR: ..."}` or /v1's
//! `{"error": {"code", "message"}}`, with the HTTP status and `Retry-After` a client acts on.
//! Each refusal is also logged: Splunk shows a DSDL message only to the user who ran the search,
//! an operator sees a detection switched off by a limit in the service log.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::dsdl::response::DsdlResponse;
use crate::http::v1::error::ApiError;

/// Which error format a route family speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    V1,
    Dsdl,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// `--max-concurrent-requests` requests are already in flight.
    TooManyRequests { limit: usize },
    /// The request ran past `--request-timeout-secs`.
    TimedOut { limit: Duration },
    /// A `/fit` body did not arrive within `--request-timeout-secs` (its training is exempt from
    /// the limit, its upload is not).
    UploadTimedOut { limit: Duration },
    /// The body is larger than `--max-body-mb`.
    BodyTooLarge { limit: usize, received: usize },
    /// The connection failed while the body was being read.
    BodyUnreadable(String),
    /// The bodies of the requests in flight already take `--max-bodies-in-flight-mb`.
    BodiesInFlight { budget: usize, received: usize },
}

impl Refusal {
    /// The HTTP status. DSDL answers an oversized body as the stock container answers an
    /// application error (200 with `status: error`: Splunk shows the message); every other
    /// refusal has the status a client or proxy can act on.
    pub fn status(&self, flavor: Flavor) -> StatusCode {
        match self {
            Refusal::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::TimedOut { .. }
            | Refusal::UploadTimedOut { .. }
            | Refusal::BodiesInFlight { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            Refusal::BodyTooLarge { .. } => match flavor {
                Flavor::V1 => StatusCode::PAYLOAD_TOO_LARGE,
                Flavor::Dsdl => StatusCode::OK,
            },
        }
    }

    /// The /v1 error code (stable, for scripts).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::TooManyRequests { .. } => "too_many_requests",
            Refusal::TimedOut { .. } | Refusal::UploadTimedOut { .. } => "timeout",
            Refusal::BodyTooLarge { .. } => "body_too_large",
            Refusal::BodyUnreadable(_) => "body_unreadable",
            Refusal::BodiesInFlight { .. } => "busy",
        }
    }

    /// What happened and what to do about it.
    pub fn message(&self, flavor: Flavor) -> String {
        let per_request = match flavor {
            Flavor::V1 => "events",
            Flavor::Dsdl => "rows",
        };
        match self {
            Refusal::TooManyRequests { limit } => format!(
                "{limit} requests are already in flight, the limit (--max-concurrent-requests); retry shortly"
            ),
            Refusal::TimedOut { limit } => format!(
                "the request took longer than {} s (--request-timeout-secs); send fewer {per_request} per request or raise the limit",
                limit.as_secs_f64()
            ),
            Refusal::UploadTimedOut { limit } => format!(
                "the request body did not arrive within {} s (--request-timeout-secs, DNSEXFIL_REQUEST_TIMEOUT_SECS); send it at once, or fewer {per_request}",
                limit.as_secs_f64()
            ),
            Refusal::BodyTooLarge { limit, received } => match flavor {
                Flavor::Dsdl => format!(
                    "the request body ({} MiB or more) exceeds the {} MiB limit; raise --max-body-mb (DNSEXFIL_MAX_BODY_MB) or send fewer rows per request",
                    received >> 20,
                    limit >> 20
                ),
                Flavor::V1 => format!(
                    "the body exceeds the {} MiB limit; send fewer events per request or raise --max-body-mb (DNSEXFIL_MAX_BODY_MB)",
                    limit >> 20
                ),
            },
            Refusal::BodyUnreadable(e) => match flavor {
                Flavor::Dsdl => format!("cannot read the request body: {e}"),
                Flavor::V1 => format!("cannot read the body: {e}"),
            },
            Refusal::BodiesInFlight { budget, .. } => busy_message(*budget),
        }
    }

    /// Whether the client should simply retry shortly (`Retry-After: 1`).
    fn retry_soon(&self) -> bool {
        matches!(
            self,
            Refusal::TooManyRequests { .. } | Refusal::BodiesInFlight { .. }
        )
    }

    /// The admission limits name the request's `path`; a body refusal, its `endpoint`.
    fn log(&self, path: &str) {
        match self {
            Refusal::TooManyRequests { limit } => {
                tracing::warn!(path = %path, limit, "request refused: too many in flight")
            }
            Refusal::TimedOut { limit } => tracing::warn!(
                path = %path,
                limit_secs = limit.as_secs_f64(),
                "request timed out"
            ),
            Refusal::UploadTimedOut { limit } => tracing::warn!(
                endpoint = %path,
                limit_secs = limit.as_secs_f64(),
                "request body upload timed out"
            ),
            Refusal::BodyTooLarge { limit, received } => tracing::warn!(
                endpoint = %path,
                received_bytes = received,
                limit_bytes = limit,
                "request refused: the body exceeds --max-body-mb"
            ),
            Refusal::BodyUnreadable(e) => {
                tracing::debug!(endpoint = %path, error = %e, "request body unreadable")
            }
            Refusal::BodiesInFlight { budget, received } => tracing::warn!(
                endpoint = %path,
                received_bytes = received,
                budget_bytes = budget,
                "request refused: the bodies in flight take the budget"
            ),
        }
    }

    /// The answer to a request for `path` in the route family's format, logged.
    pub fn answer(self, flavor: Flavor, path: &str) -> Response {
        self.log(path);
        let status = self.status(flavor);
        let message = self.message(flavor);
        let response = match flavor {
            Flavor::V1 => ApiError::new(status, self.code(), message).into_response(),
            Flavor::Dsdl => {
                let body = DsdlResponse {
                    status: "error",
                    message: format!("{path}: ERROR: {message}"),
                    results: None,
                };
                (status, body).into_response()
            }
        };
        if self.retry_soon() {
            retry_soon(response)
        } else {
            response
        }
    }
}

/// What a request refused for the body budget is told (its body, or its answer, did not fit).
pub fn busy_message(budget: usize) -> String {
    format!(
        "the bodies of the requests in flight already take the {} MiB they may hold at once (--max-bodies-in-flight-mb, DNSEXFIL_MAX_BODIES_IN_FLIGHT_MB); retry shortly",
        budget >> 20
    )
}

/// `response` as a refusal to retry shortly: 503 with `Retry-After` unless it has a status of
/// its own (429).
pub fn retry_soon(mut response: Response) -> Response {
    if response.status() != StatusCode::TOO_MANY_REQUESTS {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::BodyError;
    use http_body_util::BodyExt;

    async fn json_of(response: Response) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn each_api_gets_its_own_shape_status_and_retry_hint() {
        let busy = Refusal::TooManyRequests { limit: 2 };
        let v1 = busy.clone().answer(Flavor::V1, "/v1/score");
        assert_eq!(v1.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(v1.headers()[header::RETRY_AFTER], "1");
        let body = json_of(v1).await;
        assert_eq!(body["error"]["code"], "too_many_requests");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("2 requests are already in flight"));

        let dsdl = busy.answer(Flavor::Dsdl, "/apply");
        assert_eq!(dsdl.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(dsdl.headers()[header::RETRY_AFTER], "1");
        let body = json_of(dsdl).await;
        assert_eq!(body["status"], "error");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .starts_with("/apply: ERROR: 2 requests are already in flight"));
    }

    #[tokio::test]
    async fn an_oversized_body_is_413_for_v1_and_a_dsdl_application_error() {
        let refusal = Refusal::BodyTooLarge {
            limit: 8 << 20,
            received: 9 << 20,
        };
        let v1 = refusal.clone().answer(Flavor::V1, "/v1/score");
        assert_eq!(v1.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(v1.headers().get(header::RETRY_AFTER).is_none());
        let body = json_of(v1).await;
        assert_eq!(body["error"]["code"], "body_too_large");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("the body exceeds the 8 MiB limit; send fewer events"));

        let dsdl = refusal.answer(Flavor::Dsdl, "/fit");
        assert_eq!(dsdl.status(), StatusCode::OK);
        let body = json_of(dsdl).await;
        let message = body["message"].as_str().unwrap();
        assert!(message
            .starts_with("/fit: ERROR: the request body (9 MiB or more) exceeds the 8 MiB limit"));
        assert!(message.contains("--max-body-mb") && message.contains("fewer rows"));
    }

    #[test]
    fn a_full_body_budget_is_503_with_retry_after() {
        let refusal = Refusal::from(BodyError::Busy {
            budget: 256 << 20,
            received: 10,
        });
        for flavor in [Flavor::V1, Flavor::Dsdl] {
            let response = refusal.clone().answer(flavor, "/apply");
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        }
        assert!(refusal.message(Flavor::V1).contains("256 MiB"));
    }
}
