//! Whether the current thread may hand work to the rayon pool and wait for it. An async worker
//! running a small request inline must not: while the pool is busy with a large request, the
//! worker would stall every connection it serves (and the pool's threads may themselves be
//! waiting on the async runtime, for Redis). Everywhere else (the pool's own threads, the
//! command line, benches) large work is split across the cores.

use std::cell::Cell;

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work` as an async worker's inline work: [`may_wait_for_pool`] is false inside it.
pub fn run_inline<T>(work: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            INLINE.with(|inline| inline.set(false));
        }
    }
    INLINE.with(|inline| inline.set(true));
    let _reset = Reset;
    work()
}

/// Runs `work` on this thread; when `heavy` on an async worker (of a multi-thread runtime), as
/// blocking work (`block_in_place`): the worker's other tasks move to another worker meanwhile,
/// so inline work that turned out large holds up no other connection.
pub fn off_the_reactor_if<T>(heavy: bool, work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime)
            if heavy && runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
        {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// False inside [`run_inline`]: the work must stay on this thread.
pub fn may_wait_for_pool() -> bool {
    !INLINE.with(|inline| inline.get())
}

/// Batches at least this large are split across the cores (in halves, recursively): below it,
/// handing work to another thread costs more than it saves.
pub const PARALLEL_MIN_ROWS: usize = 4096;

/// Whether work over `items` rows, events or names is split across the cores here: large
/// enough to pay for it, and not on an async worker.
pub fn worth_splitting(items: usize) -> bool {
    items >= PARALLEL_MIN_ROWS && may_wait_for_pool()
}

/// `(a(), b())`: both at once on the pool when `split`, else one after the other here.
pub fn join<A: Send, B: Send>(
    split: bool,
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    if split {
        rayon::join(a, b)
    } else {
        (a(), b())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_work_may_not_wait_for_the_pool_and_the_flag_ends_with_it() {
        assert!(may_wait_for_pool());
        assert!(!run_inline(may_wait_for_pool));
        assert!(may_wait_for_pool());
        let panicked = std::panic::catch_unwind(|| run_inline(|| panic!("inline work failed")));
        assert!(panicked.is_err());
        assert!(may_wait_for_pool(), "a panic must not leave the flag set");
    }

    #[test]
    fn inline_work_is_never_worth_splitting_and_joins_run_in_order_there() {
        assert!(worth_splitting(PARALLEL_MIN_ROWS));
        assert!(!worth_splitting(PARALLEL_MIN_ROWS - 1));
        assert!(!run_inline(|| worth_splitting(usize::MAX)));
        for split in [true, false] {
            assert_eq!(join(split, || 1, || "two"), (1, "two"));
        }
    }
}
