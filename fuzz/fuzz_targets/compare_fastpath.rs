//! Differential: the compare engine's fast parser (`Comparator::process`, untagged IPv4
//! TCP/UDP parsed straight into key, hash and metadata) against the general path
//! (`wire::parse` + `FlowKey::of` + `hash64` + `process_parsed_hashed`). The same frames on
//! two engines must give the same verdicts, the same frames out and the same events.
#![no_main]

use colo_proxy::buf::VecBuf;
use colo_proxy::compare::{Comparator, CompareConfig, Side};
use colo_proxy::flow::FlowKey;
use colo_proxy_fuzz::{as_secondary, CompareOp as Op, Rec, Tagged, MS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|ops: Vec<Op>| {
    let cfg = CompareConfig {
        queue_size: 4,
        table_capacity: 4,
        pool_size: 12,
        timeout_ns: 300 * MS,
        scan_period_ns: 100 * MS,
        idle_timeout_ns: 2_000 * MS,
        ..CompareConfig::default()
    };
    let mut fast: Comparator<Tagged> = Comparator::new(cfg.clone());
    let mut general: Comparator<Tagged> = Comparator::new(cfg);
    let (mut rf, mut rg) = (
        Rec {
            keep_frames: true,
            ..Rec::default()
        },
        Rec {
            keep_frames: true,
            ..Rec::default()
        },
    );
    let mut now = 1_000 * MS;
    let mut id = 0u32;
    let mut feed = |side: Side,
                    f: Vec<u8>,
                    now: u64,
                    fast: &mut Comparator<Tagged>,
                    general: &mut Comparator<Tagged>,
                    rf: &mut Rec,
                    rg: &mut Rec| {
        id += 1;
        fast.process(
            side,
            Tagged {
                buf: VecBuf::from_slice(&f),
                id,
            },
            now,
            rf,
        );
        let pkt = Tagged {
            buf: VecBuf::from_slice(&f),
            id,
        };
        match colo_proxy::wire::parse(&f) {
            Ok(info) if f.len() <= colo_proxy::compare::MAX_FRAME_LEN => {
                let key = FlowKey::of(&info, &f);
                general.process_parsed_hashed(side, pkt, &info, &key, key.hash64(), now, rg);
            }
            // Malformed or oversize: both go the same (slow) way.
            _ => general.process(side, pkt, now, rg),
        }
    };
    for op in ops.into_iter().take(64) {
        match op {
            Op::P(s) => feed(
                Side::Primary,
                s.build(),
                now,
                &mut fast,
                &mut general,
                &mut rf,
                &mut rg,
            ),
            Op::S(s) => feed(
                Side::Secondary,
                as_secondary(s.build()),
                now,
                &mut fast,
                &mut general,
                &mut rf,
                &mut rg,
            ),
            Op::Both(s) => {
                let f = s.build();
                feed(
                    Side::Primary,
                    f.clone(),
                    now,
                    &mut fast,
                    &mut general,
                    &mut rf,
                    &mut rg,
                );
                feed(
                    Side::Secondary,
                    as_secondary(f),
                    now,
                    &mut fast,
                    &mut general,
                    &mut rf,
                    &mut rg,
                );
            }
            Op::Tick(ms) => {
                now += u64::from(ms) * MS;
                fast.tick(now, &mut rf);
                general.tick(now, &mut rg);
            }
            Op::Checkpoint => {
                fast.checkpoint_done(now, &mut rf);
                general.checkpoint_done(now, &mut rg);
            }
            Op::Flush => {
                fast.flush_all(&mut rf);
                general.flush_all(&mut rg);
            }
        }
        assert_eq!(rf.left, rg.left, "verdicts differ");
        assert_eq!(rf.frames, rg.frames, "released bytes differ");
        assert_eq!(rf.events, rg.events, "events differ");
        assert_eq!(fast.counters(), general.counters());
    }
});
