//! Mempool/mbuf, rings, ports and lcore launch, each in its own EAL child process.

mod dpdk_common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use colo_proxy::buf::{BufError, PacketBuf};
use colo_proxy::dpdk::{
    self, launch_on, ring, worker_lcores, Burst, Eal, Mbuf, MbufBurst, Mempool, Port, PortConfig,
    RingFlags, Token,
};
use dpdk_common::{eal_args, in_child, result, spawn};

fn frame(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|b| (b * 7 + i * 13) as u8).collect()
}

fn filled(pool: &Mempool, bytes: &[u8]) -> Mbuf {
    let mut m = pool.alloc().expect("mbuf");
    m.set_data(bytes).expect("fits");
    m
}

#[test]
fn mbuf_alloc_clone_free() {
    if in_child("mbuf_alloc_clone_free") {
        let _eal = Eal::init(&eal_args(&[])).expect("EAL");
        let pool = Mempool::new("mbuf_t", 255).expect("pool");
        result("baseline", pool.in_use());

        let mut m = filled(&pool, &frame(1, 100));
        result("len", m.data().len());
        result("in_use_1", pool.in_use());
        m.set_timestamp(0xdead_beef);
        let c = m.try_clone().expect("clone");
        result("refcnt_after_clone", m.refcnt());
        result("clone_refcnt", c.refcnt());
        result(
            "same_data",
            (c.data() == m.data() && c.data().as_ptr() == m.data().as_ptr()) as u8,
        );
        result("clone_ts", format!("{:x}", c.timestamp()));
        result("in_use_clone", pool.in_use());
        // Mutating a shared mbuf is refused (panic caught here), data untouched.
        let refused = catch_unwind(AssertUnwindSafe(|| m.data_mut()[0] = 0)).is_err();
        result("shared_mut_refused", refused as u8);
        result("try_data_mut_shared", m.try_data_mut().is_none() as u8);
        drop(c);
        result("refcnt_after_drop", m.refcnt());
        result("in_use_after_clone_drop", pool.in_use());

        // PacketBuf operations on the now-unique mbuf.
        let head = m.headroom() as usize;
        m.prepend(4)
            .expect("prepend")
            .copy_from_slice(&[9, 9, 9, 9]);
        result("after_prepend", m.len());
        result(
            "prepend_bytes_ok",
            (m.data()[..4] == [9, 9, 9, 9] && m.data()[4..] == frame(1, 100)[..]) as u8,
        );
        result(
            "too_much_prepend",
            (m.prepend(head + 1) == Err(BufError::NoHeadroom)) as u8,
        );
        m.adj(4).expect("adj");
        m.trim(10).expect("trim");
        result("after_adj_trim", m.len());
        result(
            "adj_trim_fields",
            (m.pkt_len() as usize == m.len()
                && m.headroom() as usize == head
                && m.data() == &frame(1, 100)[..90]) as u8,
        );
        m.trim(0).expect("trim 0");
        m.adj(0).expect("adj 0");
        result("after_zero_adj_trim", m.len());
        result(
            "trim_too_much",
            (m.trim(1000) == Err(BufError::TooShort)) as u8,
        );
        let tail = m.tailroom() as usize;
        result(
            "append_too_much",
            (m.append(tail + 1).unwrap_err() == BufError::NoTailroom) as u8,
        );
        m.append(2).expect("append").copy_from_slice(&[1, 2]);
        result("after_append", m.len());
        result("csum_partial_default", m.l4_csum_partial() as u8);
        m.set_ol_flags(dpdk::OL_TX_L4_MASK & (1u64 << 52));
        result("csum_partial_tcp", m.l4_csum_partial() as u8);

        // Bulk allocation into a fixed burst, then free via drop.
        let mut b: MbufBurst<32> = Burst::new();
        pool.alloc_bulk(&mut b, 32).expect("bulk");
        result("bulk_len", b.len());
        result("in_use_bulk", pool.in_use());
        let over = pool.alloc_bulk(&mut b, 1).is_err();
        result("bulk_over_capacity_err", over as u8);
        drop(b);
        drop(m);
        result("in_use_end", pool.in_use());

        // Exhaust the pool: alloc returns None rather than failing hard.
        let mut all = Vec::new();
        while let Some(x) = pool.alloc() {
            all.push(x);
        }
        result("exhausted_at", all.len());
        drop(all);
        result("in_use_final", pool.in_use());
        return;
    }
    let c = spawn("mbuf_alloc_clone_free");
    c.assert_ok();
    assert_eq!(c.num("baseline"), 0);
    assert_eq!(c.num("len"), 100);
    assert_eq!(c.num("in_use_1"), 1);
    assert_eq!(c.num("refcnt_after_clone"), 2);
    assert_eq!(c.num("clone_refcnt"), 2);
    assert_eq!(c.get("same_data"), "1");
    assert_eq!(c.get("clone_ts"), "deadbeef");
    assert_eq!(
        c.num("in_use_clone"),
        1,
        "a refcount clone uses no second mbuf"
    );
    assert_eq!(c.get("shared_mut_refused"), "1");
    assert_eq!(c.get("try_data_mut_shared"), "1");
    assert_eq!(c.num("refcnt_after_drop"), 1);
    assert_eq!(c.num("in_use_after_clone_drop"), 1);
    assert_eq!(c.num("after_prepend"), 104);
    assert_eq!(c.get("prepend_bytes_ok"), "1");
    assert_eq!(c.get("too_much_prepend"), "1");
    assert_eq!(c.num("after_adj_trim"), 90);
    assert_eq!(c.get("trim_too_much"), "1");
    assert_eq!(
        c.get("adj_trim_fields"),
        "1",
        "pkt_len, data_off and bytes after adj + trim"
    );
    assert_eq!(c.num("after_zero_adj_trim"), 90);
    assert_eq!(c.get("append_too_much"), "1");
    assert_eq!(c.num("after_append"), 92);
    assert_eq!(c.get("csum_partial_default"), "0");
    assert_eq!(c.get("csum_partial_tcp"), "1");
    assert_eq!(c.num("bulk_len"), 32);
    assert_eq!(c.num("in_use_bulk"), 33);
    assert_eq!(c.get("bulk_over_capacity_err"), "1");
    assert_eq!(c.num("in_use_end"), 0);
    assert_eq!(c.num("exhausted_at"), 255);
    assert_eq!(c.num("in_use_final"), 0);
}

