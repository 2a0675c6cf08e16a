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

/// One run of the whole scenario.
#[derive(Clone, Copy)]
struct Variant {
    link: Link,
    shards: u32,
}

struct Ctx<'a> {
    lab: &'a Lab,
}

impl Ctx<'_> {
    fn logs(&self) -> String {
        self.lab.logs()
    }

    fn stats(&self) -> (serde_json::Value, serde_json::Value) {
        self.lab.stats()
    }

    /// The client's request/response and bulk cases; returns their RESULT map.
    fn client_round(&self, label: &str, mode: Mode) {
        let t0 = Instant::now();
        let (p0, s0) = self.stats();
        let client = match mode {
            Mode::SecondaryFailedOver => "client2",
            _ => "client",
        };
        let (ok, out) = self.lab.client(
            client,
            &[
                "client",
                VM_IP,
                &CONNS.to_string(),
                &BULK.to_string(),
                &PAR.to_string(),
            ],
            Duration::from_secs(60),
        );
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
    if !lab_available("pipeline_netns") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let t_start = Instant::now();
    let mut lab = Lab::start(
        label,
        LabOptions {
            link: v.link,
            shards: v.shards,
            client2: true,
        },
    );
    let (psock, py) = (lab.psock.clone(), lab.py.clone());
    let ssock = lab.ssock.clone();
    let dir = lab.dir.clone();

    {
        let cx = Ctx { lab: &lab };
        for ts in [0, 1] {
            lab.timestamps(ts == 1);
            cx.client_round(&format!("{label}: tcp_timestamps={ts}"), Mode::Colo);
        }

        // A service whose answer differs on the SVM: the compare must hold the PVM's answer
        // and raise a divergence; a checkpoint-done (what the COLO frame sends once the SVM is
        // a copy of the PVM) then releases the held answer to the client.
        let client = lab.net.host("client");
        let dcmd = client.cmd(&["python3", py.to_str().unwrap(), "diverge", VM_IP]);
        let mut dclient = Proc::spawn("diverge", dcmd, &dir.join("diverge.log"));
        let mut mgmt = serde_json::Value::Null;
        // The shard counts the divergence first; management learns its reason from the event
        // channel a moment later: wait until both agree (reading the reasons right after the
        // data-plane counter raced, ~2 in 15 runs).
        let diverged = wait_until(Duration::from_secs(10), || match ctl(&psock, &["stats"]) {
            Ok(p) => {
                mgmt = p["mgmt"].clone();
                total(&p, "divergences") > 0
                    && mgmt["divergences_by_reason"]["payload_mismatch"].as_u64() >= Some(1)
            }
            _ => false,
        });
        let (p, s) = cx.stats();
        assert!(
            diverged,
            "no payload divergence (data plane and management) for a service answering \
             differently\nclient: {}\nprimary {p}\nsecondary {s}\n{}",
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
    lab.stop();
    drop(lab);
    println!("{label}: total {:.1}s", t_start.elapsed().as_secs_f64());
}
