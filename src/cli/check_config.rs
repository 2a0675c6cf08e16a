//! `colo-proxy check-config FILE`: load, validate, print a summary (exit 0) or every error as
//! `error: FILE: message` (exit 2).

use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::config::{build::fmt_set, BypassRule, Config, LinkSpec, PortDevice, SocketMode};

/// `colo-proxy check-config FILE`: the summary, then the memory the config will take.
pub fn check_config(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(cfg) => {
            let eal = cfg.eal_args(&[]);
            print!("{}", summary(&cfg, &eal));
            print!("{}", crate::pipeline::topology::memory_summary(&cfg));
            for w in cfg.warnings() {
                eprintln!("warning: {}: {w}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            for msg in err.messages() {
                eprintln!("error: {}: {msg}", file.display());
            }
            ExitCode::from(2)
        }
    }
}

fn mode(m: SocketMode) -> &'static str {
    match m {
        SocketMode::Server => "server",
        SocketMode::Client => "client",
    }
}

fn bypass(r: &BypassRule) -> String {
    let proto = match r.proto {
        None => "any".to_string(),
        Some(p) => crate::config::bypass::proto_name(p),
    };
    let ports = if *r.ports.start() == 0 && *r.ports.end() == u16::MAX {
        "any port".to_string()
    } else if r.ports.start() == r.ports.end() {
        format!("port {}", r.ports.start())
    } else {
        format!("ports {}-{}", r.ports.start(), r.ports.end())
    };
    let prefix = match r.prefix {
        None => "any address".to_string(),
        Some((ip, len)) => format!("{ip}/{len}"),
    };
    format!("{proto}, {ports}, {prefix}")
}

/// What the drop-in (role compare) does with the config, and what it does not use.
fn dropin_summary(cfg: &Config, s: &mut String) {
    let cpu = cfg
        .lcores
        .compare
        .first()
        .map_or("any CPU".to_string(), |c| format!("CPU {c}"));
    let idle = if cfg.idle.mode != Some(crate::config::IdleMode::Poll) {
        format!(
            "blocks in poll(2) after {} empty polls or {} us until a socket is ready, at most 100 ms (idle.max_sleep_us not used)",
            cfg.idle.spin_loops, cfg.idle.spin_us
        )
    } else {
        "busy polling".to_string()
    };
    let _ = writeln!(
        s,
        "drop-in: one thread (socket reader + compare engine) pinned to {cpu} (lcores.compare); idle: {idle}"
    );
    let m = &cfg.mgmt;
    let mut unused = vec![
        "eal (no EAL runs)",
        "rings",
        "mempool",
        "rewriter",
        "mgmt.control_socket/control_tcp (no control socket: counters in the final report and [mgmt.metrics])",
    ];
    if m.xen_notify.is_some() {
        unused.push("mgmt.xen_notify (use compare_sockets.notify_dev)");
    }
    if m.qmp.is_some() {
        unused.push("mgmt.qmp");
    }
    if m.capture.is_some() {
        unused.push("mgmt.capture");
    }
    let _ = writeln!(s, "drop-in: not used in this role: {}", unused.join(", "));
}