#[test]
fn ring_round_trip_and_full_ring() {
    if in_child("ring_round_trip_and_full_ring") {
        let _eal = Eal::init(&eal_args(&[])).expect("EAL");
        let pool = Mempool::new("ring_t", 255).expect("pool");

        // Mbufs through a ring keep order and bytes.
        let (mut tx, mut rx) = ring::<Mbuf>(
            "mbuf_ring",
            64,
            RingFlags {
                exact_size: true,
                socket: None,
            },
        )
        .expect("ring");
        result("capacity", tx.capacity());
        let mut b: MbufBurst<32> = Burst::new();
        for i in 0..32 {
            b.push(filled(&pool, &frame(i, 60 + i))).expect("room");
        }
        result("enq", tx.enqueue_burst(&mut b));
        result("left_after_enq", b.len());
        result("count", rx.count());
        let mut out: MbufBurst<32> = Burst::new();
        result("deq", rx.dequeue_burst(&mut out));
        let same = out
            .as_slice()
            .iter()
            .enumerate()
            .all(|(i, m)| m.data() == frame(i, 60 + i).as_slice());
        result("order_and_bytes", same as u8);
        drop(out);

        // A full ring takes what fits and gives the rest back in the burst.
        let mut big: MbufBurst<100> = Burst::new();
        pool.alloc_bulk(&mut big, 100).expect("100 mbufs");
        let n = tx.enqueue_burst(&mut big);
        result("full_enq", n);
        result("full_left", big.len());
        result("full_free_count", tx.free_count());
        let one = pool.alloc().expect("one");
        result("single_enq_full_refused", tx.enqueue(one).is_err() as u8);
        drop(big);
        result("in_use_with_ring_full", pool.in_use());
        // Dropping both ends frees what is still inside.
        drop(tx);
        drop(rx);
        result("in_use_after_ring_drop", pool.in_use());

        // Tokens and boxed messages (control traffic).
        let (mut ttx, mut trx) = ring::<Token>(
            "tok_ring",
            8,
            RingFlags {
                exact_size: true,
                socket: None,
            },
        )
        .expect("ring");
        let mut tb: Burst<Token, 16> = Burst::new();
        for i in 0..16 {
            tb.push(Token(1000 + i)).expect("room");
        }
        result("tok_enq", ttx.enqueue_burst(&mut tb));
        result("tok_first_left", tb.pop().map(|t| t.0).unwrap_or(0));
        let mut got = Vec::new();
        while let Some(t) = trx.dequeue() {
            got.push(t.0);
        }
        result(
            "tok_seq_ok",
            (got == (1000..1008).collect::<Vec<u64>>()) as u8,
        );
        let (mut btx, mut brx) =
            ring::<Box<String>>("box_ring", 16, RingFlags::default()).expect("ring");
        btx.enqueue(Box::new("hello".to_string())).expect("enq box");
        result("box", brx.dequeue().map(|b| *b).unwrap_or_default());
        result(
            "dup_name_err",
            ring::<Token>("tok_ring", 8, RingFlags::default()).is_err() as u8,
        );
        return;
    }
    let c = spawn("ring_round_trip_and_full_ring");
    c.assert_ok();
    assert_eq!(c.num("capacity"), 64);
    assert_eq!(c.num("enq"), 32);
    assert_eq!(c.num("left_after_enq"), 0);
    assert_eq!(c.num("count"), 32);
    assert_eq!(c.num("deq"), 32);
    assert_eq!(c.get("order_and_bytes"), "1");
    assert_eq!(c.num("full_enq"), 64);
    assert_eq!(c.num("full_left"), 36);
    assert_eq!(c.num("full_free_count"), 0);
    assert_eq!(c.get("single_enq_full_refused"), "1");
    assert_eq!(c.num("in_use_with_ring_full"), 64);
    assert_eq!(c.num("in_use_after_ring_drop"), 0);
    assert_eq!(c.num("tok_enq"), 8);
    assert_eq!(c.num("tok_first_left"), 1015);
    assert_eq!(c.get("tok_seq_ok"), "1");
    assert_eq!(c.get("box"), "hello");
    assert_eq!(c.get("dup_name_err"), "1");
}

