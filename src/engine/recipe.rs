//! How a model is trained and evaluated offline: the arguments of `dnsexfil train` and
//! `dnsexfil evaluate`, read by `training` and `evaluation`. They derive `clap::Args` here, in
//! the engine rather than in `app`, so that each setting's default and valid range are written
//! once, for the command line's parser and help and for the engine that reads them.

use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Events: `src,query,rank,_time` (rank is recomputed per window).
    #[arg(long)]
    pub events: PathBuf,
    /// Labels: `src,query,is_exfiltration[,tool,...]`, keyed by (src, query).
    #[arg(long)]
    pub labels: PathBuf,
    /// Model file to write (safetensors); a `<output>.report.json` is written beside it.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Model name requests select it by.
    #[arg(long, default_value = crate::model::DEFAULT_MODEL_NAME)]
    pub name: String,
    /// Share of sources held out entirely as a test set (0 to 0.9); with --split-out, their
    /// events and labels are written there for `eval/evaluate.py`.
    #[arg(long, default_value_t = 0.0, value_parser = real_in("0 to 0.9", |v| (0.0..=0.9).contains(&v)))]
    pub test_fraction: f64,
    /// Directory for the held-out test set (test_events.csv, test_labels.csv).
    #[arg(long)]
    pub split_out: Option<PathBuf>,
    /// Leave a tool out of training (repeatable or comma-separated): its synthetic families are
    /// not generated and the log's sources of that `tool` are dropped (dnsexfil-v3 and later).
    #[arg(long, value_delimiter = ',')]
    pub leave_out: Vec<String>,
    #[command(flatten)]
    pub options: TrainingOptions,
}

