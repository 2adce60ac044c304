#!/usr/bin/python3
"""Soak test: many clients for minutes against `memory`, `floppy --rw` and `xz` over a flaky HTTP
origin, with every byte verified, clients killed mid-request and reconnecting at random.

Usage:  bench/soak.py                  (Debian's /usr/bin/python3: it has the libnbd bindings)
        SOAK_SECONDS=60 SOAK_CLIENTS=16 bench/soak.py      (a short run)

Not part of the default test run (it takes SOAK_SECONDS, 10 minutes by default). It passes when:
no client ever read a wrong byte; every server is alive and answers a fresh client at the end;
each server's RSS and thread count after the first minute stay within SOAK_GROWTH_PCT of what
they were at the end of the first minute (once the clients' working sets are in place); and every
client error is one the test provoked (an origin dropping connections may surface as EIO only
after disksynth's retries are exhausted: counted and shown, never a wrong byte).

What runs:
- three servers, each on a Unix socket: `memory 256M`, `floppy TREE --rw` (a 48 MiB tree of
  random files; its `-o` image is the reference for bytes nobody wrote) and `xz URL` of a 128 MiB
  image (random data and zeros, 4 MiB xz blocks) served by an HTTP origin (a Python process here)
  that drops one in SOAK_DROP_PCT connections in the middle of a body and stalls others briefly;
- SOAK_CLIENTS libnbd clients (threads; libnbd releases the GIL) spread over the three servers.
  A client of a writable server owns a slice of the disk and keeps a model of it (4 KiB blocks,
  each with the generation of its last write); it reads back and verifies, writes new
  generations, trims and zeroes, and with probability SOAK_KILL_PCT per session it drops its
  connection with commands in flight: blocks it was writing may then hold the old or the new
  generation, and the next read settles which. Clients of `xz` read random ranges and compare
  with the image file;
- a sampler records each server's VmRSS and Threads every 5 s.

Environment knobs (defaults in brackets):
  DISKSYNTH_BIN    disksynth binary                    [<repo>/target/release/disksynth]
  SOAK_SECONDS     how long clients run                [600]
  SOAK_CLIENTS     clients in all                      [64]
  SOAK_KILL_PCT    % of sessions ended abruptly        [20]
  SOAK_DROP_PCT    % of origin responses cut short     [3]
  SOAK_GROWTH_PCT  allowed RSS/thread growth after the first minute  [25]
  SOAK_DATA        scratch directory                   [/var/tmp/disksynth-soak]
  BENCH_OUT        output directory                    [<repo>/bench/out]
Output: a table on stdout and in $BENCH_OUT/soak.md, server logs in $BENCH_OUT/soak-logs/.
"""

import hashlib
import mmap
import os
import random
import shutil
import subprocess
import sys
import threading
import time

import nbd

from benchlib import Server, log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS = os.environ.get("DISKSYNTH_BIN", os.path.join(ROOT, "target/release/disksynth"))
SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "64"))
KILL_PCT = float(os.environ.get("SOAK_KILL_PCT", "20"))
DROP_PCT = float(os.environ.get("SOAK_DROP_PCT", "3"))
GROWTH_PCT = float(os.environ.get("SOAK_GROWTH_PCT", "25"))
DATA = os.environ.get("SOAK_DATA", "/var/tmp/disksynth-soak")
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench/out"))
LOGS = os.path.join(OUT, "soak-logs")
BLOCK = 4096
MEMORY_SIZE = 256 << 20
XZ_SIZE = 128 << 20

# The origin: ranges (RFC 9110 §14), a fixed validator, and misbehaviour on purpose.
ORIGIN = r'''
import http.server, os, random, sys, time
PATH, DROP = sys.argv[1], float(sys.argv[2]) / 100
SIZE = os.path.getsize(PATH)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def head(self, code, start, end):
        self.send_response(code)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", '"soak-1"')
        self.send_header("Content-Length", str(end - start))
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{SIZE}")
        self.end_headers()
    def do_HEAD(self):
        self.head(200, 0, SIZE)
    def do_GET(self):
        r = self.headers.get("Range")
        start, end = 0, SIZE
        if r and r.startswith("bytes="):
            a, b = r[6:].split("-")
            start, end = int(a), min(int(b) + 1 if b else SIZE, SIZE)
            code = 206
        else:
            code = 200
        self.head(code, start, end)
        roll = random.random()
        with open(PATH, "rb") as f:
            f.seek(start)
            left = end - start
            if roll < DROP:
                # Cut the body short and drop the connection.
                self.wfile.write(f.read(random.randrange(0, max(1, left))))
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if roll < 2 * DROP:
                time.sleep(random.uniform(0.05, 0.5))
            while left:
                chunk = f.read(min(left, 1 << 20))
                self.wfile.write(chunk)
                left -= len(chunk)
http.server.ThreadingHTTPServer.daemon_threads = True
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
'''


