use std::process::ExitCode;

use clap::Parser;
use dnsexfil::app;
use dnsexfil::app::{Cli, Command};

// Requests allocate and free buffers of several MiB; mimalloc keeps them mapped between requests
// instead of paying page faults for fresh memory each time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Before any other thread starts: otherwise candle counts the CPUs again on every matmul.
fn fix_candle_threads_to_the_cpus() {
    dnsexfil::model::fix_candle_threads(dnsexfil::http::state::default_compute_threads());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Convert(args) => app::run_convert(&args),
        Command::Synth(args) => app::run_synth(&args),
        Command::Train(args) => {
            fix_candle_threads_to_the_cpus();
            app::run_train(&args)
        }
        Command::Evaluate(args) => {
            fix_candle_threads_to_the_cpus();
            app::run_evaluate(&args)
        }
        Command::Openapi => app::run_openapi(),
        Command::Healthcheck(args) => dnsexfil::app::healthcheck::run(&args),
        Command::Serve(args) => {
            let threads = args
                .compute_threads
                .unwrap_or_else(dnsexfil::http::state::default_compute_threads);
            dnsexfil::model::fix_candle_threads(threads);
            app::init_logging(args.log_format);
            // Before the runtime and any large allocation.
            let huge_pages_off = dnsexfil::engine::memory::no_transparent_huge_pages();
            tracing::debug!(
                huge_pages_off,
                "transparent huge pages (off unless MIMALLOC_ALLOW_THP is set)"
            );
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .on_thread_park(dnsexfil::engine::memory::on_async_worker_park)
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    let served = rt.block_on(app::run_serve(args));
                    // Blocking work still running (a fit, which stops at its next batch once
                    // the service is stopping) gets a moment, not an unbounded wait.
                    rt.shutdown_timeout(std::time::Duration::from_secs(5));
                    served
                })
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` keeps the cause chain on one line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
