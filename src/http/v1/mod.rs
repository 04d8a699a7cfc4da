//! The versioned REST API (`/v1`) for people and scripts: plain JSON in and out, JSON errors with
//! meaningful statuses, the same token, models and scores as the DSDL routes.

pub mod error;
pub mod events;
pub mod history;
pub mod models;
pub mod score;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::http::auth::Token;
use crate::http::refusal::Flavor;
use crate::http::state::AppState;
use error::ApiError;

/// The /v1 routes: token first, then the in-flight and time limits.
pub fn routes(state: &AppState) -> Router<AppState> {
    let routes = Router::new()
        .route("/v1/score", post(score::score))
        .route("/v1/models", get(models::list))
        .route(
            "/v1/history/{src}",
            get(history::show).delete(history::forget),
        );
    state
        .limited(routes, Flavor::V1, true)
        .route_layer(middleware::from_fn_with_state(
            state.config.token.clone(),
            require_token,
        ))
}

/// Whether `path` is under `/v1` (`/v1` itself included), so its errors speak /v1's format.
pub fn is_v1_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// The DSDL token check, answered in the /v1 error format.
async fn require_token(State(token): State<Token>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let Some(reason) = token.refusal(given) else {
        return next.run(req).await;
    };
    tracing::warn!(path = %req.uri().path(), reason, "request refused");
    let fix = match reason {
        "No header with token" => "send `Authorization: Bearer <api_token>`",
        "Invalid token" => "send the service's api_token as `Authorization: Bearer <api_token>`",
        // The service itself has no usable token: only its operator can fix that.
        _ => "set the api_token environment variable of the service and restart it",
    };
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("{reason}: {fix}"),
    )
    .into_response()
}

/// Answers for /v1 paths no route matches, in the /v1 error format.
pub fn not_found(path: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {}; the /v1 routes are POST /v1/score, GET /v1/models and GET or DELETE /v1/history/{{src}} (GET /openapi.json describes them)",
            crate::util::clip(path, 100)
        ),
    )
    .into_response()
}

pub fn method_not_allowed(path: &str) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "wrong method for {}; use POST /v1/score, GET /v1/models, or GET or DELETE /v1/history/{{src}}",
            crate::util::clip(path, 100)
        ),
    )
    .into_response()
}
