#!/usr/bin/python3
"""Boot a cloud-style disk over HTTPS without downloading it: disksynth vs qemu's https driver
vs nbdkit curl, side by side, one run.

Usage:  sudo bench/remote_boot.py     (root: the cached root tree is root's; Debian's python3)

The disk is the one the boot tests use (tests/tests/remote_boot.rs): `disksynth build` of a GPT
with an EFI system partition (GRUB, kernel, initramfs) and an ext4 root from the cached Debian
tree (`tests/scripts/prepare-rootfs.sh` makes it), written with `-o`. It is published three ways
on one nginx over HTTPS (a test CA; HTTP/1.1, since qemu 10's curl driver stalls over HTTP/2):
raw, compressed qcow2 (`qemu-img convert -c -O qcow2`) and block-indexed xz (`disksynth pack`,
default 4 MiB blocks). Each case boots qemu (OVMF, TCG, 512 MiB) until the guest's init prints
its marker with the root mounted from the disk, and records the time to the marker and the
origin's traffic for that boot (nginx's access log: requests and body bytes). Cases:

  ds-qcow2     disksynth qcow2 https://.../disk.qcow2 --cacert CA
  ds-xz        disksynth xz https://.../disk.img.xz --cacert CA
  ds-http      disksynth http https://.../disk.img --cacert CA      (raw)
  qemu-https   qemu's https block driver under its qcow2 driver (`-blockdev`, sslverify=off,
               timeout=60: its 5 s default fails reads on a loaded machine)
  nbdkit-curl  nbdkit curl https://.../disk.img cainfo=CA            (raw)
  ds-http-before  as ds-http with $DISKSYNTH_BEFORE, when set (a build before a change)
  local-raw    qemu reading disk.img from the local disk: the floor (guest CPU under TCG)

Cases alternate in a rotating order; each boot uses a fresh server. Medians of BENCH_REPS.

Environment knobs (defaults in brackets):
  DISKSYNTH_BIN      disksynth binary                     [<repo>/target/release/disksynth]
  DISKSYNTH_BEFORE   a second binary for the ds-http-before row   [unset: no such row]
  BENCH_REPS         boots per case (median shown)        [3]
  BENCH_ROOT_SIZE    size of the root partition, e.g. 725M  [unset: sized to the tree]
  BENCH_OUT          output directory                     [<repo>/bench/out]
Output: a table on stdout and in $BENCH_OUT/remote_boot.md, logs in $BENCH_OUT/remote_boot-logs/.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import Nginx, Server, log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS = os.environ.get("DISKSYNTH_BIN", os.path.join(ROOT, "target/release/disksynth"))
BEFORE = os.environ.get("DISKSYNTH_BEFORE")
REPS = int(os.environ.get("BENCH_REPS", "3"))
ROOT_SIZE = os.environ.get("BENCH_ROOT_SIZE")
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench/out"))
LOGS = os.path.join(OUT, "remote_boot-logs")
STEP_TIMEOUT = 900
BOOT_TIMEOUT = 120

# Kept in step with tests/src/rootfs.rs and tests/src/qemu_boot.rs.
MARKER = "DISKSYNTH-BOOT-OK"
ROOT_SEEN = "root=/dev/vda2 fstype=ext4"
KERNEL_CMDLINE = "root=PARTLABEL=root ro console=ttyS0 init=/sbin/disksynth-init panic=-1 quiet"
GRUB_EFI = "/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi"
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
BLOCK_CURL = "/usr/lib/x86_64-linux-gnu/qemu/block-curl.so"


def run(cmd, **kw):
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, timeout=STEP_TIMEOUT, **kw)


def rootfs_dir():
    cache = os.environ.get("DISKSYNTH_TEST_CACHE", "/var/cache/disksynth-tests")
    with open(os.path.join(ROOT, "tests/scripts/prepare-rootfs.sh")) as f:
        name = next(l.split("=", 1)[1].strip() for l in f if l.startswith("readonly ROOTFS_NAME="))
    d = os.path.join(cache, name)
    if not os.path.isfile(os.path.join(d, "sbin/disksynth-init")):
        sys.exit(f"{d} is missing: run tests/scripts/prepare-rootfs.sh as root")
    return d


def make_disk(work):
    """The boot disk (as tests/src/rootfs.rs makes it) and its qcow2 and xz forms in work/www."""
    tree = rootfs_dir()
    esp = os.path.join(work, "esp")
    os.makedirs(os.path.join(esp, "EFI/BOOT"))
    shutil.copy(GRUB_EFI, os.path.join(esp, "EFI/BOOT/BOOTX64.EFI"))
    boot = os.path.join(tree, "boot")
    for prefix, name in [("vmlinuz-", "vmlinuz"), ("initrd.img-", "initrd.img")]:
        (found,) = [f for f in os.listdir(boot) if f.startswith(prefix)]
        shutil.copy(os.path.join(boot, found), os.path.join(esp, name))
    with open(os.path.join(esp, "EFI/BOOT/grub.cfg"), "w") as f:
        f.write(f"set timeout=0\nlinux /vmlinuz {KERNEL_CMDLINE}\ninitrd /initrd.img\nboot\n")
    root_size = f'size = "{ROOT_SIZE}"\n' if ROOT_SIZE else ""
    spec = os.path.join(work, "disk.toml")
    with open(spec, "w") as f:
        f.write(
            f'[disk]\ntable = "gpt"\nseed = "boot-test"\n\n'
            f'[[partition]]\nlabel = "esp"\ntype = "esp"\nfs = "fat"\nsource = "{esp}"\n'
            f'size = "64M"\n\n'
            f'[[partition]]\nlabel = "root"\ntype = "root-x86-64"\nfs = "ext4"\n'
            f'source = "{tree}"\nowner = "root"\n{root_size}'
        )
    www = os.path.join(work, "www")
    os.makedirs(www)
    raw = os.path.join(www, "disk.img")
    run([DS, "build", spec, "-o", raw])
    run(["qemu-img", "convert", "-c", "-O", "qcow2", raw, os.path.join(www, "disk.qcow2")])
    run([DS, "pack", raw, os.path.join(www, "disk.img.xz")])
    return www


def make_tls(work):
    """A test CA and a certificate for 127.0.0.1 signed by it: (ca.pem, cert, key)."""
    p = lambda n: os.path.join(work, n)
    q = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         "/CN=disksynth bench CA", "-keyout", p("ca.key"), "-out", p("ca.pem")], **q)
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", p("server.key"), "-out", p("server.csr")], **q)
    with open(p("server.ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n"
                "extendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", p("server.csr"), "-CA", p("ca.pem"), "-CAkey",
         p("ca.key"), "-CAcreateserial", "-days", "2", "-extfile", p("server.ext"), "-out",
         p("server.pem")], **q)
    return p("ca.pem"), p("server.pem"), p("server.key")


def boot(disk_args, work):
    """Seconds from qemu's start to the marker line (the root mounted from the disk)."""
    vars_fd = os.path.join(work, "ovmf-vars.fd")
    shutil.copy(OVMF_VARS, vars_fd)
    console = os.path.join(work, "console.log")
    cmd = ["qemu-system-x86_64", "-display", "none", "-nodefaults", "-no-reboot", "-accel",
           "tcg", "-m", "512", "-machine", "q35",
           "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
           "-drive", f"if=pflash,format=raw,file={vars_fd}",
           "-serial", f"file:{console}"] + disk_args
    log("$ " + " ".join(cmd))
    t0 = time.perf_counter()
    q = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(work, "qemu.stderr"), "wb"))
    try:
        while True:
            text = ""
            if os.path.exists(console):
                with open(console, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            if MARKER in text and ROOT_SEEN in text:
                return time.perf_counter() - t0
            if q.poll() is not None or time.perf_counter() - t0 > BOOT_TIMEOUT:
                raise RuntimeError(f"no marker booting {disk_args}; console tail: {text[-800:]!r}")
            time.sleep(0.05)
    finally:
        q.kill()
        q.wait()


def nbd_disk(uri):
    """A raw virtio disk from an NBD URI or a local file."""
    return ["-drive", f"if=virtio,format=raw,snapshot=on,file={uri}"]


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: the cached root tree is readable by root only")
    for tool in ["nbdkit", "nginx", "openssl", "qemu-img", "qemu-system-x86_64"]:
        if shutil.which(tool) is None:
            sys.exit(f"missing tool: {tool}")
    for f in [BLOCK_CURL, OVMF_CODE, GRUB_EFI]:
        if not os.path.exists(f):
            sys.exit(f"missing {f}")
    if not os.access(DS, os.X_OK):
        run(["cargo", "build", "--release", "-p", "disksynth"], cwd=ROOT)
    os.makedirs(LOGS, exist_ok=True)
    work = tempfile.mkdtemp(prefix="remote-boot-", dir=LOGS)
    www = make_disk(work)
    ca, cert, key = make_tls(work)
    sizes = {n: os.path.getsize(os.path.join(www, n)) for n in os.listdir(www)}
    web = Nginx(www, LOGS, tls=(cert, key))
    cases = {
        "ds-qcow2": ("disk.qcow2", [DS, "qcow2", web.url("disk.qcow2"), "--cacert", ca,
                                    "-U", "@SOCK@"]),
        "ds-xz": ("disk.img.xz", [DS, "xz", web.url("disk.img.xz"), "--cacert", ca,
                                  "-U", "@SOCK@"]),
        "ds-http": ("disk.img", [DS, "http", web.url("disk.img"), "--cacert", ca,
                                 "-U", "@SOCK@"]),
        "qemu-https": ("disk.qcow2", None),
        "local-raw": ("disk.img", None),
        "nbdkit-curl": ("disk.img", ["nbdkit", "-f", "-r", "-U", "@SOCK@", "curl",
                                     web.url("disk.img"), f"cainfo={ca}"]),
    }
    if BEFORE:
        cases["ds-http-before"] = ("disk.img", [BEFORE, "http", web.url("disk.img"),
                                                "--cacert", ca, "-U", "@SOCK@"])
    qemu_https = [
        "-blockdev", f"driver=https,node-name=origin,read-only=on,sslverify=off,timeout=60,"
                     f"url={web.url('disk.qcow2')}",
        "-blockdev", "driver=qcow2,node-name=disk,file=origin,read-only=on",
        "-device", "virtio-blk-pci,drive=disk",
    ]
    results = {name: [] for name in cases}
    names = list(cases)
    try:
        for rep in range(REPS):
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                file, cmd = cases[name]
                d = tempfile.mkdtemp(prefix=f"{name}-", dir=work)
                before = len(web.lines())
                if name == "local-raw":
                    secs = boot(nbd_disk(os.path.join(www, "disk.img")), d)
                elif cmd is None:
                    # qemu's curl driver sometimes stalls during OVMF's first reads (a loaded
                    # machine): one retry, counted from the retry's start.
                    try:
                        secs = boot(qemu_https, d)
                    except RuntimeError as e:
                        log(f"{name}: {e}; retrying once")
                        before = len(web.lines())
                        secs = boot(qemu_https, tempfile.mkdtemp(prefix=f"{name}-", dir=work))
                else:
                    s = Server(name, cmd, LOGS)
                    try:
                        secs = boot(nbd_disk(s.uri), d)
                    finally:
                        s.stop()
                reqs, nbytes = Nginx.traffic(web.lines()[before:], file)
                log(f"{name}: {secs:.1f} s, {reqs} requests, {nbytes / 2**20:.1f} MiB")
                results[name].append((secs, reqs, nbytes))
    finally:
        web.stop()

    med = {
        n: tuple(statistics.median(r[i] for r in rs) for i in range(3))
        for n, rs in results.items()
    }
    q, nk = med["qemu-https"], med["nbdkit-curl"]
    lines = [
        "| case | file read | time to marker (s) | requests | fetched (MiB) | fetched / file |"
        " time vs qemu https | bytes vs qemu https | bytes vs nbdkit curl |"
        " requests vs nbdkit curl |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, (secs, reqs, nbytes) in med.items():
        file = cases[n][0]
        lines.append(
            f"| {n} | {file} ({sizes[file] / 2**20:.1f} MiB) | {secs:.1f} | {reqs:.0f} | "
            f"{nbytes / 2**20:.1f} | {nbytes / sizes[file]:.2f} | {secs / q[0]:.2f}× | "
            f"{nbytes / q[2]:.2f}× | {nbytes / nk[2]:.2f}× | {reqs / nk[1]:.2f}× |"
        )
    head = (
        f"Disk: `disksynth build` GPT, 64 MiB ESP (GRUB, kernel, initramfs) + ext4 root from the "
        f"cached Debian tree{f' in a {ROOT_SIZE} partition' if ROOT_SIZE else ''}: raw "
        f"{sizes['disk.img'] / 2**20:.0f} MiB, compressed qcow2 {sizes['disk.qcow2'] / 2**20:.1f}"
        f" MiB, block-indexed xz (4 MiB blocks, preset 6) {sizes['disk.img.xz'] / 2**20:.1f} MiB."
        f" One nginx on 127.0.0.1 over HTTPS (HTTP/1.1, test CA). qemu TCG + OVMF, 512 MiB; time"
        f" from qemu's start to the guest init's marker line. Bytes and requests from nginx's "
        f"access log for that boot. Median of {REPS} boots per case, order rotating."
    )
    text = "\n".join([head, ""] + lines) + "\n"
    print(text)
    with open(os.path.join(OUT, "remote_boot.md"), "w") as f:
        f.write(text)
    with open(os.path.join(OUT, "remote_boot.raw.tsv"), "w") as f:
        for n, rs in results.items():
            for secs, reqs, nbytes in rs:
                f.write(f"{n}\t{secs:.2f}\t{reqs}\t{nbytes}\n")


if __name__ == "__main__":
    main()
