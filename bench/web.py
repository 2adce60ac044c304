#!/usr/bin/python3
"""What the web view costs: the same file served with and without `--web`, the view open.

Usage:  bench/web.py       (Debian's /usr/bin/python3: it has the libnbd bindings)

A 1 GiB file of random bytes (in the page cache after the first read) is served read-only by two
disksynth processes, `disksynth file F -r` and the same with `--web 127.0.0.1:PORT`, both up for
the whole run. While the second is measured, a viewer does what a browser tab and a script do at
once: it holds the event stream (`/api/events`) open, reading every event, and polls
`/api/stats` four times a second (the page itself asks twice a second). Sequential reads with
`nbdcopy --no-extents URI null:`, 1 connection, with nbdcopy's default 256 KiB requests and with
4 KiB requests (where a per-request cost shows most). Plain and watched are read back to back
(order alternating) and the cost is the median of those pairs' ratios, which cancels the drift
of a shared machine; the servers' CPU seconds per GiB (all threads, the web view's included) say
what the collecting costs where throughput is noisy. Issue 18: collecting costs at most 2 %.

Environment knobs (defaults in brackets):
  DISKSYNTH_BIN   disksynth binary                  [<repo>/target/release/disksynth]
  BENCH_REPS      repetitions (median shown)        [7]
  BENCH_PASSES    whole reads per measurement       [4]
  BENCH_DATA      directory for the 1 GiB file      [/tmp/filtersbench]
  BENCH_OUT       output directory                  [<repo>/bench/out]
  BENCH_PIN       1: servers on CPU 1, nbdcopy on CPU 0 (taskset)
Output: a table on stdout and in $BENCH_OUT/web.md.
"""

import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

