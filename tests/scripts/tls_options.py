#!/usr/bin/python3
"""Raw NBD option haggling around NBD_OPT_STARTTLS (proto.md "TLS support"), with Python's
ssl module as the TLS client: what libnbd and qemu never send.

usage: tls_options.py HOST PORT CA_CERT CASE [CLIENT_DIR]
  plain    before TLS: LIST, INFO, GO, STRUCTURED_REPLY, then EXPORT_NAME
  twice    STARTTLS, the TLS handshake, then inside TLS: STARTTLS again, LIST, ABORT
  payload  STARTTLS with a payload, then STARTTLS
  stall    STARTTLS, then nothing (the server must hang up at its handshake deadline)
  cert     STARTTLS with CLIENT_DIR/client-cert.pem and client-key.pem whatever CA the server
           asks for (GnuTLS, in libnbd and qemu, sends none that the server's CA list does not
           name), then LIST
Prints one line per option reply, `opt=N reply=NAME msg=TEXT` (NBD_REP_SERVER: `name=...`),
`tls=VERSION` once TLS is up, `closed` when the server hangs up, `tls-error=REASON` when
TLS fails.
"""

import socket
import ssl
import struct
import sys
import time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
OPT = {"EXPORT_NAME": 1, "ABORT": 2, "LIST": 3, "STARTTLS": 5, "INFO": 6, "GO": 7,
       "STRUCTURED_REPLY": 8}
REP = {1: "ACK", 2: "SERVER", 3: "INFO", 2**31 + 1: "ERR_UNSUP", 2**31 + 2: "ERR_POLICY",
       2**31 + 3: "ERR_INVALID", 2**31 + 5: "ERR_TLS_REQD", 2**31 + 6: "ERR_UNKNOWN"}

host, port, ca, case = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.create_connection((host, port), timeout=30)


def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b


def send_opt(name, payload=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT[name], len(payload)) + payload)


def replies():
    """Option replies up to and including the final one (ACK or an error)."""
    while True:
        magic, opt, kind, n = struct.unpack(">QIII", recv(20))
        assert magic == REPLY_MAGIC, hex(magic)
        data = recv(n)
        name = REP.get(kind, str(kind))
        if name == "SERVER":
            (ln,) = struct.unpack(">I", data[:4])
            print("opt=%d reply=SERVER name=%s" % (opt, data[4:4 + ln].decode()), flush=True)
        elif name != "INFO":
            print("opt=%d reply=%s msg=%s" % (opt, name, data.decode(errors="replace")), flush=True)
        if name not in ("SERVER", "INFO"):
            return name


def info_payload():
    return struct.pack(">I", 0) + struct.pack(">H", 0)


try:
    magic, opts, flags = struct.unpack(">QQH", recv(18))
    assert magic == NBDMAGIC and opts == IHAVEOPT
    s.sendall(struct.pack(">I", 1))  # NBD_FLAG_C_FIXED_NEWSTYLE
    if case == "plain":
        for o in ("LIST", "INFO", "GO"):
            send_opt(o, info_payload() if o != "LIST" else b"")
            replies()
        send_opt("STRUCTURED_REPLY")
        replies()
        send_opt("EXPORT_NAME")
        recv(1)
        print("data", flush=True)
    elif case == "payload":
        send_opt("STARTTLS", b"x")
        replies()
        send_opt("STARTTLS")
        replies()
    elif case == "stall":
        send_opt("STARTTLS")
        replies()
        t0 = time.monotonic()
        recv(1)
    elif case in ("twice", "cert"):
        send_opt("STARTTLS")
        if replies() == "ACK":
            ctx = ssl.create_default_context(cafile=ca)
            ctx.check_hostname = False
            if case == "cert":
                d = sys.argv[5]
                ctx.load_cert_chain(d + "/client-cert.pem", d + "/client-key.pem")
            s = ctx.wrap_socket(s, server_hostname="localhost")
            print("tls=%s" % s.version(), flush=True)
            if case == "twice":
                send_opt("STARTTLS")
                replies()
            send_opt("LIST")
            replies()
            send_opt("ABORT")
            replies()
except ssl.SSLError as e:
    print("tls-error=%s" % (e.reason,), flush=True)
except (EOFError, ConnectionResetError):
    print("closed", flush=True)
