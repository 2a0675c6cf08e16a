//! Configuration: TOML file → validated [`Config`] → EAL arguments.
//!
//! Guarantees: a [`Config`] only exists after every check passed (validated by construction);
//! every field has its default filled in; unknown fields are rejected with toml's message (line
//! and column); semantic errors name the field path and the reason and are all reported at once.
//! Durations are `u64` milliseconds in fields named `*_ms` (idle sleep is `max_sleep_us`).
//! Pure Rust: no DPDK, no I/O except [`Config::load`] and the hugepage probe.
//! The schema is documented in `docs/CONFIG.md`.

pub(crate) mod build;
pub mod bypass;
pub mod eal;
pub mod idle;
mod raw;
pub mod sizing;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use build::DEFAULT_ETHER_TYPE;
pub use bypass::BypassRule;

/// Which half of COLO this process plays.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Primary host: mirror, redirector, compare shards.
    Primary,
    /// Secondary host: rewriter.
    Secondary,
    /// QEMU colo-compare drop-in: sockets only, no DPDK ports.
    Compare,
}

impl Role {
    /// Lower-case name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
            Role::Compare => "compare",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How EAL gets its memory (`eal.memory`).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Memory {
    /// `--in-memory` when /proc/meminfo shows free hugepages, else `--no-huge -m 1024 --no-shconf`.
    #[default]
    Auto,
    /// Hugepages with a shared runtime directory (multi-process tools such as dpdk-dumpcap work).
    Hugepages,
    /// `--no-huge -m 1024 --no-shconf`.
    NoHuge,
}

/// `[eal]`.
#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EalConfig {
    /// EAL arguments without the program name.
    pub args: Vec<String>,
    /// Memory convenience; adds flags only when `args` and overrides set none.
    pub memory: Memory,
}

/// What DPDK device backs a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortDevice {
    /// PCI address, e.g. `0000:01:00.0`.
    Pci(String),
    /// vdev devargs, e.g. `net_vhost0,iface=/tmp/pvm.sock`.
    Vdev(String),
    /// An in-process wire: one end of a pair of in-memory rings, created when the pipeline is
    /// built. The other end is a port of the same name in another pipeline of the same process
    /// or a built-in endpoint (the demo's simulated client and VMs).
    Wire(String),
}

/// `[ports.<name>]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Port name (`nic`, `pvm`, `svm`, or the link port).
    pub name: String,
    /// The device.
    pub device: PortDevice,
    /// RX queues (≥ 1).
    pub rx_queues: u16,
    /// TX queues (≥ 1).
    pub tx_queues: u16,
    /// RX descriptors (power of two, 64..=16384).
    pub rx_desc: u16,
    /// TX descriptors (power of two, 64..=16384).
    pub tx_desc: u16,
}

/// Whether we listen or connect.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SocketMode {
    /// Listen and accept one peer at a time.
    Server,
    /// Connect, reconnecting after `reconnect_ms`.
    Client,
}

/// A stream socket address: `tcp:IP:PORT` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockAddr {
    /// TCP (IP literal and port; `[v6]:port` for IPv6).
    Tcp(SocketAddr),
    /// UNIX stream socket path.
    Unix(PathBuf),
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SockAddr::Tcp(a) => write!(f, "tcp:{a}"),
            SockAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One end of a QEMU-framed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Address.
    pub addr: SockAddr,
    /// Server (listen) or client (connect).
    pub mode: SocketMode,
    /// TCP server: peers must come from these addresses/prefixes (`None`: not given).
    pub allow: Option<crate::link::access::Allowlist>,
    /// Server: a new peer replaces a live one (otherwise it is refused).
    pub replace_peer: bool,
    /// TCP: a peer that stops answering is dropped within this time (0: keepalive off).
    pub keepalive_ms: u64,
}

impl Endpoint {
    /// The server-side peer policy; without `allow`, `loopback_default` admits loopback
    /// peers only (the Xen notify channel), otherwise any address.
    pub fn peer_policy(&self, loopback_default: bool) -> crate::link::access::PeerPolicy {
        use crate::link::access::{Allowlist, PeerPolicy};
        let allow = match (&self.allow, &self.addr) {
            (Some(a), _) => Some(a.clone()),
            (None, SockAddr::Tcp(_)) if loopback_default => Some(Allowlist::loopback()),
            (None, _) => None,
        };
        PeerPolicy {
            allow,
            replace_peer: self.replace_peer,
        }
    }

