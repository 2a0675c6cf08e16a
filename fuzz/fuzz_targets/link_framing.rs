//! The QEMU chardev framing decoder on arbitrary bytes cut at arbitrary points: never panics;
//! feeding the stream in pieces gives exactly what feeding it whole gives (frames, errors,
//! counters); a failed decoder stays failed. Round trip: frames encoded and decoded in any
//! fragmentation come back unchanged. Input: a flag byte (bit 0: vnet field, bit 1: a small
//! frame cap), a cut-size byte, then the stream (seeds: the tests' framed streams); the round
//! trip encodes the stream's bytes cut into frames.
#![no_main]

use colo_proxy::link::framing::{Decoded, Decoder, FrameConfig, FrameError};
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
    let [flags, cut, stream @ ..] = data else {
        return;
    };
    let (vnet, small_cap) = (flags & 1 != 0, flags & 2 != 0);
    // Piece sizes 1..=97 from a tiny LCG seeded by the cut byte.
    let mut x = u32::from(*cut);
    let cuts: Vec<u16> = (0..64)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u16
        })
        .collect();
    let cfg = FrameConfig {
        max_frame: if small_cap {
            300
        } else {
            FrameConfig::default().max_frame
        },
        ..FrameConfig::with_vnet(vnet)
    };
    // Arbitrary bytes: whole vs. in pieces.
    let (whole, rw, mut dw) = run(cfg, stream, &[]);
    let (parts, rp, mut dp) = run(cfg, stream, &cuts);
    assert_eq!(whole, parts);
    assert_eq!(rw, rp);
    assert_eq!(dw.stats().frames, dp.stats().frames);
    assert_eq!(dw.finish(), dp.finish());
    assert_eq!(dw.at_boundary(), dp.at_boundary());

    // Round trip of well-formed frames: the stream's bytes cut into frames.
    let mut enc = Vec::new();
    let mut want = Vec::new();
    let mut rest = stream;
    for (k, &c) in cuts.iter().enumerate().take(16) {
        if rest.is_empty() {
            break;
        }
        let n = (usize::from(c) % 400 + 1).min(rest.len());
        let (data, tail) = rest.split_at(n);
        rest = tail;
        let vnet_len = if vnet { (k % 21) as u32 } else { 0 };
        let mut buf = vec![0u8; cfg.encoded_len(data.len())];
        match cfg.encode(&mut buf, vnet_len, data) {
            Ok(n) => {
                enc.extend_from_slice(&buf[..n]);
                want.push(Item::Frame(vnet_len, data.to_vec()));
            }
            Err(e) => assert!(data.len() > cfg.max_frame, "{e:?}"),
        }
    }
    let (got, r, mut d) = run(cfg, &enc, &cuts);
    assert_eq!(r, Ok(()));
    assert_eq!(got, want);
    assert_eq!(d.finish(), Ok(()));
    assert!(d.at_boundary());
    d.reset();
});
