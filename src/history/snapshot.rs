//! The in-process history written to a file at shutdown and read back at start, so a restart
//! (a new image, a moved pod with its volume) does not forget the last day of every source.
//!
//! The file is JSON: a format tag, when it was saved, and per source its domains and, per
//! name, the earliest time it was seen in each bucket (the bucket follows from the time, so a
//! snapshot restores under another `--history-bucket-secs` too). It holds DNS names, which
//! are personal data in many places: it is written owner-only (0600), atomically (a crash
//! mid-write leaves the previous snapshot), and what has left the window is not restored.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::memory::MemoryHistory;
use super::{Batch, Group, NameSeen, SourceEntries, MAX_NAME_BYTES, MAX_SOURCE_BYTES};

/// The format tag of the file; a file with another tag is refused, not guessed at.
pub const FORMAT: &str = "dnsexfil-history/1";

/// A snapshot larger than this many times the store's cap (plus 1 MiB) is refused unread: the
/// store would evict most of it anyway, and reading it must not take the memory the cap bounds.
const MAX_FILE_TO_CAP: u64 = 4;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SnapshotFile {
    pub format: String,
    /// Unix seconds.
    pub saved_at: i64,
    /// Least recently seen first, as the store evicts.
    pub sources: Vec<SourceEntries>,
}

/// What a save or a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub sources: usize,
    /// (name, bucket) entries written, or restored.
    pub entries: usize,
    /// Entries of the file not restored: out of the window now, a name or source too long,
    /// beyond the store's cap, or merged into another's bucket under other bucket sizes.
    pub skipped: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read the history snapshot {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write the history snapshot {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the history snapshot {path} is {size} bytes, more than {limit} for a history cap of {cap_mb} MiB; raise --history-max-mb or remove the file")]
    TooLarge {
        path: String,
        size: u64,
        limit: u64,
        cap_mb: usize,
    },
    #[error("the history snapshot {path} is not a snapshot this version reads ({problem})")]
    Unreadable { path: String, problem: String },
}

/// Writes every source `store` holds to `path` (atomically, owner-only).
pub fn save(store: &MemoryHistory, path: &Path, now: i64) -> Result<SnapshotStats, SnapshotError> {
    let sources = store.export();
    let stats = SnapshotStats {
        sources: sources.len(),
        entries: sources
            .iter()
            .flat_map(|s| &s.domains)
            .flat_map(|d| &d.names)
            .map(|(_, times)| times.len())
            .sum(),
        skipped: 0,
    };
    let file = SnapshotFile {
        format: FORMAT.to_string(),
        saved_at: now,
        sources,
    };
    let write_error = |source| SnapshotError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_error)?;
    }
    let bytes = serde_json::to_vec(&file).expect("a snapshot serialises");
    crate::util::fs::write_atomic_mode(path, &bytes, 0o600).map_err(write_error)?;
    Ok(stats)
}

