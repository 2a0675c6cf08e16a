//! colo-proxy's DPDK telemetry commands: `/colo/stats`, `/colo/flows[,N]`, `/colo/lcores`,
//! answered from the [`DataPlane`] on DPDK's telemetry thread, and `/colo/mgmt` (divergences by
//! reason, checkpoint requests/completions, sinks) from management's shared snapshot. Call
//! [`register`] after EAL is up.

use std::sync::{Arc, Mutex};

use crate::control::proto::{DEFAULT_TOP_FLOWS, MAX_TOP_FLOWS};
use crate::control::DataPlane;
use crate::dpdk::telemetry as tel;
use crate::dpdk::DpdkError;

use super::MgmtStats;

/// The per-lcore part of a stats snapshot: its `lcores` member when there is one.
pub fn lcores_of(stats: &serde_json::Value) -> serde_json::Value {
    stats
        .get("lcores")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}))
}

/// Register the commands; `mgmt` is [`super::Management::stats_handle`].
pub fn register(
    dp: Arc<dyn DataPlane>,
    mgmt: Option<Arc<Mutex<MgmtStats>>>,
) -> Result<(), DpdkError> {
    if let Some(m) = mgmt {
        tel::register(
            "/colo/mgmt",
            "colo-proxy management: divergences by reason, checkpoint requests and completions, sinks",
            Arc::new(move |_| {
                let s = m.lock().unwrap_or_else(|p| p.into_inner()).clone();
                serde_json::to_value(s).unwrap_or_default()
            }),
        )?;
    }
    let d = dp.clone();
    tel::register(
        "/colo/stats",
        "colo-proxy counters (totals and per lcore)",
        Arc::new(move |_| d.stats()),
    )?;
    let d = dp.clone();
    tel::register(
        "/colo/flows",
        "colo-proxy top flows by traffic; parameter: how many (default 20)",
        Arc::new(move |p| {
            let n = p
                .trim()
                .parse()
                .unwrap_or(DEFAULT_TOP_FLOWS)
                .min(MAX_TOP_FLOWS);
            d.flows(n)
        }),
    )?;
    tel::register(
        "/colo/lcores",
        "colo-proxy per-lcore counters",
        Arc::new(move |_| lcores_of(&dp.stats())),
    )?;
    Ok(())
}
