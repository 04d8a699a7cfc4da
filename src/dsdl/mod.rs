//! The DSDL container protocol: what a Splunk search head sends to `/fit`, `/apply`, `/summary`
//! and `/`, and what it expects back (HTTP 200 with a status, a message and a results CSV).

pub mod auth;
pub mod csvscan;
pub mod envelope;
pub mod handlers;
pub mod results;
pub mod table;

use serde::Serialize;

/// The JSON body of every DSDL application outcome.
#[derive(Debug, Serialize)]
pub struct DsdlResponse {
    pub status: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<String>,
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
    pub fn error(endpoint: Endpoint, what: impl std::fmt::Display) -> Self {
        Self {
            status: "error",
            message: format!("{}: ERROR: {what}", endpoint.path()),
            results: None,
        }
    }
}
