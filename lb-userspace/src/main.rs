//! `lb`: parse the command line, set up logging, hand over. No logic here.

use std::process::ExitCode;

use clap::Parser as _;
use lb_userspace::cli::{admin, Cmd, Opt};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LB_LOG").unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())) // plain text in files and journald
        .with_writer(std::io::stderr)
        .init();
    let opt = Opt::parse();
    let result = match opt.command {
        Cmd::Run { config } => {
            tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(lb_userspace::daemon::run(config)))
        }
        Cmd::Doctor { json, window_ms } => return ExitCode::from(lb_userspace::cli::doctor(&opt.target, json, window_ms)),
        other => admin(other, &opt.target),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line per cause; config problems are one per line already.
            eprintln!("lb: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
