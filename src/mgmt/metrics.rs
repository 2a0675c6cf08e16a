//! Prometheus / OpenMetrics endpoint (`[mgmt.metrics] listen`), served by the management
//! thread, never by a data lcore.
//!
//! - One source of truth: [`render`] turns the very JSON that `ctl stats` answers
//!   (`{"dataplane": .., "mgmt": ..}`) into metric families, plus the latency histograms, and
//!   encodes them with the `prometheus-client` crate (OpenMetrics text format). Names and
//!   labels are stable and documented in docs/OPERATIONS.md ("Prometheus metrics").
//! - [`MetricsServer`] is a minimal HTTP/1.x server that cannot block management: a
//!   non-blocking listener polled from [`super::Management::poll`]; at most
//!   [`MAX_CONNECTIONS`] clients (more are closed at once, counted); a request head over
//!   [`MAX_REQUEST`] bytes gets `431` and is closed; every connection is closed
//!   [`CONNECTION_DEADLINE`] after it was accepted, read or not (`timeouts`); one request per
//!   connection (`Connection: close`). A client that never reads its reply costs one
//!   connection slot for at most the deadline.
//! - Malformed requests get `400`, other paths `404`, other methods `405`: never a panic.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use rustix::event::PollFlags;
use serde::Serialize;
use serde_json::Value;

