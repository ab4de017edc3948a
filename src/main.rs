//! `acmeproxy`: parse the command line, call the library, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: glibc's took about 10 % of the server's
/// CPU under load and kept freed memory in per-thread arenas
/// (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = acmeproxy::cli::Cli::parse();
    match acmeproxy::app::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once, even where an error repeats its source.
            eprintln!("acmeproxy: {}", acmeproxy::telemetry::causes(e.as_ref()));
            if e.downcast_ref::<acmeproxy::app::RestartNeeded>().is_some() {
                ExitCode::from(acmeproxy::app::EXIT_RESTART)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
