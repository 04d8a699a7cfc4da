//! `dnsexfil train` and `dnsexfil evaluate`'s training: a labelled log plus the threat model's
//! sessions, fitted with the recipe's options, written with its report.

use super::{fit_labelled, FitPlan, Fitted, ValidationSplit};
use std::collections::BTreeSet;

use crate::data::dataset;

use crate::data::dataset::Labelled;
use crate::features::Schema;
use crate::model::train::{EpochSelection, TrainError, TrainParams, ValidationLoss};
use crate::model::ModelInfo;

/// Trains a model of `options.schema` on `labelled` with the offline settings, printing each
/// epoch when `verbose`.
pub fn fit_offline(
    labelled: &Labelled,
    options: &crate::engine::recipe::TrainingOptions,
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
            select_epoch: options.select_epoch,
            validation_loss: options.validation_loss,
            positive_weight: options.positive_weight(),
            constraints: options
                .evidence_part
                .then(|| evidence_constraints(options.schema))
                .transpose()
                .map_err(TrainError::Data)?,
            hidden_group: (options.hide_look > 0.0)
                .then(|| look_columns(options.schema))
                .transpose()
                .map_err(TrainError::Data)?
                .map(|columns| crate::model::train::HiddenGroup {
                    columns,
                    share: options.hide_look,
                }),
            ..Default::default()
        },
        validation_fraction: options.val_fraction,
        threshold: 0.5,
        window_secs: options.window,
        members: options.members,
        alert_at: options.alert_at(),
    };
    fit_labelled(labelled, &plan, info, |e| {
        if verbose {
            eprintln!(
                "epoch {:3}: train loss {:.5}, validation loss {:.5}, validation AUC {:.5}{}",
                e.epoch,
                e.train_loss,
                e.val_loss,
                e.val_auc,
                worst_source(e)
            )
        }
    })
}

/// Features that are evidence of a channel whatever the names look like: more of them never
/// makes a name less suspicious (see `src/model/monotone.rs`).
const EVIDENCE_FEATURES: [&str; 8] = [
    "pair_log_distinct",
    "psl_pair_log_distinct",
    "icann_pair_log_domains",
    "icann_pair_template_log_count",
    "icann_pair_unique_name_share",
    "icann_pair_excess",
    "src_log_payload_names_on_unique_domains",
    "src_log_unique_domains_with_payload",
];

/// Features the context part may not read because they reveal the evidence's volume.
const VOLUME_FEATURES: [&str; 1] = ["pair_log_volume"];

/// The names' look: what `--hide-look` hides.
const LOOK_FEATURES: [&str; 23] = [
    "query_len",
    "sub_len",
    "sub_labels",
    "sub_longest_label",
    "sub_entropy",
    "sub_digit_ratio",
    "sub_upper_ratio",
    "sub_hex_ratio",
    "sub_base32_ratio",
    "sub_other_ratio",
    "sub_vowel_ratio",
    "sub_unique_ratio",
    "sub_max_consonant_run",
    "sub_mixed_case",
    "escapes",
    "pair_mean_sub_len",
    "pair_max_sub_len",
    "pair_mean_entropy",
    "pair_mean_longest_label",
    "pair_long_sub_share",
    "pair_mean_digit_ratio",
    "sub_class_switch_ratio",
    "icann_pair_sub_len_cv",
];

/// Columns of `wanted` among the features of `schema` (dnsexfil-v3 and later).
fn columns_of(schema: Schema, option: &str, wanted: &[&str]) -> Result<Vec<usize>, String> {
    let names: Vec<&str> = match schema {
        Schema::DnsexfilV3 => crate::features::v3::names().collect(),
        Schema::DnsexfilV4 => crate::features::v4::names().collect(),
        Schema::DnsexfilV5 => crate::features::v5::names().collect(),
        other => {
            return Err(format!(
                "{option} needs dnsexfil-v3 or later, not {}",
                other.name()
            ))
        }
    };
    Ok(wanted
        .iter()
        .map(|w| {
            names
                .iter()
                .position(|n| n == w)
                .expect("the named features are v3's")
        })
        .collect())
}

/// `--hide-look`'s columns for `schema`.
fn look_columns(schema: Schema) -> Result<Vec<usize>, String> {
    columns_of(schema, "--hide-look", &LOOK_FEATURES)
}

