//! What every benchmark prints about the machine it ran on (`#[path]`-included by each).

/// The CPU model from /proc/cpuinfo (for the results table's header and perf/RESULTS.md).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown".into())
}
