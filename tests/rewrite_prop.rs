//! Property tests: translation is an exact, checksum-correct bijection; no input panics.

mod rewrite_util;

use colo_proxy::buf::VecBuf;
use colo_proxy::rewrite::{Direction, Outcome};
use proptest::prelude::*;
use rewrite_util::*;

const C: u32 = LEARN_CLIENT_ISN;

fn seg_strategy() -> impl Strategy<Value = Seg> {
    (
        (
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(1u16..4095),
            0u8..=4,
            any::<bool>(),
        ),
        (
            any::<u32>(),
            any::<u32>(),
            prop_oneof![Just(ACK), Just(ACK | PSH), Just(ACK | FIN), Just(0u8)],
        ),
        (
            proptest::option::of((any::<u32>(), any::<u32>())),
            any::<bool>(),
        ),
        proptest::collection::vec((any::<u32>(), any::<u32>()), 0..=3),
        0usize..200,
    )
        .prop_map(
            |((from_vm, v6, vlan, ipw, v6_ext), (seq, ack, flags), (ts, ts_odd), sack, n)| {
                let mut s = if from_vm {
                    Seg::vm(seq, ack, flags)
                } else {
                    Seg::client(seq, ack, flags)
                };
                s.v6 = v6;
                s.vlan = vlan;
                s.ip_opt_words = if v6 { 0 } else { ipw };
                s.v6_ext = v6 && v6_ext;
                s.ts = ts;
                s.ts_odd = ts_odd;
                // SACK plus an odd timestamps option would overflow 40 option bytes at 3 blocks.
                s.sack = if ts.is_some() {
                    sack.into_iter().take(2).collect()
                } else {
                    sack
                };
                s.data(n)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Into the secondary's space with offset d, then back with offset −d: the original bytes,
    /// checksum included; in between, the checksum matches a full recomputation and every field
    /// moved by exactly its offset.
    #[test]
    fn translate_there_and_back_is_identity(
        seg in seg_strategy(), p in any::<u32>(), s in any::<u32>(),
        tsp in any::<u32>(), tss in any::<u32>(),
    ) {
        let mut there = learned(&seg, p, s, tsp, tss);
        let mut back = learned(&seg, s, p, tss, tsp);
        let orig = seg.build();
        let dir = if seg.from_vm { Direction::FromSecondary } else { Direction::ToSecondary };
        let mut b = VecBuf::from_slice(&orig);
        let o1 = there.process(dir, &mut b, 2);
        let mid = b.to_vec();
        let (t0, t1) = (decode(&orig), decode(&mid));
        prop_assert!(t1.csum_ok, "checksum after rewrite must equal the full recomputation");
        let (d, dts) = (s.wrapping_sub(p), tss.wrapping_sub(tsp));
        let has_ack = seg.flags & ACK != 0;
        if seg.from_vm {
            prop_assert_eq!(t1.seq, t0.seq.wrapping_sub(d));
            prop_assert_eq!(t1.ack, t0.ack);
            prop_assert_eq!(&t1.sack, &t0.sack);
            prop_assert_eq!(t1.ts, t0.ts.map(|(v, e)| (v.wrapping_sub(dts), e)));
        } else {
            prop_assert_eq!(t1.seq, t0.seq);
            prop_assert_eq!(t1.ack, if has_ack { t0.ack.wrapping_add(d) } else { t0.ack });
            let moved: Vec<_> = t0.sack.iter().map(|&(l, r)| (l.wrapping_add(d), r.wrapping_add(d))).collect();
            prop_assert_eq!(&t1.sack, &moved);
            prop_assert_eq!(t1.ts, t0.ts.map(|(v, e)| (v, if has_ack { e.wrapping_add(dts) } else { e })));
        }
        prop_assert_eq!(o1 == Outcome::Rewritten, mid != orig);
        let o2 = back.process(dir, &mut b, 3);
        prop_assert_eq!(o1, o2);
        prop_assert_eq!(b.to_vec(), orig);
    }

    /// Random mutations of valid frames and random bytes: never a panic; anything not reported as
    /// rewritten is byte-identical.
    #[test]
    fn mutated_frames_never_panic(
        seg in seg_strategy(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        junk in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut rw = learned(&seg, 1, 99, 5, 9);
        let mut f = seg.build();
        for (i, x) in flips {
            let n = f.len();
            f[i % n] ^= x;
        }
        for frame in [f, junk] {
            for dir in [Direction::ToSecondary, Direction::FromSecondary] {
                let mut b = VecBuf::from_slice(&frame);
                let o = rw.process(dir, &mut b, 4);
                if o != Outcome::Rewritten {
                    prop_assert_eq!(b.to_vec(), frame.clone());
                }
                prop_assert_eq!(b.to_vec().len(), frame.len());
            }
        }
    }
}

/// Every truncation of every kind of frame, with and without a consistent IP length, and every
/// TCP data offset: no panic, malformed frames untouched and counted.
#[test]
fn every_truncation_and_data_offset_is_safe() {
    let shapes = [
        Seg::client(C + 1, 2, ACK).ts(1, 2).sack(&[(3, 4)]).data(10),
        Seg::client(C + 1, 2, ACK).v6().vlan(5).ts(1, 2).data(3),
        {
            let mut s = Seg::vm(100, C + 1, ACK | FIN).data(1);
            s.ip_opt_words = 3;
            s.vlan = Some(9);
            s
        },
        {
            let mut s = Seg::client(C + 1, 2, ACK).v6();
            s.v6_ext = true;
            s.ts = Some((1, 2));
            s.ts_odd = true;
            s
        },
    ];
    let mut malformed = 0u64;
    for shape in &shapes {
        let mut rw = learned(shape, 1, 99, 5, 9);
        let full = shape.build();
        let before = rw.counters().malformed_truncated
            + rw.counters().malformed_ip_length
            + rw.counters().malformed_tcp_offset
            + rw.counters().malformed_ip_header
            + rw.counters().malformed_other;
        let mut variants = Vec::new();
        for cut in 0..full.len() {
            let t = full[..cut].to_vec();
            variants.push(t.clone());
            // Same cut with the IP length fields shrunk to match (truncates inside TCP).
            let mut fixed = t;
            fix_ip_len(&mut fixed, shape);
            variants.push(fixed);
        }
        for doff in 0u8..16 {
            let mut f = full.clone();
            let l4 = l4_off(shape);
            f[l4 + 12] = (doff << 4) | (f[l4 + 12] & 0x0f);
            variants.push(f);
        }
        for v in &variants {
            for dir in [Direction::ToSecondary, Direction::FromSecondary] {
                let mut b = VecBuf::from_slice(v);
                let o = rw.process(dir, &mut b, 5);
                if let Outcome::Malformed(_) = o {
                    malformed += 1;
                }
                if o != Outcome::Rewritten {
                    assert_eq!(&b.to_vec(), v);
                }
            }
        }
        let c = rw.counters();
        let after = c.malformed_truncated
            + c.malformed_ip_length
            + c.malformed_tcp_offset
            + c.malformed_ip_header
            + c.malformed_other;
        assert!(after > before);
        assert!(
            c.malformed_tcp_offset > 0,
            "bad data offsets are counted as such"
        );
        assert!(c.malformed_truncated > 0);
    }
    assert!(malformed > 0);
}

fn l4_off(s: &Seg) -> usize {
    let l2 = 14 + if s.vlan.is_some() { 4 } else { 0 };
    if s.v6 {
        l2 + 40 + if s.v6_ext { 8 } else { 0 }
    } else {
        l2 + 20 + 4 * s.ip_opt_words as usize
    }
}

fn fix_ip_len(f: &mut [u8], s: &Seg) {
    let l3 = 14 + if s.vlan.is_some() { 4 } else { 0 };
    if f.len() < l3 + 6 {
        return;
    }
    if s.v6 {
        let pl = f.len().saturating_sub(l3 + 40) as u16;
        f[l3 + 4..l3 + 6].copy_from_slice(&pl.to_be_bytes());
    } else {
        let tl = (f.len() - l3) as u16;
        f[l3 + 2..l3 + 4].copy_from_slice(&tl.to_be_bytes());
    }
}
