//! How the service uses memory over time: the allocator keeps freed pages briefly so
//! back-to-back large requests reuse them, and hands them back to the OS once large requests
//! stop, so the process returns near its idle size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Requests with bodies at least this large count as large (see [`large_request_done`]).
pub const LARGE_REQUEST_BYTES: usize = 1 << 20;

/// How long the allocator keeps freed memory before returning it to the OS. mimalloc's default
/// (10 ms) is shorter than one 100,000-row request, so every such request faulted in and zeroed
/// fresh pages for all its buffers; a little longer, the next request reuses them.
const PURGE_DELAY_MS: std::ffi::c_long = 500;

/// mimalloc's `mi_option_purge_delay` (its header's option number; the sys crate has no name
/// for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the allocator up for serving; call once at start-up, before serving requests.
pub fn configure_allocator() {
    // SAFETY: sets one of mimalloc's numeric options; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}

/// Large requests finished so far.
static LARGE_REQUESTS_DONE: AtomicU64 = AtomicU64::new(0);

/// Records that a large request finished: its memory goes back to the OS once large requests
/// have stopped for a while (see [`spawn_idle_release`]).
pub fn large_request_done() {
    LARGE_REQUESTS_DONE.fetch_add(1, Ordering::Relaxed);
}

/// Returns freed memory to the OS now. The service allocates with mimalloc, which otherwise
/// keeps a large request's buffers cached; after a 100,000-row batch that would leave the
/// process hundreds of MiB above its idle size.
pub fn release_freed_memory() {
    // SAFETY: mi_collect only walks and frees mimalloc's own bookkeeping; it is a no-op for
    // memory from another allocator (tests and benches may use the system one).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Every `every`, when large requests finished since the last release but none in the last
/// `every`, releases freed memory: back-to-back batches keep their pages, and a quiet service
/// gives them back.
pub fn spawn_idle_release(every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut released_at, mut last_seen) = (0, 0);
        loop {
            ticks.tick().await;
            let done = LARGE_REQUESTS_DONE.load(Ordering::Relaxed);
            if done != released_at && done == last_seen {
                released_at = done;
                // Several threads may hold freed pages; the blocking pool's threads are where
                // requests ran, and a collect from any thread purges the shared arenas.
                let _ = tokio::task::spawn_blocking(release_freed_memory).await;
            }
            last_seen = done;
        }
    });
}
