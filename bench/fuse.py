#!/usr/bin/python3
"""A file-backed export read through a FUSE file: disksynth --fuse vs nbdfuse, one run.

Usage:  bench/fuse.py      (as root, or with fusermount3; Debian's /usr/bin/python3: the NBD
                            servers are probed with the libnbd bindings)

A file of random bytes (in the page cache) is exposed read-only as a file in a FUSE mount three
ways: `disksynth file F -r --fuse M` (no socket in between), `nbdfuse -r M URI` over
`disksynth file F -r -U SOCK`, and `nbdfuse -r M URI` over `nbdkit -r -U SOCK file F`; nbdfuse
with its defaults (multi-threaded FUSE, 4 connections when the server allows multi-conn, as
both do here). Reads of the FUSE file:
  - sequential, O_DIRECT: `dd if=FILE of=/dev/null bs=1M iflag=direct`;
  - sequential, buffered: `dd bs=1M` after the FUSE file's pages are dropped
    (posix_fadvise DONTNEED on it; the backing file stays cached);
  - random 4 KiB reads: `fio --rw=randread --bs=4k --direct=1 --ioengine=psync` with 1 and 4
    jobs for BENCH_SECS seconds each, IOPS.
The three are measured back to back in an order that rotates each repetition; the ratios are the
medians of the per-repetition ratios.

Environment knobs (defaults in brackets):
  DISKSYNTH_BIN   disksynth binary                  [<repo>/target/release/disksynth]
  BENCH_REPS      repetitions (median shown)        [3]
  BENCH_SIZE_MIB  size of the file                  [1024]
  BENCH_SECS      seconds of each fio run           [5]
  BENCH_DATA      directory for the file            [/tmp/fusebench]
  BENCH_OUT       output directory                  [<repo>/bench/out]
Output: a table on stdout and in $BENCH_OUT/fuse.md.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import Server, log, terminate, warm_random_file


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS = os.environ.get("DISKSYNTH_BIN", os.path.join(ROOT, "target/release/disksynth"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
SIZE = int(os.environ.get("BENCH_SIZE_MIB", "1024")) << 20
SECS = int(os.environ.get("BENCH_SECS", "5"))
DATA = os.environ.get("BENCH_DATA", "/tmp/fusebench")
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench/out"))
LOGS = os.path.join(OUT, "fuse-logs")


def mounted(d):
    with open("/proc/mounts") as m:
        return any(line.split()[1] == d for line in m)


class Mount:
    """A FUSE file made by `cmd` (`@MNT@` is a fresh mountpoint), ready when `@MNT@/name`
    exists on a mounted `@MNT@`; stopped by its pid (SIGTERM), unmounted lazily if left."""

    def __init__(self, label, cmd, name):
        self.dir = tempfile.mkdtemp(prefix="mnt-", dir=LOGS)
        self.file = os.path.join(self.dir, name)
        full = [c.replace("@MNT@", self.dir) for c in cmd]
        log("$ " + " ".join(full))
        self.err = open(os.path.join(LOGS, f"{label}.stderr"), "ab")
        self.proc = subprocess.Popen(full, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        deadline = time.time() + 60
        while not (mounted(self.dir) and os.path.exists(self.file)):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"{label} did not mount: {full}")
            time.sleep(0.01)

    def stop(self):
        if self.proc.poll() is None:
            terminate(self.proc)
        if mounted(self.dir):
            subprocess.run(["umount", "-l", self.dir], check=False)
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def drop_pages(path):
    """Forget the FUSE file's cached pages (only this file's: the backing file stays cached)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def seq_read(path, direct):
    """MiB/s of one whole read with 1 MiB requests."""
    if not direct:
        drop_pages(path)
    cmd = ["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"]
    if direct:
        cmd.append("iflag=direct")
    t = time.perf_counter()
    subprocess.run(cmd, check=True, timeout=600)
    return SIZE / (1 << 20) / (time.perf_counter() - t)


