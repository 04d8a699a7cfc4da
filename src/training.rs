//! Fitting a model from labelled rows: what `POST /fit` and `dnsexfil train` share. It chooses
//! the schema and starting point, reads the fit's parameters, splits off validation rows by
//! source, trains, and packages the result as a model file.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use candle_core::Tensor;

use crate::dataset::{self, parse_label, Labelled};
use crate::dsdl::table::{RowKind, Table};
use crate::features::{Row, Schema};
use crate::model::convert::ESCU_MODEL_NAME;
use crate::model::file::shape_for;
use crate::model::train::{train, Dataset, EpochStats, TrainError, TrainParams, TrainReport};
use crate::model::{Model, ModelInfo, Registry};
use crate::synth::SplitMix64;

/// Algorithms `/fit` trains from scratch, and the schema each uses.
pub const FRESH_ALGORITHMS: [(&str, Schema); 4] = [
    ("dnsexfil", Schema::DnsexfilV4),
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
    ) -> Result<Self, String> {
        let mut given: HashMap<&str, &str> = HashMap::new();
        for (key, value) in params {
            if NON_TRAINING_PARAMS.contains(&key.as_str()) {
                continue;
            }
            if !FIT_PARAMS.iter().any(|(k, _)| k == key) {
                return Err(format!(
                    "unknown fit parameter `{}`; this algorithm takes: {}",
                    key.escape_debug(),
                    FIT_PARAMS
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let Some(value) = value else {
                return Err(format!(
                    "fit parameter `{key}` must be a single value, e.g. {key}={}",
                    example(key)
                ));
            };
            given.insert(key.as_str(), value.as_str());
        }

        let names_escu = algo == Some(ESCU_MODEL_NAME) || model_name == ESCU_MODEL_NAME;
        let base = match given.get("base") {
            Some(name) => Some(registry.get(name).ok_or_else(|| {
                format!(
                    "fit parameter `base`: no model named `{}` is loaded (loaded: {})",
                    name.escape_debug(),
                    registry.names().join(", ")
                )
            })?),
            None if names_escu => Some(registry.get(ESCU_MODEL_NAME).ok_or_else(|| {
                format!(
                    "fine-tuning `{ESCU_MODEL_NAME}` needs the published model loaded: start the service with --model {ESCU_MODEL_NAME}.tar.gz (or its converted .safetensors)"
                )
            })?),
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
                    .ok_or_else(|| {
                        format!(
                            "unknown algorithm `{}`: use algo=dnsexfil to train our model, algo={ESCU_MODEL_NAME} to fine-tune the published one, or base=<loaded model> to fine-tune any loaded model",
                            algo.escape_debug()
                        )
                    })?
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
        })
    }
}

fn example(key: &str) -> &'static str {
    match key {
        "learning_rate" => "0.001",
        "weight_decay" => "0.0001",
        "validation_fraction" => "0.2",
        "threshold" => "0.5",
        "base" => "dnsexfil_v4",
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

fn parse_in<T>(key: &str, text: &str, range: std::ops::RangeInclusive<T>) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd,
{
    text.trim()
        .parse::<T>()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| bad_param(key, text))
}

fn parse_real(key: &str, text: &str, ok: impl Fn(f64) -> bool) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && ok(*v))
        .ok_or_else(|| bad_param(key, text))
}

fn bad_param(key: &str, text: &str) -> String {
    format!(
        "fit parameter `{key}` has the value `{}`; it must be {} (e.g. {key}={})",
        text.chars().take(40).collect::<String>().escape_debug(),
        describe(key),
        example(key)
    )
}

/// How a fit request's rows were grouped into the requests `/apply` will see.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Windowing {
    /// No `_time` column: the whole request is one batch, with the ranks as sent.
    WholeRequest,
    /// By `_time`, in windows of this many seconds, ranks recomputed in each (newest = 1).
    ByTime { seconds: f64, windows: usize },
}

