//! Client and VM simulators over an in-memory wire: transactions, loss, PVM/SVM determinism,
//! divergence injection, checkpoint restore, malformed input.

use std::collections::HashMap;

use colo_proxy::buf::{PacketBuf, VecBuf};
use colo_proxy::demo::sim::{
    Addresses, ClientConfig, ClientSim, FrameAlloc, VecAlloc, VmConfig, VmSim,
};
use colo_proxy::wire::{self, checksum, packet::tcp_flags, PacketInfo};

/// Simulated time per step.
const STEP: u64 = 50_000;

fn client_cfg(max: u64) -> ClientConfig {
    ClientConfig {
        concurrency: 8,
        request_bytes: 4..=5000,
        udp_every: 5,
        icmp_every: 7,
        ipv6_every: 3,
        timeout_ns: 5_000_000_000,
        rto_ns: 2_000_000,
        seed: 11,
        max_transactions: Some(max),
        time_wait_ns: 1_000_000,
        ..ClientConfig::default()
    }
}

fn vm_cfg(isn_seed: u64) -> VmConfig {
    VmConfig {
        isn_seed,
        response_bytes: 4..=9000,
        rto_ns: 2_000_000,
        mss: 1000,
        ..VmConfig::default()
    }
}

/// Drops one frame in `drop_every` (0: none).
struct Wire {
    drop_every: usize,
    n: usize,
    dropped: usize,
}

