//! The labelled corpus a model trains or is evaluated on: a real labelled log's events (for the
//! chosen hosts) plus synthetic sessions of the threat model (`threats`), with each labelled
//! name's family so results can be reported per tool.
//!
//! The same function builds both sides of a leave-one-out split, from disjoint hosts and seeds:
//! training sessions ride on training hosts, evaluation sessions on held-out hosts.

use std::collections::{BTreeSet, HashMap};

use crate::data::dataset;

use crate::data::dataset::{DataError, Event, Labelled};
use crate::data::threats;
use crate::data::threats::{Carriers, Family};
use crate::features::Schema;

/// A labelled log with the family (tool for real captures) of every malicious or synthetic name.
#[derive(Debug, Default)]
pub struct Corpus {
    pub events: Vec<Event>,
    pub labels: HashMap<(String, String), f32>,
    /// Family of each labelled name that has one: the real log's `tool` for malicious names,
    /// the generator's family for synthetic ones. Real benign names have none.
    pub families: HashMap<(String, String), String>,
    /// The session of each labelled name that has a family.
    pub session_of: HashMap<(String, String), String>,
    /// Every session: (family, session id). A real tool's session is one of its sources.
    pub sessions: Vec<(String, String)>,
}

/// What synthetic sessions to add.
#[derive(Debug, Clone)]
pub struct ThreatPlan {
    /// Sessions per malicious family.
    pub per_family: usize,
    /// Sessions per benign look-alike family.
    pub per_benign_family: usize,
    /// Tools whose families are not generated (and whose real sources are dropped).
    pub leave_out: Vec<String>,
    pub seed: u64,
    /// Only these families (all when empty).
    pub only: Vec<Family>,
    /// How the PacketWhisper families write their names.
    pub packetwhisper: threats::PacketWhisperCiphers,
    /// Which zones the randomised family may hide under.
    pub randomised_cover: threats::RandomisedCover,
    /// The long-window recipe (`dnsexfil-v5`): slow tunnels with short chunks, and the benign
    /// services only the hours before a request tell from them.
    pub long_window: bool,
    /// Also the benign lookups of servers' roles (`Family::server_role_only`).
    pub server_roles: bool,
}

/// The real log: events, labels and, where `labels.csv` has a `tool` column, each malicious
/// name's tool.
pub struct RealLog {
    pub events: Vec<Event>,
    pub labels: HashMap<(String, String), f32>,
    pub tools: HashMap<(String, String), String>,
}

impl RealLog {
    pub fn read(events: &std::path::Path, labels: &std::path::Path) -> Result<Self, DataError> {
        let events = dataset::read_events(events)?;
        let tools = dataset::read_label_tools(labels)?;
        let labels = dataset::read_labels(labels)?;
        Ok(Self {
            events,
            labels,
            tools,
        })
    }

    /// Sources with at least one malicious name.
    pub fn malicious_sources(&self) -> BTreeSet<String> {
        self.labels
            .iter()
            .filter(|(_, &y)| y == 1.0)
            .map(|((src, _), _)| src.clone())
            .collect()
    }

    /// Sources of the real tool `tool` (from the `tool` column).
    pub fn sources_of_tool(&self, tool: &str) -> BTreeSet<String> {
        self.tools
            .iter()
            .filter(|(_, t)| t.as_str() == tool)
            .map(|((src, _), _)| src.clone())
            .collect()
    }

    /// The tools that can be left out of training, in table order: every malicious tool of the
    /// threat model, then the log's own tools.
    pub fn tools_to_leave_out(&self) -> Vec<String> {
        let mut tools: Vec<String> = threats::malicious_tools()
            .into_iter()
            .map(String::from)
            .collect();
        tools.extend(self.tool_names());
        tools
    }

    /// The real tools, sorted.
    pub fn tool_names(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.tools.values().collect();
        set.into_iter().cloned().collect()
    }
}

