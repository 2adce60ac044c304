#!/usr/bin/env bash
# Prepares, once, the small Debian root filesystem that the boot tests (tests/tests/build_boot.rs)
# put on a disk and boot in qemu: bookworm minbase with the kernel, an initramfs that mounts an
# ext4 root on virtio-blk (root=PARTLABEL=root), and /sbin/disksynth-init, which the kernel runs
# as init=: it prints the marker line on the console and powers the machine off.
#
#   tests/scripts/prepare-rootfs.sh          (root: debootstrap, chroot; scripts/test.sh calls it)
#
# The tree is kept outside the checkout, in $DISKSYNTH_TEST_CACHE/$ROOTFS_NAME (default
# /var/cache/disksynth-tests/rootfs-bookworm-vN). It is built in a temporary directory beside it
# and renamed into place when complete, so an interrupted build never leaves a half tree; a tree
# that exists is complete and the script does nothing. Change ROOTFS_NAME whenever the recipe
# below changes: the next run builds the new tree and removes the old ones. tests/src/rootfs.rs
# reads ROOTFS_NAME from this file. DISKSYNTH_DEBIAN_MIRROR overrides the mirror (default: the one
# apt uses on this machine).
set -euo pipefail

readonly ROOTFS_NAME=rootfs-bookworm-v1
readonly SUITE=bookworm
readonly MARKER=DISKSYNTH-BOOT-OK

cache=${DISKSYNTH_TEST_CACHE:-/var/cache/disksynth-tests}
dest=$cache/$ROOTFS_NAME

if [[ -x "$dest/sbin/disksynth-init" ]]; then
  echo "rootfs: $dest is ready"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "error: building $dest needs root (debootstrap, chroot)" >&2
  exit 1
fi
for tool in debootstrap chroot flock; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is missing (scripts/test.sh installs it)" >&2
    exit 1
  fi
done

# The mirror apt uses here: the first URI of a deb822 stanza (or a one-line `deb` entry) for this
# machine's own release; Debian's redirector if there is none.
debian_mirror() {
  local codename file uri=""
  codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null | tr -d '"')
  for file in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$file" && -n "$codename" ]] || continue
    uri=$(awk -v suite="$codename" '
      function check(  u) {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && (" " suites " ") ~ ("[ \t]" suite "[ \t]") && uris != "") {
          split(uris, u, /[ \t]+/); print u[1]; found = 1; exit
        }
        types = ""; uris = ""; suites = ""
      }
      /^[ \t]*$/ { check(); next }
      /^Types:/  { sub(/^Types:[ \t]*/, "");  types = $0 }
      /^URIs:/   { sub(/^URIs:[ \t]*/, "");   uris = $0 }
      /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
      END { if (!found) check() }' "$file")
    [[ -n "$uri" ]] && break
  done
  if [[ -z "$uri" && -f /etc/apt/sources.list && -n "$codename" ]]; then
    uri=$(awk -v suite="$codename" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' /etc/apt/sources.list)
  fi
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

mkdir -p "$cache"
# One build at a time (two test runs starting together): the second waits, then finds it ready.
exec 9>"$cache/.lock"
flock 9
if [[ -x "$dest/sbin/disksynth-init" ]]; then
  echo "rootfs: $dest is ready"
  exit 0
fi

start=$SECONDS
mirror=${DISKSYNTH_DEBIAN_MIRROR:-$(debian_mirror)}
# Removes a tree, first unmounting whatever is mounted below it (debootstrap mounts /proc and /sys
# in its target; an interrupted build may leave them), and never crossing into another filesystem.
remove_tree() {
  local m
  awk -v t="$1/" 'index($2, t) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m" || true; done
  rm -rf --one-file-system "$1"
}
tmp=$(mktemp -d "$cache/.$ROOTFS_NAME.XXXXXX")
trap 'remove_tree "$tmp"; rm -f "$tmp.log"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "rootfs: building $dest from $mirror (debootstrap $SUITE, minbase + kernel)"
# Leftovers of older recipes and of interrupted builds (we hold the lock: nobody else is building).
for old in "$cache"/rootfs-* "$cache"/.rootfs-*; do
  if [[ -e "$old" && "$old" != "$dest" && "$old" != "$tmp" && "$old" != "$tmp.log" ]]; then
    echo "rootfs: removing $old"
    remove_tree "$old"
  fi
done

debootstrap --variant=minbase --include=linux-image-amd64,initramfs-tools \
  "$SUITE" "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
  echo "error: debootstrap failed; its log:" >&2
  tail -n 40 "$tmp.log" >&2
  exit 1
}
rm -f "$tmp.log"

# An initramfs with just what this root needs: virtio-blk and ext4 (metadata_csum wants crc32c).
# MODULES=list keeps it a few MiB (the default, most, is tens of MiB and slower to load under TCG).
cat >"$tmp/etc/initramfs-tools/conf.d/disksynth" <<'EOF'
MODULES=list
COMPRESS=gzip
EOF
echo RESUME=none >"$tmp/etc/initramfs-tools/conf.d/resume"
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >>"$tmp/etc/initramfs-tools/modules"
chroot "$tmp" update-initramfs -u -k all

# The guest's init: proves that the kernel mounted the ext4 root and could run a program from it.
cat >"$tmp/sbin/disksynth-init" <<EOF
#!/bin/sh
# Run by the kernel as init= in disksynth's boot tests: print the marker with the root device
# and its filesystem type, then power off.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
set -- \$(awk '\$2 == "/" { dev = \$1; type = \$3 } END { print dev, type }' /proc/mounts)
echo "$MARKER kernel=\$(uname -r) root=\$1 fstype=\$2"
echo o >/proc/sysrq-trigger
sleep 60
EOF
chmod 0755 "$tmp/sbin/disksynth-init"

# Small: no package caches, lists, documentation or translations; no modules once the initramfs
# holds the few it needs (the init above loads none).
rm -rf --one-file-system "$tmp"/var/cache/apt/* "$tmp"/var/lib/apt/lists/* \
  "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* "$tmp"/usr/share/info/* \
  "$tmp"/usr/share/locale/* "$tmp"/lib/modules/* "$tmp"/var/log/*
printf 'name=%s\nsuite=%s\nmirror=%s\n' "$ROOTFS_NAME" "$SUITE" "$mirror" \
  >"$tmp/etc/disksynth-rootfs"
chmod 0755 "$tmp"

for f in "$tmp"/boot/vmlinuz-* "$tmp"/boot/initrd.img-*; do
  [[ -f "$f" ]] || {
    echo "error: no kernel or initramfs in $tmp/boot" >&2
    exit 1
  }
done
mv -T "$tmp" "$dest"
trap - EXIT
echo "rootfs: $dest ready ($(du -sh --one-file-system "$dest" | cut -f1)) in $((SECONDS - start)) s"
