//! What a `/fit` trains, worked out from its algorithm, model name and SPL parameters: the
//! schema, the starting model, the training parameters, each checked with a message that says
//! what to send instead.

use std::collections::HashMap;
use std::sync::Arc;

use crate::features::Schema;
use crate::model::convert::ESCU_MODEL_NAME;
use crate::model::train::TrainParams;
use crate::model::Model;
use crate::store::Registry;

pub const FRESH_ALGORITHMS: [(&str, Schema); 7] = [
    ("dnsexfil", Schema::DnsexfilV4),
    (crate::model::DEFAULT_MODEL_NAME, Schema::DnsexfilV4),
    ("dnsexfil_v6", Schema::DnsexfilV4),
    ("dnsexfil_v5", Schema::DnsexfilV5),
    ("dnsexfil_v4", Schema::DnsexfilV4),
    ("dnsexfil_v3", Schema::DnsexfilV3),
    ("dnsexfil_v2", Schema::DnsexfilV2),
];

/// Parameters a fit accepts (`| fit MLTKContainer algo=.. key=value ...`), with their meaning.
pub const FIT_PARAMS: [(&str, &str); 10] = [
    ("epochs", "passes over the training rows, 1 to 10000"),
    ("learning_rate", "AdamW step size, above 0 and at most 1"),
    ("batch_size", "rows per step, 1 to 65536"),
    (
        "patience",
        "epochs without a better validation loss before stopping, 1 to 1000",
    ),
    (
        "seed",
        "whole number: the same seed and data give the same model",
    ),
    ("weight_decay", "AdamW weight decay, 0 to 1"),
    (
        "validation_fraction",
        "share of sources held out for early stopping, 0.05 to 0.9",
    ),
    (
        "threshold",
        "probability at or above which the label is 1, above 0 and below 1",
    ),
    (
        "base",
        "name of a loaded model to fine-tune instead of training from scratch",
    ),
    (
        "window",
        "seconds per window when the data has `_time` (the search's span), 60 to 86400",
    ),
];

/// SPL parameters that are not training settings (MLTK's own).
const NON_TRAINING_PARAMS: [&str; 2] = ["algo", "mode"];

/// How a fit trains: the network's starting point and the settings.
pub struct FitPlan {
    pub schema: Schema,
    /// The model whose weights training starts from (a fine-tune), if any.
    pub base: Option<Arc<Model>>,
    pub params: TrainParams,
    pub validation_fraction: f64,
    pub threshold: f32,
    /// Window width when the rows carry `_time`.
    pub window_secs: f64,
    /// Networks trained (seeds `seed`, `seed + 1`, ...) and served as one whose output is the
    /// mean of their logits; 1 trains a single network.
    pub members: usize,
    /// The trained network's probability the model file puts at 0.5: the output bias is
    /// lowered by its log-odds (0.5: unchanged).
    pub alert_at: f64,
}

/// Why a `/fit` request's algorithm or parameters cannot be trained; each message says what to
/// send instead.
#[derive(Debug, thiserror::Error)]
pub enum FitRequestError {
    #[error("unknown fit parameter `{}`; this algorithm takes: {}", .key.escape_debug(), fit_param_names())]
    UnknownParameter { key: String },
    #[error("fit parameter `{key}` must be a single value, e.g. {key}={}", example(.key))]
    NotASingleValue { key: String },
    #[error("fit parameter `{key}` has the value `{}`; it must be {} (e.g. {key}={})", .value.chars().take(40).collect::<String>().escape_debug(), describe(.key), example(.key))]
    BadValue { key: String, value: String },
    #[error("fit parameter `base`: no model named `{}` is loaded (loaded: {loaded})", .name.escape_debug())]
    UnknownBase { name: String, loaded: String },
    #[error("fine-tuning `{ESCU_MODEL_NAME}` needs the published model loaded: start the service with --model {ESCU_MODEL_NAME}.tar.gz (or its converted .safetensors)")]
    PublishedModelNotLoaded,
    #[error("unknown algorithm `{}`: use algo=dnsexfil to train our model, algo={ESCU_MODEL_NAME} to fine-tune the published one, or base=<loaded model> to fine-tune any loaded model", .0.escape_debug())]
    UnknownAlgorithm(String),
}

fn fit_param_names() -> String {
    FIT_PARAMS
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(", ")
}

