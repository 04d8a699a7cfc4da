//! Unauthenticated endpoints for operators and orchestrators: liveness, readiness, metrics and
//! the API description. They are cheap and exempt from the in-flight limit, so probes keep
//! answering while the service is saturated.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, or `not_ready` when no model is loaded.
    #[schema(example = "ready")]
    pub status: String,
    /// Names of the loaded models.
    pub models: Vec<String>,
    /// Whether `/fit` can save models in the model store (checked at start-up and before each
    /// fit trains). An unusable store does not make the service unready: it still scores.
    pub model_store: StoreStatus,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoreStatus {
    /// `writable`, or `unusable` (fits fail before training).
    #[schema(example = "writable")]
    pub status: String,
    /// What is wrong with the store, when it is unusable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Liveness: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: at least one model is loaded, so scoring requests can be answered.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready: models are loaded", body = Readiness),
        (status = 503, description = "Not ready: no model is loaded", body = Readiness),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let models = state.registry.names();
    let (status, word) = if models.is_empty() {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    } else {
        (StatusCode::OK, "ready")
    };
    let problem = state
        .store_problem
        .lock()
        .expect("store problem lock")
        .clone();
    let model_store = StoreStatus {
        status: if problem.is_none() {
            "writable"
        } else {
            "unusable"
        }
        .into(),
        problem,
    };
    (
        status,
        Json(Readiness {
            status: word.into(),
            models,
            model_store,
        }),
    )
        .into_response()
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics in Prometheus text format", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let limit = state.config.limits.max_concurrent_requests;
    let budget_kib = state.body_budget_kib();
    let gauges = crate::http::metrics::Gauges {
        in_flight: limit.saturating_sub(state.in_flight.available_permits()),
        in_flight_limit: limit,
        body_bytes_in_flight: budget_kib.saturating_sub(state.body_budget.available_permits())
            << 10,
        body_bytes_budget: state.config.limits.max_body_bytes_in_flight,
        history: crate::http::metrics::HistoryGauges::of(&state.history),
    };
    let text = crate::http::metrics::render(&state.registry, gauges);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
