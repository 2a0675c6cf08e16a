//! DPDK-port encapsulation: round trip, sequence tracking, malformed input.

use colo_proxy::buf::{PacketBuf, VecBuf};
use colo_proxy::link::encap::*;

fn inner(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}

#[test]
fn round_trip_without_copying_inner() {
    let cfg = EncapConfig {
        dst: [2, 0, 0, 0, 0, 2],
        src: [2, 0, 0, 0, 0, 1],
        ethertype: 0x88B5,
    };
    let mut tx = EncapTx::new(cfg, STREAM_SECONDARY).with_seq(41);
    let mut rx: EncapRx = EncapRx::new(0x88B5);
    for n in [1usize, 14, 60, 1514, 9000] {
        let f = inner(n);
        let mut b = VecBuf::from_slice(&f);
        let seq = tx.encap(&mut b, 0x5).unwrap();
        assert_eq!(b.len(), n + OVERHEAD);
        assert_eq!(&b.data()[..6], &cfg.dst);
        assert_eq!(&b.data()[6..12], &cfg.src);
        assert_eq!(&b.data()[12..14], &[0x88, 0xB5]);
        assert_eq!(&b.data()[OVERHEAD..], &f[..]);
        let (h, _) = rx.decap(&mut b).unwrap();
        assert_eq!(
            h,
            EncapHeader {
                stream: 1,
                flags: 5,
                seq,
                inner_len: n as u16
            }
        );
        assert_eq!(b.data(), &f[..]);
    }
    let s = rx.stream_stats(1).unwrap();
    assert_eq!((s.received, s.in_order, s.lost), (5, 4, 0));
}

#[test]
fn padding_added_by_the_port_is_stripped() {
    let mut b = VecBuf::from_slice(&[1, 2, 3]);
    encap(&mut b, &EncapConfig::default(), 0, 0, 7).unwrap();
    b.append(60 - b.len()).unwrap().fill(0);
    let h = decap(&mut b, ETHERTYPE_EXPERIMENTAL).unwrap();
    assert_eq!(h.seq, 7);
    assert_eq!(b.data(), &[1, 2, 3]);
}

#[test]
fn no_headroom_and_too_long_are_errors() {
    let mut b = VecBuf::with_room(&[1, 2], 10, 0);
    assert!(matches!(
        encap(&mut b, &EncapConfig::default(), 0, 0, 0),
        Err(EncapError::Buf(_))
    ));
    assert_eq!(b.data(), &[1, 2]);
    let mut b = VecBuf::from_slice(&vec![0; 70000]);
    assert_eq!(
        encap(&mut b, &EncapConfig::default(), 0, 0, 0),
        Err(EncapError::TooLong(70000))
    );
}

#[test]
fn malformed_headers_are_errors_not_panics() {
    let mut good = VecBuf::from_slice(&inner(40));
    encap(&mut good, &EncapConfig::default(), 1, 0, 1).unwrap();
    let g = good.to_vec();
    let mut rx: EncapRx = EncapRx::new(ETHERTYPE_EXPERIMENTAL);
    // Every truncation.
    for n in 0..OVERHEAD {
        let mut b = VecBuf::from_slice(&g[..n]);
        assert_eq!(rx.decap(&mut b), Err(EncapError::Short(n)));
        assert_eq!(b.len(), n);
    }
    // Inner length longer than the frame.
    let mut b = VecBuf::from_slice(&g[..OVERHEAD + 39]);
    assert_eq!(
        rx.decap(&mut b),
        Err(EncapError::InnerLen {
            inner: 40,
            avail: 39
        })
    );
    let mut bad = g.clone();
    bad[13] = 0x00;
    assert_eq!(
        rx.decap(&mut VecBuf::from_slice(&bad)),
        Err(EncapError::EtherType(0x8800))
    );
    let mut bad = g.clone();
    bad[14] = 9;
    assert_eq!(
        rx.decap(&mut VecBuf::from_slice(&bad)),
        Err(EncapError::Version(9))
    );
    let mut bad = g.clone();
    bad[15] = 7;
    assert_eq!(
        rx.decap(&mut VecBuf::from_slice(&bad)),
        Err(EncapError::Stream(7))
    );
    assert_eq!(rx.errors(), OVERHEAD as u64 + 4);
    // Pseudo-random garbage.
    let mut x: u32 = 99;
    for len in 0..200 {
        let mut f = vec![0u8; len];
        for b in f.iter_mut() {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *b = (x >> 16) as u8;
        }
        if len > 14 {
            f[12] = 0x88;
            f[13] = 0xB5;
            f[14] = 1;
        }
        let _ = rx.decap(&mut VecBuf::from_slice(&f));
    }
}

