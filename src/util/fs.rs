//! Files on disk written atomically: a reader sees the old content or the new, never a mix.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` via a temporary file in the same directory, fsync, then rename.
/// A crash at any point leaves either the previous file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // tempfile creates 0600; model and data files are meant to be readable like any other file.
    write_atomic_mode(path, bytes, 0o644)
}

/// `write_atomic` with the file's permission bits (Unix; e.g. 0o600 for a private key, which is
/// never readable by others, not even for a moment).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (dir, tmp) = complete_temporary(path, bytes, mode)?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Make the rename itself durable.
    sync_dir(&dir);
    Ok(())
}

/// Writes two files as one: both new versions, or (on any failure) both old ones. Both are
/// first written in full to temporary files (a full disk fails here, before anything changes),
/// then renamed into place; if the second rename fails, the first file is put back as it was.
pub fn write_pair_atomic(first: (&Path, &[u8]), second: (&Path, &[u8])) -> io::Result<()> {
    let (dir, first_tmp) = complete_temporary(first.0, first.1, 0o644)?;
    let (second_dir, second_tmp) = complete_temporary(second.0, second.1, 0o644)?;
    // The previous first file, kept under a temporary name until the second is in place.
    let previous = if first.0.exists() {
        let keep = tempfile::Builder::new()
            .prefix(&format!(
                ".{}.",
                first
                    .0
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("file")
            ))
            .suffix(".previous.tmp")
            .make_in(&dir, |p| fs::hard_link(first.0, p))?;
        Some(keep.into_temp_path())
    } else {
        None
    };
    first_tmp.persist(first.0).map_err(|e| e.error)?;
    if let Err(e) = second_tmp.persist(second.0) {
        let restored = match previous {
            Some(previous) => previous.persist(first.0).map_err(|e| e.error),
            None => fs::remove_file(first.0),
        };
        if let Err(undo) = restored {
            return Err(io::Error::new(
                e.error.kind(),
                format!(
                    "{} (and {} could not be put back: {undo})",
                    e.error,
                    first.0.display()
                ),
            ));
        }
        return Err(e.error);
    }
    // The previous first file's link goes with `previous` when dropped.
    drop(previous);
    sync_dir(&dir);
    if second_dir != dir {
        sync_dir(&second_dir);
    }
    Ok(())
}

/// Like `write_atomic_mode`, but only if `path` does not exist yet: returns false, writing
/// nothing, when it does (another process got there first; its file is complete, since it
/// appeared by a link of a complete temporary file).
pub fn create_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    let (dir, tmp) = complete_temporary(path, bytes, mode)?;
    match tmp.persist_noclobber(path) {
        Ok(_) => {
            sync_dir(&dir);
            Ok(true)
        }
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e.error),
    }
}

/// A temporary file beside `path` holding `bytes` with permission bits `mode`, synced.
fn complete_temporary(
    path: &Path,
    bytes: &[u8],
    mode: u32,
) -> io::Result<(std::path::PathBuf, tempfile::NamedTempFile)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_dirs_durably(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
        ))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    Ok((dir.to_path_buf(), tmp))
}

/// Creates `dir` and any missing parents, and makes each new entry durable (fsync of the
/// directory holding it): after a power cut, a file saved in a new store folder must not vanish
/// with the folder.
fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
        missing.push(d);
        at = d.parent();
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent);
        }
    }
    Ok(())
}

/// fsync of a directory, for the entries just made in it. Best effort: some filesystems refuse
/// to sync a directory (the data itself was already synced).
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Why a file was not read by `read_regular_capped`.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A FIFO, device, socket or directory (also behind a symlink): reading one can block for
    /// ever (a FIFO nobody writes to) or never end (`/dev/zero`).
    #[error("it is not a regular file but {0}; only regular files are read: remove it")]
    NotRegular(&'static str),
    #[error("it is {size} bytes, more than the {limit} bytes allowed")]
    TooLarge { size: u64, limit: u64 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn kind_of(file_type: fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if file_type.is_char_device() || file_type.is_block_device() {
            return "a device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Opens a regular file of at most `limit` bytes for reading; returns it with its length.
/// Anything else is refused before a byte is read: the path is opened without blocking (a FIFO
/// opened normally waits for a writer), and the opened file itself is checked (the path may be
/// swapped in between). The caller reads no more than the length returned.
pub fn open_regular_capped(path: &Path, limit: u64) -> Result<(fs::File, u64), ReadError> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `limit` bytes (see [`open_regular_capped`]); no more
/// than `limit` bytes are read even if the file grows meanwhile.
pub fn read_regular_capped(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let (file, len) = open_regular_capped(path, limit)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Why [`run_with_time_limit`] has no result.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeLimitError {
    #[error("it was not read within {} s (a hung disk or network mount?)", .0.as_secs_f64())]
    TimedOut(std::time::Duration),
    #[error("no thread could be started to read it: {0}")]
    NoThread(String),
}

/// Runs `read` on a thread of its own and waits for it at most `limit`: a read that hangs (a
/// stuck network mount, a device that never answers) delays the caller by `limit` at most.
/// A read cannot be interrupted, so one still running then is abandoned: it ends (or not) on
/// its thread, and its result is dropped. Called from blocking threads only (it waits).
pub fn run_with_time_limit<T: Send + 'static>(
    limit: std::time::Duration,
    read: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TimeLimitError> {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("file-read".into())
        .spawn(move || {
            // Nobody is waiting any more when the read took too long.
            let _ = done.send(read());
        })
        .map_err(|e| TimeLimitError::NoThread(e.to_string()))?;
    result
        .recv_timeout(limit)
        .map_err(|_| TimeLimitError::TimedOut(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/model.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("model.bin")]);
    }

    #[test]
    fn create_atomic_keeps_an_existing_file_and_sets_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tls/pair.pem");
        assert!(create_atomic(&p, b"first", 0o600).unwrap());
        assert!(!create_atomic(&p, b"second", 0o600).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"first");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(fs::read_dir(dir.path().join("tls")).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_read_that_blocks_is_abandoned_at_its_time_limit() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.safetensors");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Opened the ordinary way, a FIFO waits for a writer that never comes: a read that hangs.
        let path = fifo.clone();
        let started = Instant::now();
        let limit = Duration::from_millis(200);
        let read = run_with_time_limit(limit, move || fs::read(&path));
        assert_eq!(read.err(), Some(TimeLimitError::TimedOut(limit)));
        assert!(started.elapsed() >= limit);
        // The abandoned read ends once a writer comes and goes (end of file).
        drop(fs::OpenOptions::new().write(true).open(&fifo).unwrap());
        // A read that ends in time gives its result.
        assert_eq!(
            run_with_time_limit(Duration::from_secs(60), || 42).unwrap(),
            42
        );
    }
}