/// Clients served at once; more are accepted and closed at once (`refused`).
pub const MAX_CONNECTIONS: usize = 16;
/// Longest request head read (request line + headers).
pub const MAX_REQUEST: usize = 8192;
/// A connection is closed this long after it was accepted, whatever its state.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// New connections accepted per poll (bounds one poll's work).
const ACCEPTS_PER_POLL: usize = 8;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency bucket bounds in seconds (10 µs .. 10 s), for every `*_seconds` histogram.
pub const LATENCY_BOUNDS: &[f64] = &[
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Divergence reasons always exported (0 until seen), so dashboards have every series.
pub const DIVERGENCE_REASONS: &[&str] = &[
    "payload_mismatch",
    "length_mismatch",
    "primary_timeout",
    "secondary_timeout",
    "ack_ahead",
    "queue_overflow",
    "pool_exhausted",
    "table_overflow",
    "expired",
    "malformed",
    "svm_input_lost",
];

/// A histogram with fixed bucket bounds (seconds), Prometheus style.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Buckets {
    /// Upper bounds (seconds); an implicit `+Inf` bucket follows.
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative), `bounds.len() + 1` entries.
    pub counts: Vec<u64>,
    /// Sum of the observations (seconds).
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Buckets {
    /// An empty histogram over [`LATENCY_BOUNDS`].
    pub fn latency() -> Buckets {
        Buckets {
            bounds: LATENCY_BOUNDS.to_vec(),
            counts: vec![0; LATENCY_BOUNDS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Record `n` observations of `ns` nanoseconds.
    pub fn observe_ns(&mut self, ns: u64, n: u64) {
        if self.counts.len() != self.bounds.len() + 1 {
            self.counts = vec![0; self.bounds.len() + 1];
        }
        let s = ns as f64 / 1e9;
        let i = self.bounds.partition_point(|&b| b < s);
        self.counts[i] += n;
        self.sum += s * n as f64;
        self.count += n;
    }

    /// From an hdrhistogram of nanoseconds (the compare hold time): each recorded value
    /// (within the histogram's 3 significant digits) goes to its bucket.
    pub fn from_hdr(h: &hdrhistogram::Histogram<u64>) -> Buckets {
        let mut b = Buckets::latency();
        for v in h.iter_recorded() {
            b.observe_ns(v.value_iterated_to(), v.count_at_value());
        }
        b
    }
}

/// A named histogram the pipeline registers with management (`colo_proxy_<name>_seconds`).
pub struct HistogramSource {
    /// Metric name (full, e.g. `colo_proxy_compare_hold_seconds`).
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Reads the current histogram (called on the management thread at scrape time).
    pub read: Box<dyn Fn() -> Buckets + Send>,
}

#[derive(Debug, Clone)]
enum Sample {
    /// Integral counters stay exact (an f64 is exact only up to 2^53).
    CounterInt(u64),
    Counter(f64),
    Gauge(f64),
    Histogram(Buckets),
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: MetricType,
    samples: Vec<(Vec<(String, String)>, Sample)>,
}

/// Metric families being built for one scrape; [`Exposition::encode`] writes them.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
    index: HashMap<String, usize>,
}

type Labels<'a> = &'a [(&'a str, &'a str)];

impl Exposition {
    fn push(&mut self, name: &str, help: &str, kind: MetricType, labels: Labels, s: Sample) {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.families.push(Family {
                    name: name.to_string(),
                    help: help.to_string(),
                    kind,
                    samples: Vec::new(),
                });
                self.index.insert(name.to_string(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.families[i].samples.push((labels, s));
    }

    /// A counter sample; `name` without the `_total` suffix (the encoder adds it).
    pub fn counter(&mut self, name: &str, help: &str, labels: Labels, v: f64) {
        self.push(name, help, MetricType::Counter, labels, Sample::Counter(v));
    }

    /// An integral counter sample (exact).
    pub fn counter_int(&mut self, name: &str, help: &str, labels: Labels, v: u64) {
        self.push(
            name,
            help,
            MetricType::Counter,
            labels,
            Sample::CounterInt(v),
        );
    }

    /// One integral counter per numeric member of `obj`, named `{prefix}{member}` (no labels).
    pub fn counters_of(&mut self, obj: &Value, prefix: &str, help: &str) {
        for (k, v) in obj.as_object().into_iter().flatten() {
            if let Some(v) = v.as_u64() {
                self.counter_int(&format!("{prefix}{k}"), help, &[], v);
            }
        }
    }

    /// The integral counters `table` names: `(member of obj, metric name, help)`; members that
    /// are missing or not numbers are left out.
    pub fn counters_named(&mut self, obj: &Value, table: &[(&str, &str, &str)]) {
        for &(field, name, help) in table {
            if let Some(v) = obj[field].as_u64() {
                self.counter_int(name, help, &[], v);
            }
        }
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: Labels, v: f64) {
        self.push(name, help, MetricType::Gauge, labels, Sample::Gauge(v));
    }

    /// A 0/1 gauge for a boolean of `ctl stats`; left out when it is missing (`None`).
    pub fn flag(&mut self, name: &str, help: &str, labels: Labels, v: Option<bool>) {
        if let Some(b) = v {
            self.gauge(name, help, labels, f64::from(u8::from(b)));
        }
    }

    /// A histogram sample.
    pub fn histogram(&mut self, name: &str, help: &str, labels: Labels, b: &Buckets) {
        let s = Sample::Histogram(b.clone());
        self.push(name, help, MetricType::Histogram, labels, s);
    }

    /// Every metric name (families; counters without `_total`).
    pub fn names(&self) -> Vec<&str> {
        self.families.iter().map(|f| f.name.as_str()).collect()
    }

    /// The OpenMetrics text (ends with `# EOF`).
    pub fn encode(self) -> String {
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(Collected(self.families)));
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error leaves what was written.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}

#[derive(Debug)]
struct Collected(Vec<Family>);

fn encode_sample(
    m: &mut prometheus_client::encoding::MetricEncoder<'_>,
    s: &Sample,
) -> Result<(), std::fmt::Error> {
    match s {
        Sample::CounterInt(v) => m.encode_counter::<NoLabelSet, u64, f64>(v, None),
        Sample::Counter(v) => m.encode_counter::<NoLabelSet, f64, f64>(v, None),
        Sample::Gauge(v) => m.encode_gauge(v),
        Sample::Histogram(b) => {
            let mut buckets: Vec<(f64, u64)> = b
                .bounds
                .iter()
                .copied()
                .zip(b.counts.iter().copied())
                .collect();
            // The encoder writes `+Inf` for f64::MAX.
            buckets.push((f64::MAX, b.counts.get(b.bounds.len()).copied().unwrap_or(0)));
            m.encode_histogram::<NoLabelSet>(b.sum, b.count, &buckets, None)
        }
    }
}

impl prometheus_client::collector::Collector for Collected {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let mut d = encoder.encode_descriptor(&f.name, &f.help, None, f.kind)?;
            for (labels, s) in &f.samples {
                if labels.is_empty() {
                    encode_sample(&mut d, s)?;
                } else {
                    let mut m = d.encode_family(labels)?;
                    encode_sample(&mut m, s)?;
                }
            }
        }
        Ok(())
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn label_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(label_str).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// An lcore counter's metric: `(family, extra label)`, e.g. `drop_tx_full` →
/// `("colo_proxy_dropped_packets", Some(("reason", "tx_full")))`.
pub fn lcore_counter_metric(counter: &str) -> (String, Option<(&'static str, String)>, f64) {
    if let Some(reason) = counter.strip_prefix("drop_") {
        return (
            "colo_proxy_dropped_packets".into(),
            Some(("reason", reason.to_string())),
            1.0,
        );
    }
    if let Some(base) = counter.strip_suffix("_ns") {
        return (format!("colo_proxy_{base}_seconds"), None, 1e-9);
    }
    if let Some(base) = counter.strip_suffix("_cycles") {
        return (format!("colo_proxy_lcore_{base}_cycles"), None, 1.0);
    }
    (format!("colo_proxy_{counter}"), None, 1.0)
}

/// The exposition of one `ctl stats` result (`{"dataplane": .., "mgmt": ..}`), the
/// histograms, and `extra` (the endpoint's own counters), as families.
pub fn families(
    stats: &Value,
    histograms: &[(&str, &str, Buckets)],
    extra: &MetricsStats,
    role: &str,
) -> Exposition {
    let mut x = Exposition::default();
    x.gauge(
        "colo_proxy_build_info",
        "Version and role of this colo-proxy (always 1).",
        &[("version", env!("CARGO_PKG_VERSION")), ("role", role)],
        1.0,
    );
    let dp = &stats["dataplane"];
    if let Some(lcores) = dp["lcores"].as_array() {
        for l in lcores {
            let id = label_str(&l["lcore"]);
            x.gauge(
                "colo_proxy_lcore_info",
                "The stages an lcore runs (always 1).",
                &[("lcore", &id), ("stages", &label_str(&l["stages"]))],
                1.0,
            );
        }
        // Family by family (every lcore's sample of one counter together).
        let names: Vec<String> = lcores
            .first()
            .and_then(|l| l["counters"].as_object())
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let mut order: Vec<&String> = names.iter().collect();
        // Drops first, as one family, then the rest in the counters' order.
        order.sort_by_key(|n| !n.starts_with("drop_"));
        for name in order {
            let (fam, extra_label, scale) = lcore_counter_metric(name);
            let help = match &extra_label {
                Some(_) => {
                    "Packets dropped, by lcore and reason (drop_<reason> in ctl stats).".to_string()
                }
                None => format!(
                    "Per-lcore counter {name} (ctl stats dataplane.lcores[].counters.{name})."
                ),
            };
            for l in lcores {
                let id = label_str(&l["lcore"]);
                let Some(v) = l["counters"][name.as_str()].as_u64() else {
                    continue;
                };
                match &extra_label {
                    Some((k, r)) => x.counter_int(&fam, &help, &[("lcore", &id), (k, r)], v),
                    None if scale == 1.0 => x.counter_int(&fam, &help, &[("lcore", &id)], v),
                    None => x.counter(&fam, &help, &[("lcore", &id)], v as f64 * scale),
                }
            }
        }
    }
    if let Some(v) = num(&dp["in_flight"]) {
        x.gauge(
            "colo_proxy_in_flight_packets",
            "Packets that entered and are not yet in a terminal counter.",
            &[],
            v,
        );
    }
    if let Some(lag) = dp["lag"].as_array() {
        for s in lag {
            let shard = label_str(&s["shard"]);
            for side in ["primary", "secondary"] {
                if let Some(v) = num(&s[format!("{side}_packets")]) {
                    x.gauge(
                        "colo_proxy_shard_queued_packets",
                        "Packets a compare shard holds, by side (primary: waiting for the SVM).",
                        &[("shard", &shard), ("side", side)],
                        v,
                    );
                }
                if let Some(v) = num(&s[format!("{side}_bytes")]) {
                    x.gauge(
                        "colo_proxy_shard_queued_bytes",
                        "Bytes a compare shard holds, by side.",
                        &[("shard", &shard), ("side", side)],
                        v,
                    );
                }
            }
            if let Some(v) = num(&s["oldest_ns"]) {
                x.gauge(
                    "colo_proxy_shard_oldest_primary_seconds",
                    "Age of the oldest primary waiting in a shard (upper bound between scans).",
                    &[("shard", &shard)],
                    v * 1e-9,
                );
            }
        }
    }
    if let Some(ports) = dp["ports"].as_array() {
        for p in ports {
            let port = label_str(&p["name"]);
            for dir in ["rx", "tx"] {
                if let Some(v) = p[dir].as_u64() {
                    x.counter_int(
                        "colo_proxy_port_packets",
                        "Frames a DPDK port received / sent (its own counters).",
                        &[("port", &port), ("direction", dir)],
                        v,
                    );
                }
            }
            for (field, reason) in [
                ("rx_missed", "missed"),
                ("rx_errors", "rx_errors"),
                ("rx_nombuf", "rx_nombuf"),
                ("tx_errors", "tx_errors"),
            ] {
                if let Some(v) = p[field].as_u64() {
                    x.counter_int(
                        "colo_proxy_port_dropped_packets",
                        "Frames a DPDK port dropped itself, by reason.",
                        &[("port", &port), ("reason", reason)],
                        v,
                    );
                }
            }
        }
    }
    mgmt_families(&mut x, &stats["mgmt"]);
    for (name, help, b) in histograms {
        x.histogram(name, help, &[], b);
    }
    extra.families(&mut x);
    x
}

fn mgmt_families(x: &mut Exposition, m: &Value) {
    if m.is_null() {
        return;
    }
    let by = m["divergences_by_reason"].as_object();
    let mut reasons: Vec<String> = DIVERGENCE_REASONS.iter().map(|s| s.to_string()).collect();
    if let Some(by) = by {
        for k in by.keys() {
            if !reasons.contains(k) {
                reasons.push(k.clone());
            }
        }
    }
    for r in &reasons {
        let v = by
            .and_then(|b| b.get(r))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        x.counter_int(
            "colo_proxy_mgmt_divergences",
            "Divergences reported to management, by reason (ctl stats mgmt.divergences_by_reason).",
            &[("reason", r)],
            v,
        );
    }
    let c = &m["checkpoint"];
    x.counters_named(
        c,
        &[
            (
                "requested",
                "colo_proxy_checkpoint_requests",
                "Checkpoint requests (divergences, manual requests).",
            ),
            (
                "coalesced",
                "colo_proxy_checkpoint_requests_coalesced",
                "Requests merged into the outstanding one.",
            ),
            (
                "issued",
                "colo_proxy_checkpoint_requests_issued",
                "Requests handed to the sinks (first sends).",
            ),
            (
                "resent",
                "colo_proxy_checkpoint_requests_resent",
                "Outstanding requests sent again.",
            ),
            (
                "completed",
                "colo_proxy_checkpoints_completed",
                "Checkpoints completed (every stage applied it).",
            ),
            (
                "completed_unrequested",
                "colo_proxy_checkpoints_completed_unrequested",
                "Completions with nothing outstanding (periodic checkpoints).",
            ),
            (
                "complete_failed",
                "colo_proxy_checkpoint_complete_failures",
                "Completions the data plane failed to apply.",
            ),
        ],
    );
    x.flag(
        "colo_proxy_checkpoint_outstanding",
        "1 while a checkpoint request is outstanding.",
        &[],
        c["outstanding"].as_bool(),
    );
    if let Some(v) = num(&c["max_latency_ns"]) {
        x.gauge(
            "colo_proxy_checkpoint_max_latency_seconds",
            "Longest checkpoint request to completion time seen.",
            &[],
            v * 1e-9,
        );
    }
    if let Some(sinks) = m["sinks"].as_object() {
        for (sink, s) in sinks {
            let up = ["ready", "connected", "up"]
                .iter()
                .find_map(|k| s[*k].as_bool());
            x.flag(
                "colo_proxy_checkpoint_sink_up",
                "1 when a checkpoint sink (xen, qmp, ...) is connected and ready.",
                &[("sink", sink)],
                up,
            );
            if let Some(o) = s.as_object() {
                for (k, v) in o {
                    if let Some(v) = v.as_u64() {
                        x.counter_int(
                            &format!("colo_proxy_checkpoint_sink_{k}"),
                            "Checkpoint sink counter (ctl stats mgmt.sinks.<sink>).",
                            &[("sink", sink)],
                            v,
                        );
                    }
                }
            }
        }
    }
    let ctl = &m["control"];
    if let Some(o) = ctl.as_object() {
        for (k, v) in o {
            let Some(v) = v.as_u64() else { continue };
            if k == "clients" || k == "subscribers" {
                x.gauge(
                    &format!("colo_proxy_control_{k}"),
                    "Control socket clients / event subscribers connected now.",
                    &[],
                    v as f64,
                );
            } else {
                x.counter_int(
                    &format!("colo_proxy_control_{k}"),
                    "Control socket counter (ctl stats mgmt.control).",
                    &[],
                    v,
                );
            }
        }
    }
    x.counters_of(
        &m["capture"],
        "colo_proxy_capture_",
        "Divergence capture counter (ctl stats mgmt.capture).",
    );
    x.flag(
        "colo_proxy_capture_enabled",
        "1 while divergence capture is on.",
        &[],
        m["capture_on"].as_bool(),
    );
    x.counters_named(
        m,
        &[
            ("failovers", "colo_proxy_failovers", "Failovers performed."),
            (
                "link_silent",
                "colo_proxy_link_silent",
                "Times the link peer went silent (heartbeat timeout).",
            ),
            (
                "inputs",
                "colo_proxy_mgmt_inputs",
                "Events from the data plane processed by management.",
            ),
            (
                "inputs_dropped",
                "colo_proxy_mgmt_inputs_dropped",
                "Events from the data plane lost because management's queue was full.",
            ),
        ],
    );
    if let Some(v) = num(&m["failover"]["gap_ns"]) {
        x.gauge(
            "colo_proxy_failover_gap_seconds",
            "Trigger to first frame on the new path, the longest stage's.",
            &[],
            v * 1e-9,
        );
    }
}

/// The endpoint's own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MetricsStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed at once because [`MAX_CONNECTIONS`] were open.
    pub refused: u64,
    /// Scrapes answered (`200`).
    pub scrapes: u64,
    /// Error replies (400, 404, 405, 431).
    pub errors: u64,
    /// Connections closed at [`CONNECTION_DEADLINE`] (slow or idle clients).
    pub timeouts: u64,
    /// Clients connected now.
    pub clients: u64,
}

impl MetricsStats {
    /// Add the endpoint's own counters to `x`.
    pub fn families(&self, x: &mut Exposition) {
        for (name, v, help) in [
            (
                "colo_proxy_metrics_connections_accepted",
                self.accepted,
                "Metrics endpoint connections accepted.",
            ),
            (
                "colo_proxy_metrics_connections_refused",
                self.refused,
                "Metrics endpoint connections closed at once (too many open).",
            ),
            (
                "colo_proxy_metrics_scrapes",
                self.scrapes,
                "Scrapes answered.",
            ),
            (
                "colo_proxy_metrics_errors",
                self.errors,
                "Metrics endpoint error replies.",
            ),
            (
                "colo_proxy_metrics_timeouts",
                self.timeouts,
                "Metrics endpoint connections closed at the deadline.",
            ),
        ] {
            x.counter_int(name, help, &[], v);
        }
    }
}

/// What a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`.
    Metrics,
    /// `GET /`: a short page naming `/metrics`.
    Index,
    /// Answered with this status at once.
    Error(u16),
}

/// Parse a request head. `None`: incomplete (read more).
pub fn route(buf: &[u8]) -> Option<Route> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => {
            return Some(Route::Error(431))
        }
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => return Some(Route::Error(431)),
        Err(_) => return Some(Route::Error(400)),
    }
    if req.method != Some("GET") && req.method != Some("HEAD") {
        return Some(Route::Error(405));
    }
    let path = req.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    Some(match path {
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => Route::Error(404),
    })
}

fn response(status: u16, ctype: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let mut r = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

struct Conn {
    stream: TcpStream,
    since: Instant,
    inbuf: Vec<u8>,
    /// The reply, once routed, and how much of it was written.
    out: Option<(Vec<u8>, usize)>,
}

/// The non-blocking HTTP endpoint. Drive it with [`MetricsServer::poll`].
pub struct MetricsServer {
    listener: TcpListener,
    conns: Vec<Conn>,
    stats: MetricsStats,
    deadline: Duration,
}

impl MetricsServer {
    /// Listen on `addr` (non-blocking).
    pub fn bind(addr: SocketAddr) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(MetricsServer {
            listener,
            conns: Vec::new(),
            stats: MetricsStats::default(),
            deadline: CONNECTION_DEADLINE,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Counters.
    pub fn stats(&self) -> MetricsStats {
        MetricsStats {
            clients: self.conns.len() as u64,
            ..self.stats
        }
    }

    /// The listener and client fds with what should wake an idle `poll(2)` for each (the
    /// drop-in's loop, management's wait). A client with a reply pending waits for room to
    /// write only: [`Metrics::poll`] reads nothing from it until the reply is out, so waking
    /// on its input too would spin the caller while a client sends and does not read.
    pub fn fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut v = vec![(self.listener.as_fd(), PollFlags::IN)];
        for c in &self.conns {
            let want = if c.out.is_some() {
                PollFlags::OUT
            } else {
                PollFlags::IN
            };
            v.push((c.stream.as_fd(), want));
        }
        v
    }

    /// One bounded, non-blocking step: accept, read requests, write replies, close what is
    /// done or past its deadline. `render` is called once per scrape with the endpoint's own
    /// counters. Returns units of work.
    pub fn poll(&mut self, render: &mut dyn FnMut(MetricsStats) -> String) -> usize {
        let mut work = 0;
        for _ in 0..ACCEPTS_PER_POLL {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    work += 1;
                    if self.conns.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err()
                    {
                        self.stats.refused += 1;
                        drop(stream);
                        continue;
                    }
                    self.stats.accepted += 1;
                    self.conns.push(Conn {
                        stream,
                        since: Instant::now(),
                        inbuf: Vec::new(),
                        out: None,
                    });
                }
                // WouldBlock: nothing pending; any other error (EMFILE, ...) is retried next poll.
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let deadline = self.deadline;
        let clients = self.conns.len() as u64;
        let stats = &mut self.stats;
        self.conns.retain_mut(|c| {
            let (keep, w) = step(c, render, stats, clients);
            work += w;
            if keep && now.duration_since(c.since) >= deadline {
                stats.timeouts += 1;
                return false;
            }
            keep
        });
        work
    }
}

/// Advance one connection; `(keep it, work done)`.
fn step(
    c: &mut Conn,
    render: &mut dyn FnMut(MetricsStats) -> String,
    st: &mut MetricsStats,
    clients: u64,
) -> (bool, usize) {
    let mut work = 0;
    if c.out.is_none() {
        let mut buf = [0u8; 2048];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => return (false, work + 1),
                Ok(n) => {
                    work += 1;
                    let room = MAX_REQUEST.saturating_sub(c.inbuf.len());
                    c.inbuf.extend_from_slice(&buf[..n.min(room)]);
                    if c.inbuf.len() >= MAX_REQUEST {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return (false, work + 1),
            }
        }
        let head = c.inbuf.starts_with(b"HEAD ");
        let reply = match route(&c.inbuf) {
            None => return (true, work),
            Some(Route::Metrics) => {
                st.scrapes += 1;
                response(200, CONTENT_TYPE, &render(MetricsStats { clients, ..*st }))
            }
            Some(Route::Index) => response(
                200,
                "text/plain; charset=utf-8",
                "colo-proxy: metrics at /metrics\n",
            ),
            Some(Route::Error(code)) => {
                st.errors += 1;
                response(
                    code,
                    "text/plain; charset=utf-8",
                    &format!("error {code}\n"),
                )
            }
        };
        let reply = if head {
            // Headers only (Content-Length still says what GET would send).
            let end = reply
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(reply.len(), |p| p + 4);
            reply[..end].to_vec()
        } else {
            reply
        };
        c.out = Some((reply, 0));
    }
    let Some((out, done)) = c.out.as_mut() else {
        return (true, work);
    };
    while *done < out.len() {
        match c.stream.write(&out[*done..]) {
            Ok(0) => return (false, work + 1),
            Ok(n) => {
                *done += n;
                work += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (true, work),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return (false, work + 1),
        }
    }
    let _ = c.stream.shutdown(std::net::Shutdown::Write);
    (false, work + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_requests_and_caps_their_size() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Some(Route::Index));
        assert_eq!(
            route(b"GET /nope HTTP/1.1\r\n\r\n"),
            Some(Route::Error(404))
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::Error(405))
        );
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n"), None);
        assert_eq!(route(b"\x00\x01garbage\r\n\r\n"), Some(Route::Error(400)));
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST, b'a');
        assert_eq!(route(&big), Some(Route::Error(431)));
    }

    #[test]
    fn buckets_place_observations_and_count_inf() {
        let mut b = Buckets::latency();
        b.observe_ns(5_000, 1); // 5 µs → first bucket (≤ 10 µs)
        b.observe_ns(1_000_000, 2); // 1 ms → the 1e-3 bucket (le is inclusive)
        b.observe_ns(60_000_000_000, 1); // 60 s → +Inf
        assert_eq!(b.count, 4);
        assert_eq!(b.counts[0], 1);
        assert_eq!(
            b.counts[LATENCY_BOUNDS.iter().position(|&x| x == 1e-3).unwrap()],
            2
        );
        assert_eq!(b.counts[LATENCY_BOUNDS.len()], 1);
        assert!((b.sum - (5e-6 + 2e-3 + 60.0)).abs() < 1e-9);
    }

    #[test]
    fn exposition_of_ctl_stats_has_stable_names_and_values() {
        let stats = serde_json::json!({
            "dataplane": {
                "lcores": [
                    {"lcore": 1, "stages": ["mirror", "redirector"],
                     "counters": {"rx": 10, "drop_tx_full": 2, "pvm_paused_ns": 1500000000u64, "busy_cycles": 7}},
                    {"lcore": 2, "stages": ["compare0"],
                     "counters": {"rx": 5, "drop_tx_full": 0, "pvm_paused_ns": 0, "busy_cycles": 1}}
                ],
                "in_flight": 3,
                "lag": [{"shard": 0, "primary_packets": 4, "primary_bytes": 400, "secondary_packets": 0, "secondary_bytes": 0, "oldest_ns": 2000000}],
                "ports": [{"name": "nic", "rx": 9, "tx": 8, "rx_missed": 1, "rx_errors": 0, "rx_nombuf": 0, "tx_errors": 0, "kernel_drops_hidden": false}]
            },
            "mgmt": {
                "divergences_by_reason": {"payload_mismatch": 3, "odd_new_reason": 1},
                "checkpoint": {"requested": 4, "coalesced": 1, "issued": 3, "resent": 0, "completed": 3,
                               "completed_unrequested": 0, "complete_failed": 0, "outstanding": true, "max_latency_ns": 5000000},
                "sinks": {"xen": {"ready": true, "sent": 3}},
                "control": {"accepted": 2, "clients": 1},
                "capture": null, "capture_on": false,
                "failovers": 0, "link_silent": 0, "inputs": 7, "inputs_dropped": 0,
                "failover": {"gap_ns": null}
            }
        });
        let mut h = Buckets::latency();
        h.observe_ns(3_000_000, 3);
        let text = families(
            &stats,
            &[("colo_proxy_checkpoint_latency_seconds", "help", h)],
            &MetricsStats::default(),
            "primary",
        )
        .encode();
        for want in [
            "colo_proxy_rx_total{lcore=\"1\"} 10",
            "colo_proxy_rx_total{lcore=\"2\"} 5",
            "colo_proxy_dropped_packets_total{lcore=\"1\",reason=\"tx_full\"} 2",
            "colo_proxy_pvm_paused_seconds_total{lcore=\"1\"} 1.5",
            "colo_proxy_lcore_busy_cycles_total{lcore=\"1\"} 7",
            "colo_proxy_lcore_info{lcore=\"1\",stages=\"mirror,redirector\"} 1",
            "colo_proxy_in_flight_packets 3",
            "colo_proxy_shard_queued_packets{shard=\"0\",side=\"primary\"} 4",
            "colo_proxy_shard_oldest_primary_seconds{shard=\"0\"} 0.002",
            "colo_proxy_port_packets_total{port=\"nic\",direction=\"rx\"} 9",
            "colo_proxy_port_dropped_packets_total{port=\"nic\",reason=\"missed\"} 1",
            "colo_proxy_mgmt_divergences_total{reason=\"payload_mismatch\"} 3",
            "colo_proxy_mgmt_divergences_total{reason=\"primary_timeout\"} 0",
            "colo_proxy_mgmt_divergences_total{reason=\"odd_new_reason\"} 1",
            "colo_proxy_checkpoint_requests_total 4",
            "colo_proxy_checkpoints_completed_total 3",
            "colo_proxy_checkpoint_outstanding 1",
            "colo_proxy_checkpoint_sink_up{sink=\"xen\"} 1",
            "colo_proxy_checkpoint_sink_sent_total{sink=\"xen\"} 3",
            "colo_proxy_control_clients 1",
            "colo_proxy_checkpoint_latency_seconds_bucket{le=\"0.005\"} 3",
            "colo_proxy_checkpoint_latency_seconds_bucket{le=\"+Inf\"} 3",
            "colo_proxy_checkpoint_latency_seconds_count 3",
            "# TYPE colo_proxy_dropped_packets counter",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // One family per name: a TYPE line appears once.
        assert_eq!(text.matches("# TYPE colo_proxy_rx counter").count(), 1);
    }

    #[test]
    fn every_family_has_one_label_set_with_all_counters_and_all_mgmt_stats() {
        // Every data-plane counter on two lcores and every management field: no two sources
        // may land in one family (a name collision would mix label sets and double counts).
        let counters: serde_json::Map<String, serde_json::Value> =
            crate::pipeline::counters::Counter::ALL
                .iter()
                .map(|c| (c.name().to_string(), serde_json::json!(1)))
                .collect();
        let mgmt = serde_json::to_value(super::super::MgmtStats::default()).unwrap();
        let stats = serde_json::json!({
            "dataplane": {
                "lcores": [
                    {"lcore": 0, "stages": ["a"], "counters": counters.clone()},
                    {"lcore": 1, "stages": ["b"], "counters": counters},
                ],
                "in_flight": 0,
                "lag": [{"shard": 0, "primary_packets": 0, "primary_bytes": 0, "secondary_packets": 0, "secondary_bytes": 0, "oldest_ns": 0}],
                "ports": [{"name": "nic", "rx": 0, "tx": 0, "rx_missed": 0, "rx_errors": 0, "rx_nombuf": 0, "tx_errors": 0}],
            },
            "mgmt": mgmt,
        });
        let x = families(&stats, &[], &MetricsStats::default(), "primary");
        for f in &x.families {
            let keys =
                |l: &Vec<(String, String)>| l.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
            let first = keys(&f.samples[0].0);
            let mut seen = std::collections::HashSet::new();
            for (l, _) in &f.samples {
                assert_eq!(keys(l), first, "family {} mixes label sets", f.name);
                assert!(seen.insert(l.clone()), "family {} repeats {l:?}", f.name);
            }
        }
        assert!(x.names().len() > 40, "{:?}", x.names());
    }
    #[test]
    fn a_client_that_sends_and_does_not_read_does_not_wake_an_idle_wait() {
        use rustix::event::{poll, PollFd, Timespec};
        let mut m = MetricsServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut c = TcpStream::connect(m.local_addr().unwrap()).unwrap();
        // A reply larger than both sockets' buffers.
        c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut render = |_: MetricsStats| "x".repeat(64 << 20);
        let t0 = Instant::now();
        while !m.fds().iter().any(|&(_, f)| f == PollFlags::OUT) {
            assert!(t0.elapsed() < Duration::from_secs(5), "no reply pending");
            m.poll(&mut render);
        }
        // Until the kernel has no room left for the reply; then the client sends more.
        for _ in 0..100 {
            m.poll(&mut render);
        }
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let fds = m.fds();
        assert_eq!(fds.len(), 2);
        assert_eq!(fds[0].1, PollFlags::IN, "the listener");
        assert_eq!(
            fds[1].1,
            PollFlags::OUT,
            "the client with its reply pending"
        );
        // The client's unread request is readable, the socket not writable: an idle wait on
        // these fds blocks (waking on input too would return at once, every time).
        let mut pfds: Vec<PollFd<'_>> = fds
            .iter()
            .map(|&(fd, f)| PollFd::from_borrowed_fd(fd, f))
            .collect();
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        assert_eq!(poll(&mut pfds, Some(&zero)).unwrap(), 0);
        let mut wide: Vec<PollFd<'_>> = fds
            .iter()
            .map(|&(fd, _)| PollFd::from_borrowed_fd(fd, PollFlags::IN | PollFlags::OUT))
            .collect();
        assert_eq!(
            poll(&mut wide, Some(&zero)).unwrap(),
            1,
            "the test's own premise"
        );
    }
}
