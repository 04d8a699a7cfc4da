//! Leave-one-tool-out evaluation (`dnsexfil evaluate`): the honest proxy for tools nobody has
//! seen. For each tool, a model is trained without it (its synthetic families are not generated,
//! the log's sources of that tool are dropped) and scored on hosts it never trained on:
//!
//! - the held-out share of the log's benign hosts, with all their real traffic;
//! - new sessions of the left-out tool (another seed), riding on those hosts or on their own;
//! - new bursts of every benign look-alike family on those hosts;
//! - for a tool of the log (`iodine`, ...), every real session of it.
//!
//! Figures per tool: recall at the 0.5 threshold, TPR at FPR 0.1% (against every benign row of
//! the evaluation hosts), benign alerts on the hosts' real traffic and on the injected
//! look-alikes, and sessions with at least one alert.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;

use crate::data::corpus;

use crate::data::corpus::{Corpus, RealLog, ThreatPlan};
use crate::data::dataset;
use crate::data::threats::Family;
use crate::engine::recipe::{EvaluateArgs, TrainingOptions};
use crate::model::{Model, ModelInfo};

/// Added to the training seed for everything generated on evaluation hosts.
const EVALUATION_SEED_OFFSET: u64 = 1_000_003;

/// How one model did on one tool.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolResult {
    pub tool: String,
    /// Whether the tool was left out of the model's training.
    pub left_out: bool,
    pub positives: usize,
    pub recall_at_threshold: f64,
    pub tpr_at_fpr_0_001: f64,
    pub roc_auc: f64,
    pub sessions_detected: usize,
    pub sessions: usize,
    pub benign_rows: usize,
    pub benign_alerts_real: usize,
    pub benign_alerts_lookalike: usize,
    pub benign_alerts_by_family: BTreeMap<String, usize>,
    /// Benign alerts on the held-out hosts' own (real) traffic, per host: whether a few hosts
    /// of one kind make them.
    pub benign_alerts_real_by_host: BTreeMap<String, usize>,
    /// The 60 highest-scoring benign rows: (score, src, query, family); enough to hold every
    /// benign alert of a typical run, so a report shows what the alerts are.
    pub top_benign: Vec<(f32, String, String, String)>,
    /// The 60 lowest-scoring rows of the tool.
    pub lowest_positives: Vec<(f32, String, String, String)>,
    /// Per family of the tool: rows, rows alerted, sessions, sessions alerted, so a report shows
    /// which of a tool's ciphers or modes were missed.
    pub by_family: BTreeMap<String, FamilyResult>,
}

/// How one model did on one family of a tool.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FamilyResult {
    pub rows: usize,
    pub rows_alerted: usize,
    pub sessions: usize,
    pub sessions_alerted: usize,
}

/// One scored rank-1 row of an evaluation corpus.
struct Scored {
    score: f32,
    label: f32,
    family: Option<String>,
    session: Option<String>,
    src: String,
    query: String,
}