#[test]
fn loss_reorder_duplicate_detection() {
    let mut t = SeqTracker::new();
    assert_eq!(t.track(10), SeqEvent::First);
    assert_eq!(t.track(11), SeqEvent::InOrder);
    assert_eq!(
        t.track(14),
        SeqEvent::Gap {
            expected: 12,
            got: 14,
            lost: 2
        }
    );
    assert_eq!(t.stats().lost, 2);
    assert_eq!(t.track(12), SeqEvent::Reordered { seq: 12 });
    assert_eq!(t.stats().lost, 1);
    assert_eq!(t.track(12), SeqEvent::Duplicate { seq: 12 });
    assert_eq!(t.track(14), SeqEvent::Duplicate { seq: 14 });
    assert_eq!(t.track(15), SeqEvent::InOrder);
    assert_eq!(t.track(13), SeqEvent::Reordered { seq: 13 });
    let s = t.stats();
    assert_eq!(
        (
            s.received,
            s.in_order,
            s.lost,
            s.gaps,
            s.reordered,
            s.duplicates
        ),
        (8, 2, 0, 1, 2, 2)
    );
    // Far behind the window: resync, not a flood of duplicates.
    assert_eq!(
        t.track(u32::MAX - 100),
        SeqEvent::Resync {
            expected: 16,
            got: u32::MAX - 100
        }
    );
    assert_eq!(t.track(u32::MAX - 99), SeqEvent::InOrder);
    assert_eq!(t.stats().resyncs, 1);
}

#[test]
fn wraparound_is_in_order_and_counted() {
    let mut t = SeqTracker::new();
    t.track(u32::MAX - 2);
    assert_eq!(t.track(u32::MAX - 1), SeqEvent::InOrder);
    assert_eq!(t.track(u32::MAX), SeqEvent::InOrder);
    assert_eq!(t.track(0), SeqEvent::InOrder);
    assert_eq!(
        t.track(2),
        SeqEvent::Gap {
            expected: 1,
            got: 2,
            lost: 1
        }
    );
    assert_eq!(t.track(1), SeqEvent::Reordered { seq: 1 });
    assert_eq!(t.track(u32::MAX), SeqEvent::Duplicate { seq: u32::MAX });
    assert_eq!(t.stats().wraps, 1);
    assert_eq!(t.stats().lost, 0);
    // A gap across the wrap.
    let mut t = SeqTracker::new();
    t.track(u32::MAX - 1);
    assert_eq!(
        t.track(3),
        SeqEvent::Gap {
            expected: u32::MAX,
            got: 3,
            lost: 4
        }
    );
    assert_eq!(t.stats().wraps, 1);
    // The sender wraps through EncapTx too.
    let mut tx = EncapTx::new(EncapConfig::default(), 0).with_seq(u32::MAX);
    let mut rx: EncapRx = EncapRx::new(ETHERTYPE_EXPERIMENTAL);
    for _ in 0..3 {
        let mut b = VecBuf::from_slice(&[1]);
        tx.encap(&mut b, 0).unwrap();
        rx.decap(&mut b).unwrap();
    }
    assert_eq!(rx.stream_stats(0).unwrap().wraps, 1);
    assert_eq!(rx.stream_stats(0).unwrap().in_order, 2);
}

#[test]
fn streams_are_tracked_independently() {
    let cfg = EncapConfig::default();
    let mut a = EncapTx::new(cfg, STREAM_MIRROR);
    let mut b = EncapTx::new(cfg, STREAM_SECONDARY).with_seq(1000);
    let mut rx: EncapRx = EncapRx::new(ETHERTYPE_EXPERIMENTAL);
    for i in 0..10 {
        let mut x = VecBuf::from_slice(&[i]);
        a.encap(&mut x, 0).unwrap();
        let mut y = VecBuf::from_slice(&[i]);
        b.encap(&mut y, 0).unwrap();
        if i != 4 {
            rx.decap(&mut x).unwrap();
        }
        rx.decap(&mut y).unwrap();
    }
    assert_eq!(rx.stream_stats(0).unwrap().lost, 1);
    assert_eq!(rx.stream_stats(1).unwrap().lost, 0);
    assert_eq!(rx.stream_stats(1).unwrap().in_order, 9);
}
