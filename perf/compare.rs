//! Compare-engine throughput: matched TCP pairs (64 B payload over 1k and 100k flows, 1460 B),
//! UDP pairs, and a mismatch-heavy case, against a baseline measured in the same run (parse both
//! frames + memcmp the payloads: the least any comparator must do per pair).
//!
//! Every case runs twice: on `Comparator<Mbuf>` (real DPDK mbufs from a mempool: the type the
//! compare shard runs on the data path; EAL is brought up with `--in-memory`, or `--no-huge`
//! when no hugepages are free) and on `Comparator<VecBuf>` (the test buffer: a 48-byte handle
//! moved through the engine where an mbuf is an 8-byte pointer). The target is judged on the
//! mbuf row.
//!
//! `cargo bench --bench compare -- --smoke` runs each case briefly (CI); without `--smoke` each
//! case runs about 2 s. A counting global allocator shows allocations per pair in the timed loop.

use std::hint::black_box;
use std::time::{Duration, Instant};

use colo_proxy::buf::{PacketBuf, VecBuf};
use colo_proxy::compare::{
    Comparator, CompareConfig, DivergenceEvent, Output, Release, SecondaryFree, Side,
};
use colo_proxy::dpdk::{default_mem_args, Eal, Mbuf, Mempool};
use colo_proxy::flow::FlowKey;
use colo_proxy::wire::{parse, PacketInfo};
use etherparse::PacketBuilder;

#[path = "../tests/alloc_count/mod.rs"]
mod alloc_count;

#[global_allocator]
static A: alloc_count::Counting = alloc_count::Counting;

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Tcp,
    Udp,
}

/// How the bench makes its packet buffers.
trait Bufs {
    type B: PacketBuf;
    /// Column label.
    const NAME: &'static str;
    fn make(&self, frame: &[u8]) -> Self::B;
}

/// `VecBuf`, the pure layers' test buffer.
struct Vecs;

impl Bufs for Vecs {
    type B = VecBuf;
    const NAME: &'static str = "VecBuf";
    fn make(&self, frame: &[u8]) -> VecBuf {
        VecBuf::from_slice(frame)
    }
}

/// Real mbufs from a mempool sized for one case.
struct Mbufs(Mempool);

impl Bufs for Mbufs {
    type B = Mbuf;
    const NAME: &'static str = "mbuf";
    fn make(&self, frame: &[u8]) -> Mbuf {
        let mut m = self
            .0
            .alloc()
            .expect("the case's mempool holds all its frames");
        m.append(frame.len())
            .expect("data room fits the frame")
            .copy_from_slice(frame);
        m
    }
}

/// One flow's two frames; the flow index rides in the source MAC (ignored by the compare) so
/// the output can put each buffer back in its slot: a recycled pool, like an mbuf mempool.
struct Slot<B> {
    p: Option<B>,
    s: Option<B>,
    seq: u32,
    /// Parse results as the redirector would hand them over (pre-parsed cases).
    pi: PacketInfo,
    si: PacketInfo,
    key: FlowKey,
    /// `key.hash64()`, which the redirector computed to pick the shard.
    hash: u64,
}

/// The verdict sink: every buffer goes straight back to its flow's slot (as an mbuf goes
/// back to its mempool when the tx path or the free is done with it).
struct Recycle<B> {
    slots: Vec<Slot<B>>,
    matched: u64,
    events: u64,
    dropped: u64,
}

#[inline]
fn flow_of<B: PacketBuf>(b: &B) -> usize {
    let d = b.data();
    u32::from_be_bytes([d[8], d[9], d[10], d[11]]) as usize
}

impl<B: PacketBuf> Output<B> for Recycle<B> {
    #[inline]
    fn release(&mut self, pkt: B, how: Release) {
        self.matched += u64::from(how == Release::Matched);
        let i = flow_of(&pkt);
        self.slots[i].p = Some(pkt);
    }
    #[inline]
    fn drop_primary(&mut self, pkt: B, _: colo_proxy::compare::PrimaryDrop) {
        self.dropped += 1;
        let i = flow_of(&pkt);
        self.slots[i].p = Some(pkt);
    }
    #[inline]
    fn free_secondary(&mut self, pkt: B, _: SecondaryFree) {
        let i = flow_of(&pkt);
        self.slots[i].s = Some(pkt);
    }
    fn event(&mut self, _: DivergenceEvent) {
        self.events += 1;
    }
}