pub fn run(args: &EvaluateArgs) -> anyhow::Result<()> {
    args.check().map_err(anyhow::Error::msg)?;
    let real = RealLog::read(&args.events, &args.labels).map_err(anyhow::Error::msg)?;
    let options = &args.options;
    let known = real.tools_to_leave_out();
    let tools: Vec<String> = if args.tools.is_empty() {
        known.clone()
    } else {
        args.tools.clone()
    };
    for tool in &tools {
        anyhow::ensure!(
            tool == "none" || known.contains(tool),
            "unknown tool `{tool}`; known: none, {}",
            known.join(", ")
        );
    }
    for tool in &args.also_leave_out {
        anyhow::ensure!(
            known.contains(tool),
            "unknown tool `{tool}` in --also-leave-out; known: {}",
            known.join(", ")
        );
    }
    let (_, test) =
        dataset::split_event_sources(&real.events, &real.labels, args.test_fraction, options.seed);
    if args.reliability {
        anyhow::ensure!(
            args.tools.iter().all(|t| t == "none") && args.also_leave_out.is_empty(),
            "--reliability trains on everything: give no --tools (or --tools none) and no --also-leave-out"
        );
        let (_, scored) = train_and_score(&real, &test, &[], &[], args)?;
        let bins = reliability(&scored);
        println!("| probability | rows | malicious | benign (real / look-alike) | mean probability | malicious share |");
        println!("|---|---|---|---|---|---|");
        for bin in &bins {
            println!(
                "| {} | {} | {} | {} / {} | {:.4} | {:.4} |",
                bin.range,
                bin.rows,
                bin.malicious,
                bin.benign_real,
                bin.benign_lookalike,
                bin.mean_probability,
                bin.malicious as f64 / bin.rows.max(1) as f64
            );
        }
        return write_report(args, &test, "reliability", serde_json::to_value(&bins)?);
    }
    let mut results = Vec::new();
    println!("| tool left out | positives | recall at 0.5 | TPR at FPR 0.1% | ROC AUC | sessions alerted | benign alerts (real / look-alike) |");
    println!("|---|---|---|---|---|---|---|");
    for tool in &tools {
        let left_out: Vec<String> = if tool == "none" {
            Vec::new()
        } else {
            vec![tool.clone()]
        };
        let mut left_out_of_training = left_out.clone();
        left_out_of_training.extend(args.also_leave_out.iter().filter(|t| *t != tool).cloned());
        let (evaluation, scored) =
            train_and_score(&real, &test, &left_out_of_training, &left_out, args)
                .with_context(|| format!("leaving out `{tool}`"))?;
        let scored_tools = if tool == "none" {
            known.clone()
        } else {
            vec![tool.clone()]
        };
        for scored_tool in scored_tools {
            let r = tool_result(&scored, &evaluation, &scored_tool, tool != "none");
            println!(
                "| {} | {} | {:.3} | {:.3} | {:.4} | {} of {} | {} / {} |",
                r.tool,
                r.positives,
                r.recall_at_threshold,
                r.tpr_at_fpr_0_001,
                r.roc_auc,
                r.sessions_detected,
                r.sessions,
                r.benign_alerts_real,
                r.benign_alerts_lookalike
            );
            results.push(r);
        }
    }
    write_report(args, &test, "results", serde_json::to_value(&results)?)
}

/// Writes `--report`, when asked: the evaluation's settings and hosts, and its figures under
/// `key`.
fn write_report(
    args: &EvaluateArgs,
    test: &BTreeSet<String>,
    key: &str,
    figures: serde_json::Value,
) -> anyhow::Result<()> {
    let Some(path) = &args.report else {
        return Ok(());
    };
    let options = &args.options;
    let mut report = serde_json::json!({
        "test_fraction": args.test_fraction,
        "eval_sessions": args.eval_sessions,
        "seed": options.seed,
        "threat_sessions": options.threat_sessions,
        "lookalike_sessions": options.lookalike_sessions,
        "also_left_out": args.also_leave_out,
        "evaluation_hosts": test,
    });
    // Experiments only when set, so the model card's reports stay as they were.
    if args.score_without_long_window {
        report["score_without_long_window"] = true.into();
    }
    if options.empty_window_copy {
        report["empty_window_copy"] = true.into();
    }
    if options.server_lookalikes() {
        report["server_lookalikes"] = true.into();
    }
    report[key] = figures;
    crate::util::fs::write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    Ok(())
}

/// Trains without `left_out` on the hosts outside `test`, then scores the evaluation corpus.
/// Trains without `left_out_of_training`, then scores the held-out hosts with new sessions of
/// `scored_tools` (every tool when empty).
fn train_and_score(
    real: &RealLog,
    test: &BTreeSet<String>,
    left_out_of_training: &[String],
    scored_tools: &[String],
    args: &EvaluateArgs,
) -> anyhow::Result<(Corpus, Vec<Scored>)> {
    let options = &args.options;
    let training =
        crate::engine::training::training_corpus(real, test, left_out_of_training, options);
    let labelled = corpus::labelled_features(
        &training,
        options.schema,
        options.window,
        options.source_groups,
        options.empty_window_copy,
    )
    .map_err(anyhow::Error::msg)?;
    let info = ModelInfo {
        name: "evaluation".into(),
        schema: options.schema,
        target: crate::model::convert::ESCU_TARGET.into(),
        threshold: 0.5,
        source_file: String::new(),
        source_sha256: String::new(),
        created_by: "dnsexfil evaluate".into(),
    };
    let fitted = crate::engine::training::fit_offline(&labelled, options, info, false)?;
    let kept = &fitted.report.best;
    eprintln!(
        "trained without [{}]: kept epoch {} of {} run, validation ({}) loss {:.5}, validation AUC {:.5}{}",
        left_out_of_training.join(", "),
        kept.epoch,
        fitted.report.epochs_run,
        fitted.split.describe(),
        kept.val_loss,
        kept.val_auc,
        crate::engine::training::offline::worst_source(kept)
    );
    let evaluation = evaluation_corpus(real, test, scored_tools, args.eval_sessions, options);
    let long_window = !args.score_without_long_window;
    let scored = score_corpus(&fitted.model, &evaluation, options.window, long_window)?;
    Ok((evaluation, scored))
}

