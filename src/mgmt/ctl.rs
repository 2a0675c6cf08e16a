//! `ctl` subcommand (work in progress).
use std::process::ExitCode;

/// Options of `colo-proxy ctl`.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// Command and arguments.
    pub words: Vec<String>,
}

/// `colo-proxy ctl`.
pub fn cli(_args: &CtlArgs) -> ExitCode {
    eprintln!("colo-proxy ctl: not implemented yet");
    ExitCode::FAILURE
}
