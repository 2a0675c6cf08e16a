//! `run` and `demo` subcommands (work in progress).
use std::path::Path;
use std::process::ExitCode;

/// Options of `colo-proxy demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// EAL arguments (after `--`).
    #[arg(last = true)]
    pub eal: Vec<String>,
}

/// `colo-proxy run`.
pub fn run(_config: &Path, _eal: &[String]) -> ExitCode {
    eprintln!("colo-proxy run: not implemented yet");
    ExitCode::FAILURE
}

/// `colo-proxy demo`.
pub fn demo(_args: &DemoArgs) -> ExitCode {
    eprintln!("colo-proxy demo: not implemented yet");
    ExitCode::FAILURE
}
