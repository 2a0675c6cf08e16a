//! Raw TOML structs → validated [`Config`]. Every check pushes a [`FieldError`] and goes on, so
//! one run reports every problem.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::raw::{
    LinkKind, OneOrMany, RawBackpressure, RawCompare, RawCompareSockets, RawConfig, RawEndpoint,
    RawLcores, RawLink, RawMempool, RawMgmt, RawPort,
};
use super::sizing::{self, BudgetInputs};
use super::{
    eal, BackpressureConfig, BypassRule, CaptureConfig, CompareConfig, CompareSockets, Config,
    ConfigError, Endpoint, FieldError, IdleConfig, IdleMode, LcoreMap, LinkSpec, MempoolConfig,
    MgmtConfig, PortDevice, PortSpec, QmpConfig, RingsConfig, Role, SockAddr, SocketLink,
    SocketMode, XenNotify,
};

/// Most compare shards (one flow-table per shard; 64 is far above any sane lcore count).
pub const MAX_SHARDS: u32 = 64;
/// Default EtherType of the link encapsulation (IEEE 802 local experimental 1).
pub const DEFAULT_ETHER_TYPE: u16 = 0x88B5;
/// Longest UNIX socket path (sun_path is 108 bytes with the NUL).
const MAX_UNIX_PATH: usize = 107;
/// Upper bound for table capacities and queues, so a typo cannot ask for terabytes.
const MAX_CAPACITY: u32 = 1 << 24;

#[derive(Default)]
struct Errs(Vec<FieldError>);

impl Errs {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn positive(&mut self, field: &str, v: u64) {
        if v == 0 {
            self.push(field, "must be positive (0 is rejected)");
        }
    }

    fn range(&mut self, field: &str, v: u64, lo: u64, hi: u64) {
        if v < lo || v > hi {
            self.push(field, format!("{v} is not within {lo}..={hi}"));
        }
    }
}

pub(super) fn build(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut e = Errs::default();
    let role = raw.role;
    let xen_notify_given = raw.mgmt.xen_notify.is_some();

    let lcore_set = match eal::lcore_set(&raw.eal.args) {
        Ok(Some(s)) => Some(s),
        // Role compare runs no EAL: `-l` is optional there (it only bounds lcores.compare).
        Ok(None) if role == Role::Compare => None,
        Ok(None) => {
            e.push(
                "eal.args",
                "no -l, --lcores or -c option (the lcore set is needed to place the stages)",
            );
            None
        }
        Err(r) => {
            e.push("eal.args", r);
            None
        }
    };
    if let Some(first) = raw.eal.args.first().filter(|a| !a.starts_with('-')) {
        e.push(
            "eal.args",
            format!("{first:?} is not an option (the program name is added automatically)"),
        );
    }
    let no_pci = eal::parse_opts(&raw.eal.args)
        .iter()
        .any(|o| o.key == "--no-pci");

    let link = build_link(role, raw.link, &mut e);
    let link_port = match &link {
        Some(LinkSpec::Port { port, .. }) => Some(port.clone()),
        _ => None,
    };
    let ports = build_ports(role, raw.ports, link_port.as_deref(), no_pci, &mut e);
    let compare_sockets = build_compare_sockets(role, raw.compare_sockets, &mut e);
    let compare = build_compare(raw.compare, &mut e);
    let dropin_lcores = (raw.lcores.main, raw.lcores.redirector);
    let lcores = build_lcores(
        role,
        raw.lcores,
        compare.shards,
        &raw.eal.args,
        &lcore_set,
        &mut e,
    );
    if role == Role::Compare {
        check_dropin_threads(compare.shards, dropin_lcores, &lcores, &mut e);
    }

    let rw = &raw.rewriter;
    e.range(
        "rewriter.table_capacity",
        rw.table_capacity.into(),
        1,
        MAX_CAPACITY.into(),
    );
    e.positive("rewriter.idle_timeout_ms", rw.idle_timeout_ms);
    check_failover(&raw.failover, &mut e);
    let rings = &raw.rings;
    if !rings.size.is_power_of_two() || !(64..=1 << 20).contains(&rings.size) {
        e.push(
            "rings.size",
            format!("{} is not a power of two within 64..=1048576", rings.size),
        );
    }
    let budget = sizing::budget(&BudgetInputs {
        role,
        ports: &ports,
        shards: compare.shards.clamp(1, MAX_SHARDS),
        ring_size: rings.size,
        shard_packets: compare.shard_packets,
        lcores: lcores.used().len() as u32,
        cache: raw.mempool.cache,
        socket_link: matches!(link, Some(LinkSpec::Socket(_))),
    });
    let mempool = build_mempool(raw.mempool, budget, &mut e);
    let backpressure = build_backpressure(raw.backpressure, &compare, rings, &mut e);
    let idle = build_idle(&raw.idle, &mut e);
    if xen_notify_given
        && compare_sockets
            .as_ref()
            .is_some_and(|c| c.notify_dev.is_some())
    {
        e.push(
            "mgmt.xen_notify",
            "role \"compare\" takes the Xen notify socket from compare_sockets.notify_dev; give only one",
        );
    }
    let mgmt = build_mgmt(role, raw.mgmt, &mut e);

    if !e.0.is_empty() {
        return Err(ConfigError::Invalid(e.0));
    }
    Ok(Config {
        role,
        eal: raw.eal,
        ports,
        link,
        compare_sockets,
        lcores,
        compare,
        rewriter: raw.rewriter,
        failover: raw.failover,
        rings: raw.rings,
        mempool,
        backpressure,
        idle,
        mgmt,
    })
}

