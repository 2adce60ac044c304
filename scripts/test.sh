#!/usr/bin/env bash
# The project's one test command: tools, format, lints, build, unit + end-to-end tests.
#
#   sudo scripts/test.sh        (or as root: scripts/test.sh)
#
# Installs the NBD clients the end-to-end tests drive (apt-get; needs root) when any is missing.
# Under CI=true a missing tool is a failure; locally the affected tests print SKIPPED.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# qemu comes from bookworm-backports on Debian 12: its 7.2 lacks NBD extended headers, and
# qemu-system-x86 must match qemu-utils (7.2's would downgrade a backported qemu-utils).
# qemu-block-extra holds qemu's curl (http/https) block driver, the remote boot test's peer; it
# must match qemu-system-x86 too.
QEMU_PACKAGES=(qemu-utils qemu-system-x86 qemu-block-extra)
PACKAGES=(qemu-utils qemu-system-x86 qemu-block-extra libnbd-bin python3-libnbd nbdkit fio dosfstools mtools e2fsprogs diffutils
  xorriso genisoimage p7zip-full gdisk fdisk isolinux syslinux-common ovmf grub-efi-amd64-bin xz-utils nginx openssl
  attr acl libcap2-bin mount debootstrap fuse3 util-linux chromium)
# tool -> package that provides it
declare -A PROVIDES=(
  [qemu-img]=qemu-utils [qemu-io]=qemu-utils [qemu-nbd]=qemu-utils
  [qemu-system-x86_64]=qemu-system-x86
  [nbdinfo]=libnbd-bin [nbdcopy]=libnbd-bin [nbdsh]=libnbd-bin
  [nbdkit]=nbdkit [fio]=fio
  [fsck.fat]=dosfstools [mkfs.fat]=dosfstools
  [mcopy]=mtools [mdir]=mtools [mdel]=mtools
  [e2fsck]=e2fsprogs [debugfs]=e2fsprogs [dumpe2fs]=e2fsprogs [mke2fs]=e2fsprogs
  [diff]=diffutils [cmp]=diffutils
  [xorriso]=xorriso [isoinfo]=genisoimage [7z]=p7zip-full
  [sgdisk]=gdisk [sfdisk]=fdisk [xz]=xz-utils [nginx]=nginx [openssl]=openssl
  [setfattr]=attr [getfattr]=attr [setfacl]=acl [getfacl]=acl [setcap]=libcap2-bin [getcap]=libcap2-bin
  [mount]=mount [umount]=mount [debootstrap]=debootstrap [fusermount3]=fuse3 [losetup]=mount [runuser]=util-linux [unshare]=util-linux
  [chromium]=chromium
)
# data files -> package that provides them
declare -A PROVIDES_FILE=(
  [/usr/lib/ISOLINUX/isohdpfx.bin]=isolinux [/usr/lib/ISOLINUX/isolinux.bin]=isolinux
  [/usr/lib/syslinux/modules/bios/ldlinux.c32]=syslinux-common
  [/usr/share/OVMF/OVMF_CODE_4M.fd]=ovmf
  [/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi]=grub-efi-amd64-bin
  [/usr/lib/x86_64-linux-gnu/qemu/block-curl.so]=qemu-block-extra
)

step() { printf '\n==> %s\n' "$*"; }

missing_packages() {
  local tool pkg file
  local -A need=()
  for tool in "${!PROVIDES[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || need[${PROVIDES[$tool]}]=1
  done
  for file in "${!PROVIDES_FILE[@]}"; do
    [[ -f "$file" ]] || need[${PROVIDES_FILE[$file]}]=1
  done
  # The libnbd Python bindings must be importable by Debian's interpreter (a pyenv python3 on
  # PATH usually lacks them; the tests call /usr/bin/python3 explicitly).
  /usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || need[python3-libnbd]=1
  # NBD extended headers need qemu 9 or later.
  local qemu_major
  qemu_major=$(qemu-img --version 2>/dev/null | sed -n '1s/^qemu-img version \([0-9]*\).*/\1/p')
  ((${qemu_major:-0} >= 9)) || need[qemu-utils]=1
  for pkg in "${PACKAGES[@]}"; do
    [[ -n "${need[$pkg]:-}" ]] && printf '%s\n' "$pkg"
  done
  return 0
}

