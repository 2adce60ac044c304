"""Shared pieces of the Python benchmarks (bench/xz.py, qcow2.py, remote_boot.py, tmpdisk.py)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import nbd


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def terminate(proc, grace=10):
    """SIGTERM `proc` and wait `grace` seconds for it to end, then SIGKILL it."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def warm_random_file(directory, size):
    """`directory`/disk.img: `size` random bytes (written once, kept while its size is right),
    read once so that every measurement reads it from the page cache."""
    os.makedirs(directory, exist_ok=True)
    f = os.path.join(directory, "disk.img")
    if not os.path.exists(f) or os.path.getsize(f) != size:
        log(f"writing {f}")
        with open(f, "wb") as out:
            for _ in range(size >> 24):
                out.write(os.urandom(1 << 24))
    subprocess.run(["cat", f], stdout=subprocess.DEVNULL, check=True)
    return f


class Server:
    """An NBD server on a Unix socket in a private directory under `logs`, stopped by its pid.

    `@SOCK@` and `@DIR@` in `cmd` (and in `env` values) become the socket path and the private
    directory. Ready when a client can negotiate: the probe stops before NBD_OPT_GO, so it opens
    no export (tmpdisk makes no disk for it).
    """

    def __init__(self, name, cmd, logs, env=None):
        self.dir = tempfile.mkdtemp(prefix=f"{name}-", dir=logs)
        self.sock = os.path.join(self.dir, "sock")
        full = [c.replace("@SOCK@", self.sock).replace("@DIR@", self.dir) for c in cmd]
        log("$ " + " ".join(full))
        self.err = open(os.path.join(logs, f"{name}.stderr"), "ab")
        e = dict(os.environ)
        e.update({k: v.replace("@DIR@", self.dir) for k, v in (env or {}).items()})
        self.proc = subprocess.Popen(
            full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.err, env=e
        )
        deadline = time.time() + 60
        while True:
            h = nbd.NBD()
            h.set_opt_mode(True)
            try:
                h.connect_unix(self.sock)
                h.opt_abort()
                break
            except nbd.Error:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{name} did not start: {full}")
                time.sleep(0.005)
        self.uri = f"nbd+unix:///?socket={self.sock}"

    def peak_rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def disk_bytes(self):
        """Bytes allocated by the server's open files in its private directory."""
        total = 0
        fddir = f"/proc/{self.proc.pid}/fd"
        for fd in os.listdir(fddir):
            try:
                if os.readlink(os.path.join(fddir, fd)).startswith(self.dir):
                    total += os.stat(os.path.join(fddir, fd)).st_blocks * 512
            except OSError:
                pass
        return total

    def stop(self):
        terminate(self.proc)
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Nginx:
    """A throwaway nginx on a free 127.0.0.1 port serving `root`, its work directory and access
    log under `logs`, stopped by its pid. `tls=(cert, key)` serves HTTPS (HTTP/1.1: qemu's curl
    driver stalls over HTTP/2)."""

    def __init__(self, root, logs, tls=None):
        self.work = tempfile.mkdtemp(prefix="nginx-", dir=logs)
        os.makedirs(os.path.join(self.work, "tmp"))
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.scheme = "https" if tls else "http"
        w = self.work
        listen = f"listen 127.0.0.1:{self.port}"
        if tls:
            listen += f" ssl; ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}"
        conf = f"""daemon off; master_process off; worker_processes 1; pid {w}/nginx.pid;
error_log {w}/error.log warn; events {{ worker_connections 1024; }}
http {{ access_log {w}/access.log; client_body_temp_path {w}/tmp; proxy_temp_path {w}/tmp;
  fastcgi_temp_path {w}/tmp; uwsgi_temp_path {w}/tmp; scgi_temp_path {w}/tmp; sendfile on;
  keepalive_requests 1000000; default_type application/octet-stream;
  server {{ {listen}; root {root}; }} }}
"""
        with open(os.path.join(w, "nginx.conf"), "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(
            ["nginx", "-c", os.path.join(w, "nginx.conf"), "-p", w], stdin=subprocess.DEVNULL
        )
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError("nginx did not start")
                time.sleep(0.02)

    def url(self, name):
        return f"{self.scheme}://127.0.0.1:{self.port}/{name}"

    def lines(self):
        """The access log's lines so far."""
        try:
            with open(os.path.join(self.work, "access.log")) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def requests(self):
        return len(self.lines())

    @staticmethod
    def traffic(lines, name=None):
        """(requests, body bytes) for /name (every path if None) in combined-format access-log
        lines ($body_bytes_sent is the second field after the quoted request)."""
        n = b = 0
        for line in lines:
            parts = line.split('"')
            if len(parts) < 3 or (name is not None and f" /{name} " not in parts[1]):
                continue
            n += 1
            fields = parts[2].split()
            if len(fields) > 1 and fields[1].isdigit():
                b += int(fields[1])
        return n, b

    def stop(self):
        terminate(self.proc, 5)