impl Windowing {
    pub fn describe(&self) -> String {
        match self {
            Windowing::WholeRequest => "as one batch (send `_time` too to train in the hourly windows the search applies to)".into(),
            Windowing::ByTime { seconds, windows } => {
                format!("in {windows} windows of {seconds} s by `_time`")
            }
        }
    }
}

/// The features and labels of a fit request's rank-1 rows (older rows are history only, and
/// unreadable rows are left out). With a `_time` column the rows are replayed the way the
/// scheduled search sends them: cut into windows of `window_secs`, ranks recomputed in each
/// (newest occurrence of a (src, query) pair = 1, ranks of 10 and above dropped), so the model
/// learns the features it will see at `/apply`. Labels that are not 0/1, and times that are not
/// numbers, fail the fit, naming the rows.
pub fn labelled_from_table(
    table: &Table,
    schema: Schema,
    target: &str,
    window_secs: f64,
) -> Result<(Labelled, Windowing), String> {
    // Each batch: (table rows feeding the history, positions among them of the rows to score).
    let (batches, windowing) = if table.has_time {
        time_windows(table, window_secs)?
    } else {
        let usable: Vec<usize> = (0..table.len())
            .filter(|&i| table.feeds_history(i))
            .collect();
        let scored: Vec<usize> = (0..usable.len())
            .filter(|&k| table.kind(usable[k]) == RowKind::Rank1)
            .collect();
        (vec![(usable, scored)], Windowing::WholeRequest)
    };
    let scored_rows: Vec<usize> = batches
        .iter()
        .flat_map(|(rows, scored)| scored.iter().map(|&k| rows[k]))
        .collect();
    let mut bad = Vec::new();
    let mut labels = Vec::with_capacity(scored_rows.len());
    for &row in &scored_rows {
        match parse_label(table.target_text(row)) {
            Some(y) => labels.push(y),
            None => bad.push(row),
        }
    }
    if !bad.is_empty() {
        return Err(format!(
            "the label `{target}` must be 0 or 1 on every rank-1 row; {} of {} are not ({}). Fix or drop those rows before `| fit`",
            bad.len(),
            scored_rows.len(),
            row_examples(table, &bad, Table::target_text)
        ));
    }
    if scored_rows.is_empty() {
        let why = if (0..table.len()).any(|row| table.kind(row) == RowKind::History) {
            "every row has a rank above 1 (send each (src, query) pair's newest event with rank 1)"
        } else {
            "no row could be read"
        };
        return Err(format!("nothing to train on: {why}"));
    }
    let mut data = Dataset::new(schema.width());
    let mut srcs = Vec::with_capacity(scored_rows.len());
    let mut next_label = labels.iter();
    for (batch, scored) in &batches {
        let rows: Vec<Row> = batch
            .iter()
            .map(|&i| Row {
                src: table.src(i),
                query: table.query(i),
            })
            .collect();
        let features = schema.compute(&rows, scored);
        for (k, &position) in scored.iter().enumerate() {
            let y = *next_label.next().expect("one label per scored row");
            data.push(features.row(k), y);
            srcs.push(table.src(batch[position]).to_string());
        }
    }
    Ok((Labelled { data, srcs }, windowing))
}