/// The real events of `hosts`, plus synthetic sessions riding on `carriers` (benign hosts among
/// them) or on sources of their own.
pub fn build(
    real: &RealLog,
    hosts: &BTreeSet<String>,
    carriers: &BTreeSet<String>,
    plan: &ThreatPlan,
) -> Corpus {
    let mut corpus = Corpus::default();
    for e in &real.events {
        if hosts.contains(&e.src) {
            corpus.events.push(e.clone());
        }
    }
    for ((src, query), &y) in &real.labels {
        if hosts.contains(src) {
            corpus.labels.insert((src.clone(), query.clone()), y);
        }
    }
    let mut real_sessions = BTreeSet::new();
    for (key, tool) in &real.tools {
        if hosts.contains(&key.0) {
            let session = format!("{tool}@{}", key.0);
            corpus.families.insert(key.clone(), tool.clone());
            corpus.session_of.insert(key.clone(), session.clone());
            real_sessions.insert((tool.clone(), session));
        }
    }
    corpus.sessions.extend(real_sessions);

    let families: Vec<Family> = Family::ALL
        .into_iter()
        .filter(|f| plan.only.is_empty() || plan.only.contains(f))
        .filter(|f| !plan.leave_out.iter().any(|t| t == f.tool()))
        .filter(|f| plan.long_window || !f.long_window_only())
        .filter(|f| plan.server_roles || !f.server_role_only())
        .collect();
    let riding = Carriers::new(&real.events, carriers);
    let first_source = (plan.seed % 1000) as usize * 100;
    let malicious: Vec<Family> = families
        .iter()
        .copied()
        .filter(|f| f.is_malicious())
        .collect();
    let benign: Vec<Family> = families
        .iter()
        .copied()
        .filter(|f| !f.is_malicious())
        .collect();
    let mut generated = threats::generate(
        &malicious,
        plan.per_family,
        &riding,
        plan.seed,
        first_source,
        plan.packetwhisper,
        plan.randomised_cover,
        plan.long_window,
    );
    let more = threats::generate(
        &benign,
        plan.per_benign_family,
        &riding,
        plan.seed ^ 0xBE9,
        first_source + 50_000,
        plan.packetwhisper,
        plan.randomised_cover,
        plan.long_window,
    );
    generated.events.extend(more.events);
    generated.labels.extend(more.labels);
    generated.families.extend(more.families);
    generated.sessions.extend(more.sessions);
    for (key, session) in more.session_of {
        generated.session_of.entry(key).or_insert(session);
    }
    for (key, session) in generated.session_of {
        corpus.session_of.entry(key).or_insert(session);
    }
    corpus.events.extend(generated.events);
    for (key, y) in generated.labels {
        // A benign host's own name that a benign generator also produced stays as labelled.
        corpus.labels.entry(key).or_insert(y);
    }
    for (key, family) in generated.families {
        corpus
            .families
            .entry(key)
            .or_insert_with(|| family.name().to_string());
    }
    corpus.sessions.extend(
        generated
            .sessions
            .into_iter()
            .map(|(f, id)| (f.name().to_string(), id)),
    );
    corpus
}

/// Most training rows one synthetic malicious family gives in one window from one source
/// (usually one session; several sessions of a family on one host share it): a PacketWhisper
/// session sends thousands of names an hour, and uncapped it would outweigh every other family
/// and the real log. All its names still feed the features' history. Benign look-alike
/// sessions (at most a few hundred names an hour) and the log's own rows are not capped.
pub const SESSION_ROWS_PER_WINDOW: usize = 48;

/// Features of the labelled rank-1 events of `corpus`, replayed in windows (at most
/// [`SESSION_ROWS_PER_WINDOW`] per synthetic session and window); with `groups > 1` each hour is
/// replayed again as that many smaller networks (sources split by a hash), so features such as
/// "how many sources query this domain" also take the values a small site sees.
///
/// With `empty_window_copy` (schemas that read the long window), the whole log is replayed once
/// more with that window empty, as a service with `--history off` or a new source sees it.
pub fn labelled_features(
    corpus: &Corpus,
    schema: Schema,
    window: f64,
    groups: usize,
    empty_window_copy: bool,
) -> Result<Labelled, DataError> {
    // (replay, window, source, family) -> rows kept.
    let mut counts: HashMap<(usize, usize, String, String), usize> = HashMap::new();
    let replay = std::cell::Cell::new(0usize);
    let mut keep = |number: usize, src: &str, query: &str| match corpus
        .families
        .get(&(src.to_string(), query.to_string()))
    {
        Some(family) if crate::data::threats::Family::malicious().any(|f| f.name() == family) => {
            let n = counts
                .entry((replay.get(), number, src.to_string(), family.clone()))
                .or_insert(0);
            *n += 1;
            *n <= SESSION_ROWS_PER_WINDOW
        }
        // The log's own rows (its tools included) and benign look-alikes are kept whole.
        _ => true,
    };
    let (events, labels) = (&corpus.events, &corpus.labels);
    let mut labelled =
        dataset::labelled_features_where(events, labels, schema, window, true, &mut keep)?;
    let groups = if groups > 1 { groups as u64 } else { 0 };
    for g in 0..groups {
        let part: Vec<Event> = events
            .iter()
            .filter(|e| source_group(&e.src, groups) == g)
            .cloned()
            .collect();
        // A group may hold no labelled source at all (many groups, few sources).
        replay.set(g as usize + 1);
        let Ok(more) =
            dataset::labelled_features_where(&part, labels, schema, window, true, &mut keep)
        else {
            continue;
        };
        labelled.data.x.extend(more.data.x);
        labelled.data.y.extend(more.data.y);
        labelled.srcs.extend(more.srcs);
    }
    if empty_window_copy && schema.uses_prior() {
        replay.set(groups as usize + 1);
        let more =
            dataset::labelled_features_where(events, labels, schema, window, false, &mut keep)?;
        labelled.data.x.extend(more.data.x);
        labelled.data.y.extend(more.data.y);
        labelled.srcs.extend(more.srcs);
    }
    Ok(labelled)
}

/// A source's group among `groups`, from a hash of its name: stable across runs and platforms.
pub fn source_group(src: &str, groups: u64) -> u64 {
    let digest = crate::model::sha256_hex(src.as_bytes());
    u64::from_str_radix(&digest[..8], 16).expect("hex digits") % groups
}
