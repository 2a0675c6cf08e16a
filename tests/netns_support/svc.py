#!/usr/bin/env python3
"""Deterministic TCP services (run in the PVM and SVM namespaces) and their client.

server ROLE: listens on
  7000 request/response: per line, replies "ok <sha256(line)[:16]>\n"; closes after the client
  7001 bulk source: reads "N\n", sends N deterministic bytes, half-closes, waits for the client
  7002 bulk sink: reads to EOF, replies the sha256 hex of what it got, closes
  7003 role: per line, replies the ROLE given on the command line (differs between PVM and SVM)
  7007/udp echo
client HOST CONNS BULK PAR: runs the request/response, bulk and UDP echo cases, prints RESULT
  lines.
udp HOST PORT N: N datagrams, counts the intact echoes (the vhost test's guest echoes them).
diverge HOST: one request to 7003, prints what came back (or the timeout).
Everything a server sends depends only on what it received, so PVM and SVM answer alike.
"""
import hashlib
import socket
import socketserver
import sys
import threading
import time


UDP_DGRAMS = 200


def blob(n):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:n])


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
        self.request.sendall(blob(int(line)))
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


def server(role):
    global ROLE
    ROLE = role
    servers = [
        Server(("0.0.0.0", p), h)
        for p, h in ((7000, ReqResp), (7001, Source), (7002, Sink), (7003, Role))
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
        data = recv_all(s)
    want = hashlib.sha256(blob(bulk)).hexdigest()
    print("RESULT download_bytes=%d" % len(data))
    print("RESULT download_hash_ok=%d" % (hashlib.sha256(data).hexdigest() == want))
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


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        server(sys.argv[2])
    elif mode == "client":
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "udp":
        udp(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "diverge":
        diverge(sys.argv[2])
    else:
        sys.exit("unknown mode " + mode)
