#!/usr/bin/env python3
"""Deterministic TCP services (run in the PVM and SVM namespaces) and their client.

server ROLE: listens on
  7000 request/response: per line, replies "ok <sha256(line)[:16]>\n"; closes after the client
  7001 bulk source: reads "N\n", sends the first N bytes of the pattern stream with blocking
       writes, half-closes, waits for the client
  7002 bulk sink: reads to EOF, replies the byte count and the sha256 hex of what it got, closes
  7004 pattern sink: reads to EOF, replies "N BAD" (BAD: offset of the first byte that is not the
       pattern stream's, -1 if none), closes
  7003 role: per line, replies the ROLE given on the command line (differs between PVM and SVM)
  7007/udp echo
client HOST CONNS BULK PAR: runs the request/response, bulk and UDP echo cases, prints RESULT
  lines.
udp HOST PORT N: N datagrams, counts the intact echoes (the vhost test's guest echoes them).
diverge HOST: one request to 7003, prints what came back (or the timeout).
bulk HOST DIR CONNS BYTES: CONNS parallel connections each moving BYTES of the pattern stream,
  DIR "down" (server to client, 7001) or "up" (client to server, 7004); every byte is checked.
rr HOST N: N new connections, one request/response each; prints latency percentiles.
Everything a server sends depends only on what it received, so PVM and SVM answer alike.
"""
import hashlib
import socket
import socketserver
import sys
import threading
import time


UDP_DGRAMS = 200


