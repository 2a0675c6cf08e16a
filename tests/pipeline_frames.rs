//! Frames the pipeline must not pass on as they are, each test in a child process (EAL once
//! per process), on ring-pair ports.
//!
//! Multi-segment mbufs where frames enter: chains built with `rte_pktmbuf_chain` travel
//! through ring-pair ports (the ring PMD passes the chain as it is, as net_tap or vhost would
//! hand one over) into the mirror and the redirector (PVM port and link). A chain that fits
//! its first mbuf arrives whole and one segment (`linearized`); one that does not is dropped
//! (`drop_multiseg`): no stage ever sees only a chain's first segment.
//!
//! Runts where frames leave: a transmit queue never sends one (`drop_runt`), and the mirror
//! gives a runt client frame to neither VM.

mod dpdk_common;

use dpdk_common::{eal_args, in_child, result, spawn};

#[cfg(test)]
mod child {
    use super::result;
    use colo_proxy::dpdk::{self, Eal, Mbuf, MbufBurst, Mempool, Port, PortConfig, RxQueue};
    use colo_proxy::pipeline::counters::{Counter, LcoreCounters};
    use colo_proxy::pipeline::io::{RingOut, TxBuf, BURST};
    use colo_proxy::pipeline::lcore::{LoopCtx, Phase, Stage};
    use colo_proxy::pipeline::linkio::{LinkRx, LinkTx};
    use colo_proxy::pipeline::stages::{MirrorStage, RedirectorStage};

    /// A UDP frame of `len` bytes (10.0.0.2:5000 → 10.0.0.1:7000), payload bytes = `mark`.
    pub fn udp_frame(len: usize, mark: u8) -> Vec<u8> {
        let mut f = vec![mark; len];
        f[..14].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
        let ip_len = (len - 14) as u16;
        f[14..34].copy_from_slice(&[
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ]);
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[34..36].copy_from_slice(&5000u16.to_be_bytes());
        f[36..38].copy_from_slice(&7000u16.to_be_bytes());
        f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        f[40..42].copy_from_slice(&[0, 0]);
        f
    }