/// `[idle]`: `mode`, or the old `backoff` switch (`false` = `poll`; `true` = the default
/// choice), not both.
fn build_idle(raw: &super::raw::RawIdle, e: &mut Errs) -> IdleConfig {
    e.range("idle.max_sleep_us", raw.max_sleep_us.into(), 0, 100_000);
    e.range("idle.spin_us", raw.spin_us.into(), 0, 100_000);
    e.range("idle.await_spin_us", raw.await_spin_us.into(), 0, 100_000);
    let mode = match (raw.mode, raw.backoff) {
        (Some(m), None) => Some(m),
        (None, Some(false)) => Some(IdleMode::Poll),
        (None, Some(true)) | (None, None) => None,
        (Some(m), Some(b)) => {
            e.push(
                "idle.backoff",
                format!(
                    "replaced by idle.mode (backoff = false is mode \"poll\", backoff = true \
                     the default); give only idle.mode = \"{m}\" (backoff = {b} given too)"
                ),
            );
            Some(m)
        }
    };
    IdleConfig {
        mode,
        spin_loops: raw.spin_loops,
        spin_us: raw.spin_us,
        await_spin_us: raw.await_spin_us,
        max_sleep_us: raw.max_sleep_us,
    }
}

fn needs(role: Role) -> String {
    format!("role \"{role}\" needs it")
}

fn parse_sockaddr(s: &str) -> Result<SockAddr, String> {
    if let Some(rest) = s.strip_prefix("tcp:") {
        let a: SocketAddr = rest
            .parse()
            .map_err(|_| format!("{s:?}: expected tcp:IP:PORT (IPv6 as tcp:[::1]:PORT)"))?;
        if a.port() == 0 {
            return Err(format!("{s:?}: port 0"));
        }
        Ok(SockAddr::Tcp(a))
    } else if let Some(path) = s.strip_prefix("unix:") {
        check_unix_path(Path::new(path)).map_err(|r| format!("{s:?}: {r}"))?;
        Ok(SockAddr::Unix(PathBuf::from(path)))
    } else {
        Err(format!("{s:?}: expected \"tcp:IP:PORT\" or \"unix:/path\""))
    }
}

fn check_unix_path(p: &Path) -> Result<(), String> {
    let len = p.as_os_str().len();
    if len == 0 {
        Err("empty path".into())
    } else if len > MAX_UNIX_PATH {
        Err(format!(
            "path is {len} bytes, UNIX sockets allow {MAX_UNIX_PATH}"
        ))
    } else {
        Ok(())
    }
}

fn endpoint(
    field: &str,
    raw: Option<RawEndpoint>,
    default_mode: SocketMode,
    required: bool,
    e: &mut Errs,
) -> Option<Endpoint> {
    let Some(raw) = raw else {
        if required {
            e.push(field, "missing");
        }
        return None;
    };
    let addr = match parse_sockaddr(&raw.addr) {
        Ok(addr) => addr,
        Err(r) => {
            e.push(format!("{field}.addr"), r);
            return None;
        }
    };
    let mode = raw.mode.unwrap_or(default_mode);
    let tcp = matches!(addr, SockAddr::Tcp(_));
    let allow = raw.allow.and_then(|list| {
        if !tcp || mode != SocketMode::Server {
            e.push(
                format!("{field}.allow"),
                "only for TCP endpoints in mode \"server\" (UNIX sockets are guarded by their file mode)",
            );
            return None;
        }
        match crate::link::access::Allowlist::parse(&list) {
            Ok(a) => Some(a),
            Err(r) => {
                e.push(format!("{field}.allow"), r.to_string());
                None
            }
        }
    });
    if raw.replace_peer.is_some() && mode != SocketMode::Server {
        e.push(
            format!("{field}.replace_peer"),
            "only for endpoints in mode \"server\"",
        );
    }
    let keepalive_ms = match raw.keepalive_ms {
        Some(_) if !tcp => {
            e.push(format!("{field}.keepalive_ms"), "only for TCP endpoints");
            0
        }
        Some(0) => 0,
        Some(ms) => {
            e.range(&format!("{field}.keepalive_ms"), ms, 2000, 3_600_000);
            ms
        }
        None => crate::link::access::DEFAULT_KEEPALIVE_MS,
    };
    Some(Endpoint {
        addr,
        mode,
        allow,
        replace_peer: raw.replace_peer.unwrap_or(false),
        keepalive_ms,
    })
}

