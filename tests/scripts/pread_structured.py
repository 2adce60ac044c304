#!/usr/bin/python3
"""Sparse reads: pread_structured over a range and classify the reply chunks.

usage: pread_structured.py URI [--write OFF:LEN]... [--compare FILE] [--range OFF:LEN]

--write writes deterministic data first (for memory exports); --compare gives the expected
content of a file export (otherwise expected = zeros + what --write wrote). Every chunk's bytes
are checked (hole chunks must be zeros), the reassembled buffer must equal the expected bytes.
Prints the merged hole and data ranges seen:
  hole_chunks=N data_chunks=M
  holes=OFF+LEN,...
  data=OFF+LEN,...
"""

import argparse

import nbd

from nbdtest import check, connect, data_for, fmt, merge, parse_range

ap = argparse.ArgumentParser()
ap.add_argument("uri")
ap.add_argument("--write", action="append", default=[], type=parse_range)
ap.add_argument("--compare")
ap.add_argument("--range", type=parse_range)
args = ap.parse_args()

h = connect(args.uri)
check(h.get_structured_replies_negotiated(), "server did not negotiate structured replies")
size = h.get_size()
for off, ln in args.write:
    h.pwrite(data_for(off, ln), off)

start, length = args.range if args.range else (0, size)
if args.compare:
    with open(args.compare, "rb") as f:
        f.seek(start)
        expected = f.read(length)
else:
    exp = bytearray(length)
    for off, ln in args.write:
        lo, hi = max(off, start), min(off + ln, start + length)
        if lo < hi:
            exp[lo - start : hi - start] = data_for(lo, hi - lo)
    expected = bytes(exp)

holes, data, errors = [], [], []
MAX = 32 << 20
pos = start
while pos < start + length:
    n = min(MAX, start + length - pos)

    def chunk(subbuf, offset, status, error):
        rel = offset - start
        sub = bytes(subbuf)
        if status == nbd.READ_HOLE:
            holes.append((offset, len(sub)))
            if sub != bytes(len(sub)):
                errors.append("hole chunk at %d is not zeros" % offset)
        elif status == nbd.READ_DATA:
            data.append((offset, len(sub)))
        else:
            errors.append("unexpected chunk status %d at %d" % (status, offset))
        if sub != expected[rel : rel + len(sub)]:
            errors.append("chunk at %d+%d has wrong bytes" % (offset, len(sub)))
        return 0

    buf = h.pread_structured(n, pos, chunk)
    rel = pos - start
    check(buf == expected[rel : rel + n], "reassembled buffer at %d differs" % pos)
    pos += n

check(not errors, "; ".join(errors[:5]))
covered = merge(holes + data)
check(covered == [(start, length)], "chunks do not tile the range: %s" % fmt(covered))
print("hole_chunks=%d data_chunks=%d" % (len(holes), len(data)))
print("holes=" + fmt(merge(holes)))
print("data=" + fmt(merge(data)))
h.shutdown()