/// How a model is trained: shared by `train` and `evaluate`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainingOptions {
    /// Feature schema of the model: dnsexfil-v4 (the default model's), dnsexfil-v5 (v4 and the
    /// long window read from the history; its recipe adds short slow tunnels and the visit-id
    /// look-alikes only the long window tells from them), dnsexfil-v3 or dnsexfil-v2.
    #[arg(long, default_value = "dnsexfil-v4", value_parser = parse_trainable_schema)]
    pub schema: crate::features::Schema,
    /// Passes over the training rows (1 to 10,000; the ranges are /fit's).
    #[arg(long, default_value_t = 60, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub epochs: usize,
    /// AdamW's learning rate, above 0 and at most 1.
    #[arg(long, default_value_t = 2e-3, value_parser = real_in("above 0 and at most 1", |v| v > 0.0 && v <= 1.0))]
    pub learning_rate: f64,
    /// Rows per optimiser step (1 to 65,536).
    #[arg(long, default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub batch_size: usize,
    /// Epochs without a better validation loss before stopping (1 to 1,000; `best` only).
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000))]
    pub patience: usize,
    /// Which epoch's weights the model keeps: `best`, the lowest validation loss (stopping after
    /// --patience epochs without a lower one), or `last`, the last of --epochs epochs, all run
    /// (an experiment: not the default model's recipe).
    #[arg(long, default_value = "best", value_parser = clap::builder::ValueParser::new(str::parse::<crate::model::train::EpochSelection>))]
    pub select_epoch: crate::model::train::EpochSelection,
    /// How the validation loss weighs its rows: `rows`, every validation row alike (a source
    /// counts by its row count), or `per-source`, the mean over validation sources of each
    /// source's mean row loss (an experiment: not the default model's recipe).
    #[arg(long, default_value = "rows", value_parser = clap::builder::ValueParser::new(str::parse::<crate::model::train::ValidationLoss>))]
    pub validation_loss: crate::model::train::ValidationLoss,
    /// Weight of a malicious row in the loss, above 0 (default: 1 for dnsexfil-v4; negatives /
    /// positives, balancing the classes, for the earlier schemas).
    #[arg(long, value_parser = real_in("above 0", |v| v > 0.0))]
    pub positive_weight: Option<f64>,
    /// Seed for the source split, synthetic sessions, initialisation and shuffling: same seed,
    /// same model bytes.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Share of sources (hosts) held out for validation and early stopping (0.05 to 0.9).
    #[arg(long, default_value_t = 0.2, value_parser = real_in("0.05 to 0.9", |v| (0.05..=0.9).contains(&v)))]
    pub val_fraction: f64,
    /// Window width in seconds, 60 to 86,400 (the hourly ESCU search: 3600).
    #[arg(long, default_value_t = 3600.0, value_parser = real_in("60 to 86,400", |v| (60.0..=86_400.0).contains(&v)))]
    pub window: f64,
    /// dnsexfil-v2 only: synthetic tunnel sessions (hex, base32, base64url, base36 names) added
    /// to the training and validation sources; every other one rides on a copy of a training
    /// host's normal traffic. Never in the test set.
    #[arg(long, default_value_t = 90)]
    pub synthetic_sessions: usize,
    /// dnsexfil-v3 and later: sessions of each threat-model family (src/threats) added to training,
    /// riding on training hosts or from sources of their own. Never on test hosts.
    #[arg(long, default_value_t = 24, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1_000))]
    pub threat_sessions: usize,
    /// dnsexfil-v3 and later: sessions of each benign look-alike family (reputation lookups, DNSBL,
    /// CDN edges, ...) added to training on training hosts.
    #[arg(long, default_value_t = 36, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1_000))]
    pub lookalike_sessions: usize,
    /// dnsexfil-v3 and later: how the PacketWhisper families write their names: `v4`, the
    /// generators the default model was trained with (two Akamai-style ciphers of our own, each
    /// transfer spread over one or two hours), or `tool`, the tool's own cipher files and sender
    /// (an experiment: not the default model's recipe).
    #[arg(long, default_value = "v4", value_parser = clap::builder::ValueParser::new(str::parse::<crate::data::threats::PacketWhisperCiphers>))]
    pub packetwhisper: crate::data::threats::PacketWhisperCiphers,
    /// dnsexfil-v3 and later: where the randomised family may hide its bursts: `platforms`, the
    /// twelve shared platforms the default model was trained with, or `popular`, those or (half
    /// the time) one of the zones most training hosts query, or `mimic`, the platforms and a
    /// fifth of its sessions named like a benign look-alike service at 2 to 10 times that
    /// service's volume (experiments: not the default model's recipe).
    #[arg(long, default_value = "platforms", value_parser = clap::builder::ValueParser::new(str::parse::<crate::data::threats::RandomisedCover>))]
    pub randomised_cover: crate::data::threats::RandomisedCover,
    /// Also replay each hour with the sources split into this many groups (each group alone), so
    /// the model learns what small networks look like (0 or 1: only the whole log).
    #[arg(long, default_value_t = 8)]
    pub source_groups: usize,
    /// Networks trained with seeds `seed`, `seed + 1`, ... on the same rows and served as one
    /// network whose output is the mean of their logits (1 to 8; 1: a single network). More
    /// members make the model depend less on one initialisation, at that many times the
    /// training time and a wider network.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=8))]
    pub members: usize,
    /// dnsexfil-v3 and later: split the network into a part that reads only the channel
    /// evidence (distinct and never-shared names per source and domain, names of one template,
    /// rotation counts), whose weights cannot be negative, so the logit cannot fall as those
    /// rise with the rest held fixed; and a part that reads the rest but neither the evidence
    /// nor the query volume (an experiment: not the default model's recipe; see
    /// src/model/monotone.rs).
    #[arg(long)]
    pub evidence_part: bool,
    /// dnsexfil-v3 and later: hide the names' look (length, alphabet, entropy and the like, per
    /// name and per pair) from this share of the training rows, so the network must also learn
    /// what the channel's volume and context say without it (0: never; an experiment: not the
    /// default model's recipe).
    #[arg(long, default_value_t = 0.0, value_parser = real_in("0 to 0.9", |v| (0.0..=0.9).contains(&v)))]
    pub hide_look: f64,
    /// dnsexfil-v5: also replay the whole log once with the long window empty, as a service
    /// with `--history off` sees every source (an experiment: not dnsexfil_v5's recipe).
    #[arg(long)]
    pub empty_window_copy: bool,
    /// dnsexfil-v3 and later: also generate the benign lookups of servers' roles on training
    /// hosts: mail servers checking senders' DKIM keys and DMARC, SPF and MTA-STS policies
    /// across many domains, and directory members locating their controllers (SRV names and
    /// controllers' GUIDs). A log has few such hosts, so a host-disjoint split may train on
    /// none of them. `true` or `false` (the flag alone: true); default: true for dnsexfil-v4
    /// (the recipe of the default model dnsexfil_v7, and of dnsexfil_v6), false for the other
    /// schemas (dnsexfil_v4 and dnsexfil_v5 were trained without them).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub server_lookalikes: Option<bool>,
    /// The trained network's probability that the model scores 0.5, where the ESCU search
    /// alerts: the output's bias is lowered by its log-odds, so a row alerts when the trained
    /// network scores it above this (above 0 and below 1; 0.5 changes nothing). Rankings, ROC
    /// AUC and TPR at a given FPR do not change. Default: 0.9 for dnsexfil-v4 (the default
    /// model dnsexfil_v7's recipe), 0.5 for the other schemas.
    #[arg(long, value_parser = real_in("above 0 and below 1", |v| v > 0.0 && v < 1.0))]
    pub alert_at: Option<f64>,
}