    /// TCP keepalive (`None` when `keepalive_ms = 0`).
    pub fn keepalive(&self) -> Option<crate::link::access::Keepalive> {
        (self.keepalive_ms > 0).then(|| crate::link::access::Keepalive {
            timeout: std::time::Duration::from_millis(self.keepalive_ms),
        })
    }

    /// A TCP server reachable from off the host with no allowlist (the start-up warning);
    /// `loopback_default` as in [`Endpoint::peer_policy`].
    pub fn open_to_network(&self, loopback_default: bool) -> bool {
        match (&self.addr, self.mode) {
            (SockAddr::Tcp(a), SocketMode::Server) => {
                !a.ip().is_loopback() && self.allow.is_none() && !loopback_default
            }
            _ => false,
        }
    }
}

/// `[link]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSpec {
    /// A DPDK port carrying encapsulated frames.
    Port {
        /// Name of the `[ports.*]` entry.
        port: String,
        /// Outer EtherType (default 0x88B5).
        ether_type: u16,
        /// Peer MAC; `None` = broadcast.
        peer_mac: Option<[u8; 6]>,
    },
    /// QEMU chardev-framed stream sockets.
    Socket(SocketLink),
}

/// `[link]` over QEMU chardev-framed stream sockets, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketLink {
    /// Mirror stream (primary → secondary).
    pub mirror: Endpoint,
    /// Secondary-output stream (secondary → primary).
    pub secondary_out: Endpoint,
    /// Frames carry the 4-byte vnet_hdr_len field.
    pub vnet_hdr_support: bool,
    /// Client reconnect interval.
    pub reconnect_ms: u64,
}

/// `[compare_sockets]` (role `compare`): QEMU colo-compare's chardevs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareSockets {
    /// PVM output (from QEMU's filter-redirector).
    pub primary_in: Endpoint,
    /// SVM output (from the secondary).
    pub secondary_in: Endpoint,
    /// Released primary packets go here.
    pub outdev: Endpoint,
    /// Xen notify channel (optional).
    pub notify_dev: Option<Endpoint>,
    /// vnet_hdr_len field on all links and on incoming notify frames.
    pub vnet_hdr_support: bool,
    /// Client reconnect interval.
    pub reconnect_ms: u64,
    /// Apply a `COLO_CHECKPOINT` on notify_dev that answers no `DO_CHECKPOINT`.
    pub accept_unsolicited: bool,
}

/// Stage → lcore map, validated against the EAL lcore set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LcoreMap {
    /// Management lcore (default: the EAL main lcore).
    pub main: u32,
    /// Mirror stage (primary).
    pub mirror: Option<u32>,
    /// Redirector stage (primary).
    pub redirector: Option<u32>,
    /// One lcore per compare shard (`len() == compare.shards`; empty on the secondary).
    pub compare: Vec<u32>,
    /// Rewriter stage (secondary).
    pub rewriter: Option<u32>,
}

impl LcoreMap {
    /// Every lcore that runs at least one stage (including main).
    pub fn used(&self) -> BTreeSet<u32> {
        let mut s: BTreeSet<u32> = self.compare.iter().copied().collect();
        s.insert(self.main);
        s.extend(self.mirror);
        s.extend(self.redirector);
        s.extend(self.rewriter);
        s
    }

    /// Names of the stages that run on `lcore` (`"compare3"` for shard 3).
    pub fn stages_on(&self, lcore: u32) -> Vec<String> {
        let mut v = Vec::new();
        let mut add = |name: &str, l: Option<u32>| {
            if l == Some(lcore) {
                v.push(name.to_string());
            }
        };
        add("main", Some(self.main));
        add("mirror", self.mirror);
        add("redirector", self.redirector);
        add("rewriter", self.rewriter);
        for (i, &l) in self.compare.iter().enumerate() {
            if l == lcore {
                v.push(format!("compare{i}"));
            }
        }
        v
    }
}

