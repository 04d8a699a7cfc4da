//! Memory after large requests: the allocator (mimalloc) keeps freed buffers cached per thread,
//! which after a 100,000-row batch would leave the process hundreds of MiB above its idle size;
//! large requests hand them back to the OS when they finish.

/// Requests with bodies at least this large hand their freed memory back to the OS afterwards.
pub const LARGE_REQUEST_BYTES: usize = 1 << 20;

/// Returns memory freed by the calling thread, and by the compute pool's threads (which build
/// parts of large requests), to the OS.
pub fn release_freed_memory() {
    collect_this_thread();
    // Queued, not awaited: the pool may be busy with another request.
    rayon::spawn_broadcast(|_| collect_this_thread());
}

fn collect_this_thread() {
    // SAFETY: mi_collect only walks and frees mimalloc's own bookkeeping; it is a no-op for
    // memory from another allocator (tests and benches may use the system one).
    unsafe { libmimalloc_sys::mi_collect(true) }
}
