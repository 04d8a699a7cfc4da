use clap::Parser;
use dnsexfil::cli::{self, Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Convert(args) => cli::run_convert(&args),
        Command::Serve(args) => {
            cli::init_logging(args.log_format);
            tokio::runtime::Runtime::new()?.block_on(cli::run_serve(args))
        }
    }
}
