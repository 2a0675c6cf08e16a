//! `colo-proxy selfcheck`: bring up EAL on virtual devices, forward a burst between two
//! cross-connected ring ports (received on a worker lcore when there is one) and check that
//! every frame arrives byte-identical and the mempool returns to its baseline.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::buf::PacketBuf;
use crate::dpdk::{
    launch_on, version, worker_lcores, DpdkError, Eal, Mbuf, MbufBurst, Mempool, Port, PortConfig,
    Result,
};

/// Frames sent by the self-check.
pub const BURST: usize = 32;

/// EAL arguments used when none are given: 2 lcores, no PCI, hugepages if free, two ring vdevs.
pub fn default_eal_args() -> Vec<String> {
    let mut a: Vec<String> = ["-l", "0-1", "--no-pci"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(crate::dpdk::default_mem_args());
    a.extend(
        ["--vdev", "net_ring0", "--vdev", "net_ring1"]
            .iter()
            .map(|s| s.to_string()),
    );
    a
}

/// `colo-proxy selfcheck [-- EAL args]`.
pub fn cli(eal: &[String]) -> ExitCode {
    let args = if eal.is_empty() {
        default_eal_args()
    } else {
        eal.to_vec()
    };
    println!("selfcheck: {} (EAL args: {})", version(), args.join(" "));
    match run(&args) {
        Ok(()) => {
            println!("selfcheck: OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("selfcheck FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A UDP frame whose payload encodes `i`, so reordering or corruption is visible.
pub fn test_frame(i: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..64 + i).map(|b| (b as u8) ^ (i as u8)).collect();
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        .udp(10000 + i as u16, 7);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    // Writing into a Vec cannot fail.
    let _ = builder.write(&mut out, &payload);
    out
}

fn run(args: &[String]) -> Result<()> {
    let eal = Eal::init(args)?;
    println!(
        "selfcheck: EAL up, {} lcores, hugepages {}",
        eal.lcore_count(),
        if eal.hugepages() {
            "used"
        } else {
            "not used (--no-huge)"
        }
    );
    let pool = Mempool::new("selfcheck_pool", 1023)?;
    for id in 0..eal.port_count() {
        let mut p = Port::open(id, &PortConfig::default(), &pool)?;
        p.start()?;
        let mac = p.mac()?;
        println!(
            "selfcheck: EAL port {id} {} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} link {}",
            p.name(),
            mac[0],
            mac[1],
            mac[2],
            mac[3],
            mac[4],
            mac[5],
            if p.link()?.up { "up" } else { "down" }
        );
    }
    let (a, b) = Port::ring_pair("selfcheck_a", "selfcheck_b")?;
    let mut pa = Port::open(a, &PortConfig::default(), &pool)?;
    let mut pb = Port::open(b, &PortConfig::default(), &pool)?;
    pa.start()?;
    pb.start()?;
    println!(
        "selfcheck: ports {} ({a}) -> {} ({b}), cross-connected rings",
        pa.name(),
        pb.name()
    );
    let mut tx = pa.tx_queue(0)?;
    let mut rx = pb.rx_queue(0)?;
    let baseline = pool.in_use();

    let frames: Vec<Vec<u8>> = (0..BURST).map(test_frame).collect();
    let mut burst: MbufBurst<BURST> = MbufBurst::new();
    for f in &frames {
        let mut m = pool
            .alloc()
            .ok_or_else(|| DpdkError::new(libc::ENOMEM, "allocating a selfcheck mbuf"))?;
        m.set_data(f)
            .map_err(|e| DpdkError::other("filling a selfcheck mbuf", e.to_string()))?;
        let _ = burst.push(m);
    }
    let sent = tx.tx_burst(&mut burst);
    if sent != BURST {
        burst.clear();
        return Err(DpdkError::other(
            "tx_burst",
            format!("sent {sent} of {BURST}"),
        ));
    }

    // Receive on a worker lcore when there is one (exercises launch), else here.
    let mut receive = move || -> Vec<Vec<u8>> {
        let mut got = Vec::with_capacity(BURST);
        let mut rb: MbufBurst<BURST> = MbufBurst::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < BURST && Instant::now() < deadline {
            rx.rx_burst(&mut rb);
            got.extend(rb.drain().map(|m: Mbuf| PacketBuf::data(&m).to_vec()));
        }
        got
    };
    let (got, on) = match worker_lcores().next() {
        Some(l) => (launch_on(l, receive)?.join()?, format!("worker lcore {l}")),
        None => (receive(), "the main lcore".to_string()),
    };
    if got.len() != BURST {
        return Err(DpdkError::other(
            "receiving",
            format!("got {} of {BURST} frames", got.len()),
        ));
    }
    if let Some(i) = (0..BURST).find(|&i| got[i] != frames[i]) {
        return Err(DpdkError::other(
            "comparing",
            format!("frame {i} differs after forwarding"),
        ));
    }
    println!("selfcheck: forwarded {BURST}/{BURST} frames byte-identical (received on {on})");
    let sa = pa.stats()?;
    let sb = pb.stats()?;
    println!(
        "selfcheck: port stats: a opackets {} | b ipackets {}",
        sa.opackets, sb.ipackets
    );
    let in_use = pool.in_use();
    println!("selfcheck: mempool in use {in_use} (baseline {baseline})");
    if in_use != baseline {
        return Err(DpdkError::other(
            "mempool",
            format!("{in_use} mbufs in use, baseline {baseline}"),
        ));
    }
    Ok(())
}