# A machine whose /dev/null is a regular file (seen on restored sandboxes) breaks cargo: build
# scripts write their probes' errors into it and rustc later reads them back as source.
if [[ ! -c /dev/null ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    echo "warning: /dev/null is not a character device; recreating it" >&2
    rm -f /dev/null && mknod -m 666 /dev/null c 1 3
  else
    echo "error: /dev/null is not a character device (as root: rm /dev/null && mknod -m 666 /dev/null c 1 3)" >&2
    exit 1
  fi
fi

step "checking test tools"
mapfile -t missing < <(missing_packages)
if ((${#missing[@]})); then
  echo "missing packages: ${missing[*]}"
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    qemu_from=()
    if grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
      if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
          'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
          >/etc/apt/sources.list.d/disksynth-backports.sources
      fi
      qemu_from=(-t bookworm-backports)
    fi
    apt-get update
    others=()
    for pkg in "${missing[@]}"; do
      [[ " ${QEMU_PACKAGES[*]} " == *" $pkg "* ]] || others+=("$pkg")
    done
    if ((${#others[@]})); then
      apt-get install -y --no-install-recommends "${others[@]}"
    fi
    if ((${#others[@]} < ${#missing[@]})); then
      apt-get install -y --no-install-recommends "${qemu_from[@]}" "${QEMU_PACKAGES[@]}"
    fi
    mapfile -t missing < <(missing_packages)
  elif [[ $(id -u) -ne 0 ]]; then
    echo "not root: cannot install them; run 'sudo scripts/test.sh' or" \
      "'sudo apt-get install ${missing[*]}'" >&2
  else
    echo "apt-get not found: install ${missing[*]} by hand" >&2
  fi
fi
if ((${#missing[@]})); then
  if [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; then
    echo "error: CI=true and test tools are missing: ${missing[*]}" >&2
    exit 1
  fi
  echo "warning: still missing ${missing[*]}; the end-to-end tests that need them will be SKIPPED" >&2
else
  echo "all test tools present"
fi

# The Linux boot tests (tests/tests/build_boot.rs) boot a small Debian root filesystem, built once
# with debootstrap and kept in /var/cache/disksynth-tests (a few minutes the first time).
step "boot tests' root filesystem (tests/scripts/prepare-rootfs.sh)"
if ! tests/scripts/prepare-rootfs.sh; then
  if [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; then
    echo "error: CI=true and the boot tests' root filesystem could not be prepared" >&2
    exit 1
  fi
  echo "warning: no root filesystem for the boot tests; they will be SKIPPED" >&2
fi

# The s3:// tests (tests/tests/s3.rs) run moto, an S3-compatible server from PyPI, kept in a
# virtualenv outside the checkout (Debian's python3 -m venv) and rebuilt when it is missing or
# broken. The tests find it through DISKSYNTH_MOTO_VENV.
step "S3 test server: moto in a virtualenv"
export DISKSYNTH_MOTO_VENV="${DISKSYNTH_TEST_CACHE:-/var/cache/disksynth-tests}/venv-moto"
moto_ok() { "$DISKSYNTH_MOTO_VENV/bin/python" -c 'import moto.server, boto3' >/dev/null 2>&1; }
if moto_ok; then
  echo "moto present in $DISKSYNTH_MOTO_VENV"
else
  if ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]] \
    && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
      || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv; } || true
  fi
  rm -rf "$DISKSYNTH_MOTO_VENV"
  mkdir -p "$(dirname "$DISKSYNTH_MOTO_VENV")"
  if /usr/bin/python3 -m venv "$DISKSYNTH_MOTO_VENV" \
    && "$DISKSYNTH_MOTO_VENV/bin/python" -m pip install --quiet 'moto[server]>=5,<6' && moto_ok; then
    echo "moto installed in $DISKSYNTH_MOTO_VENV"
  elif [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; then
    echo "error: CI=true and moto could not be installed in $DISKSYNTH_MOTO_VENV" >&2
    exit 1
  else
    rm -rf "$DISKSYNTH_MOTO_VENV"
    echo "warning: moto could not be installed; the s3:// tests will be SKIPPED" >&2
  fi
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

step "cargo test --workspace"
# The e2e tests run target/debug/disksynth, built by the step above.
cargo test --workspace

# Every fuzz target for FUZZ_SECONDS (default 30) from the committed seeds: no panic, hang or
# runaway memory is reachable from a client, an origin or an input file (fuzz/README.md).
# FUZZ_SECONDS=0 skips this step.
step "fuzz/run.sh ${FUZZ_SECONDS:-30}"
if [[ "${FUZZ_SECONDS:-30}" == "0" ]]; then
  echo "FUZZ_SECONDS=0: skipped"
else
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing; installing it (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked || true
  fi
  if cargo fuzz --version >/dev/null 2>&1; then
    fuzz/run.sh "${FUZZ_SECONDS:-30}"
  elif [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; then
    echo "error: CI=true and cargo-fuzz could not be installed" >&2
    exit 1
  else
    echo "warning: cargo-fuzz could not be installed; the fuzz targets were SKIPPED" >&2
  fi
fi

step "all checks passed"