/// `[compare]`, validated (QEMU colo-compare defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareConfig {
    /// Number of compare shards, 1..=64.
    pub shards: u32,
    /// Max time a primary packet waits for its secondary (QEMU `compare_timeout`, 3000).
    pub timeout_ms: u64,
    /// Expiry scan period (QEMU `expired_scan_cycle`, 1000).
    pub scan_period_ms: u64,
    /// Queue length per connection and side (8192; QEMU `max_queue_size` is 1024).
    pub queue_size: u32,
    /// Packets queued at once in one shard, both sides (the engine's preallocated pool).
    pub shard_packets: u32,
    /// Bytes of primary packets one shard may hold before the PVM port is paused (the
    /// back-pressure byte watermarks derive from it).
    pub shard_bytes: u64,
    /// Connections per shard table.
    pub table_capacity: u32,
    /// Idle connections are aged out after this.
    pub idle_timeout_ms: u64,
    /// Traffic that is released without comparison.
    pub bypass: Vec<BypassRule>,
    /// IPv6 frames: compared, or passed uncompared (`compare.ipv6`; QEMU secondaries).
    pub ipv6: PassMode,
    /// 802.1Q-tagged frames: compared, or passed uncompared (`compare.vlan`).
    pub vlan: PassMode,
}

/// `compare.ipv6` / `compare.vlan`: what the compare stage does with such frames.
#[derive(Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PassMode {
    /// Compared like everything else (the default).
    #[default]
    Compare,
    /// Operator opt-in: primaries released uncompared (counted as passed), secondaries freed.
    /// For a QEMU secondary, whose filter-rewriter translates IPv4 TCP only.
    Pass,
}

/// `[rewriter]`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RewriterConfig {
    /// Connections tracked.
    pub table_capacity: u32,
    /// Idle connections are aged out after this.
    pub idle_timeout_ms: u64,
}

impl Default for RewriterConfig {
    fn default() -> Self {
        RewriterConfig {
            table_capacity: 65536,
            idle_timeout_ms: 120_000,
        }
    }
}

/// `[failover]`: what takeover does and what triggers it besides a command.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// On takeover the secondary sends a gratuitous ARP (IPv4) / unsolicited neighbour
    /// advertisement (IPv6) for each service address the SVM used, from the SVM's MAC.
    pub announce: bool,
    /// Announcements per address (spaced by `announce_interval_ms`), in case one is lost.
    pub announce_count: u32,
    /// Time between repeated announcements.
    pub announce_interval_ms: u64,
    /// What a heartbeat timeout on the inter-host link does.
    pub on_link_loss: LinkLossAction,
    /// With `[mgmt.qmp]`: QEMU's `COLO_EXIT` event (QEMU left COLO, e.g. after
    /// `x-colo-lost-heartbeat`) fails this proxy over too.
    pub on_colo_exit: bool,
    /// Send a heartbeat on the link after this long without other traffic (0: never). Only
    /// between two colo-proxies: a QEMU peer does not understand it (keep 0 then).
    pub heartbeat_ms: u64,
    /// Report the peer as silent after this long without any frame from it, once it has sent
    /// at least one heartbeat (0: never).
    pub heartbeat_timeout_ms: u64,
}

/// `failover.on_link_loss`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LinkLossAction {
    /// Only report the event; the COLO frame decides.
    #[default]
    Wait,
    /// Fail over at once.
    Auto,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            announce: true,
            announce_count: 3,
            announce_interval_ms: 100,
            on_link_loss: LinkLossAction::Wait,
            on_colo_exit: true,
            heartbeat_ms: 0,
            heartbeat_timeout_ms: 1000,
        }
    }
}

/// `[rings]`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RingsConfig {
    /// Slots per inter-lcore ring (power of two).
    pub size: u32,
}

impl Default for RingsConfig {
    fn default() -> Self {
        RingsConfig { size: 1024 }
    }
}

/// `[mempool]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MempoolConfig {
    /// mbufs in the pool: the file's value, or derived ([`sizing::MbufBudget`]).
    pub mbufs: u32,
    /// `mbufs` was derived (not set in the file).
    pub derived: bool,
    /// What the pipeline can hold at once (the derivation and the check use it).
    pub budget: sizing::MbufBudget,
    /// Per-lcore cache (≤ 512).
    pub cache: u32,
    /// Data room per mbuf including the 128-byte headroom.
    pub data_room: u16,
}

