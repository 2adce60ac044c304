#!/usr/bin/python3
"""Every NBD command with its flags on a writable export, checked by reading back and by
block status: pwrite (+FUA), flush, cache, trim, zero (+FAST_ZERO, +NO_HOLE), pread (+DF).

usage: commands.py URI [--base OFFSET]

All I/O happens in [BASE, BASE + 4 MiB) (BASE defaults to 0; use a large one to test 64-bit
offsets). Prints `CMD ok` per command and `status OFF+LEN:FLAGS,...` for the touched range.
"""

import argparse

import nbd

from nbdtest import check, connect, data_for, parse_size

ap = argparse.ArgumentParser()
ap.add_argument("uri")
ap.add_argument("--base", type=parse_size, default=0)
args = ap.parse_args()
b = args.base
K = 1024
M = 1 << 20

h = connect(args.uri)
check(not h.is_read_only(), "export is read-only")
check(b + 4 * M <= h.get_size(), "export too small for --base")


def status(off, ln):
    out = []

    def cb(metacontext, offset, entries, error):
        for i in range(0, len(entries), 2):
            out.append((entries[i], entries[i + 1]))
        return 0

    h.block_status(ln, off, cb)
    res, pos = [], off
    for ln_, fl in out:
        ln_ = min(ln_, off + ln - pos)
        if ln_ <= 0:
            break
        if res and res[-1][2] == fl:
            res[-1] = (res[-1][0], res[-1][1] + ln_, fl)
        else:
            res.append((pos, ln_, fl))
        pos += ln_
    return res


def ok(name):
    print(name + " ok", flush=True)


h.pwrite(data_for(b, M), b)
ok("pwrite")
h.pwrite(data_for(b + M, 64 * K), b + M, nbd.CMD_FLAG_FUA)
ok("pwrite_fua")
check(h.pread(M, b) == data_for(b, M), "pwrite did not stick")
check(h.pread(64 * K, b + M) == data_for(b + M, 64 * K), "FUA pwrite did not stick")
h.flush()
ok("flush")
h.cache(M, b)
ok("cache")
# DF over a range spanning data and a hole: the reply must not be fragmented (one chunk).
chunks = []
df_off = b + M + 60 * K
buf = h.pread_structured(
    8 * K, df_off, lambda sub, off, st, err: chunks.append((off, len(sub), st)) or 0, nbd.CMD_FLAG_DF
)
check(buf == data_for(df_off, 4 * K) + bytes(4 * K), "DF read wrong")
check(len(chunks) == 1, "DF read came in %d chunks: %r" % (len(chunks), chunks))
ok("pread_df")

h.zero(64 * K, b, nbd.CMD_FLAG_NO_HOLE)
check(h.pread(64 * K, b) == bytes(64 * K), "zero NO_HOLE did not zero")
ok("zero_no_hole")
h.zero(64 * K, b + 64 * K, nbd.CMD_FLAG_FUA)
check(h.pread(64 * K, b + 64 * K) == bytes(64 * K), "zero FUA did not zero")
ok("zero_fua")
try:
    h.zero(64 * K, b + 128 * K, nbd.CMD_FLAG_FAST_ZERO)
    check(h.pread(64 * K, b + 128 * K) == bytes(64 * K), "fast zero did not zero")
    ok("zero_fast")
except nbd.Error as e:
    # A server may refuse a fast zero with ENOTSUP; anything else is wrong.
    check(e.errno == 95, "fast zero failed with %s" % e)
    print("zero_fast refused ENOTSUP", flush=True)

h.trim(M, b + 2 * M)  # never written: trim of a hole is fine
h.pwrite(data_for(b + 3 * M, M), b + 3 * M)
h.trim(M, b + 3 * M)
ok("trim")
check(h.pread(M, b + 3 * M) == bytes(M), "memory disk reads non-zero after trim")
# Data untouched by zero/trim is intact.
check(h.pread(M - 192 * K, b + 192 * K) == data_for(b + 192 * K, M - 192 * K), "neighbours damaged")
print("status " + ",".join("%d+%d:%d" % (o - b, ln, f) for o, ln, f in status(b, 4 * M)))
h.shutdown()
