#!/usr/bin/python3
"""Reads of a host file that another process keeps truncating and restoring.

usage: shrink_reads.py URI --style simple|structured --offset OFF --len LEN --byte B
                       [--count N] [--seconds S]

The export holds LEN bytes of the byte B at OFF (a host file's data). Reads of random
sub-ranges (4 KiB to 1 MiB, some small enough to be copied, most sent with sendfile) must
return exactly those bytes or fail: a read that succeeds with anything else is wrong. With
simple replies a failure cuts the connection, so the script reconnects. Prints:
  ok=N errors=M wrong=K reconnects=R
"""

import argparse
import random
import time

import nbd

from nbdtest import errname

ap = argparse.ArgumentParser()
ap.add_argument("uri")
ap.add_argument("--style", choices=["simple", "structured"], required=True)
ap.add_argument("--offset", type=int, required=True)
ap.add_argument("--len", type=int, required=True)
ap.add_argument("--byte", type=lambda s: int(s, 0), required=True)
ap.add_argument("--count", type=int, default=2000)
ap.add_argument("--seconds", type=float, default=60)
args = ap.parse_args()


def connect():
    h = nbd.NBD()
    if args.style == "simple":
        h.set_request_structured_replies(False)
    # nbds:// URIs name their certificates with tls-certificates=DIR.
    h.set_uri_allow_local_file(True)
    h.connect_uri(args.uri)
    want = args.style == "structured"
    assert h.get_structured_replies_negotiated() == want, "wrong reply style negotiated"
    return h


rng = random.Random(0x5EED)
ok = errors = wrong = reconnects = 0
h = connect()
deadline = time.monotonic() + args.seconds
for i in range(args.count):
    if time.monotonic() > deadline:
        break
    ln = rng.choice([4096, 16384, 65536, 262144, 1 << 20])
    ln = min(ln, args.len)
    off = args.offset + rng.randrange(0, args.len - ln + 1) // 512 * 512
    try:
        buf = h.pread(ln, off)
    except nbd.Error as e:
        errors += 1
        if errors <= 3:
            print(f"error at {off}+{ln}: {errname(e)} {e.string}", flush=True)
        if h.aio_is_dead() or h.aio_is_closed() or args.style == "simple":
            try:
                h.shutdown()
            except nbd.Error:
                pass
            h = connect()
            reconnects += 1
        continue
    if buf.count(args.byte) != ln:
        wrong += 1
        bad = next(j for j, b in enumerate(buf) if b != args.byte)
        print(f"WRONG read {off}+{ln}: byte {bad} is {buf[bad]:#x}", flush=True)
    else:
        ok += 1
print(f"ok={ok} errors={errors} wrong={wrong} reconnects={reconnects}", flush=True)
