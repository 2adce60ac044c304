#!/usr/bin/python3
"""Sequential reads over TLS: disksynth (rustls, ring) vs nbdkit (GnuTLS), one run.

Usage:  bench/tls.py       (Debian's /usr/bin/python3: it has the libnbd bindings)

A file of random bytes (in the page cache) is served read-only on Unix sockets by
`disksynth file F --tls require --tls-certificates DIR`, by `nbdkit --tls=require
--tls-certificates=DIR file F`, and by `disksynth file F` without TLS (what TLS costs). The
certificates (ECDSA P-256, so TLS 1.3 with AES-256-GCM or ChaCha20 as both sides prefer) come
from tests/scripts/tls_pki.sh. Reads: `nbdcopy --no-extents --connections=N URI null:` with
N = 1 and 4, nbdcopy's default 256 KiB requests; the two TLS servers are read back to back
(order alternating), and the ratio is the median of those pairs' ratios. Each server's CPU time
(user + system of all its threads, /proc/PID/stat) over the reads gives CPU seconds per GiB.
The client (GnuTLS decrypting in nbdcopy) shares the machine: on a small machine the
throughput is partly the client's; CPU per GiB is the server's own cost. The client's CPU per
GiB and how busy it was (CPU seconds over wall seconds; with BENCH_PIN, 100 % is its whole
core) show when the client, not the server, sets the pace.

Environment knobs (defaults in brackets):
  DISKSYNTH_BIN   disksynth binary                  [<repo>/target/release/disksynth]
  BENCH_REPS      repetitions (median shown)        [5]
  BENCH_SIZE_MIB  size of the file                  [1024]
  BENCH_DATA      directory for the file and certs  [/tmp/tlsbench]
  BENCH_PIN       1: servers on CPU 1, nbdcopy on CPU 0 (taskset), so that the client's
                  decryption does not compete with the server for a core  [0]
  BENCH_OUT       output directory                  [<repo>/bench/out]
Output: a table on stdout and in $BENCH_OUT/tls.md.
"""

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

from benchlib import Server, log, warm_random_file


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS = os.environ.get("DISKSYNTH_BIN", os.path.join(ROOT, "target/release/disksynth"))
REPS = int(os.environ.get("BENCH_REPS", "5"))
SIZE = int(os.environ.get("BENCH_SIZE_MIB", "1024")) << 20
DATA = os.environ.get("BENCH_DATA", "/tmp/tlsbench")
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench/out"))
LOGS = os.path.join(OUT, "tls-logs")
TICK = os.sysconf("SC_CLK_TCK")
PIN = os.environ.get("BENCH_PIN") == "1"
SERVER_CPU = ["taskset", "-c", "1"] if PIN else []
CLIENT_CPU = ["taskset", "-c", "0"] if PIN else []


def prepare():
    f = warm_random_file(DATA, SIZE)
    pki = os.path.join(DATA, "pki")
    shutil.rmtree(pki, ignore_errors=True)
    subprocess.run(["sh", os.path.join(ROOT, "tests/scripts/tls_pki.sh"), DATA, "pki"],
                   check=True)
    return f, pki


def cpu_seconds(pid):
    """User + system time of the whole process (all threads), /proc/PID/stat fields 14-15."""
    with open(f"/proc/{pid}/stat") as st:
        # The command name (field 2) may hold spaces: split after its closing parenthesis.
        fields = st.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def seq_read(server, uri, conns):
    """(MiB/s, server CPU s/GiB, client CPU s/GiB, client busy fraction) of one whole read.

    The client's CPU (nbdcopy decrypting with GnuTLS) is what bounds the throughput when it
    nears one core: its busy fraction (CPU seconds / wall seconds) says how close it is."""
    cmd = CLIENT_CPU + ["nbdcopy", "--no-extents", f"--connections={conns}", uri, "null:"]
    c0 = cpu_seconds(server.proc.pid)
    k0 = children_cpu()
    t = time.perf_counter()
    subprocess.run(cmd, check=True, timeout=600)
    dt = time.perf_counter() - t
    cpu = cpu_seconds(server.proc.pid) - c0
    client = children_cpu() - k0
    gib = SIZE / (1 << 30)
    return SIZE / (1 << 20) / dt, cpu / gib, client / gib, client / dt


