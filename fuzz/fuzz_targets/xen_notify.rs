//! The Xen notify protocol: the QEMU-framed codec decodes any byte stream (with and without
//! the vnet field) into messages, "need more", or a clear error, never a panic, and never
//! claims more bytes than it was given; message parsers match exactly; what we encode
//! decodes back.
#![no_main]

use arbitrary::Arbitrary;
use colo_proxy::control::xen::{XenIn, XenOut, MAX_OUT_LEN};
use colo_proxy::mgmt::xen::{NotifyCodec, QemuCodec};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    vnet: bool,
    stream: Vec<u8>,
    payload: Vec<u8>,
}

fuzz_target!(|i: Input| {
    let codec = QemuCodec;
    let mut at = 0;
    while at < i.stream.len() {
        match codec.decode(&i.stream[at..], i.vnet) {
            Ok(Some((msg, used))) => {
                assert!(
                    used > 0 && used <= i.stream.len() - at,
                    "claimed {used} bytes"
                );
                if let Ok(m) = msg {
                    let hdr = if i.vnet { 8 } else { 4 };
                    assert_eq!(&i.stream[at + hdr..at + used], m.text());
                }
                at += used;
            }
            Ok(None) | Err(_) => break,
        }
    }
    match XenIn::parse(&i.payload) {
        Ok(m) => assert_eq!(m.text(), &i.payload[..]),
        Err(u) => assert_eq!(u.len, i.payload.len()),
    }
    if let Some(m) = XenOut::parse(&i.payload) {
        assert_eq!(m.text(), &i.payload[..]);
    }
    // Round trips: what Xen would send decodes to the message; what we send parses back.
    for m in [XenIn::ProxyInit, XenIn::CheckpointDone] {
        let mut b = [0u8; 64];
        let n = m.encode(i.vnet, &mut b).expect("fits");
        assert_eq!(codec.decode(&b[..n], i.vnet), Ok(Some((Ok(m), n))));
        assert_eq!(codec.decode(&b[..n - 1], i.vnet), Ok(None));
    }
    for m in [XenOut::GetXenInit, XenOut::DoCheckpoint] {
        let mut v = Vec::new();
        codec.encode(m, &mut v);
        assert!(v.len() <= MAX_OUT_LEN);
        assert_eq!(XenOut::parse(&v[4..]), Some(m));
    }
});
