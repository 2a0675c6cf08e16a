//! The rewriter: a segment translated into the secondary's sequence space with offset d and
//! back with −d is the original frame, checksum included; in between the checksum equals a
//! full recomputation (etherparse) and every field moved by exactly its offset. Then the same
//! frame with arbitrary byte flips, and arbitrary bytes, in both directions: no panic, and a
//! frame not reported as rewritten is byte-identical.
#![no_main]

#[path = "../../tests/rewrite_util/mod.rs"]
mod rewrite_util;

use arbitrary::Arbitrary;
use colo_proxy::buf::{PacketBuf, VecBuf};
use colo_proxy::rewrite::{Direction, Outcome, Rewriter, RewriterConfig};
use libfuzzer_sys::fuzz_target;
use rewrite_util::{decode, Seg, ACK, FIN, PSH};

#[derive(Arbitrary, Debug)]
struct Input {
    from_vm: bool,
    v6: bool,
    vlan: Option<u16>,
    ip_opt_words: u8,
    v6_ext: bool,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    ts: Option<(u32, u32)>,
    ts_odd: bool,
    sack: Vec<(u32, u32)>,
    payload_len: u8,
    /// Learned offsets: primary ISN, secondary ISN, their timestamp clocks.
    p: u32,
    s: u32,
    tsp: u32,
    tss: u32,
    flips: Vec<(u16, u8)>,
    junk: Vec<u8>,
}

fn learned(shape: &Seg, p: u32, s: u32, tsp: u32, tss: u32) -> Rewriter {
    // A small table: the default one costs more to allocate than the whole run.
    let cfg = RewriterConfig {
        table_capacity: 4,
        ..RewriterConfig::default()
    };
    rewrite_util::learned_with(cfg, shape, p, s, tsp, tss)
}

fuzz_target!(|i: Input| {
    let flags = [ACK, ACK | PSH, ACK | FIN, 0][usize::from(i.flags % 4)];
    let base = if i.from_vm {
        Seg::vm(i.seq, i.ack, flags)
    } else {
        Seg::client(i.seq, i.ack, flags)
    };
    let mut seg = Seg {
        v6: i.v6,
        vlan: i.vlan.map(|v| v % 4095 + 1),
        ip_opt_words: if i.v6 { 0 } else { i.ip_opt_words % 5 },
        v6_ext: i.v6 && i.v6_ext,
        window: i.window,
        ts: i.ts,
        ts_odd: i.ts_odd,
        sack: i.sack.iter().take(3).copied().collect(),
        ..base
    };
    seg = seg.data(usize::from(i.payload_len));
    let (p, s, tsp, tss) = (i.p, i.s, i.tsp, i.tss);
    let mut there = learned(&seg, p, s, tsp, tss);
    let mut back = learned(&seg, s, p, tss, tsp);
    let orig = seg.build();
    let dir = if seg.from_vm {
        Direction::FromSecondary
    } else {
        Direction::ToSecondary
    };
    let mut b = VecBuf::from_slice(&orig);
    let o1 = there.process(dir, &mut b, 2);
    let mid = b.to_vec();
    let (t0, t1) = (decode(&orig), decode(&mid));
    assert!(
        t1.csum_ok,
        "checksum after rewrite must equal the full recomputation"
    );
    let (d, dts) = (s.wrapping_sub(p), tss.wrapping_sub(tsp));
    let has_ack = seg.flags & ACK != 0;
    if seg.from_vm {
        assert_eq!(t1.seq, t0.seq.wrapping_sub(d));
        assert_eq!(t1.ack, t0.ack);
        assert_eq!(t1.sack, t0.sack);
        assert_eq!(t1.ts, t0.ts.map(|(v, e)| (v.wrapping_sub(dts), e)));
    } else {
        assert_eq!(t1.seq, t0.seq);
        assert_eq!(
            t1.ack,
            if has_ack {
                t0.ack.wrapping_add(d)
            } else {
                t0.ack
            }
        );
        let moved: Vec<_> = t0
            .sack
            .iter()
            .map(|&(l, r)| (l.wrapping_add(d), r.wrapping_add(d)))
            .collect();
        assert_eq!(t1.sack, moved);
        assert_eq!(
            t1.ts,
            t0.ts
                .map(|(v, e)| (v, if has_ack { e.wrapping_add(dts) } else { e }))
        );
    }
    assert_eq!(o1 == Outcome::Rewritten, mid != orig);
    let o2 = back.process(dir, &mut b, 3);
    assert_eq!(o1, o2);
    assert_eq!(b.to_vec(), orig, "there and back is not the identity");

    // Mutations and junk: never a panic; untouched unless reported rewritten; length kept.
    let mut f = orig;
    let n = f.len();
    for &(at, x) in i.flips.iter().take(6) {
        f[usize::from(at) % n] ^= x;
    }
    let junk: Vec<u8> = i.junk.iter().take(200).copied().collect();
    for frame in [f, junk] {
        for dir in [Direction::ToSecondary, Direction::FromSecondary] {
            let mut b = VecBuf::from_slice(&frame);
            let o = there.process(dir, &mut b, 4);
            if o != Outcome::Rewritten {
                assert_eq!(b.to_vec(), frame);
            }
            assert_eq!(b.len(), frame.len());
        }
    }
    there.tick(200_000_000_000);
    there.checkpoint();
});
