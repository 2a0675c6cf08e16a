//! Shared harness for the real-stack pipeline tests: network namespaces and veth pairs (removed
//! by a Drop guard), `colo-proxy run` child processes (killed by a Drop guard), control-socket
//! queries, and the Python services in `svc.py`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[path = "../prereq/mod.rs"]
pub mod prereq;

/// The services and the client, run with the system Python.
pub const SVC_PY: &str = include_str!("svc.py");

/// The VMs' address (PVM and SVM alike) and MAC.
pub const VM_IP: &str = "10.77.0.2";
/// The VMs' MAC (PVM and SVM alike).
pub const VM_MAC: &str = "02:00:00:00:00:02";
/// The client's address.
pub const CLIENT_IP: &str = "10.77.0.1";
/// The client's MAC.
pub const CLIENT_MAC: &str = "02:00:00:00:00:01";

/// Why the test cannot run here, or None.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and af_packet need CAP_NET_ADMIN/RAW)".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Some(format!(
                "`ip netns` unavailable: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => return Some(format!("`ip` not found: {e}")),
    }
    for tool in ["ethtool", "python3"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!("`{tool}` not found"));
        }
    }
    None
}

/// True when the lab can run here; otherwise the calling test is skipped, or fails in CI
/// ([`prereq::require`]).
pub fn lab_available(test: &str) -> bool {
    prereq::require(test, skip_reason())
}

/// Run a command, panic with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command, ignore failure.
fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// One namespace with a veth pair: `eth0` inside, `root_if` in the root namespace (where the
/// proxies bind it with af_packet).
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// The root-namespace end of its veth pair.
    pub root_if: String,
}

impl Host {
    /// `ip netns exec NS args...` as a Command.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).args(args);
        c
    }

    /// Run `args` in the namespace, panic on failure.
    pub fn sh(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.ns];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Set a sysctl in the namespace.
    pub fn sysctl(&self, kv: &str) {
        self.sh(&["sysctl", "-qw", kv]);
    }
}

/// The test network: namespaces `client`, `pvm`, `svm` (and more if asked), each with a veth
/// pair, all removed on drop. Names carry the pid so parallel runs cannot collide.
pub struct Net {
    /// Hosts by role.
    pub hosts: Vec<(String, Host)>,
}

