//! Back-pressure and input atomicity on DPDK ring-pair ports, each in a child process (EAL
//! once per process): the mirror feeds both VMs or neither, and stops reading the NIC while a
//! side is full; the redirector stops reading the PVM port while a shard's backlog is above
//! its high watermark and resumes below the low one, never pausing the link; the secondary
//! raises `svm_input_lost` when the SVM port refuses mirrored frames.

mod dpdk_common;

use dpdk_common::{eal_args, in_child, result, spawn};

#[cfg(test)]
mod child {
    use super::result;
    use colo_proxy::compare::Backlog;
    use colo_proxy::control::Event;
    use colo_proxy::dpdk::{
        self, Eal, Mbuf, MbufBurst, Mempool, Port, PortConfig, RingConsumer, RxQueue, TxQueue,
    };
    use colo_proxy::link::encap::{EncapConfig, EncapTx};
    use colo_proxy::mgmt::{EventSender, Input};
    use colo_proxy::pipeline::backpressure::{BacklogBoard, PvmGate, Watermarks};
    use colo_proxy::pipeline::counters::{Counter, LcoreCounters};
    use colo_proxy::pipeline::io::{RingOut, TxBuf, BURST};
    use colo_proxy::pipeline::lcore::{LoopCtx, Phase, Stage};
    use colo_proxy::pipeline::linkio::{LinkRx, LinkTx};
    use colo_proxy::pipeline::stages::{MirrorStage, RedirectorStage, RewriterStage};
    use colo_proxy::rewrite::{Rewriter, RewriterConfig};
    use std::collections::hash_map::{Entry, HashMap};

    pub struct Env {
        _eal: Eal,
        pub pool: Mempool,
        ports: Vec<Port>,
        // The test's own ends' queues (a queue can be taken once).
        txq: HashMap<usize, TxQueue>,
        rxq: HashMap<usize, RxQueue>,
    }

    impl Env {
        pub fn new() -> Env {
            let eal = Eal::init(&super::eal_args(&[])).expect("EAL");
            let pool = Mempool::new("bp", 8191).expect("pool");
            Env {
                _eal: eal,
                pool,
                ports: Vec::new(),
                txq: HashMap::new(),
                rxq: HashMap::new(),
            }
        }

        /// Two started ports wired back to back; returns their indexes.
        pub fn wire(&mut self, a: &str, b: &str) -> (usize, usize) {
            let (x, y) = Port::ring_pair(a, b).expect("ring pair");
            for id in [x, y] {
                let mut p = Port::open(id, &PortConfig::default(), &self.pool).expect("open");
                p.start().expect("start");
                self.ports.push(p);
            }
            (self.ports.len() - 2, self.ports.len() - 1)
        }

        pub fn port(&mut self, i: usize) -> &mut Port {
            &mut self.ports[i]
        }

        /// Send `n` 60-byte frames (marked with `mark`) from port `i`; returns how many the
        /// ring took.
        pub fn send(&mut self, i: usize, n: usize, mark: u8) -> usize {
            let pool = self.pool.clone();
            let tx = match self.txq.entry(i) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(self.ports[i].tx_queue(0).expect("txq")),
            };
            let mut sent = 0;
            while sent < n {
                let mut b: MbufBurst<BURST> = MbufBurst::new();
                for _ in 0..(n - sent).min(BURST) {
                    let mut m = pool.alloc().expect("mbuf");
                    let mut f = [mark; 60];
                    f[12] = 0x08; // ARP: passes the rewriter unchanged
                    f[13] = 0x06;
                    m.set_data(&f).expect("fits");
                    b.push(m).expect("room");
                }
                let k = tx.tx_burst(&mut b);
                sent += k;
                if !b.is_empty() {
                    break; // the ring is full; b's rest is freed
                }
            }
            sent
        }

