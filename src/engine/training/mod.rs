//! Fitting a model from labelled rows: what `POST /fit` and `dnsexfil train` share. It chooses
//! the schema and starting point, reads the fit's parameters, splits off validation rows by
//! source, trains, and packages the result as a model file.
//!
//! `plan` reads a fit's algorithm and parameters, `labels` turns a fit's table into labelled
//! rows, this module fits labelled rows (validation split, training, packaging), and `offline`
//! is what `dnsexfil train` and `evaluate` add: the corpus, the split, the files.

pub mod labels;
pub mod offline;
pub mod plan;

pub use labels::{labelled_from_table, FitDataError, Windowing};
pub use offline::{fit_offline, run_offline, training_corpus};
pub use plan::{FitPlan, FitRequestError, FIT_PARAMS, FRESH_ALGORITHMS};

use std::collections::{BTreeSet, HashMap};

use candle_core::Tensor;

use crate::data::dataset;

use crate::data::dataset::Labelled;
use crate::model::file::shape_for;
use crate::model::train::{train, Dataset, EpochStats, TrainError, TrainParams, TrainReport};
use crate::model::{Model, ModelInfo};
use crate::util::rng::SplitMix64;

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

/// A class with too few rows to put some on each side of the validation split.
#[derive(Debug, thiserror::Error)]
#[error("training needs at least 2 rows labelled {label} (found {found}); add {} examples", if *.label == 1 { "malicious (1)" } else { "benign (0)" })]
pub struct TooFewRows {
    pub label: u8,
    pub found: usize,
}

/// Training and validation rows.
pub struct SplitRows {
    pub train: Dataset,
    pub validation: Dataset,
    /// The source of each validation row, numbered in the order of the sources' names.
    pub validation_sources: Vec<u32>,
    pub how: ValidationSplit,
}

/// Splits `labelled` into training and validation rows: by source when both sides then see both
/// classes, else by row (stratified). Deterministic for `seed`.
pub fn validation_split(
    labelled: &Labelled,
    fraction: f64,
    seed: u64,
) -> Result<SplitRows, TooFewRows> {
    let (train_srcs, val_srcs) = dataset::split_sources(labelled, fraction, seed.wrapping_add(1));
    let train_set = dataset::subset(labelled, &train_srcs);
    let val_set = dataset::subset(labelled, &val_srcs);
    if has_both_classes(&train_set) && has_both_classes(&val_set) {
        let validation_sources = source_numbers(labelled, |i| val_srcs.contains(&labelled.srcs[i]));
        return Ok(SplitRows {
            train: train_set,
            validation: val_set,
            validation_sources,
            how: ValidationSplit::BySource {
                train: train_srcs,
                validation: val_srcs,
            },
        });
    }
    let data = &labelled.data;
    let mut train_set = Dataset::new(data.width);
    let mut val_set = Dataset::new(data.width);
    let mut val_rows = Vec::new();
    let mut rng = SplitMix64::new(seed.wrapping_add(2));
    for class in [0.0f32, 1.0] {
        let mut rows: Vec<usize> = (0..data.len()).filter(|&i| data.y[i] == class).collect();
        if rows.len() < 2 {
            return Err(TooFewRows {
                label: class as u8,
                found: rows.len(),
            });
        }
        for i in (1..rows.len()).rev() {
            rows.swap(i, rng.below(i + 1));
        }
        let held = ((rows.len() as f64 * fraction).round() as usize).clamp(1, rows.len() - 1);
        rows[..held].sort_unstable();
        rows[held..].sort_unstable();
        val_rows.extend_from_slice(&rows[..held]);
        for (k, &i) in rows.iter().enumerate() {
            let target = if k < held {
                &mut val_set
            } else {
                &mut train_set
            };
            target.push(&data.x[i * data.width..(i + 1) * data.width], class);
        }
    }
    let validation_sources = number_sources(val_rows.iter().map(|&i| &labelled.srcs[i]));
    Ok(SplitRows {
        train: train_set,
        validation: val_set,
        validation_sources,
        how: ValidationSplit::ByRow,
    })
}

/// The sources of the rows of `labelled` that `keep` accepts, in row order, numbered in the
/// order of their names.
fn source_numbers(labelled: &Labelled, keep: impl Fn(usize) -> bool) -> Vec<u32> {
    number_sources(
        (0..labelled.srcs.len())
            .filter(|&i| keep(i))
            .map(|i| &labelled.srcs[i]),
    )
}

