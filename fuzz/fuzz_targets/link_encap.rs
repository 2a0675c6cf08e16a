//! The link encapsulation decoder on arbitrary frames: never panics; `peek` and `decap` agree;
//! an error leaves the buffer unchanged; on success the inner frame is exactly `inner_len`
//! bytes. Round trip: encap then decap gives the inner frame back with its header fields.
#![no_main]

use arbitrary::Arbitrary;
use colo_proxy::buf::{PacketBuf, VecBuf};
use colo_proxy::link::encap::{self, EncapConfig, EncapRx};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    ethertype: Option<u16>,
    frames: Vec<Vec<u8>>,
    inner: Vec<u8>,
    stream: u8,
    flags: u8,
    seq: u32,
}

fuzz_target!(|i: Input| {
    let cfg = EncapConfig::default();
    let et = i.ethertype.unwrap_or(cfg.ethertype);
    let mut rx: EncapRx = EncapRx::new(et);
    for f in i.frames.iter().take(16) {
        let peeked = encap::peek(f, et);
        let mut b = VecBuf::from_slice(f);
        match rx.decap(&mut b) {
            Ok((h, _ev)) => {
                assert_eq!(Ok(h), peeked);
                assert_eq!(b.len(), usize::from(h.inner_len));
                assert_eq!(b.data(), &f[encap::OVERHEAD..encap::OVERHEAD + b.len()]);
            }
            Err(_) => assert_eq!(b.data(), &f[..], "error changed the buffer"),
        }
        let _ = rx.stream_stats(f.first().copied().unwrap_or(0));
    }
    // Round trip.
    let mut b = VecBuf::from_slice(&i.inner);
    match encap::encap(&mut b, &cfg, i.stream, i.flags, i.seq) {
        Ok(()) => {
            let h = encap::decap(&mut b, cfg.ethertype).expect("our own encapsulation decodes");
            assert_eq!((h.stream, h.flags, h.seq), (i.stream, i.flags, i.seq));
            assert_eq!(b.data(), &i.inner[..]);
        }
        Err(_) => assert!(i.inner.len() > usize::from(u16::MAX)),
    }
});
