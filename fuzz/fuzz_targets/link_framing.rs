//! The QEMU chardev framing decoder on arbitrary bytes cut at arbitrary points: never panics;
//! feeding the stream in pieces gives exactly what feeding it whole gives (frames, errors,
//! counters); a failed decoder stays failed. Round trip: frames encoded and decoded in any
//! fragmentation come back unchanged.
#![no_main]

use arbitrary::Arbitrary;
use colo_proxy::link::framing::{Decoded, Decoder, FrameConfig, FrameError};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    vnet: bool,
    /// A small cap so oversize lengths are reachable.
    small_cap: bool,
    stream: Vec<u8>,
    cuts: Vec<u16>,
    frames: Vec<(u8, Vec<u8>)>,
}

#[derive(Debug, PartialEq, Eq)]
enum Item {
    Frame(u32, Vec<u8>),
    Empty(u32),
}

fn run(
    cfg: FrameConfig,
    stream: &[u8],
    cuts: &[u16],
) -> (Vec<Item>, Result<(), FrameError>, Decoder) {
    let mut d = Decoder::new(cfg);
    let mut items = Vec::new();
    let mut res = Ok(());
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let n = cuts.get(i).map_or(stream.len() - at, |&c| {
            (usize::from(c) % 97 + 1).min(stream.len() - at)
        });
        i += 1;
        res = d.feed(&stream[at..at + n], |x| {
            items.push(match x {
                Decoded::Frame { vnet_hdr_len, data } => Item::Frame(vnet_hdr_len, data.to_vec()),
                Decoded::Empty { vnet_hdr_len } => Item::Empty(vnet_hdr_len),
            })
        });
        at += n;
        if res.is_err() {
            // Stays failed: the next call returns the same error without delivering anything.
            let again = d.feed(&[0u8; 9], |_| panic!("delivered after failure"));
            assert_eq!(again, res);
            break;
        }
    }
    (items, res, d)
}

fuzz_target!(|i: Input| {
    let cfg = FrameConfig {
        max_frame: if i.small_cap {
            300
        } else {
            FrameConfig::default().max_frame
        },
        ..FrameConfig::with_vnet(i.vnet)
    };
    // Arbitrary bytes: whole vs. in pieces.
    let (whole, rw, mut dw) = run(cfg, &i.stream, &[]);
    let (parts, rp, mut dp) = run(cfg, &i.stream, &i.cuts);
    assert_eq!(whole, parts);
    assert_eq!(rw, rp);
    assert_eq!(dw.stats().frames, dp.stats().frames);
    assert_eq!(dw.finish(), dp.finish());
    assert_eq!(dw.at_boundary(), dp.at_boundary());

    // Round trip of well-formed frames.
    let mut enc = Vec::new();
    let mut want = Vec::new();
    for (vnet_len, data) in i.frames.iter().take(16) {
        let vnet_len = if i.vnet { u32::from(*vnet_len % 21) } else { 0 };
        let mut buf = vec![0u8; cfg.encoded_len(data.len())];
        match cfg.encode(&mut buf, vnet_len, data) {
            Ok(n) => {
                enc.extend_from_slice(&buf[..n]);
                want.push(Item::Frame(vnet_len, data.clone()));
            }
            Err(FrameError::Empty) => assert!(data.is_empty()),
            Err(e) => assert!(data.len() > cfg.max_frame, "{e:?}"),
        }
    }
    let (got, r, mut d) = run(cfg, &enc, &i.cuts);
    assert_eq!(r, Ok(()));
    assert_eq!(got, want);
    assert_eq!(d.finish(), Ok(()));
    assert!(d.at_boundary());
    d.reset();
});
