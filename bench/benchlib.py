"""Shared pieces of the Python benchmarks (bench/xz.py, bench/tmpdisk.py)."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import nbd


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)
