//! Live status line and final report: pure formatting of [`MgmtStats`] (divergences by reason,
//! checkpoint requests and completions, sink state).

use std::fmt::Write;

use super::MgmtStats;

fn reasons(s: &MgmtStats) -> String {
    if s.divergences_by_reason.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = s
        .divergences_by_reason
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    format!(" ({})", parts.join(", "))
}

fn sink_state(v: &serde_json::Value) -> &'static str {
    let up = v
        .get("connected")
        .or_else(|| v.get("ready"))
        .and_then(serde_json::Value::as_bool);
    match up {
        Some(true) => "up",
        Some(false) => "down",
        None => "?",
    }
}

/// One line for the live status, e.g.
/// `div 3 (payload 2, timeout 1) | ckpt req 3 sent 1 coalesced 2 done 1 pending no | xen up qmp down`.
pub fn status_line(s: &MgmtStats) -> String {
    let c = &s.checkpoint;
    let mut line = format!(
        "div {}{} | ckpt req {} sent {} coalesced {} done {} pending {}",
        s.divergences,
        reasons(s),
        c.requested,
        c.issued,
        c.coalesced,
        c.completed,
        if c.outstanding { "yes" } else { "no" },
    );
    if !s.sinks.is_empty() {
        line.push_str(" |");
        for (name, v) in &s.sinks {
            let _ = write!(line, " {name} {}", sink_state(v));
        }
    }
    if s.inputs_dropped > 0 {
        let _ = write!(line, " | mgmt-dropped {}", s.inputs_dropped);
    }
    line
}

/// Multi-line final report.
pub fn final_report(s: &MgmtStats) -> String {
    let c = &s.checkpoint;
    let mut r = String::new();
    let _ = writeln!(r, "divergences            {:>10}", s.divergences);
    for (reason, n) in &s.divergences_by_reason {
        let _ = writeln!(r, "  {reason:<20} {n:>10}");
    }
    let _ = writeln!(r, "checkpoint requests    {:>10}", c.requested);
    let _ = writeln!(r, "  sent                 {:>10}", c.issued);
    let _ = writeln!(r, "  coalesced            {:>10}", c.coalesced);
    let _ = writeln!(r, "  resent               {:>10}", c.resent);
    let _ = writeln!(r, "checkpoints completed  {:>10}", c.completed);
    let _ = writeln!(r, "  unrequested          {:>10}", c.completed_unrequested);
    let _ = writeln!(r, "  failed               {:>10}", c.complete_failed);
    let _ = writeln!(
        r,
        "  max latency ms       {:>10.3}",
        c.max_latency_ns as f64 / 1e6
    );
    for (name, v) in &s.sinks {
        let sent = v
            .get("sent")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let _ = writeln!(r, "sink {name:<17} {:>10} sent, {}", sent, sink_state(v));
    }
    let _ = writeln!(r, "failovers              {:>10}", s.failovers);
    let f = &s.failover;
    if f.reports > 0 {
        match f.gap_ns {
            Some(g) => {
                let _ = writeln!(r, "  gap ms               {:>10.3}", g as f64 / 1e6);
            }
            None => {
                let _ = writeln!(r, "  gap ms               {:>10}", "none");
            }
        }
        let _ = writeln!(
            r,
            "  held released        {:>10} ({} bytes)",
            f.held_released, f.held_released_bytes
        );
        let _ = writeln!(
            r,
            "  held dropped         {:>10} ({} bytes)",
            f.held_dropped, f.held_dropped_bytes
        );
    }
    if s.link_silent > 0 {
        let _ = writeln!(r, "link silent            {:>10}", s.link_silent);
    }
    if s.lcore_failures > 0 {
        let _ = writeln!(r, "lcores failed          {:>10}", s.lcore_failures);
    }
    if let Some(cap) = &s.capture {
        let _ = writeln!(
            r,
            "captured divergences   {:>10} ({} files)",
            cap.divergences, cap.files
        );
    }
    if s.inputs_dropped > 0 {
        let _ = writeln!(r, "mgmt inputs dropped    {:>10}", s.inputs_dropped);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_reasons_checkpoints_and_sinks() {
        let mut s = MgmtStats::default();
        assert_eq!(
            status_line(&s),
            "div 0 | ckpt req 0 sent 0 coalesced 0 done 0 pending no"
        );
        s.divergences = 3;
        s.divergences_by_reason.insert("payload".into(), 2);
        s.divergences_by_reason.insert("timeout".into(), 1);
        s.checkpoint.requested = 3;
        s.checkpoint.issued = 1;
        s.checkpoint.coalesced = 2;
        s.checkpoint.outstanding = true;
        s.sinks.insert(
            "xen".into(),
            serde_json::json!({"connected": true, "sent": 1}),
        );
        s.sinks
            .insert("qmp".into(), serde_json::json!({"ready": false, "sent": 0}));
        assert_eq!(
            status_line(&s),
            "div 3 (payload 2, timeout 1) | ckpt req 3 sent 1 coalesced 2 done 0 pending yes | qmp down xen up"
        );
        let rep = final_report(&s);
        assert!(rep.contains("  payload                       2"), "{rep}");
        assert!(rep.contains("sink xen"), "{rep}");
        assert!(rep.contains("coalesced                     2"), "{rep}");
    }
}
