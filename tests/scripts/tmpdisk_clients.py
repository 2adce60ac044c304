"""Clients of `disksynth tmpdisk`: tmpdisk_clients.py MODE URI [ARGS...]

Modes (each prints `ok` on success, `FAIL: ...` and exits 1 otherwise):
  two URI             two clients at once write different data at the same offsets and each
                      reads back its own; a third client afterwards sees neither.
  info URI            NBD_OPT_INFO only (no GO): prints size=N, then aborts.
  limit URI MAX       MAX clients connect; one more is refused with a message naming
                      --max-clients while the first MAX keep working; after one leaves, a new
                      client gets in.
  enospc URI BYTES    writes BYTES of random data in 1 MiB requests until a write fails with
                      ENOSPC (which must happen); reads back what succeeded.
  hold URI OFFSET LEN write LEN random bytes at OFFSET, flush, print `written`, then wait for a
                      line on stdin before disconnecting.
"""

import os
import sys

import nbd

from nbdtest import check, errname, fail

OFFSETS = [0, 4096, 1 << 20, 7 << 20]


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def two(uri):
    a, b = connect(uri), connect(uri)
    check(not a.can_multi_conn(), "tmpdisk advertises multi-conn")
    da = {o: os.urandom(4096) for o in OFFSETS}
    db = {o: os.urandom(4096) for o in OFFSETS}
    for o in OFFSETS:
        a.pwrite(da[o], o)
        b.pwrite(db[o], o)
    a.flush()
    b.flush()
    for o in OFFSETS:
        check(a.pread(4096, o) == da[o], f"client A lost its data at {o}")
        check(b.pread(4096, o) == db[o], f"client B lost its data at {o}")
    c = connect(uri)
    for o in OFFSETS:
        got = c.pread(4096, o)
        check(got != da[o] and got != db[o], f"a new client sees old data at {o}")
    for h in (a, b, c):
        h.shutdown()


def info(uri):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(uri)
    h.opt_info()
    print(f"size={h.get_size()}", flush=True)
    h.opt_abort()


def limit(uri, max_clients):
    held = [connect(uri) for _ in range(max_clients)]
    for i, h in enumerate(held):
        h.pwrite(bytes([i + 1]) * 4096, 0)
    try:
        extra = connect(uri)
        fail("a client over the limit was let in")
    except nbd.Error as e:
        # NBD_REP_ERR_POLICY: libnbd says "server policy prevents NBD_OPT_GO"
        # (the server's text, naming --max-clients, is checked with qemu-img
        # by the Rust test).
        check("policy" in str(e) or "--max-clients" in str(e), f"unclear refusal: {e}")
    for i, h in enumerate(held):
        check(h.pread(4096, 0) == bytes([i + 1]) * 4096, f"client {i} was disturbed")
    held.pop().shutdown()
    extra = connect(uri)
    check(extra.pread(4096, 0) != bytes([max_clients]) * 4096, "a new client sees a gone one's data")
    extra.shutdown()
    for h in held:
        h.shutdown()


def enospc(uri, total):
    h = connect(uri)
    chunk = 1 << 20
    written = []
    for off in range(0, total, chunk):
        data = os.urandom(chunk)
        try:
            h.pwrite(data, off)
            written.append((off, data))
        except nbd.Error as e:
            check(errname(e) == "ENOSPC", f"a full disk gave {errname(e)} ({e}), not ENOSPC")
            break
    else:
        fail(f"{total} bytes fitted: no ENOSPC")
    check(written, "not even the first write fitted")
    for off, data in written:
        check(h.pread(len(data), off) == data, f"data written before ENOSPC is wrong at {off}")
    h.shutdown()


def hold(uri, offset, length):
    h = connect(uri)
    h.pwrite(os.urandom(length), offset)
    h.flush()
    print("written", flush=True)
    sys.stdin.readline()
    h.shutdown()


def main():
    mode, uri, *rest = sys.argv[1:]
    if mode == "two":
        two(uri)
    elif mode == "info":
        info(uri)
    elif mode == "limit":
        limit(uri, int(rest[0]))
    elif mode == "enospc":
        enospc(uri, int(rest[0]))
    elif mode == "hold":
        hold(uri, int(rest[0]), int(rest[1]))
    else:
        fail(f"unknown mode {mode}")
    print("ok", flush=True)


if __name__ == "__main__":
    main()
