//! `selfcheck` subcommand (work in progress).
use std::process::ExitCode;

/// `colo-proxy selfcheck`.
pub fn cli(_eal: &[String]) -> ExitCode {
    eprintln!("colo-proxy selfcheck: not implemented yet");
    ExitCode::FAILURE
}