/// The evaluation hosts' real traffic (benign hosts of `test`, plus every source of a left-out
/// real tool, or the held-out sources of every tool of the log when nothing is left out), with
/// new sessions of the left-out tools' families (all malicious families when
/// nothing is left out) and of every benign family riding on those hosts.
pub fn evaluation_corpus(
    real: &RealLog,
    test: &BTreeSet<String>,
    left_out: &[String],
    per_family: usize,
    options: &TrainingOptions,
) -> Corpus {
    let malicious = real.malicious_sources();
    let benign_hosts: BTreeSet<String> = test.difference(&malicious).cloned().collect();
    let mut hosts = benign_hosts.clone();
    if left_out.is_empty() {
        // Trained on everything: the log's tools only on their held-out sources.
        for tool in real.tool_names() {
            hosts.extend(real.sources_of_tool(&tool).intersection(test).cloned());
        }
    } else {
        // A left-out tool of the log never trained: every one of its sources.
        for tool in left_out {
            hosts.extend(real.sources_of_tool(tool));
        }
    }
    let families: Vec<Family> = Family::ALL
        .into_iter()
        .filter(|f| {
            !f.is_malicious() || left_out.is_empty() || left_out.iter().any(|t| t == f.tool())
        })
        .collect();
    corpus::build(
        real,
        &hosts,
        &benign_hosts,
        &ThreatPlan {
            per_family,
            per_benign_family: per_family,
            leave_out: Vec::new(),
            seed: options.seed.wrapping_add(EVALUATION_SEED_OFFSET),
            only: families,
            packetwhisper: options.packetwhisper,
            randomised_cover: options.randomised_cover,
            long_window: options.schema.uses_prior(),
            server_roles: options.server_lookalikes(),
        },
    )
}

/// Replays `corpus` in windows as `/apply` gets it and scores every labelled rank-1 row.
/// Without `long_window`, a schema that reads one sees it empty, as with `--history off`.
fn score_corpus(
    model: &Model,
    corpus: &Corpus,
    window: f64,
    long_window: bool,
) -> anyhow::Result<Vec<Scored>> {
    let mut out = Vec::new();
    let mut failed = None;
    dataset::replay(
        &corpus.events,
        model.info.schema,
        window,
        long_window,
        |_, batch, rows, prepared| {
            if failed.is_some() {
                return;
            }
            let scored: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].2 == 1).collect();
            let scores =
                match crate::engine::scoring::score_prepared(model, prepared, rows, &scored) {
                    Ok(scores) => scores,
                    Err(e) => {
                        failed = Some(e);
                        return;
                    }
                };
            for (k, &i) in scored.iter().enumerate() {
                let (src, query, _) = batch[i];
                let key = (src.to_string(), query.to_string());
                if let Some(&label) = corpus.labels.get(&key) {
                    out.push(Scored {
                        score: scores.probabilities[k],
                        label,
                        family: corpus.families.get(&key).cloned(),
                        session: corpus.session_of.get(&key).cloned(),
                        src: key.0,
                        query: key.1,
                    });
                }
            }
        },
    );
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(out),
    }
}

/// Rows of an evaluation whose probability falls in one range.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReliabilityBin {
    /// `0 - 0.01`, `0.01 - 0.1`, ...: from above the lower end (the first from 0) to the upper
    /// end inclusive, so the ranges above 0.5 hold exactly the alerts.
    pub range: String,
    pub rows: usize,
    pub malicious: usize,
    pub benign_real: usize,
    pub benign_lookalike: usize,
    /// Mean probability of the range's rows (0 when it has none).
    pub mean_probability: f64,
}