impl Wire {
    fn new(drop_every: usize) -> Self {
        Wire {
            drop_every,
            n: 0,
            dropped: 0,
        }
    }
    fn pass(&mut self) -> bool {
        self.n += 1;
        // One frame in `drop_every` on average, at scrambled positions: a strictly periodic
        // pattern can line up with a go-back-N window and hit the same segment every round.
        let h = (self.n as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
        if self.drop_every > 0 && h.is_multiple_of(self.drop_every as u64) {
            self.dropped += 1;
            return false;
        }
        true
    }
}

/// Fails every `every`-th allocation.
struct FlakyAlloc {
    every: u64,
    n: u64,
}

impl FrameAlloc<VecBuf> for FlakyAlloc {
    fn alloc(&mut self) -> Option<VecBuf> {
        self.n += 1;
        if self.every > 0 && self.n.is_multiple_of(self.every) {
            return None;
        }
        VecAlloc.alloc()
    }
}

/// Run client ⇄ VM until the client is done and the VM has closed everything. Returns steps.
fn run_direct(
    client: &mut ClientSim,
    vm: &mut VmSim,
    wire: &mut Wire,
    alloc: &mut impl FrameAlloc<VecBuf>,
    max_steps: usize,
) -> usize {
    let mut to_vm: Vec<VecBuf> = Vec::new();
    let mut to_client: Vec<VecBuf> = Vec::new();
    let mut now = 0;
    for step in 0..max_steps {
        if client.is_done() && vm.connections() == 0 && to_vm.is_empty() && to_client.is_empty() {
            return step;
        }
        now += STEP;
        client.generate(now, alloc, 16, &mut |b| to_vm.push(b));
        vm.tick(now, alloc, &mut |b| to_client.push(b));
        for f in std::mem::take(&mut to_vm) {
            if wire.pass() {
                vm.on_rx(&f, now, alloc, &mut |b| to_client.push(b));
            }
        }
        for f in std::mem::take(&mut to_client) {
            if wire.pass() {
                client.on_rx(&f, now, alloc, &mut |b| to_vm.push(b));
            }
        }
    }
    max_steps
}

fn assert_vm_rx_accounted(vm: &VmSim) {
    let s = vm.stats();
    assert_eq!(
        s.rx_frames,
        s.rx_malformed + s.rx_bad_checksum + s.rx_ignored + s.rx_tcp + s.rx_udp + s.rx_icmp,
        "{s:?}"
    );
}

#[test]
fn transactions_complete_and_verify() {
    let addrs = Addresses::default();
    let mut client = ClientSim::new(addrs, client_cfg(300));
    let mut vm = VmSim::new(addrs, vm_cfg(1));
    let steps = run_direct(
        &mut client,
        &mut vm,
        &mut Wire::new(0),
        &mut VecAlloc,
        100_000,
    );
    assert!(steps < 100_000, "did not finish");
    let c = client.stats();
    let tcp = c.tcp_opened;
    assert!(tcp > 150 && c.udp_sent > 30 && c.icmp_sent > 30, "{c:?}");
    assert_eq!(tcp + c.udp_sent + c.icmp_sent, 300);
    assert_eq!(c.tcp_completed, tcp);
    assert_eq!(c.udp_answered, c.udp_sent);
    assert_eq!(c.icmp_answered, c.icmp_sent);
    assert_eq!(c.responses_verified, 300);
    assert_eq!(c.responses_wrong, 0);
    assert_eq!(c.tcp_failed + c.tcp_reset + c.udp_lost + c.icmp_lost, 0);
    assert_eq!(c.retransmits, 0);
    assert_eq!(c.lat_tcp.len(), tcp);
    assert_eq!(c.lat_udp.len(), c.udp_sent);
    assert_eq!(c.lat_icmp.len(), c.icmp_sent);
    // SYN → SYN-ACK → request → response: two hops of the one-hop-per-step wire.
    // (hdrhistogram keeps 3 significant digits)
    let (lo, hi) = (c.lat_tcp.min(), c.lat_tcp.max());
    assert!(
        lo >= STEP * 99 / 100 && hi <= 3 * STEP + STEP / 100,
        "{lo} {hi}"
    );
    assert!(c.bytes_received > 0 && c.bytes_sent > 0);
    let v = vm.stats();
    assert_eq!(v.conns_opened, tcp);
    assert_eq!(v.conns_closed, tcp);
    assert_eq!(v.requests, tcp);
    assert_eq!(vm.connections(), 0);
    assert_eq!(
        v.retransmits + v.rst_sent + v.rx_bad_checksum + v.rx_malformed,
        0
    );
    assert_eq!(v.udp_replies, c.udp_sent);
    assert_eq!(v.icmp_replies, c.icmp_sent);
    assert!(
        v.tx_data_segments > tcp,
        "responses span several MSS-sized segments"
    );
    assert_vm_rx_accounted(&vm);
}

#[test]
fn transactions_survive_loss_by_retransmission() {
    let addrs = Addresses::default();
    for k in [5, 7, 13] {
        let cfg = ClientConfig {
            timeout_ns: 1_000_000_000, // lost datagrams end within the run
            ..client_cfg(200)
        };
        let mut client = ClientSim::new(addrs, cfg);
        let mut vm = VmSim::new(addrs, vm_cfg(1));
        let mut wire = Wire::new(k);
        let steps = run_direct(&mut client, &mut vm, &mut wire, &mut VecAlloc, 400_000);
        assert!(
            steps < 400_000,
            "k={k}: did not finish: {} {} {} {:?} {:?}",
            client.in_flight(),
            client.started(),
            vm.connections(),
            client.stats(),
            vm.stats()
        );
        assert!(wire.dropped > 50);
        let c = client.stats();
        // Datagrams are not retransmitted: lost ones time out; TCP always completes.
        assert_eq!(c.tcp_completed, c.tcp_opened, "k={k} {c:?}");
        assert_eq!(c.tcp_failed + c.tcp_reset, 0);
        assert_eq!(c.udp_answered + c.udp_lost, c.udp_sent);
        assert_eq!(c.icmp_answered + c.icmp_lost, c.icmp_sent);
        assert_eq!(c.responses_wrong, 0);
        assert_eq!(
            c.responses_verified,
            c.tcp_completed + c.udp_answered + c.icmp_answered
        );
        assert!(c.retransmits > 0 && vm.stats().retransmits > 0, "k={k}");
        assert!(
            c.lat_tcp.max() > c.lat_tcp.min() + 1_000_000,
            "retransmission shows in latency"
        );
        assert!(c.dup_segments > 0 || vm.stats().dup_acks > 0);
        assert_eq!(vm.connections(), 0, "k={k}: VM closed everything");
        assert_vm_rx_accounted(&vm);
    }
}

#[test]
fn allocation_failures_are_counted_and_retried() {
    let addrs = Addresses::default();
    let mut client = ClientSim::new(addrs, client_cfg(100));
    let mut vm = VmSim::new(addrs, vm_cfg(1));
    let mut alloc = FlakyAlloc { every: 4, n: 0 };
    let steps = run_direct(&mut client, &mut vm, &mut Wire::new(0), &mut alloc, 400_000);
    let c = client.stats();
    assert!(steps < 400_000, "{c:?} {:?}", vm.stats());
    assert!(c.alloc_failures > 0 && vm.stats().alloc_failures > 0);
    assert_eq!(c.tcp_completed, c.tcp_opened);
    assert_eq!(c.responses_wrong, 0);
    assert_eq!(vm.connections(), 0);
}

fn tcp_fields(f: &VecBuf) -> (PacketInfo, Option<wire::TcpInfo>) {
    let info = wire::parse(f.data()).expect("sim frames parse");
    (info, info.tcp)
}

/// Client ⇄ PVM on the wire; the SVM gets the same input, with acks moved into its own sequence
/// space like the secondary's rewriter does, and its output is only recorded.
struct Colo {
    client: ClientSim,
    pvm: VmSim,
    svm: VmSim,
    rewrite: bool,
    isn: HashMap<u16, (Option<u32>, Option<u32>)>,
    pvm_out: Vec<VecBuf>,
    svm_out: Vec<VecBuf>,
    to_vm: Vec<VecBuf>,
    now: u64,
}

impl Colo {
    fn new(client: ClientConfig, svm: VmConfig) -> Self {
        let addrs = Addresses::default();
        Colo {
            client: ClientSim::new(addrs, client),
            pvm: VmSim::new(addrs, vm_cfg(1)),
            svm: VmSim::new(addrs, svm),
            rewrite: true,
            isn: HashMap::new(),
            pvm_out: Vec::new(),
            svm_out: Vec::new(),
            to_vm: Vec::new(),
            now: 0,
        }
    }

