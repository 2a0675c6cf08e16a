//! The TOML file as written: serde structs with `deny_unknown_fields`, optional where the
//! default depends on other fields. `build` turns them into the validated [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{EalConfig, FailoverConfig, IdleMode, RewriterConfig, RingsConfig, Role};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub role: Role,
    #[serde(default)]
    pub eal: EalConfig,
    #[serde(default)]
    pub ports: BTreeMap<String, RawPort>,
    pub link: Option<RawLink>,
    pub compare_sockets: Option<RawCompareSockets>,
    #[serde(default)]
    pub lcores: RawLcores,
    #[serde(default)]
    pub compare: RawCompare,
    #[serde(default)]
    pub rewriter: RewriterConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub rings: RingsConfig,
    #[serde(default)]
    pub mempool: RawMempool,
    #[serde(default)]
    pub backpressure: RawBackpressure,
    #[serde(default)]
    pub idle: RawIdle,
    #[serde(default)]
    pub mgmt: RawMgmt,
}

/// `[idle]` as written: `backoff` is the old switch, kept so old files still load.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdle {
    pub mode: Option<IdleMode>,
    pub backoff: Option<bool>,
    #[serde(default = "spin_loops")]
    pub spin_loops: u32,
    #[serde(default = "spin_us")]
    pub spin_us: u32,
    #[serde(default = "await_spin_us")]
    pub await_spin_us: u32,
    #[serde(default = "max_sleep_us")]
    pub max_sleep_us: u32,
}

impl Default for RawIdle {
    fn default() -> Self {
        RawIdle {
            mode: None,
            backoff: None,
            spin_loops: spin_loops(),
            spin_us: spin_us(),
            await_spin_us: await_spin_us(),
            max_sleep_us: max_sleep_us(),
        }
    }
}

