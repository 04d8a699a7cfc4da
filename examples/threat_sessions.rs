//! Adds sessions of the threat model's families (`src/data/threats`) to a labelled log's hosts
//! and writes the result as events and labels that `tests/fixtures/eval/evaluate.py` replays
//! through any served model. `dnsexfil evaluate` trains its own models; this asks how a model
//! already trained (the shipped default, a file of yours) does on generated sessions, for
//! instance on the PacketWhisper generators it was not trained with:
//!
//! ```sh
//! cargo run --release --example threat_sessions -- --events test_events.csv --labels test_labels.csv \
//!   --families packetwhisper --packetwhisper tool --out /tmp/pw_tool
//! python3 tests/fixtures/eval/evaluate.py --events /tmp/pw_tool_events.csv \
//!   --labels /tmp/pw_tool_labels.csv --url ... --token ... --model-name dnsexfil_v7
//! ```
//!
//! Sessions ride on the log's own hosts (or come from sources of their own, as each family
//! does in training); use hosts the model did not train on (`train --split-out` writes them).

use clap::Parser;
use dnsexfil::data::dataset::{read_events, read_label_tools, read_labels};
use dnsexfil::data::threats::{generate, Carriers, Family, PacketWhisperCiphers, RandomisedCover};

#[derive(Parser)]
struct Args {
    /// The log's events: `src,query,rank,_time`.
    #[arg(long)]
    events: std::path::PathBuf,
    /// Its labels: `src,query,is_exfiltration[,tool,session]`.
    #[arg(long)]
    labels: std::path::PathBuf,
    /// Families or tools to generate, comma-separated (e.g. `packetwhisper`, `sunburst,det`).
    #[arg(long, value_delimiter = ',', required = true)]
    families: Vec<String>,
    /// Sessions of each family.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// How the PacketWhisper families write their names: `v4` or `tool`.
    #[arg(long, default_value = "v4")]
    packetwhisper: PacketWhisperCiphers,
    /// Seed of the sessions: use one training did not (training's default is 7).
    #[arg(long, default_value_t = 99)]
    seed: u64,
    /// Writes `<out>_events.csv` and `<out>_labels.csv`.
    #[arg(long)]
    out: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut families = Vec::new();
    for wanted in &args.families {
        let matching: Vec<Family> = Family::ALL
            .into_iter()
            .filter(|f| f.name() == wanted || f.tool() == wanted)
            .collect();
        if matching.is_empty() {
            // Family names, then the tools that group several (packetwhisper).
            let mut known: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
            let tools = Family::ALL.iter().map(|f| f.tool());
            known.extend(tools.filter(|t| !Family::ALL.iter().any(|f| f.name() == *t)));
            known.dedup();
            return Err(
                format!("no family or tool `{wanted}`; known: {}", known.join(", ")).into(),
            );
        }
        families.extend(matching);
    }
    let events = read_events(&args.events)?;
    let labels = read_labels(&args.labels)?;
    let tools = read_label_tools(&args.labels)?;
    let hosts = events.iter().map(|e| e.src.clone()).collect();
    let carriers = Carriers::new(&events, &hosts);
    let generated = generate(
        &families,
        args.sessions,
        &carriers,
        args.seed,
        0,
        args.packetwhisper,
        RandomisedCover::Platforms,
        false,
    );

    let mut out = csv::Writer::from_path(format!("{}_events.csv", args.out))?;
    out.write_record(["src", "query", "rank", "_time"])?;
    for e in events.iter().chain(&generated.events) {
        // evaluate.py recomputes the ranks per window.
        out.write_record([&e.src, &e.query, "1", &e.time.to_string()])?;
    }
    out.flush()?;

    let mut out = csv::Writer::from_path(format!("{}_labels.csv", args.out))?;
    out.write_record(["src", "query", "is_exfiltration", "tool", "session"])?;
    for (key, label) in &labels {
        // The log's tunnels keep their tool (one session per tool and source).
        let (tool, session) = match tools.get(key) {
            Some(tool) => (tool.as_str(), format!("{tool}#{}", key.0)),
            None => ("benign", "benign".to_string()),
        };
        let label = (*label as u8).to_string();
        out.write_record([&key.0, &key.1, &label, tool, &session])?;
    }
    for (key, label) in &generated.labels {
        let family = generated.families[key].name();
        let label = (*label as u8).to_string();
        out.write_record([&key.0, &key.1, &label, family, &generated.session_of[key]])?;
    }
    out.flush()?;
    eprintln!(
        "{} sessions, {} generated events; wrote {out}_events.csv and {out}_labels.csv",
        generated.sessions.len(),
        generated.events.len(),
        out = args.out,
    );
    Ok(())
}