def main():
    os.makedirs(LOGS, exist_ok=True)
    for tool in ["nbdkit", "nbdcopy", "openssl"]:
        if shutil.which(tool) is None:
            sys.exit(f"missing tool: {tool}")
    if not os.access(DS, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "-p", "disksynth"], cwd=ROOT, check=True)
    f, pki = prepare()
    tls = ["--tls", "require", "--tls-certificates", pki]
    servers = {
        "disksynth": Server("disksynth",
                            SERVER_CPU + [DS, "file", f, "-r", "-U", "@SOCK@"] + tls, LOGS),
        "nbdkit": Server("nbdkit", SERVER_CPU + ["nbdkit", "-r", "-f", "-U", "@SOCK@",
                                                 "--tls=require", f"--tls-certificates={pki}",
                                                 "file", f], LOGS),
        "disksynth, no TLS": Server("disksynth-plain",
                                    SERVER_CPU + [DS, "file", f, "-r", "-U", "@SOCK@"], LOGS),
    }
    uris = {n: s.uri.replace("nbd+unix:", "nbds+unix:") + f"&tls-certificates={pki}"
            for n, s in servers.items() if "no TLS" not in n}
    uris["disksynth, no TLS"] = servers["disksynth, no TLS"].uri
    res = {}
    try:
        for rep in range(REPS):
            for conns in (1, 4):
                order = ["disksynth", "nbdkit"] if rep % 2 == 0 else ["nbdkit", "disksynth"]
                got = {}
                for name in order + ["disksynth, no TLS"]:
                    got[name] = seq_read(servers[name], uris[name], conns)
                    res.setdefault((name, conns, "mib"), []).append(got[name][0])
                    res.setdefault((name, conns, "cpu"), []).append(got[name][1])
                    res.setdefault((name, conns, "client"), []).append(got[name][2])
                    res.setdefault((name, conns, "busy"), []).append(got[name][3])
                res.setdefault(("ratio", conns), []).append(
                    got["disksynth"][0] / got["nbdkit"][0])
                log(f"rep {rep} conns {conns}: " + ", ".join(
                    f"{n} {v[0]:.0f} MiB/s {v[1]:.2f} CPU s/GiB (client {v[2]:.2f}, "
                    f"busy {v[3]:.0%})" for n, v in got.items()))
    finally:
        for s in servers.values():
            s.stop()
    lines = [
        "| sequential read, 256 KiB requests | server | MiB/s | server CPU s/GiB | "
        "client CPU s/GiB | client busy | disksynth / nbdkit (median of paired runs) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for conns in (1, 4):
        for name in ("disksynth", "nbdkit", "disksynth, no TLS"):
            mib = statistics.median(res[(name, conns, "mib")])
            cpu = statistics.median(res[(name, conns, "cpu")])
            client = statistics.median(res[(name, conns, "client")])
            busy = statistics.median(res[(name, conns, "busy")])
            ratio = (f"{statistics.median(res[('ratio', conns)]):.2f}×"
                     if name == "disksynth" else "")
            lines.append(f"| {conns} connection{'s' if conns > 1 else ''} | {name} | {mib:.0f} "
                         f"| {cpu:.2f} | {client:.2f} | {busy:.0%} | {ratio} |")
    table = "\n".join(lines)
    note = (f"\nMedian of {REPS} runs; {SIZE >> 20} MiB file in the page cache; Unix sockets; "
            f"TLS 1.3, ECDSA P-256 certificates; nproc={os.cpu_count()}, client on the same "
            "machine" + ("; servers pinned to CPU 1, nbdcopy to CPU 0" if PIN else "") + ".\n")
    print(table + note)
    with open(os.path.join(OUT, "tls.md"), "w") as out:
        out.write(table + note)
    with open(os.path.join(OUT, "tls.raw.tsv"), "w") as out:
        for key, vals in res.items():
            out.write("\t".join([str(k) for k in key] + [f"{v:.3f}" for v in vals]) + "\n")


if __name__ == "__main__":
    main()
