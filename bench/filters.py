#!/usr/bin/python3
"""What a stack of layers costs: 5 pass-through filters vs none, disksynth and nbdkit, one run.

Usage:  bench/filters.py       (Debian's /usr/bin/python3: it has the libnbd bindings)

A 1 GiB file of random bytes (in the page cache after the first read) is served plain and with
five `nofilter` layers: by one `disksynth serve` with two exports (`plain=file F`,
`layered=file F --filter nofilter` ×5: same process, only the layers differ) and by two nbdkit
servers (`file F`, and `--filter=nofilter` ×5: nbdkit's filter that does nothing, made for this
measurement). Sequential reads with `nbdcopy --no-extents URI null:`, 1 connection, with
nbdcopy's default 256 KiB requests and with 4 KiB requests (where a per-request cost shows most).
Plain and layered are read back to back (order alternating) and the cost is the median of those
pairs' ratios, which cancels the drift of a shared machine. Issue 16: five pass-through layers
cost at most 3 %.

Environment knobs (defaults in brackets):
  DISKSYNTH_BIN   disksynth binary                  [<repo>/target/release/disksynth]
  BENCH_REPS      repetitions (median shown)        [7]
  BENCH_PASSES    whole reads per measurement       [4]
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

from benchlib import Server, warm_random_file


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS = os.environ.get("DISKSYNTH_BIN", os.path.join(ROOT, "target/release/disksynth"))
REPS = int(os.environ.get("BENCH_REPS", "7"))
DATA = os.environ.get("BENCH_DATA", "/tmp/filtersbench")
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench/out"))
LOGS = os.path.join(OUT, "filters-logs")
SIZE = 1 << 30
LAYERS = 5
PASSES = int(os.environ.get("BENCH_PASSES", "4"))


def seq_read(uri, request_size):
    """MiB/s of PASSES whole reads: one read of 1 GiB takes ~0.6 s, and this VM's scheduling
    quantizes a run's time in steps of ~50 ms (8 %)."""
    cmd = ["nbdcopy", "--no-extents", "--connections=1", f"--request-size={request_size}",
           uri, "null:"]
    t = time.perf_counter()
    for _ in range(PASSES):
        subprocess.run(cmd, check=True, timeout=600)
    return PASSES * SIZE / (1 << 20) / (time.perf_counter() - t)


def main():
    os.makedirs(LOGS, exist_ok=True)
    for tool in ["nbdkit", "nbdcopy"]:
        if shutil.which(tool) is None:
            sys.exit(f"missing tool: {tool}")
    if not os.access(DS, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "-p", "disksynth"], cwd=ROOT, check=True)
    f = warm_random_file(DATA, SIZE)
    layers = " ".join(["--filter nofilter"] * LAYERS)
    # disksynth: both variants as two exports of one server (same process, same threads: only
    # the layers differ). nbdkit: one server per variant, both up for the whole run.
    ds = Server("disksynth", [DS, "serve", "-U", "@SOCK@",
                              "--export", f"plain=file {f} -r",
                              "--export", f"layered=file {f} -r {layers}"], LOGS)
    nk0 = Server("nbdkit-0", ["nbdkit", "-r", "-f", "-U", "@SOCK@", "file", f], LOGS)
    nk5 = Server("nbdkit-5", ["nbdkit", "-r", "-f", "-U", "@SOCK@"]
                 + ["--filter=nofilter"] * LAYERS + ["file", f], LOGS)
    uris = {
        ("disksynth", 0): ds.uri.replace(":///?", ":///plain?"),
        ("disksynth", LAYERS): ds.uri.replace(":///?", ":///layered?"),
        ("nbdkit", 0): nk0.uri,
        ("nbdkit", LAYERS): nk5.uri,
    }
    workloads = [("256 KiB requests", 256 << 10), ("4 KiB requests", 4096)]
    res = {}
    try:
        for rep in range(REPS):
            for server in ["disksynth", "nbdkit"]:
                for wname, rsize in workloads:
                    # Back to back, the order alternating: a pair sees the same machine.
                    order = [0, LAYERS] if rep % 2 == 0 else [LAYERS, 0]
                    got = {n: seq_read(uris[(server, n)], rsize) for n in order}
                    for n, v in got.items():
                        res.setdefault((server, n, wname), []).append(v)
                    res.setdefault((server, "ratio", wname), []).append(got[LAYERS] / got[0])
    finally:
        for s in (ds, nk0, nk5):
            s.stop()
    lines = [
        f"| sequential read, 1 connection | server | no filter (MiB/s) | {LAYERS} × nofilter "
        "(MiB/s) | cost (median of paired runs) |",
        "|---|---|---:|---:|---:|",
    ]
    for wname, _ in workloads:
        for server in ["disksynth", "nbdkit"]:
            plain = statistics.median(res[(server, 0, wname)])
            layered = statistics.median(res[(server, LAYERS, wname)])
            cost = (1 - statistics.median(res[(server, "ratio", wname)])) * 100
            lines.append(f"| {wname} | {server} | {plain:.1f} | {layered:.1f} | {cost:+.1f} % |")
    table = "\n".join(lines)
    note = (f"\nMedian of {REPS} runs; 1 GiB file in the page cache; each pair read back to back. "
            "cost = 1 - layered/plain of each pair, median over the pairs (negative: noise).\n")
    print(table + note)
    with open(os.path.join(OUT, "filters.md"), "w") as out:
        out.write(table + note)
    with open(os.path.join(OUT, "filters.raw.tsv"), "w") as out:
        for key, vals in res.items():
            out.write("\t".join([str(k) for k in key] + [f"{v:.3f}" for v in vals]) + "\n")


if __name__ == "__main__":
    main()