    /// `frame` as a chain of mbufs, one per `cuts` piece.
    pub fn chain(pool: &Mempool, frame: &[u8], cuts: &[usize]) -> Mbuf {
        let mut pieces = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&frame.len())) {
            let mut m = pool.alloc().expect("mbuf");
            m.set_data(&frame[at..c]).expect("piece fits");
            pieces.push(m);
            at = c;
        }
        let mut it = pieces.into_iter();
        let mut head = it.next().unwrap();
        for m in it {
            head.chain(m).expect("chain");
        }
        assert_eq!(head.nb_segs() as usize, cuts.len() + 1);
        assert_eq!(head.pkt_len() as usize, frame.len());
        head
    }

    pub struct Env {
        _eal: Eal,
        pub pool: Mempool,
        ports: Vec<Port>,
    }

    impl Env {
        pub fn new() -> Env {
            let eal = Eal::init(&super::eal_args(&[])).expect("EAL");
            let pool = Mempool::new("ms", 4095).expect("pool");
            Env {
                _eal: eal,
                pool,
                ports: Vec::new(),
            }
        }

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

        /// Transmit `frames` on port `i` as they are (chains stay chains on a ring port).
        pub fn send(&mut self, i: usize, frames: Vec<Mbuf>) {
            let mut tx = self.ports[i].tx_queue(0).expect("txq");
            let mut b: MbufBurst<BURST> = MbufBurst::new();
            let n = frames.len();
            for m in frames {
                b.push(m).expect("room");
            }
            assert_eq!(tx.tx_burst(&mut b), n);
        }
    }

    pub fn cx(c: &LcoreCounters) -> LoopCtx<'_> {
        LoopCtx {
            now_ns: 1,
            counters: c,
            phase: Phase::Run,
        }
    }

    /// What arrived: every frame's segment count and bytes.
    fn collect(rx: &mut RxQueue) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut b: MbufBurst<BURST> = MbufBurst::new();
            if rx.rx_burst(&mut b) == 0 {
                return out;
            }
            out.extend(b.drain().map(|m| (m.nb_segs(), m.data().to_vec())));
        }
    }

    fn ring_frames(rc: &mut dpdk::RingConsumer<Mbuf>) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut b: MbufBurst<BURST> = MbufBurst::new();
            if rc.dequeue_burst(&mut b) == 0 {
                return out;
            }
            out.extend(b.drain().map(|m| (m.nb_segs(), m.data().to_vec())));
        }
    }

    /// Print what arrived against what was sent: `<tag>_whole` frames equal to a sent small
    /// chain or plain frame and one segment, `<tag>_partial` anything else.
    fn report(tag: &str, got: &[(u16, Vec<u8>)], small: &[u8], plain: &[u8]) {
        let whole = got
            .iter()
            .filter(|(segs, d)| *segs == 1 && (d == small || d == plain))
            .count();
        result(&format!("{tag}_whole"), whole);
        result(&format!("{tag}_partial"), got.len() - whole);
    }

    /// The three frames every path gets: a small chain (fits its first mbuf), a big chain
    /// (2 × 1400 bytes: the first mbuf cannot take the second half) and a plain frame.
    fn frames(pool: &Mempool) -> (Vec<Mbuf>, Vec<u8>, Vec<u8>) {
        let small = udp_frame(160, 0xa1);
        let big = udp_frame(2800, 0xb2);
        let plain = udp_frame(100, 0xc3);
        let mut p = pool.alloc().unwrap();
        p.set_data(&plain).unwrap();
        let v = vec![
            chain(pool, &small, &[40, 100]),
            chain(pool, &big, &[1400]),
            p,
        ];
        (v, small, plain)
    }

    pub fn mbuf_linearize() {
        let env = Env::new();
        let pool = &env.pool;
        let small = udp_frame(160, 1);
        let mut m = chain(pool, &small, &[40, 100]);
        assert_eq!(m.data().len(), 40, "first segment only before");
        assert!(m.linearize());
        assert!(m.is_contiguous());
        assert_eq!(m.data(), &small[..]);
        let mut big = chain(pool, &udp_frame(2800, 2), &[1400]);
        assert!(!big.linearize());
        assert_eq!((big.nb_segs(), big.pkt_len()), (2, 2800), "unchanged");
        // A shared chain is never written.
        let mut shared = chain(pool, &small, &[40]);
        let other = shared.try_clone().unwrap();
        assert!(!shared.linearize());
        drop(other);
        // In a burst: order kept, the big one freed.
        let mut b: MbufBurst<BURST> = MbufBurst::new();
        let plain = udp_frame(64, 3);
        let mut p = pool.alloc().unwrap();
        p.set_data(&plain).unwrap();
        b.push(p).unwrap();
        b.push(big).unwrap();
        b.push(chain(pool, &small, &[100])).unwrap();
        b.push(shared).unwrap();
        let in_use = pool.in_use();
        assert_eq!(b.linearize_from(1), (2, 1));
        // The big chain's two mbufs went back to the pool, and each linearised chain's emptied
        // second segment.
        result("freed", in_use - pool.in_use());
        let left: Vec<Vec<u8>> = b.drain().map(|m| m.data().to_vec()).collect();
        assert_eq!(left, vec![plain, small.clone(), small]);
        drop(m);
        result("in_use_after", pool.in_use());
    }

    /// A transmit queue and the mirror facing runts among good frames.
    pub fn runts_are_never_sent() {
        let mut env = Env::new();
        let (a, b) = env.wire("rt_a", "rt_b");
        let c = LcoreCounters::default();
        let good = udp_frame(60, 0x11);
        let arp_ok = {
            let mut f = vec![0u8; 42];
            f[12..14].copy_from_slice(&[0x08, 0x06]);
            f
        };
        let runts: Vec<Vec<u8>> = vec![
            vec![0xee; 1],
            vec![0xee; 13],
            udp_frame(60, 0x22)[..33].to_vec(), // IPv4 with 19 header bytes
            arp_ok[..41].to_vec(),
        ];
        let mut tx = TxBuf::new(env.port(a).tx_queue(0).unwrap());
        for f in runts.iter().chain([&good, &arp_ok]) {
            let mut m = env.pool.alloc().unwrap();
            m.set_data(f).unwrap();
            c.inc(Counter::Generated);
            tx.push(m, &c);
        }
        tx.flush(&c);
        let mut rx = env.port(b).rx_queue(0).unwrap();
        let got = collect(&mut rx);
        result("tx_sent", got.len());
        result(
            "tx_good",
            got.iter()
                .filter(|(_, d)| *d == good || *d == arp_ok)
                .count(),
        );
        result("tx_drop_runt", c.get(Counter::DropRunt));
        drop(tx);

        // The mirror: client → nic → PVM and link.
        let (client, nic) = env.wire("rt_client", "rt_nic");
        let (pvm, guest) = env.wire("rt_pvm", "rt_guest");
        let (link_p, link_s) = env.wire("rt_link_p", "rt_link_s");
        let m = LcoreCounters::default();
        let nic_rx = env.port(nic).rx_queue(0).unwrap();
        let pvm_tx = TxBuf::new(env.port(pvm).tx_queue(0).unwrap());
        let link_tx = LinkTx::RawPort(TxBuf::new(env.port(link_p).tx_queue(0).unwrap()));
        let mut mirror = MirrorStage::new(nic_rx, pvm_tx, link_tx);
        let frames: Vec<Mbuf> = runts
            .iter()
            .chain([&good])
            .map(|f| {
                let mut x = env.pool.alloc().unwrap();
                x.set_data(f).unwrap();
                x
            })
            .collect();
        env.send(client, frames);
        mirror.poll(&cx(&m));
        mirror.flush(&cx(&m));
        let mut guest_rx = env.port(guest).rx_queue(0).unwrap();
        let mut link_s_rx = env.port(link_s).rx_queue(0).unwrap();
        result("mirror_pvm", collect(&mut guest_rx).len());
        result("mirror_link", collect(&mut link_s_rx).len());
        result("mirror_drop_runt", m.get(Counter::DropRunt));
        let s = c.snapshot().plus(&m.snapshot());
        result("balanced", s.accounting().balanced());
    }

    pub fn stages_see_whole_frames() {
        let mut env = Env::new();
        let (client, nic) = env.wire("ms_client", "ms_nic");
        let (pvm, guest) = env.wire("ms_pvm", "ms_guest");
        let (link_p, link_s) = env.wire("ms_link_p", "ms_link_s");
        let c = LcoreCounters::default();

        // Mirror: client → nic → PVM and link (raw port link).
        let nic_rx = env.port(nic).rx_queue(0).unwrap();
        let pvm_tx = TxBuf::new(env.port(pvm).tx_queue(0).unwrap());
        let link_tx = LinkTx::RawPort(TxBuf::new(env.port(link_p).tx_queue(0).unwrap()));
        let mut mirror = MirrorStage::new(nic_rx, pvm_tx, link_tx);
        let (f, small, plain) = frames(&env.pool);
        env.send(client, f);
        mirror.poll(&cx(&c));
        mirror.flush(&cx(&c));
        let mut guest_rx = env.port(guest).rx_queue(0).unwrap();
        let mut link_s_rx = env.port(link_s).rx_queue(0).unwrap();
        report("mirror_pvm", &collect(&mut guest_rx), &small, &plain);
        report("mirror_link", &collect(&mut link_s_rx), &small, &plain);
        drop(mirror);

        // Redirector: PVM output (guest → pvm) and the secondary's (link_s → link_p).
        let (pp, mut pc) = dpdk::ring::<Mbuf>("ms_to_p", 1024, Default::default()).unwrap();
        let (sp, mut sc) = dpdk::ring::<Mbuf>("ms_to_s", 1024, Default::default()).unwrap();
        let pvm_rx = env.port(pvm).rx_queue(0).unwrap();
        let link_rx = LinkRx::RawPort(env.port(link_p).rx_queue(0).unwrap());
        let mut r = RedirectorStage::new(
            pvm_rx,
            link_rx,
            vec![RingOut::new(pp)],
            vec![RingOut::new(sp)],
        );
        let (f, _, _) = frames(&env.pool);
        env.send(guest, f);
        let (f, _, _) = frames(&env.pool);
        env.send(link_s, f);
        r.poll(&cx(&c));
        r.flush(&cx(&c));
        let to_p = ring_frames(&mut pc);
        let to_s = ring_frames(&mut sc);
        report("redirector_pvm", &to_p, &small, &plain);
        report("redirector_link", &to_s, &small, &plain);
        // The test takes what the redirector handed on, as a shard would: out on the nic.
        c.add(Counter::Tx, (to_p.len() + to_s.len()) as u64);
        let s = c.snapshot();
        result("rx", s.get(Counter::Rx));
        result("linearized", s.get(Counter::Linearized));
        result("drop_multiseg", s.get(Counter::DropMultiseg));
        result("balanced", s.accounting().balanced());
        result("drops", s.drops_list());
    }
}

