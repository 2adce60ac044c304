#!/usr/bin/python3
"""What a stack of layers costs: 5 pass-through filters vs none, disksynth and nbdkit, one run.

Usage:  bench/filters.py       (Debian's /usr/bin/python3: it has the libnbd bindings)

A 1 GiB file of random bytes (in the page cache after the first read) is served by
`disksynth file F` and by `nbdkit file F`, each plain and with five `nofilter` layers
(`--filter nofilter` ×5; nbdkit: `--filter=nofilter` ×5: its filter that does nothing, made
for this measurement). Sequential reads with `nbdcopy --no-extents URI null:`: 1 connection with
nbdcopy's default 256 KiB requests, and 1 connection with 4 KiB requests (where a per-request
cost shows most). Each measurement starts a fresh server; the variants alternate; the median of
BENCH_REPS runs is shown. The figure of merit is each server's with/without ratio (issue 16:
five pass-through filters cost at most 3 %).

Environment knobs (defaults in brackets):
  DISKSYNTH_BIN   disksynth binary                  [<repo>/target/release/disksynth]
  BENCH_REPS      repetitions (median shown)        [5]
  BENCH_DATA      directory for the 1 GiB file      [/tmp/filtersbench]
  BENCH_OUT       output directory                  [<repo>/bench/out]
Output: a table on stdout and in $BENCH_OUT/filters.md.
"""

import os
import shutil
import statistics
import subprocess
import sys
import time

from benchlib import Server, log


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS = os.environ.get("DISKSYNTH_BIN", os.path.join(ROOT, "target/release/disksynth"))
REPS = int(os.environ.get("BENCH_REPS", "5"))
DATA = os.environ.get("BENCH_DATA", "/tmp/filtersbench")
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench/out"))
LOGS = os.path.join(OUT, "filters-logs")
SIZE = 1 << 30
LAYERS = 5


def prepare():
    os.makedirs(DATA, exist_ok=True)
    f = os.path.join(DATA, "disk.img")
    if not os.path.exists(f) or os.path.getsize(f) != SIZE:
        log(f"writing {f}")
        with open(f, "wb") as out:
            for _ in range(SIZE >> 24):
                out.write(os.urandom(1 << 24))
    # Into the page cache: every variant reads warm data.
    subprocess.run(["cat", f], stdout=subprocess.DEVNULL, check=True)
    return f


def seq_read(uri, request_size):
    cmd = ["nbdcopy", "--no-extents", "--connections=1", f"--request-size={request_size}",
           uri, "null:"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, timeout=600)
    return SIZE / (1 << 20) / (time.perf_counter() - t)


def main():
    os.makedirs(LOGS, exist_ok=True)
    for tool in ["nbdkit", "nbdcopy"]:
        if shutil.which(tool) is None:
            sys.exit(f"missing tool: {tool}")
    if not os.access(DS, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "-p", "disksynth"], cwd=ROOT, check=True)
    f = prepare()
    ds_layers = sum((["--filter", "nofilter"] for _ in range(LAYERS)), [])
    nk_layers = ["--filter=nofilter"] * LAYERS
    variants = {
        ("disksynth", 0): [DS, "file", f, "-r", "-U", "@SOCK@"],
        ("disksynth", LAYERS): [DS, "file", f, "-r", "-U", "@SOCK@"] + ds_layers,
        ("nbdkit", 0): ["nbdkit", "-r", "-f", "-U", "@SOCK@", "file", f],
        ("nbdkit", LAYERS): ["nbdkit", "-r", "-f", "-U", "@SOCK@"] + nk_layers + ["file", f],
    }
    workloads = [("256 KiB requests", 256 << 10), ("4 KiB requests", 4096)]
    res = {}
    for rep in range(REPS):
        order = list(variants) if rep % 2 == 0 else list(reversed(list(variants)))
        for key in order:
            for wname, rsize in workloads:
                s = Server(f"{key[0]}-{key[1]}", variants[key], LOGS)
                try:
                    res.setdefault((key, wname), []).append(seq_read(s.uri, rsize))
                finally:
                    s.stop()
    lines = [
        f"| sequential read, 1 connection | server | no filter (MiB/s) | {LAYERS} × nofilter "
        "(MiB/s) | cost |",
        "|---|---|---:|---:|---:|",
    ]
    for wname, _ in workloads:
        for server in ["disksynth", "nbdkit"]:
            plain = statistics.median(res[((server, 0), wname)])
            layered = statistics.median(res[((server, LAYERS), wname)])
            cost = (1 - layered / plain) * 100
            lines.append(f"| {wname} | {server} | {plain:.1f} | {layered:.1f} | {cost:+.1f} % |")
    table = "\n".join(lines)
    note = (f"\nMedian of {REPS} runs; each a fresh server; 1 GiB file in the page cache. "
            "cost = 1 - layered/plain (negative: the layered run was faster, i.e. noise).\n")
    print(table + note)
    with open(os.path.join(OUT, "filters.md"), "w") as out:
        out.write(table + note)
    with open(os.path.join(OUT, "filters.raw.tsv"), "w") as out:
        for (key, wname), vals in res.items():
            out.write("\t".join([key[0], str(key[1]), wname] + [f"{v:.3f}" for v in vals]) + "\n")


if __name__ == "__main__":
    main()
