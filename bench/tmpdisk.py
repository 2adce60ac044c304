#!/usr/bin/python3
"""disksynth tmpdisk vs nbdkit tmpdisk, side by side, one run.

Usage:  bench/tmpdisk.py        (Debian's /usr/bin/python3: it has the libnbd bindings)

For ext4 and vfat disks of BENCH_TMPDISK_SIZE (default 1G), each side serves on a Unix socket
with its temp files in a private directory. Rows: the per-connection cost of a loop of `nbdinfo
--size` runs (a process per connection), of a loop of connect + read the superblock +
disconnect (libnbd in this process), and the disk space a connected client's disk takes before
it writes anything. The "empty-server floor" is the same loop against `memory` (disksynth
memory / nbdkit memory: no per-client work), so `per-connection - floor` is what making a disk
costs.

Environment knobs (defaults in brackets):
  DISKSYNTH_BIN        disksynth binary                     [<repo>/target/release/disksynth]
  BENCH_REPS           repetitions (median shown)           [3]
  BENCH_TMPDISK_SIZE   disk size                            [1G]
  BENCH_TMPDISK_LOOPS  connections per sample               [40]
  BENCH_OUT            output directory                     [<repo>/bench/out]
Output: a table on stdout and in $BENCH_OUT/tmpdisk.md, logs in $BENCH_OUT/tmpdisk-logs/.
"""

import os
import shutil
import statistics
import subprocess
import sys
import time

import nbd

from benchlib import Server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS = os.environ.get("DISKSYNTH_BIN", os.path.join(ROOT, "target/release/disksynth"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
SIZE = os.environ.get("BENCH_TMPDISK_SIZE", "1G")
LOOPS = int(os.environ.get("BENCH_TMPDISK_LOOPS", "40"))
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench/out"))
LOGS = os.path.join(OUT, "tmpdisk-logs")


def nbdinfo_loop(uri):
    t = time.perf_counter()
    for _ in range(LOOPS):
        subprocess.run(["nbdinfo", "--size", uri], check=True, stdout=subprocess.DEVNULL,
                       timeout=60)
    return (time.perf_counter() - t) * 1000 / LOOPS


def connect_read_loop(uri):
    t = time.perf_counter()
    for _ in range(LOOPS):
        h = nbd.NBD()
        h.connect_uri(uri)
        h.pread(1024, 1024)  # the ext4 superblock / inside the FAT boot region
        h.shutdown()
    return (time.perf_counter() - t) * 1000 / LOOPS


def held_disk_bytes(server):
    h = nbd.NBD()
    h.connect_uri(server.uri)
    h.pread(1024, 1024)
    time.sleep(0.1)
    used = server.disk_bytes()
    h.shutdown()
    return used / (1 << 20)


def main():
    os.makedirs(LOGS, exist_ok=True)
    for tool in ["nbdkit", "nbdinfo", "mkfs.ext4", "mkfs.vfat"]:
        if shutil.which(tool) is None:
            sys.exit(f"missing tool: {tool}")
    if not os.access(DS, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "-p", "disksynth"], cwd=ROOT, check=True)
    sides = {}
    for kind in ["ext4", "vfat"]:
        sides[f"ds-{kind}"] = ([DS, "tmpdisk", SIZE, "--type", kind, "--dir", "@DIR@", "-U",
                                "@SOCK@"], None)
        sides[f"nbdkit-{kind}"] = (["nbdkit", "-f", "-U", "@SOCK@", "tmpdisk", f"size={SIZE}",
                                    f"type={kind}"], {"TMPDIR": "@DIR@"})
    sides["ds-floor"] = ([DS, "memory", SIZE, "-U", "@SOCK@"], None)
    sides["nbdkit-floor"] = (["nbdkit", "-f", "-U", "@SOCK@", "memory", SIZE], None)
    rows = {}

    def record(row, who, v):
        rows.setdefault(row, {}).setdefault(who, []).append(v)

    for rep in range(REPS):
        order = ["ds", "nbdkit"] if rep % 2 == 0 else ["nbdkit", "ds"]
        for who in order:
            for kind in ["floor", "ext4", "vfat"]:
                cmd, env = sides[f"{who}-{kind}"]
                s = Server(f"{who}-{kind}", cmd, LOGS, env)
                label = "empty-server floor (memory)" if kind == "floor" else kind
                record(f"{label}: nbdinfo --size, ms per connection", who, nbdinfo_loop(s.uri))
                record(f"{label}: connect + read superblock, ms per connection", who,
                       connect_read_loop(s.uri))
                if kind != "floor":
                    record(f"{kind}: disk used by a connected client before it writes (MiB)",
                           who, held_disk_bytes(s))
                s.stop()

    lines = ["| measurement | disksynth | nbdkit | ratio (ds/nbdkit) |", "|---|---:|---:|---:|"]
    for row, vals in rows.items():
        ds, nk = statistics.median(vals["ds"]), statistics.median(vals["nbdkit"])
        ratio = f"{ds / nk:.2f}×" if nk else "—"
        lines.append(f"| {row} | {ds:.2f} | {nk:.2f} | {ratio} |")
    head = (
        f"Disks of {SIZE}; median of {REPS} runs of {LOOPS} connections each, sides alternating. "
        "disksynth: `disksynth tmpdisk SIZE --type T --dir DIR` (ext4/vfat synthesized "
        "in-process); nbdkit: `nbdkit tmpdisk size=SIZE type=T` with TMPDIR=DIR (mkfs per "
        "connection). Disk used = allocated blocks of the server's open files in DIR while one "
        "client is connected and has read the superblock."
    )
    text = "\n".join([head, ""] + lines) + "\n"
    print(text)
    with open(os.path.join(OUT, "tmpdisk.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