fn frame(proto: Proto, flow: usize, payload: usize) -> Vec<u8> {
    let data = vec![0x61u8; payload];
    let src = [10, 1, (flow >> 16) as u8, (flow >> 8) as u8];
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 3]).ipv4(
        src,
        [192, 168, 0, 1],
        64,
    );
    let mut f = Vec::new();
    match proto {
        Proto::Tcp => b
            .tcp(1024 + (flow & 0xff) as u16, 80, 1, 65535)
            .ack(1)
            .psh()
            .write(&mut f, &data)
            .unwrap(),
        Proto::Udp => b
            .udp(1024 + (flow & 0xff) as u16, 53)
            .write(&mut f, &data)
            .unwrap(),
    }
    f[8..12].copy_from_slice(&(flow as u32).to_be_bytes()); // flow index in the source MAC
    f
}

struct Case {
    name: &'static str,
    /// The redirector's parse result, key and hash are handed over (`process_parsed_hashed`).
    preparsed: bool,
    proto: Proto,
    flows: usize,
    payload: usize,
    mismatch: bool,
}

struct Row {
    name: &'static str,
    buf: &'static str,
    best: f64,
    median: f64,
    base_best: f64,
    base_median: f64,
    allocs_per_pair: f64,
    matched_frac: f64,
}

fn setup<M: Bufs>(c: &Case, mk: &M) -> Vec<Slot<M::B>> {
    (0..c.flows)
        .map(|i| {
            let f = frame(c.proto, i, c.payload);
            let mut s = f.clone();
            s[5] = 0; // the secondary's own destination MAC byte (not compared)
            s[18] = 0x77; // the secondary's own IP ID
            let (pi, si) = (parse(&f).unwrap(), parse(&s).unwrap());
            let key = FlowKey::of(&pi, &f);
            Slot {
                key,
                hash: key.hash64(),
                p: Some(mk.make(&f)),
                s: Some(mk.make(&s)),
                seq: 1,
                pi,
                si,
            }
        })
        .collect()
}

/// Advance flow `i` one segment: write the next seq into both frames.
#[inline]
fn next_seq<B: PacketBuf>(slot: &mut Slot<B>, c: &Case) -> (B, B) {
    let (Some(mut p), Some(mut s)) = (slot.p.take(), slot.s.take()) else {
        panic!("buffer not returned: the engine still holds it");
    };
    if c.proto == Proto::Tcp {
        slot.seq = slot.seq.wrapping_add(c.payload as u32);
        let b = slot.seq.to_be_bytes();
        p.data_mut()[38..42].copy_from_slice(&b);
        s.data_mut()[38..42].copy_from_slice(&b);
    }
    (p, s)
}

/// The engine side of a case: a comparator with its connections warmed up.
struct Engine<B: PacketBuf> {
    out: Recycle<B>,
    eng: Comparator<B>,
    now: u64,
}

impl<B: PacketBuf> Engine<B> {
    fn new<M: Bufs<B = B>>(c: &Case, mk: &M) -> Engine<B> {
        let mut e = Engine {
            out: Recycle {
                slots: setup(c, mk),
                matched: 0,
                events: 0,
                dropped: 0,
            },
            eng: Comparator::new(CompareConfig {
                table_capacity: c.flows + c.flows / 4,
                pool_size: 4 * c.flows,
                ..CompareConfig::default()
            }),
            now: 1,
        };
        e.round(c); // creates the connections
        e
    }

    /// One pair on every flow.
    fn round(&mut self, c: &Case) {
        let (out, eng) = (&mut self.out, &mut self.eng);
        for i in 0..c.flows {
            let (p, mut s) = next_seq(&mut out.slots[i], c);
            if c.mismatch {
                let n = s.len();
                s.data_mut()[n - 1] ^= 0xff; // last payload byte differs
            }
            if c.preparsed {
                let sl = &mut out.slots[i];
                let (mut pi, mut si, key, hash) = (sl.pi, sl.si, sl.key, sl.hash);
                if let (Some(pt), Some(st)) = (pi.tcp.as_mut(), si.tcp.as_mut()) {
                    pt.seq = sl.seq;
                    st.seq = sl.seq;
                }
                eng.process_parsed_hashed(Side::Primary, p, &pi, &key, hash, self.now, out);
                eng.process_parsed_hashed(Side::Secondary, s, &si, &key, hash, self.now, out);
            } else {
                eng.process(Side::Primary, p, self.now, out);
                eng.process(Side::Secondary, s, self.now, out);
            }
            self.now += 50;
        }
        if c.mismatch {
            // Every flow diverged: the checkpoint releases them (and is part of the cost).
            eng.checkpoint_done(self.now, out);
            for s in out.slots.iter_mut() {
                if let Some(b) = s.s.as_mut() {
                    let n = b.len();
                    b.data_mut()[n - 1] ^= 0xff; // undo the flip
                }
            }
        }
        eng.tick(self.now, out);
    }
}

