//! The Xen notify protocol: the QEMU-framed codec decodes any byte stream (with and without
//! the vnet field) into messages, "need more", or a clear error, never a panic, and never
//! claims more bytes than it was given; message parsers match exactly; what we encode
//! decodes back. Input: one flag byte (bit 0: vnet field), then the stream (seeds: framed
//! Xen messages).
#![no_main]

use colo_proxy::control::xen::{XenIn, XenOut, MAX_OUT_LEN};
use colo_proxy::mgmt::xen::{NotifyCodec, QemuCodec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, stream)) = data.split_first() else {
        return;
    };
    let vnet = flags & 1 != 0;
    let codec = QemuCodec;
    let mut at = 0;
    while at < stream.len() {
        match codec.decode(&stream[at..], vnet) {
            Ok(Some((msg, used))) => {
                assert!(
                    used > 0 && used <= stream.len() - at,
                    "claimed {used} bytes"
                );
                if let Ok(m) = msg {
                    let hdr = if vnet { 8 } else { 4 };
                    assert_eq!(&stream[at + hdr..at + used], m.text());
                }
                at += used;
            }
            Ok(None) | Err(_) => break,
        }
    }
    // The parsers on the raw bytes (as a deframed payload).
    match XenIn::parse(stream) {
        Ok(m) => assert_eq!(m.text(), stream),
        Err(u) => assert_eq!(u.len, stream.len()),
    }
    if let Some(m) = XenOut::parse(stream) {
        assert_eq!(m.text(), stream);
    }
    // Round trips: what Xen would send decodes to the message; what we send parses back.
    for m in [XenIn::ProxyInit, XenIn::CheckpointDone] {
        let mut b = [0u8; 64];
        let n = m.encode(vnet, &mut b).expect("fits");
        assert_eq!(codec.decode(&b[..n], vnet), Ok(Some((Ok(m), n))));
        assert_eq!(codec.decode(&b[..n - 1], vnet), Ok(None));
    }
    for m in [XenOut::GetXenInit, XenOut::DoCheckpoint] {
        let mut v = Vec::new();
        codec.encode(m, &mut v);
        assert!(v.len() <= MAX_OUT_LEN);
        assert_eq!(XenOut::parse(&v[4..]), Some(m));
    }
});