/// Groups usable rows by `_time` window and recomputes ranks in each, like the hourly search.
#[allow(clippy::type_complexity)]
fn time_windows(
    table: &Table,
    window_secs: f64,
) -> Result<(Vec<(Vec<usize>, Vec<usize>)>, Windowing), String> {
    let mut by_window: std::collections::BTreeMap<i64, Vec<(f64, usize)>> = Default::default();
    let mut bad = Vec::new();
    for i in 0..table.len() {
        if !table.feeds_history(i) {
            continue;
        }
        match crate::dsdl::envelope::unquote(table.time_text(i))
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite())
        {
            Some(t) => by_window
                .entry((t / window_secs).floor() as i64)
                .or_default()
                .push((t, i)),
            None => bad.push(i),
        }
    }
    if !bad.is_empty() {
        return Err(format!(
            "`_time` must be a number (epoch seconds) on every row; {} rows are not ({}). Send `_time` as Splunk stores it, or leave the field out",
            bad.len(),
            row_examples(table, &bad, Table::time_text)
        ));
    }
    let windows = by_window.len();
    let batches = by_window
        .into_values()
        .map(|mut events| {
            events.sort_by(|a, b| {
                b.0.total_cmp(&a.0)
                    .then_with(|| table.src(a.1).cmp(table.src(b.1)))
                    .then_with(|| table.query(a.1).cmp(table.query(b.1)))
            });
            let mut seen: HashMap<(&str, &str), u32> = HashMap::new();
            let mut rows = Vec::with_capacity(events.len());
            let mut scored = Vec::new();
            for (_, i) in events {
                let rank = seen.entry((table.src(i), table.query(i))).or_insert(0);
                *rank += 1;
                if *rank < 10 {
                    if *rank == 1 {
                        scored.push(rows.len());
                    }
                    rows.push(i);
                }
            }
            (rows, scored)
        })
        .collect();
    Ok((
        batches,
        Windowing::ByTime {
            seconds: window_secs,
            windows,
        },
    ))
}

/// "row 2: `yes`; row 4: empty; ..." for at most five rows (1-based data row numbers).
fn row_examples<'t>(
    table: &'t Table<'t>,
    rows: &[usize],
    cell: fn(&'t Table<'t>, usize) -> &'t str,
) -> String {
    let mut out: Vec<String> = rows
        .iter()
        .take(5)
        .map(|&r| {
            let text = cell(table, r);
            if text.is_empty() {
                format!("row {}: empty", r + 1)
            } else {
                format!(
                    "row {}: `{}`",
                    r + 1,
                    text.chars().take(20).collect::<String>().escape_debug()
                )
            }
        })
        .collect();
    if rows.len() > 5 {
        out.push("...".into());
    }
    out.join("; ")
}

/// How the validation rows were chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidationSplit {
    /// Whole sources held out: no host's traffic on both sides (the honest estimate).
    BySource {
        train: BTreeSet<String>,
        validation: BTreeSet<String>,
    },
    /// Too few sources of one class for that: rows held out at random, per class.
    ByRow,
}

impl ValidationSplit {
    pub fn describe(&self) -> String {
        match self {
            ValidationSplit::BySource { validation, .. } => {
                format!("{} held-out sources", validation.len())
            }
            ValidationSplit::ByRow => {
                "held-out rows (too few sources of one class to hold out whole sources)".into()
            }
        }
    }
}

/// Splits `labelled` into training and validation rows: by source when both sides then see both
/// classes, else by row (stratified). Deterministic for `seed`.
pub fn validation_split(
    labelled: &Labelled,
    fraction: f64,
    seed: u64,
) -> Result<(Dataset, Dataset, ValidationSplit), String> {
    let (train_srcs, val_srcs) = dataset::split_sources(labelled, fraction, seed.wrapping_add(1));
    let train_set = dataset::subset(labelled, &train_srcs);
    let val_set = dataset::subset(labelled, &val_srcs);
    if has_both_classes(&train_set) && has_both_classes(&val_set) {
        return Ok((
            train_set,
            val_set,
            ValidationSplit::BySource {
                train: train_srcs,
                validation: val_srcs,
            },
        ));
    }
    let data = &labelled.data;
    let mut train_set = Dataset::new(data.width);
    let mut val_set = Dataset::new(data.width);
    let mut rng = SplitMix64::new(seed.wrapping_add(2));
    for class in [0.0f32, 1.0] {
        let mut rows: Vec<usize> = (0..data.len()).filter(|&i| data.y[i] == class).collect();
        if rows.len() < 2 {
            return Err(format!(
                "training needs at least 2 rows labelled {class} (found {}); add {} examples",
                rows.len(),
                if class == 1.0 {
                    "malicious (1)"
                } else {
                    "benign (0)"
                }
            ));
        }
        for i in (1..rows.len()).rev() {
            rows.swap(i, rng.below(i + 1));
        }
        let held = ((rows.len() as f64 * fraction).round() as usize).clamp(1, rows.len() - 1);
        rows[..held].sort_unstable();
        rows[held..].sort_unstable();
        for (k, &i) in rows.iter().enumerate() {
            let target = if k < held {
                &mut val_set
            } else {
                &mut train_set
            };
            target.push(&data.x[i * data.width..(i + 1) * data.width], class);
        }
    }
    Ok((train_set, val_set, ValidationSplit::ByRow))
}