        /// Receive everything waiting on port `i`; returns (frames, frames marked `mark`).
        pub fn drain(&mut self, i: usize, mark: u8) -> (usize, usize) {
            let rx = match self.rxq.entry(i) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(self.ports[i].rx_queue(0).expect("rxq")),
            };
            let (mut n, mut marked) = (0, 0);
            loop {
                let mut b: MbufBurst<BURST> = MbufBurst::new();
                let k = rx.rx_burst(&mut b);
                if k == 0 {
                    break;
                }
                n += k;
                marked += b.as_slice().iter().filter(|m| m.data()[0] == mark).count();
            }
            (n, marked)
        }
    }

    pub fn cx(c: &LcoreCounters, now_ns: u64) -> LoopCtx<'_> {
        LoopCtx {
            now_ns,
            counters: c,
            phase: Phase::Run,
        }
    }

    fn ring_count(r: &RingConsumer<Mbuf>) -> u32 {
        r.count()
    }

    /// A link whose copy pool is empty refuses the mirror's clones: the PVM misses those
    /// frames too, each counted once; with the pool back, both get every frame.
    pub fn mirror_drops_for_both() {
        let mut env = Env::new();
        let (client, nic) = env.wire("m_client", "m_nic");
        let (pvm, guest) = env.wire("m_pvm", "m_guest");
        let (link_p, link_s) = env.wire("m_link_p", "m_link_s");
        let copies = Mempool::new("bp_copies", 1023).expect("copy pool");
        let mut held = Vec::new();
        while let Some(m) = copies.alloc() {
            held.push(m);
        }
        let nic_rx = env.port(nic).rx_queue(0).unwrap();
        let pvm_tx = TxBuf::new(env.port(pvm).tx_queue(0).unwrap());
        let link_tx = LinkTx::EncapPort {
            tx: TxBuf::new(env.port(link_p).tx_queue(0).unwrap()),
            encap: EncapTx::new(EncapConfig::default(), 0),
            pool: copies.clone(),
            hb: Default::default(),
        };
        let mut mirror = MirrorStage::new(nic_rx, pvm_tx, link_tx);
        let c = LcoreCounters::default();

        assert_eq!(env.send(client, 10, 1), 10);
        assert_eq!(mirror.poll(&cx(&c, 1)), 10);
        let (to_pvm, _) = env.drain(guest, 1);
        let (to_link, _) = env.drain(link_s, 1);
        result("refused_pvm", to_pvm);
        result("refused_link", to_link);
        result("refused_dropped", c.get(Counter::DropInputBoth));

        drop(held);
        assert_eq!(env.send(client, 10, 2), 10);
        assert_eq!(mirror.poll(&cx(&c, 2)), 10);
        let (to_pvm, marked_pvm) = env.drain(guest, 2);
        // The link's frames carry the encapsulation header in front: count them.
        let (to_link, _) = env.drain(link_s, 2);
        result("ok_pvm", format!("{to_pvm}/{marked_pvm}"));
        result("ok_link", to_link);
        mirror.flush(&cx(&c, 3));
        let s = c.snapshot();
        result("dropped_total", s.dropped());
        result("balanced", s.accounting().balanced());
    }

    /// One side full: the NIC is left unread (nothing is dropped by the proxy, nothing reaches
    /// one side only); once the side drains, both get every frame.
    pub fn mirror_gates_nic_while_a_side_is_full() {
        let mut env = Env::new();
        let (client, nic) = env.wire("g_client", "g_nic");
        let (pvm, guest) = env.wire("g_pvm", "g_guest");
        let (link_p, link_s) = env.wire("g_link_p", "g_link_s");
        let nic_rx = env.port(nic).rx_queue(0).unwrap();
        let pvm_tx = TxBuf::new(env.port(pvm).tx_queue(0).unwrap());
        let link_tx = LinkTx::RawPort(TxBuf::new(env.port(link_p).tx_queue(0).unwrap()));
        let mut mirror = MirrorStage::new(nic_rx, pvm_tx, link_tx);
        let c = LcoreCounters::default();
        let mut now = 0;

        for (blocked, other, name) in [(guest, link_s, "pvm"), (link_s, guest, "link")] {
            // Feed 1500 frames (more than the blocked side's 1024-frame ring), reading only
            // the other side.
            let (mut injected, mut other_got) = (0, 0);
            for _ in 0..200 {
                injected += env.send(client, (1500 - injected).min(BURST), 3);
                now += 1;
                mirror.poll(&cx(&c, now));
                other_got += env.drain(other, 3).0;
            }
            let gated = c.get(Counter::NicRxGated);
            let rx = c.get(Counter::Rx);
            for _ in 0..5 {
                now += 1;
                mirror.poll(&cx(&c, now));
            }
            result(&format!("{name}_gated"), (gated > 0) as u8);
            result(
                &format!("{name}_nic_unread"),
                (c.get(Counter::Rx) == rx && c.get(Counter::NicRxGated) == gated + 5) as u8,
            );
            // Now drain both until every injected frame has gone through.
            let mut blocked_got = 0;
            for _ in 0..500 {
                now += 1;
                mirror.poll(&cx(&c, now));
                blocked_got += env.drain(blocked, 3).0;
                other_got += env.drain(other, 3).0;
                if blocked_got >= injected && other_got >= injected {
                    break;
                }
            }
            result(&format!("{name}_injected"), injected);
            result(&format!("{name}_blocked_got"), blocked_got);
            result(&format!("{name}_other_got"), other_got);
        }
        result("proxy_drops", c.snapshot().dropped());
        mirror.flush(&cx(&c, now + 1));
        result("balanced", c.snapshot().accounting().balanced());
    }

    /// The redirector stops reading the PVM port while the shard's backlog is high, keeps
    /// reading the link, and resumes only at the low watermark.
    pub fn redirector_pauses_pvm_port() {
        let mut env = Env::new();
        let (pvm, guest) = env.wire("r_pvm", "r_guest");
        let (link_p, link_s) = env.wire("r_link_p", "r_link_s");
        let (pp, pc) = dpdk::ring::<Mbuf>("r_to_p", 1024, Default::default()).unwrap();
        let (sp, sc) = dpdk::ring::<Mbuf>("r_to_s", 1024, Default::default()).unwrap();
        let board = BacklogBoard::new(1);
        let w = Watermarks {
            high_packets: 100,
            high_bytes: 1 << 30,
            low_packets: 50,
            low_bytes: 1 << 29,
        };
        let pvm_rx = env.port(pvm).rx_queue(0).unwrap();
        let link_rx = LinkRx::RawPort(env.port(link_p).rx_queue(0).unwrap());
        let mut r = RedirectorStage::new(
            pvm_rx,
            link_rx,
            vec![RingOut::new(pp)],
            vec![RingOut::new(sp)],
        )
        .with_backpressure(board.clone(), PvmGate::new(w, 0, 1));
        let c = LcoreCounters::default();
        let backlog = |p: u64| Backlog {
            primary_packets: p,
            primary_bytes: p * 60,
            ..Backlog::default()
        };

        board.publish(0, &backlog(100), 0);
        assert_eq!(env.send(guest, 10, 4), 10);
        assert_eq!(env.send(link_s, 5, 5), 5);
        for t in 1..=3 {
            r.poll(&cx(&c, t * 1_000));
        }
        result("paused_to_primary", ring_count(&pc));
        result("paused_to_secondary", ring_count(&sc));
        result("paused_gated", c.get(Counter::PvmRxGated));
        result("paused_pauses", c.get(Counter::PvmPauses));
        board.publish(0, &backlog(60), 3_500);
        r.poll(&cx(&c, 4_000));
        result("between_to_primary", ring_count(&pc));
        board.publish(0, &backlog(50), 4_500);
        r.poll(&cx(&c, 5_000));
        result("low_to_primary", ring_count(&pc));
        result("paused_ns", c.get(Counter::PvmPausedNs));
        // Frames in the rings are freed with the consumers; counted as they would be by a
        // shard, so the accounting below covers the redirector alone.
        drop((pc, sc));
        result("rx", c.get(Counter::Rx));
    }

    /// A UDP datagram 10.0.0.2:5000 → 10.0.0.1:7000 carrying `seq` (IPv4 header checksum
    /// filled in, UDP checksum 0 = none).
    fn udp_frame(seq: u32) -> Vec<u8> {
        let payload = [&seq.to_be_bytes()[..], &[0x42; 14]].concat();
        let mut f = vec![0u8; 14 + 20 + 8];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip_len = (20 + 8 + payload.len()) as u16;
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 1]);
        let sum: u32 = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let udp = &mut f[34..42];
        udp[0..2].copy_from_slice(&5000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&7000u16.to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&payload);
        f
    }

    impl Env {
        /// Send `frames` from port `i` (all must fit).
        fn send_frames(&mut self, i: usize, frames: impl Iterator<Item = Vec<u8>>) -> usize {
            let pool = self.pool.clone();
            let tx = match self.txq.entry(i) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(self.ports[i].tx_queue(0).expect("txq")),
            };
            let mut sent = 0;
            let mut b: MbufBurst<BURST> = MbufBurst::new();
            for f in frames {
                let mut m = pool.alloc().expect("mbuf");
                m.set_data(&f).expect("fits");
                b.push(m).expect("room");
                if b.is_full() {
                    sent += tx.tx_burst(&mut b);
                    assert!(b.is_empty(), "the ring took the burst");
                }
            }
            sent += tx.tx_burst(&mut b);
            sent
        }
    }

    /// The whole loop: a real compare shard publishes its backlog, the redirector pauses the
    /// PVM port at the high watermark while the link keeps being read, the secondary's
    /// datagrams drain the backlog, the port resumes, everything is released matched.
    pub fn shard_backlog_gates_the_redirector() {
        use colo_proxy::compare::{Comparator, CompareConfig};
        use colo_proxy::pipeline::io::RingIn;
        use colo_proxy::pipeline::latency::{LatencyRecorder, SharedHistogram};
        use colo_proxy::pipeline::stages::CompareStage;

        let mut env = Env::new();
        let (pvm, guest) = env.wire("e_pvm", "e_guest");
        let (link_p, link_s) = env.wire("e_link_p", "e_link_s");
        let (nic, client) = env.wire("e_nic", "e_client");
        let (pp, pc) = dpdk::ring::<Mbuf>("e_to_p", 1024, Default::default()).unwrap();
        let (sp, sc) = dpdk::ring::<Mbuf>("e_to_s", 1024, Default::default()).unwrap();
        let board = BacklogBoard::new(1);
        let w = Watermarks {
            high_packets: 64,
            high_bytes: 1 << 30,
            low_packets: 32,
            low_bytes: 1 << 29,
        };
        let pvm_rx = env.port(pvm).rx_queue(0).unwrap();
        let link_rx = LinkRx::RawPort(env.port(link_p).rx_queue(0).unwrap());
        let mut r = RedirectorStage::new(
            pvm_rx,
            link_rx,
            vec![RingOut::new(pp)],
            vec![RingOut::new(sp)],
        )
        .with_backpressure(board.clone(), PvmGate::new(w, 0, 1));
        let (events, _inbox) = EventSender::channel(64);
        let nic_tx = TxBuf::new(env.port(nic).tx_queue(0).unwrap());
        let mut shard = CompareStage::new(
            0,
            RingIn::new(pc),
            RingIn::new(sc),
            nic_tx,
            Comparator::new(CompareConfig::default()),
            events,
            LatencyRecorder::new(SharedHistogram::default()),
        )
        .with_backlog(board.clone());
        let c = LcoreCounters::default();
        let mut t = 0;
        let mut step = |r: &mut RedirectorStage, shard: &mut CompareStage| {
            t += 1_000;
            r.poll(&cx(&c, t));
            shard.poll(&cx(&c, t));
        };

        assert_eq!(env.send_frames(guest, (0..200).map(udp_frame)), 200);
        for _ in 0..20 {
            step(&mut r, &mut shard);
        }
        result("held_backlog", board.primary(0).0);
        result("held_rx", c.get(Counter::Rx));
        result("held_gated", (c.get(Counter::PvmRxGated) > 0) as u8);
        // The SVM's identical output, in bursts, while the PVM port is paused.
        let mut released = 0;
        for chunk in 0..(200 / 20) {
            let k = chunk * 20;
            assert_eq!(env.send_frames(link_s, (k..k + 20).map(udp_frame)), 20);
            for _ in 0..4 {
                step(&mut r, &mut shard);
            }
            released += env.drain(client, 0).0;
        }
        for _ in 0..20 {
            step(&mut r, &mut shard);
            released += env.drain(client, 0).0;
        }
        result("released", released);
        result("matched", c.get(Counter::ReleasedMatched));
        result("pauses", c.get(Counter::PvmPauses));
        result("final_backlog", board.primary(0).0);
        result("drops", c.snapshot().dropped());
    }

    /// The SVM port refuses mirrored frames (its guest does not read): each lost frame is
    /// counted `drop_svm_input_lost` and management gets an `svm_input_lost` divergence.
    pub fn svm_input_lost_event() {
        let mut env = Env::new();
        let (link_p, link_s) = env.wire("s_link_p", "s_link_s");
        let (svm, _guest) = env.wire("s_svm", "s_guest");
        let link_rx = LinkRx::RawPort(env.port(link_s).rx_queue(0).unwrap());
        let link_tx = LinkTx::RawPort(TxBuf::new(env.port(link_s).tx_queue(0).unwrap()));
        let svm_tx = TxBuf::new(env.port(svm).tx_queue(0).unwrap());
        let svm_rx = env.port(svm).rx_queue(0).unwrap();
        let (events, inbox) = EventSender::channel(64);
        let mut rw = RewriterStage::new(
            link_rx,
            svm_tx,
            svm_rx,
            link_tx,
            None,
            Rewriter::new(RewriterConfig::default()),
            env.pool.clone(),
        )
        .with_events(events);
        let c = LcoreCounters::default();
        let mut sent = 0;
        let mut t = 0;
        while sent < 1100 {
            sent += env.send(link_p, BURST, 6);
            t += 1_000_000;
            rw.poll(&cx(&c, t));
        }
        for _ in 0..4 {
            t += 1_000_000;
            rw.poll(&cx(&c, t));
        }
        result("sent", sent);
        result("lost", c.get(Counter::DropSvmInputLost));
        result("divergences", c.get(Counter::Divergences));
        let mut reasons = Vec::new();
        while let Ok(i) = inbox.try_recv() {
            if let Input::Event(Event::Divergence { reason, side, .. }) = i {
                reasons.push(format!("{reason}/{side:?}"));
            }
        }
        reasons.dedup();
        result("reasons", reasons.join(","));
    }
}

