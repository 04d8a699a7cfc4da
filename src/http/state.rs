//! The state every request handler shares: settings, the model registry, the compute pool and
//! the permits that bound what requests may take at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::memory::LargeRequest;
use crate::engine::suppress::Suppressions;
use crate::http::auth::Token;
use crate::http::limits::Limits;
use crate::store::{ModelStore, Registry, StoreProblem};

/// Settings the request handlers need.
pub struct ServerConfig {
    pub token: Token,
    pub max_body_bytes: usize,
    /// Largest number of CSV rows one request may carry.
    pub max_rows: usize,
    /// Where `/fit mode=stage` writes `<model_name>.csv|.json`.
    pub staging_dir: PathBuf,
    /// Where fitted models persist (none: `/fit` cannot train).
    pub model_store: Option<ModelStore>,
    /// A fit that trains longer is stopped with an error and saves nothing.
    pub fit_time_limit: Duration,
    /// Largest number of CSV rows a `/fit` may train on (training holds several copies of the
    /// features, so its memory grows faster than `/apply`'s).
    pub max_fit_rows: usize,
    /// In-flight and time limits per request.
    pub limits: Limits,
}

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub config: Arc<ServerConfig>,
    /// One permit per compute thread: CPU work queues here (first come, first served) instead of
    /// oversubscribing the cores, which keeps small requests fast under load.
    pub compute: Arc<tokio::sync::Semaphore>,
    /// One training at a time: a fit arriving while another trains is refused, not queued.
    pub fit_slot: Arc<tokio::sync::Semaphore>,
    /// Allowlist and muted sources, applied to every scored row after scoring.
    pub suppressions: Arc<Suppressions>,
    /// One permit per request in flight on the limited routes (see `limits.rs`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// The bytes of request bodies all requests may hold at once, in KiB permits.
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// Why fits cannot be saved in the model store, as last checked (at start-up and before
    /// each fit trains); `None` when it is usable. Readiness reports it.
    pub store_problem: Arc<std::sync::Mutex<Option<String>>>,
    /// What the service remembers of each source across requests (off unless the service
    /// was started with a store).
    pub history: Arc<crate::history::History>,
}

/// The in-flight body budget in KiB permits (`--max-bodies-in-flight-mb`).
fn budget_kib(config: &ServerConfig) -> usize {
    (config.limits.max_body_bytes_in_flight >> 10)
        .max(1)
        .min(tokio::sync::Semaphore::MAX_PERMITS)
}

impl AppState {
    /// `router` under this state's request limits (see [`crate::http::limits::guard`]).
    pub fn limited(
        &self,
        router: axum::Router<AppState>,
        flavor: crate::http::refusal::Flavor,
        timed: bool,
    ) -> axum::Router<AppState> {
        crate::http::limits::guard(
            router,
            &self.in_flight,
            &self.body_budget,
            &self.config.limits,
            flavor,
            timed,
        )
    }

    /// The whole in-flight body budget, in the KiB permits `body_budget` hands out.
    pub fn body_budget_kib(&self) -> usize {
        budget_kib(&self.config)
    }

    pub fn new(registry: Arc<Registry>, config: ServerConfig, compute_threads: usize) -> Self {
        let in_flight = config.limits.max_concurrent_requests.max(1);
        let store_problem = config
            .model_store
            .as_ref()
            .and_then(|store| store.check_writable().err())
            .map(|problem| problem.to_string());
        let budget_kib = budget_kib(&config);
        Self {
            body_budget: Arc::new(tokio::sync::Semaphore::new(budget_kib)),
            store_problem: Arc::new(std::sync::Mutex::new(store_problem)),
            registry,
            config: Arc::new(config),
            compute: Arc::new(tokio::sync::Semaphore::new(compute_threads.max(1))),
            fit_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            suppressions: Arc::new(Suppressions::none()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(in_flight)),
            history: Arc::new(crate::history::History::off()),
        }
    }

    /// The same state remembering sources' history in `history`.
    pub fn with_history(mut self, history: crate::history::History) -> Self {
        self.history = Arc::new(history);
        self
    }

    /// The same state with an allowlist and mutes (none by default).
    pub fn with_suppressions(mut self, suppressions: Suppressions) -> Self {
        self.suppressions = Arc::new(suppressions);
        self
    }