fn has_both_classes(d: &Dataset) -> bool {
    let positives = d.y.iter().filter(|&&y| y == 1.0).count();
    positives > 0 && positives < d.len()
}

/// A trained model, its file bytes and how training went.
pub struct Fitted {
    pub model: Model,
    pub bytes: Vec<u8>,
    pub report: TrainReport,
    pub split: ValidationSplit,
    /// True-positive rate on the validation rows at a false-positive rate of 0.1%.
    pub validation_tpr_at_fpr_0_001: f64,
}

/// Trains on `labelled` as `plan` says and packages the result under `info` (whose schema must
/// be the plan's). `on_epoch` sees every epoch's losses.
pub fn fit_labelled(
    labelled: &Labelled,
    plan: &FitPlan,
    info: ModelInfo,
    on_epoch: impl FnMut(&EpochStats),
) -> Result<Fitted, TrainError> {
    debug_assert_eq!(info.schema, plan.schema);
    let (train_set, val_set, split) =
        validation_split(labelled, plan.validation_fraction, plan.params.seed)
            .map_err(TrainError::Data)?;
    let start: Option<HashMap<String, Tensor>> = match &plan.base {
        Some(base) => Some(base.mlp.tensors()?),
        None => None,
    };
    let shape = match &plan.base {
        Some(base) => base.mlp.shape(),
        None => shape_for(plan.schema),
    };
    let mut on_epoch = on_epoch;
    let mut members = Vec::with_capacity(plan.members.max(1));
    let mut reports = Vec::with_capacity(plan.members.max(1));
    for member in 0..plan.members.max(1) as u64 {
        let params = TrainParams {
            seed: plan.params.seed.wrapping_add(member),
            ..plan.params.clone()
        };
        let (tensors, report) = train(
            shape,
            &train_set,
            &val_set,
            &params,
            start.as_ref(),
            &mut on_epoch,
        )?;
        members.push(tensors);
        reports.push(report);
    }
    let report = reports.swap_remove(0);
    let tensors = if members.len() == 1 {
        members.swap_remove(0)
    } else {
        crate::model::train::merge_members(&members)?
    };
    let packaged = |e: crate::model::ModelError| TrainError::Data(e.to_string());
    let bytes = crate::model::file::encode(&info, &tensors).map_err(packaged)?;
    let model = Model::from_bytes(&bytes, &info.name).map_err(packaged)?;
    let val_scores = model.mlp.predict(&val_set.x, val_set.len())?;
    let (tpr, _) = crate::model::eval::tpr_at_fpr(&val_scores, &val_set.y, 0.001);
    Ok(Fitted {
        model,
        bytes,
        report,
        split,
        validation_tpr_at_fpr_0_001: tpr,
    })
}