// The defaults live once, in `IdleConfig::default`.
fn spin_loops() -> u32 {
    super::IdleConfig::default().spin_loops
}
fn spin_us() -> u32 {
    super::IdleConfig::default().spin_us
}
fn await_spin_us() -> u32 {
    super::IdleConfig::default().await_spin_us
}
fn max_sleep_us() -> u32 {
    super::IdleConfig::default().max_sleep_us
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPort {
    pub pci: Option<String>,
    pub vdev: Option<String>,
    pub wire: Option<String>,
    #[serde(default = "one")]
    pub rx_queues: u16,
    #[serde(default = "one")]
    pub tx_queues: u16,
    #[serde(default = "desc")]
    pub rx_desc: u16,
    #[serde(default = "desc")]
    pub tx_desc: u16,
}

fn one() -> u16 {
    1
}
fn desc() -> u16 {
    1024
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum LinkKind {
    Port,
    Socket,
}

/// `[link]`: one flat table; fields of the other kind are rejected in `build`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLink {
    pub kind: LinkKind,
    pub port: Option<String>,
    pub ether_type: Option<u16>,
    pub peer_mac: Option<String>,
    pub mirror: Option<RawEndpoint>,
    pub secondary_out: Option<RawEndpoint>,
    pub vnet_hdr_support: Option<bool>,
    pub reconnect_ms: Option<u64>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    pub addr: String,
    pub mode: Option<super::SocketMode>,
    pub allow: Option<Vec<String>>,
    pub replace_peer: Option<bool>,
    pub keepalive_ms: Option<u64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompareSockets {
    pub primary_in: Option<RawEndpoint>,
    pub secondary_in: Option<RawEndpoint>,
    pub outdev: Option<RawEndpoint>,
    pub notify_dev: Option<RawEndpoint>,
    #[serde(default)]
    pub vnet_hdr_support: bool,
    #[serde(default = "reconnect")]
    pub reconnect_ms: u64,
    #[serde(default)]
    pub accept_unsolicited: bool,
}

fn reconnect() -> u64 {
    1000
}

/// A compare lcore list may be written as one id (shared by all shards) or a list.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged, expecting = "an lcore id or a list of lcore ids")]
pub(super) enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLcores {
    pub main: Option<u32>,
    pub mirror: Option<u32>,
    pub redirector: Option<u32>,
    pub compare: Option<OneOrMany>,
    pub rewriter: Option<u32>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCompare {
    pub shards: u32,
    pub timeout_ms: u64,
    pub scan_period_ms: u64,
    pub queue_size: u32,
    pub shard_packets: u32,
    pub shard_bytes: u64,
    pub table_capacity: u32,
    pub idle_timeout_ms: u64,
    pub bypass: Vec<RawBypass>,
    pub ipv6: super::PassMode,
    pub vlan: super::PassMode,
}

/// `[mempool]`; `mbufs` absent = derived from the pipeline's size.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMempool {
    pub mbufs: Option<u32>,
    pub cache: u32,
    pub data_room: u16,
}

impl Default for RawMempool {
    fn default() -> Self {
        RawMempool {
            mbufs: None,
            cache: 256,
            data_room: 2176,
        }
    }
}

/// `[backpressure]`; absent watermarks are derived from the compare queue limits.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBackpressure {
    pub enabled: bool,
    pub high_packets: Option<u32>,
    pub low_packets: Option<u32>,
    pub high_bytes: Option<u64>,
    pub low_bytes: Option<u64>,
    pub max_pause_ms: Option<u64>,
}

impl Default for RawBackpressure {
    fn default() -> Self {
        RawBackpressure {
            enabled: true,
            high_packets: None,
            low_packets: None,
            high_bytes: None,
            low_bytes: None,
            max_pause_ms: None,
        }
    }
}

impl Default for RawCompare {
    fn default() -> Self {
        RawCompare {
            shards: 1,
            timeout_ms: 3000,
            scan_period_ms: 1000,
            // compare::CompareConfig's default (QEMU: 1024, too small for a bulk sender).
            queue_size: 8192,
            shard_packets: 8192,
            shard_bytes: 16 << 20,
            table_capacity: 65536,
            idle_timeout_ms: 120_000,
            bypass: Vec::new(),
            ipv6: super::PassMode::Compare,
            vlan: super::PassMode::Compare,
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBypass {
    #[serde(default = "any")]
    pub proto: String,
    pub ports: Option<String>,
    pub prefix: Option<String>,
}

fn any() -> String {
    "any".into()
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMgmt {
    pub control_socket: Option<PathBuf>,
    pub control_socket_mode: u32,
    pub control_socket_group: Option<String>,
    pub control_tcp: Option<String>,
    pub control_token: Option<String>,
    pub stats_interval_ms: u64,
    pub xen_notify: Option<RawXenNotify>,
    pub qmp: Option<RawQmp>,
    pub capture: Option<RawCapture>,
    pub metrics: Option<RawMetrics>,
}

/// `[mgmt.metrics]`: the Prometheus endpoint.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    #[serde(default = "metrics_listen")]
    pub listen: String,
}

fn metrics_listen() -> String {
    "127.0.0.1:9464".into()
}

impl Default for RawMgmt {
    fn default() -> Self {
        RawMgmt {
            control_socket: None,
            control_socket_mode: 0o600,
            control_socket_group: None,
            control_tcp: None,
            control_token: None,
            stats_interval_ms: 1000,
            xen_notify: None,
            qmp: None,
            capture: None,
            metrics: None,
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXenNotify {
    pub addr: String,
    pub mode: Option<super::SocketMode>,
    #[serde(default)]
    pub vnet_hdr_support: bool,
    pub allow: Option<Vec<String>>,
    pub replace_peer: Option<bool>,
    pub keepalive_ms: Option<u64>,
    #[serde(default)]
    pub accept_unsolicited: bool,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQmp {
    pub socket: PathBuf,
    #[serde(default = "checkpoint_delay")]
    pub checkpoint_delay_ms: u64,
    #[serde(default = "reconnect")]
    pub reconnect_ms: u64,
}

fn checkpoint_delay() -> u64 {
    20_000
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCapture {
    pub dir: PathBuf,
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "max_file_bytes")]
    pub max_file_bytes: u64,
    #[serde(default = "max_files")]
    pub max_files: u32,
    #[serde(default = "context_packets")]
    pub context_packets: u32,
}

fn max_file_bytes() -> u64 {
    64 << 20
}
fn max_files() -> u32 {
    8
}
fn context_packets() -> u32 {
    8
}
