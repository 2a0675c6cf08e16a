//! Real TCP stacks through a primary and a secondary `colo-proxy run`.
//!
//! Namespaces `client`, `pvm` and `svm` (PVM and SVM with the same IP and MAC, running the same
//! deterministic services of `netns_support/svc.py`; their kernels pick different ISNs and
//! timestamps) hang off veth pairs whose root ends the proxies bind with `net_af_packet`. The
//! primary (nic ↔ client, pvm ↔ PVM) and the secondary (svm ↔ SVM) talk over QEMU-framed TCP
//! sockets on 127.0.0.1 (one compare shard), or over an encapsulated DPDK port link on a veth
//! pair (two compare shards, so the nic has two af_packet queue pairs). The client does
//! request/response on many new connections (several at once) and a bulk transfer each way,
//! with `tcp_timestamps` off and on: every byte must arrive intact with zero divergences. Then a service that answers differently on the SVM must raise a divergence.
//! SIGTERM stops both proxies: exit 0 with balanced accounting.
//!
//! Needs root and `ip netns`; otherwise it prints why and passes without running.

mod netns_support;
mod pipeline_support;

use std::path::Path;
use std::time::{Duration, Instant};

use netns_support::*;
use pipeline_support::*;

/// New connections in each request/response round (3 requests each).
const CONNS: usize = 60;
/// Connections open at once.
const PAR: usize = 4;
/// Bytes of each bulk transfer.
const BULK: usize = 3_000_000;

/// What a client round expects of the proxies.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Compared: everything matched.
    Colo,
    /// The primary failed over: released uncompared, nothing to the secondary.
    PrimaryFailedOver,
    /// The secondary failed over: `client2` talks to the SVM through the secondary's nic.
    SecondaryFailedOver,
}

/// How the two proxies are linked.
#[derive(Clone, Copy)]
enum Link {
    /// QEMU-framed TCP sockets on 127.0.0.1.
    Socket,
    /// DPDK ports (net_af_packet on a root-namespace veth pair) with the encapsulation.
    Port,
}

/// One run of the whole scenario.
#[derive(Clone, Copy)]
struct Variant {
    link: Link,
    shards: u32,
}

struct Names<'a> {
    tag: &'a str,
    dir: &'a Path,
    nic: &'a str,
    pvm: &'a str,
    svm: &'a str,
    /// The secondary's nic (used after its failover).
    nic2: &'a str,
    /// The primary's address on the host link (socket link).
    primary_ip: &'a str,
    /// (primary's end, secondary's end) of the link veth pair.
    link: (&'a str, &'a str),
    ports: (u16, u16),
}

