#!/usr/bin/python3
"""64-deep concurrent reads of a `pattern` export: queue aio_pread x DEPTH, then poll until
every command completes and verify every buffer.

usage: aio_reads.py URI [--depth 64] [--len 65536]
Prints `issued=N completed=N max_in_flight=K verified_bytes=B`.
"""

import argparse
import random

import nbd

from nbdtest import check, connect, pattern

ap = argparse.ArgumentParser()
ap.add_argument("uri")
ap.add_argument("--depth", type=int, default=64)
ap.add_argument("--len", type=int, default=65536)
args = ap.parse_args()

h = connect(args.uri)
size = h.get_size()
rng = random.Random(1234)
cmds = []
for i in range(args.depth):
    # Mix aligned and unaligned offsets; the last one touches the end of the disk.
    if i == args.depth - 1:
        off = size - args.len
    elif i % 3 == 0:
        off = rng.randrange(0, size - args.len)
    else:
        off = rng.randrange(0, (size - args.len) // 4096) * 4096
    buf = nbd.Buffer(args.len)
    cookie = h.aio_pread(buf, off)
    cmds.append((cookie, off, buf))
max_in_flight = h.aio_in_flight()

pending = {c for c, _, _ in cmds}
rounds = 0
while pending:
    rounds += 1
    check(rounds < 1000000, "commands never completed")
    h.poll(1000)
    for c in list(pending):
        if h.aio_command_completed(c):
            pending.discard(c)

verified = 0
for cookie, off, buf in cmds:
    got = buf.to_bytearray()
    check(got == pattern(off, args.len), "aio_pread at %d returned wrong data" % off)
    verified += len(got)
print(
    "issued=%d completed=%d max_in_flight=%d verified_bytes=%d"
    % (len(cmds), len(cmds) - len(pending), max_in_flight, verified)
)
h.shutdown()
