//! The COLO guarantees under sustained load, with real Linux TCP and default settings.
//!
//! The veth lab of `pipeline_support::Lab` (client, PVM and SVM namespaces; primary and
//! secondary `colo-proxy run` on af_packet ports, QEMU-framed socket link) with the kernels'
//! default sysctls and the proxies' default config (only ports, lcores and link addresses
//! set). The deterministic pattern service of `svc.py` moves bulk data each way over 1 and 8
//! parallel connections, with `tcp_timestamps` off and on. Server→client bulk is the case
//! that broke the default config: the PVM runs ahead of the SVM, and releasing what the SVM
//! has not produced yet puts the SVM's connection out of step for good. Every byte must be
//! verified by the receiver, with zero divergences and zero checkpoint requests, and the
//! accounting must balance when both proxies stop.
//!
//! Bounded for CI: [`BYTES`] per transfer; perf/e2e.rs runs the full sizes.
//!
//! Needs root and `ip netns`; otherwise it prints why and passes without running.

mod netns_support;
mod pipeline_support;

use std::time::{Duration, Instant};

use netns_support::*;
use pipeline_support::*;

/// Bytes moved by each transfer (split over its connections).
const BYTES: u64 = 48 << 20;
/// Longest any one transfer may take (a stalled connection fails the test here).
const TRANSFER_LIMIT: Duration = Duration::from_secs(90);

/// A checkpoint requested or a divergence raised since `before`, by name, or None.
fn colo_trouble(before: &serde_json::Value, after: &serde_json::Value) -> Option<String> {
    let diff = |path: &[&str]| {
        let get = |v: &serde_json::Value| path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0);
        get(after).saturating_sub(get(before))
    };
    let requested = diff(&["mgmt", "checkpoint", "requested"]);
    let divergences = total(after, "divergences").saturating_sub(total(before, "divergences"));
    (requested > 0 || divergences > 0).then(|| {
        format!(
            "{divergences} divergences ({}), {requested} checkpoint requests",
            after["mgmt"]["divergences_by_reason"]
        )
    })
}

#[test]
fn bulk_both_directions_default_settings() {
    if !lab_available("pipeline_load") {
        return;
    }
    let t_start = Instant::now();
    let mut lab = Lab::start(
        "l",
        LabOptions {
            link: Link::Socket,
            shards: 1,
            client2: false,
        },
    );
    let mut table = Vec::new();
    for ts in [false, true] {
        lab.timestamps(ts);
        for dir in ["down", "up"] {
            for conns in [1u64, 8] {
                let label = format!("{dir} conns={conns} timestamps={}", u8::from(ts));
                let (p0, _) = lab.stats();
                let per = (BYTES / conns).to_string();
                let (ok, out) = lab.client(
                    "client",
                    &["bulk", VM_IP, dir, &conns.to_string(), &per],
                    TRANSFER_LIMIT,
                );
                let r = results(&out);
                let (p, s) = lab.stats();
                let flows = ctl(&lab.psock, &["flows"]).unwrap_or_default();
                let ctx = || {
                    format!(
                        "{label}: client output:\n{out}\nprimary stats {p}\nsecondary stats {s}\nprimary flows {flows}\n{}",
                        lab.logs()
                    )
                };
                assert!(ok, "client failed or timed out: {}", ctx());
                assert_eq!(
                    r.get("bulk_ok").map(String::as_str),
                    Some(&*conns.to_string()),
                    "not every connection got every byte intact: {}",
                    ctx()
                );
                assert_eq!(
                    r.get("bulk_bytes").and_then(|b| b.parse::<u64>().ok()),
                    Some(per.parse::<u64>().unwrap() * conns),
                    "{}",
                    ctx()
                );
                if let Some(why) = colo_trouble(&p0, &p) {
                    panic!("{why}: {}", ctx());
                }
                let gbps = r.get("bulk_gbps").cloned().unwrap_or_default();
                println!("{label}: {gbps} Gbit/s");
                table.push((label, gbps));
            }
        }
    }
    let (p, s) = lab.stats();
    // Output commit: nothing left the primary uncompared while both VMs ran.
    assert_eq!(
        total(&p, "released_uncompared"),
        0,
        "primary {p}\nsecondary {s}"
    );
    assert!(total(&p, "released_matched") > 0, "primary {p}");
    assert!(total(&s, "rewritten") > 0, "secondary {s}");
    // Balanced accounting and exit 0 on SIGTERM.
    let (po, so) = lab.stop();
    for (label, gbps) in &table {
        println!("{label:<28} {gbps:>7} Gbit/s");
    }
    let drops = |o: &str| {
        o.lines()
            .filter(|l| l.contains("drop"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    println!(
        "primary drops:\n{}\nsecondary drops:\n{}",
        drops(&po),
        drops(&so)
    );
    println!(
        "pipeline_load: total {:.1}s",
        t_start.elapsed().as_secs_f64()
    );
}