/// Reads `path` into `store` as of `now`; `Ok(None)` when there is no file (a first start).
/// Entries that left the window since are skipped; the store's cap holds as for any record.
pub fn restore(
    store: &MemoryHistory,
    path: &Path,
    now: i64,
) -> Result<Option<SnapshotStats>, SnapshotError> {
    let shown = || path.display().to_string();
    let read_error = |source| SnapshotError::Read {
        path: shown(),
        source,
    };
    let size = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let config = *store.config();
    let limit = (config.max_bytes as u64).saturating_mul(MAX_FILE_TO_CAP) + (1 << 20);
    if size > limit {
        return Err(SnapshotError::TooLarge {
            path: shown(),
            size,
            limit,
            cap_mb: config.max_bytes >> 20,
        });
    }
    let bytes = std::fs::read(path).map_err(read_error)?;
    let file: SnapshotFile =
        serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Unreadable {
            path: shown(),
            problem: e.to_string(),
        })?;
    drop(bytes);
    if file.format != FORMAT {
        return Err(SnapshotError::Unreadable {
            path: shown(),
            problem: format!(
                "format `{}`, expected `{FORMAT}`",
                crate::util::clip(&file.format, 60)
            ),
        });
    }
    let oldest = now - config.window_seconds;
    let newest = now + super::FUTURE_SLACK_SECONDS;
    let mut stats = SnapshotStats::default();
    // One source at a time, least recently seen first, so the most recent are evicted last.
    for source in file.sources {
        let source_fits = !source.src.is_empty() && source.src.len() <= MAX_SOURCE_BYTES;
        let mut groups = Vec::new();
        let mut entries = 0;
        for domain in source.domains {
            let mut names = Vec::new();
            for (name, times) in domain.names {
                let fits = source_fits && !name.is_empty() && name.len() <= MAX_NAME_BYTES;
                for time in times {
                    if !fits || time < oldest || time > newest {
                        stats.skipped += 1;
                        continue;
                    }
                    names.push(NameSeen {
                        name: name.clone(),
                        bucket: time.div_euclid(config.bucket_seconds),
                        time,
                    });
                    entries += 1;
                }
            }
            if !names.is_empty() {
                groups.push(Group {
                    src: source.src.clone(),
                    domain: domain.domain,
                    names,
                });
            }
        }
        if groups.is_empty() {
            continue;
        }
        let recorded = store.record_now(Batch { groups, skipped: 0 }, now);
        stats.sources += 1;
        stats.entries += recorded.new;
        stats.skipped += entries - recorded.new;
    }
    Ok(Some(stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{HistoryConfig, Observation};

    const NOW: i64 = 1_800_000_000;

    fn store(bucket_seconds: i64) -> MemoryHistory {
        capped(bucket_seconds, 8 << 20)
    }

    fn capped(bucket_seconds: i64, max_bytes: usize) -> MemoryHistory {
        MemoryHistory::new(HistoryConfig {
            window_seconds: 86_400,
            bucket_seconds,
            max_bytes,
        })
    }

    fn record(store: &MemoryHistory, events: &[(&str, &str, i64)]) {
        let observations: Vec<Observation> = events
            .iter()
            .map(|&(src, query, time)| Observation { src, query, time })
            .collect();
        store.record_now(
            Batch::from_observations(&observations, NOW, store.config()),
            NOW,
        );
    }

    fn report(store: &MemoryHistory, src: &str, now: i64) -> String {
        format!("{:?}", store.source_now(src, now))
    }

    #[test]
    fn a_restored_store_reports_what_the_saved_one_did() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history").join("snapshot.json");
        let saved = store(300);
        record(
            &saved,
            &[
                ("10.0.0.1", "a1b2.tunnel.example", NOW - 7_200),
                ("10.0.0.1", "a1b2.tunnel.example", NOW - 100),
                ("10.0.0.1", "c3d4.tunnel.example", NOW - 100),
                ("10.0.0.1", "www.example.org", NOW - 50),
                ("10.0.0.2", "d1abc.cloudfront.net", NOW - 10),
            ],
        );
        let written = save(&saved, &path, NOW).unwrap();
        assert_eq!((written.sources, written.entries), (2, 5));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let restored = store(300);
        let stats = restore(&restored, &path, NOW + 60).unwrap().unwrap();
        assert_eq!((stats.sources, stats.entries, stats.skipped), (2, 5, 0));
        for src in ["10.0.0.1", "10.0.0.2"] {
            assert_eq!(
                report(&restored, src, NOW + 60),
                report(&saved, src, NOW + 60)
            );
        }
        assert!(report(&restored, "10.0.0.1", NOW).contains("tunnel.example"));
    }

    #[test]
    fn what_left_the_window_while_stopped_is_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        let saved = store(300);
        record(
            &saved,
            &[
                ("10.0.0.1", "old.example.com", NOW - 80_000),
                ("10.0.0.1", "new.example.com", NOW - 10),
            ],
        );
        save(&saved, &path, NOW).unwrap();
        // Restarted two hours later: the first entry is now older than the 24-hour window.
        let restored = store(300);
        let stats = restore(&restored, &path, NOW + 7_200).unwrap().unwrap();
        assert_eq!((stats.entries, stats.skipped), (1, 1));
        let report = report(&restored, "10.0.0.1", NOW + 7_200);
        assert!(report.contains("new.example.com") && !report.contains("old.example.com"));
    }

    #[test]
    fn a_snapshot_restores_under_other_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        let saved = store(60);
        // Three minutes apart: three one-minute buckets; in hourly buckets, one or two.
        record(
            &saved,
            &[
                ("10.0.0.1", "x.example.com", NOW - 3_000),
                ("10.0.0.1", "x.example.com", NOW - 2_820),
                ("10.0.0.1", "x.example.com", NOW - 2_640),
            ],
        );
        assert_eq!(save(&saved, &path, NOW).unwrap().entries, 3);
        let hourly = store(3_600);
        let stats = restore(&hourly, &path, NOW).unwrap().unwrap();
        let buckets = (NOW - 3_000).div_euclid(3_600) != (NOW - 2_640).div_euclid(3_600);
        assert_eq!(stats.entries, 1 + buckets as usize);
        assert_eq!(stats.entries + stats.skipped, 3);
    }

    #[test]
    fn no_file_is_a_first_start_and_a_bad_file_is_named_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        assert!(restore(&store(300), &path, NOW).unwrap().is_none());

        for (bytes, expected) in [
            (&b"{not json"[..], "not a snapshot this version reads"),
            (
                &br#"{"format":"other/9","saved_at":0,"sources":[]}"#[..],
                "format `other/9`",
            ),
        ] {
            std::fs::write(&path, bytes).unwrap();
            let error = restore(&store(300), &path, NOW).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.contains("snapshot.json"), "{error}");
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file is kept");
        }

        let small = capped(300, 1 << 10);
        std::fs::write(&path, vec![b' '; (1 << 20) + 4097 + 10]).unwrap();
        let error = restore(&small, &path, NOW).unwrap_err().to_string();
        assert!(error.contains("raise --history-max-mb"), "{error}");
    }

    #[test]
    fn the_cap_holds_for_a_restored_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        let big = store(300);
        let names: Vec<String> = (0..20_000).map(|i| format!("n{i}.example.com")).collect();
        let events: Vec<(&str, &str, i64)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let src = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"][i % 4];
                (src, n.as_str(), NOW - 10)
            })
            .collect();
        record(&big, &events);
        save(&big, &path, NOW).unwrap();
        let small = capped(300, 256 << 10);
        let stats = restore(&small, &path, NOW).unwrap().unwrap();
        assert!(stats.skipped > 0, "{stats:?}");
        let usage = crate::history::HistoryStore::usage(&small);
        assert!(usage.bytes <= 256 << 10, "{usage:?}");
    }
}