    /// Runs CPU-bound `work` for a request of `body_len` bytes once a compute permit is free:
    /// small requests right here on the async worker, larger ones on the compute pool.
    pub async fn run_compute<T: Send + 'static>(
        &self,
        body_len: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkerPanicked> {
        let large = LargeRequest::begin(body_len);
        let permit = self
            .compute
            .clone()
            .acquire_owned()
            .await
            .expect("the compute semaphore is never closed");
        // The permit and the large-request guard end with the work itself: if the client goes
        // away, the work still holds them until it really ends, so the cores are never
        // oversubscribed and its memory is handed back after it.
        let job = move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            drop((large, permit));
            result
        };
        let result = if runs_on_async_worker(body_len) {
            crate::util::pool::run_inline(job)
        } else {
            // On the compute pool, whose threads also split the work of large requests: the
            // memory they free stays with a few known threads, which `memory` hands back
            // together. The request's span (and its request id) follows the work there.
            let span = tracing::Span::current();
            let (answer, answered) = tokio::sync::oneshot::channel();
            rayon::spawn(move || {
                // The request may have been given up (timeout, client gone): nobody to answer.
                let _ = answer.send(span.in_scope(job));
            });
            answered
                .await
                .map_err(|_| WorkerPanicked("the compute pool dropped the request".into()))?
        };
        result.map_err(|panic| WorkerPanicked(panic_text(&*panic)))
    }

    /// Waits for a compute permit from a blocking thread (work that turned out to be scoring
    /// after it started outside the permits: a `/fit` without a label).
    pub fn compute_permit_blocking(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        runtime.block_on(self.compute.clone().acquire_owned()).ok()
    }

    /// Runs long CPU-bound `work` (training) for a request of `body_len` bytes on a blocking
    /// thread without a compute permit, in the request's span.
    pub async fn run_uncounted<T: Send + 'static>(
        body_len: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let large = LargeRequest::begin(body_len);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let result = span.in_scope(work);
            if let Some(large) = large {
                large.end_on_blocking_thread();
            }
            result
        })
        .await
    }

    /// Checks again that fits can be saved in the model store, and remembers the outcome for
    /// readiness. `Err`: what is wrong.
    pub fn check_store(&self) -> Result<(), StoreProblem> {
        let checked = match &self.config.model_store {
            Some(store) => store.check_writable(),
            None => Ok(()),
        };
        *self.store_problem.lock().expect("store problem lock") =
            checked.as_ref().err().map(|problem| problem.to_string());
        checked
    }

    /// When no loaded model answers to `model_name`/`algo`, looks at the model store once: another
    /// replica sharing it may have just fitted that model. For blocking threads (it waits); on an
    /// async worker it does nothing, and the handler looks with [`AppState::look_in_store`]
    /// before it runs the request's work there.
    pub fn rescan_store_if_missing(&self, model_name: &str, algo: Option<&str>) {
        if on_async_worker() {
            return;
        }
        let Some(scan) = self.scan_store_for(model_name, algo) else {
            return;
        };
        let deadline = std::time::Instant::now() + STORE_SCAN_TIME_LIMIT;
        while !scan.ended(&self.registry) {
            if std::time::Instant::now() >= deadline {
                return scan.not_finished();
            }
            std::thread::sleep(SCAN_POLL);
        }
    }

    /// [`AppState::rescan_store_if_missing`] for the async worker: the same scan, awaited.
    pub async fn look_in_store(&self, model_name: &str, algo: Option<&str>) {
        let Some(scan) = self.scan_store_for(model_name, algo) else {
            return;
        };
        let ended = async {
            while !scan.ended(&self.registry) {
                tokio::time::sleep(SCAN_POLL).await;
            }
        };
        if tokio::time::timeout(STORE_SCAN_TIME_LIMIT, ended)
            .await
            .is_err()
        {
            scan.not_finished();
        }
    }

    /// When no loaded model answers to `model_name`/`algo` and there is a model store, starts a
    /// scan of it, or joins the one under way (one at a time), and returns what to wait for. The
    /// scan runs on a thread of its own, so a store that hangs (a stuck network mount) delays only
    /// the requests that wait for it, and only so long.
    fn scan_store_for(&self, model_name: &str, algo: Option<&str>) -> Option<StoreScan<'_>> {
        let store = self.config.model_store.as_ref()?;
        if self.registry.resolve(model_name, algo).is_some() {
            return None;
        }
        let ended_before = self.registry.scans_ended();
        if !self.registry.begin_scan() {
            // A scan is under way: it is the next to end.
            return Some(StoreScan {
                store,
                ended_when: ended_before + 1,
                started: false,
            });
        }
        // Ours: no other scan runs until it ends.
        let scan = StoreScan {
            store,
            ended_when: self.registry.scans_ended() + 1,
            started: true,
        };
        let (registry, dir) = (self.registry.clone(), store.dir().to_path_buf());
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name("store-scan".into())
            .spawn(move || {
                let _entered = span.enter();
                // Ended even if the scan panics, or every later lookup would wait in vain.
                let scanning = EndScanOnDrop(registry.clone());
                let (loaded, failed) = registry.refresh_dir(&dir);
                drop(scanning);
                for name in loaded {
                    tracing::info!(model = %name, dir = %dir.display(), "model loaded from the store");
                }
                for (file, problem) in failed {
                    tracing::warn!(file = %file.display(), %problem, "model file in the store skipped");
                }
            });
        if spawned.is_err() {
            self.registry.end_scan();
            return None;
        }
        Some(scan)
    }
}