# The pattern stream: byte o is PATTERN[o % PERIOD]. The period is prime, so segment and write
# boundaries fall on every phase of it; both VMs emit the same bytes however they segment them.
PERIOD = 1_000_003
CHUNK = 256 * 1024
_pat = b"".join(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(PERIOD // 32 + 1))
# Padded by one chunk so any chunk is one slice.
PATTERN_BYTES = _pat[:PERIOD] + _pat[:CHUNK]
PATTERN = memoryview(PATTERN_BYTES)
del _pat


def pattern_at(offset, n):
    """n <= CHUNK bytes of the pattern stream from offset (a memoryview, no copy)."""
    k = offset % PERIOD
    return PATTERN[k:k + n]


def blob(n):
    """The first n bytes of the pattern stream."""
    out = bytearray()
    while len(out) < n:
        out += pattern_at(len(out), min(CHUNK, n - len(out)))
    return bytes(out)


def send_pattern(sock, n):
    """Blocking writes of the first n pattern bytes."""
    off = 0
    while off < n:
        m = min(CHUNK, n - off)
        sock.sendall(pattern_at(off, m))
        off += m


def recv_pattern(sock):
    """Read to EOF checking the pattern: (bytes read, offset of the first wrong byte or -1)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    off = 0
    bad = -1
    while True:
        n = sock.recv_into(view)
        if n == 0:
            return off, bad
        # Compared as bytes (memcmp, GB/s): CPython compares two memoryviews element by
        # element (~300 MB/s), which made the checking client the lab's bottleneck.
        k = off % PERIOD
        if bad < 0 and view[:n].tobytes() != PATTERN_BYTES[k:k + n]:
            got = bytes(view[:n])
            want = bytes(pattern_at(off, n))
            bad = off + next(i for i in range(n) if got[i] != want[i])
        off += n


def readline(f):
    line = f.readline()
    return line if line.endswith(b"\n") else None


class ReqResp(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            line = readline(self.rfile)
            if line is None:
                return
            h = hashlib.sha256(line).hexdigest()[:16]
            self.wfile.write(b"ok " + h.encode() + b"\n")
            self.wfile.flush()


class Source(socketserver.StreamRequestHandler):
    def handle(self):
        line = readline(self.rfile)
        if line is None:
            return
        send_pattern(self.request, int(line))
        self.request.shutdown(socket.SHUT_WR)
        while self.request.recv(4096):
            pass


class Sink(socketserver.StreamRequestHandler):
    def handle(self):
        h = hashlib.sha256()
        n = 0
        while True:
            b = self.request.recv(65536)
            if not b:
                break
            h.update(b)
            n += len(b)
        self.request.sendall(("%d %s\n" % (n, h.hexdigest())).encode())


class PatternSink(socketserver.StreamRequestHandler):
    def handle(self):
        n, bad = recv_pattern(self.request)
        self.request.sendall(("%d %d\n" % (n, bad)).encode())


class Role(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            line = readline(self.rfile)
            if line is None:
                return
            self.wfile.write(ROLE.encode() + b"\n")
            self.wfile.flush()


def udp_echo():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 7007))
    while True:
        b, a = u.recvfrom(65536)
        u.sendto(b, a)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    # socketserver's default backlog (5) overflows on 8 connections opened at once, and then
    # the PVM's and the SVM's kernels may treat the same connection differently.
    request_queue_size = 128


def server(role):
    global ROLE
    ROLE = role
    servers = [
        Server(("0.0.0.0", p), h)
        for p, h in (
            (7000, ReqResp),
            (7001, Source),
            (7002, Sink),
            (7003, Role),
            (7004, PatternSink),
        )
    ]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    threading.Thread(target=udp_echo, daemon=True).start()
    print("READY", flush=True)
    # Until the test closes our stdin (or kills us).
    sys.stdin.read()


def connect(host, port):
    s = socket.create_connection((host, port), timeout=20)
    s.settimeout(20)
    return s


def recv_all(s):
    parts = []
    while True:
        b = s.recv(65536)
        if not b:
            return b"".join(parts)
        parts.append(b)


def reqresp(host, first, count, errors):
    for i in range(first, first + count):
        with connect(host, 7000) as s:
            f = s.makefile("rb")
            for j in range(3):
                line = ("req %d %d %s\n" % (i, j, "x" * (i % 50))).encode()
                s.sendall(line)
                want = b"ok " + hashlib.sha256(line).hexdigest()[:16].encode() + b"\n"
                got = f.readline()
                if got != want:
                    errors.append("conn %d req %d got %r want %r" % (i, j, got, want))
                    return


def client(host, conns, bulk, par):
    """conns request/response connections (par at a time), then the bulk transfers."""
    t0 = time.time()
    errors = []
    per = conns // par
    threads = [
        threading.Thread(target=reqresp, args=(host, k * per, per, errors)) for k in range(par)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print("RESULT reqresp_error=%s" % errors[0])
        return
    print("RESULT reqresp_ok=%d" % (per * par))
    print("RESULT reqresp_secs=%.2f" % (time.time() - t0), flush=True)

    t0 = time.time()
    with connect(host, 7001) as s:
        s.sendall(b"%d\n" % bulk)
        n, bad = recv_pattern(s)
    print("RESULT download_bytes=%d" % n)
    print("RESULT download_hash_ok=%d" % (n == bulk and bad < 0))
    print("RESULT download_secs=%.2f" % (time.time() - t0), flush=True)

    t0 = time.time()
    payload = blob(bulk)
    with connect(host, 7002) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        reply = recv_all(s).decode().split()
    ok = reply == [str(bulk), hashlib.sha256(payload).hexdigest()]
    print("RESULT upload_reply=%s" % " ".join(reply))
    print("RESULT upload_hash_ok=%d" % ok)
    print("RESULT upload_secs=%.2f" % (time.time() - t0), flush=True)

    udp(host, 7007, UDP_DGRAMS)


def udp(host, port, n):
    """Send n datagrams in windows of 8; count echoes whose payload came back intact."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect((host, port))
    want = set()
    got = 0
    bad = 0
    for base in range(0, n, 8):
        for i in range(base, min(n, base + 8)):
            p = ("dgram %d " % i).encode() + bytes(i % 200)
            want.add(p)
            s.send(p)
        while want:
            try:
                b = s.recv(2048)
            except socket.timeout:
                break
            if b in want:
                want.remove(b)
                got += 1
            else:
                bad += 1
        want.clear()
    print("RESULT udp_sent=%d" % n)
    print("RESULT udp_echoed=%d" % got)
    print("RESULT udp_bad=%d" % bad, flush=True)


def diverge(host):
    s = socket.create_connection((host, 7003), timeout=5)
    s.settimeout(12)
    s.sendall(b"who\n")
    try:
        got = s.recv(100)
        print("RESULT diverge_reply=%s" % got.decode().strip())
    except socket.timeout:
        print("RESULT diverge_reply=timeout")
    s.close()


def bulk_one(host, direction, nbytes, results, k):
    try:
        if direction == "down":
            with connect(host, 7001) as s:
                s.sendall(b"%d\n" % nbytes)
                n, bad = recv_pattern(s)
        else:
            with connect(host, 7004) as s:
                send_pattern(s, nbytes)
                s.shutdown(socket.SHUT_WR)
                n, bad = (int(x) for x in recv_all(s).split())
        results[k] = (n, bad, None)
    except Exception as e:  # reported, the test asserts on it
        results[k] = (0, -1, repr(e))


def bulk(host, direction, conns, nbytes):
    results = [None] * conns
    threads = [
        threading.Thread(target=bulk_one, args=(host, direction, nbytes, results, k))
        for k in range(conns)
    ]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.time() - t0
    total = sum(r[0] for r in results)
    ok = sum(1 for r in results if r[0] == nbytes and r[1] < 0 and r[2] is None)
    errors = ["conn %d: %d bytes, first bad %d, %s" % (k, *r) for k, r in enumerate(results)
              if not (r[0] == nbytes and r[1] < 0 and r[2] is None)]
    print("RESULT bulk_ok=%d" % ok)
    print("RESULT bulk_bytes=%d" % total)
    print("RESULT bulk_secs=%.3f" % secs)
    print("RESULT bulk_gbps=%.3f" % (total * 8 / secs / 1e9))
    print("RESULT bulk_error=%s" % (errors[0] if errors else "none"), flush=True)


def rr(host, n):
    """n new connections, one request each: connect-to-reply latency percentiles (us)."""
    lat = []
    errors = 0
    for i in range(n):
        line = ("req %d\n" % i).encode()
        want = b"ok " + hashlib.sha256(line).hexdigest()[:16].encode() + b"\n"
        t0 = time.perf_counter()
        try:
            with connect(host, 7000) as s:
                s.sendall(line)
                got = s.makefile("rb").readline()
        except OSError:
            got = b""
        lat.append((time.perf_counter() - t0) * 1e6)
        errors += got != want
    lat.sort()
    print("RESULT rr_count=%d" % n)
    print("RESULT rr_errors=%d" % errors)
    print("RESULT rr_p50_us=%.0f" % lat[len(lat) // 2])
    print("RESULT rr_p99_us=%.0f" % lat[min(len(lat) - 1, len(lat) * 99 // 100)], flush=True)


# --- failover verbs (tests/pipeline_failover.rs) ---


def paced(total, rate, step, fn):
    """Call fn(n) for chunks of step bytes until total, at about rate bytes/s."""
    t0 = time.time()
    done = 0
    while done < total:
        n = min(step, total - done)
        fn(done, n)
        done += n
        ahead = done / rate - (time.time() - t0)
        if ahead > 0:
            time.sleep(ahead)


def fclient(host, bulk, rate):
    """One download (7001), one upload (7002), one download into a connection the client
    half-closed at once (7001, bulk/2 at rate/2) and one persistent request/response session
    (7000), all concurrent, paced at rate bytes/s, then one new request/response connection;
    prints PROGRESS while running, RESULT at the end. Every connection is opened once: a reset
    or timeout is an error, not a retry."""
    want = blob(bulk)
    state = {"down": 0, "up": 0, "hdown": 0, "rr": 0, "busy": 3}
    res = {}
    lock = threading.Lock()

    def down():
        try:
            with connect(host, 7001) as s:
                s.settimeout(30)
                s.sendall(b"%d\n" % bulk)
                got = bytearray()
                t0 = time.time()
                while True:
                    b = s.recv(min(65536, 16384))
                    if not b:
                        break
                    got += b
                    state["down"] = len(got)
                    ahead = len(got) / rate - (time.time() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            res["down_bytes"] = len(got)
            res["down_ok"] = int(bytes(got) == want)
            if bytes(got) != want:
                bad = next((i for i in range(min(len(got), bulk)) if got[i] != want[i]), -1)
                res["down_first_bad"] = bad
        except Exception as e:
            res["down_error"] = repr(e)
        with lock:
            state["busy"] -= 1

    def up():
        try:
            with connect(host, 7002) as s:
                s.settimeout(30)

                def send(off, n):
                    s.sendall(want[off:off + n])
                    state["up"] = off + n

                paced(bulk, rate, 16384, send)
                s.shutdown(socket.SHUT_WR)
                reply = recv_all(s).decode().split()
            res["up_ok"] = int(reply == [str(bulk), hashlib.sha256(want).hexdigest()])
            res["up_reply"] = " ".join(reply)
        except Exception as e:
            res["up_error"] = repr(e)
        with lock:
            state["busy"] -= 1

    def hdown():
        # The client half-closes at once; the VM streams into the half-closed connection.
        half = bulk // 2
        try:
            with connect(host, 7001) as s:
                s.settimeout(30)
                s.sendall(b"%d\n" % half)
                s.shutdown(socket.SHUT_WR)
                got = bytearray()
                t0 = time.time()
                while True:
                    b = s.recv(16384)
                    if not b:
                        break
                    got += b
                    state["hdown"] = len(got)
                    ahead = len(got) / (rate / 2) - (time.time() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            res["hdown_ok"] = int(bytes(got) == want[:half])
            res["hdown_bytes"] = len(got)
        except Exception as e:
            res["hdown_error"] = repr(e)
        with lock:
            state["busy"] -= 1

    def fresh():
        # A connection opened after everything else: new connections pass untouched.
        with connect(host, 7000) as s:
            f = s.makefile("rb")
            for j in range(3):
                line = ("fresh %d\n" % j).encode()
                s.sendall(line)
                w = b"ok " + hashlib.sha256(line).hexdigest()[:16].encode() + b"\n"
                if f.readline() != w:
                    return 0
        return 1

    def rr():
        # Goes on until both transfers are over, then 10 more requests.
        try:
            with connect(host, 7000) as s:
                s.settimeout(30)
                f = s.makefile("rb")
                extra = 10
                i = 0
                while extra > 0:
                    line = ("rr %d %s\n" % (i, "y" * (i % 40))).encode()
                    s.sendall(line)
                    w = b"ok " + hashlib.sha256(line).hexdigest()[:16].encode() + b"\n"
                    g = f.readline()
                    if g != w:
                        res["rr_error"] = "req %d got %r" % (i, g)
                        return
                    i += 1
                    state["rr"] = i
                    if state["busy"] == 0:
                        extra -= 1
                    time.sleep(0.02)
            res["rr_ok"] = i
        except Exception as e:
            res["rr_error"] = "req %d: %r" % (state["rr"], e)
            return
        try:
            res["fresh_ok"] = fresh()
        except Exception as e:
            res["fresh_error"] = repr(e)

    threads = [threading.Thread(target=f) for f in (down, up, hdown, rr)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        print("PROGRESS down=%d up=%d hdown=%d rr=%d" % (
            state["down"], state["up"], state["hdown"], state["rr"]), flush=True)
        time.sleep(0.1)
    for k in sorted(res):
        print("RESULT %s=%s" % (k, res[k]), flush=True)


def vm_pattern(bulk):
    # The VM-opened connection's two directions carry different bytes.
    return blob(bulk + 977)[977:]


def both_ways(s, bulk, rate, send_bytes, want, res, state, tag):
    """Send send_bytes paced while receiving len(want) bytes; results into res."""
    s.settimeout(30)
    err = []

    def tx():
        try:
            def send(off, n):
                s.sendall(send_bytes[off:off + n])
                state[tag + "_sent"] = off + n

            paced(len(send_bytes), rate, 16384, send)
            s.shutdown(socket.SHUT_WR)
        except Exception as e:
            err.append("send: %r" % e)

    t = threading.Thread(target=tx)
    t.start()
    got = bytearray()
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
            state[tag + "_got"] = len(got)
    except Exception as e:
        err.append("recv: %r" % e)
    t.join()
    res[tag + "_got"] = len(got)
    res[tag + "_ok"] = int(bytes(got) == want and not err)
    if err:
        res[tag + "_error"] = err[0]


def vmpeer(port, bulk, rate):
    """The client's side of a connection the VM opens: listen on port, accept one, send
    blob(bulk) and receive vm_pattern(bulk) at once; prints READY, PROGRESS and RESULT."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(1)
    ls.settimeout(30)
    print("READY", flush=True)
    state, res = {}, {}
    s, _ = ls.accept()
    t = threading.Thread(
        target=both_ways, args=(s, bulk, rate, blob(bulk), vm_pattern(bulk), res, state, "peer"))
    t.start()
    while t.is_alive():
        print("PROGRESS sent=%d got=%d" % (state.get("peer_sent", 0), state.get("peer_got", 0)),
              flush=True)
        t.join(0.1)
    for k in sorted(res):
        print("RESULT %s=%s" % (k, res[k]), flush=True)


def vmconn(host, port, sport, bulk, rate):
    """The VM opens a connection to the client (fixed source port, so PVM and SVM open the
    same flow), sends vm_pattern(bulk) and receives blob(bulk)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport))
    s.settimeout(20)
    s.connect((host, port))
    state, res = {}, {}
    both_ways(s, bulk, rate, vm_pattern(bulk), blob(bulk), res, state, "vm")
    s.close()
    for k in sorted(res):
        print("RESULT %s=%s" % (k, res[k]), flush=True)


def arpwatch(iface, secs):
    """Print every ARP and ICMPv6 neighbour advertisement seen on iface for secs seconds."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((iface, 0))
    s.settimeout(0.2)
    print("READY", flush=True)
    end = time.time() + secs
    mac = lambda b: ":".join("%02x" % x for x in b)
    while time.time() < end:
        try:
            f = s.recv(2048)
        except socket.timeout:
            continue
        if f[12:14] == b"\x08\x06" and len(f) >= 42:
            print("ARP op=%d src=%s sha=%s spa=%s tpa=%s" % (
                f[21], mac(f[6:12]), mac(f[22:28]),
                socket.inet_ntoa(f[28:32]), socket.inet_ntoa(f[38:42])), flush=True)
        elif f[12:14] == b"\x86\xdd" and len(f) >= 78 and f[20] == 58 and f[54] == 136:
            print("NA src=%s target=%s" % (
                mac(f[6:12]), socket.inet_ntop(socket.AF_INET6, f[62:78])), flush=True)


FAILOVER_VERBS = {
    "fclient": lambda a: fclient(a[0], int(a[1]), float(a[2])),
    "vmpeer": lambda a: vmpeer(int(a[0]), int(a[1]), float(a[2])),
    "vmconn": lambda a: vmconn(a[0], int(a[1]), int(a[2]), int(a[3]), float(a[4])),
    "arpwatch": lambda a: arpwatch(a[0], float(a[1])),
}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        server(sys.argv[2])
    elif mode == "client":
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "udp":
        udp(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "bulk":
        bulk(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "rr":
        rr(sys.argv[2], int(sys.argv[3]))
    elif mode == "diverge":
        diverge(sys.argv[2])
    elif mode in FAILOVER_VERBS:
        FAILOVER_VERBS[mode](sys.argv[2:])
    else:
        sys.exit("unknown mode " + mode)
