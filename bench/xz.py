#!/usr/bin/python3
"""disksynth xz / http vs nbdkit --filter=xz curl / nbdkit curl, side by side, one run.

Usage:  bench/xz.py            (Debian's /usr/bin/python3: it has the libnbd bindings)

An ext4 image of /usr/share (BENCH_XZ_SIZE, default 1G; data + free space, like a cloud image) is
compressed with `xz -T0 -3 --block-size=16MiB` and served by a real nginx on 127.0.0.1. Both
servers read it over HTTP; each measurement starts a fresh server (cold caches) and the two sides
alternate. Rows: 4 KiB random-read latency p50/p99 (one connection, libnbd), sequential read
throughput (`nbdcopy --no-extents`, 1 and 4 connections), peak RSS after the 4-connection read,
HTTP requests per xz block during a sequential read, and raw `http` vs `nbdkit curl` sequential
reads of the uncompressed image.

Environment knobs (defaults in brackets):
  DISKSYNTH_BIN     disksynth binary                          [<repo>/target/release/disksynth]
  BENCH_REPS        repetitions (median shown)                [3]
  BENCH_XZ_DATA     directory for the image and its .xz        [/tmp/xzbench]
  BENCH_XZ_SIZE     image size                                 [1G]
  BENCH_XZ_READS    random 4 KiB reads per latency sample      [300]
  BENCH_OUT         output directory                           [<repo>/bench/out]
Output: a table on stdout and in $BENCH_OUT/xz.md, logs in $BENCH_OUT/xz-logs/.
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
DATA = os.environ.get("BENCH_XZ_DATA", "/tmp/xzbench")
SIZE = os.environ.get("BENCH_XZ_SIZE", "1G")
READS = int(os.environ.get("BENCH_XZ_READS", "300"))
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench/out"))
LOGS = os.path.join(OUT, "xz-logs")
STEP_TIMEOUT = 900


def run(cmd, **kw):
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, timeout=STEP_TIMEOUT, **kw)


def prepare():
    os.makedirs(DATA, exist_ok=True)
    img = os.path.join(DATA, "disk.raw")
    xzf = os.path.join(DATA, "disk.raw.xz")
    xzf4 = os.path.join(DATA, "disk.raw.4m.xz")
    if not os.path.exists(img):
        run([DS, "ext4", "/usr/share", "--size", SIZE, "-o", img])
    for path, bs in [(xzf, "16MiB"), (xzf4, "4MiB")]:
        if not os.path.exists(path):
            with open(path + ".part", "wb") as out:
                run(["xz", "-T0", "-3", f"--block-size={bs}", "-c", img], stdout=out)
            os.rename(path + ".part", path)
    # Warm the page cache: the first side measured must not pay for the disk.
    for path in [img, xzf, xzf4]:
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass
    blocks = int(
        [
            l.split("\t")[2]
            for l in subprocess.run(
                ["xz", "--robot", "-l", xzf], capture_output=True, text=True, check=True
            ).stdout.splitlines()
            if l.startswith("file\t")
        ][0]
    )
    return img, xzf, xzf4, blocks


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


def seq_read(uri, conns, size):
    t = time.perf_counter()
    run(
        [
            "nbdcopy",
            "--no-extents",
            f"--connections={conns}",
            f"--threads={conns}",
            uri,
            "null:",
        ]
    )
    return size / (1 << 20) / (time.perf_counter() - t)


def main():
    os.makedirs(LOGS, exist_ok=True)
    for tool in ["nbdkit", "nbdcopy", "nginx", "xz"]:
        if shutil.which(tool) is None:
            sys.exit(f"missing tool: {tool}")
    if not os.access(DS, os.X_OK):
        run(["cargo", "build", "--release", "-p", "disksynth"], cwd=ROOT)
    img, xzf, xzf4, blocks = prepare()
    size = os.path.getsize(img)
    web = Nginx(DATA, LOGS)
    xz_url, raw_url = web.url("disk.raw.xz"), web.url("disk.raw")
    xz4_url = web.url("disk.raw.4m.xz")
    sides = {
        "ds-xz": [DS, "xz", xz_url, "-U", "@SOCK@"],
        "nbdkit-xz": ["nbdkit", "-f", "-U", "@SOCK@", "--filter=xz", "curl", xz_url],
        "ds-xz4": [DS, "xz", xz4_url, "-U", "@SOCK@"],
        "nbdkit-xz4": ["nbdkit", "-f", "-U", "@SOCK@", "--filter=xz", "curl", xz4_url],
        "ds-http": [DS, "http", raw_url, "-U", "@SOCK@"],
        "nbdkit-curl": ["nbdkit", "-f", "-U", "@SOCK@", "curl", raw_url],
    }
    rows = {}

    def record(row, side, value):
        rows.setdefault(row, {}).setdefault(side, []).append(value)

    try:
        for rep in range(REPS):
            order = ["ds", "nbdkit"] if rep % 2 == 0 else ["nbdkit", "ds"]
            for who in order:
                side = f"{who}-xz"
                s = Server(side, sides[side], LOGS)
                p50, p99 = random_latency(s.uri, size)
                s.stop()
                record("random 4 KiB read p50 (ms)", who, p50)
                record("random 4 KiB read p99 (ms)", who, p99)
                side4 = f"{who}-xz4"
                s = Server(side4, sides[side4], LOGS)
                p50, p99 = random_latency(s.uri, size)
                s.stop()
                record("random 4 KiB read p50, 4 MiB blocks (ms)", who, p50)
                record("random 4 KiB read p99, 4 MiB blocks (ms)", who, p99)
                s = Server(side, sides[side], LOGS)
                before = web.requests()
                record("sequential, 1 connection (MiB/s)", who, seq_read(s.uri, 1, size))
                record("HTTP requests per xz block (1-conn sequential)", who,
                       (web.requests() - before) / blocks)
                s.stop()
                s = Server(side, sides[side], LOGS)
                record("sequential, 4 connections (MiB/s)", who, seq_read(s.uri, 4, size))
                record("peak RSS after the 4-connection read (MiB)", who, s.peak_rss_mib())
                s.stop()
                raw = "ds-http" if who == "ds" else "nbdkit-curl"
                s = Server(raw, sides[raw], LOGS)
                record("raw http sequential, 1 connection (MiB/s)", who, seq_read(s.uri, 1, size))
                s.stop()
                s = Server(raw, sides[raw], LOGS)
                record("raw http sequential, 4 connections (MiB/s)", who, seq_read(s.uri, 4, size))
                s.stop()
    finally:
        web.stop()

    xz_size = os.path.getsize(xzf)
    lines = [
        "| measurement | disksynth | nbdkit | ratio (ds/nbdkit) |",
        "|---|---:|---:|---:|",
    ]
    for row, vals in rows.items():
        ds, nk = statistics.median(vals["ds"]), statistics.median(vals["nbdkit"])
        ratio = ds / nk if nk else float("nan")
        lines.append(f"| {row} | {ds:.2f} | {nk:.2f} | {ratio:.2f}× |")
    head = (
        f"Image: ext4 of /usr/share, {size >> 20} MiB raw, {xz_size >> 20} MiB as .xz in "
        f"{blocks} blocks of 16 MiB (xz -3; the 4 MiB-block rows use a second file, "
        f"{os.path.getsize(xzf4) >> 20} MiB). Served by nginx on 127.0.0.1. Median of {REPS} "
        f"runs, sides alternating, each on a fresh server. nbdkit: `nbdkit --filter=xz curl URL` "
        f"and `nbdkit curl URL`; disksynth: `disksynth xz URL`, `disksynth http URL` (defaults). "
        f"Random reads: {READS} 4 KiB preads at uniform random offsets, one connection. "
        f"Sequential: `nbdcopy --no-extents --connections=N --threads=N URI null:`."
    )
    text = "\n".join([head, ""] + lines) + "\n"
    print(text)
    with open(os.path.join(OUT, "xz.md"), "w") as f:
        f.write(text)
    with open(os.path.join(OUT, "xz.raw.tsv"), "w") as f:
        for row, vals in rows.items():
            for who, v in vals.items():
                f.write(f"{row}\t{who}\t" + "\t".join(f"{x:.3f}" for x in v) + "\n")


if __name__ == "__main__":
    main()
