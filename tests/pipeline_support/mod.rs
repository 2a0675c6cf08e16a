//! What the `colo-proxy run` tests share on top of `netns_support` (declare
//! `mod netns_support;` next to `mod pipeline_support;`): the config tables every test proxy
//! uses, starting a proxy, the logs of a primary/secondary pair, the graceful stop, and the
//! whole veth lab ([`Lab`]: namespaces, services, both proxies linked).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::netns_support::*;

/// The `[eal]` and `[mgmt]` tables of a test proxy: lcores 0 and 1 without
/// hugepages under its own `file_prefix`, control socket `dir/SOCK.sock`. Everything else
/// (mempool, queues, timeouts) keeps its default, as a user's config would.
pub fn common_toml(file_prefix: &str, dir: &Path, sock: &str) -> String {
    common_toml_on(file_prefix, dir, sock, PRIMARY_LCORES)
}

/// EAL `--lcores` of the primary in the lab: main lcore on CPU 0, workers on CPU 1.
pub const PRIMARY_LCORES: &str = "0@0,1@1";
/// EAL `--lcores` of the secondary in the lab: the other way round. The two proxies stand for
/// two hosts; on this 2-CPU machine each one's worker gets a CPU of its own (measured in
/// perf/e2e.rs: sharing one CPU halved server→client throughput).
pub const SECONDARY_LCORES: &str = "0@1,1@0";

/// [`common_toml`] with EAL `--lcores` given.
pub fn common_toml_on(file_prefix: &str, dir: &Path, sock: &str, lcores: &str) -> String {
    format!(
        r#"[eal]
args = ["--lcores", "{lcores}", "--no-pci", "--no-huge", "-m", "512", "--no-shconf",
        "--file-prefix", "{file_prefix}", "--log-level", "lib.eal:warning"]
[mgmt]
control_socket = "{dir}/{sock}.sock"
"#,
        dir = dir.display()
    )
}

/// `colo-proxy run --config CFG` on the primary host (the root namespace) or in `host`, its
/// output in `dir/NAME.log`.
pub fn proxy(name: &str, cfg: &Path, dir: &Path, host: Option<&SecHost>) -> Proc {
    let bin = env!("CARGO_BIN_EXE_colo-proxy");
    let mut c = match host {
        Some(h) => h.cmd(bin),
        None => Command::new(bin),
    };
    c.args(["run", "--config", cfg.to_str().unwrap()]);
    Proc::spawn(name, c, &dir.join(format!("{name}.log")))
}

/// Both proxies' output so far, for assertion messages.
pub fn logs(primary: &Proc, secondary: &Proc) -> String {
    both(&primary.output(), &secondary.output())
}

fn both(primary: &str, secondary: &str) -> String {
    format!("--- primary\n{primary}\n--- secondary\n{secondary}")
}

/// Graceful stop: SIGTERM to both; each must exit 0 and report balanced accounting. Returns
/// their whole output (primary, secondary).
pub fn stop_both(primary: &mut Proc, secondary: &mut Proc) -> (String, String) {
    primary.signal(libc::SIGTERM);
    secondary.signal(libc::SIGTERM);
    let pst = primary.wait(Duration::from_secs(20));
    let sst = secondary.wait(Duration::from_secs(20));
    let (po, so) = (primary.output(), secondary.output());
    let all = both(&po, &so);
    assert!(
        pst.is_some_and(|s| s.success()),
        "primary exit {pst:?}\n{all}"
    );
    assert!(
        sst.is_some_and(|s| s.success()),
        "secondary exit {sst:?}\n{all}"
    );
    for o in [&po, &so] {
        assert!(
            o.lines()
                .any(|l| l.starts_with("accounting") && l.ends_with("balanced")),
            "{all}"
        );
    }
    (po, so)
}

/// How the two proxies are linked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Link {
    /// QEMU-framed TCP sockets between the two hosts.
    Socket,
    /// DPDK ports (net_af_packet on a veth pair between the hosts) with the encapsulation.
    Port,
}