/// Report any two endpoints with the same address (QEMU rejects that too).
fn distinct(section: &str, eps: &[(&str, Option<&Endpoint>)], e: &mut Errs) {
    for (i, (a, ea)) in eps.iter().enumerate() {
        for (b, eb) in &eps[..i] {
            if let (Some(x), Some(y)) = (ea, eb) {
                if x.addr == y.addr {
                    e.push(
                        format!("{section}.{a}"),
                        format!("same address as {section}.{b}"),
                    );
                }
            }
        }
    }
}

fn build_link(role: Role, raw: Option<RawLink>, e: &mut Errs) -> Option<LinkSpec> {
    let Some(raw) = raw else {
        if role != Role::Compare {
            e.push("link", format!("missing ({})", needs(role)));
        }
        return None;
    };
    if role == Role::Compare {
        e.push(
            "link",
            "not used by role \"compare\" (its sockets are in [compare_sockets])",
        );
        return None;
    }
    let mut wrong_kind = |name: &str, given: bool, kind: &str| {
        if given {
            e.push(
                format!("link.{name}"),
                format!("only valid with kind = \"{kind}\""),
            );
        }
    };
    match raw.kind {
        LinkKind::Port => {
            wrong_kind("mirror", raw.mirror.is_some(), "socket");
            wrong_kind("secondary_out", raw.secondary_out.is_some(), "socket");
            wrong_kind("vnet_hdr_support", raw.vnet_hdr_support.is_some(), "socket");
            wrong_kind("reconnect_ms", raw.reconnect_ms.is_some(), "socket");
            let port = raw.port.unwrap_or_else(|| "link".to_string());
            if ["nic", "pvm", "svm"].contains(&port.as_str()) {
                e.push(
                    "link.port",
                    format!("{port:?} is a guest/client port; the link needs its own port"),
                );
            }
            let ether_type = raw.ether_type.unwrap_or(DEFAULT_ETHER_TYPE);
            if ether_type < 0x0600 {
                e.push(
                    "link.ether_type",
                    format!("{ether_type:#06x} is a length, not an EtherType (must be ≥ 0x0600)"),
                );
            }
            let peer_mac = raw.peer_mac.and_then(|m| match parse_mac(&m) {
                Ok(mac) => Some(mac),
                Err(r) => {
                    e.push("link.peer_mac", r);
                    None
                }
            });
            Some(LinkSpec::Port {
                port,
                ether_type,
                peer_mac,
            })
        }
        LinkKind::Socket => {
            wrong_kind("port", raw.port.is_some(), "port");
            wrong_kind("ether_type", raw.ether_type.is_some(), "port");
            wrong_kind("peer_mac", raw.peer_mac.is_some(), "port");
            // QEMU's recipe: the primary listens, the secondary connects.
            let mode = if role == Role::Primary {
                SocketMode::Server
            } else {
                SocketMode::Client
            };
            let mirror = endpoint("link.mirror", raw.mirror, mode, true, e);
            let out = endpoint("link.secondary_out", raw.secondary_out, mode, true, e);
            distinct(
                "link",
                &[("mirror", mirror.as_ref()), ("secondary_out", out.as_ref())],
                e,
            );
            let reconnect_ms = raw.reconnect_ms.unwrap_or(1000);
            e.positive("link.reconnect_ms", reconnect_ms);
            Some(LinkSpec::Socket(SocketLink {
                mirror: mirror?,
                secondary_out: out?,
                vnet_hdr_support: raw.vnet_hdr_support.unwrap_or(false),
                reconnect_ms,
            }))
        }
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        *b = u8::from_str_radix(p, 16)
            .map_err(|_| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("{s:?} is a multicast address"));
    }
    Ok(mac)
}

