#!/usr/bin/python3
"""disksynth qcow2 vs qemu-nbd with qemu's http driver, side by side, one run.

Usage:  bench/qcow2.py         (Debian's /usr/bin/python3: it has the libnbd bindings)

An ext4 image of /usr/share (BENCH_QCOW2_SIZE, default 1G: data + free space, like a cloud
image) is converted with `qemu-img convert -c -O qcow2` (compressed 64 KiB clusters, as cloud
images are published) and served by a real nginx on 127.0.0.1. Both servers read it over HTTP:
`disksynth qcow2 URL` and `qemu-nbd -r --image-opts driver=qcow2,file.driver=http,file.url=URL`
(defaults otherwise). Each measurement starts a fresh server (cold caches) and the two sides
alternate. Rows: 4 KiB random-read latency p50/p99 (one connection, libnbd), sequential read
throughput (`nbdcopy --no-extents`, 1 and 4 connections), HTTP requests and bytes fetched from
nginx during the 1-connection sequential read, peak RSS after the 4-connection read.

Environment knobs (defaults in brackets):
  DISKSYNTH_BIN     disksynth binary                          [<repo>/target/release/disksynth]
  BENCH_REPS        repetitions (median shown)                [3]
  BENCH_QCOW2_DATA  directory for the image and its qcow2      [/tmp/qcow2bench]
  BENCH_QCOW2_SIZE  image size                                 [1G]
  BENCH_QCOW2_READS random 4 KiB reads per latency sample      [300]
  BENCH_OUT         output directory                           [<repo>/bench/out]
Output: a table on stdout and in $BENCH_OUT/qcow2.md, logs in $BENCH_OUT/qcow2-logs/.
"""

import os
import random
import shutil
import statistics
import subprocess
import sys
import time

import nbd

