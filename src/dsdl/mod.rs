//! The DSDL container protocol: what a Splunk search head sends to `/fit`, `/apply`, `/summary`
//! and `/`, and what it expects back (HTTP 200 with a status, a message and a results CSV).

pub mod auth;
pub mod csvscan;
pub mod envelope;
pub mod handlers;
pub mod results;
pub mod table;

/// The JSON body of every DSDL application outcome.
#[derive(Debug)]
pub struct DsdlResponse {
    pub status: &'static str,
    pub message: String,
    /// The results CSV, already escaped as the contents of a JSON string (see
    /// [`results::JsonEscaped`]); absent on errors and staging.
    pub results: Option<Vec<u8>>,
}

impl axum::response::IntoResponse for DsdlResponse {
    fn into_response(self) -> axum::response::Response {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.to_json(),
        )
            .into_response()
    }
}

/// Which endpoint a message is about (its messages start with `/apply` or `/fit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Apply,
    Fit,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Apply => "/apply",
            Endpoint::Fit => "/fit",
        }
    }
}

impl DsdlResponse {
    /// `{"status": ..., "message": ..., "results": "..."}` as the stock container sends it.
    pub fn to_json(&self) -> Vec<u8> {
        let results_len = self.results.as_ref().map_or(0, Vec::len);
        let mut body = Vec::with_capacity(64 + self.message.len() + results_len);
        body.extend_from_slice(b"{\"status\":");
        serde_json::to_writer(&mut body, self.status).expect("writing to a Vec cannot fail");
        body.extend_from_slice(b",\"message\":");
        serde_json::to_writer(&mut body, &self.message).expect("writing to a Vec cannot fail");
        if let Some(results) = &self.results {
            body.extend_from_slice(b",\"results\":\"");
            body.extend_from_slice(results);
            body.push(b'"');
        }
        body.push(b'}');
        body
    }

    pub fn error(endpoint: Endpoint, what: impl std::fmt::Display) -> Self {
        Self {
            status: "error",
            message: format!("{}: ERROR: {what}", endpoint.path()),
            results: None,
        }
    }
}