/// Baseline: the same frames and seq updates, but only parse both frames and memcmp their
/// payloads (TCP) or transport segments (UDP).
fn baseline_round<B: PacketBuf>(c: &Case, slots: &mut [Slot<B>]) -> u64 {
    let mut equal = 0u64;
    for slot in slots.iter_mut() {
        let (p, s) = next_seq(slot, c);
        let (pd, sd) = (p.data(), s.data());
        if let (Ok(pi), Ok(si)) = (parse(pd), parse(sd)) {
            let (a, b) = if c.proto == Proto::Tcp {
                (pi.payload(pd), si.payload(sd))
            } else {
                (pi.l4_segment(pd), si.l4_segment(sd))
            };
            equal += u64::from(black_box(a) == black_box(b));
        }
        slot.p = Some(p);
        slot.s = Some(s);
    }
    equal
}

/// Time `f` (one round of `flows` pairs) in chunks of at least 5 ms; ns/pair per chunk.
fn chunk(flows: usize, mut f: impl FnMut()) -> f64 {
    let t0 = Instant::now();
    let mut pairs = 0u64;
    while t0.elapsed() < Duration::from_millis(5) {
        f();
        pairs += flows as u64;
    }
    t0.elapsed().as_nanos() as f64 / pairs as f64
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2])
}

/// `COMPARE_ROUNDS=n`: exactly `n` rounds of each, untimed, for an instruction counter
/// (`valgrind --tool=callgrind --toggle-collect='*counted_*'`).
#[inline(never)]
fn counted_engine<B: PacketBuf>(c: &Case, e: &mut Engine<B>, n: usize) {
    for _ in 0..n {
        e.round(c);
    }
}

#[inline(never)]
fn counted_baseline<B: PacketBuf>(c: &Case, slots: &mut [Slot<B>], n: usize) {
    for _ in 0..n {
        black_box(baseline_round(c, slots));
    }
}

