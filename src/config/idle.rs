//! Which idle mode each lcore gets, and why (pure: from the config alone).
//!
//! An lcore may sleep until woken (`interrupt`) only when every input its stages poll can wake
//! it: a port whose driver signals received frames, a link socket, a ring from a stage on
//! another lcore (its producer writes the consumer's eventfd), the management channel (always).
//! One input without a wake-up path makes that lcore fall back to `backoff` (timed sleeps), so
//! a frame is never left waiting for a wake-up that cannot come. `poll` and `backoff` are taken
//! as asked. `run` applies the same plan and reports it; a driver that refuses interrupts at
//! start turns its lcore to `backoff` then (with a warning).

use super::{Config, IdleMode, LinkSpec, PortSpec, Role};

/// How a port's received frames can wake a sleeping lcore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortWake {
    /// DPDK rx-queue interrupts (`rte_eth_dev_rx_intr_enable`, event fd per queue).
    RxInterrupt,
    /// The kernel socket under the PMD is polled for readability (af_packet's rx ring).
    SocketFd,
    /// No wake-up path: only timed sleeps or busy polling see its frames.
    None,
}

/// What wakes a port of this device, with the reason shown by `check-config`.
pub fn port_wake(spec: &PortSpec) -> (PortWake, &'static str) {
    if matches!(spec.device, super::PortDevice::Pci(_)) {
        return (
            PortWake::RxInterrupt,
            "PCI NIC: rx interrupts (checked at start; backoff if the driver has none)",
        );
    }
    if matches!(spec.device, super::PortDevice::Wire(_)) {
        return (
            PortWake::None,
            "in-process wire: no wake-up event (backoff)",
        );
    }
    let n = spec.device_name();
    let has = |p: &[&str]| p.iter().any(|p| n.starts_with(p));
    if has(&["net_af_packet", "eth_af_packet"]) {
        (PortWake::SocketFd, "af_packet: its kernel socket is polled")
    } else if has(&["net_tap", "net_tun"]) {
        (PortWake::RxInterrupt, "tap: rx interrupts (the tap fd)")
    } else if has(&["net_vhost", "eth_vhost"]) {
        (
            PortWake::RxInterrupt,
            "vhost-user: rx interrupts (vring kick)",
        )
    } else if has(&["virtio_user", "net_virtio_user"]) {
        (
            PortWake::RxInterrupt,
            "virtio_user: rx interrupts (vring call)",
        )
    } else if has(&["net_memif"]) {
        (
            PortWake::None,
            "memif: DPDK 22.11's PMD has no rx interrupts",
        )
    } else if has(&["net_af_xdp"]) {
        (
            PortWake::None,
            "af_xdp: DPDK 22.11's PMD has no rx interrupts",
        )
    } else {
        (PortWake::None, "this driver has no rx interrupts")
    }
}

/// One lcore's idle plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LcoreIdle {
    /// EAL lcore id.
    pub lcore: u32,
    /// Stages on it.
    pub stages: Vec<String>,
    /// The mode it runs.
    pub mode: IdleMode,
    /// Why (the inputs that decided it).
    pub reason: String,
}

/// Inputs of one stage: (what, wake-up path or the reason there is none).
fn inputs(cfg: &Config, stage: &str) -> Vec<(String, Result<&'static str, &'static str>)> {
    let port = |name: &str| -> Option<(String, Result<&'static str, &'static str>)> {
        let spec = cfg.ports.get(name)?;
        let (w, why) = port_wake(spec);
        let r = if w == PortWake::None {
            Err(why)
        } else {
            Ok(why)
        };
        Some((format!("{name} ({})", spec.device_name()), r))
    };
    let link = || -> Option<(String, Result<&'static str, &'static str>)> {
        match cfg.link.as_ref()? {
            LinkSpec::Port { port: p, .. } => port(p),
            LinkSpec::Socket(_) => Some(("link socket".into(), Ok("socket fd"))),
        }
    };
    let ring = |from: Option<u32>, on: Option<u32>| {
        let r = if from == on {
            Ok("same lcore")
        } else {
            Ok("eventfd from its producer")
        };
        ("redirector ring".to_string(), r)
    };
    let l = &cfg.lcores;
    let mut v = Vec::new();
    match stage {
        "mirror" => v.extend(port("nic")),
        "redirector" => {
            v.extend(port("pvm"));
            v.extend(link());
        }
        "rewriter" => {
            v.extend(link());
            v.extend(port("svm"));
            v.extend(port("nic"));
        }
        s if s.starts_with("compare") => {
            let k: usize = s["compare".len()..].parse().unwrap_or(0);
            v.push(ring(l.redirector, l.compare.get(k).copied()));
        }
        _ => {}
    }
    v
}

/// The idle plan of every lcore that runs stages (the main lcore only when stages run on it).
pub fn plan(cfg: &Config) -> Vec<LcoreIdle> {
    if cfg.role == Role::Compare {
        return Vec::new();
    }
    let mut out = Vec::new();
    for lcore in cfg.lcores.used() {
        let stages: Vec<String> = cfg
            .lcores
            .stages_on(lcore)
            .into_iter()
            .filter(|s| s != "main")
            .collect();
        if stages.is_empty() {
            continue;
        }
        let ins: Vec<_> = stages.iter().flat_map(|s| inputs(cfg, s)).collect();
        let blocked: Vec<String> = ins
            .iter()
            .filter_map(|(what, r)| r.err().map(|why| format!("{what}: {why}")))
            .collect();
        let (mode, reason) = match cfg.idle.mode {
            Some(IdleMode::Poll) => (IdleMode::Poll, "idle.mode = \"poll\"".to_string()),
            Some(IdleMode::Backoff) => (IdleMode::Backoff, "idle.mode = \"backoff\"".to_string()),
            asked => {
                let how = if asked.is_some() {
                    "idle.mode = \"interrupt\""
                } else {
                    "default"
                };
                if blocked.is_empty() {
                    let wakes: Vec<String> = ins
                        .iter()
                        .map(|(what, r)| format!("{what}: {}", r.unwrap_or("")))
                        .collect();
                    (IdleMode::Interrupt, format!("{how}; {}", wakes.join("; ")))
                } else {
                    (
                        IdleMode::Backoff,
                        format!("{how}, but no wake-up from {}", blocked.join("; ")),
                    )
                }
            }
        };
        out.push(LcoreIdle {
            lcore,
            stages,
            mode,
            reason,
        });
    }
    out
}
