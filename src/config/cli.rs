//! `check-config` subcommand (work in progress).
use std::path::Path;
use std::process::ExitCode;

/// `colo-proxy check-config FILE`.
pub fn check_config(_file: &Path) -> ExitCode {
    eprintln!("colo-proxy check-config: not implemented yet");
    ExitCode::FAILURE
}