#[test]
fn ring_ports_forward_byte_identical() {
    if in_child("ring_ports_forward_byte_identical") {
        let eal =
            Eal::init(&eal_args(&["--vdev", "net_ring0", "--vdev", "net_ring1"])).expect("EAL");
        let pool = Mempool::new("port_t", 2047).expect("pool");
        result("eal_ports", eal.port_count());

        // EAL-created net_ring vdevs loop back to themselves: what port 0 sends, port 0 receives.
        let id0 = Port::id_by_name("net_ring0").expect("net_ring0");
        let mut p0 = Port::open(id0, &PortConfig::default(), &pool).expect("open net_ring0");
        p0.start().expect("start");
        result("link_up", p0.link().expect("link").up as u8);
        let (mut t0, mut r0) = (p0.tx_queue(0).expect("txq"), p0.rx_queue(0).expect("rxq"));
        result("rxq_twice_err", p0.rx_queue(0).is_err() as u8);
        let mut b: MbufBurst<32> = Burst::new();
        for i in 0..8 {
            b.push(filled(&pool, &frame(i, 64))).expect("room");
        }
        result("loop_sent", t0.tx_burst(&mut b));
        let mut got: MbufBurst<32> = Burst::new();
        result("loop_recv", r0.rx_burst(&mut got));
        drop(got);

        // rte_eth_from_rings pair: what a sends, b receives.
        let (a, bb) = Port::ring_pair("pa", "pb").expect("pair");
        let mut pa = Port::open(a, &PortConfig::default(), &pool).expect("open a");
        let mut pb = Port::open(bb, &PortConfig::default(), &pool).expect("open b");
        pa.start().expect("start a");
        pb.start().expect("start b");
        let (mut ta, mut rb) = (pa.tx_queue(0).expect("txq"), pb.rx_queue(0).expect("rxq"));
        let frames: Vec<Vec<u8>> = (0..32)
            .map(colo_proxy::cli::selfcheck::test_frame)
            .collect();
        let mut b: MbufBurst<32> = Burst::new();
        for f in &frames {
            b.push(filled(&pool, f)).expect("room");
        }
        result("pair_sent", ta.tx_burst(&mut b));
        let mut got: MbufBurst<64> = Burst::new();
        rb.rx_burst(&mut got);
        result("pair_recv", got.len());
        let same = got.len() == 32
            && got
                .as_slice()
                .iter()
                .zip(&frames)
                .all(|(m, f)| m.data() == f.as_slice());
        result("pair_identical", same as u8);
        drop(got);
        result("a_opackets", pa.stats().expect("stats").opackets);
        result("b_ipackets", pb.stats().expect("stats").ipackets);

        // Nobody receives: the ring (1024) fills and tx gives the unsent mbufs back.
        let mut sent = 0;
        let mut unsent = 0;
        for _ in 0..40 {
            let mut b: MbufBurst<32> = Burst::new();
            pool.alloc_bulk(&mut b, 32).expect("bulk");
            sent += ta.tx_burst(&mut b);
            unsent += b.len();
            b.clear();
        }
        result("flood_sent", sent);
        result("flood_unsent", unsent);
        // Drain the receiver, then everything is back in the pool.
        let mut sink: MbufBurst<64> = Burst::new();
        while rb.rx_burst(&mut sink) > 0 {
            sink.clear();
        }
        result("in_use_end", pool.in_use());

        // A sized pair holds its depth, not the default 1024.
        let (c, d) = Port::ring_pair_sized("pc", "pd", 1, 1536).expect("sized pair");
        let mut pc = Port::open(c, &PortConfig::default(), &pool).expect("open c");
        let mut pd = Port::open(d, &PortConfig::default(), &pool).expect("open d");
        pc.start().expect("start c");
        pd.start().expect("start d");
        let (mut tc, mut rd) = (pc.tx_queue(0).expect("txq"), pd.rx_queue(0).expect("rxq"));
        let mut sent = 0;
        for _ in 0..56 {
            let mut b: MbufBurst<32> = Burst::new();
            pool.alloc_bulk(&mut b, 32).expect("bulk");
            sent += tc.tx_burst(&mut b);
            b.clear();
        }
        result("sized_sent", sent);
        let mut sink: MbufBurst<64> = Burst::new();
        while rd.rx_burst(&mut sink) > 0 {
            sink.clear();
        }
        result("sized_in_use_end", pool.in_use());

        // A generator feeding net_ring1's rx through the PMD's own ring.
        let id1 = Port::id_by_name("net_ring1").expect("net_ring1");
        let mut p1 = Port::open(id1, &PortConfig::default(), &pool).expect("open net_ring1");
        p1.start().expect("start");
        let mut r1 = p1.rx_queue(0).expect("rxq");
        // SAFETY: nothing transmits on net_ring1 while the producer lives; p1 outlives it.
        let missing = unsafe { dpdk::attach_producer::<Mbuf>("ETH_RXTX0_no_such_dev") };
        result("attach_missing_err", missing.is_err() as u8);
        // SAFETY: as above.
        let mut gen =
            unsafe { dpdk::attach_producer::<Mbuf>("ETH_RXTX0_net_ring1") }.expect("attach");
        let mut b: MbufBurst<32> = Burst::new();
        for i in 0..4 {
            b.push(filled(&pool, &frame(i, 80))).expect("room");
        }
        result("gen_enqueued", gen.enqueue_burst(&mut b));
        drop(gen);
        let mut got: MbufBurst<32> = Burst::new();
        r1.rx_burst(&mut got);
        let same =
            got.len() == 4 && (0..4).all(|i| got.as_slice()[i].data() == frame(i, 80).as_slice());
        result("gen_received_identical", same as u8);
        drop(got);
        // The ring outlived the dropped handle: the port still loops back.
        let mut t1 = p1.tx_queue(0).expect("txq");
        let mut b: MbufBurst<32> = Burst::new();
        b.push(filled(&pool, &frame(9, 64))).expect("room");
        t1.tx_burst(&mut b);
        let mut got: MbufBurst<32> = Burst::new();
        result("after_drop_recv", r1.rx_burst(&mut got));
        drop(got);
        return;
    }
    let c = spawn("ring_ports_forward_byte_identical");
    c.assert_ok();
    assert_eq!(c.num("eal_ports"), 2);
    assert_eq!(c.get("link_up"), "1");
    assert_eq!(c.get("rxq_twice_err"), "1");
    assert_eq!(c.num("loop_sent"), 8);
    assert_eq!(c.num("loop_recv"), 8);
    assert_eq!(c.num("pair_sent"), 32);
    assert_eq!(c.num("pair_recv"), 32);
    assert_eq!(c.get("pair_identical"), "1");
    // Note: net_ring rx does not set mbuf.port (it stays 65535); do not rely on it per PMD.
    assert_eq!(c.num("a_opackets"), 32);
    assert_eq!(c.num("b_ipackets"), 32);
    assert_eq!(c.num("flood_sent"), 1024);
    assert_eq!(c.num("flood_unsent"), 40 * 32 - 1024);
    assert_eq!(c.num("in_use_end"), 0);
    assert_eq!(c.num("sized_sent"), 1536);
    assert_eq!(c.num("sized_in_use_end"), 0);
    assert_eq!(c.get("attach_missing_err"), "1");
    assert_eq!(c.num("gen_enqueued"), 4);
    assert_eq!(c.get("gen_received_identical"), "1");
    assert_eq!(c.num("after_drop_recv"), 1);
}