/// `DDDD:BB:DD.F` or `BB:DD.F`, hexadecimal.
fn valid_pci(s: &str) -> bool {
    let hex = |x: &str, n: usize| x.len() == n && x.chars().all(|c| c.is_ascii_hexdigit());
    let Some((rest, func)) = s.rsplit_once('.') else {
        return false;
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (bus, dev) = match parts.as_slice() {
        [dom, bus, dev] if hex(dom, 4) || hex(dom, 8) => (bus, dev),
        [bus, dev] => (bus, dev),
        _ => return false,
    };
    hex(bus, 2) && hex(dev, 2) && func.len() == 1 && matches!(func.as_bytes()[0], b'0'..=b'7')
}

fn build_ports(
    role: Role,
    raw: BTreeMap<String, RawPort>,
    link_port: Option<&str>,
    no_pci: bool,
    e: &mut Errs,
) -> BTreeMap<String, PortSpec> {
    let (required, optional): (&[&str], &[&str]) = match role {
        Role::Primary => (&["nic", "pvm"], &[]),
        Role::Secondary => (&["svm"], &["nic"]),
        Role::Compare => (&[], &[]),
    };
    for name in required {
        if !raw.contains_key(*name) {
            e.push(
                format!("ports.{name}"),
                format!("missing ({})", needs(role)),
            );
        }
    }
    if let Some(lp) = link_port {
        if !raw.contains_key(lp) {
            e.push(
                format!("ports.{lp}"),
                "missing (link.kind = \"port\" names it in link.port)",
            );
        }
    }
    let mut expected: Vec<&str> = required.iter().chain(optional).copied().collect();
    expected.extend(link_port);

    let mut ports = BTreeMap::new();
    let mut devices: BTreeMap<String, String> = BTreeMap::new();
    for (name, p) in raw {
        let f = format!("ports.{name}");
        if !expected.contains(&name.as_str()) {
            let why = if expected.is_empty() {
                format!("role \"{role}\" uses no DPDK ports")
            } else {
                format!(
                    "not used by role \"{role}\" (expected: {})",
                    expected.join(", ")
                )
            };
            e.push(&f, why);
            continue;
        }
        let device = match (p.pci, p.vdev, p.wire) {
            (None, None, Some(wire)) => {
                if wire.is_empty() || !wire.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    e.push(
                        format!("{f}.wire"),
                        format!("{wire:?} is not a wire name (letters, digits, _)"),
                    );
                }
                PortDevice::Wire(wire)
            }
            (Some(_), Some(_), _) => {
                e.push(
                    &f,
                    "both pci and vdev given (exactly one of pci, vdev, wire is needed)",
                );
                continue;
            }
            (Some(_), None, Some(_)) | (None, Some(_), Some(_)) => {
                e.push(
                    &f,
                    "wire and a device given (exactly one of pci, vdev, wire is needed)",
                );
                continue;
            }
            (None, None, None) => {
                e.push(
                    &f,
                    "neither pci nor vdev given (nor wire; exactly one is needed)",
                );
                continue;
            }
            (Some(pci), None, None) => {
                if !valid_pci(&pci) {
                    e.push(
                        format!("{f}.pci"),
                        format!("{pci:?} is not a PCI address (0000:01:00.0)"),
                    );
                } else if no_pci {
                    e.push(format!("{f}.pci"), "eal.args has --no-pci");
                }
                PortDevice::Pci(pci)
            }
            (None, Some(vdev), None) => {
                if vdev.is_empty() || vdev.contains(char::is_whitespace) {
                    e.push(
                        format!("{f}.vdev"),
                        format!(
                            "{vdev:?} is not vdev devargs (net_ring0 or net_vhost0,iface=/path)"
                        ),
                    );
                }
                PortDevice::Vdev(vdev)
            }
        };
        // The device name must be unique (DPDK refuses a second vdev of the same name).
        let dev_name = match &device {
            PortDevice::Pci(p) => p.to_ascii_lowercase(),
            PortDevice::Vdev(v) => v.split(',').next().unwrap_or(v).to_string(),
            PortDevice::Wire(w) => format!("wire {w}"),
        };
        if let Some(other) = devices.insert(dev_name.clone(), name.clone()) {
            e.push(&f, format!("device {dev_name:?} is also ports.{other}"));
        }
        e.range(&format!("{f}.rx_queues"), p.rx_queues.into(), 1, 128);
        e.range(&format!("{f}.tx_queues"), p.tx_queues.into(), 1, 128);
        for (field, d) in [("rx_desc", p.rx_desc), ("tx_desc", p.tx_desc)] {
            if !d.is_power_of_two() || !(64..=16384).contains(&d) {
                e.push(
                    format!("{f}.{field}"),
                    format!("{d} is not a power of two within 64..=16384"),
                );
            }
        }
        ports.insert(
            name.clone(),
            PortSpec {
                name,
                device,
                rx_queues: p.rx_queues,
                tx_queues: p.tx_queues,
                rx_desc: p.rx_desc,
                tx_desc: p.tx_desc,
            },
        );
    }
    ports
}

