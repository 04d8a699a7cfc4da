//! `GET /v1/models`, and which loaded model a /v1 request gets.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use crate::http::state::AppState;
use crate::model::Model;
use crate::store::Registry;
use crate::util::clip;

/// Name of the built-in model, the default when it is loaded.
pub use crate::model::DEFAULT_MODEL_NAME;

/// A loaded model, as its file describes itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelDescription {
    /// Name requests select it by.
    #[schema(example = "dnsexfil_v7")]
    pub name: String,
    /// Feature schema the service computes for it (`escu-v1`, `dnsexfil-v2` to `dnsexfil-v5`).
    #[schema(example = "dnsexfil-v4")]
    pub schema: String,
    /// Number of features per event.
    pub features: usize,
    /// Label name (DSDL result columns are `pred_<target>_proba` and `pred_<target>`).
    pub target: String,
    /// Probability at or above which the label is 1.
    pub threshold: f32,
    /// What produced the file (tool and version); empty when the file does not say.
    pub created_by: String,
    /// File the model was converted or trained from.
    pub source_file: String,
    /// SHA-256 of that source file.
    pub source_sha256: String,
    /// SHA-256 of the model file itself (also the `sha256` label of `dnsexfil_model_info`).
    pub file_sha256: String,
    /// Whether requests that name no model get this one.
    pub default: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelDescription>,
}

/// Lists the loaded models.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "v1",
    responses(
        (status = 200, description = "The loaded models, by name", body = ModelList),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 429, description = "Too many requests in flight", body = ErrorBody),
        (status = 503, description = "The request took too long", body = ErrorBody),
    ),
    security(("api_token" = []))
)]
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    let default = default_name(&state.registry);
    let models = state
        .registry
        .all()
        .iter()
        .map(|m| ModelDescription {
            name: m.info.name.clone(),
            schema: m.info.schema.name().to_string(),
            features: m.info.schema.width(),
            target: m.info.target.clone(),
            threshold: m.info.threshold,
            created_by: m.info.created_by.clone(),
            source_file: m.info.source_file.clone(),
            source_sha256: m.info.source_sha256.clone(),
            file_sha256: m.file_sha256.clone(),
            default: default.as_deref() == Some(m.info.name.as_str()),
        })
        .collect();
    Json(ModelList { models })
}

/// The model a request that names none gets: the built-in one when loaded, else the only one.
pub fn default_name(registry: &Registry) -> Option<String> {
    let names = registry.names();
    if names.iter().any(|n| n == DEFAULT_MODEL_NAME) {
        return Some(DEFAULT_MODEL_NAME.to_string());
    }
    match names.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    }
}

/// The model for a request: the one it names, or the default.
pub fn choose(registry: &Registry, requested: Option<&str>) -> Result<Arc<Model>, ApiError> {
    let loaded = || registry.names().join(", ");
    if registry.is_empty() {
        return Err(no_model_loaded());
    }
    let name = match requested {
        Some(name) => name.to_string(),
        None => default_name(registry).ok_or_else(|| {
            ApiError::unprocessable(
                "model_required",
                format!(
                    "several models are loaded and none is the default `{DEFAULT_MODEL_NAME}`; name one with ?model= or a `model` field (loaded: {})",
                    loaded()
                ),
            )
        })?,
    };
    registry.resolve(&name, None).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "no model named `{}` is loaded (loaded: {}); see GET /v1/models",
                clip(&name, 128),
                loaded()
            ),
        )
    })
}

pub fn no_model_loaded() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_model_loaded",
        "no model is loaded; start the service with the built-in model or --model FILE",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of a choice that must fail (`Model` has no `Debug` for `unwrap_err`).
    fn refusal(registry: &Registry, requested: Option<&str>) -> ApiError {
        match choose(registry, requested) {
            Ok(m) => panic!("chose {} where an error was expected", m.info.name),
            Err(e) => e,
        }
    }

    #[test]
    fn the_built_in_model_is_the_default_when_loaded() {
        let registry = Registry::new();
        assert_eq!(refusal(&registry, None).code, "no_model_loaded");
        let builtin = registry.insert(crate::model::default_model().unwrap());
        assert_eq!(builtin.info.name, DEFAULT_MODEL_NAME);
        assert_eq!(default_name(&registry).as_deref(), Some(DEFAULT_MODEL_NAME));
        assert_eq!(
            choose(&registry, None).unwrap().info.name,
            DEFAULT_MODEL_NAME
        );
        let e = refusal(&registry, Some("nope"));
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, "model_not_found")
        );
        assert!(e.message.contains("loaded: dnsexfil_v7"), "{}", e.message);
    }

    #[test]
    fn without_the_built_in_model_only_a_single_model_is_a_default() {
        let registry = Registry::new();
        let mut other = crate::model::default_model().unwrap();
        other.info.name = "a".into();
        registry.insert(other);
        assert_eq!(default_name(&registry).as_deref(), Some("a"));
        let mut second = crate::model::default_model().unwrap();
        second.info.name = "b".into();
        registry.insert(second);
        assert_eq!(default_name(&registry), None);
        assert_eq!(refusal(&registry, None).code, "model_required");
        assert_eq!(choose(&registry, Some("b")).unwrap().info.name, "b");
    }
}
