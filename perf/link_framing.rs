//! Link framing throughput over a loopback UNIX socket: our batched decoder/encoder
//! (`FramedSocket`: one write per batch, 256 KiB reads decoding many frames per syscall)
//! against a naive baseline measured in the same run (one `write` per frame; `read_exact` of
//! header then body per frame, like a simple QEMU-framing peer).
//!
//! `cargo bench --bench link_framing -- --smoke` runs a few seconds; without `--smoke` it runs
//! longer for stabler numbers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use colo_proxy::link::framing::FrameConfig;
use colo_proxy::link::socket::{FramedSocket, Role, SendError, SocketConfig};

struct Result {
    frames: u64,
    bytes: u64,
    secs: f64,
    syscalls: u64,
}

impl Result {
    fn fps(&self) -> f64 {
        self.frames as f64 / self.secs
    }
    fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

fn frame(size: usize) -> Vec<u8> {
    (0..size).map(|i| i as u8).collect()
}

fn ours(dir: &std::path::Path, size: usize, n: u64, vnet: bool) -> Result {
    let addr = format!("unix:{}", dir.join(format!("b{size}.sock")).display());
    let fc = FrameConfig::with_vnet(vnet);
    let mut server =
        FramedSocket::new(SocketConfig::parse(&addr, Role::Server, fc).unwrap()).unwrap();
    let caddr = addr.clone();
    let f = frame(size);
    let writer = std::thread::spawn(move || {
        let mut client =
            FramedSocket::new(SocketConfig::parse(&caddr, Role::Client, fc).unwrap()).unwrap();
        let mut sent = 0u64;
        while sent < n {
            match client.send(0, &f) {
                Ok(()) => sent += 1,
                Err(SendError::Backpressure) => {
                    if client.flush() > 0 {
                        std::thread::yield_now();
                    }
                }
                Err(e) => panic!("{e}"),
            }
            // Flush per batch of 64 frames (a poll-loop burst).
            if sent.is_multiple_of(64) {
                client.flush();
            }
        }
        while client.flush() > 0 {
            std::thread::yield_now();
        }
        // Keep the connection until the reader is done.
        std::thread::sleep(Duration::from_millis(200));
        client.stats()
    });
    // Time from the first frame received (connection set-up excluded).
    let mut t0 = Instant::now();
    let mut got = 0u64;
    let mut bytes = 0u64;
    let deadline = t0 + Duration::from_secs(60);
    while got < n {
        let k = server.poll_recv(|_, d| bytes += d.len() as u64);
        if got == 0 && k > 0 {
            t0 = Instant::now();
        }
        got += k as u64;
        if k == 0 {
            assert!(Instant::now() < deadline, "bench stalled");
            std::thread::yield_now();
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cs = writer.join().unwrap();
    Result {
        frames: got,
        bytes,
        secs,
        syscalls: server.stats().read_calls + cs.write_calls,
    }
}

fn naive(size: usize, n: u64, vnet: bool) -> Result {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let f = frame(size);
    let hl = if vnet { 8 } else { 4 };
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; hl + f.len()];
        buf[..4].copy_from_slice(&(f.len() as u32).to_be_bytes());
        buf[hl..].copy_from_slice(&f);
        for _ in 0..n {
            a.write_all(&buf).unwrap();
        }
    });
    let t0 = Instant::now();
    let mut hdr = [0u8; 8];
    let mut body = vec![0u8; 70000];
    let mut bytes = 0u64;
    for _ in 0..n {
        b.read_exact(&mut hdr[..hl]).unwrap();
        let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        b.read_exact(&mut body[..len]).unwrap();
        bytes += len as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    writer.join().unwrap();
    Result {
        frames: n,
        bytes,
        secs,
        syscalls: 3 * n,
    }
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let dir = std::env::temp_dir().join(format!("colo-bench-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "link framing over loopback UNIX socket ({} mode)",
        if smoke { "smoke" } else { "full" }
    );
    println!(
        "{:>6} {:>5} | {:>12} {:>9} {:>9} | {:>12} {:>9} | {:>6}",
        "size", "vnet", "ours fr/s", "MB/s", "sys/fr", "naive fr/s", "MB/s", "ratio"
    );
    for &size in &[64usize, 512, 1500] {
        for vnet in [false, true] {
            // Aim at ~0.4 s (smoke) / ~3 s (full) per measurement at ~1 GB/s.
            let budget: u64 = if smoke { 300_000_000 } else { 3_000_000_000 };
            let n = (budget / (size as u64 + 8)).clamp(20_000, 20_000_000);
            let n = if smoke { n.min(1_000_000) } else { n };
            let o = ours(&dir, size, n, vnet);
            let b = naive(size, n, vnet);
            println!(
                "{:>6} {:>5} | {:>12.0} {:>9.1} {:>9.4} | {:>12.0} {:>9.1} | {:>5.1}x",
                size,
                vnet,
                o.fps(),
                o.mbps(),
                o.syscalls as f64 / o.frames as f64,
                b.fps(),
                b.mbps(),
                o.fps() / b.fps()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