fn build_compare_sockets(
    role: Role,
    raw: Option<RawCompareSockets>,
    e: &mut Errs,
) -> Option<CompareSockets> {
    let Some(raw) = raw else {
        if role == Role::Compare {
            e.push("compare_sockets", format!("missing ({})", needs(role)));
        }
        return None;
    };
    if role != Role::Compare {
        e.push(
            "compare_sockets",
            format!("only used by role \"compare\" (this is role \"{role}\"; use [link])"),
        );
        return None;
    }
    // Modes as in QEMU's documented setup: the redirectors' chardevs listen for primary_in and
    // outdev, the secondary connects to secondary_in, libxl connects to notify_dev.
    let pin = endpoint(
        "compare_sockets.primary_in",
        raw.primary_in,
        SocketMode::Client,
        true,
        e,
    );
    let sin = endpoint(
        "compare_sockets.secondary_in",
        raw.secondary_in,
        SocketMode::Server,
        true,
        e,
    );
    let out = endpoint(
        "compare_sockets.outdev",
        raw.outdev,
        SocketMode::Client,
        true,
        e,
    );
    let notify = endpoint(
        "compare_sockets.notify_dev",
        raw.notify_dev,
        SocketMode::Server,
        false,
        e,
    );
    distinct(
        "compare_sockets",
        &[
            ("primary_in", pin.as_ref()),
            ("secondary_in", sin.as_ref()),
            ("outdev", out.as_ref()),
            ("notify_dev", notify.as_ref()),
        ],
        e,
    );
    e.positive("compare_sockets.reconnect_ms", raw.reconnect_ms);
    Some(CompareSockets {
        primary_in: pin?,
        secondary_in: sin?,
        outdev: out?,
        notify_dev: notify,
        vnet_hdr_support: raw.vnet_hdr_support,
        reconnect_ms: raw.reconnect_ms,
        accept_unsolicited: raw.accept_unsolicited,
    })
}

fn build_compare(raw: RawCompare, e: &mut Errs) -> CompareConfig {
    if raw.shards == 0 {
        e.push("compare.shards", "must be at least 1");
    } else if raw.shards > MAX_SHARDS {
        e.push(
            "compare.shards",
            format!("{} is above the maximum {MAX_SHARDS}", raw.shards),
        );
    }
    e.positive("compare.timeout_ms", raw.timeout_ms);
    e.positive("compare.scan_period_ms", raw.scan_period_ms);
    e.positive("compare.idle_timeout_ms", raw.idle_timeout_ms);
    e.range(
        "compare.queue_size",
        raw.queue_size.into(),
        1,
        MAX_CAPACITY.into(),
    );
    e.range(
        "compare.shard_packets",
        raw.shard_packets.into(),
        64,
        MAX_CAPACITY.into(),
    );
    e.range("compare.shard_bytes", raw.shard_bytes, 64 << 10, 1 << 36);
    e.range(
        "compare.table_capacity",
        raw.table_capacity.into(),
        1,
        MAX_CAPACITY.into(),
    );
    let mut bypass = Vec::new();
    if raw.bypass.len() > super::bypass::MAX_RULES {
        e.push(
            "compare.bypass",
            format!(
                "{} rules; at most {} (each compare shard checks every rule per packet)",
                raw.bypass.len(),
                super::bypass::MAX_RULES
            ),
        );
    }
    for (i, b) in raw.bypass.iter().enumerate() {
        match BypassRule::parse(&b.proto, b.ports.as_deref(), b.prefix.as_deref()) {
            Ok(r) => bypass.push(r),
            Err((field, reason)) => e.push(format!("compare.bypass[{i}].{field}"), reason),
        }
    }
    CompareConfig {
        shards: raw.shards,
        timeout_ms: raw.timeout_ms,
        scan_period_ms: raw.scan_period_ms,
        queue_size: raw.queue_size,
        shard_packets: raw.shard_packets,
        shard_bytes: raw.shard_bytes,
        table_capacity: raw.table_capacity,
        idle_timeout_ms: raw.idle_timeout_ms,
        bypass,
        ipv6: raw.ipv6,
        vlan: raw.vlan,
    }
}

