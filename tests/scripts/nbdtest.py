"""Shared helpers for the libnbd test scripts (run with /usr/bin/python3, which has `nbd`)."""

import errno
import sys

import nbd


def connect(uri, strict=True):
    """Connects to URI requesting base:allocation; strict=False lets libnbd send bad requests."""
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if not strict:
        h.set_strict_mode(0)
    h.connect_uri(uri)
    return h


def errname(e):
    """The symbolic errno of an nbd.Error (e.g. 'EINVAL'), or 'none'."""
    if e.errno is None:
        return "none"
    return errno.errorcode.get(e.errno, str(e.errno))


def fail(msg):
    print("FAIL: " + msg, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def pattern(offset, length):
    """Bytes of a `pattern` disk: each 8-byte big-endian word holds its own offset."""
    start = offset & ~7
    end = (offset + length + 7) & ~7
    words = b"".join(w.to_bytes(8, "big") for w in range(start, end, 8))
    return words[offset - start : offset - start + length]


def data_for(offset, length):
    """Deterministic non-zero bytes the scripts write (depend on the absolute offset)."""
    return bytes(((i * 131 + 7) & 0xFF) or 1 for i in range(offset, offset + length))


def merge(ranges):
    """Merges sorted adjacent (offset, length) ranges."""
    out = []
    for off, ln in sorted(ranges):
        if ln == 0:
            continue
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + ln)
        else:
            out.append((off, ln))
    return out


def fmt(ranges):
    return ",".join("%d+%d" % r for r in ranges) or "-"


def parse_size(s):
    """'4096', '0x1000', '64K', '1M', '2G' -> bytes (powers of 1024)."""
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:].upper(), 1)
    return int(s[:-1] if mult > 1 else s, 0) * mult


def parse_range(s):
    """'OFF:LEN' with sizes as in parse_size."""
    off, ln = s.split(":")
    return parse_size(off), parse_size(ln)
