//! `acmeproxy`: parse the command line, call the library, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = acmeproxy::cli::Cli::parse();
    match acmeproxy::app::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("acmeproxy: {e:#}");
            ExitCode::from(1)
        }
    }
}
