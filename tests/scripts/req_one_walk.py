#!/usr/bin/python3
"""Walk a whole export one REQ_ONE block-status answer at a time, as `qemu-img convert` does,
and check every extent flagged zero really reads as zeros.

usage: req_one_walk.py URI [--write OFF:LEN]... [--expect FILE]

Reads the whole export first (the reference), then writes --write ranges (deterministic data) on
the same connection (a tmpdisk disk lives only as long as its connection), then walks
[0, size) with NBD_CMD_FLAG_REQ_ONE from 0 and from a few odd offsets. An extent flagged ZERO
or HOLE whose reference bytes are not all zero is a lie (the bug that made qemu-img convert lose
a FAT boot sector). Data extents are read back and compared too. With --expect, the reference
read must also equal FILE (e.g. the `-o` image). Prints:
  extents=N zero_bytes=Z data_bytes=D
"""

import argparse

import nbd

from nbdtest import check, connect, data_for, fail, parse_range

ap = argparse.ArgumentParser()
ap.add_argument("uri")
ap.add_argument("--write", action="append", default=[], type=parse_range)
ap.add_argument("--expect")
args = ap.parse_args()

h = connect(args.uri)
check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation not negotiated")
size = h.get_size()
ref = bytearray()
pos = 0
while pos < size:
    n = min(size - pos, 32 << 20)
    ref += h.pread(n, pos)
    pos += n
if args.expect:
    with open(args.expect, "rb") as f:
        want = f.read()
    check(len(want) == size, "size %d, expected file has %d" % (size, len(want)))
    if bytes(ref) != want:
        first = next(i for i in range(size) if ref[i] != want[i])
        fail("export differs from %s at byte %d" % (args.expect, first))
for off, ln in args.write:
    d = data_for(off, ln)
    h.pwrite(d, off)
    ref[off : off + ln] = d

total_extents = zero_bytes = data_bytes = 0
for start in [0, 1, 511, 4097, size // 3]:
    pos = start
    while pos < size:
        got = []

        def cb(metacontext, offset, entries, error):
            got.append(list(entries))
            return 0

        h.block_status(min(size - pos, 1 << 30), pos, cb, flags=nbd.CMD_FLAG_REQ_ONE)
        check(len(got) == 1, "one reply chunk expected, got %d" % len(got))
        entries = got[0]
        check(len(entries) == 2, "REQ_ONE must give one descriptor, got %r" % (entries,))
        ln, flags = entries
        check(ln > 0, "zero-length descriptor at %d" % pos)
        ln = min(ln, size - pos)
        if flags & nbd.STATE_ZERO:
            chunk = ref[pos : pos + ln]
            if chunk.count(0) != ln:
                bad = next(i for i, b in enumerate(chunk) if b != 0)
                fail(
                    "extent %d+%d flagged %d (zero) but byte %d holds %#x"
                    % (pos, ln, flags, pos + bad, chunk[bad])
                )
            zero_bytes += ln
        else:
            data_bytes += ln
            # Read a sample of the data extent back: it must be the reference.
            n = min(ln, 1 << 20)
            check(h.pread(n, pos) == ref[pos : pos + n], "data at %d+%d changed" % (pos, n))
        total_extents += 1
        pos += ln
print("extents=%d zero_bytes=%d data_bytes=%d" % (total_extents, zero_bytes, data_bytes))