impl FitPlan {
    /// Works out what `/fit` trains from the request's algorithm, model name and SPL parameters.
    /// The published ESCU model is fine-tuned when the fit names it (as `algo` or model name),
    /// and any loaded model with `base=NAME`; `algo=dnsexfil` trains our schema from scratch.
    pub fn from_request(
        algo: Option<&str>,
        model_name: &str,
        params: &[(String, Option<String>)],
        registry: &Registry,
    ) -> Result<Self, FitRequestError> {
        let mut given: HashMap<&str, &str> = HashMap::new();
        for (key, value) in params {
            if NON_TRAINING_PARAMS.contains(&key.as_str()) {
                continue;
            }
            if !FIT_PARAMS.iter().any(|(k, _)| k == key) {
                return Err(FitRequestError::UnknownParameter { key: key.clone() });
            }
            let Some(value) = value else {
                return Err(FitRequestError::NotASingleValue { key: key.clone() });
            };
            given.insert(key.as_str(), value.as_str());
        }

        let names_escu = algo == Some(ESCU_MODEL_NAME) || model_name == ESCU_MODEL_NAME;
        let base = match given.get("base") {
            Some(name) => Some(
                registry
                    .get(name)
                    .ok_or_else(|| FitRequestError::UnknownBase {
                        name: name.to_string(),
                        loaded: registry.names().join(", "),
                    })?,
            ),
            None if names_escu => Some(
                registry
                    .get(ESCU_MODEL_NAME)
                    .ok_or(FitRequestError::PublishedModelNotLoaded)?,
            ),
            None => None,
        };
        let schema = match &base {
            Some(model) => model.info.schema,
            None => {
                let algo = algo.unwrap_or("dnsexfil");
                FRESH_ALGORITHMS
                    .iter()
                    .find(|(name, _)| *name == algo)
                    .map(|(_, schema)| *schema)
                    .ok_or_else(|| FitRequestError::UnknownAlgorithm(algo.to_string()))?
            }
        };

        // A fine-tune takes smaller, fewer steps than training from scratch.
        let mut params = if base.is_some() {
            TrainParams {
                epochs: 20,
                learning_rate: 1e-4,
                patience: 5,
                ..TrainParams::default()
            }
        } else {
            TrainParams::default()
        };
        let mut validation_fraction = 0.2;
        let mut window_secs = 3600.0;
        let mut threshold = base.as_ref().map_or(0.5, |m| m.info.threshold);
        for (&key, &text) in &given {
            match key {
                "epochs" => params.epochs = parse_in(key, text, 1..=10_000)?,
                "learning_rate" => {
                    params.learning_rate = parse_real(key, text, |v| v > 0.0 && v <= 1.0)?
                }
                "batch_size" => params.batch_size = parse_in(key, text, 1..=65_536)?,
                "patience" => params.patience = parse_in(key, text, 1..=1_000)?,
                "seed" => params.seed = parse_in(key, text, 0..=u64::MAX)?,
                "weight_decay" => {
                    params.weight_decay = parse_real(key, text, |v| (0.0..=1.0).contains(&v))?
                }
                "validation_fraction" => {
                    validation_fraction = parse_real(key, text, |v| (0.05..=0.9).contains(&v))?
                }
                "threshold" => threshold = parse_real(key, text, |v| v > 0.0 && v < 1.0)? as f32,
                "window" => {
                    window_secs = parse_real(key, text, |v| (60.0..=86_400.0).contains(&v))?
                }
                _ => {}
            }
        }
        Ok(Self {
            schema,
            base,
            params,
            validation_fraction,
            threshold,
            window_secs,
            members: 1,
            // A fit trains on the user's rows alone, not the offline recipe: no shift.
            alert_at: 0.5,
        })
    }
}

fn example(key: &str) -> &'static str {
    match key {
        "learning_rate" => "0.001",
        "weight_decay" => "0.0001",
        "validation_fraction" => "0.2",
        "threshold" => "0.5",
        "base" => crate::model::DEFAULT_MODEL_NAME,
        "window" => "3600",
        _ => "10",
    }
}

fn describe(key: &str) -> &'static str {
    FIT_PARAMS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("", |(_, d)| d)
}

fn parse_in<T>(
    key: &str,
    text: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, FitRequestError>
where
    T: std::str::FromStr + PartialOrd,
{
    text.trim()
        .parse::<T>()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| bad_param(key, text))
}

fn parse_real(key: &str, text: &str, ok: impl Fn(f64) -> bool) -> Result<f64, FitRequestError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && ok(*v))
        .ok_or_else(|| bad_param(key, text))
}

fn bad_param(key: &str, text: &str) -> FitRequestError {
    FitRequestError::BadValue {
        key: key.to_string(),
        value: text.to_string(),
    }
}