fn link_toml(v: Variant, n: &Names, primary: bool) -> String {
    let (mirror, sec) = n.ports;
    match v.link {
        Link::Socket => {
            let mode = if primary { "server" } else { "client" };
            let ip = n.primary_ip;
            format!(
                r#"[link]
kind = "socket"
mirror = {{ addr = "tcp:{ip}:{mirror}", mode = "{mode}" }}
secondary_out = {{ addr = "tcp:{ip}:{sec}", mode = "{mode}" }}
reconnect_ms = 100
"#
            )
        }
        Link::Port => {
            let (iface, dev) = if primary {
                (n.link.0, "net_af_packet2")
            } else {
                (n.link.1, "net_af_packet1")
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

fn primary_toml(v: Variant, n: &Names) -> String {
    // Each compare shard transmits on its own nic queue: af_packet needs that many qpairs.
    let qpairs = if v.shards > 1 {
        format!(",qpairs={}", v.shards)
    } else {
        String::new()
    };
    format!(
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
        common = common_toml(&format!("colo-nsp-{}", n.tag), n.dir, "primary"),
        nic = n.nic,
        pvm = n.pvm,
        shards = v.shards,
        link = link_toml(v, n, true),
    )
}

fn secondary_toml(v: Variant, n: &Names) -> String {
    format!(
        r#"role = "secondary"
{common}[ports.svm]
vdev = "net_af_packet0,iface={svm}"
[ports.nic]
vdev = "net_af_packet2,iface={nic2}"
[lcores]
main = 0
rewriter = 1
{link}"#,
        common = common_toml(&format!("colo-nss-{}", n.tag), n.dir, "secondary"),
        svm = n.svm,
        nic2 = n.nic2,
        link = link_toml(v, n, false),
    )
}

struct Ctx<'a> {
    net: &'a Net,
    py: &'a Path,
    psock: &'a Path,
    ssock: &'a Path,
    primary: &'a Proc,
    secondary: &'a Proc,
}

impl Ctx<'_> {
    fn logs(&self) -> String {
        logs(self.primary, self.secondary)
    }

    fn stats(&self) -> (serde_json::Value, serde_json::Value) {
        let p = ctl(self.psock, &["stats"]).unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        let s = ctl(self.ssock, &["stats"]).unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        (p, s)
    }

    /// The client's request/response and bulk cases; returns their RESULT map.
    fn client_round(&self, label: &str, mode: Mode) {
        let t0 = Instant::now();
        let (p0, s0) = self.stats();
        let client = self.net.host(match mode {
            Mode::SecondaryFailedOver => "client2",
            _ => "client",
        });
        let cmd = client.cmd(&[
            "python3",
            self.py.to_str().unwrap(),
            "client",
            VM_IP,
            &CONNS.to_string(),
            &BULK.to_string(),
            &PAR.to_string(),
        ]);
        let (ok, out) = run_limited(cmd, Duration::from_secs(60));
        let r = results(&out);
        let (p, s) = self.stats();
        let ctx = || {
            format!(
                "{label}: client output:\n{out}\nprimary stats {p}\nsecondary stats {s}\n{}",
                self.logs()
            )
        };
        assert!(ok, "{}", ctx());
        assert_eq!(
            r.get("reqresp_ok").map(String::as_str),
            Some(&*CONNS.to_string()),
            "{}",
            ctx()
        );
        assert_eq!(
            r.get("download_bytes").map(String::as_str),
            Some(&*BULK.to_string()),
            "{}",
            ctx()
        );
        assert_eq!(
            r.get("download_hash_ok").map(String::as_str),
            Some("1"),
            "{}",
            ctx()
        );
        assert_eq!(
            r.get("upload_hash_ok").map(String::as_str),
            Some("1"),
            "{}",
            ctx()
        );
        assert_eq!(
            r.get("udp_echoed").map(String::as_str),
            Some("200"),
            "{}",
            ctx()
        );
        assert_eq!(r.get("udp_bad").map(String::as_str), Some("0"), "{}", ctx());
        let delta =
            |a: &serde_json::Value, b: &serde_json::Value, k: &str| total(b, k) - total(a, k);
        assert_eq!(delta(&p0, &p, "divergences"), 0, "{}", ctx());
        match mode {
            Mode::Colo => {
                assert!(delta(&p0, &p, "released_matched") > 0, "{}", ctx());
                assert_eq!(delta(&p0, &p, "released_uncompared"), 0, "{}", ctx());
                assert!(delta(&s0, &s, "rewritten") > 0, "{}", ctx());
            }
            Mode::PrimaryFailedOver => {
                // Nothing compared any more: all released as is, the secondary gets nothing.
                assert_eq!(delta(&p0, &p, "released_matched"), 0, "{}", ctx());
                assert!(delta(&p0, &p, "released_uncompared") > 0, "{}", ctx());
                assert_eq!(delta(&s0, &s, "rx"), 0, "{}", ctx());
            }
            Mode::SecondaryFailedOver => {
                // The SVM serves the client through the secondary's nic; the primary sees
                // nothing.
                assert_eq!(delta(&p0, &p, "rx"), 0, "{}", ctx());
                assert!(delta(&s0, &s, "rx") > 0, "{}", ctx());
                assert_eq!(delta(&s0, &s, "drop_link_down"), 0, "{}", ctx());
            }
        }
        println!(
            "{label}: ok in {:.1}s (reqresp {}s, download {}s, upload {}s); primary released_matched {} released_uncompared {} secondary rewritten {}",
            t0.elapsed().as_secs_f64(),
            r.get("reqresp_secs").map(String::as_str).unwrap_or("?"),
            r.get("download_secs").map(String::as_str).unwrap_or("?"),
            r.get("upload_secs").map(String::as_str).unwrap_or("?"),
            total(&p, "released_matched"),
            total(&p, "released_uncompared"),
            total(&s, "rewritten"),
        );
    }
}

/// The scenarios share the 2 cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn socket_link_one_shard() {
    run(
        "s",
        Variant {
            link: Link::Socket,
            shards: 1,
        },
    );
}

#[test]
fn encapsulated_port_link_two_shards() {
    run(
        "e",
        Variant {
            link: Link::Port,
            shards: 2,
        },
    );
}

fn run(label: &str, v: Variant) {
    if let Some(why) = skip_reason() {
        println!("SKIPPED pipeline_netns: {why}");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let t_start = Instant::now();
    let tag = format!("{label}{}", std::process::id() % 100_000);
    let scratch = TmpDir::new(&format!("colo-netns-{tag}"));
    let dir = scratch.0.clone();
    let py = dir.join("svc.py");
    std::fs::write(&py, SVC_PY).unwrap();

    let net = Net::new(&tag, &["client", "pvm", "svm", "client2"]);
    let link_pair = match v.link {
        Link::Port => Some(VethPair::new(
            &format!("la{tag}"),
            &format!("lb{tag}"),
            colo_proxy::pipeline::topology::LINK_MTU,
        )),
        Link::Socket => None,
    };
    let (la, lb) = link_pair
        .as_ref()
        .map(|p| (p.a.clone(), p.b.clone()))
        .unwrap_or_default();
    // The secondary runs on its own "host" with the SVM's and its client's veth ends.
    let sechost = SecHost::new(&tag);
    sechost.adopt(&net.host("svm").root_if);
    sechost.adopt(&net.host("client2").root_if);
    if !lb.is_empty() {
        sechost.adopt(&lb);
    }
    let names = Names {
        tag: &tag,
        dir: &dir,
        nic: &net.host("client").root_if,
        pvm: &net.host("pvm").root_if,
        svm: &net.host("svm").root_if,
        nic2: &net.host("client2").root_if,
        primary_ip: &sechost.primary_ip,
        link: (&la, &lb),
        ports: (free_port(), free_port()),
    };
    let (mirror, sec) = names.ports;
    let pcfg = dir.join("primary.toml");
    let scfg = dir.join("secondary.toml");
    std::fs::write(&pcfg, primary_toml(v, &names)).unwrap();
    std::fs::write(&scfg, secondary_toml(v, &names)).unwrap();

    let _pvm_svc = Service::start(net.host("pvm"), &py, "pvm");
    let _svm_svc = Service::start(net.host("svm"), &py, "svm");

    // The primary owns the link's listening sockets: start it first (QEMU's order too).
    let mut primary = proxy("primary", &pcfg, &dir, None);
    let psock = dir.join("primary.sock");
    let ssock = dir.join("secondary.sock");
    assert!(
        wait_until(Duration::from_secs(20), || primary
            .output()
            .contains("running as primary")),
        "primary did not come up\n{}",
        primary.output()
    );
    let mut secondary = proxy("secondary", &scfg, &dir, Some(&sechost));
    // Both pipelines running and, for the socket link, both streams connected: no frame may
    // be lost to a link still coming up.
    let linked = wait_until(Duration::from_secs(20), || {
        secondary.output().contains("running as secondary")
            && match v.link {
                Link::Socket => {
                    established_at(&sechost.primary_ip, mirror) >= 1
                        && established_at(&sechost.primary_ip, sec) >= 1
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
        t_start.elapsed().as_secs_f64()
    );

    {
        let cx = Ctx {
            net: &net,
            py: &py,
            psock: &psock,
            ssock: &ssock,
            primary: &primary,
            secondary: &secondary,
        };
        for ts in [0, 1] {
            for (_, h) in &net.hosts {
                h.sysctl(&format!("net.ipv4.tcp_timestamps={ts}"));
            }
            cx.client_round(&format!("{label}: tcp_timestamps={ts}"), Mode::Colo);
        }

        // A service whose answer differs on the SVM: the compare must hold the PVM's answer
        // and raise a divergence; a checkpoint-done (what the COLO frame sends once the SVM is
        // a copy of the PVM) then releases the held answer to the client.
        let client = net.host("client");
        let dcmd = client.cmd(&["python3", py.to_str().unwrap(), "diverge", VM_IP]);
        let mut dclient = Proc::spawn("diverge", dcmd, &dir.join("diverge.log"));
        let mut mgmt = serde_json::Value::Null;
        let diverged = wait_until(Duration::from_secs(10), || match ctl(&psock, &["stats"]) {
            Ok(p) if total(&p, "divergences") > 0 => {
                mgmt = p["mgmt"].clone();
                true
            }
            _ => false,
        });
        let (p, s) = cx.stats();
        assert!(
            diverged,
            "no divergence for a service answering differently\nclient: {}\nprimary {p}\nsecondary {s}\n{}",
            dclient.output(),
            cx.logs()
        );
        assert!(
            mgmt["divergences_by_reason"]["payload_mismatch"].as_u64() >= Some(1),
            "divergence reasons {mgmt}"
        );
        // Held, not released: the client has no answer yet.
        assert!(
            !dclient.output().contains("diverge_reply"),
            "{}",
            dclient.output()
        );
        ctl(&psock, &["checkpoint-done"]).unwrap_or_else(|e| panic!("{e}\n{}", cx.logs()));
        let st = dclient.wait(Duration::from_secs(15));
        let out = dclient.output();
        assert!(
            st.is_some_and(|s| s.success()),
            "diverge client {st:?}: {out}"
        );
        // Only the PVM's answer ever reaches the client.
        assert!(
            out.contains("RESULT diverge_reply=pvm"),
            "{out}\n{}",
            cx.logs()
        );
        println!("{label}: divergence case: {mgmt}");

        // Failover (the COLO frame declared the secondary dead): the primary stops mirroring
        // and releases everything uncompared; the PVM alone keeps serving the client.
        let f = ctl(&psock, &["failover"]).unwrap_or_else(|e| panic!("{e}\n{}", cx.logs()));
        assert_eq!(f["failovers"].as_u64(), Some(1), "{f}");
        cx.client_round(
            &format!("{label}: primary failed over"),
            Mode::PrimaryFailedOver,
        );

        // Failover on the secondary (the primary host is gone): the SVM serves clients through
        // the secondary's own nic (here a second client namespace with the same address).
        let f = ctl(&ssock, &["failover"]).unwrap_or_else(|e| panic!("{e}\n{}", cx.logs()));
        assert_eq!(f["failovers"].as_u64(), Some(1), "{f}");
        cx.client_round(
            &format!("{label}: secondary failed over"),
            Mode::SecondaryFailedOver,
        );
    }

    // Graceful stop: both exit 0 with balanced accounting.
    stop_both(&mut primary, &mut secondary);
    drop(sechost);
    drop(link_pair);
    drop(net);
    println!("{label}: total {:.1}s", t_start.elapsed().as_secs_f64());
}