from benchlib import Server, log, warm_random_file


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS = os.environ.get("DISKSYNTH_BIN", os.path.join(ROOT, "target/release/disksynth"))
REPS = int(os.environ.get("BENCH_REPS", "7"))
DATA = os.environ.get("BENCH_DATA", "/tmp/filtersbench")
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench/out"))
LOGS = os.path.join(OUT, "web-logs")
SIZE = 1 << 30
PASSES = int(os.environ.get("BENCH_PASSES", "4"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TICK = os.sysconf("SC_CLK_TCK")
PIN = os.environ.get("BENCH_PIN") == "1"
SERVER_CPU = ["taskset", "-c", "1"] if PIN else []
CLIENT_CPU = ["taskset", "-c", "0"] if PIN else []


def cpu_seconds(pid):
    """User + system time of the whole process (all threads: the web view's too),
    /proc/PID/stat fields 14-15."""
    with open(f"/proc/{pid}/stat") as st:
        fields = st.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def seq_read(server, request_size):
    """(MiB/s, server CPU seconds per GiB) of PASSES whole reads (one read of 1 GiB takes
    well under a second)."""
    cmd = CLIENT_CPU + ["nbdcopy", "--no-extents", "--connections=1",
                        f"--request-size={request_size}", server.uri, "null:"]
    c0 = cpu_seconds(server.proc.pid)
    t = time.perf_counter()
    for _ in range(PASSES):
        subprocess.run(cmd, check=True, timeout=600)
    dt = time.perf_counter() - t
    cpu = cpu_seconds(server.proc.pid) - c0
    return PASSES * SIZE / (1 << 20) / dt, cpu / PASSES


class Viewer:
    """The view open: the event stream read as it comes, /api/stats polled 4 times a second."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.events = 0
        self.polls = 0
        self.last = None
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self.stream, self.poll)]
        for t in self.threads:
            t.start()

    def stream(self):
        while not self.stop.is_set():
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            c.request("GET", "/api/events")
            r = c.getresponse()
            while not self.stop.is_set():
                line = r.fp.readline()
                if not line:
                    break
                if line.startswith(b"data: "):
                    self.events += 1
            c.close()

    def poll(self):
        while not self.stop.is_set():
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            c.request("GET", "/api/stats")
            self.last = json.loads(c.getresponse().read())
            c.close()
            self.polls += 1
            time.sleep(0.25)

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


def main():
    os.makedirs(LOGS, exist_ok=True)
    if shutil.which("nbdcopy") is None:
        sys.exit("missing tool: nbdcopy")
    if not os.access(DS, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "-p", "disksynth"], cwd=ROOT, check=True)
    f = warm_random_file(DATA, SIZE)
    port = free_port()
    plain = Server("plain", SERVER_CPU + [DS, "file", f, "-r", "-U", "@SOCK@"], LOGS)
    web = Server("web", SERVER_CPU + [DS, "file", f, "-r", "-U", "@SOCK@",
                                      "--web", f"127.0.0.1:{port}"], LOGS)
    viewer = Viewer(port)
    servers = {"plain": plain, "web": web}
    workloads = [("256 KiB requests", 256 << 10), ("4 KiB requests", 4096)]
    res = {}
    try:
        for rep in range(REPS):
            for wname, rsize in workloads:
                # Back to back, the order alternating: a pair sees the same machine.
                order = ["plain", "web"] if rep % 2 == 0 else ["web", "plain"]
                got = {n: seq_read(servers[n], rsize) for n in order}
                for n, (v, cpu) in got.items():
                    res.setdefault((n, wname), []).append(v)
                    res.setdefault((n, "cpu", wname), []).append(cpu)
                res.setdefault(("ratio", wname), []).append(got["web"][0] / got["plain"][0])
                res.setdefault(("cpu ratio", wname), []).append(got["web"][1] / got["plain"][1])
                log(f"{wname}: plain {got['plain'][0]:.0f} MiB/s {got['plain'][1]:.3f} s/GiB, "
                    f"web {got['web'][0]:.0f} MiB/s {got['web'][1]:.3f} s/GiB")
    finally:
        viewer.close()
        plain.stop()
        web.stop()
    read = viewer.last["ops"]["read"]["bytes"] if viewer.last else 0
    expected = REPS * len(workloads) * PASSES * SIZE
    lines = [
        "| sequential read, 1 connection | plain (MiB/s) | --web, view open (MiB/s) "
        "| throughput cost | server CPU s/GiB plain | with --web | CPU cost |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for wname, _ in workloads:
        p = statistics.median(res[("plain", wname)])
        w = statistics.median(res[("web", wname)])
        cost = (1 - statistics.median(res[("ratio", wname)])) * 100
        pc = statistics.median(res[("plain", "cpu", wname)])
        wc = statistics.median(res[("web", "cpu", wname)])
        cpu_cost = (statistics.median(res[("cpu ratio", wname)]) - 1) * 100
        lines.append(f"| {wname} | {p:.1f} | {w:.1f} | {cost:+.1f} % | {pc:.3f} | {wc:.3f} "
                     f"| {cpu_cost:+.1f} % |")
    table = "\n".join(lines)
    note = (f"\nMedian of {REPS} runs of {PASSES} whole reads; 1 GiB file in the page cache; each "
            "pair read back to back. throughput cost = 1 - web/plain of each pair, CPU cost = "
            "web/plain - 1 of the server's CPU seconds (user + system, all threads, the web "
            "view's included) per GiB; medians over the pairs (negative: noise)"
            + ("; servers pinned to CPU 1, nbdcopy to CPU 0" if PIN else "") + ". "
            f"The viewer read {viewer.events} events and polled /api/stats "
            f"{viewer.polls} times; the view counted {read / (1 << 30):.0f} GiB read of "
            f"{expected / (1 << 30):.0f} GiB.\n")
    print(table + note)
    with open(os.path.join(OUT, "web.md"), "w") as out:
        out.write(table + note)
    with open(os.path.join(OUT, "web.raw.tsv"), "w") as out:
        for key, vals in res.items():
            out.write("\t".join([str(k) for k in key] + [f"{v:.3f}" for v in vals]) + "\n")


if __name__ == "__main__":
    main()
