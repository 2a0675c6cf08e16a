//! Decoder/encoder properties: every fragmentation, random chunkings, edge cases.

use colo_proxy::link::framing::{Decoded, Decoder, FrameConfig, FrameError, NET_BUFSIZE};
use proptest::prelude::*;

type Frames = Vec<(u32, Vec<u8>)>;

fn stream(cfg: FrameConfig, frames: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let total: usize = frames.iter().map(|(_, f)| cfg.encoded_len(f.len())).sum();
    let mut out = Vec::with_capacity(total);
    for (v, f) in frames {
        cfg.encode_append(&mut out, *v, f).unwrap();
    }
    assert_eq!(out.len(), total);
    out
}

fn decode_chunks(cfg: FrameConfig, chunks: &[&[u8]]) -> (Frames, Decoder) {
    let mut d = Decoder::new(cfg);
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c, |x| {
            if let Decoded::Frame { vnet_hdr_len, data } = x {
                out.push((vnet_hdr_len, data.to_vec()));
            }
        })
        .unwrap();
    }
    (out, d)
}

fn sample(vnet: bool) -> Frames {
    let v = |x| if vnet { x } else { 0 };
    vec![
        (v(12), (0..60u8).collect()),
        (v(0), vec![0xAB]),
        (v(10), (0..=255u8).cycle().take(1514).collect()),
        (v(20), vec![7; 3]),
    ]
}

#[test]
fn every_single_split_point() {
    for vnet in [false, true] {
        let cfg = FrameConfig::with_vnet(vnet);
        let frames = sample(vnet);
        let s = stream(cfg, &frames);
        for i in 0..=s.len() {
            let (out, d) = decode_chunks(cfg, &[&s[..i], &s[i..]]);
            assert_eq!(out, frames, "split at {i} vnet={vnet}");
            assert!(d.at_boundary());
        }
    }
}

#[test]
fn every_two_split_points_on_small_stream() {
    let cfg = FrameConfig::with_vnet(true);
    let frames: Frames = vec![(1, vec![1, 2, 3]), (2, vec![4]), (3, vec![5, 6])];
    let s = stream(cfg, &frames);
    for i in 0..=s.len() {
        for j in i..=s.len() {
            let (out, _) = decode_chunks(cfg, &[&s[..i], &s[i..j], &s[j..]]);
            assert_eq!(out, frames, "splits {i},{j}");
        }
    }
}

#[test]
fn byte_at_a_time() {
    let cfg = FrameConfig::with_vnet(true);
    let frames = sample(true);
    let s = stream(cfg, &frames);
    let chunks: Vec<&[u8]> = s.chunks(1).collect();
    let (out, d) = decode_chunks(cfg, &chunks);
    assert_eq!(out, frames);
    // Only the 1-byte frame fits wholly inside a 1-byte chunk.
    assert_eq!(d.stats().zero_copy, 1);
    // One chunk: everything zero-copy.
    let (_, d) = decode_chunks(cfg, &[&s]);
    assert_eq!(d.stats().zero_copy, 4);
}

#[test]
fn length_zero_between_frames() {
    let cfg = FrameConfig::with_vnet(true);
    let mut s = stream(cfg, &[(0, vec![1])]);
    s.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 12]);
    s.extend_from_slice(&stream(cfg, &[(0, vec![2])]));
    for i in 0..=s.len() {
        let mut d = Decoder::new(cfg);
        let mut seen = Vec::new();
        for c in [&s[..i], &s[i..]] {
            d.feed(c, |x| {
                seen.push(match x {
                    Decoded::Frame { data, .. } => format!("f{}", data[0]),
                    Decoded::Empty { vnet_hdr_len } => format!("e{vnet_hdr_len}"),
                })
            })
            .unwrap();
        }
        assert_eq!(seen, ["f1", "e12", "f2"]);
        assert_eq!(d.stats().empty, 1);
    }
}