/// Where the probability ranges of [`reliability`] end.
const RELIABILITY_EDGES: [f32; 7] = [0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0];

/// How the probability reads: every scored row in its range.
fn reliability(scored: &[Scored]) -> Vec<ReliabilityBin> {
    let mut bins: Vec<(ReliabilityBin, f64)> = RELIABILITY_EDGES
        .windows(2)
        .map(|edge| {
            (
                ReliabilityBin {
                    range: format!("{} - {}", edge[0], edge[1]),
                    rows: 0,
                    malicious: 0,
                    benign_real: 0,
                    benign_lookalike: 0,
                    mean_probability: 0.0,
                },
                0.0,
            )
        })
        .collect();
    for s in scored {
        // The first range whose upper end the score does not pass (0 falls in the first). A
        // probability is never NaN; were one, it would not be an alert (as `tool_result` counts
        // them) and goes to the first range, not the last.
        let at = RELIABILITY_EDGES[1..]
            .iter()
            .position(|&upper| s.score <= upper)
            .unwrap_or(if s.score.is_nan() { 0 } else { bins.len() - 1 });
        let (bin, sum) = &mut bins[at];
        bin.rows += 1;
        if !s.score.is_nan() {
            *sum += s.score as f64;
        }
        match (s.label == 1.0, &s.family) {
            (true, _) => bin.malicious += 1,
            (false, None) => bin.benign_real += 1,
            (false, Some(_)) => bin.benign_lookalike += 1,
        }
    }
    bins.into_iter()
        .map(|(mut bin, sum)| {
            bin.mean_probability = if bin.rows > 0 {
                sum / bin.rows as f64
            } else {
                0.0
            };
            bin
        })
        .collect()
}

/// Whether a row's family belongs to `tool` (a threat-model tool, or a tool of the log).
fn of_tool(family: &Option<String>, tool: &str) -> bool {
    match family {
        None => false,
        Some(name) => match Family::ALL.into_iter().find(|f| f.name() == name) {
            Some(f) => f.tool() == tool,
            None => name == tool,
        },
    }
}