impl TrainingOptions {
    /// Refuses options the schema has no use for, rather than ignoring them.
    pub fn check(&self) -> Result<(), String> {
        if self.empty_window_copy && !self.schema.uses_prior() {
            return Err(format!(
                "--empty-window-copy replays the log with an empty long window, which only dnsexfil-v5 reads; {} has none (add --schema dnsexfil-v5 or drop the flag)",
                self.schema.name()
            ));
        }
        if self.server_lookalikes == Some(true)
            && self.schema == crate::features::Schema::DnsexfilV2
        {
            return Err("--server-lookalikes adds threat-model look-alike families, which the dnsexfil-v2 recipe does not generate (use --schema dnsexfil-v3 or later, or drop the flag)".into());
        }
        Ok(())
    }

    /// Whether the recipe generates the servers' own lookups (`--server-lookalikes`, or the
    /// schema's default: on for dnsexfil-v4 only).
    pub fn server_lookalikes(&self) -> bool {
        self.server_lookalikes
            .unwrap_or(self.schema == crate::features::Schema::DnsexfilV4)
    }

    /// The weight of a malicious row in the loss (`--positive-weight`, or the schema's default:
    /// 1 for dnsexfil-v4 and -v5; none, so training balances the classes, for the others).
    pub fn positive_weight(&self) -> Option<f64> {
        use crate::features::Schema;
        // v4's corpus holds a session of every threat family per few training hosts:
        // weighting them up to the benign rows' total made the model alert on benign names
        // of hosts it never saw (leave-one-out runs: about half the benign alerts at the
        // same recall with weight 1).
        self.positive_weight
            .or(matches!(self.schema, Schema::DnsexfilV4 | Schema::DnsexfilV5).then_some(1.0))
    }

    /// `--alert-at`, or the schema's default: 0.9 for dnsexfil-v4, 0.5 (no shift) otherwise.
    pub fn alert_at(&self) -> f64 {
        // Over leave-one-tool-out runs at seeds 7 to 11, alerting where the trained network
        // scores 0.9 rather than 0.5 cut the benign alerts on held-out hosts' real traffic to
        // about a third (models/README.md, "Where it alerts: why v7").
        self.alert_at
            .unwrap_or(if self.schema == crate::features::Schema::DnsexfilV4 {
                0.9
            } else {
                0.5
            })
    }
}

/// Why `train --leave-out` and `evaluate` refuse dnsexfil-v2, in both messages.
const V2_HAS_NO_TOOL_FAMILIES: &str = "the v2 recipe has no tool families";

fn parse_trainable_schema(text: &str) -> Result<crate::features::Schema, String> {
    use crate::features::Schema;
    match text.parse::<Schema>()? {
        Schema::EscuV1 => Err("escu-v1 is the published model's schema; fine-tune it over /fit with its name instead (train makes dnsexfil-v2 to -v5 models)".into()),
        schema => Ok(schema),
    }
}