from benchlib import Nginx, Server, log


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS = os.environ.get("DISKSYNTH_BIN", os.path.join(ROOT, "target/release/disksynth"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
DATA = os.environ.get("BENCH_QCOW2_DATA", "/tmp/qcow2bench")
SIZE = os.environ.get("BENCH_QCOW2_SIZE", "1G")
READS = int(os.environ.get("BENCH_QCOW2_READS", "300"))
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench/out"))
LOGS = os.path.join(OUT, "qcow2-logs")
STEP_TIMEOUT = 1800


def run(cmd, **kw):
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, timeout=STEP_TIMEOUT, **kw)


def prepare():
    os.makedirs(DATA, exist_ok=True)
    img = os.path.join(DATA, "disk.raw")
    q = os.path.join(DATA, "disk.qcow2")
    if not os.path.exists(img):
        run([DS, "ext4", "/usr/share", "--size", SIZE, "-o", img])
    if not os.path.exists(q):
        run(["qemu-img", "convert", "-c", "-O", "qcow2", img, q + ".part"])
        os.rename(q + ".part", q)
    # Warm the page cache: the first side measured must not pay for the disk.
    with open(q, "rb") as f:
        while f.read(8 << 20):
            pass
    return img, q


def access_bytes(web):
    """(requests, body bytes) in nginx's access log so far."""
    return Nginx.traffic(web.lines())

def random_latency(uri, size):
    h = nbd.NBD()
    h.connect_uri(uri)
    rng = random.Random(42)
    lat = []
    for _ in range(READS):
        off = rng.randrange(0, size // 4096) * 4096
        t = time.perf_counter()
        h.pread(4096, off)
        lat.append((time.perf_counter() - t) * 1000)
    h.shutdown()
    lat.sort()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


# qemu 10.0's http driver hangs for good once 8 or more requests are in flight (nbdcopy's
# default is 64 per connection; measured: 1 connection x 8 requests and 4 x 4 hang, 1 x 4 and
# 4 x 1 complete). Both sides get the same client with what the peer survives.
REQUESTS = {1: 4, 4: 1}
SEQ_TIMEOUT = 120


def seq_read(uri, conns, size, requests=None):
    """MiB/s of a whole read, or NaN when it fails or hangs (SEQ_TIMEOUT)."""
    req = REQUESTS[conns] if requests is None else requests
    cmd = ["nbdcopy", "--no-extents", f"--connections={conns}", f"--threads={conns}",
           f"--requests={req}", uri, "null:"]
    log("$ " + " ".join(cmd))
    t = time.perf_counter()
    try:
        subprocess.run(cmd, check=True, timeout=SEQ_TIMEOUT)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        log(f"sequential read failed: {e}")
        return float("nan")
    return size / (1 << 20) / (time.perf_counter() - t)


def main():
    os.makedirs(LOGS, exist_ok=True)
    for tool in ["qemu-nbd", "qemu-img", "nbdcopy", "nginx"]:
        if shutil.which(tool) is None:
            sys.exit(f"missing tool: {tool}")
    if not os.access(DS, os.X_OK):
        run(["cargo", "build", "--release", "-p", "disksynth"], cwd=ROOT)
    img, q = prepare()
    size = os.path.getsize(img)
    web = Nginx(DATA, LOGS)
    url = web.url("disk.qcow2")
    sides = {
        "ds": [DS, "qcow2", url, "-U", "@SOCK@"],
        # -t: stay up after the readiness probe; -e 8: several connections at once.
        "qemu": [
            "qemu-nbd", "-r", "-t", "-e", "8", "-k", "@SOCK@", "--image-opts",
            f"driver=qcow2,file.driver=http,file.url={url}",
        ],
    }
    rows = {}

    def record(row, side, value):
        rows.setdefault(row, {}).setdefault(side, []).append(value)

    try:
        for rep in range(REPS):
            order = ["ds", "qemu"] if rep % 2 == 0 else ["qemu", "ds"]
            for who in order:
                s = Server(who, sides[who], LOGS)
                p50, p99 = random_latency(s.uri, size)
                s.stop()
                record("random 4 KiB read p50 (ms)", who, p50)
                record("random 4 KiB read p99 (ms)", who, p99)
                s = Server(who, sides[who], LOGS)
                n0, b0 = access_bytes(web)
                record("sequential, 1 connection (MiB/s)", who, seq_read(s.uri, 1, size))
                n1, b1 = access_bytes(web)
                record("HTTP requests (1-conn sequential)", who, n1 - n0)
                record("MiB fetched from nginx (1-conn sequential)", who, (b1 - b0) / (1 << 20))
                s.stop()
                s = Server(who, sides[who], LOGS)
                record("sequential, 4 connections (MiB/s)", who, seq_read(s.uri, 4, size))
                record("peak RSS after the 4-connection read (MiB)", who, s.peak_rss_mib())
                s.stop()
                # nbdcopy's defaults (64 requests in flight per connection): what disksynth
                # does for a client that does not hold back; qemu-nbd hangs (see REQUESTS).
                if who == "ds":
                    s = Server(who, sides[who], LOGS)
                    record("sequential, 4 connections, nbdcopy default 64 requests (MiB/s)",
                           who, seq_read(s.uri, 4, size, requests=64))
                    s.stop()
    finally:
        web.stop()

    lines = [
        "| measurement | disksynth | qemu-nbd | ratio (ds/qemu) |",
        "|---|---:|---:|---:|",
    ]
    def cell(vals):
        """Median of the runs that completed, and how many hung or failed."""
        ok = [v for v in vals if v == v]
        med = statistics.median(ok) if ok else float("nan")
        lost = len(vals) - len(ok)
        return med, f"{med:.2f}" + (f" ({lost} of {len(vals)} hung)" if lost else "")

    for row, vals in rows.items():
        ds, ds_text = cell(vals["ds"])
        qm, qm_text = cell(vals["qemu"]) if "qemu" in vals else (float("nan"), "—")
        ratio = ds / qm if qm == qm and qm else float("nan")
        lines.append(f"| {row} | {ds_text} | {qm_text} | {ratio:.2f}× |")
    qver = subprocess.run(["qemu-nbd", "--version"], capture_output=True, text=True).stdout
    head = (
        f"Image: ext4 of /usr/share, {size >> 20} MiB raw, {os.path.getsize(q) >> 20} MiB as "
        f"compressed qcow2 (`qemu-img convert -c -O qcow2`, 64 KiB clusters). Served by nginx on "
        f"127.0.0.1. Median of {REPS} runs, sides alternating, each on a fresh server. "
        f"qemu-nbd ({qver.splitlines()[0] if qver else '?'}): `qemu-nbd -r -t -e 8 --image-opts "
        f"driver=qcow2,file.driver=http,file.url=URL`; disksynth: `disksynth qcow2 URL` "
        f"(defaults). Random reads: {READS} 4 KiB preads at uniform random offsets, one "
        f"connection. Sequential: `nbdcopy --no-extents --connections=N --threads=N "
        f"--requests=R URI null:` with R = 4 for 1 connection and 1 for 4 connections: qemu "
        f"10.0's http driver hangs with 8 or more requests in flight (nbdcopy's default is 64)."
    )
    text = "\n".join([head, ""] + lines) + "\n"
    print(text)
    with open(os.path.join(OUT, "qcow2.md"), "w") as f:
        f.write(text)
    with open(os.path.join(OUT, "qcow2.raw.tsv"), "w") as f:
        for row, vals in rows.items():
            for who, v in vals.items():
                f.write(f"{row}\t{who}\t" + "\t".join(f"{x:.3f}" for x in v) + "\n")


if __name__ == "__main__":
    main()