#[test]
fn link_refusing_frames_makes_the_pvm_miss_them_too() {
    const TEST: &str = "link_refusing_frames_makes_the_pvm_miss_them_too";
    if in_child(TEST) {
        child::mirror_drops_for_both();
        return;
    }
    let c = spawn(TEST);
    c.assert_ok();
    assert_eq!(
        c.num("refused_pvm"),
        0,
        "the PVM must not get what the link refused\n{}",
        c.dump()
    );
    assert_eq!(c.num("refused_link"), 0);
    assert_eq!(
        c.num("refused_dropped"),
        10,
        "each client frame counted once"
    );
    assert_eq!(c.get("ok_pvm"), "10/10");
    assert_eq!(c.num("ok_link"), 10);
    assert_eq!(c.num("dropped_total"), 10);
    assert_eq!(c.get("balanced"), "true");
}

#[test]
fn nic_is_not_read_while_either_side_is_full() {
    const TEST: &str = "nic_is_not_read_while_either_side_is_full";
    if in_child(TEST) {
        child::mirror_gates_nic_while_a_side_is_full();
        return;
    }
    let c = spawn(TEST);
    c.assert_ok();
    for side in ["pvm", "link"] {
        assert_eq!(
            c.num(&format!("{side}_gated")),
            1,
            "{side} full: NIC gated\n{}",
            c.dump()
        );
        assert_eq!(
            c.num(&format!("{side}_nic_unread")),
            1,
            "{side} full: polls leave the NIC unread\n{}",
            c.dump()
        );
        let injected = c.num(&format!("{side}_injected"));
        assert!(
            injected > 1100,
            "more than the blocked ring holds: {injected}"
        );
        assert_eq!(
            c.num(&format!("{side}_blocked_got")),
            injected,
            "{}",
            c.dump()
        );
        assert_eq!(
            c.num(&format!("{side}_other_got")),
            injected,
            "{}",
            c.dump()
        );
    }
    assert_eq!(c.num("proxy_drops"), 0);
    assert_eq!(c.get("balanced"), "true");
}

