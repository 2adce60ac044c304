#!/usr/bin/python3
"""systemd-style socket activation: listen on a Unix socket, fork, and in the child put the
socket on fd 3, set LISTEN_FDS=1 and LISTEN_PID=<child pid>, then exec the server.

usage: socket_activate.py [--wrong-pid] SOCKET -- PROGRAM [ARGS...]

Prints `nbd+unix:///?socket=SOCKET` (line 1, once the socket listens). SIGTERM/SIGINT are
forwarded to the child; exits with the child's exit status (128+N if killed by signal N).
--wrong-pid sets LISTEN_PID to the parent's pid, so the server must ignore the socket.
"""

import os
import signal
import socket
import sys

args = sys.argv[1:]
wrong_pid = False
if args and args[0] == "--wrong-pid":
    wrong_pid = True
    args = args[1:]
path = args[0]
assert args[1] == "--", "usage: socket_activate.py [--wrong-pid] SOCKET -- PROGRAM [ARGS...]"
argv = args[2:]

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind(path)
sock.listen(16)
print("nbd+unix:///?socket=" + path, flush=True)

parent = os.getpid()
pid = os.fork()
if pid == 0:
    if sock.fileno() != 3:
        os.dup2(sock.fileno(), 3)
    os.set_inheritable(3, True)
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_PID"] = str(parent if wrong_pid else os.getpid())
    os.environ.pop("LISTEN_FDNAMES", None)
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)

sock.close()


def forward(signum, frame):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
_, status = os.waitpid(pid, 0)
if os.WIFSIGNALED(status):
    sys.exit(128 + os.WTERMSIG(status))
sys.exit(os.WEXITSTATUS(status))