fn run_case<M: Bufs>(c: &Case, dur: Duration, mk: &M) -> Row {
    if let Some(n) = std::env::var("COMPARE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let mut e = Engine::new(c, mk);
        let mut base_slots = setup(c, mk);
        counted_engine(c, &mut e, n);
        counted_baseline(c, &mut base_slots, n);
        println!("{} ({}): {} rounds x {} pairs", c.name, M::NAME, n, c.flows);
    }
    let mut e = Engine::new(c, mk);
    let mut base_slots = setup(c, mk);
    // Preallocated: the measurement itself must not allocate.
    let (mut te, mut tb) = (Vec::with_capacity(1 << 16), Vec::with_capacity(1 << 16));
    let a0 = alloc_count::allocations();
    let (m0, p0) = (e.out.matched, e.eng.counters().primary_in);
    let t0 = Instant::now();
    // Alternate engine and baseline chunks so both see the same machine load.
    while t0.elapsed() < dur || te.len() < 3 {
        te.push(chunk(c.flows, || e.round(c)));
        tb.push(chunk(c.flows, || {
            black_box(baseline_round(c, &mut base_slots));
        }));
    }
    let pairs = e.eng.counters().primary_in - p0;
    let allocs = alloc_count::allocations() - a0;
    assert!(e.eng.counters().balanced());
    assert_eq!(e.out.dropped, 0, "{}: a primary was dropped", c.name);
    black_box(e.out.events);
    let (eb, em) = stats(te);
    let (bb, bm) = stats(tb);
    Row {
        name: c.name,
        buf: M::NAME,
        best: eb,
        median: em,
        base_best: bb,
        base_median: bm,
        // Baseline chunks never allocate either (buffers are recycled), so any count is ours.
        allocs_per_pair: allocs as f64 / pairs as f64,
        matched_frac: (e.out.matched - m0) as f64 / pairs as f64,
    }
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let dur = if smoke {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    };
    let cases = [
        Case {
            name: "tcp 64B, 1k flows",
            preparsed: false,
            proto: Proto::Tcp,
            flows: 1_000,
            payload: 64,
            mismatch: false,
        },
        Case {
            name: "tcp 64B, 100k flows",
            preparsed: false,
            proto: Proto::Tcp,
            flows: 100_000,
            payload: 64,
            mismatch: false,
        },
        Case {
            name: "tcp 1460B, 1k flows",
            preparsed: false,
            proto: Proto::Tcp,
            flows: 1_000,
            payload: 1460,
            mismatch: false,
        },
        Case {
            name: "udp 64B, 1k flows",
            preparsed: false,
            proto: Proto::Udp,
            flows: 1_000,
            payload: 64,
            mismatch: false,
        },
        Case {
            name: "tcp 64B mismatch+ckpt, 1k",
            preparsed: false,
            proto: Proto::Tcp,
            flows: 1_000,
            payload: 64,
            mismatch: true,
        },
        Case {
            name: "tcp 64B, 1k, pre-parsed",
            preparsed: true,
            proto: Proto::Tcp,
            flows: 1_000,
            payload: 64,
            mismatch: false,
        },
        Case {
            name: "tcp 64B, 100k, pre-parsed",
            preparsed: true,
            proto: Proto::Tcp,
            flows: 100_000,
            payload: 64,
            mismatch: false,
        },
    ];
    // `COMPARE_CASE=substring` runs only matching cases, `COMPARE_BUF=mbuf|VecBuf` only one
    // buffer type (for profiling one of them).
    let only = std::env::var("COMPARE_CASE").unwrap_or_default();
    let only_buf = std::env::var("COMPARE_BUF").unwrap_or_default();
    // One lcore, no devices: EAL only provides the mempools.
    let mut eal_args: Vec<String> = ["-l", "0", "--no-pci", "--log-level", "lib.eal:error"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    eal_args.extend(default_mem_args());
    let eal = if only_buf.is_empty() || only_buf == Mbufs::NAME {
        Eal::init(&eal_args)
            .map_err(|e| eprintln!("compare: no mbuf rows: {e}"))
            .ok()
    } else {
        None
    };
    let mut rows: Vec<Row> = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        if !c.name.contains(only.as_str()) {
            continue;
        }
        if eal.is_some() {
            // Engine and baseline slots: two frames per flow each.
            let n = (4 * c.flows + 64) as u32;
            let room = (128 + 64 + c.payload + 64) as u16;
            match Mempool::with_params(&format!("cmp{i}"), n, 0, room, None) {
                Ok(pool) => {
                    let mk = Mbufs(pool);
                    rows.push(run_case(c, dur, &mk));
                }
                Err(e) => eprintln!("compare: no mbuf row for {:?}: {e}", c.name),
            }
        }
        if only_buf.is_empty() || only_buf == Vecs::NAME {
            rows.push(run_case(c, dur, &Vecs));
        }
    }
    println!(
        "compare engine, one core ({} mode; ns/pair: best and median of 5 ms chunks)\n",
        if smoke { "smoke" } else { "full" }
    );
    println!(
        "{:<28} {:<6} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7} {:>8} {:>8}",
        "case",
        "buffer",
        "best ns",
        "median ns",
        "Mpairs/s",
        "base best",
        "base med",
        "ratio",
        "matched",
        "alloc/p"
    );
    for r in &rows {
        println!(
            "{:<28} {:<6} {:>9.1} {:>9.1} {:>9.2} {:>10.1} {:>10.1} {:>6.2}x {:>7.0}% {:>8.3}",
            r.name,
            r.buf,
            r.best,
            r.median,
            1e3 / r.best,
            r.base_best,
            r.base_median,
            r.best / r.base_best,
            r.matched_frac * 100.0,
            r.allocs_per_pair
        );
    }
    println!("\nMpairs/s from the best chunk; baseline = parse both frames + memcmp payloads;");
    println!("pre-parsed = process_parsed_hashed() with the redirector's PacketInfo, FlowKey and hash64 (parse off this core);");
    println!("ratio = engine best / baseline best (same run, alternating chunks)");
    // Judged on the data path's buffer type when it ran.
    let first = rows.first().map(|r| r.name);
    let target = rows
        .iter()
        .filter(|r| Some(r.name) == first)
        .min_by_key(|r| r.buf != Mbufs::NAME)
        .map_or((f64::INFINITY, "-"), |r| (r.best, r.buf));
    println!(
        "target >= 10 Mpairs/s matched 64B per core: {} ({:.2} Mpairs/s, {})",
        if target.0 <= 100.0 { "MET" } else { "NOT MET" },
        1e3 / target.0,
        target.1
    );
    if rows.iter().any(|r| r.allocs_per_pair > 0.0) {
        println!("FAIL: allocations on the steady-state path");
        std::process::exit(1);
    }
}