/// Trains a model of `options.schema` on `labelled` with the offline settings, printing each
/// epoch when `verbose`.
pub fn fit_offline(
    labelled: &Labelled,
    options: &crate::recipe::TrainingOptions,
    info: ModelInfo,
    verbose: bool,
) -> Result<Fitted, TrainError> {
    let plan = FitPlan {
        schema: options.schema,
        base: None,
        params: TrainParams {
            epochs: options.epochs,
            learning_rate: options.learning_rate,
            batch_size: options.batch_size,
            patience: options.patience,
            seed: options.seed,
            // v4's corpus holds a session of every threat family per few training hosts:
            // weighting them up to the benign rows' total made the model alert on benign names
            // of hosts it never saw (leave-one-out runs: about half the benign alerts at the
            // same recall with weight 1).
            positive_weight: options
                .positive_weight
                .or((options.schema == Schema::DnsexfilV4).then_some(1.0)),
            ..Default::default()
        },
        validation_fraction: options.val_fraction,
        threshold: 0.5,
        window_secs: options.window,
        members: options.members,
    };
    fit_labelled(labelled, &plan, info, |e| {
        if verbose {
            eprintln!(
                "epoch {:3}: train loss {:.5}, validation loss {:.5}, validation AUC {:.5}",
                e.epoch, e.train_loss, e.val_loss, e.val_auc
            )
        }
    })
}

/// The training corpus of `dnsexfil train`: the real log without the `test` hosts (and without
/// the sources of left-out real tools), plus synthetic sessions riding on training hosts.
/// dnsexfil-v2 models keep their original recipe (generic encoded tunnels); dnsexfil-v3 and v4
/// models get the threat model's families.
pub fn training_corpus(
    real: &crate::corpus::RealLog,
    test: &BTreeSet<String>,
    leave_out: &[String],
    options: &crate::recipe::TrainingOptions,
) -> crate::corpus::Corpus {
    let malicious = real.malicious_sources();
    let mut dropped: BTreeSet<String> = test.clone();
    for tool in leave_out {
        dropped.extend(real.sources_of_tool(tool));
    }
    let hosts: BTreeSet<String> = real
        .events
        .iter()
        .map(|e| &e.src)
        .filter(|src| !dropped.contains(*src))
        .cloned()
        .collect();
    let carriers: BTreeSet<String> = hosts.difference(&malicious).cloned().collect();
    match options.schema {
        Schema::DnsexfilV2 => {
            let mut corpus = crate::corpus::build(
                real,
                &hosts,
                &carriers,
                &crate::corpus::ThreatPlan {
                    per_family: 0,
                    per_benign_family: 0,
                    leave_out: Vec::new(),
                    seed: options.seed,
                    only: Vec::new(),
                    packetwhisper: options.packetwhisper,
                },
            );
            // The v2 recipe drew its sessions from the whole log's span and donors.
            let (events, labels) = dataset::synthetic_tunnels(
                &real.events,
                &real.labels,
                &carriers,
                options.synthetic_sessions,
                options.seed,
            );
            corpus.events.extend(events);
            corpus.labels.extend(labels);
            corpus
        }
        _ => crate::corpus::build(
            real,
            &hosts,
            &carriers,
            &crate::corpus::ThreatPlan {
                per_family: options.threat_sessions,
                per_benign_family: options.lookalike_sessions,
                leave_out: leave_out.to_vec(),
                seed: options.seed,
                only: Vec::new(),
                packetwhisper: options.packetwhisper,
            },
        ),
    }
}