    fn learn(&mut self, f: &VecBuf, svm: bool) {
        let (info, t) = tcp_fields(f);
        if let Some(t) = t {
            if t.has(tcp_flags::SYN | tcp_flags::ACK) {
                let e = self.isn.entry(info.dst_port).or_default();
                if svm {
                    e.1 = Some(t.seq);
                } else {
                    e.0 = Some(t.seq);
                }
            }
        }
    }

    fn offset(&self, port: u16) -> Option<u32> {
        match self.isn.get(&port) {
            Some((Some(p), Some(s))) => Some(s.wrapping_sub(*p)),
            _ => None,
        }
    }

    fn rewrite_ack(&self, f: &VecBuf) -> VecBuf {
        let mut g = f.clone();
        let (info, t) = tcp_fields(f);
        let (Some(t), Some(off)) = (t, self.offset(info.src_port)) else {
            return g;
        };
        if !self.rewrite || !t.has(tcp_flags::ACK) {
            return g;
        }
        let l4 = info.l4_off as usize;
        let new = t.ack.wrapping_add(off);
        let d = g.data_mut();
        d[l4 + 8..l4 + 12].copy_from_slice(&new.to_be_bytes());
        let old_csum = u16::from_be_bytes([d[l4 + 16], d[l4 + 17]]);
        let csum = checksum::update_u32(old_csum, t.ack, new);
        d[l4 + 16..l4 + 18].copy_from_slice(&csum.to_be_bytes());
        g
    }