/// What a lab runs.
#[derive(Clone, Copy, Debug)]
pub struct LabOptions {
    /// How the proxies are linked.
    pub link: Link,
    /// Compare shards on the primary (each needs its own nic queue pair).
    pub shards: u32,
    /// A second client namespace behind the secondary's own nic (used after its failover).
    pub client2: bool,
}

/// The veth lab: namespaces `client`, `pvm`, `svm` (and `client2`), the deterministic services
/// of `svc.py` in the PVM and SVM, the primary proxy in the root namespace and the secondary on
/// its own host namespace, linked and running. Config = the defaults apart from ports, lcores
/// and link addresses (and `[compare] shards`). Everything is stopped and removed on drop.
pub struct Lab {
    // Drop order = field order: processes first, then the network, then the files.
    /// The primary proxy.
    pub primary: Proc,
    /// The secondary proxy.
    pub secondary: Proc,
    _services: (Service, Service),
    /// The secondary's host.
    pub sechost: SecHost,
    _link_pair: Option<VethPair>,
    /// The namespaces.
    pub net: Net,
    /// The primary's control socket.
    pub psock: PathBuf,
    /// The secondary's control socket.
    pub ssock: PathBuf,
    /// `svc.py` as written for this lab.
    pub py: PathBuf,
    /// The scratch directory (configs, logs, sockets).
    pub dir: PathBuf,
    _scratch: TmpDir,
}

fn link_toml(
    link: Link,
    primary_ip: &str,
    ports: (u16, u16),
    iface: &str,
    primary: bool,
) -> String {
    match link {
        Link::Socket => {
            let mode = if primary { "server" } else { "client" };
            let (mirror, sec) = ports;
            format!(
                r#"[link]
kind = "socket"
mirror = {{ addr = "tcp:{primary_ip}:{mirror}", mode = "{mode}" }}
secondary_out = {{ addr = "tcp:{primary_ip}:{sec}", mode = "{mode}" }}
"#
            )
        }
        Link::Port => {
            let dev = if primary {
                "net_af_packet2"
            } else {
                "net_af_packet1"
            };
            format!(
                r#"[link]
kind = "port"
[ports.link]
vdev = "{dev},iface={iface}"
"#
            )
        }
    }
}

impl Lab {
    /// Build the network, start the services and both proxies, wait until they are linked.
    pub fn start(label: &str, o: LabOptions) -> Lab {
        Lab::start_with(label, o, "")
    }