/// `dnsexfil train`: the same training from a labelled log on disk (`data/dev`'s format),
/// replayed in windows like the hourly search, with synthetic sessions added and an optional
/// host-disjoint test set written out for `eval/evaluate.py`.
pub fn run_offline(args: &crate::recipe::TrainArgs) -> anyhow::Result<()> {
    use anyhow::Context;

    let options = &args.options;
    crate::validate_name(&args.name).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.leave_out.is_empty() || options.schema != Schema::DnsexfilV2,
        "--leave-out needs --schema dnsexfil-v3 or later (the v2 recipe has no tool families)"
    );
    let real =
        crate::corpus::RealLog::read(&args.events, &args.labels).map_err(anyhow::Error::msg)?;
    let known = real.tools_to_leave_out();
    for tool in &args.leave_out {
        anyhow::ensure!(
            known.contains(tool),
            "--leave-out: unknown tool `{tool}`; known: {}",
            known.join(", ")
        );
    }
    // The held-out test hosts are chosen first, from the real log only, so that synthetic
    // sessions never ride on them.
    let test: BTreeSet<String> = if args.test_fraction > 0.0 {
        dataset::split_event_sources(&real.events, &real.labels, args.test_fraction, options.seed).1
    } else {
        BTreeSet::new()
    };
    let corpus = training_corpus(&real, &test, &args.leave_out, options);
    let kept = crate::corpus::labelled_features(
        &corpus,
        options.schema,
        options.window,
        options.source_groups,
    )
    .map_err(anyhow::Error::msg)?;
    eprintln!(
        "{} labelled rank-1 events from {} events",
        kept.data.len(),
        corpus.events.len()
    );
    if let Some(dir) = &args.split_out {
        write_split(dir, &args.events, &args.labels, &test)?;
    }
    let kept_srcs: BTreeSet<String> = kept.srcs.iter().cloned().collect();

    let info = ModelInfo {
        name: args.name.clone(),
        schema: options.schema,
        // The ESCU detection's column names, so its search can switch to this model by name.
        target: crate::model::convert::ESCU_TARGET.into(),
        threshold: 0.5,
        source_file: args
            .events
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source_sha256: crate::model::sha256_hex(&std::fs::read(&args.events)?),
        created_by: format!("dnsexfil {} train", env!("CARGO_PKG_VERSION")),
    };
    let fitted = fit_offline(&kept, options, info, true)?;
    let (train_srcs, val_srcs) = match &fitted.split {
        ValidationSplit::BySource { train, validation } => (train.clone(), validation.clone()),
        ValidationSplit::ByRow => (kept_srcs.clone(), BTreeSet::new()),
    };
    crate::fsutil::write_atomic(&args.output, &fitted.bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let report = &fitted.report;
    let mut params = serde_json::json!({"epochs": options.epochs, "learning_rate": options.learning_rate, "batch_size": options.batch_size,
                   "patience": options.patience, "seed": options.seed, "val_fraction": options.val_fraction,
                   "positive_weight": options.positive_weight,
                   "test_fraction": args.test_fraction, "window": options.window,
                   "source_groups": options.source_groups});
    match options.schema {
        Schema::DnsexfilV2 => params["synthetic_sessions"] = options.synthetic_sessions.into(),
        _ => {
            params["threat_sessions"] = options.threat_sessions.into();
            params["lookalike_sessions"] = options.lookalike_sessions.into();
            params["leave_out"] = serde_json::json!(args.leave_out);
            // Only when not the default, so the default model's report stays as it was.
            if options.packetwhisper != crate::threats::PacketWhisperCiphers::V4 {
                params["packetwhisper"] = "tool".into();
            }
        }
    }
    let report_json = serde_json::json!({
        "model": args.output.file_name().map(|n| n.to_string_lossy().into_owned()),
        "model_sha256": crate::model::sha256_hex(&fitted.bytes),
        "schema": options.schema.name(),
        "params": params,
        "rows": {"train": report.train_rows, "validation": report.val_rows},
        "sources": {"train": train_srcs, "validation": val_srcs, "test": test},
        "positive_weight": report.positive_weight,
        "epochs_run": report.epochs_run,
        "best_epoch": report.best.epoch,
        "validation": {"loss": report.best.val_loss, "roc_auc": report.best.val_auc,
                       "tpr_at_fpr_0.001": fitted.validation_tpr_at_fpr_0_001},
    });
    let report_path = std::path::PathBuf::from(format!("{}.report.json", args.output.display()));
    crate::fsutil::write_atomic(
        &report_path,
        serde_json::to_string_pretty(&report_json)?.as_bytes(),
    )?;
    println!(
        "wrote {} (best epoch {}, validation AUC {:.5}, TPR {:.4} at FPR 0.1%) and {}",
        args.output.display(),
        report.best.epoch,
        report.best.val_auc,
        fitted.validation_tpr_at_fpr_0_001,
        report_path.display()
    );
    Ok(())
}