#[test]
fn chains_are_linearised_when_they_fit_and_freed_when_not() {
    const TEST: &str = "chains_are_linearised_when_they_fit_and_freed_when_not";
    if in_child(TEST) {
        child::mbuf_linearize();
        return;
    }
    let c = spawn(TEST);
    c.assert_ok();
    assert_eq!(c.num("freed"), 4, "{}", c.dump());
    assert_eq!(c.num("in_use_after"), 0, "{}", c.dump());
}

#[test]
fn stages_never_see_a_first_segment_alone() {
    const TEST: &str = "stages_never_see_a_first_segment_alone";
    if in_child(TEST) {
        child::stages_see_whole_frames();
        return;
    }
    let c = spawn(TEST);
    c.assert_ok();
    for path in [
        "mirror_pvm",
        "mirror_link",
        "redirector_pvm",
        "redirector_link",
    ] {
        assert_eq!(c.num(&format!("{path}_whole")), 2, "{path}\n{}", c.dump());
        assert_eq!(c.num(&format!("{path}_partial")), 0, "{path}\n{}", c.dump());
    }
    // 3 frames on each of the nic, the PVM port and the link; on each port the small chain
    // was linearised and the big one dropped.
    assert_eq!(c.num("rx"), 9);
    assert_eq!(c.num("linearized"), 3);
    assert_eq!(c.num("drop_multiseg"), 3);
    assert_eq!(c.get("drops"), "drop_multiseg=3");
    assert_eq!(c.get("balanced"), "true", "{}", c.dump());
}

#[test]
fn runts_are_never_transmitted() {
    const TEST: &str = "runts_are_never_transmitted";
    if in_child(TEST) {
        child::runts_are_never_sent();
        return;
    }
    let c = spawn(TEST);
    c.assert_ok();
    // Four runts (1 and 13 bytes, a 19-byte IPv4 header, a 27-byte ARP body) among a UDP
    // frame and a full ARP frame.
    assert_eq!(c.num("tx_sent"), 2, "{}", c.dump());
    assert_eq!(c.num("tx_good"), 2, "{}", c.dump());
    assert_eq!(c.num("tx_drop_runt"), 4);
    // Same input: a runt client frame reaches neither VM, counted once.
    assert_eq!(c.num("mirror_pvm"), 1, "{}", c.dump());
    assert_eq!(c.num("mirror_link"), 1, "{}", c.dump());
    assert_eq!(c.num("mirror_drop_runt"), 4);
    assert_eq!(c.get("balanced"), "true", "{}", c.dump());
}