def rand_iops(path, jobs):
    """4 KiB random read IOPS with O_DIRECT, `jobs` synchronous readers."""
    out = subprocess.run(
        ["fio", "--name=rr", f"--filename={path}", "--readonly", "--rw=randread", "--bs=4k",
         "--direct=1", "--ioengine=psync", f"--numjobs={jobs}", "--group_reporting",
         "--time_based", f"--runtime={SECS}", "--output-format=json"],
        check=True, capture_output=True, text=True, timeout=SECS + 120)
    return json.loads(out.stdout)["jobs"][0]["read"]["iops"]


TESTS = [("seq O_DIRECT", "MiB/s", lambda p: seq_read(p, True)),
         ("seq buffered", "MiB/s", lambda p: seq_read(p, False)),
         ("4K rand, 1 job", "IOPS", lambda p: rand_iops(p, 1)),
         ("4K rand, 4 jobs", "IOPS", lambda p: rand_iops(p, 4))]


def main():
    os.makedirs(LOGS, exist_ok=True)
    for tool in ["nbdkit", "nbdfuse", "fio", "dd"]:
        if shutil.which(tool) is None:
            sys.exit(f"missing tool: {tool}")
    if not os.access(DS, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "-p", "disksynth"], cwd=ROOT, check=True)
    f = warm_random_file(DATA, SIZE)
    nbd_ds = Server("disksynth-nbd", [DS, "file", f, "-r", "-U", "@SOCK@"], LOGS)
    nbd_kit = Server("nbdkit", ["nbdkit", "-r", "-f", "-U", "@SOCK@", "file", f], LOGS)
    mounts = {}
    try:
        mounts["disksynth --fuse"] = Mount("disksynth-fuse",
                                           [DS, "file", f, "-r", "--fuse", "@MNT@"], "disk")
        mounts["nbdfuse → disksynth"] = Mount("nbdfuse-ds",
                                              ["nbdfuse", "-r", "@MNT@", nbd_ds.uri], "nbd")
        mounts["nbdfuse → nbdkit"] = Mount("nbdfuse-kit",
                                           ["nbdfuse", "-r", "@MNT@", nbd_kit.uri], "nbd")
        names = list(mounts)
        res = {}
        for rep in range(REPS):
            order = names[rep % 3:] + names[:rep % 3]
            for test, unit, fn in TESTS:
                got = {n: fn(mounts[n].file) for n in order}
                for n, v in got.items():
                    res.setdefault((test, n), []).append(v)
                for other in names[1:]:
                    res.setdefault((test, "ratio", other), []).append(
                        got[names[0]] / got[other])
                log(f"rep {rep} {test}: " + ", ".join(f"{n} {v:.0f} {unit}"
                                                       for n, v in got.items()))
    finally:
        for m in mounts.values():
            m.stop()
        nbd_ds.stop()
        nbd_kit.stop()
    lines = ["| read through the FUSE file | unit | " + " | ".join(names) +
             " | ÷ nbdfuse → disksynth | ÷ nbdfuse → nbdkit |",
             "|---|---|" + "---:|" * (len(names) + 2)]
    for test, unit, _ in TESTS:
        vals = [f"{statistics.median(res[(test, n)]):.0f}" for n in names]
        ratios = [f"{statistics.median(res[(test, 'ratio', o)]):.2f}×" for o in names[1:]]
        lines.append(f"| {test} | {unit} | " + " | ".join(vals + ratios) + " |")
    table = "\n".join(lines)
    note = (f"\nMedian of {REPS} runs; {SIZE >> 20} MiB file in the page cache, exported "
            f"read-only; 1 MiB dd requests; fio {SECS} s per run; nbdfuse with its defaults "
            f"over Unix sockets; nproc={os.cpu_count()}, everything on one machine.\n")
    print(table + note)
    with open(os.path.join(OUT, "fuse.md"), "w") as out:
        out.write(table + note)
    with open(os.path.join(OUT, "fuse.raw.tsv"), "w") as out:
        for key, vals in res.items():
            out.write("\t".join([str(k) for k in key] + [f"{v:.3f}" for v in vals]) + "\n")


if __name__ == "__main__":
    main()
