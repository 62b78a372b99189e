//! The `segswarm` binary: argument parsing, user-facing messages and exit
//! codes. Everything else lives in the library.

mod cli;
mod client;
mod flags;
mod transcode;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without repeating a cause that a
/// message already includes (library errors name their cause themselves).
fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