/// One tool's figures. Alerts are scores above 0.5, as `evaluate.py` counts them; a session is
/// detected when any of its names alerts, and every session of the tool in `corpus` counts,
/// including one with no name scored.
fn tool_result(scored: &[Scored], corpus: &Corpus, tool: &str, left_out: bool) -> ToolResult {
    const THRESHOLD: f32 = 0.5;
    let benign: Vec<&Scored> = scored.iter().filter(|s| s.label == 0.0).collect();
    let positives: Vec<&Scored> = scored
        .iter()
        .filter(|s| s.label == 1.0 && of_tool(&s.family, tool))
        .collect();
    let mut scores: Vec<f32> = positives.iter().map(|s| s.score).collect();
    let mut labels = vec![1.0f32; scores.len()];
    scores.extend(benign.iter().map(|s| s.score));
    labels.extend(std::iter::repeat_n(0.0, benign.len()));
    let (tpr, _) = crate::model::eval::tpr_at_fpr(&scores, &labels, 0.001);
    let roc_auc = crate::model::eval::roc_auc(&scores, &labels);
    let mut sessions: BTreeMap<&str, bool> = corpus
        .sessions
        .iter()
        .filter(|(family, _)| of_tool(&Some(family.clone()), tool))
        .map(|(_, id)| (id.as_str(), false))
        .collect();
    for s in &positives {
        if let Some(hit) = s.session.as_deref().and_then(|id| sessions.get_mut(id)) {
            *hit |= s.score > THRESHOLD;
        }
    }
    let mut tool_families: BTreeMap<String, FamilyResult> = BTreeMap::new();
    for s in &positives {
        let entry = tool_families
            .entry(s.family.clone().unwrap_or_default())
            .or_default();
        entry.rows += 1;
        entry.rows_alerted += usize::from(s.score > THRESHOLD);
    }
    let session_family: BTreeMap<&str, &str> = corpus
        .sessions
        .iter()
        .map(|(family, id)| (id.as_str(), family.as_str()))
        .collect();
    for (id, &hit) in &sessions {
        let family = session_family.get(id).copied().unwrap_or_default();
        let entry = tool_families.entry(family.to_string()).or_default();
        entry.sessions += 1;
        entry.sessions_alerted += usize::from(hit);
    }
    let mut by_family: BTreeMap<String, usize> = BTreeMap::new();
    let mut real_by_host: BTreeMap<String, usize> = BTreeMap::new();
    let (mut real_alerts, mut lookalike_alerts) = (0, 0);
    for s in benign.iter().filter(|s| s.score > THRESHOLD) {
        match &s.family {
            Some(f) => {
                lookalike_alerts += 1;
                *by_family.entry(f.clone()).or_insert(0) += 1;
            }
            None => {
                real_alerts += 1;
                *real_by_host.entry(s.src.clone()).or_insert(0) += 1;
            }
        }
    }
    const EXAMPLES: usize = 60;
    let examples = |rows: &mut Vec<&Scored>, highest: bool| {
        rows.sort_by(|a, b| {
            if highest {
                b.score.total_cmp(&a.score)
            } else {
                a.score.total_cmp(&b.score)
            }
        });
        rows.iter()
            .take(EXAMPLES)
            .map(|s| {
                (
                    s.score,
                    s.src.clone(),
                    s.query.clone(),
                    s.family.clone().unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>()
    };
    let top_benign = examples(&mut benign.clone(), true);
    let lowest_positives = examples(&mut positives.clone(), false);
    ToolResult {
        top_benign,
        lowest_positives,
        tool: tool.to_string(),
        left_out,
        positives: positives.len(),
        recall_at_threshold: positives.iter().filter(|s| s.score > THRESHOLD).count() as f64
            / positives.len().max(1) as f64,
        tpr_at_fpr_0_001: tpr,
        roc_auc,
        sessions_detected: sessions.values().filter(|&&hit| hit).count(),
        sessions: sessions.len(),
        benign_rows: benign.len(),
        benign_alerts_real: real_alerts,
        benign_alerts_lookalike: lookalike_alerts,
        benign_alerts_by_family: by_family,
        benign_alerts_real_by_host: real_by_host,
        by_family: tool_families,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(score: f32, label: f32, family: Option<&str>) -> Scored {
        Scored {
            score,
            label,
            family: family.map(String::from),
            session: None,
            src: "s".into(),
            query: "q".into(),
        }
    }

    #[test]
    fn the_reliability_ranges_hold_every_row_once_and_the_alerts_above_one_half() {
        let scored = [
            row(0.0, 0.0, None),
            row(0.01, 0.0, Some("dnsbl")),
            row(0.05, 1.0, Some("sunburst")),
            row(0.5, 0.0, None),
            row(0.500_001, 1.0, Some("dnscat2")),
            row(0.95, 0.0, None),
            row(1.0, 1.0, Some("iodine")),
            row(f32::NAN, 0.0, None),
        ];
        let bins = reliability(&scored);
        let ranges: Vec<&str> = bins.iter().map(|b| b.range.as_str()).collect();
        assert_eq!(
            ranges,
            [
                "0 - 0.01",
                "0.01 - 0.1",
                "0.1 - 0.5",
                "0.5 - 0.9",
                "0.9 - 0.99",
                "0.99 - 1"
            ]
        );
        let rows: Vec<usize> = bins.iter().map(|b| b.rows).collect();
        assert_eq!(rows, [3, 1, 1, 1, 1, 1]);
        assert_eq!((bins[0].benign_real, bins[0].benign_lookalike), (2, 1));
        assert!((bins[0].mean_probability - 0.01 / 3.0).abs() < 1e-6);
        assert_eq!(bins[1].malicious, 1);
        // 0.5 is not an alert (evaluate.py counts scores above it): the range below holds it.
        assert_eq!((bins[2].benign_real, bins[3].malicious), (1, 1));
        assert_eq!((bins[4].benign_real, bins[5].malicious), (1, 1));
        let alerts: usize = bins[3..].iter().map(|b| b.rows).sum();
        assert_eq!(alerts, scored.iter().filter(|s| s.score > 0.5).count());
    }
}