/// `[backpressure]`, validated: when the redirector stops reading the PVM port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackpressureConfig {
    /// Pause the PVM port at all.
    pub enabled: bool,
    /// A shard holding this many primary packets pauses the PVM port...
    pub high_packets: u32,
    /// ...until it holds at most this many (and at most `low_bytes`).
    pub low_packets: u32,
    /// Or this many bytes of primary packets.
    pub high_bytes: u64,
    /// Resume threshold in bytes.
    pub low_bytes: u64,
    /// Longest pause; then the port is read again and the compare overflow rules apply
    /// until the backlog fell below the low watermarks. 0 = no limit.
    pub max_pause_ms: u64,
}

/// How an idle lcore waits for work (`idle.mode`).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum IdleMode {
    /// Busy polling, never sleep (dedicated cores: lowest latency, a whole core each).
    Poll,
    /// Spin, then timed sleeps growing up to `idle.max_sleep_us` (any port).
    Backoff,
    /// Spin, then sleep until an input signals (rx interrupt, socket, ring wake-up).
    Interrupt,
}

impl IdleMode {
    /// Lower-case name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            IdleMode::Poll => "poll",
            IdleMode::Backoff => "backoff",
            IdleMode::Interrupt => "interrupt",
        }
    }
}

impl fmt::Display for IdleMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[idle]`: how idle poll loops wait, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleConfig {
    /// The mode asked for; `None` = per lcore, `interrupt` where every input of the lcore can
    /// wake it, else `backoff` (see [`idle::plan`]).
    pub mode: Option<IdleMode>,
    /// Empty polls before sleeping (backoff and interrupt), at most.
    pub spin_loops: u32,
    /// Longest spin after the last work (µs), whichever of the two ends first.
    pub spin_us: u32,
    /// Longest spin after the last work while a compare shard holds primaries waiting for
    /// the secondary's copy (µs): the copy is on its way, and a sleeping lcore takes tens of
    /// µs to wake on a VM.
    pub await_spin_us: u32,
    /// Longest timed sleep in backoff; 0 = only `pause`.
    pub max_sleep_us: u32,
}

impl Default for IdleConfig {
    fn default() -> Self {
        IdleConfig {
            mode: None,
            spin_loops: 1000,
            spin_us: 20,
            await_spin_us: 200,
            max_sleep_us: 100,
        }
    }
}

/// `[mgmt.xen_notify]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenNotify {
    /// Notify socket.
    pub endpoint: Endpoint,
    /// Incoming notify frames carry the vnet_hdr_len field.
    pub vnet_hdr_support: bool,
    /// Apply a `COLO_CHECKPOINT` that answers no request.
    pub accept_unsolicited: bool,
}

/// `[mgmt.qmp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpConfig {
    /// QEMU's QMP UNIX socket.
    pub socket: PathBuf,
    /// `x-checkpoint-delay` restored after forcing a checkpoint (QEMU default 20000).
    pub checkpoint_delay_ms: u64,
    /// Reconnect interval when QEMU is gone.
    pub reconnect_ms: u64,
}

/// `[mgmt.capture]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Directory for pcapng files.
    pub dir: PathBuf,
    /// Capture from start-up (otherwise `ctl capture start`).
    pub enabled: bool,
    /// Rotate after this many bytes.
    pub max_file_bytes: u64,
    /// Keep at most this many files.
    pub max_files: u32,
    /// Packets of flow context written with each divergence.
    pub context_packets: u32,
}

/// `[mgmt]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MgmtConfig {
    /// Control UNIX socket path.
    pub control_socket: PathBuf,
    /// Its permission bits.
    pub control_socket_mode: u32,
    /// Its group (gid): members may connect (the mode must give the group rw).
    pub control_socket_group: Option<u32>,
    /// Optional loopback TCP control endpoint with its token.
    pub control_tcp: Option<(SocketAddr, String)>,
    /// Live statistics period.
    pub stats_interval_ms: u64,
    /// Xen notify sink.
    pub xen_notify: Option<XenNotify>,
    /// QMP checkpoint sink.
    pub qmp: Option<QmpConfig>,
    /// Divergence capture.
    pub capture: Option<CaptureConfig>,
    /// Prometheus endpoint (`[mgmt.metrics]`), opt-in.
    pub metrics: Option<SocketAddr>,
}

