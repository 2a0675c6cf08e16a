//! `colo-proxy run --config FILE [-- EAL args]`: the config is loaded once; role `compare`
//! runs the colo-compare drop-in (no EAL), the others the DPDK pipeline.

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, PortDevice, Role};

/// `colo-proxy run`.
pub fn run(config_path: &Path, eal_overrides: &[String]) -> ExitCode {
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            for m in e.messages() {
                eprintln!("error: {}: {m}", config_path.display());
            }
            return ExitCode::from(2);
        }
    };
    if cfg.role == Role::Compare {
        return crate::dropin::run(&cfg);
    }
    // Nothing in this process would hold a wire's other end (the demo builds its own).
    if let Some(p) = cfg
        .ports
        .values()
        .find(|p| matches!(p.device, PortDevice::Wire(_)))
    {
        eprintln!(
            "error: {}: ports.{}: a wire port connects pipelines inside one process (the \
             demo); use a pci or vdev device",
            config_path.display(),
            p.name
        );
        return ExitCode::from(2);
    }
    for w in cfg.warnings() {
        eprintln!("warning: {}: {w}", config_path.display());
    }
    match crate::pipeline::run::run_pipeline(&cfg, eal_overrides) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
