//! The link encapsulation decoder on arbitrary frames: never panics; `peek` and `decap` agree;
//! an error leaves the buffer unchanged; on success the inner frame is exactly `inner_len`
//! bytes. Round trip: encap then decap gives the inner frame back with its header fields.
//! Input: a selector byte (EtherType choice, stream/flags/seq), then the frame (seeds: the
//! tests' encapsulated frames).
#![no_main]

use colo_proxy::buf::{PacketBuf, VecBuf};
use colo_proxy::link::encap::{self, EncapConfig, EncapRx};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    let cfg = EncapConfig::default();
    // Mostly our EtherType (so the header is reached), sometimes another.
    let et = if sel & 0x80 != 0 {
        u16::from(sel) << 8 | 0x42
    } else {
        cfg.ethertype
    };
    let mut rx: EncapRx = EncapRx::new(et);
    // The frame, then the frame again (a duplicate sequence number), then cut short.
    for f in [frame, frame, &frame[..frame.len() / 2]] {
        let peeked = encap::peek(f, et);
        let mut b = VecBuf::from_slice(f);
        match rx.decap(&mut b) {
            Ok((h, _ev)) => {
                assert_eq!(Ok(h), peeked);
                assert_eq!(b.len(), usize::from(h.inner_len));
                assert_eq!(b.data(), &f[encap::OVERHEAD..encap::OVERHEAD + b.len()]);
            }
            Err(_) => assert_eq!(b.data(), f, "error changed the buffer"),
        }
    }
    let _ = rx.stream_stats(sel);
    // Round trip: the bytes as an inner frame.
    let mut b = VecBuf::from_slice(frame);
    let (stream, flags, seq) = (sel % 4, sel, u32::from(sel).wrapping_mul(0x9e37_79b9));
    match encap::encap(&mut b, &cfg, stream, flags, seq) {
        Ok(()) => {
            let h = encap::decap(&mut b, cfg.ethertype).expect("our own encapsulation decodes");
            assert_eq!((h.stream, h.flags, h.seq), (stream, flags, seq));
            assert_eq!(b.data(), frame);
        }
        Err(_) => assert!(frame.len() > usize::from(u16::MAX)),
    }
});