impl Net {
    /// Create the namespaces in `roles` (e.g. `["client", "pvm", "svm"]`); `client` (and
    /// `client2`) get [`CLIENT_IP`], the others [`VM_IP`] with the same MAC. Static neighbour entries, IPv6 off
    /// (no ARP, DAD or router solicitations racing between PVM and SVM), offloads off on both
    /// veth ends so frames crossing DPDK are MTU-sized with full checksums. TCP sysctls stay
    /// the kernel's defaults (buffer autotuning included): what a real VM runs with.
    pub fn new(tag: &str, roles: &[&str]) -> Net {
        let mut net = Net { hosts: Vec::new() };
        for role in roles {
            // Root-side names: n = client (the primary's nic), m = the client behind the
            // secondary's nic (failover), p = PVM, s = SVM.
            let short = match *role {
                "client" => "n",
                "client2" => "m",
                r => &r[..1],
            };
            let host = Host {
                ns: format!("colo-{role}-{tag}"),
                root_if: format!("c{short}{tag}"),
            };
            // Registered before creation, so a failure half-way still cleans up.
            net.hosts.push((role.to_string(), host));
            let h = &net.hosts.last().unwrap().1;
            sh(&["ip", "netns", "add", &h.ns]);
            h.sysctl("net.ipv6.conf.all.disable_ipv6=1");
            h.sysctl("net.ipv6.conf.default.disable_ipv6=1");
            sh(&[
                "ip", "link", "add", &h.root_if, "type", "veth", "peer", "name", "eth0", "netns",
                &h.ns,
            ]);
            sh(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", h.root_if),
            ]);
            sh(&[
                "ethtool", "-K", &h.root_if, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
            ]);
            // rx off inside: the namespace's kernel verifies every checksum the proxies wrote.
            h.sh(&[
                "ethtool", "-K", "eth0", "tx", "off", "rx", "off", "tso", "off", "gso", "off",
                "gro", "off",
            ]);
            let (ip, mac, peer_ip, peer_mac) = if role.starts_with("client") {
                (CLIENT_IP, CLIENT_MAC, VM_IP, VM_MAC)
            } else {
                (VM_IP, VM_MAC, CLIENT_IP, CLIENT_MAC)
            };
            h.sh(&["ip", "link", "set", "lo", "up"]);
            h.sh(&["ip", "link", "set", "eth0", "address", mac]);
            h.sh(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            h.sh(&["ip", "link", "set", "eth0", "up"]);
            h.sh(&[
                "ip",
                "neigh",
                "replace",
                peer_ip,
                "lladdr",
                peer_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
            sh(&["ip", "link", "set", &h.root_if, "up"]);
        }
        net
    }

    /// The host playing `role`.
    pub fn host(&self, role: &str) -> &Host {
        &self
            .hosts
            .iter()
            .find(|(r, _)| r == role)
            .unwrap_or_else(|| panic!("no host {role}"))
            .1
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, h) in &self.hosts {
            // Deleting the namespace destroys its veth end and so the pair.
            sh_quiet(&["ip", "netns", "del", &h.ns]);
            sh_quiet(&["ip", "link", "del", &h.root_if]);
        }
    }
}

/// A child process killed (and reaped) on drop unless it already exited.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    /// The process.
    pub child: Option<Child>,
    /// Its stdout+stderr file.
    pub log: PathBuf,
}

