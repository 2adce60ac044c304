#!/usr/bin/python3
"""Block status (base:allocation), whole disk and with NBD_CMD_FLAG_REQ_ONE.

usage: block_status.py URI [--write OFF:LEN]... [--probe OFF:LEN]...

Prints the merged whole-disk map as `map=OFF+LEN:FLAGS,...`, then for each --probe a REQ_ONE
query: `req_one offset=O count=C descriptors=N length=L flags=F`.
"""

import argparse

import nbd

from nbdtest import check, connect, data_for, parse_range

ap = argparse.ArgumentParser()
ap.add_argument("uri")
ap.add_argument("--write", action="append", default=[], type=parse_range)
ap.add_argument("--probe", action="append", default=[], type=parse_range)
args = ap.parse_args()

h = connect(args.uri)
check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation not negotiated")
size = h.get_size()
for off, ln in args.write:
    h.pwrite(data_for(off, ln), off)

# Whole disk, no flags: may take several requests.
extents = []
pos = 0
while pos < size:
    got = []

    def cb(metacontext, offset, entries, error):
        check(metacontext == nbd.CONTEXT_BASE_ALLOCATION, "context %r" % metacontext)
        got.append((offset, list(entries)))
        return 0

    h.block_status(min(size - pos, 1 << 30), pos, cb)
    check(len(got) == 1, "expected one base:allocation reply chunk, got %d" % len(got))
    offset, entries = got[0]
    check(offset == pos and len(entries) % 2 == 0 and entries, "bad reply %r" % (got,))
    for i in range(0, len(entries), 2):
        ln, flags = entries[i], entries[i + 1]
        check(ln > 0, "zero-length descriptor")
        ln = min(ln, size - pos)
        if extents and extents[-1][2] == flags and extents[-1][0] + extents[-1][1] == pos:
            extents[-1] = (extents[-1][0], extents[-1][1] + ln, flags)
        else:
            extents.append((pos, ln, flags))
        pos += ln
        if pos >= size:
            break
print("map=" + ",".join("%d+%d:%d" % e for e in extents))

for off, count in args.probe:
    got = []

    def cb1(metacontext, offset, entries, error):
        got.append(list(entries))
        return 0

    h.block_status(count, off, cb1, nbd.CMD_FLAG_REQ_ONE)
    check(len(got) == 1, "REQ_ONE: expected one reply chunk, got %d" % len(got))
    entries = got[0]
    print(
        "req_one offset=%d count=%d descriptors=%d length=%d flags=%d"
        % (off, count, len(entries) // 2, entries[0], entries[1])
    )
h.shutdown()