def run(cmd, **kw):
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, timeout=1800, **kw)


def prepare():
    """The floppy tree and its reference image, the xz image and its .xz (kept between runs)."""
    os.makedirs(DATA, exist_ok=True)
    tree = os.path.join(DATA, "tree")
    if not os.path.exists(os.path.join(tree, ".done")):
        shutil.rmtree(tree, ignore_errors=True)
        rng = random.Random(42)
        for i in range(48):
            d = os.path.join(tree, f"dir{i % 6}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"file{i}.bin"), "wb") as f:
                f.write(rng.randbytes(1 << 20))
        open(os.path.join(tree, ".done"), "w").close()
    ref = os.path.join(DATA, "floppy-ref.img")
    run([DS, "floppy", tree, "--size", "64M", "-o", ref])
    img = os.path.join(DATA, "xz.raw")
    xzf = img + ".xz"
    if not os.path.exists(xzf):
        rng = random.Random(7)
        with open(img, "wb") as f:
            for i in range(XZ_SIZE // (1 << 20)):
                # Half random MiBs, half zeros: data, zero blocks (holes) and mixed xz blocks.
                f.write(rng.randbytes(1 << 20) if i % 4 < 2 else bytes(1 << 20))
        run(["xz", "-T2", "-1", "-k", "-f", "--block-size=4MiB", img])
    return tree, ref, img, xzf


def pattern(slot, block, gen):
    """4 KiB that name their owner, block and generation (gen 0 is the disk's own content)."""
    seed = hashlib.blake2b(f"{slot}/{block}/{gen}".encode(), digest_size=32).digest()
    return (seed * (BLOCK // len(seed)))[:BLOCK]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = 0
        self.bytes = 0
        self.sessions = 0
        self.killed = 0
        self.errors = {}
        self.wrong = []

    def add(self, ops=0, nbytes=0):
        with self.lock:
            self.ops += ops
            self.bytes += nbytes

    def error(self, what):
        with self.lock:
            self.errors[what] = self.errors.get(what, 0) + 1

    def wrong_byte(self, what):
        with self.lock:
            self.wrong.append(what)
        log("WRONG BYTES: " + what)


class WritableClient:
    """Owns blocks [first, first + count) of a writable disk and knows what each must hold."""

    def __init__(self, slot, server, first, count, base, stats):
        self.slot, self.server, self.stats = slot, server, stats
        self.first, self.count, self.base = first, count, base
        # block -> set of acceptable generations (one, or two after an abrupt end).
        self.gens = {}
        self.next_gen = 1

    def expected(self, block, gen):
        if gen == 0:
            off = block * BLOCK
            return self.base[off : off + BLOCK] if self.base is not None else bytes(BLOCK)
        if gen == -1:
            return bytes(BLOCK)
        return pattern(self.slot, block, gen)

    def verify(self, block, data):
        ok = [g for g in self.gens.get(block, {0}) if self.expected(block, g) == data]
        if not ok:
            self.stats.wrong_byte(
                f"{self.server.name} slot {self.slot} block {block}: "
                f"none of generations {sorted(self.gens.get(block, {0}))} matches"
            )
            return
        self.gens[block] = {ok[0]}

    def session(self, rng, deadline):
        h = nbd.NBD()
        h.connect_uri(self.server.uri)
        self.stats.sessions += 1
        for _ in range(rng.randrange(20, 300)):
            if time.time() > deadline:
                break
            n = rng.randrange(1, 33)
            b = self.first + rng.randrange(0, self.count - n + 1)
            op = rng.random()
            if op < 0.5:
                data = h.pread(n * BLOCK, b * BLOCK)
                for i in range(n):
                    self.verify(b + i, data[i * BLOCK : (i + 1) * BLOCK])
            elif op < 0.85:
                g = self.next_gen
                self.next_gen += 1
                buf = b"".join(pattern(self.slot, b + i, g) for i in range(n))
                h.pwrite(buf, b * BLOCK)
                for i in range(n):
                    self.gens[b + i] = {g}
            elif op < 0.93:
                h.zero(n * BLOCK, b * BLOCK)
                for i in range(n):
                    self.gens[b + i] = {-1}
            else:
                h.flush()
            self.stats.add(1, n * BLOCK)
        if rng.random() * 100 < KILL_PCT:
            # Writes in flight, then the connection just goes (no NBD_CMD_DISC).
            for _ in range(rng.randrange(1, 8)):
                n = rng.randrange(1, 9)
                b = self.first + rng.randrange(0, self.count - n + 1)
                g = self.next_gen
                self.next_gen += 1
                buf = b"".join(pattern(self.slot, b + i, g) for i in range(n))
                h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(buf)), b * BLOCK)
                for i in range(n):
                    self.gens[b + i] = self.gens.get(b + i, {0}) | {g}
            self.stats.killed += 1
            drop(h)
            # Requests the server had already read from the dead connection may still land;
            # NBD orders nothing across connections, so let them drain before coming back.
            time.sleep(0.5)
        else:
            h.shutdown()
            drop(h)


def drop(h):
    """Close the connection as a killed client would: no NBD_CMD_DISC, commands in flight."""
    close = getattr(h, "close", None)
    if close is not None:
        close()
    else:
        del h


class ReadClient:
    """Reads random ranges of a read-only disk and compares them with the image file."""

    def __init__(self, slot, server, ref, stats):
        self.slot, self.server, self.ref, self.stats = slot, server, ref, stats

    def session(self, rng, deadline):
        h = nbd.NBD()
        h.connect_uri(self.server.uri)
        self.stats.sessions += 1
        size = len(self.ref)
        for _ in range(rng.randrange(10, 100)):
            if time.time() > deadline:
                break
            n = rng.randrange(1, 257) * BLOCK
            off = rng.randrange(0, size - n + 1) // 512 * 512
            data = h.pread(n, off)
            if data != self.ref[off : off + n]:
                self.stats.wrong_byte(f"{self.server.name} slot {self.slot}: {n} bytes at {off}")
            self.stats.add(1, n)
        if rng.random() * 100 < KILL_PCT:
            for _ in range(rng.randrange(1, 8)):
                off = rng.randrange(0, size - (1 << 20)) // 512 * 512
                h.aio_pread(nbd.Buffer(1 << 20), off)
            self.stats.killed += 1
            drop(h)
        else:
            h.shutdown()
            drop(h)


def client_loop(client, seed, deadline):
    rng = random.Random(seed)
    while time.time() < deadline:
        try:
            client.session(rng, deadline)
        except nbd.Error as e:
            client.stats.error(f"{e.string or e}"[:120])
            time.sleep(0.05)


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "Threads"):
                out[k] = int(v.split()[0])
    return out


def main():
    os.makedirs(LOGS, exist_ok=True)
    tree, ref_path, img, xzf = prepare()
    origin = subprocess.Popen(
        [sys.executable, "-c", ORIGIN, xzf, str(DROP_PCT)],
        stdout=subprocess.PIPE,
        stderr=open(os.path.join(LOGS, "origin.stderr"), "ab"),
    )
    port = int(origin.stdout.readline())
    servers = []
    try:
        mem = Server("memory", [DS, "memory", "256M", "-U", "@SOCK@"], LOGS)
        mem.name = "memory"
        flop = Server(
            "floppy", [DS, "floppy", tree, "--size", "64M", "--rw", "--dir", "@DIR@", "-U", "@SOCK@"], LOGS
        )
        flop.name = "floppy --rw"
        xzs = Server("xz", [DS, "xz", f"http://127.0.0.1:{port}/x.raw.xz", "-U", "@SOCK@"], LOGS)
        xzs.name = "xz over http"
        servers = [mem, flop, xzs]
        with open(ref_path, "rb") as f:
            floppy_ref = f.read()
        with open(img, "rb") as f:
            xz_ref = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        stats = {s.name: Stats() for s in servers}
        groups = {s.name: [] for s in servers}
        for i in range(CLIENTS):
            groups[servers[i % 3].name].append(i)
        clients = []
        for s, base, size in ((mem, None, MEMORY_SIZE), (flop, floppy_ref, len(floppy_ref))):
            slots = groups[s.name]
            per = size // BLOCK // max(1, len(slots))
            for k, slot in enumerate(slots):
                clients.append(WritableClient(slot, s, k * per, per, base, stats[s.name]))
        for slot in groups[xzs.name]:
            clients.append(ReadClient(slot, xzs, xz_ref, stats[xzs.name]))

        start = time.time()
        deadline = start + SECONDS
        samples = []  # (t, server name, rss KiB, threads)
        stop = threading.Event()

        def sampler():
            while not stop.is_set():
                t = time.time() - start
                for s in servers:
                    try:
                        st = proc_status(s.proc.pid)
                        samples.append((t, s.name, st["VmRSS"], st["Threads"]))
                    except OSError:
                        samples.append((t, s.name, -1, -1))
                stop.wait(5)

        threads = [threading.Thread(target=sampler, daemon=True)]
        for c in clients:
            threads.append(
                threading.Thread(target=client_loop, args=(c, 1000 + c.slot, deadline), daemon=True)
            )
        log(f"{len(clients)} clients for {SECONDS} s")
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join(SECONDS + 120)
        stop.set()
        elapsed = time.time() - start

        # A fresh client on each server, at the end: alive and right.
        alive = {}
        for s in servers:
            try:
                h = nbd.NBD()
                h.connect_uri(s.uri)
                data = h.pread(1 << 20, 0)
                h.shutdown()
                if s is xzs:
                    alive[s.name] = data == xz_ref[: 1 << 20]
                else:
                    alive[s.name] = s.proc.poll() is None
            except nbd.Error as e:
                log(f"{s.name}: final client failed: {e}")
                alive[s.name] = False

        rows, failed = [], False
        for s in servers:
            st = stats[s.name]
            mine = [(t, r, th) for (t, n, r, th) in samples if n == s.name]
            after = [x for x in mine if x[0] >= min(60, SECONDS / 2)]
            first = after[0] if after else mine[-1]
            rss_max = max(r for _, r, _ in after) if after else first[1]
            th_max = max(th for _, _, th in after) if after else first[2]
            last = mine[-1]
            growth = 100 * (rss_max - first[1]) / max(1, first[1])
            th_growth = 100 * (th_max - first[2]) / max(1, first[2])
            ok = (
                not st.wrong
                and alive[s.name]
                and growth <= GROWTH_PCT
                and th_growth <= GROWTH_PCT
            )
            failed |= not ok
            errs = sum(st.errors.values())
            rows.append(
                f"| {s.name} | {len(groups[s.name])} | {st.sessions} ({st.killed} killed) | {st.ops} | "
                f"{st.bytes / elapsed / (1 << 20):.1f} | {len(st.wrong)} | {errs} | "
                f"{first[1] / 1024:.0f} → {rss_max / 1024:.0f} ({last[1] / 1024:.0f}) | "
                f"{first[2]} → {th_max} ({last[2]}) | {'yes' if alive[s.name] else 'NO'} | "
                f"{'pass' if ok else 'FAIL'} |"
            )
            for e, n in sorted(st.errors.items(), key=lambda x: -x[1])[:5]:
                log(f"{s.name}: {n} × {e}")
        table = "\n".join(
            [
                f"Soak: {CLIENTS} clients, {elapsed:.0f} s, {KILL_PCT:.0f}% of sessions killed with "
                f"commands in flight, origin cuts {DROP_PCT:.0f}% of responses short.",
                "",
                "| server | clients | sessions | requests | MiB/s | wrong bytes | client errors | "
                "RSS MiB at 1 min → max after (end) | threads at 1 min → max after (end) | "
                "answers at end | verdict |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            + rows
        )
        print(table)
        with open(os.path.join(OUT, "soak.md"), "w") as f:
            f.write(table + "\n")
        return 1 if failed else 0
    finally:
        for s in servers:
            s.stop()
        origin.kill()
        origin.wait()


if __name__ == "__main__":
    sys.exit(main())