impl Proc {
    /// Spawn `cmd` with stdout and stderr into `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let f = std::fs::File::create(log).expect("log file");
        let f2 = f.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.into(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Send `sig`.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid; it is not reaped yet, so the pid is ours.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Wait up to `limit` for exit; None when it did not exit (it is then killed).
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A service process whose stdin we hold (it exits when stdin closes) and that printed READY.
pub struct Service {
    child: Child,
}

impl Service {
    /// Start `svc.py server ROLE` in `host` and wait for READY.
    pub fn start(host: &Host, py: &Path, role: &str) -> Service {
        Service::spawn(host, &["python3", py.to_str().unwrap(), "server", role])
    }

    /// Start `args` in `host` (a server that prints READY when it listens) and wait for READY.
    pub fn spawn(host: &Host, args: &[&str]) -> Service {
        let mut child = host
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn service");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut l = String::new();
            let _ = BufReader::new(out).read_line(&mut l);
            let _ = tx.send(l);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        let mut s = Service { child };
        assert_eq!(line.trim(), "READY", "service in {} did not start", host.ns);
        let _ = s.child.stdin.as_mut().map(|i| i.flush());
        s
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a command with a time limit; returns (exit ok, stdout+stderr).
pub fn run_limited(mut cmd: Command, limit: Duration) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("colo-run-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let log = dir.join("out.txt");
    let mut p = Proc::spawn(
        "cmd",
        std::mem::replace(&mut cmd, Command::new("true")),
        &log,
    );
    let st = p.wait(limit);
    let out = p.output();
    let _ = std::fs::remove_dir_all(&dir);
    match st {
        Some(s) => (s.success(), out),
        None => (false, format!("{out}\n(killed after {limit:?})")),
    }
}

/// `RESULT key=value` lines of an output.
pub fn results(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `colo-proxy ctl --socket S --raw WORDS` → the reply's `result`.
pub fn ctl(socket: &Path, words: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .args([
            "ctl",
            "--socket",
            socket.to_str().unwrap(),
            "--raw",
            "--timeout",
            "5",
        ])
        .args(words)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| {
        format!(
            "ctl {words:?}: {e}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(v.get("result").cloned().unwrap_or(v))
}

/// A counter from `ctl stats` totals.
pub fn total(stats: &serde_json::Value, name: &str) -> u64 {
    stats["dataplane"]["totals"][name].as_u64().unwrap_or(0)
}

/// Poll until `f` is true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Established TCP connections in the root namespace with `ip:port` at either end.
pub fn established_at(ip: &str, port: u16) -> usize {
    let out = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let p = format!("{ip}:{port}");
    out.lines()
        .filter(|l| l.split_whitespace().any(|w| w == p))
        .count()
}

/// The secondary's host: a namespace of its own for the secondary proxy, reached from the
/// root namespace (the primary's host) over a veth pair, `primary_ip` ↔ `secondary_ip` (a /30
/// chosen from the pid, so concurrent test processes do not share an address in the root
/// namespace). Besides realism this keeps the two DPDK processes' af_packet
/// sockets apart: DPDK 22.11's af_packet joins every socket to the fan-out group
/// `(pid ^ ifindex) & 0xffff`, and two processes whose values collide on different interfaces
/// in one namespace fail to start (`could not set PACKET_FANOUT ... Invalid argument`).
pub struct SecHost {
    /// Namespace name.
    pub ns: String,
    root_if: String,
    /// The primary host's address on the host link.
    pub primary_ip: String,
    /// The secondary host's address on the host link.
    pub secondary_ip: String,
}

impl SecHost {
    /// Create the namespace and the host link.
    pub fn new(tag: &str) -> SecHost {
        let slot = std::process::id() % 16384;
        let net = format!("10.78.{}.{}", slot / 64, (slot % 64) * 4);
        let last = |k: u32| {
            let (head, tail) = net.rsplit_once('.').unwrap_or(("10.78.0", "0"));
            format!("{head}.{}", tail.parse::<u32>().unwrap_or(0) + k)
        };
        let h = SecHost {
            ns: format!("colo-sec-{tag}"),
            root_if: format!("ch{tag}"),
            primary_ip: last(1),
            secondary_ip: last(2),
        };
        sh(&["ip", "netns", "add", &h.ns]);
        let inside = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &h.ns];
            v.extend_from_slice(args);
            sh(&v);
        };
        inside(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        inside(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        sh(&[
            "ip", "link", "add", &h.root_if, "type", "veth", "peer", "name", "hostlink", "netns",
            &h.ns,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", h.primary_ip),
            "dev",
            &h.root_if,
        ]);
        sh(&["ip", "link", "set", &h.root_if, "up"]);
        inside(&["ip", "link", "set", "lo", "up"]);
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", h.secondary_ip),
            "dev",
            "hostlink",
        ]);
        inside(&["ip", "link", "set", "hostlink", "up"]);
        h
    }

    /// Move root-namespace interface `iface` here (offloads off again, up).
    pub fn adopt(&self, iface: &str) {
        sh(&["ip", "link", "set", iface, "netns", &self.ns]);
        let mut v = vec!["ip", "netns", "exec", &self.ns];
        v.extend_from_slice(&[
            "ethtool", "-K", iface, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
        ]);
        sh(&v);
        sh(&["ip", "-n", &self.ns, "link", "set", iface, "up"]);
    }

    /// `ip netns exec NS program args...` as a Command.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }
}

impl Drop for SecHost {
    fn drop(&mut self) {
        // Destroys the veth ends inside, and so their pairs.
        sh_quiet(&["ip", "netns", "del", &self.ns]);
        sh_quiet(&["ip", "link", "del", &self.root_if]);
    }
}

/// Established TCP connections on 127.0.0.1 whose local or remote port is `port`.
pub fn established(port: u16) -> usize {
    let out = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let p = format!("127.0.0.1:{port}");
    out.lines()
        .filter(|l| l.split_whitespace().any(|w| w == p))
        .count()
}

/// A veth pair in the root namespace (the encapsulated link between the two proxies), with an
/// MTU that fits a 1500-byte VM frame plus the encapsulation; removed on drop.
pub struct VethPair {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
}

impl VethPair {
    /// Create `a`—`b` with `mtu`, offloads and IPv6 off, up.
    pub fn new(a: &str, b: &str, mtu: u16) -> VethPair {
        let pair = VethPair {
            a: a.into(),
            b: b.into(),
        };
        sh(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
        for i in [a, b] {
            sh(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{i}.disable_ipv6=1"),
            ]);
            sh(&[
                "ethtool", "-K", i, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
            ]);
            sh(&["ip", "link", "set", i, "mtu", &mtu.to_string()]);
            sh(&["ip", "link", "set", i, "up"]);
        }
        pair
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        sh_quiet(&["ip", "link", "del", &self.a]);
    }
}

/// A scratch directory removed on drop (the logs it held are in every assertion message).
pub struct TmpDir(pub PathBuf);

impl TmpDir {
    /// A fresh `$TMPDIR/name`.
    pub fn new(name: &str) -> TmpDir {
        let d = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        TmpDir(d)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Offloads off on a veth end (`ns` None: the root namespace), so frames crossing DPDK are
/// MTU-sized with full checksums; `rx` too when the kernel behind it must verify them.
fn offloads_off(ns: Option<&str>, iface: &str, rx: bool) {
    let mut v: Vec<&str> = Vec::new();
    if let Some(ns) = ns {
        v.extend_from_slice(&["ip", "netns", "exec", ns]);
    }
    v.extend_from_slice(&[
        "ethtool", "-K", iface, "tx", "off", "tso", "off", "gso", "off",
    ]);
    v.extend_from_slice(&["gro", "off"]);
    if rx {
        v.extend_from_slice(&["rx", "off"]);
    }
    sh(&v);
}

/// The lab version of a real deployment's client side: the client and both hosts'
/// client-facing NICs on one L2 switch (a Linux bridge in a namespace of its own).
///
/// ```text
///   client ns (CLIENT_IP) ─eth0══cl─┐
///                                    br0 (switch ns) ─pn══ `nic` root ns (primary proxy's nic)
///                                    └──────────────── sn══ `nic2` in the secondary's host ns
///   pvm ns (VM_IP, VM_MAC) ─eth0══ `pvm` root ns (primary proxy's pvm port)
///   svm ns (VM_IP, VM_MAC) ─eth0══ `svm` in the secondary's host ns
/// ```
///
/// PVM and SVM share IP and MAC; neighbour entries are static, IPv6 is off, sysctls are the
/// kernel's defaults otherwise. Everything is removed on drop (with [`SecHost`]'s own drop).
pub struct SwitchNet {
    /// The switch namespace.
    pub switch_ns: String,
    /// Client, PVM and SVM namespaces (`root_if` is the proxy-side end of each one's veth;
    /// for the client it is its bridge port in the switch namespace).
    pub client: Host,
    /// The PVM.
    pub pvm: Host,
    /// The SVM (its `root_if` lives in the secondary host's namespace).
    pub svm: Host,
    /// The primary's nic (root namespace).
    pub nic: String,
    /// The secondary's nic (in the secondary host's namespace).
    pub nic2: String,
    /// The secondary's host.
    pub sec: SecHost,
}

impl SwitchNet {
    /// Build it; `tag` keeps names unique (≤ 8 characters).
    pub fn new(tag: &str) -> SwitchNet {
        let host = |role: &str, short: &str| Host {
            ns: format!("colo-{role}-{tag}"),
            root_if: format!("c{short}{tag}"),
        };
        let sec = SecHost::new(tag);
        let net = SwitchNet {
            switch_ns: format!("colo-sw-{tag}"),
            client: Host {
                ns: format!("colo-client-{tag}"),
                root_if: "cl".into(),
            },
            pvm: host("pvm", "p"),
            svm: host("svm", "s"),
            nic: format!("cn{tag}"),
            nic2: format!("cm{tag}"),
            sec,
        };
        let sw = net.switch_ns.clone();
        for ns in [&sw, &net.client.ns, &net.pvm.ns, &net.svm.ns] {
            sh(&["ip", "netns", "add", ns]);
            for k in ["all", "default"] {
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
                ]);
            }
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip",
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
        ]);
        sh(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        // Client: eth0 in its namespace, `cl` on the bridge.
        sh(&[
            "ip",
            "-n",
            &sw,
            "link",
            "add",
            "cl",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &net.client.ns,
        ]);
        // The two hosts' nics: created in the root namespace, bridge ends moved to the switch.
        for (root, br) in [(&net.nic, "pn"), (&net.nic2, "sn")] {
            sh(&[
                "ip", "link", "add", root, "type", "veth", "peer", "name", br, "netns", &sw,
            ]);
            sh(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{root}.disable_ipv6=1"),
            ]);
            offloads_off(None, root, false);
            sh(&["ip", "link", "set", root, "up"]);
        }
        for br in ["cl", "pn", "sn"] {
            offloads_off(Some(&sw), br, false);
            sh(&["ip", "-n", &sw, "link", "set", br, "master", "br0"]);
            sh(&["ip", "-n", &sw, "link", "set", br, "up"]);
        }
        // VMs: a veth to the proxy's port in the root namespace.
        for h in [&net.pvm, &net.svm] {
            sh(&[
                "ip", "link", "add", &h.root_if, "type", "veth", "peer", "name", "eth0", "netns",
                &h.ns,
            ]);
            sh(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", h.root_if),
            ]);
            offloads_off(None, &h.root_if, false);
            sh(&["ip", "link", "set", &h.root_if, "up"]);
        }
        for (h, ip, mac, peer_ip, peer_mac) in [
            (&net.client, CLIENT_IP, CLIENT_MAC, VM_IP, VM_MAC),
            (&net.pvm, VM_IP, VM_MAC, CLIENT_IP, CLIENT_MAC),
            (&net.svm, VM_IP, VM_MAC, CLIENT_IP, CLIENT_MAC),
        ] {
            // rx off inside: the namespace's kernel verifies every checksum the proxies wrote.
            offloads_off(Some(&h.ns), "eth0", true);
            h.sh(&["ip", "link", "set", "eth0", "address", mac]);
            h.sh(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            h.sh(&["ip", "link", "set", "eth0", "up"]);
            h.sh(&[
                "ip",
                "neigh",
                "replace",
                peer_ip,
                "lladdr",
                peer_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
        }
        // The secondary's ports live on its host.
        net.sec.adopt(&net.svm.root_if);
        net.sec.adopt(&net.nic2);
        net
    }

    /// The MAC → bridge port table of the switch (`bridge fdb`), for one MAC.
    pub fn fdb_port(&self, mac: &str) -> Option<String> {
        let out = sh(&[
            "ip",
            "netns",
            "exec",
            &self.switch_ns,
            "bridge",
            "fdb",
            "show",
            "br",
            "br0",
        ]);
        out.lines()
            .filter(|l| l.starts_with(mac) && !l.contains("permanent"))
            .find_map(|l| {
                let mut w = l.split_whitespace();
                while let Some(x) = w.next() {
                    if x == "dev" {
                        return w.next().map(str::to_string);
                    }
                }
                None
            })
    }
}

impl Drop for SwitchNet {
    fn drop(&mut self) {
        for ns in [&self.switch_ns, &self.client.ns, &self.pvm.ns, &self.svm.ns] {
            sh_quiet(&["ip", "netns", "del", ns]);
        }
        for i in [&self.nic, &self.pvm.root_if] {
            sh_quiet(&["ip", "link", "del", i]);
        }
    }
}