#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// Events: `src,query,rank,_time`.
    #[arg(long)]
    pub events: PathBuf,
    /// Labels: `src,query,is_exfiltration,tool`; the `tool` column names the log's real tools.
    #[arg(long)]
    pub labels: PathBuf,
    /// Tools to leave out, one at a time (default: every malicious tool of the threat model and
    /// every tool of the log). `none` trains on everything and scores every tool.
    #[arg(long, value_delimiter = ',')]
    pub tools: Vec<String>,
    /// Share of the log's sources held out as evaluation hosts (0.05 to 0.9).
    #[arg(long, default_value_t = 0.3, value_parser = real_in("0.05 to 0.9", |v| (0.05..=0.9).contains(&v)))]
    pub test_fraction: f64,
    /// Sessions per family generated on the evaluation hosts (with another seed than training's).
    #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000))]
    pub eval_sessions: usize,
    /// Tools every run also leaves out of training, beside the one its row is about (e.g.
    /// `randomised`, whose grammar can mimic a left-out tool); they are not scored.
    #[arg(long, value_delimiter = ',')]
    pub also_leave_out: Vec<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Instead of a table per tool, train on everything and print how the probability reads
    /// on the evaluation hosts: per probability range, rows, malicious and benign rows, the
    /// mean probability and the malicious share (with --tools none or no --tools).
    #[arg(long)]
    pub reliability: bool,
    /// dnsexfil-v5: score the evaluation with an empty long window (what the model sees with
    /// `--history off`, or for events older than the history's window; training still reads
    /// it). An experiment: no table of the model card uses it.
    #[arg(long)]
    pub score_without_long_window: bool,
    #[command(flatten)]
    pub options: TrainingOptions,
}

impl TrainArgs {
    /// Refuses what train cannot do with these options (the training options' own checks
    /// first), before any file is read.
    pub fn check(&self) -> Result<(), String> {
        self.options.check()?;
        if !self.leave_out.is_empty() && self.options.schema == crate::features::Schema::DnsexfilV2
        {
            return Err(format!(
                "--leave-out needs --schema dnsexfil-v3 or later ({V2_HAS_NO_TOOL_FAMILIES})"
            ));
        }
        Ok(())
    }
}

impl EvaluateArgs {
    /// Refuses what evaluate cannot do with these options (the training options' own checks
    /// first), before any file is read, so every flag is checked in this one place.
    pub fn check(&self) -> Result<(), String> {
        self.options.check()?;
        if self.score_without_long_window && !self.options.schema.uses_prior() {
            return Err("--score-without-long-window empties the long window, which only dnsexfil-v5 reads; add --schema dnsexfil-v5 or drop the flag".into());
        }
        if self.options.schema == crate::features::Schema::DnsexfilV2 {
            return Err(format!("evaluate trains dnsexfil-v3 or later models ({V2_HAS_NO_TOOL_FAMILIES}); use --schema dnsexfil-v3 or later"));
        }
        Ok(())
    }
}