    /// One hop per step: client frames of the last step reach both VMs, PVM frames reach the
    /// client, whose reactions wait for the next step (so connections span steps).
    fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        let mut to_vm = std::mem::take(&mut self.to_vm);
        self.client
            .generate(now, &mut VecAlloc, 16, &mut |b| to_vm.push(b));
        let mut p_new = Vec::new();
        let mut s_new = Vec::new();
        self.pvm.tick(now, &mut VecAlloc, &mut |b| p_new.push(b));
        self.svm.tick(now, &mut VecAlloc, &mut |b| s_new.push(b));
        for f in to_vm {
            self.pvm
                .on_rx(&f, now, &mut VecAlloc, &mut |b| p_new.push(b));
            let g = self.rewrite_ack(&f);
            self.svm
                .on_rx(&g, now, &mut VecAlloc, &mut |b| s_new.push(b));
        }
        for f in &p_new {
            self.learn(f, false);
        }
        for f in &s_new {
            self.learn(f, true);
        }
        let mut back = Vec::new();
        for f in &p_new {
            self.client
                .on_rx(f, now, &mut VecAlloc, &mut |b| back.push(b));
        }
        self.to_vm = back;
        self.pvm_out.append(&mut p_new);
        self.svm_out.append(&mut s_new);
    }
}

#[test]
fn pvm_and_svm_emit_identical_payloads_with_different_isns() {
    let mut colo = Colo::new(client_cfg(200), vm_cfg(2));
    for _ in 0..50_000 {
        colo.step();
        if colo.client.is_done() && colo.pvm.connections() == 0 {
            break;
        }
    }
    assert!(colo.client.is_done());
    assert_eq!(colo.client.stats().responses_verified, 200);
    assert_eq!(colo.svm.connections(), 0, "SVM closed in step with the PVM");
    // Same input in the same order: the two output sequences line up frame by frame.
    assert_eq!(colo.pvm_out.len(), colo.svm_out.len());
    let (mut tcp_data, mut dgrams, mut isn_differs) = (0, 0, 0);
    for (p, s) in colo.pvm_out.iter().zip(&colo.svm_out) {
        let (pi, pt) = tcp_fields(p);
        let (si, st) = tcp_fields(s);
        match (pt, st) {
            (Some(pt), Some(st)) => {
                assert_eq!(pi.dst_port, si.dst_port);
                assert_eq!(pt.flags, st.flags);
                assert_eq!(pt.ack, st.ack, "acks are in the client's space on both");
                assert_eq!(pi.payload(p.data()), si.payload(s.data()));
                let off = colo.offset(pi.dst_port).expect("both SYN-ACKs seen");
                assert_eq!(st.seq.wrapping_sub(pt.seq), off);
                if pt.has(tcp_flags::SYN) && pt.seq != st.seq {
                    isn_differs += 1;
                }
                if pi.payload_len() > 0 {
                    tcp_data += 1;
                }
            }
            (None, None) => {
                assert_eq!(p.data(), s.data(), "UDP/ICMP replies are byte-identical");
                dgrams += 1;
            }
            _ => panic!("frame kinds differ"),
        }
    }
    assert!(tcp_data > 100 && dgrams > 60 && isn_differs > 50);
}

#[test]
fn divergence_on_the_svm_changes_responses() {
    let svm = VmConfig {
        divergence_rate: 1.0,
        seed: 99,
        ..vm_cfg(2)
    };
    let mut colo = Colo::new(client_cfg(60), svm);
    for _ in 0..20_000 {
        colo.step();
        if colo.client.is_done() && colo.pvm.connections() == 0 {
            break;
        }
    }
    assert!(colo.client.is_done());
    assert_eq!(
        colo.client.stats().responses_wrong,
        0,
        "the client sees the PVM"
    );
    let mut differ = 0;
    for (p, s) in colo.pvm_out.iter().zip(&colo.svm_out) {
        let (pi, _) = tcp_fields(p);
        let (si, _) = tcp_fields(s);
        if pi.payload(p.data()) != si.payload(s.data()) {
            differ += 1;
        }
    }
    let div = colo.svm.stats().divergences;
    assert!(div > 40, "{div}");
    assert_eq!(colo.pvm.stats().divergences, 0);
    // Exactly one frame per corrupted response differs (no losses here).
    assert_eq!(differ, div);

    // Against the client directly, every TCP and UDP response is caught as wrong.
    let addrs = Addresses::default();
    let mut client = ClientSim::new(addrs, client_cfg(60));
    let mut vm = VmSim::new(
        addrs,
        VmConfig {
            divergence_rate: 1.0,
            response_bytes: 5..=9000,
            ..vm_cfg(1)
        },
    );
    run_direct(
        &mut client,
        &mut vm,
        &mut Wire::new(0),
        &mut VecAlloc,
        50_000,
    );
    let c = client.stats();
    assert!(client.is_done());
    assert_eq!(c.responses_wrong, c.tcp_opened + c.udp_sent);
    assert_eq!(c.responses_verified, c.icmp_sent);
}