#[test]
fn lcore_launch_and_panic() {
    if in_child("lcore_launch_and_panic") {
        let _eal = Eal::init(&eal_args(&[])).expect("EAL");
        let workers: Vec<u32> = worker_lcores().collect();
        result("workers", format!("{workers:?}"));
        result("main", dpdk::main_lcore());
        result(
            "current",
            dpdk::current_lcore().map(|l| l as i64).unwrap_or(-1),
        );
        let w = workers[0];
        let job = launch_on(w, || (dpdk::current_lcore(), 6 * 7)).expect("launch");
        let (lc, v) = job.join().expect("join");
        result("ran_on", lc.map(|l| l as i64).unwrap_or(-1));
        result("value", v);
        let job = launch_on(w, || -> u32 { panic!("boom on purpose") }).expect("launch panicking");
        match job.join() {
            Ok(_) => result("panic", "not reported"),
            Err(e) => result("panic", e),
        }
        // The lcore is usable again after a panic.
        let again = launch_on(w, || 1u8)
            .expect("relaunch")
            .join()
            .expect("join");
        result("again", again);
        result(
            "launch_on_main_err",
            launch_on(dpdk::main_lcore(), || ()).is_err() as u8,
        );
        // A busy lcore refuses a second job.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let busy = launch_on(w, move || rx.recv().is_ok()).expect("launch busy");
        result("busy_err", launch_on(w, || true).is_err() as u8);
        tx.send(()).expect("release");
        result("busy_done", busy.join().expect("join busy") as u8);
        // A std thread is not an lcore.
        let t = std::thread::spawn(|| dpdk::current_lcore().is_none())
            .join()
            .expect("thread");
        result("std_thread_no_lcore", t as u8);
        let clock = dpdk::TscClock::from_eal().expect("tsc");
        result("tsc_hz_positive", (clock.hz() > 1_000_000) as u8);
        return;
    }
    let c = spawn("lcore_launch_and_panic");
    c.assert_ok();
    assert_eq!(c.get("workers"), "[1]");
    assert_eq!(c.num("main"), 0);
    assert_eq!(c.num("current"), 0);
    assert_eq!(c.num("ran_on"), 1);
    assert_eq!(c.num("value"), 42);
    let p = c.get("panic");
    assert!(
        p.contains("lcore 1") && p.contains("panicked: boom on purpose"),
        "{p}"
    );
    assert_eq!(c.num("again"), 1);
    assert_eq!(c.get("launch_on_main_err"), "1");
    assert_eq!(c.get("busy_err"), "1");
    assert_eq!(c.get("busy_done"), "1");
    assert_eq!(c.get("std_thread_no_lcore"), "1");
    assert_eq!(c.get("tsc_hz_positive"), "1");
}