/// A clap parser for a real number that `accept`s, named by `range` in the error.
fn real_in(
    range: &'static str,
    accept: fn(f64) -> bool,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text| match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && accept(v) => Ok(v),
        Ok(_) => Err(format!("must be {range}")),
        Err(_) => Err(format!("`{text}` is not a number; it must be {range}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Train {
        #[command(flatten)]
        args: TrainArgs,
    }

    #[derive(Parser)]
    struct Evaluate {
        #[command(flatten)]
        args: EvaluateArgs,
    }

    fn train(extra: &[&str]) -> TrainArgs {
        let base = [
            "train",
            "--events",
            "e.csv",
            "--labels",
            "l.csv",
            "-o",
            "m.safetensors",
        ];
        Train::try_parse_from(base.iter().chain(extra))
            .unwrap()
            .args
    }

    fn evaluate(extra: &[&str]) -> EvaluateArgs {
        let base = ["evaluate", "--events", "e.csv", "--labels", "l.csv"];
        Evaluate::try_parse_from(base.iter().chain(extra))
            .unwrap()
            .args
    }

    #[test]
    fn the_servers_lookups_are_on_for_dnsexfil_v4_only_unless_set() {
        assert!(train(&[]).options.server_lookalikes());
        assert!(!train(&["--server-lookalikes", "false"])
            .options
            .server_lookalikes());
        assert!(train(&["--server-lookalikes"]).options.server_lookalikes());
        for schema in ["dnsexfil-v2", "dnsexfil-v3", "dnsexfil-v5"] {
            assert!(
                !train(&["--schema", schema]).options.server_lookalikes(),
                "{schema}"
            );
        }
        assert!(
            train(&["--schema", "dnsexfil-v5", "--server-lookalikes", "true"])
                .options
                .server_lookalikes()
        );
        assert_eq!(train(&[]).name, "dnsexfil_v7");
    }

    #[test]
    fn the_default_recipe_alerts_at_its_networks_0_9_and_the_others_at_0_5() {
        assert_eq!(train(&[]).options.alert_at(), 0.9);
        for schema in ["dnsexfil-v2", "dnsexfil-v3", "dnsexfil-v5"] {
            assert_eq!(
                train(&["--schema", schema]).options.alert_at(),
                0.5,
                "{schema}"
            );
        }
        assert_eq!(train(&["--alert-at", "0.5"]).options.alert_at(), 0.5);
        assert_eq!(
            train(&["--schema", "dnsexfil-v5", "--alert-at", "0.8"])
                .options
                .alert_at(),
            0.8
        );
        let base = ["train", "--events", "e", "--labels", "l", "-o", "m"];
        for bad in ["0", "1", "1.5", "-0.1", "nan", "often"] {
            let flag = format!("--alert-at={bad}");
            let refused = Train::try_parse_from(base.iter().copied().chain([flag.as_str()]));
            assert!(refused.is_err(), "--alert-at {bad} is refused");
        }
    }

    #[test]
    fn a_malicious_row_weighs_one_for_dnsexfil_v4_and_v5_unless_set() {
        for schema in ["dnsexfil-v4", "dnsexfil-v5"] {
            assert_eq!(
                train(&["--schema", schema]).options.positive_weight(),
                Some(1.0),
                "{schema}"
            );
        }
        for schema in ["dnsexfil-v2", "dnsexfil-v3"] {
            assert_eq!(
                train(&["--schema", schema]).options.positive_weight(),
                None,
                "{schema} balances the classes"
            );
        }
        assert_eq!(
            train(&["--positive-weight", "3"]).options.positive_weight(),
            Some(3.0)
        );
    }

    #[test]
    fn each_command_refuses_options_its_schema_has_no_use_for() {
        assert!(train(&[]).check().is_ok());
        assert!(train(&["--schema", "dnsexfil-v2"]).check().is_ok());
        let refused = |e: Result<(), String>, flag: &str| {
            let e = e.unwrap_err();
            assert!(e.contains(flag) && e.contains("dnsexfil-v"), "{e}");
        };
        refused(
            train(&["--schema", "dnsexfil-v2", "--leave-out", "sliver"]).check(),
            "--leave-out",
        );
        refused(
            train(&["--schema", "dnsexfil-v2", "--server-lookalikes"]).check(),
            "--server-lookalikes",
        );
        refused(
            train(&["--empty-window-copy"]).check(),
            "--empty-window-copy",
        );
        assert!(evaluate(&[]).check().is_ok());
        assert!(
            evaluate(&["--schema", "dnsexfil-v5", "--score-without-long-window"])
                .check()
                .is_ok()
        );
        refused(
            evaluate(&["--score-without-long-window"]).check(),
            "--score-without-long-window",
        );
        refused(evaluate(&["--schema", "dnsexfil-v2"]).check(), "--schema");
        // The training options' checks apply to evaluate too.
        refused(
            evaluate(&["--empty-window-copy"]).check(),
            "--empty-window-copy",
        );
    }
}
