#!/usr/bin/python3
"""Open disksynth's web view in headless Chromium (DevTools protocol over
--remote-debugging-pipe: no WebSocket module needed), wait until the page is
live, read LENGTH bytes at OFFSET of the NBD export with libnbd, then watch
the page's DOM until the element SELECTOR names TEXT, for at most TIMEOUT
seconds after the read.

usage: web_page.py CHROMIUM PAGE_URL NBD_URI --offset N --length N --text T
                   [--selector '#recent'] [--timeout 2] [--screenshot PNG]
                   [--keep-reading SECONDS] [--point-at TEXT]
Prints `live_after=S`, `read_bytes=N`, `found_after=S` (or `found_after=none`),
`element=TEXT` (the element's text, one line) and, with --screenshot,
`screenshot=PATH`.
"""

import argparse
import base64
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import nbd

ap = argparse.ArgumentParser()
ap.add_argument("chromium")
ap.add_argument("url")
ap.add_argument("uri")
ap.add_argument("--offset", type=int, required=True)
ap.add_argument("--length", type=int, required=True)
ap.add_argument("--text", required=True)
ap.add_argument("--selector", default="#recent")
ap.add_argument("--timeout", type=float, default=2.0)
ap.add_argument("--screenshot")
ap.add_argument("--keep-reading", type=float, default=0.0)
ap.add_argument("--point-at", help="before the screenshot, point at the cell naming this")
args = ap.parse_args()


class Browser:
    """Chromium with the DevTools protocol on fds 3 (commands in) and 4
    (replies out), messages separated by NUL bytes."""

    def __init__(self, exe):
        self.profile = tempfile.TemporaryDirectory(prefix="disksynth-chromium-")
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        # The child's ends above 10, out of the way of the dup2 to 3 and 4.
        hi_r = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10)
        hi_w = fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)

        def child():
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-pipe",
                "--window-size=1280,800",
                "--user-data-dir=" + self.profile.name,
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=child,
            pass_fds=(3, 4, hi_r, hi_w),
        )
        for fd in (to_r, from_w, hi_r, hi_w):
            os.close(fd)
        self.w = to_w
        self.r = from_r
        self.buf = b""
        self.next_id = 0
        self.session = None

    def call(self, method, params=None, timeout=20):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method}: no reply within {timeout} s")
            chunk = os.read(self.r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk

    def open(self, url):
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        self.session = self.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )["sessionId"]

    def eval(self, expr):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True})
        return r.get("result", {}).get("value")

    def close(self):
        try:
            self.session = None
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.profile.cleanup()


# A watchdog: whatever hangs, the browser is gone within a minute.
browser = Browser(args.chromium)
timer = threading.Timer(60, browser.proc.kill)
timer.daemon = True
timer.start()
try:
    browser.open(args.url)
    start = time.monotonic()
    live = None
    while time.monotonic() - start < 20:
        if browser.eval("document.getElementById('live').className") == "on":
            live = time.monotonic() - start
            break
        time.sleep(0.05)
    print(f"live_after={'none' if live is None else round(live, 2)}")
    if live is None:
        sys.exit(1)

    h = nbd.NBD()
    h.connect_uri(args.uri)
    data = h.pread(args.length, args.offset)
    read_at = time.monotonic()
    print(f"read_bytes={len(data)}")
    sel = json.dumps(args.selector)
    found = None
    text = ""
    while time.monotonic() - read_at <= args.timeout:
        text = browser.eval(f"document.querySelector({sel}).textContent") or ""
        if args.text in text:
            found = time.monotonic() - read_at
            break
        time.sleep(0.05)
    print(f"found_after={'none' if found is None else round(found, 2)}")
    print("element=" + " ".join(text.split()))

    if args.screenshot:
        # Keep a client reading files, as a booting guest does, so the
        # picture shows cells lit, files listed and the graphs moving.
        import random
        import urllib.request

        base = args.url.rstrip("/")
        with urllib.request.urlopen(base + "/api/map", timeout=10) as r:
            regions = [x for x in json.load(r)["regions"] if x["kind"] != "free"]
        rng = random.Random(18)
        until = time.monotonic() + args.keep_reading
        while time.monotonic() < until:
            x = rng.choice(regions)
            n = min(x["length"], 1 << 20)
            h.pread(n, x["offset"])
            time.sleep(0.01)
        if args.point_at:
            # Point at (and click) the cell holding a file, as a person would.
            at = browser.eval(f"JSON.stringify(window.cellPoint({json.dumps(args.point_at)}))")
            p = json.loads(at) if at else None
            if p:
                for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
                    browser.call("Input.dispatchMouseEvent", {
                        "type": kind, "x": p["x"], "y": p["y"], "button": "left", "clickCount": 1})
                time.sleep(0.5)
        shot = browser.call("Page.captureScreenshot", {"format": "png"})
        with open(args.screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        print(f"screenshot={args.screenshot}")
    h.shutdown()
finally:
    timer.cancel()
    browser.close()