/// A validated configuration. Construct with [`Config::from_toml_str`] or [`Config::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Role of this process.
    pub role: Role,
    /// EAL options (see [`Config::eal_args`]).
    pub eal: EalConfig,
    /// Ports by name (empty for role `compare`).
    pub ports: BTreeMap<String, PortSpec>,
    /// Inter-host link (`None` for role `compare`).
    pub link: Option<LinkSpec>,
    /// colo-compare drop-in sockets (only role `compare`).
    pub compare_sockets: Option<CompareSockets>,
    /// Stage → lcore map.
    pub lcores: LcoreMap,
    /// Compare engine.
    pub compare: CompareConfig,
    /// Rewriter.
    pub rewriter: RewriterConfig,
    /// Failover behaviour and triggers.
    pub failover: FailoverConfig,
    /// Inter-lcore rings.
    pub rings: RingsConfig,
    /// Packet mempool.
    pub mempool: MempoolConfig,
    /// PVM-port back-pressure.
    pub backpressure: BackpressureConfig,
    /// Idle back-off.
    pub idle: IdleConfig,
    /// Management services.
    pub mgmt: MgmtConfig,
}

/// One semantic error: the field path and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `lcores.compare`.
    pub field: String,
    /// Human reason.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax, type or unknown-field error (toml's message, with line and column).
    #[error("{0}")]
    Parse(String),
    /// Semantic errors, all of them.
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
}

fn join(errs: &[FieldError]) -> String {
    errs.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// One message per error (a parse error is one message, possibly multi-line).
    pub fn messages(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(errs) => errs.iter().map(|e| e.to_string()).collect(),
            other => vec![other.to_string().trim_end().to_string()],
        }
    }
}

impl Config {
    /// What is valid but risky, one line each (printed by `check-config` and at start-up): a
    /// server endpoint on a non-loopback address without `allow` (anyone who reaches it reads
    /// the mirrored client stream or injects secondary output), and a Xen notify socket on a
    /// non-loopback address without `allow` (only loopback peers get in: probably not meant).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let mut data = |field: &str, e: &Endpoint| {
            if e.open_to_network(false) {
                w.push(format!(
                    "{field}: server on {} accepts peers from any address; set allow = [\"<peer address or prefix>\"]",
                    e.addr
                ));
            }
        };
        if let Some(LinkSpec::Socket(l)) = &self.link {
            data("link.mirror", &l.mirror);
            data("link.secondary_out", &l.secondary_out);
        }
        if let Some(cs) = &self.compare_sockets {
            data("compare_sockets.primary_in", &cs.primary_in);
            data("compare_sockets.secondary_in", &cs.secondary_in);
            data("compare_sockets.outdev", &cs.outdev);
        }
        let notify = self
            .mgmt
            .xen_notify
            .as_ref()
            .map(|x| ("mgmt.xen_notify", &x.endpoint))
            .or_else(|| {
                self.compare_sockets
                    .as_ref()
                    .and_then(|c| c.notify_dev.as_ref())
                    .map(|e| ("compare_sockets.notify_dev", e))
            });
        if let Some((field, e)) = notify {
            if e.open_to_network(false) {
                w.push(format!(
                    "{field}: listens on {} but admits loopback peers only (the default for the notify channel); set allow = [\"<Xen host>\"]",
                    e.addr
                ));
            }
        }
        w
    }

    /// Parse and validate a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        build::build(raw)
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text)
    }

    /// Final EAL argument list: program name, file args, memory flags, `--vdev`/`-a` for the
    /// ports, then `overrides` (see [`eal::merge`] for how overrides combine).
    pub fn eal_args(&self, overrides: &[String]) -> Vec<String> {
        self.eal_args_with_probe(overrides, eal::free_hugepages)
    }

    /// [`Config::eal_args`] with an injectable "are there free hugepages?" probe.
    pub fn eal_args_with_probe(
        &self,
        overrides: &[String],
        free_hugepages: impl FnOnce() -> bool,
    ) -> Vec<String> {
        eal::build_args(self, overrides, free_hugepages)
    }

    /// Check the stage lcores against a final EAL list (after command-line overrides).
    pub fn check_lcores(&self, eal_args: &[String]) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        build::check_lcores_in_set(&self.lcores, eal_args, &mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}
