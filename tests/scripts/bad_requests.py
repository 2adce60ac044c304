#!/usr/bin/python3
"""Misbehaving requests sent with libnbd's strict mode off; after each one a good read must
still work on the same connection.

usage: bad_requests.py URI ro|rw

Prints one line per case: `CASE result=ok|error errno=NAME after=ok`; exits 1 if the connection
stopped working.
"""

import sys

import nbd

from nbdtest import check, connect, errname

uri, mode = sys.argv[1], sys.argv[2]
h = connect(uri, strict=False)
size = h.get_size()
reference = h.pread(4096, 0)


def case(name, fn):
    try:
        fn()
        result, err = "ok", "none"
    except nbd.Error as e:
        result, err = "error", errname(e)
    try:
        after = "ok" if h.pread(4096, 0) == reference else "wrong-data"
    except nbd.Error as e:
        after = "failed:" + errname(e)
    print("%s result=%s errno=%s after=%s" % (name, result, err, after), flush=True)
    check(after == "ok", "connection unusable after " + name)


case("read_past_end", lambda: h.pread(4096, size - 2048))
case("read_beyond_end", lambda: h.pread(512, size + 4096))
case("zero_length_read", lambda: check(h.pread(0, 0) == b"", "zero-length read returned data"))
case("oversized_read", lambda: h.pread((32 << 20) + 4096, 0))
if mode == "ro":
    case("write_readonly", lambda: h.pwrite(b"\xab" * 4096, 8192))
    case("trim_readonly", lambda: h.trim(4096, 8192))
    case("zero_readonly", lambda: h.zero(4096, 8192))
else:
    case("write_past_end", lambda: h.pwrite(b"\xab" * 4096, size - 2048))
    case("oversized_write", lambda: h.pwrite(b"\xcd" * ((32 << 20) + 4096), 65536))
    case("good_write", lambda: h.pwrite(b"\xef" * 4096, 1 << 20))
    check(h.pread(4096, 1 << 20) == b"\xef" * 4096, "good write did not stick")
h.shutdown()
print("done", flush=True)