fn scan_not_finished(store: &ModelStore) {
    tracing::warn!(
        dir = %store.dir().display(),
        limit_secs = STORE_SCAN_TIME_LIMIT.as_secs_f64(),
        "the scan of the model store did not finish in time; the request goes on without it"
    );
}

/// A scan of the model store a request waits for.
struct StoreScan<'a> {
    store: &'a ModelStore,
    /// The count of ended scans (`Registry::scans_ended`) at which it has ended.
    ended_when: u64,
    /// Whether this request started it: only the starter reports a scan that did not end in time.
    started: bool,
}

impl StoreScan<'_> {
    fn ended(&self, registry: &Registry) -> bool {
        registry.scans_ended() >= self.ended_when
    }

    fn not_finished(&self) {
        if self.started {
            scan_not_finished(self.store);
        }
    }
}

struct EndScanOnDrop(Arc<Registry>);

impl Drop for EndScanOnDrop {
    fn drop(&mut self) {
        self.0.end_scan();
    }
}

/// Whether request work runs on an async worker (`run_compute`'s small requests): work there
/// must never wait for files or for the compute pool, or every connection that worker serves
/// waits too.
fn on_async_worker() -> bool {
    !crate::util::pool::may_wait_for_pool()
}

/// Whether the work of a request with a body of `body_len` bytes runs on the async worker that
/// read it (see [`INLINE_MAX_BYTES`]): such work must not wait, so its handler looks in the
/// model store before it runs.
pub fn runs_on_async_worker(body_len: usize) -> bool {
    body_len <= INLINE_MAX_BYTES
}

/// How often a request waiting for a scan of the model store looks whether it has ended.
const SCAN_POLL: Duration = Duration::from_millis(5);

/// Longest a request waits for a scan of the model store (a scan of a healthy store of small
/// files takes milliseconds).
pub const STORE_SCAN_TIME_LIMIT: Duration = Duration::from_secs(2);

/// Request bodies up to this size are scored on the async worker that read them: their work
/// (about 0.1 ms for 100 rows) costs less than the hand-over to a blocking thread and back,
/// which under many small concurrent requests was most of their latency.
pub const INLINE_MAX_BYTES: usize = 16 << 10;

/// Request work that panicked (a bug: the request is answered with an internal error).
#[derive(Debug, thiserror::Error)]
#[error("the request worker panicked: {0}")]
pub struct WorkerPanicked(pub String);

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// Compute threads to use by default: the CPUs this process may use (cgroup quota included).
pub fn default_compute_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Set when the service starts shutting down: work that could outlast the grace period (a fit's
/// training) checks it and stops, so the process exits within the grace period.
pub static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AppState {
        let config = ServerConfig {
            token: Token::Unset,
            max_body_bytes: 1 << 20,
            max_rows: 1000,
            staging_dir: std::env::temp_dir(),
            model_store: None,
            fit_time_limit: Duration::from_secs(1),
            max_fit_rows: 1000,
            limits: Default::default(),
        };
        AppState::new(Arc::new(Registry::new()), config, 1)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_and_large_work_both_answer_and_a_panic_is_an_error_not_a_crash() {
        let state = state();
        let on_worker = std::thread::current().id();
        // Small: here on the async worker; large: on the compute pool.
        let small = state.run_compute(100, std::thread::current).await.unwrap();
        assert_eq!(small.id(), on_worker);
        let large = state
            .run_compute(INLINE_MAX_BYTES + 1, std::thread::current)
            .await
            .unwrap();
        assert_ne!(large.id(), on_worker);
        for size in [100, INLINE_MAX_BYTES + 1] {
            let failed = state
                .run_compute(size, move || -> u32 { panic!("boom {size}") })
                .await
                .unwrap_err();
            assert!(failed.to_string().contains("panicked"), "{failed}");
            // The permit came back: the next request still runs (one compute permit).
            assert_eq!(state.run_compute(size, || 7).await.unwrap(), 7);
        }
    }
}