/// `--evidence-part`'s constraints for a network of `schema`.
fn evidence_constraints(
    schema: Schema,
) -> Result<crate::model::monotone::WeightConstraints, String> {
    let shape = crate::model::file::shape_for(schema);
    crate::model::monotone::WeightConstraints::evidence_split(
        shape,
        &crate::model::monotone::EvidenceSplit {
            evidence: columns_of(schema, "--evidence-part", &EVIDENCE_FEATURES)?,
            hidden_from_context: columns_of(schema, "--evidence-part", &VOLUME_FEATURES)?,
            evidence_units: (shape.hidden_1 / 4, shape.hidden_2 / 4),
        },
    )
}

/// `, worst validation source N% of the loss` when the epoch knows it.
pub fn worst_source(e: &crate::model::train::EpochStats) -> String {
    e.worst_source_share
        .map(|share| {
            format!(
                ", worst validation source {:.0}% of the loss",
                share * 100.0
            )
        })
        .unwrap_or_default()
}

/// The training corpus of `dnsexfil train`: the real log without the `test` hosts (and without
/// the sources of left-out real tools), plus synthetic sessions riding on training hosts.
/// dnsexfil-v2 models keep their original recipe (generic encoded tunnels); dnsexfil-v3 and later
/// models get the threat model's families, and dnsexfil-v5 models its long-window additions
/// (short slow tunnels, visit ids).
pub fn training_corpus(
    real: &crate::data::corpus::RealLog,
    test: &BTreeSet<String>,
    leave_out: &[String],
    options: &crate::engine::recipe::TrainingOptions,
) -> crate::data::corpus::Corpus {
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
            let mut corpus = crate::data::corpus::build(
                real,
                &hosts,
                &carriers,
                &crate::data::corpus::ThreatPlan {
                    per_family: 0,
                    per_benign_family: 0,
                    leave_out: Vec::new(),
                    seed: options.seed,
                    only: Vec::new(),
                    packetwhisper: options.packetwhisper,
                    randomised_cover: options.randomised_cover,
                    long_window: false,
                    server_roles: false,
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
        _ => crate::data::corpus::build(
            real,
            &hosts,
            &carriers,
            &crate::data::corpus::ThreatPlan {
                per_family: options.threat_sessions,
                per_benign_family: options.lookalike_sessions,
                leave_out: leave_out.to_vec(),
                seed: options.seed,
                only: Vec::new(),
                packetwhisper: options.packetwhisper,
                randomised_cover: options.randomised_cover,
                long_window: options.schema.uses_prior(),
                server_roles: options.server_lookalikes(),
            },
        ),
    }
}

/// `dnsexfil train`: the same training from a labelled log on disk (`data/dev`'s format),
/// replayed in windows like the hourly search, with synthetic sessions added and an optional
/// host-disjoint test set written out for `eval/evaluate.py`.
pub fn run_offline(args: &crate::engine::recipe::TrainArgs) -> anyhow::Result<()> {
    use anyhow::Context;

    args.check().map_err(anyhow::Error::msg)?;
    let options = &args.options;
    crate::util::validate_name(&args.name)?;
    let real = crate::data::corpus::RealLog::read(&args.events, &args.labels)
        .map_err(anyhow::Error::msg)?;
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
    let kept = crate::data::corpus::labelled_features(
        &corpus,
        options.schema,
        options.window,
        options.source_groups,
        options.empty_window_copy,
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
    crate::util::fs::write_atomic(&args.output, &fitted.bytes)
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
            if options.packetwhisper != crate::data::threats::PacketWhisperCiphers::V4 {
                params["packetwhisper"] = "tool".into();
            }
            if options.randomised_cover != crate::data::threats::RandomisedCover::Platforms {
                params["randomised_cover"] = options.randomised_cover.name().into();
            }
        }
    }
    // Likewise only when not the default.
    if options.select_epoch != EpochSelection::Best {
        params["select_epoch"] = "last".into();
    }
    if options.validation_loss != ValidationLoss::Rows {
        params["validation_loss"] = "per-source".into();
    }
    if options.evidence_part {
        params["evidence_part"] = true.into();
    }
    if options.hide_look > 0.0 {
        params["hide_look"] = options.hide_look.into();
    }
    if options.empty_window_copy {
        params["empty_window_copy"] = true.into();
    }
    if options.server_lookalikes() {
        params["server_lookalikes"] = true.into();
    }
    if options.alert_at() != 0.5 {
        params["alert_at"] = options.alert_at().into();
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
    crate::util::fs::write_atomic(
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
        crate::util::fs::write_atomic(&dir.join(to), out.as_bytes())?;
    }
    Ok(())
}
