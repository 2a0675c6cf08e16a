//! Running as a system service: systemd readiness notification (`sd_notify`, `Type=notify`)
//! and the process's log output (levels, a journald-friendly format).
//!
//! - [`ready`] sends `READY=1` (plus a `STATUS=` line) on `$NOTIFY_SOCKET` once the ports are
//!   up and the link is connected or listening; [`stopping`] sends `STOPPING=1`. Without
//!   `$NOTIFY_SOCKET` (not under systemd) both do nothing. A failed send is logged, never
//!   fatal: the proxy works without a service manager.
//! - [`init_logging`]: the `log` facade with `env_logger`. Level from `--log-level`, else
//!   `$COLO_PROXY_LOG`, else `info`. Under systemd (`$JOURNAL_STREAM` set: stderr goes to
//!   the journal) each line starts with the sd-daemon priority prefix (`<3>` error ..
//!   `<7>` debug/trace) so journald records the level, and no timestamp (journald adds its
//!   own); otherwise `2026-12-02T00:00:00Z WARN  colo_proxy::mgmt: message`. Nothing on the
//!   data path logs per packet; CLI output (check-config, ctl, reports) stays on stdout.

use std::io::Write;

use log::{Level, LevelFilter};

/// Tell the service manager the proxy is ready (no-op outside systemd).
pub fn ready(status: &str) {
    let st = [
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ];
    if let Err(e) = sd_notify::notify(false, &st) {
        log::warn!("sd_notify READY=1 failed: {e}");
    }
}

/// Tell the service manager the proxy is stopping (no-op outside systemd).
pub fn stopping() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]) {
        log::warn!("sd_notify STOPPING=1 failed: {e}");
    }
}

/// The sd-daemon(3) priority prefix of a level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Parse a level name (`off`, `error`, `warn`, `info`, `debug`, `trace`).
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.parse::<LevelFilter>()
        .map_err(|_| format!("{s:?} is not a log level (off, error, warn, info, debug, trace)"))
}

/// Set up logging once per process. `level`: `--log-level`; `None` reads `$COLO_PROXY_LOG`
/// (a level, or an env_logger filter such as `colo_proxy::mgmt=debug`), default `info`.
/// Returns an error for an unknown `--log-level`.
pub fn init_logging(level: Option<&str>) -> Result<(), String> {
    let mut b = env_logger::Builder::new();
    match level {
        Some(l) => {
            b.filter_level(parse_level(l)?);
        }
        None => match std::env::var("COLO_PROXY_LOG") {
            Ok(f) if !f.trim().is_empty() => {
                b.parse_filters(&f);
            }
            _ => {
                b.filter_level(LevelFilter::Info);
            }
        },
    }
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    b.target(env_logger::Target::Stderr);
    if journal {
        b.format(|f, r| writeln!(f, "<{}>{}: {}", priority(r.level()), r.target(), r.args()));
    } else {
        b.format(|f, r| {
            writeln!(
                f,
                "{} {:<5} {}: {}",
                f.timestamp_seconds(),
                r.level(),
                r.target(),
                r.args()
            )
        });
    }
    // A second call (tests in one process) keeps the first logger.
    let _ = b.try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_map_to_journal_priorities() {
        assert_eq!(parse_level("debug"), Ok(LevelFilter::Debug));
        assert_eq!(parse_level("WARN"), Ok(LevelFilter::Warn));
        assert!(parse_level("loud").unwrap_err().contains("not a log level"));
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warn), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Trace), 7);
    }
}
