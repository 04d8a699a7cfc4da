//! The OpenAPI 3 document, generated from the code with utoipa: the /v1 API and the operations
//! endpoints from their handlers, the DSDL routes from the descriptions below. Served at
//! `GET /openapi.json` (by [`openapi`]) and committed as `openapi/openapi.json` (`dnsexfil openapi` writes it).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::http::ops;
use crate::http::v1::{error, events, history, models, score};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "dnsexfil",
        description = "DNS data-exfiltration detection. `/v1` is the REST API for people and scripts (JSON errors `{\"error\": {\"code\", \"message\"}}`); `/apply`, `/fit`, `/summary`, `/` and `/compute` are Splunk DSDL's container protocol, kept as the stock container answers (application errors are HTTP 200 with `status: error`). Every response carries an `x-request-id` header (the caller's, or a new one)."
    ),
    paths(
        score::score,
        models::list,
        history::show,
        history::forget,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        openapi,
        dsdl_apply,
        dsdl_fit,
        dsdl_summary,
        dsdl_root,
        dsdl_compute,
    ),
    components(schemas(events::Event, error::ErrorDetail)),
    modifiers(&TokenScheme),
    tags(
        (name = "v1", description = "REST API: score DNS events as JSON"),
        (name = "dsdl", description = "Splunk DSDL container protocol (unchanged conventions)"),
        (name = "operations", description = "Health, readiness, metrics, API description; no token"),
    )
)]
struct ApiDoc;

/// The `api_token` security scheme (the DSDL token, raw or as a Bearer token).
struct TokenScheme;

impl Modify for TokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some(
            "The service's `api_token` environment variable, as `Authorization: Bearer <token>` (DSDL's raw `Authorization: <token>` is accepted too)."
                .into(),
        );
        components.add_security_scheme("api_token", SecurityScheme::Http(http));
    }
}

/// The document as pretty JSON with a final newline: the bytes of `openapi/openapi.json`.
pub fn document_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the document serialises");
    text.push('\n');
    text
}

// The DSDL routes' handlers live in `http/dsdl/` and speak DSDL's own conventions; these
// types and functions only describe them.

/// The DSDL request envelope.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct DsdlRequest {
    /// CSV with a header naming at least `src` and `query` (and usually `rank`).
    #[schema(example = "src,query,rank\n10.0.0.5,www.google.com,1\n")]
    data: String,
    /// `options.model_name` (and `options.params.algo`) select the model; `options.params.mode =
    /// stage` on /fit stages the data.
    #[schema(value_type = Object)]
    meta: serde_json::Value,
}

/// A DSDL outcome. Application errors are HTTP 200 with `status: error`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct DsdlResult {
    /// `success`, `staged` or `error`.
    #[schema(example = "success")]
    status: String,
    /// `/apply done successfully`, or `/apply: ERROR: <what is wrong and how to fix it>`.
    message: String,
    /// Results CSV, one row per input row (absent on errors and staging).
    #[schema(nullable = false)]
    results: Option<String>,
}

/// DSDL's 401 and 404/405 body.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct DsdlDetail {
    #[schema(example = "Invalid token")]
    detail: String,
}

/// Scores the CSV in `data` with the model the options name (DSDL `| apply`).
#[utoipa::path(post, path = "/apply", tag = "dsdl",
    request_body = DsdlRequest,
    responses(
        (status = 200, description = "Success or an application error (`status`)", body = DsdlResult),
        (status = 400, description = "The body could not be read", body = DsdlResult),
        (status = 401, description = "Missing or wrong token", body = DsdlDetail),
        (status = 429, description = "Too many requests in flight", body = DsdlResult),
        (status = 503, description = "The request took too long", body = DsdlResult),
    ),
    security(("api_token" = [])))]
#[allow(dead_code)]
fn dsdl_apply() {}

/// Stages data (`mode=stage`) or applies a loaded pretrained model (DSDL `| fit`). Not subject
/// to --request-timeout-secs.
#[utoipa::path(post, path = "/fit", tag = "dsdl",
    request_body = DsdlRequest,
    responses(
        (status = 200, description = "Success, staged, or an application error (`status`)", body = DsdlResult),
        (status = 400, description = "The body could not be read", body = DsdlResult),
        (status = 401, description = "Missing or wrong token", body = DsdlDetail),
        (status = 429, description = "Too many requests in flight", body = DsdlResult),
    ),
    security(("api_token" = [])))]
#[allow(dead_code)]
fn dsdl_fit() {}

/// The loaded models, as a JSON object encoded twice (a JSON string holding JSON), as the stock
/// container answers.
#[utoipa::path(get, path = "/summary", tag = "dsdl",
    responses(
        (status = 200, description = "A JSON string holding the summary object", body = String, content_type = "application/json"),
        (status = 401, description = "Missing or wrong token", body = DsdlDetail),
        (status = 429, description = "Too many requests in flight", body = DsdlResult),
        (status = 503, description = "The request took too long", body = DsdlResult),
    ),
    security(("api_token" = [])))]
#[allow(dead_code)]
fn dsdl_summary() {}

/// The same as `GET /summary`.
#[utoipa::path(get, path = "/", tag = "dsdl",
    responses(
        (status = 200, description = "A JSON string holding the summary object", body = String, content_type = "application/json"),
        (status = 401, description = "Missing or wrong token", body = DsdlDetail),
        (status = 429, description = "Too many requests in flight", body = DsdlResult),
        (status = 503, description = "The request took too long", body = DsdlResult),
    ),
    security(("api_token" = [])))]
#[allow(dead_code)]
fn dsdl_root() {}

/// Deprecated by DSDL: always 410.
#[utoipa::path(post, path = "/compute", tag = "dsdl",
    responses(
        (status = 410, description = "Deprecated and disabled", body = DsdlResult),
        (status = 401, description = "Missing or wrong token", body = DsdlDetail),
        (status = 429, description = "Too many requests in flight", body = DsdlResult),
        (status = 503, description = "The request took too long", body = DsdlResult),
    ),
    security(("api_token" = [])))]
#[allow(dead_code)]
fn dsdl_compute() {}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document (the same as openapi/openapi.json)",
        body = Object, content_type = "application/json")))]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}