/// Human summary of a validated config and its final EAL argument list.
pub fn summary(cfg: &Config, eal_args: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "role: {}", cfg.role);
    if cfg.ports.is_empty() {
        let _ = writeln!(s, "ports: none");
    } else {
        let _ = writeln!(s, "ports:");
    }
    for p in cfg.ports.values() {
        let dev = match &p.device {
            PortDevice::Pci(a) => format!("pci {a}"),
            PortDevice::Vdev(d) => format!("vdev {d}"),
            PortDevice::Wire(w) => format!("wire {w} (in-process)"),
        };
        let _ = writeln!(
            s,
            "  {:<6} {dev}  rxq {} txq {}  rx_desc {} tx_desc {}",
            p.name, p.rx_queues, p.tx_queues, p.rx_desc, p.tx_desc
        );
    }
    match &cfg.link {
        None => {}
        Some(LinkSpec::Port {
            port,
            ether_type,
            peer_mac,
        }) => {
            let mac = peer_mac.map_or("broadcast".to_string(), |m| {
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            });
            let _ = writeln!(
                s,
                "link: port {port}, ether_type {ether_type:#06x}, peer {mac}"
            );
        }
        Some(LinkSpec::Socket(l)) => {
            let _ = writeln!(
                s,
                "link: sockets, mirror {} ({}), secondary_out {} ({}), vnet_hdr {}, reconnect {} ms",
                l.mirror.addr,
                mode(l.mirror.mode),
                l.secondary_out.addr,
                mode(l.secondary_out.mode),
                l.vnet_hdr_support,
                l.reconnect_ms
            );
        }
    }
    if let Some(cs) = &cfg.compare_sockets {
        let _ = writeln!(s, "compare sockets (colo-compare drop-in):");
        let mut ep = |name: &str, e: &crate::config::Endpoint| {
            let _ = writeln!(s, "  {name:<12} {} ({})", e.addr, mode(e.mode));
        };
        ep("primary_in", &cs.primary_in);
        ep("secondary_in", &cs.secondary_in);
        ep("outdev", &cs.outdev);
        if let Some(n) = &cs.notify_dev {
            ep("notify_dev", n);
        }
        let _ = writeln!(
            s,
            "  vnet_hdr {}, reconnect {} ms",
            cs.vnet_hdr_support, cs.reconnect_ms
        );
    }
    let _ = writeln!(s, "lcores:");
    for l in cfg.lcores.used() {
        let _ = writeln!(s, "  {l:>3}: {}", cfg.lcores.stages_on(l).join(" "));
    }
    let c = &cfg.compare;
    let _ = writeln!(
        s,
        "compare: {} shard(s), timeout {} ms, scan {} ms, queue {} per side, shard limit {} \
         packets / {} bytes, table {}, idle {} ms",
        c.shards,
        c.timeout_ms,
        c.scan_period_ms,
        c.queue_size,
        c.shard_packets,
        c.shard_bytes,
        c.table_capacity,
        c.idle_timeout_ms
    );
    if c.bypass.is_empty() {
        let _ = writeln!(s, "bypass: none");
    }
    for (i, r) in c.bypass.iter().enumerate() {
        let _ = writeln!(s, "bypass[{i}]: {}", bypass(r));
    }
    let _ = writeln!(
        s,
        "rewriter: table {}, idle {} ms",
        cfg.rewriter.table_capacity, cfg.rewriter.idle_timeout_ms
    );
    let _ = writeln!(
        s,
        "rings: {} slots; mempool: {} mbufs ({}; holds {}), cache {}, data room {}",
        cfg.rings.size,
        cfg.mempool.mbufs,
        if cfg.mempool.derived {
            "derived"
        } else {
            "set"
        },
        cfg.mempool.budget,
        cfg.mempool.cache,
        cfg.mempool.data_room
    );
    if cfg.role == crate::config::Role::Primary {
        let b = &cfg.backpressure;
        let _ = writeln!(
            s,
            "backpressure: {}, pause pvm at {} packets or {} bytes per shard, resume at {} / {}, \
             longest pause {} ms",
            if b.enabled { "on" } else { "off" },
            b.high_packets,
            b.high_bytes,
            b.low_packets,
            b.low_bytes,
            b.max_pause_ms
        );
    }
    let i = &cfg.idle;
    let _ = writeln!(
        s,
        "idle: mode {}, sleep after {} empty polls or {} us of them ({} us while a compare shard waits for the secondary's copy), backoff sleeps up to {} us",
        i.mode
            .map_or("default (interrupt where every input wakes)", |m| m
                .as_str()),
        i.spin_loops,
        i.spin_us,
        i.await_spin_us,
        i.max_sleep_us
    );
    for l in crate::config::idle::plan(cfg) {
        let _ = writeln!(
            s,
            "  lcore {} ({}): {} ({})",
            l.lcore,
            l.stages.join(", "),
            l.mode,
            l.reason
        );
    }
    let m = &cfg.mgmt;
    let _ = writeln!(
        s,
        "control: {} (mode {:#o}){}, stats every {} ms",
        m.control_socket.display(),
        m.control_socket_mode,
        m.control_tcp
            .as_ref()
            .map_or(String::new(), |(a, _)| format!(", tcp {a} (token)")),
        m.stats_interval_ms
    );
    if let Some(x) = &m.xen_notify {
        let _ = writeln!(
            s,
            "xen notify: {} ({})",
            x.endpoint.addr,
            mode(x.endpoint.mode)
        );
    }
    if let Some(q) = &m.qmp {
        let _ = writeln!(
            s,
            "qmp: {}, checkpoint delay {} ms, reconnect {} ms",
            q.socket.display(),
            q.checkpoint_delay_ms,
            q.reconnect_ms
        );
    }
    if let Some(c) = &m.capture {
        let _ = writeln!(
            s,
            "capture: {} ({}), {} bytes x {} files, {} context packets",
            c.dir.display(),
            if c.enabled {
                "on at start"
            } else {
                "off until ctl capture start"
            },
            c.max_file_bytes,
            c.max_files,
            c.context_packets
        );
    }
    if cfg.role == crate::config::Role::Compare {
        dropin_summary(cfg, &mut s);
    }
    if let Some(a) = &m.metrics {
        let _ = writeln!(
            s,
            "metrics: http://{a}/metrics (Prometheus, OpenMetrics text)"
        );
    }
    let c = &cfg.compare;
    if c.ipv6 == crate::config::PassMode::Pass || c.vlan == crate::config::PassMode::Pass {
        let _ = writeln!(
            s,
            "compare: ipv6 {:?}, vlan {:?} (\"pass\" releases those primaries uncompared)",
            c.ipv6, c.vlan
        );
    }
    if let Ok(Some(set)) = crate::config::eal::lcore_set(eal_args) {
        let _ = writeln!(s, "eal lcore set: {}", fmt_set(&set));
    }
    let _ = writeln!(s, "eal args: {}", eal_args.join(" "));
    s
}
