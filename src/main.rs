//! The `docfetch` binary: parse the command line, hand off to the library,
//! report how it ended as an exit code (0 success, 1 failure, 2 usage or
//! config error).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use docfetch::cli::{Cli, execute};
use docfetch::config::Environment;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("docfetch: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute(cli, Environment::from_process())) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("docfetch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