/// Each source of `srcs` as its rank among the distinct sources' names.
fn number_sources<'a>(srcs: impl Iterator<Item = &'a String> + Clone) -> Vec<u32> {
    let names: BTreeSet<&String> = srcs.clone().collect();
    let number: HashMap<&String, u32> = names.into_iter().zip(0..).collect();
    srcs.map(|s| number[s]).collect()
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
    let SplitRows {
        train: train_set,
        validation: val_set,
        validation_sources,
        how: split,
    } = validation_split(labelled, plan.validation_fraction, plan.params.seed)
        .map_err(|e| TrainError::Data(e.to_string()))?;
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
            &validation_sources,
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
    let tensors = crate::model::train::shift_output_bias(tensors, plan.alert_at)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::parse_label;
    use crate::dsdl::table::Table;
    use crate::features::Schema;
    use crate::model::convert::ESCU_MODEL_NAME;
    use crate::store::Registry;

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
                .unwrap_or_else(|| panic!("{bad:?} was accepted"))
                .to_string();
            assert!(e.contains(named), "{bad:?}: {e}");
        }
        let e = FitPlan::from_request(Some("kmeans"), "m", &[], &registry)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown algorithm `kmeans`"), "{e}");
        // Without the published model loaded, fine-tuning it is explained, not attempted.
        let e = FitPlan::from_request(Some(ESCU_MODEL_NAME), "m", &[], &registry)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("needs the published model loaded"), "{e}");
        let tuned = FitPlan::from_request(
            Some("x"),
            "m",
            &params(&[("base", "dnsexfil_v7")]),
            &registry,
        )
        .unwrap();
        assert_eq!(tuned.base.unwrap().info.name, "dnsexfil_v7");
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
            .unwrap()
            .to_string();
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
            .unwrap()
            .to_string();
        assert!(
            e.contains("`_time` must be a number") && e.contains("`yesterday`"),
            "{e}"
        );
    }

    #[test]
    fn a_v5_fit_replays_its_hours_so_each_row_sees_what_came_before() {
        // Two names of one tunnel domain in the first hour, a third in the second: only the
        // second hour's row has a long window, as at /apply after the first hour was scored.
        let t = 1_800_000_000;
        let csv = format!(
            "src,query,rank,y,_time\n\
             h,x1.tun.net,1,1,{}\n\
             h,x2.tun.net,1,1,{}\n\
             h,x3.tun.net,1,1,{}\n",
            t + 10,
            t + 20,
            t + 3610
        );
        let table = Table::parse_with_target(&csv, 100, Some("y")).unwrap();
        let (l, _) = labelled_from_table(&table, Schema::DnsexfilV5, "y", 3600.0).unwrap();
        assert_eq!(l.data.y.len(), 3);
        assert_eq!(
            (prior_distinct_of(&l, 0), prior_distinct_of(&l, 1)),
            (0.0, 0.0)
        );
        assert!(prior_distinct_of(&l, 2) > 0.0);
        // Without `_time` the table is one request with nothing before it.
        let untimed = "src,query,rank,y\nh,x1.tun.net,1,1\nh,x3.tun.net,1,1\n";
        let table = Table::parse_with_target(untimed, 100, Some("y")).unwrap();
        let (l, _) = labelled_from_table(&table, Schema::DnsexfilV5, "y", 3600.0).unwrap();
        assert!((0..2).all(|row| prior_distinct_of(&l, row) == 0.0));
    }

    fn prior_distinct_of(l: &crate::data::dataset::Labelled, row: usize) -> f32 {
        l.data.x[row * l.data.width + crate::features::v4::WIDTH]
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
        let rows = validation_split(&labelled, 0.2, 1).unwrap();
        assert_eq!(rows.how, ValidationSplit::ByRow);
        assert_eq!(rows.train.len() + rows.validation.len(), 40);
        assert!(has_both_classes(&rows.train) && has_both_classes(&rows.validation));
        assert_eq!(rows.validation_sources.len(), rows.validation.len());
        // Two of each kind: whole sources go to validation.
        let mut labelled = labelled;
        for s in labelled.srcs.iter_mut().step_by(8) {
            *s = "bad2".into();
        }
        let rows = validation_split(&labelled, 0.3, 1).unwrap();
        let ValidationSplit::BySource { validation, .. } = &rows.how else {
            panic!("{:?}", rows.how);
        };
        // Each validation row is numbered by its source's rank among the validation sources.
        let names: Vec<&String> = validation.iter().collect();
        let expected: Vec<&String> = labelled
            .srcs
            .iter()
            .filter(|s| validation.contains(*s))
            .collect();
        let numbered: Vec<&String> = rows
            .validation_sources
            .iter()
            .map(|&n| names[n as usize])
            .collect();
        assert_eq!(numbered, expected);
    }
}