    /// [`Lab::start`] with `extra` TOML appended to both proxies' configs (e.g. an `[idle]`
    /// table).
    pub fn start_with(label: &str, o: LabOptions, extra: &str) -> Lab {
        let t0 = Instant::now();
        let tag = format!("{label}{}", std::process::id() % 100_000);
        let scratch = TmpDir::new(&format!("colo-netns-{tag}"));
        let dir = scratch.0.clone();
        let py = dir.join("svc.py");
        std::fs::write(&py, SVC_PY).unwrap();
        let mut roles = vec!["client", "pvm", "svm"];
        if o.client2 {
            roles.push("client2");
        }
        let net = Net::new(&tag, &roles);
        let link_pair = (o.link == Link::Port).then(|| {
            VethPair::new(
                &format!("la{tag}"),
                &format!("lb{tag}"),
                colo_proxy::pipeline::topology::LINK_MTU,
            )
        });
        let (la, lb) = link_pair
            .as_ref()
            .map(|p| (p.a.clone(), p.b.clone()))
            .unwrap_or_default();
        // The secondary runs on its own "host" with the SVM's (and its client's) veth ends.
        let sechost = SecHost::new(&tag);
        sechost.adopt(&net.host("svm").root_if);
        if o.client2 {
            sechost.adopt(&net.host("client2").root_if);
        }
        if !lb.is_empty() {
            sechost.adopt(&lb);
        }
        let ports = (free_port(), free_port());
        // Each compare shard transmits on its own nic queue: af_packet needs that many qpairs.
        let qpairs = if o.shards > 1 {
            format!(",qpairs={}", o.shards)
        } else {
            String::new()
        };
        let primary_toml = format!(
            r#"role = "primary"
{common}[ports.nic]
vdev = "net_af_packet0,iface={nic}{qpairs}"
[ports.pvm]
vdev = "net_af_packet1,iface={pvm}"
[lcores]
main = 0
mirror = 1
redirector = 1
compare = 1
[compare]
shards = {shards}
{link}"#,
            common = common_toml(&format!("colo-nsp-{tag}"), &dir, "primary"),
            nic = net.host("client").root_if,
            pvm = net.host("pvm").root_if,
            shards = o.shards,
            link = link_toml(o.link, &sechost.primary_ip, ports, &la, true),
        ) + extra;
        let nic2 = if o.client2 {
            format!(
                "[ports.nic]\nvdev = \"net_af_packet2,iface={}\"\n",
                net.host("client2").root_if
            )
        } else {
            String::new()
        };
        let secondary_toml = format!(
            r#"role = "secondary"
{common}[ports.svm]
vdev = "net_af_packet0,iface={svm}"
{nic2}[lcores]
main = 0
rewriter = 1
{link}"#,
            common = common_toml_on(
                &format!("colo-nss-{tag}"),
                &dir,
                "secondary",
                SECONDARY_LCORES
            ),
            svm = net.host("svm").root_if,
            link = link_toml(o.link, &sechost.primary_ip, ports, &lb, false),
        ) + extra;
        let pcfg = dir.join("primary.toml");
        let scfg = dir.join("secondary.toml");
        std::fs::write(&pcfg, primary_toml).unwrap();
        std::fs::write(&scfg, secondary_toml).unwrap();

        let services = (
            Service::start(net.host("pvm"), &py, "pvm"),
            Service::start(net.host("svm"), &py, "svm"),
        );
        // The primary owns the link's listening sockets: start it first (QEMU's order too).
        let primary = proxy("primary", &pcfg, &dir, None);
        assert!(
            wait_until(Duration::from_secs(20), || primary
                .output()
                .contains("running as primary")),
            "primary did not come up\n{}",
            primary.output()
        );
        let secondary = proxy("secondary", &scfg, &dir, Some(&sechost));
        // Both pipelines running and, for the socket link, both streams connected: no frame may
        // be lost to a link still coming up.
        let linked = wait_until(Duration::from_secs(20), || {
            secondary.output().contains("running as secondary")
                && match o.link {
                    Link::Socket => {
                        established_at(&sechost.primary_ip, ports.0) >= 1
                            && established_at(&sechost.primary_ip, ports.1) >= 1
                    }
                    Link::Port => true,
                }
        });
        assert!(
            linked,
            "link did not come up\n{}",
            logs(&primary, &secondary)
        );
        println!(
            "{label}: proxies up and linked after {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        Lab {
            primary,
            secondary,
            _services: services,
            sechost,
            _link_pair: link_pair,
            net,
            psock: dir.join("primary.sock"),
            ssock: dir.join("secondary.sock"),
            py,
            dir,
            _scratch: scratch,
        }
    }

    /// Both proxies' output so far.
    pub fn logs(&self) -> String {
        logs(&self.primary, &self.secondary)
    }

    /// `ctl stats` of (primary, secondary).
    pub fn stats(&self) -> (serde_json::Value, serde_json::Value) {
        let p = ctl(&self.psock, &["stats"]).unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        let s = ctl(&self.ssock, &["stats"]).unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        (p, s)
    }

    /// Set `net.ipv4.tcp_timestamps` in every namespace.
    pub fn timestamps(&self, on: bool) {
        for (_, h) in &self.net.hosts {
            h.sysctl(&format!("net.ipv4.tcp_timestamps={}", u8::from(on)));
        }
    }

    /// `svc.py ARGS...` in the client namespace `role`, within `limit`: (exit ok, output).
    pub fn client(&self, role: &str, args: &[&str], limit: Duration) -> (bool, String) {
        let mut v = vec!["python3", self.py.to_str().unwrap()];
        v.extend_from_slice(args);
        run_limited(self.net.host(role).cmd(&v), limit)
    }

    /// Graceful stop of both proxies (exit 0, balanced accounting); their whole output.
    pub fn stop(&mut self) -> (String, String) {
        stop_both(&mut self.primary, &mut self.secondary)
    }
}