fn build_lcores(
    role: Role,
    raw: RawLcores,
    shards: u32,
    eal_args: &[String],
    set: &Option<BTreeSet<u32>>,
    e: &mut Errs,
) -> LcoreMap {
    let main = raw.main.or_else(|| {
        let set = set.as_ref()?;
        match eal::main_lcore(eal_args, set) {
            Ok(m) => m,
            Err(r) => {
                e.push("eal.args", r);
                None
            }
        }
    });
    // Which stages each role runs (a stage the role does not run is rejected).
    let (mirror_ok, redir_ok, compare_ok, rewriter_ok) = match role {
        Role::Primary => (true, true, true, false),
        Role::Secondary => (false, false, false, true),
        Role::Compare => (false, true, true, false),
    };
    let mut stage = |name: &str, v: Option<u32>, allowed: bool, required: bool| -> Option<u32> {
        match v {
            Some(_) if !allowed => {
                e.push(
                    format!("lcores.{name}"),
                    format!("stage not used by role \"{role}\""),
                );
                None
            }
            None if required => {
                e.push(
                    format!("lcores.{name}"),
                    format!("missing ({})", needs(role)),
                );
                None
            }
            v => v,
        }
    };
    let mirror = stage("mirror", raw.mirror, mirror_ok, mirror_ok);
    // In role "compare" the redirector (socket reader) is optional: the main lcore runs it.
    let redirector = stage(
        "redirector",
        raw.redirector,
        redir_ok,
        role == Role::Primary,
    );
    let rewriter = stage("rewriter", raw.rewriter, rewriter_ok, rewriter_ok);
    let compare_raw = match raw.compare {
        Some(_) if !compare_ok => {
            e.push(
                "lcores.compare",
                format!("stage not used by role \"{role}\""),
            );
            None
        }
        None if compare_ok => {
            e.push("lcores.compare", format!("missing ({})", needs(role)));
            None
        }
        v => v,
    };
    let compare = match compare_raw {
        // An invalid shard count is reported elsewhere; never allocate from it.
        _ if shards == 0 || shards > MAX_SHARDS => Vec::new(),
        None => Vec::new(),
        Some(OneOrMany::One(l)) => vec![l; shards as usize],
        Some(OneOrMany::Many(v)) if v.len() == 1 => vec![v[0]; shards as usize],
        Some(OneOrMany::Many(v)) if v.len() == shards as usize => v,
        Some(OneOrMany::Many(v)) => {
            e.push(
                "lcores.compare",
                format!(
                    "{} entries but compare.shards = {shards} (give one lcore per shard, or one shared by all)",
                    v.len()
                ),
            );
            Vec::new()
        }
    };
    let map = LcoreMap {
        main: main.unwrap_or(0),
        mirror,
        redirector,
        compare,
        rewriter,
    };
    if let Some(set) = set {
        check_in_set(&map, raw.main.is_some(), set, e);
    }
    map
}

/// Role compare runs one thread (socket reader and compare engine together), pinned to the
/// CPU `lcores.compare` names: more shards, or a main/redirector lcore elsewhere, could not
/// be honoured, so they are errors rather than silently ignored.
fn check_dropin_threads(
    shards: u32,
    (main, redirector): (Option<u32>, Option<u32>),
    map: &LcoreMap,
    e: &mut Errs,
) {
    if shards > 1 {
        e.push(
            "compare.shards",
            format!("{shards}: role \"compare\" runs one compare engine on one thread (1 only)"),
        );
    }
    let Some(&cpu) = map.compare.first() else {
        return;
    };
    for (name, v) in [("main", main), ("redirector", redirector)] {
        if let Some(l) = v.filter(|&l| l != cpu) {
            e.push(
                format!("lcores.{name}"),
                format!(
                    "{l}: role \"compare\" runs one thread, pinned to lcores.compare ({cpu}); remove lcores.{name} or set it to {cpu}"
                ),
            );
        }
    }
}

fn check_in_set(map: &LcoreMap, main_explicit: bool, set: &BTreeSet<u32>, e: &mut Errs) {
    let shown = fmt_set(set);
    let mut check = |field: String, l: u32| {
        if !set.contains(&l) {
            e.push(
                field,
                format!("lcore {l} is not in the EAL lcore set {shown} (eal.args)"),
            );
        }
    };
    let main_field = if main_explicit {
        "lcores.main"
    } else {
        "eal.args --main-lcore"
    };
    check(main_field.to_string(), map.main);
    for (name, l) in [
        ("mirror", map.mirror),
        ("redirector", map.redirector),
        ("rewriter", map.rewriter),
    ] {
        if let Some(l) = l {
            check(format!("lcores.{name}"), l);
        }
    }
    let mut seen = BTreeSet::new();
    for &l in &map.compare {
        if seen.insert(l) {
            check("lcores.compare".to_string(), l);
        }
    }
}

/// Used by [`Config::check_lcores`] after command-line overrides.
pub(super) fn check_lcores_in_set(map: &LcoreMap, args: &[String], errs: &mut Vec<FieldError>) {
    let mut e = Errs::default();
    match eal::lcore_set(args) {
        Ok(Some(set)) => check_in_set(map, true, &set, &mut e),
        Ok(None) => {} // EAL then uses every CPU: nothing to check against
        Err(r) => e.push("eal args", r),
    }
    errs.extend(e.0);
}

