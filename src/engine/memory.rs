//! Memory after large requests: the allocator (mimalloc) keeps freed buffers cached per thread,
//! which after a 100,000-row batch would leave the process a hundred MiB or more above its idle
//! size. That memory is handed back to the OS once large requests stop coming for a moment, or at
//! once when the process holds more than a budget. Not after every large request: the next one
//! would then fault all its pages in again (back-to-back 100,000-row requests ran about a third
//! slower that way).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` chooses for
/// the allocator. With them, mimalloc asks for huge pages (`MADV_HUGEPAGE`) and each fault on a
/// large request's fresh memory zeroes 2 MiB: after the memory of earlier requests had been
/// handed back, about half the 100,000-row `/apply` requests took two to three times as long
/// in every stage, with the same best time (docs/performance.md). Returns whether it turned
/// them off.
pub fn no_transparent_huge_pages() -> bool {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sets a flag of the calling process; no memory is passed.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Requests with bodies at least this large count as large: their freed memory is handed back
/// to the OS afterwards.
pub const LARGE_REQUEST_BYTES: usize = 1 << 20;

/// How long no large request must be in flight or have finished before freed memory is handed
/// back. Back-to-back large requests keep their pages meanwhile.
pub const RELEASE_AFTER_QUIET: Duration = Duration::from_millis(500);

/// Above this resident size, a large request hands freed memory back as soon as it ends:
/// concurrent large batches would otherwise stack their cached pages.
pub const RELEASE_AT_ONCE_ABOVE_BYTES: usize = 128 << 20;

/// Large requests in flight, and how many have finished.
struct LargeRequests {
    in_flight: AtomicUsize,
    finished: AtomicU64,
}

impl LargeRequests {
    const fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
        }
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// Marks one request finished; returns its place among the finished ones.
    fn end(&self) -> u64 {
        let finished = self.finished.fetch_add(1, Ordering::SeqCst) + 1;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        finished
    }

    /// Marks one large answer made or sent (answers never count as in flight); returns its
    /// place among the finished ones.
    fn one_finished(&self) -> u64 {
        self.finished.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// True when no large request is in flight and none finished after the `finished`-th:
    /// the quiet moment that request's release waited for.
    fn quiet_since(&self, finished: u64) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
            && self.finished.load(Ordering::SeqCst) == finished
    }
}

static LARGE_REQUESTS: LargeRequests = LargeRequests::new();

/// A large request in flight, from before it waits for a compute permit until its work ends.
/// Dropping it hands freed memory back to the OS at once when the process holds more than
/// [`RELEASE_AT_ONCE_ABOVE_BYTES`], else once large requests stop for [`RELEASE_AFTER_QUIET`].
/// Made on the async runtime, it moves into the request's work and ends with it, even when the
/// client has gone away meanwhile (see `AppState::run_compute`).
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct LargeRequest {
    runtime: Option<tokio::runtime::Handle>,
    /// A large answer being sent, not a request (see [`LargeRequest::answer`]).
    answer: bool,
}

impl LargeRequest {
    /// A guard when a body of `body_len` bytes is large, else `None`.
    pub fn begin(body_len: usize) -> Option<Self> {
        (body_len >= LARGE_REQUEST_BYTES).then(|| {
            LARGE_REQUESTS.begin();
            Self {
                runtime: tokio::runtime::Handle::try_current().ok(),
                answer: false,
            }
        })
    }

    /// A guard for an answer of `len` bytes being sent, when large: dropped once sent, it hands
    /// the answer's memory back like a large request's end. It does not count as in flight, so
    /// a client that stops reading cannot hold back every other release.
    ///
    /// Its making counts as a large request's end too: the work that wrote it has ended, and a
    /// body under [`LARGE_REQUEST_BYTES`] (tiny events answered at length) never counted as large,
    /// so that work's freed memory would otherwise stay cached for as long as the answer is unread.
    pub fn answer(len: usize) -> Option<Self> {
        (len >= LARGE_REQUEST_BYTES).then(|| {
            let runtime = tokio::runtime::Handle::try_current().ok();
            release_when_quiet(LARGE_REQUESTS.one_finished(), runtime.as_ref());
            Self {
                runtime,
                answer: true,
            }
        })
    }
}

