#!/usr/bin/python3
"""A misbehaving client speaking raw NBD (proto.md) over a Unix socket. Each case uses a fresh
connection; at the end a well-formed client must still be served.

usage: raw_handshake.py SOCKET

Prints one line per case, e.g. `starttls reply=0x80000002`, `bad_magic closed=yes`.
"""

import socket
import struct
import sys

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO = 1, 2, 3, 5, 6
REP_ACK, REP_SERVER = 1, 2
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2

path = sys.argv[1]


def recvn(s, n):
    buf = b""
    while len(buf) < n:
        got = s.recv(n - len(buf))
        if not got:
            raise EOFError("server closed after %d of %d bytes" % (len(buf), n))
        buf += got
    return buf


def open_conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    magic, opt_magic, flags = struct.unpack(">8sQH", recvn(s, 18))
    assert magic == NBDMAGIC and opt_magic == IHAVEOPT, "not fixed newstyle: %r" % magic
    s.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
    return s, flags


def send_opt(s, opt, data=b"", length=None):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data) if length is None else length) + data)


def read_reply(s, opt):
    magic, ropt, rtype, ln = struct.unpack(">QIII", recvn(s, 20))
    assert magic == REPLY_MAGIC, "bad option reply magic %#x" % magic
    assert ropt == opt, "reply for option %d, expected %d" % (ropt, opt)
    return rtype, recvn(s, ln)


def closed(s):
    """True if the server closes the connection (EOF or reset) within the timeout."""
    try:
        while s.recv(4096):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def abort(s):
    send_opt(s, OPT_ABORT)
    try:
        rtype, _ = read_reply(s, OPT_ABORT)
    except EOFError:
        rtype = "eof"
    s.close()
    return rtype


s, flags = open_conn()
print("greeting flags=%d" % flags)
send_opt(s, 0x1234, b"xyz")
rtype, _ = read_reply(s, 0x1234)
print("unknown_option reply=%#x" % rtype)
send_opt(s, OPT_STARTTLS)
rtype, _ = read_reply(s, OPT_STARTTLS)
print("starttls reply=%#x" % rtype)
send_opt(s, OPT_LIST)
names = []
while True:
    rtype, data = read_reply(s, OPT_LIST)
    if rtype != REP_SERVER:
        break
    (n,) = struct.unpack(">I", data[:4])
    names.append(data[4 : 4 + n].decode())
print("list reply=%#x names=%s" % (rtype, ",".join(repr(x) for x in names)))
# NBD_OPT_INFO whose length is too short for its own name field.
send_opt(s, OPT_INFO, b"\x00\x00", length=2)
rtype, _ = read_reply(s, OPT_INFO)
print("short_info reply=%#x" % rtype)
r = abort(s)
print("abort reply=%s" % (r if r == "eof" else "%#x" % r))

s, _ = open_conn()
s.sendall(b"GARBAGE!" + b"\x00" * 8)
print("bad_magic closed=%s" % ("yes" if closed(s) else "no"))
s.close()

s, _ = open_conn()
send_opt(s, OPT_INFO, length=0x7FFFFFF0)  # promises 2 GiB of option data, then vanishes
s.close()
print("huge_option sent")

s, _ = open_conn()
s.sendall(b"\x49\x48\x41")  # 3 bytes of an option header, then vanish
s.close()
print("truncated_option sent")

# Transmission phase via NBD_OPT_EXPORT_NAME, then a read whose reply nobody reads, then a
# truncated request header.
s, _ = open_conn()
send_opt(s, OPT_EXPORT_NAME, b"")
size, tflags = struct.unpack(">QH", recvn(s, 10))
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, min(size, 1 << 20)))
s.sendall(b"\x25\x60\x95")
s.close()
print("abandoned_read size=%d" % size)

# A well-formed client still works.
s, _ = open_conn()
send_opt(s, OPT_EXPORT_NAME, b"")
size, tflags = struct.unpack(">QH", recvn(s, 10))
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 42, 0, 512))
magic, err, cookie = struct.unpack(">IIQ", recvn(s, 16))
assert magic == 0x67446698 and cookie == 42, "bad simple reply %#x cookie %d" % (magic, cookie)
data = recvn(s, 512) if err == 0 else b""
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 43, 0, 0))  # NBD_CMD_DISC
s.close()
print("good_read error=%d bytes=%d" % (err, len(data)))
