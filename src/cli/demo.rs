//! `colo-proxy demo`: its options and exit status (the demo itself is [`crate::demo`]).
use std::process::ExitCode;

/// Options of `colo-proxy demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// How long to run, in seconds; `inf` runs until SIGINT/SIGTERM or `ctl shutdown`.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Probability that the SVM answers a request differently (injected divergence).
    #[arg(long, default_value_t = 0.002)]
    pub divergence_rate: f64,
    /// Concurrent client TCP connections.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Compare shards.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Simulated checkpoint duration (VMs paused, state copied), in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub checkpoint_ms: u64,
    /// Seed of the simulated traffic.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No live status lines, only the final report.
    #[arg(long)]
    pub quiet: bool,
    /// Serve the control socket here (e.g. for `colo-proxy ctl --socket PATH stats`).
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<std::path::PathBuf>,
    /// Benchmark baseline: forward client ⇄ PVM directly on the same wires and lcores, without
    /// the proxy (no mirror, compare, secondary).
    #[arg(long)]
    pub baseline_forward: bool,
    /// Also write the final report as JSON to this file (for scripts and tests).
    #[arg(long, value_name = "FILE")]
    pub report_json: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464; GET /metrics).
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Write every divergence's packets to pcapng files in this directory.
    #[arg(long, value_name = "DIR")]
    pub capture_dir: Option<std::path::PathBuf>,
    /// Extra EAL arguments (after `--`), appended to the defaults.
    #[arg(last = true)]
    pub eal: Vec<String>,
}

/// `colo-proxy demo`.
pub fn demo(args: &DemoArgs) -> ExitCode {
    if !(0.0..=1.0).contains(&args.divergence_rate) {
        eprintln!("error: --divergence-rate must be between 0 and 1");
        return ExitCode::from(2);
    }
    if let Err(e) = run_for(args.seconds) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match crate::demo::demo(args) {
        Ok(summary) => {
            if let Some(path) = &args.report_json {
                let text = crate::demo::report_json(&summary).to_string();
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("error: {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if crate::demo::report(&summary) {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: an invariant failed (see the report)");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--seconds` as a run length: `None` (run until stopped) for `inf`, an error for a negative,
/// NaN or too large value.
pub fn run_for(seconds: f64) -> Result<Option<std::time::Duration>, String> {
    if seconds == f64::INFINITY {
        return Ok(None);
    }
    std::time::Duration::try_from_secs_f64(seconds)
        .map(Some)
        .map_err(|_| {
            format!(
                "--seconds {seconds}: expected a number of seconds >= 0 (at most {}), \
                 or inf to run until SIGINT/SIGTERM or `ctl shutdown`",
                u64::MAX
            )
        })
}

#[cfg(test)]
mod tests {
    use super::run_for;
    use std::time::Duration;

    #[test]
    fn seconds_inf_runs_until_stopped_and_bad_values_are_errors() {
        assert_eq!(run_for(f64::INFINITY), Ok(None));
        assert_eq!(run_for(0.0), Ok(Some(Duration::ZERO)));
        assert_eq!(run_for(2.5), Ok(Some(Duration::from_millis(2500))));
        for bad in [f64::NAN, -1.0, f64::NEG_INFINITY, 1e300] {
            let e = run_for(bad).unwrap_err();
            assert!(e.contains("--seconds"), "{e}");
            assert!(e.contains("or inf"), "{e}");
        }
    }
}