/// Writes the events and labels of the `test` sources, for `eval/evaluate.py`. Records are
/// read with the CSV scanner (a quoted `src` may hold commas) and written back as they were.
fn write_split(
    dir: &std::path::Path,
    events: &std::path::Path,
    labels: &std::path::Path,
    test: &BTreeSet<String>,
) -> anyhow::Result<()> {
    use crate::dsdl::csvscan::{Field, Scanner};
    for (from, to) in [(events, "test_events.csv"), (labels, "test_labels.csv")] {
        let text = std::fs::read_to_string(from)?;
        let mut scanner = Scanner::new(&text);
        let mut fields: Vec<Field> = Vec::new();
        let mut out = String::new();
        let mut src_col = None;
        let mut record_start = 0;
        while scanner
            .next_record(&mut fields)
            .map_err(anyhow::Error::msg)?
            .is_some()
        {
            let record_end = scanner.position();
            let record = &text[record_start..record_end];
            record_start = record_end;
            let keep = match src_col {
                None => {
                    src_col = fields.iter().position(|f| f.text(&text).trim() == "src");
                    anyhow::ensure!(src_col.is_some(), "{} has no `src` column", from.display());
                    true
                }
                Some(c) => fields
                    .get(c)
                    .is_some_and(|f| test.contains(f.text(&text).as_ref())),
            };
            if keep {
                out.push_str(record.trim_start_matches(['\r', '\n']));
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        crate::fsutil::write_atomic(&dir.join(to), out.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect()
    }

    #[test]
    fn fit_parameters_are_checked_and_named_in_errors() {
        let registry = Registry::new();
        registry.insert(crate::model::default_model().unwrap());
        let plan = FitPlan::from_request(
            Some("dnsexfil"),
            "m",
            &params(&[("epochs", "5"), ("learning_rate", "0.01"), ("seed", "9")]),
            &registry,
        )
        .unwrap();
        assert_eq!(plan.schema, Schema::DnsexfilV4);
        assert!(plan.base.is_none());
        assert_eq!(
            (
                plan.params.epochs,
                plan.params.learning_rate,
                plan.params.seed
            ),
            (5, 0.01, 9)
        );
        for (bad, named) in [
            (("epochs", "many"), "`epochs`"),
            (("epochs", "0"), "`epochs`"),
            (("learning_rate", "-1"), "`learning_rate`"),
            (("validation_fraction", "1.5"), "`validation_fraction`"),
            (("threshold", "nan"), "`threshold`"),
            (("epoch", "5"), "unknown fit parameter `epoch`"),
            (("base", "nope"), "`base`"),
        ] {
            let e = FitPlan::from_request(Some("dnsexfil"), "m", &params(&[bad]), &registry)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(e.contains(named), "{bad:?}: {e}");
        }
        let e = FitPlan::from_request(Some("kmeans"), "m", &[], &registry)
            .err()
            .unwrap();
        assert!(e.contains("unknown algorithm `kmeans`"), "{e}");
        // Without the published model loaded, fine-tuning it is explained, not attempted.
        let e = FitPlan::from_request(Some(ESCU_MODEL_NAME), "m", &[], &registry)
            .err()
            .unwrap();
        assert!(e.contains("needs the published model loaded"), "{e}");
        let tuned = FitPlan::from_request(
            Some("x"),
            "m",
            &params(&[("base", "dnsexfil_v4")]),
            &registry,
        )
        .unwrap();
        assert_eq!(tuned.base.unwrap().info.name, "dnsexfil_v4");
        assert_eq!(tuned.params.learning_rate, 1e-4);
    }

    #[test]
    fn labels_are_read_leniently_and_bad_ones_are_named() {
        assert_eq!(parse_label("1"), Some(1.0));
        assert_eq!(parse_label("\"0\""), Some(0.0));
        assert_eq!(parse_label("1.0"), Some(1.0));
        assert_eq!(parse_label("True"), Some(1.0));
        assert_eq!(parse_label("2"), None);
        assert_eq!(parse_label(""), None);
        let csv = "src,query,rank,y\nh,a.example.com,1,1\nh,b.example.com,1,yes\nh,a.example.com,2,junk\nh,c.example.com,1,\n";
        let table = Table::parse_with_target(csv, 100, Some("y")).unwrap();
        let e = labelled_from_table(&table, Schema::DnsexfilV2, "y", 3600.0)
            .err()
            .unwrap();
        assert!(e.contains("2 of 3"), "{e}");
        assert!(
            e.contains("row 2: `yes`") && e.contains("row 4: empty"),
            "{e}"
        );
        // A history row's label is never read.
        let csv = "src,query,rank,y\nh,a.example.com,1,1\nh,a.example.com,2,junk\n";
        let table = Table::parse_with_target(csv, 100, Some("y")).unwrap();
        let (l, w) = labelled_from_table(&table, Schema::DnsexfilV2, "y", 3600.0).unwrap();
        assert_eq!(l.data.y, vec![1.0]);
        assert_eq!(w, Windowing::WholeRequest);
    }

    #[test]
    fn with_time_rows_are_replayed_in_windows_with_ranks_recomputed() {
        // Two hours; `a` is queried twice in the first (only the newest is scored) and once in
        // the second; the sent ranks are ignored.
        let csv = "src,query,rank,y,_time\n\
                   h,a.example.com,7,1,100\n\
                   h,a.example.com,1,0,200\n\
                   h,b.example.com,1,0,150\n\
                   h,a.example.com,3,1,3700\n";
        let table = Table::parse_with_target(csv, 100, Some("y")).unwrap();
        let (l, w) = labelled_from_table(&table, Schema::DnsexfilV2, "y", 3600.0).unwrap();
        assert_eq!(
            w,
            Windowing::ByTime {
                seconds: 3600.0,
                windows: 2
            }
        );
        // Window 1: a@200 (label 0), b@150 (label 0); window 2: a@3700 (label 1).
        assert_eq!(l.data.y, vec![0.0, 0.0, 1.0]);
        let bad = "src,query,rank,y,_time\nh,a.example.com,1,1,yesterday\n";
        let table = Table::parse_with_target(bad, 100, Some("y")).unwrap();
        let e = labelled_from_table(&table, Schema::DnsexfilV2, "y", 3600.0)
            .err()
            .unwrap();
        assert!(
            e.contains("`_time` must be a number") && e.contains("`yesterday`"),
            "{e}"
        );
    }

    #[test]
    fn validation_falls_back_to_rows_when_sources_cannot_be_split() {
        // One malicious source: holding it out would leave training without positives.
        let mut data = Dataset::new(1);
        let mut srcs = Vec::new();
        for i in 0..40 {
            let y = (i % 4 == 0) as u8 as f32;
            data.push(&[i as f32], y);
            srcs.push(if y == 1.0 {
                "bad".into()
            } else {
                format!("h{}", i % 3)
            });
        }
        let labelled = Labelled { data, srcs };
        let (train_set, val_set, split) = validation_split(&labelled, 0.2, 1).unwrap();
        assert_eq!(split, ValidationSplit::ByRow);
        assert_eq!(train_set.len() + val_set.len(), 40);
        assert!(has_both_classes(&train_set) && has_both_classes(&val_set));
        // Two of each kind: whole sources go to validation.
        let mut labelled = labelled;
        for s in labelled.srcs.iter_mut().step_by(8) {
            *s = "bad2".into();
        }
        let (_, _, split) = validation_split(&labelled, 0.3, 1).unwrap();
        assert!(
            matches!(split, ValidationSplit::BySource { .. }),
            "{split:?}"
        );
    }
}