impl LargeRequest {
    /// Ends the request on a blocking thread (training), which a later release cannot reach:
    /// that thread's freed memory goes back now, the rest as for any large request.
    pub fn end_on_blocking_thread(self) {
        collect_this_thread();
    }
}

impl Drop for LargeRequest {
    fn drop(&mut self) {
        let finished = if self.answer {
            LARGE_REQUESTS.one_finished()
        } else {
            LARGE_REQUESTS.end()
        };
        release_when_quiet(finished, self.runtime.as_ref());
    }
}

/// Hands freed memory back at once when the process holds more than
/// [`RELEASE_AT_ONCE_ABOVE_BYTES`] (or outside the service: nothing else to wait for), else
/// once no large request began or ended for [`RELEASE_AFTER_QUIET`] after the `finished`-th.
fn release_when_quiet(finished: u64, runtime: Option<&tokio::runtime::Handle>) {
    let over_budget =
        resident_bytes().is_none_or(|resident| resident > RELEASE_AT_ONCE_ABOVE_BYTES);
    match runtime {
        Some(runtime) if !over_budget => {
            let handle = runtime.clone();
            runtime.spawn(async move {
                tokio::time::sleep(RELEASE_AFTER_QUIET).await;
                if LARGE_REQUESTS.quiet_since(finished) {
                    release_freed_memory(Some(&handle));
                }
            });
        }
        runtime => release_freed_memory(runtime),
    }
}

/// How many releases have been asked for: each async worker collects once per release, when
/// it next goes idle ([`on_async_worker_park`]).
static RELEASES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static RELEASES_COLLECTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Returns memory freed by the compute pool's threads (which processed large requests) and by
/// the async workers of `runtime` (which read their bodies and sent their answers) to the OS:
/// the calling thread and the pool at once, the workers when they next go idle. An async
/// worker calling this does not collect at once either: it may be serving small requests.
fn release_freed_memory(runtime: Option<&tokio::runtime::Handle>) {
    RELEASES.fetch_add(1, Ordering::SeqCst);
    let on_async_worker = runtime.is_some() && tokio::runtime::Handle::try_current().is_ok();
    if !on_async_worker {
        collect_this_thread();
    }
    // Queued, not awaited: the pool may be busy with another request.
    rayon::spawn_broadcast(|_| collect_this_thread());
    // Idle workers sleep until there is work: empty tasks wake them, and they collect when
    // they go idle again.
    if let Some(runtime) = runtime {
        for _ in 0..runtime.metrics().num_workers() {
            runtime.spawn(async {});
        }
    }
}

/// For the async runtime's `on_thread_park`: a worker going idle collects once per release.
pub fn on_async_worker_park() {
    let asked = RELEASES.load(Ordering::Relaxed);
    RELEASES_COLLECTED.with(|collected| {
        if collected.get() != asked {
            collected.set(asked);
            collect_this_thread();
        }
    });
}

fn collect_this_thread() {
    // SAFETY: mi_collect only walks and frees mimalloc's own bookkeeping; it is a no-op for
    // memory from another allocator (tests and benches may use the system one).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// The process's resident memory (`VmRSS`), where the OS reports it.
fn resident_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_waits_until_no_large_request_is_in_flight_or_finishes_after() {
        let requests = LargeRequests::new();
        requests.begin();
        requests.begin();
        let first = requests.end();
        // The second is still in flight.
        assert!(!requests.quiet_since(first));
        let second = requests.end();
        // The second finished after the first: only the second's release is due.
        assert!(!requests.quiet_since(first));
        assert!(requests.quiet_since(second));
        requests.begin();
        assert!(!requests.quiet_since(second));
        let third = requests.end();
        assert!(requests.quiet_since(third));
    }

    #[test]
    fn a_large_answer_is_a_finish_but_never_in_flight() {
        let requests = LargeRequests::new();
        requests.begin();
        let first = requests.end();
        // An answer still being sent does not count (a client that stops reading must not
        // hold back every other release); one sent later is a newer finish, waited for.
        let sent = requests.one_finished();
        assert!(!requests.quiet_since(first));
        assert!(requests.quiet_since(sent));
        assert_eq!(requests.in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn resident_memory_is_read_where_the_os_reports_it() {
        if std::path::Path::new("/proc/self/status").exists() {
            let resident = resident_bytes().expect("VmRSS is read");
            // A running test process holds at least its code and a few pages of data.
            assert!(resident > 1 << 20, "{resident}");
        }
    }
}
