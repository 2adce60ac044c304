#!/usr/bin/python3
"""Keeps a connection busy with 1 MiB reads until the server goes away (at most 60 s).

usage: busy_client.py URI
Prints `started` after the first successful read, then `reads=N ended=REASON` at the end.
"""

import sys
import time

import nbd

h = nbd.NBD()
# nbds:// URIs name their certificates directory (tls-certificates=).
h.set_uri_allow_local_file(True)
h.connect_uri(sys.argv[1])
size = h.get_size()
chunk = min(1 << 20, size)
n, off, reason = 0, 0, "timeout"
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        h.pread(chunk, off)
    except nbd.Error as e:
        reason = "error:%s" % (e.string,)
        break
    n += 1
    if n == 1:
        print("started", flush=True)
    off = (off + chunk) % (size - chunk + 1)
print("reads=%d ended=%s" % (n, reason.replace(" ", "_")), flush=True)