/// `0-3,5` form of a set.
pub(crate) fn fmt_set(set: &BTreeSet<u32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(a) = it.next() {
        let mut b = a;
        while it.peek() == Some(&(b + 1)) {
            b += 1;
            it.next();
        }
        out.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    out.join(",")
}

fn build_mempool(m: RawMempool, budget: sizing::MbufBudget, e: &mut Errs) -> MempoolConfig {
    // With mbufs ≥ 1023, cache ≤ 512 also satisfies DPDK's cache × 1.5 ≤ mbufs.
    if m.cache > 512 {
        e.push(
            "mempool.cache",
            format!("{} is above DPDK's maximum 512", m.cache),
        );
    }
    if m.data_room < 256 {
        e.push(
            "mempool.data_room",
            format!("{} is below 256 (128 bytes are headroom)", m.data_room),
        );
    }
    let (mbufs, derived) = match m.mbufs {
        Some(n) => {
            e.range("mempool.mbufs", n.into(), 1023, MAX_CAPACITY.into());
            if u64::from(n) < budget.total() {
                e.push(
                    "mempool.mbufs",
                    format!(
                        "{n} cannot hold the {} mbufs the pipeline can hold at once ({budget}); \
                         the compare part is compare.shard_packets × compare.shards: raise \
                         mempool.mbufs, lower compare.shard_packets (or the ports' descriptors, \
                         rings.size), or remove mempool.mbufs to derive it",
                        budget.total()
                    ),
                );
            }
            (n, false)
        }
        None => {
            let d = budget.derived_mbufs();
            if d > u64::from(MAX_CAPACITY) {
                e.push(
                    "mempool.mbufs",
                    format!(
                        "the derived size {d} ({budget}) is above {MAX_CAPACITY}: lower \
                         compare.shard_packets, compare.shards or the ports' descriptors"
                    ),
                );
            }
            (d.min(u64::from(MAX_CAPACITY)) as u32, true)
        }
    };
    MempoolConfig {
        mbufs,
        derived,
        budget,
        cache: m.cache,
        data_room: m.data_room,
    }
}

fn build_backpressure(
    raw: RawBackpressure,
    compare: &CompareConfig,
    rings: &RingsConfig,
    e: &mut Errs,
) -> BackpressureConfig {
    let limit = compare.queue_size.min(compare.shard_packets).max(1);
    let (high_packets, low_packets) = watermarks(
        raw.high_packets,
        raw.low_packets,
        sizing::default_packet_watermarks(limit, rings.size),
    );
    let (high_bytes, low_bytes) = watermarks(
        raw.high_bytes,
        raw.low_bytes,
        sizing::default_byte_watermarks(compare.shard_bytes.max(1), rings.size),
    );
    check_watermarks(
        e,
        "packets",
        (high_packets.into(), low_packets.into()),
        compare.shard_packets.into(),
        " (the shard would overflow before the PVM port pauses)",
    );
    check_watermarks(e, "bytes", (high_bytes, low_bytes), compare.shard_bytes, "");
    let max_pause_ms = raw.max_pause_ms.unwrap_or(compare.timeout_ms);
    e.range("backpressure.max_pause_ms", max_pause_ms, 0, 3_600_000);
    BackpressureConfig {
        enabled: raw.enabled,
        high_packets,
        low_packets,
        high_bytes,
        low_bytes,
        max_pause_ms,
    }
}

/// A pair of back-pressure watermarks as configured: the derived `defaults` (high, low) where
/// absent, except that a configured high one alone puts the low one at its half.
fn watermarks<T>(high: Option<T>, low: Option<T>, defaults: (T, T)) -> (T, T)
where
    T: Copy + std::ops::Div<Output = T> + From<u8>,
{
    let h = high.unwrap_or(defaults.0);
    let l = low.unwrap_or(if high.is_some() {
        h / T::from(2)
    } else {
        defaults.1
    });
    (h, l)
}

/// `backpressure.high_<unit>` positive and at most `compare.shard_<unit>` = `cap` (`why`:
/// what a higher one would do), `backpressure.low_<unit>` below it.
fn check_watermarks(e: &mut Errs, unit: &str, (high, low): (u64, u64), cap: u64, why: &str) {
    if high == 0 {
        e.push(
            format!("backpressure.high_{unit}"),
            "must be positive (0 is rejected)",
        );
    } else if high > cap {
        e.push(
            format!("backpressure.high_{unit}"),
            format!("{high} is above compare.shard_{unit} = {cap}{why}"),
        );
    }
    if low >= high {
        e.push(
            format!("backpressure.low_{unit}"),
            format!("{low} must be below backpressure.high_{unit} = {high}"),
        );
    }
}

fn build_mgmt(role: Role, raw: RawMgmt, e: &mut Errs) -> MgmtConfig {
    let control_socket = raw
        .control_socket
        .unwrap_or_else(|| PathBuf::from(format!("/run/colo-proxy/{role}.sock")));
    if let Err(r) = check_unix_path(&control_socket) {
        e.push("mgmt.control_socket", r);
    }
    if raw.control_socket_mode > 0o777 {
        e.push(
            "mgmt.control_socket_mode",
            format!(
                "{:#o} is not a permission mode (0o000..=0o777)",
                raw.control_socket_mode
            ),
        );
    }
    let control_socket_group = raw.control_socket_group.and_then(|g| {
        let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
        match crate::link::access::resolve_group(&g, &groups) {
            None => {
                e.push(
                    "mgmt.control_socket_group",
                    format!("{g:?} is neither a gid nor a group in /etc/group"),
                );
                None
            }
            Some(gid) => {
                if raw.control_socket_mode & 0o060 != 0o060 {
                    e.push(
                        "mgmt.control_socket_mode",
                        format!(
                            "{:#o} gives the group no read/write: members of {g:?} could not connect (e.g. 0o660)",
                            raw.control_socket_mode
                        ),
                    );
                }
                Some(gid)
            }
        }
    });
    let control_tcp = match (raw.control_tcp, raw.control_token) {
        (None, None) => None,
        (None, Some(_)) => {
            e.push("mgmt.control_token", "only used with mgmt.control_tcp");
            None
        }
        (Some(addr), token) => {
            let parsed = match addr.parse::<SocketAddr>() {
                Ok(a) if !a.ip().is_loopback() => {
                    e.push(
                        "mgmt.control_tcp",
                        format!("{a} is not a loopback address (the control endpoint must not be reachable from the network)"),
                    );
                    None
                }
                Ok(a) => Some(a),
                Err(_) => {
                    e.push(
                        "mgmt.control_tcp",
                        format!("{addr:?} is not IP:PORT (e.g. 127.0.0.1:9100)"),
                    );
                    None
                }
            };
            let token = match token {
                None => {
                    e.push("mgmt.control_tcp", "TCP control needs mgmt.control_token");
                    None
                }
                Some(t) if t.chars().count() < 16 => {
                    e.push("mgmt.control_token", "must be at least 16 characters");
                    None
                }
                Some(t) => Some(t),
            };
            parsed.zip(token)
        }
    };
    e.positive("mgmt.stats_interval_ms", raw.stats_interval_ms);
    let xen_notify = raw.xen_notify.and_then(|x| {
        let ep = RawEndpoint {
            addr: x.addr,
            mode: x.mode,
            allow: x.allow,
            replace_peer: x.replace_peer,
            keepalive_ms: x.keepalive_ms,
        };
        endpoint("mgmt.xen_notify", Some(ep), SocketMode::Server, true, e).map(|endpoint| {
            XenNotify {
                endpoint,
                vnet_hdr_support: x.vnet_hdr_support,
                accept_unsolicited: x.accept_unsolicited,
            }
        })
    });
    let qmp = raw.qmp.map(|q| {
        if let Err(r) = check_unix_path(&q.socket) {
            e.push("mgmt.qmp.socket", r);
        }
        e.positive("mgmt.qmp.checkpoint_delay_ms", q.checkpoint_delay_ms);
        e.positive("mgmt.qmp.reconnect_ms", q.reconnect_ms);
        QmpConfig {
            socket: q.socket,
            checkpoint_delay_ms: q.checkpoint_delay_ms,
            reconnect_ms: q.reconnect_ms,
        }
    });
    let capture = raw.capture.map(|c| {
        if c.dir.as_os_str().is_empty() {
            e.push("mgmt.capture.dir", "empty path");
        }
        e.range(
            "mgmt.capture.max_file_bytes",
            c.max_file_bytes,
            64 << 10,
            u64::MAX,
        );
        e.range("mgmt.capture.max_files", c.max_files.into(), 1, 100_000);
        e.range(
            "mgmt.capture.context_packets",
            c.context_packets.into(),
            0,
            1024,
        );
        CaptureConfig {
            dir: c.dir,
            enabled: c.enabled,
            max_file_bytes: c.max_file_bytes,
            max_files: c.max_files,
            context_packets: c.context_packets,
        }
    });
    let metrics = raw
        .metrics
        .and_then(|m| match m.listen.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                e.push(
                    "mgmt.metrics.listen",
                    "port 0 is not a fixed address for Prometheus to scrape",
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                e.push(
                    "mgmt.metrics.listen",
                    format!("{:?} is not IP:PORT (e.g. 127.0.0.1:9464)", m.listen),
                );
                None
            }
        });
    MgmtConfig {
        metrics,
        control_socket,
        control_socket_mode: raw.control_socket_mode,
        control_socket_group,
        control_tcp,
        stats_interval_ms: raw.stats_interval_ms,
        xen_notify,
        qmp,
        capture,
    }
}

/// `[failover]`: bounded counts and times; a timeout must leave room for heartbeats.
fn check_failover(f: &super::FailoverConfig, e: &mut Errs) {
    e.range("failover.announce_count", f.announce_count.into(), 1, 10);
    e.range(
        "failover.announce_interval_ms",
        f.announce_interval_ms,
        1,
        10_000,
    );
    e.range("failover.heartbeat_ms", f.heartbeat_ms, 0, 60_000);
    e.range(
        "failover.heartbeat_timeout_ms",
        f.heartbeat_timeout_ms,
        0,
        600_000,
    );
    if f.heartbeat_ms > 0
        && f.heartbeat_timeout_ms > 0
        && f.heartbeat_timeout_ms < 2 * f.heartbeat_ms
    {
        e.push(
            "failover.heartbeat_timeout_ms",
            format!(
                "{} is less than twice failover.heartbeat_ms ({}): one late heartbeat would count as a loss",
                f.heartbeat_timeout_ms, f.heartbeat_ms
            ),
        );
    }
}