#[test]
fn high_backlog_pauses_the_pvm_port_until_the_low_watermark() {
    const TEST: &str = "high_backlog_pauses_the_pvm_port_until_the_low_watermark";
    if in_child(TEST) {
        child::redirector_pauses_pvm_port();
        return;
    }
    let c = spawn(TEST);
    c.assert_ok();
    assert_eq!(
        c.num("paused_to_primary"),
        0,
        "PVM port not read\n{}",
        c.dump()
    );
    assert_eq!(c.num("paused_to_secondary"), 5, "the link is never paused");
    assert_eq!(c.num("paused_gated"), 3);
    assert_eq!(c.num("paused_pauses"), 1);
    assert_eq!(
        c.num("between_to_primary"),
        0,
        "hysteresis: still paused above low"
    );
    assert_eq!(c.num("low_to_primary"), 10, "resumed at the low watermark");
    assert!(c.num("paused_ns") >= 3_000, "pause time counted");
    assert_eq!(c.num("rx"), 15);
}

#[test]
fn svm_port_refusing_mirrored_frames_raises_svm_input_lost() {
    const TEST: &str = "svm_port_refusing_mirrored_frames_raises_svm_input_lost";
    if in_child(TEST) {
        child::svm_input_lost_event();
        return;
    }
    let c = spawn(TEST);
    c.assert_ok();
    let (sent, lost) = (c.num("sent"), c.num("lost"));
    assert!(sent >= 1100, "{}", c.dump());
    assert_eq!(
        lost,
        sent - 1024,
        "all but the SVM ring's 1024 are lost\n{}",
        c.dump()
    );
    assert!(c.num("divergences") >= 1);
    assert_eq!(c.get("reasons"), "svm_input_lost/Secondary");
}

#[test]
fn a_shard_above_its_high_watermark_stops_the_redirector_reading_the_pvm_port() {
    const TEST: &str = "a_shard_above_its_high_watermark_stops_the_redirector_reading_the_pvm_port";
    if in_child(TEST) {
        child::shard_backlog_gates_the_redirector();
        return;
    }
    let c = spawn(TEST);
    c.assert_ok();
    let held = c.num("held_backlog");
    assert!(
        (64..=96).contains(&held),
        "paused at the high watermark (one burst may follow): {held}\n{}",
        c.dump()
    );
    assert_eq!(c.num("held_rx"), held, "the rest stays in the PVM port");
    assert_eq!(c.num("held_gated"), 1);
    assert_eq!(c.num("released"), 200, "{}", c.dump());
    assert_eq!(c.num("matched"), 200);
    assert!(
        c.num("pauses") >= 2,
        "paused again after resuming\n{}",
        c.dump()
    );
    assert_eq!(c.num("final_backlog"), 0);
    assert_eq!(c.num("drops"), 0);
}