#[test]
fn restore_makes_the_svm_continue_exactly_like_the_pvm() {
    let mut colo = Colo::new(
        ClientConfig {
            concurrency: 16,
            ..client_cfg(400)
        },
        vm_cfg(2),
    );
    for _ in 0..40 {
        colo.step();
    }
    assert!(
        colo.pvm.connections() > 0,
        "checkpoint with connections in flight"
    );
    colo.svm.restore_from(&colo.pvm);
    assert_eq!(colo.svm.connections(), colo.pvm.connections());
    colo.rewrite = false; // after a checkpoint the offsets are zero
    let (p0, s0) = (colo.pvm_out.len(), colo.svm_out.len());
    let mut ports_after = std::collections::HashSet::new();
    for _ in 0..50_000 {
        colo.step();
        if colo.client.is_done() && colo.pvm.connections() == 0 {
            break;
        }
    }
    assert!(colo.client.is_done());
    let p = &colo.pvm_out[p0..];
    let s = &colo.svm_out[s0..];
    assert_eq!(p.len(), s.len());
    let mut data_frames = 0;
    for (a, b) in p.iter().zip(s) {
        assert_eq!(a.data(), b.data(), "byte-identical after restore");
        let (info, t) = tcp_fields(a);
        if t.is_some() && info.payload_len() > 0 {
            data_frames += 1;
            ports_after.insert(info.dst_port);
        }
    }
    assert!(data_frames > 100);
    assert_eq!(colo.svm.stats().restores, 1);
    // The restore also hands over the PVM's ISN seed (the SVM *is* the PVM image now), so
    // connections opened after it are identical too.
    let new_synacks = p
        .iter()
        .filter(|f| tcp_fields(f).1.is_some_and(|t| t.has(tcp_flags::SYN)))
        .count();
    assert!(new_synacks > 20, "{new_synacks}");
    assert!(!ports_after.is_empty());
}

#[test]
fn rate_limit_paces_new_transactions() {
    let addrs = Addresses::default();
    let cfg = ClientConfig {
        concurrency: 64,
        rate_per_sec: Some(2_000),
        max_transactions: None,
        ..client_cfg(0)
    };
    let mut client = ClientSim::new(addrs, cfg);
    let mut vm = VmSim::new(addrs, vm_cfg(1));
    let (mut to_vm, mut to_client) = (Vec::new(), Vec::new());
    let mut now = 0;
    // 0.5 s of simulated time at 2000/s: about 1000 transactions (plus the burst cap of 32).
    while now < 500_000_000 {
        now += STEP;
        client.generate(now, &mut VecAlloc, 64, &mut |b: VecBuf| to_vm.push(b));
        for f in std::mem::take(&mut to_vm) {
            vm.on_rx(&f, now, &mut VecAlloc, &mut |b| to_client.push(b));
        }
        for f in std::mem::take(&mut to_client) {
            client.on_rx(&f, now, &mut VecAlloc, &mut |b| to_vm.push(b));
        }
    }
    let started = client.started();
    assert!((990..=1033).contains(&started), "{started}");
    assert!(client.stats().finished() >= started - 8);
}