#[test]
fn oversize_after_good_frames_delivers_the_good_ones() {
    let cfg = FrameConfig::default();
    let mut s = stream(cfg, &[(0, vec![1, 2])]);
    s.extend_from_slice(&((NET_BUFSIZE + 1) as u32).to_be_bytes());
    s.extend_from_slice(&[9; 100]);
    let mut d = Decoder::new(cfg);
    let mut n = 0;
    let r = d.feed(&s, |_| n += 1);
    assert_eq!(
        r,
        Err(FrameError::Oversize {
            len: NET_BUFSIZE as u32 + 1,
            cap: NET_BUFSIZE
        })
    );
    assert_eq!(n, 1);
    assert_eq!(d.stats().oversize, 1);
    // Stays failed until reset; finish reports the failure.
    assert!(d.feed(&[0, 0, 0, 1, 1], |_| n += 1).is_err());
    assert!(d.finish().is_err());
    assert_eq!(n, 1);
}

#[test]
fn custom_cap_is_enforced() {
    let cfg = FrameConfig {
        vnet_hdr_support: false,
        max_frame: 100,
    };
    let mut d = Decoder::new(cfg);
    assert!(d.feed(&[0, 0, 0, 100], |_| {}).is_ok());
    let mut d = Decoder::new(cfg);
    assert!(matches!(
        d.feed(&[0, 0, 0, 101], |_| {}),
        Err(FrameError::Oversize { .. })
    ));
    let mut buf = [0u8; 200];
    assert!(matches!(
        cfg.encode(&mut buf, 0, &[0; 101]),
        Err(FrameError::Oversize { .. })
    ));
}

#[test]
fn reconnect_mid_frame_resets_cleanly() {
    let cfg = FrameConfig::with_vnet(true);
    let frames = sample(true);
    let s = stream(cfg, &frames);
    for cut in 1..s.len() {
        let mut d = Decoder::new(cfg);
        let mut out = Vec::new();
        d.feed(&s[..cut], |_| {}).unwrap();
        if !d.at_boundary() {
            assert!(matches!(d.finish(), Err(FrameError::Truncated { .. })));
        }
        d.reset();
        d.feed(&s, |x| {
            if let Decoded::Frame { vnet_hdr_len, data } = x {
                out.push((vnet_hdr_len, data.to_vec()));
            }
        })
        .unwrap();
        assert_eq!(out, frames, "cut {cut}");
    }
}

#[test]
fn garbage_never_panics() {
    // Deterministic pseudo-random garbage through both configurations.
    let mut x: u64 = 0x1234_5678_9abc_def0;
    for vnet in [false, true] {
        let mut d = Decoder::new(FrameConfig::with_vnet(vnet));
        for _ in 0..2000 {
            let mut chunk = [0u8; 37];
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if d.feed(&chunk, |_| {}).is_err() {
                d.reset();
            }
        }
        let s = d.stats();
        assert!(s.oversize + s.bad_vnet > 0);
    }
}

fn frames_strategy() -> impl Strategy<Value = (bool, Frames)> {
    any::<bool>().prop_flat_map(|vnet| {
        (
            Just(vnet),
            prop::collection::vec(
                ((0u32..=20), prop::collection::vec(any::<u8>(), 1..300)),
                1..12,
            )
            .prop_map(move |v| {
                v.into_iter()
                    .map(|(h, f)| (if vnet { h } else { 0 }, f))
                    .collect::<Frames>()
            }),
        )
    })
}

proptest! {
    #[test]
    fn random_chunkings_round_trip((vnet, frames) in frames_strategy(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20)) {
        let cfg = FrameConfig::with_vnet(vnet);
        let s = stream(cfg, &frames);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(s.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for p in points {
            chunks.push(&s[prev..p]);
            prev = p;
        }
        chunks.push(&s[prev..]);
        let (out, d) = decode_chunks(cfg, &chunks);
        prop_assert_eq!(out, frames.clone());
        prop_assert!(d.at_boundary());
        prop_assert_eq!(d.stats().frames, frames.len() as u64);
    }
}
