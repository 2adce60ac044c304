#!/usr/bin/env bash
# disksynth build (a GPT disk: FAT ESP + ext4 root) vs genimage, systemd-repart and fstool,
# side by side, one run.
#
# Usage:  bench/build.sh
#         BENCH_ROOT_MIB=40 BENCH_REPS=3 BENCH_OUT_REPS=3 BENCH_TREES=/tmp/bb bench/build.sh   # smoke run
#         BENCH_SELF_TEST=1 bench/build.sh   # plumbing check: genimage stands in for disksynth
#
# Environment knobs (defaults in brackets):
#   DISKSYNTH_BIN       disksynth binary                                  [<repo>/target/release/disksynth]
#   BENCH_REPS          repetitions of the "served" row; table shows MEDIAN (>= 3)           [5]
#   BENCH_OUT_REPS      repetitions of the build -o rows (>= 3; reps 1 and 2 are also the
#                       rebuild comparison)                                                  [5]
#   BENCH_TREES         where the ESP and root trees are generated and kept between runs
#                       (regenerated when the parameters change)     [/var/tmp/build-bench-trees]
#   BENCH_ROOT_MIB      size of the root tree, MiB of random data in 2000 files              [1024]
#   BENCH_FSTOOL        fstool binary (cargo install fstool --root /var/tmp/fstool)
#                                                                    [/var/tmp/fstool/bin/fstool]
#   BENCH_REPART        systemd-repart binary                                     [systemd-repart]
#   BENCH_SELF_TEST     1 = genimage (build) and genimage + nbdkit file (served) in place of
#                       disksynth: ratios show the noise floor                              [0]
#   BENCH_IDLE_WAIT     max seconds to wait at start for other processes to go quiet         [300]
#   BENCH_BG_LIMIT      % of one core other processes may use before a row is flagged       [15]
#   BENCH_STEP_TIMEOUT  seconds allowed for any single step (a build, a server start)        [600]
#   BENCH_BUILD_TIMEOUT seconds allowed for `cargo build --release -p disksynth`            [1800]
#   BENCH_OUT           output directory                                                    [<repo>/bench/out]
#
# Output: a table on stdout and as markdown in $BENCH_OUT/build.md, raw samples in
# $BENCH_OUT/build.raw.tsv, tool logs and configs in $BENCH_OUT/build-logs/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DISKSYNTH_BIN=${DISKSYNTH_BIN:-$ROOT/target/release/disksynth}
REPS=${BENCH_REPS:-5}
OUT_REPS=${BENCH_OUT_REPS:-5}
TREES=${BENCH_TREES:-/var/tmp/build-bench-trees}
A_MIB=${BENCH_ROOT_MIB:-1024}
B_FILES=0 # gen_tree's tree (b) is not used here
FSTOOL=${BENCH_FSTOOL:-/var/tmp/fstool/bin/fstool}
REPART=${BENCH_REPART:-systemd-repart}
SELF_TEST=${BENCH_SELF_TEST:-0}
DROP_CACHES=0
IDLE_WAIT=${BENCH_IDLE_WAIT:-300}
BG_LIMIT=${BENCH_BG_LIMIT:-15}
STEP_TIMEOUT=${BENCH_STEP_TIMEOUT:-600}
BUILD_TIMEOUT=${BENCH_BUILD_TIMEOUT:-1800}
OUT=${BENCH_OUT:-$ROOT/bench/out}
LOGS=$OUT/build-logs
PY=/usr/bin/python3 # Debian's interpreter has the libnbd bindings (python3-libnbd)

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
CMDLINE="$({ env | grep -E '^(BENCH_[A-Z_]+|DISKSYNTH_BIN)=' || true; } | sort | tr '\n' ' ')bench/build.sh"
trap 'log "FATAL: line $LINENO: \`$BASH_COMMAND\` failed"' ERR

# ---------------------------------------------------------------- prerequisites
# e2fsprogs and dosfstools live in /usr/sbin, which a normal user's PATH may lack.
PATH=$PATH:/usr/sbin:/sbin
for tool in genimage mkdosfs mcopy mke2fs e2fsck debugfs fsck.fat sfdisk nbdkit nbdcopy nbdinfo cmp du timeout awk; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (Debian: apt-get install -y genimage dosfstools mtools e2fsprogs fdisk nbdkit libnbd-bin)"
done
[ -x "$PY" ] && "$PY" -c 'import nbd' 2>/dev/null || die "need $PY with the nbd module (python3-libnbd)"
nbdkit file --version >/dev/null 2>&1 || die "nbdkit has no file plugin"
[ "$REPS" -ge 3 ] || die "BENCH_REPS must be at least 3 (medians)"
[ "$OUT_REPS" -ge 3 ] || die "BENCH_OUT_REPS must be at least 3 (medians; reps 1 and 2 are the rebuild pair)"
open_outputs build

if [ "$SELF_TEST" = 1 ]; then
    log "BENCH_SELF_TEST=1: the 'disksynth' column is a second genimage (and genimage + nbdkit file when served)"
else
    ensure_disksynth_bin "^$ROOT/tests/"
    "$DISKSYNTH_BIN" build --help >/dev/null 2>&1 || die "$DISKSYNTH_BIN has no build subcommand"
fi

# ---------------------------------------------------------------- machine line
deb_ver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo unknown; }
GENIMAGE_VER="genimage $(genimage --version 2>/dev/null | head -n1) (Debian $(deb_ver genimage))"
REPART_VER="systemd-repart $({ "$REPART" --version 2>/dev/null || true; } | awk 'NR==1 {print $2, $3}')"
FSTOOL_VER="fstool $({ "$FSTOOL" --version 2>/dev/null || true; } | awk 'NR==1 {print $NF}')"
[ "$FSTOOL_VER" != "fstool " ] || FSTOOL_VER="fstool (not installed)"
TOOLS_VER="$GENIMAGE_VER, $REPART_VER, $FSTOOL_VER, e2fsprogs $(deb_ver e2fsprogs), dosfstools $(deb_ver dosfstools), mtools $(deb_ver mtools), fdisk $(deb_ver fdisk)"
if [ "$SELF_TEST" = 1 ]; then
    MACHINE="$(host_line); $(nbd_versions); $TOOLS_VER; disksynth: SELF-TEST (genimage)"
else
    MACHINE="$(host_line); $(nbd_versions); $TOOLS_VER; disksynth $(ds_version)"
fi
log "machine: $MACHINE"

# ---------------------------------------------------------------- temp dir + cleanup
if [ "$SELF_TEST" = 1 ]; then
    TMP=$(mktemp -d "${TMPDIR:-/var/tmp}/disksynth-build-bench.XXXXXX")
    install_cleanup
    DS=/bin/false
else
    TMPDIR=${TMPDIR:-/var/tmp} pin_binary build
fi
# genimage, nbdkit and mke2fs write their temp files under $TMPDIR: keep them in our temp dir.
export TMPDIR=$TMP
mkdir -p "$TMP/empty"

# Another benchmark would skew every number.
IDLE_BLOCKERS='bench/(run|floppy|ext4|iso)\.sh'
IDLE_GIVEUP_FMT='machine still busy after %ss (other processes: %s); measuring anyway'

# ---------------------------------------------------------------- the trees
# ESP: a ~5 MiB fake EFI binary and two systemd-boot style configs, fixed times. Root: 2000
# files of random data (log-uniform sizes, BENCH_ROOT_MIB in all) in 7 subdirectories, with
# bench/floppy.sh's generator (gen_tree in bench/lib.sh). Generated once and kept in BENCH_TREES.
gen_esp() { # gen_esp DIR
    "$PY" - "$1" <<'EOF'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(7)
def put(rel, data):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (1764547200, 1764547200))  # 2025-12-01T00:00:00Z
efi = bytearray(rnd.randbytes(5 * 1024 * 1024 + 12345))
efi[0:2] = b"MZ"
put("EFI/BOOT/BOOTX64.EFI", bytes(efi))
put("loader/loader.conf", b"default bench.conf\ntimeout 3\nconsole-mode keep\n")
put("loader/entries/bench.conf", b"title   Bench Linux\nlinux   /vmlinuz\ninitrd  /initrd.img\noptions root=PARTLABEL=root rw quiet\n")
EOF
}
mkdir -p "$TREES"
TREE_ROOT=$(cd "$TREES" && pwd)
for t in esp rootfs; do
    dir=$TREE_ROOT/$t
    if [ "$t" = esp ]; then stamp="esp v1"; else stamp="a=$A_MIB v1"; fi
    if [ -f "$TREE_ROOT/$t.ok" ] && [ "$(cat "$TREE_ROOT/$t.ok")" = "$stamp" ]; then
        log "reusing tree $dir"
    else
        rm -rf "$dir" "$TREE_ROOT/$t.ok"
        log "generating tree $dir"
        if [ "$t" = esp ]; then gen_esp "$dir"; else gen_tree a "$dir"; fi || die "generating $dir failed"
        echo "$stamp" >"$TREE_ROOT/$t.ok"
    fi
done
ESP_DIR=$TREE_ROOT/esp
ROOT_DIR=$TREE_ROOT/rootfs
TREE[esp]=$ESP_DIR
TREE[root]=$ROOT_DIR
describe_tree esp 1 "$ESP_DIR: "
describe_tree root 1 "$ROOT_DIR: "
ROOT_ENTRIES=$(find "$ROOT_DIR" | wc -l) # files + directories + the root itself

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
wait_for_idle

# ---------------------------------------------------------------- the disk, for every tool
GUID_ESP=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
GUID_ROOT=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709 # root-x86-64 (Discoverable Partitions)
ESP_SIZE=$((64 << 20))

write_spec() { # write_spec FILE: disksynth's spec (the issue's example)
    cat >"$1" <<EOF
[disk]
table = "gpt"
seed = "bench"

[[partition]]
label = "esp"
type = "esp"
fs = "fat"
source = "$ESP_DIR"
size = "64M"

[[partition]]
label = "root"
type = "root-x86-64"
fs = "ext4"
source = "$ROOT_DIR"
owner = "root"
EOF
}

# layout IMG -> "disk-bytes esp-start esp-bytes root-start root-bytes" from its GPT (sfdisk -J);
# fails unless it is a GPT with an ESP and a root-x86-64 partition, in that order.
layout() {
    sfdisk -J "$1" 2>/dev/null | "$PY" -c '
import json, os, sys
t = json.load(sys.stdin)["partitiontable"]
p = t["partitions"]
ss = t.get("sectorsize", 512)
want = [sys.argv[2], sys.argv[3]]
if t["label"] != "gpt" or len(p) != 2 or [x["type"].upper() for x in p] != want:
    sys.exit("not a GPT with ESP + root-x86-64: %s" % json.dumps(t))
print(os.path.getsize(sys.argv[1]), p[0]["start"] * ss, p[0]["size"] * ss, p[1]["start"] * ss, p[1]["size"] * ss)
' "$1" "$GUID_ESP" "$GUID_ROOT"
}

# The sizes every peer is given: disksynth's (from a probe build, untimed): the ESP is 64 MiB by the
# spec, the root partition is disksynth's automatic size, the disk is as large as disksynth's.
SPEC=$TMP/spec.toml
write_spec "$SPEC"
cp "$SPEC" "$LOGS/spec.toml"
if [ "$SELF_TEST" = 1 ]; then
    # Self-test: no disksynth; the root gets the tree plus 12% and 64 MiB (journal), in MiB.
    ROOT_SIZE=$(((TREE_BYTES[root] * 112 / 100 + (64 << 20) + (1 << 20) - 1) >> 20 << 20))
    ESP_START=$((1 << 20))
    ROOT_START=$((ESP_START + ESP_SIZE))
    DISK_SIZE=$((ROOT_START + ROOT_SIZE + (1 << 20)))
else
    probe=$TMP/probe.img
    log "probe: $DS build $SPEC -o $probe"
    timeout "$STEP_TIMEOUT" "$DS" build "$SPEC" -o "$probe" >>"$LOGS/probe.log" 2>&1 ||
        die "disksynth build $SPEC -o IMG failed: $(tail -c 400 "$LOGS/probe.log" | tr '\n' ' ')"
    read -r DISK_SIZE ESP_START esp_bytes ROOT_START ROOT_SIZE < <(layout "$probe") ||
        die "disksynth's image has not the expected GPT (sfdisk -J $probe)"
    [ "$esp_bytes" = "$ESP_SIZE" ] || problem "disksynth's ESP is $esp_bytes bytes, the spec says 64M"
fi
LAYOUT_NOTE="disk $((DISK_SIZE >> 20)) MiB ($DISK_SIZE B): ESP at $((ESP_START >> 10)) KiB, $((ESP_SIZE >> 20)) MiB; root at $((ROOT_START >> 10)) KiB, $ROOT_SIZE B ($((ROOT_SIZE >> 20)) MiB)"
log "layout for every tool: $LAYOUT_NOTE"

# Per-tool configuration, written into the build's own directory DIR.
write_genimage_cfg() { # write_genimage_cfg FILE
    cat >"$1" <<EOF
image esp.vfat {
	temporary = true
	size = $ESP_SIZE
	srcpath = "$ESP_DIR"
	vfat {
		label = "ESP"
	}
}

image root.ext4 {
	temporary = true
	size = $ROOT_SIZE
	srcpath = "$ROOT_DIR"
	ext4 {
		use-mke2fs = true
		label = "root"
		extraargs = "-b 4096"
	}
}

image disk.img {
	size = $DISK_SIZE
	hdimage {
		partition-table-type = "gpt"
	}
	partition esp {
		image = "esp.vfat"
		offset = $ESP_START
		size = $ESP_SIZE
		partition-type-uuid = "U"
	}
	partition root {
		image = "root.ext4"
		offset = $ROOT_START
		size = $ROOT_SIZE
		partition-type-uuid = "$GUID_ROOT"
	}
}
EOF
}
write_repart_defs() { # write_repart_defs DIR ESP-SOURCE ROOT-SOURCE ROOT-BYTES
    mkdir -p "$1"
    cat >"$1/10-esp.conf" <<EOF
[Partition]
Type=esp
Label=esp
Format=vfat
CopyFiles=$2:/
SizeMinBytes=$ESP_SIZE
SizeMaxBytes=$ESP_SIZE
EOF
    cat >"$1/20-root.conf" <<EOF
[Partition]
Type=root-x86-64
Label=root
Format=ext4
CopyFiles=$3:/
SizeMinBytes=$4
SizeMaxBytes=$4
EOF
}
write_fstool_toml() { # write_fstool_toml FILE ESP-SOURCE ROOT-SOURCE DISK-BYTES ROOT-BYTES
    cat >"$1" <<EOF
[image]
size = "$4"
partition_table = "gpt"

[[partitions]]
name = "esp"
type = "esp"
size = "$ESP_SIZE"

[partitions.filesystem]
type = "fat32"
source = "$2"
volume_label = "ESP"

[[partitions]]
name = "root"
type = "$GUID_ROOT"
size = "$5"

[partitions.filesystem]
type = "ext4"
source = "$3"
block_size = 4096
volume_label = "root"
EOF
}

# prepare TOOL DIR: the tool's config in DIR (a fresh directory per build); its image is DIR/out/disk.img.
prepare() {
    mkdir -p "$2/out"
    case $1 in
    ds) write_spec "$2/spec.toml" ;;
    genimage) mkdir -p "$2/in" && write_genimage_cfg "$2/genimage.cfg" ;;
    repart) write_repart_defs "$2/defs" "$ESP_DIR" "$ROOT_DIR" "$ROOT_SIZE" ;;
    fstool) write_fstool_toml "$2/disk.toml" "$ESP_DIR" "$ROOT_DIR" "$DISK_SIZE" "$ROOT_SIZE" ;;
    esac
}
genimage_cmd() { # genimage_cmd DIR -> the command line, one word per line
    printf '%s\n' genimage --config "$1/genimage.cfg" --rootpath "$TMP/empty" --inputpath "$1/in" \
        --tmppath "$1/tmp" --outputpath "$1/out"
}
# build_cmd TOOL DIR -> the command line, one word per line (the image is DIR/out/disk.img)
build_cmd() {
    case $1 in
    ds) if [ "$SELF_TEST" = 1 ]; then genimage_cmd "$2"; else printf '%s\n' "$DS" build "$2/spec.toml" -o "$2/out/disk.img"; fi ;;
    genimage) genimage_cmd "$2" ;;
    repart) printf '%s\n' "$REPART" --empty=create --size="$DISK_SIZE" --dry-run=no --pretty=no \
        --definitions="$2/defs" "$2/out/disk.img" ;;
    fstool) printf '%s\n' "$FSTOOL" build "$2/disk.toml" -o "$2/out/disk.img" ;;
    esac
}
# run_build TOOL DIR LOG: the build (with its config prepared; ds in self-test = genimage), then
# sync -f of the image, under timeout. /proc/PID/io of a wrapper shell that ran it (the tool and
# the children it reaped) goes to DIR/io.
run_build() {
    local -a cmd
    [ "$1" != ds ] || [ "$SELF_TEST" != 1 ] || mkdir -p "$2/in"
    [ "$1" != ds ] || [ "$SELF_TEST" != 1 ] || write_genimage_cfg "$2/genimage.cfg"
    mapfile -t cmd < <(build_cmd "$1" "$2")
    echo "+ ${cmd[*]}" >>"$3"
    bash -c 'f=$1 img=$2 t=$3; shift 3; timeout "$t" "$@" && sync -f "$img"; rc=$?; cat /proc/$$/io >"$f"; exit $rc' \
        iowrap "$2/io" "$2/out/disk.img" "$STEP_TIMEOUT" "${cmd[@]}" >>"$3" 2>&1
}

# ---------------------------------------------------------------- which peers can run here
# A tiny build of the same shape (the real ESP, a one-file root) shows whether a peer works in this
# environment; if not, its row is skipped with the reason.
declare -A SKIP=()
mkdir -p "$TMP/tinyroot/etc"
echo bench >"$TMP/tinyroot/etc/hostname"
probe_peer() { # probe_peer NAME CMD...: run, record the reason in SKIP[NAME] on failure
    local name=$1 log=$LOGS/probe-$1.log
    shift
    if ! timeout 120 "$@" >"$log" 2>&1; then
        SKIP[$name]="$(grep -v '^\s*$' "$log" | tail -n 2 | tr '\n' ' ' | cut -c1-300) (probe: $*; log $log)"
        return 1
    fi
}
if ! command -v "$REPART" >/dev/null; then
    SKIP[repart]="$REPART not found"
else
    d=$TMP/probe-repart
    write_repart_defs "$d/defs" "$ESP_DIR" "$TMP/tinyroot" $((16 << 20))
    if probe_peer repart "$REPART" --empty=create --size=$((96 << 20)) --dry-run=no --pretty=no --definitions="$d/defs" "$d/disk.img"; then
        layout "$d/disk.img" >/dev/null || SKIP[repart]="probe image has no GPT with ESP + root (see $LOGS/probe-repart.log)"
    fi
    if [ -n "${SKIP[repart]:-}" ] && grep -q 'type vfat.*No such device' "$LOGS/probe-repart.log" 2>/dev/null; then
        SKIP[repart]="$REPART_VER fills CopyFiles= by mounting the new file system through a loop device, and this kernel has no vfat (/proc/filesystems: $(grep -c . /proc/filesystems) types, no vfat): the ESP cannot be populated. ext4 alone works. Error: $(grep -m1 'Failed to mount' "$LOGS/probe-repart.log" | cut -c1-160)"
    fi
    rm -rf "$d"
fi
if [ ! -x "$FSTOOL" ]; then
    SKIP[fstool]="$FSTOOL not found (cargo install fstool --root /var/tmp/fstool)"
else
    d=$TMP/probe-fstool
    mkdir -p "$d"
    write_fstool_toml "$d/disk.toml" "$ESP_DIR" "$TMP/tinyroot" $((96 << 20)) $((16 << 20))
    if probe_peer fstool "$FSTOOL" build "$d/disk.toml" -o "$d/disk.img"; then
        layout "$d/disk.img" >/dev/null || SKIP[fstool]="probe image has no GPT with ESP + root (see $LOGS/probe-fstool.log)"
    fi
    rm -rf "$d"
fi
for p in repart fstool; do
    [ -z "${SKIP[$p]:-}" ] || problem "$p row skipped: ${SKIP[$p]}"
done
rm -rf "$TMP/tinyroot"

TOOLS=(ds genimage)
[ -n "${SKIP[repart]:-}" ] || TOOLS+=(repart)
[ -n "${SKIP[fstool]:-}" ] || TOOLS+=(fstool)
declare -A TOOLNAME=([ds]=disksynth [genimage]="$GENIMAGE_VER" [repart]="$REPART_VER" [fstool]="$FSTOOL_VER")
[ "$SELF_TEST" != 1 ] || TOOLNAME[ds]="genimage (self-test)"
log "tools: ${TOOLS[*]}"

# ---------------------------------------------------------------- content checks (untimed)
# check_image TOOL IMG: the GPT (ESP + root-x86-64), the ESP's FAT (fsck.fat -n, BOOTX64.EFI
# byte-identical through mtools), the root's ext4 (e2fsck -fn, as many inodes in use as the tree
# has entries, two files byte-identical through debugfs).
ESP_MD5=$(md5sum <"$ESP_DIR/EFI/BOOT/BOOTX64.EFI" | cut -c1-32)
mapfile -t CHECK_FILES < <(cd "$ROOT_DIR" && find . -type f | sort | sed -n '1p;$p' | cut -c3-)
declare -A CHECKED=()
check_image() {
    local tool=$1 img=$2 lg=$LOGS/check-$1.log part=$TMP/check-part.img es eb rs rb md5 used f ok=1
    : >"$lg"
    if ! read -r _ es eb rs rb < <(layout "$img" 2>>"$lg"); then
        problem "${TOOLNAME[$tool]}: image is not a GPT with an ESP and a root-x86-64 partition (see $lg)"
        CHECKED[$tool]="no GPT"
        return 0
    fi
    md5=$(timeout "$STEP_TIMEOUT" mcopy -n -i "$img@@$es" ::/EFI/BOOT/BOOTX64.EFI - 2>>"$lg" | md5sum | cut -c1-32 || true)
    [ "$md5" = "$ESP_MD5" ] || { ok=0; problem "${TOOLNAME[$tool]}: ESP's /EFI/BOOT/BOOTX64.EFI differs from the host file (mcopy; see $lg)"; }
    rm -f "$part"
    dd if="$img" of="$part" bs=1M iflag=skip_bytes,count_bytes skip="$es" count="$eb" conv=sparse status=none
    timeout "$STEP_TIMEOUT" fsck.fat -n "$part" >>"$lg" 2>&1 || { ok=0; problem "${TOOLNAME[$tool]}: fsck.fat -n of the ESP is not clean (see $lg)"; }
    rm -f "$part"
    dd if="$img" of="$part" bs=4M iflag=skip_bytes,count_bytes skip="$rs" count="$rb" conv=sparse status=none
    if ! timeout "$STEP_TIMEOUT" e2fsck -fn "$part" >>"$lg" 2>&1; then
        ok=0
        problem "${TOOLNAME[$tool]}: e2fsck -fn of the root is not clean (see $lg)"
    fi
    # e2fsck's summary: "root: 2021/65536 files (0.0% non-contiguous), ..."; lost+found is one more.
    used=$(grep -oE '[0-9]+/[0-9]+ files' "$lg" | head -n1 | cut -d/ -f1 || true)
    [ -n "$used" ] && [ "$used" -ge "$ROOT_ENTRIES" ] ||
        { ok=0; problem "${TOOLNAME[$tool]}: the root has ${used:-?} inodes in use, the tree has $ROOT_ENTRIES entries (see $lg)"; }
    for f in "${CHECK_FILES[@]}"; do
        [ "$(timeout "$STEP_TIMEOUT" debugfs -R "cat \"/$f\"" "$part" 2>>"$lg" | md5sum | cut -c1-32)" = "$(md5sum <"$ROOT_DIR/$f" | cut -c1-32)" ] ||
            { ok=0; problem "${TOOLNAME[$tool]}: /$f in the root differs from the host file (debugfs cat)"; }
    done
    rm -f "$part"
    CHECKED[$tool]=$([ "$ok" = 1 ] && echo "ok" || echo "FAILED")
}

# ---------------------------------------------------------------- build -o: wall time, bytes, rebuild
declare -A WALL=() ALLOC=() WBYTES=() WCHAR=() REBUILD=() BUILD_ROW=()
for tool in "${TOOLS[@]}"; do
    [ "$tool" != ds ] || continue
    BUILD_ROW[$tool]="build -o: wall time vs ${TOOLNAME[$tool]%% (*}"
    case $tool in
    genimage) add_row "${BUILD_ROW[$tool]}" s lower 0.5 "${TOOLNAME[$tool]%% (*}" ;;
    *) add_row "${BUILD_ROW[$tool]}" s lower 1.0 "${TOOLNAME[$tool]%% (*}" ;;
    esac
done
io_field() { awk -v k="$2:" '$1 == k {print $2}' "$1" 2>/dev/null; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }

section_begin
n_tools=${#TOOLS[@]}
for rep in $(seq "$OUT_REPS"); do
    [ "$rep" = 1 ] || sleep 1 # rebuilds are at least 1 s apart
    order=()
    for i in $(seq 0 $((n_tools - 1))); do order+=("${TOOLS[$(((i + rep - 1) % n_tools))]}"); done
    for tool in "${order[@]}"; do
        d=$TMP/b$rep-$tool # reps 1 and 2 are the rebuild pair: different directories
        rm -rf "$d"
        prepare "$tool" "$d"
        sync
        t0=$(now_ns)
        run_build "$tool" "$d" "$LOGS/build-$tool.log" && rc=0 || rc=$?
        t1=$(now_ns)
        if [ "$rc" != 0 ]; then
            problem "${TOOLNAME[$tool]} build rep $rep failed (status $rc): $(build_cmd "$tool" "$d" | tr '\n' ' ')-- see $LOGS/build-$tool.log"
            rm -rf "$d"
            continue
        fi
        v=$(awk -v ns="$((t1 - t0))" 'BEGIN {printf "%.3f", ns / 1e9}')
        WALL[$tool]+="$v "
        alloc=$(du --block-size=1 "$d/out/disk.img" | cut -f1)
        ALLOC[$tool]+="$alloc "
        WBYTES[$tool]+="$(($(io_field "$d/io" write_bytes) - $(io_field "$d/io" cancelled_write_bytes))) "
        WCHAR[$tool]+="$(io_field "$d/io" wchar) "
        printf 'build -o\t%s\t%s\t%s\ts\n' "$tool" "$rep" "$v" >>"$RAW"
        if [ "$tool" = ds ]; then
            for p in "${!BUILD_ROW[@]}"; do SAMPLES["${BUILD_ROW[$p]}|ds"]+="$v "; done
        else
            SAMPLES["${BUILD_ROW[$tool]}|ref"]+="$v "
        fi
        log "  build -o [$tool] rep $rep: $v s, allocated $(mib "$alloc") MiB"
        if [ "$rep" -gt 2 ]; then rm -rf "$d"; fi
    done
    if [ "$rep" = 2 ]; then
        # Untimed: the rebuild comparison and the content checks, on the first two images.
        for tool in "${TOOLS[@]}"; do
            a=$TMP/b1-$tool/out/disk.img b=$TMP/b2-$tool/out/disk.img
            if [ -f "$a" ] && [ -f "$b" ]; then
                REBUILD[$tool]=$(cmp -l "$a" "$b" 2>/dev/null | wc -l || true)
                [ "$(stat -c %s "$a")" = "$(stat -c %s "$b")" ] || REBUILD[$tool]="${REBUILD[$tool]} (sizes differ)"
                log "  rebuild [$tool]: ${REBUILD[$tool]} bytes differ"
                check_image "$tool" "$a"
            fi
            rm -rf "$TMP/b1-$tool" "$TMP/b2-$tool"
        done
    fi
done
section_end "${BUILD_ROW[@]}"

# ---------------------------------------------------------------- served: spawn -> NBD answers
# disksynth build SPEC -U SOCK vs the same disk built by genimage and then served by nbdkit file
# (what it takes to serve a composed disk without disksynth). ready.py spawns the command and polls
# with libnbd (connect + size, what nbdinfo --size does) every 1 ms.
write_ready_py
server_cmd() { # server_cmd ref|ds DIR SOCK -> the command line, one word per line
    if [ "$1" = ds ] && [ "$SELF_TEST" != 1 ]; then
        printf '%s\n' "$DS" build "$2/spec.toml" -U "$3"
    else
        mkdir -p "$2/in" "$2/out"
        write_genimage_cfg "$2/genimage.cfg"
        # shellcheck disable=SC2016
        printf '%s\n' sh -c 'd=$1; shift; "$@" && exec nbdkit -f -U "$0" file "$d/out/disk.img"' "$3" "$2"
        genimage_cmd "$2"
    fi
}
SERVE_ROW="served: spawn -> NBD answers (nbdinfo --size)"
add_row "$SERVE_ROW" ms lower "" "genimage + nbdkit file"
section_begin
for rep in $(seq "$REPS"); do
    for side in $(sides_for_rep "$rep"); do
        name=serve-$side-$rep
        d=$TMP/$name
        rm -rf "$d"
        mkdir -p "$d"
        [ "$side" = ref ] || write_spec "$d/spec.toml"
        sock=$TMP/$name.sock
        mapfile -t cmd < <(server_cmd "$side" "$d" "$sock")
        if res=$(timeout $((STEP_TIMEOUT + 30)) "$PY" "$TMP/ready.py" "$(uri_of "$name")" "$STEP_TIMEOUT" "$LOGS/$name.log" "${cmd[@]}" 2>>"$LOGS/$name.client.stderr"); then
            record "$SERVE_ROW" "$side" "$rep" "${res%% *}"
            EXPORT_SIZE[served|$side]=${res##* }
            log "  $SERVE_ROW [$side] rep $rep: ${res%% *} ms"
        else
            problem "$SERVE_ROW [$side] rep $rep failed: ${cmd[*]} -- $(tail -c 300 "$LOGS/$name.client.stderr" "$LOGS/$name.log" 2>/dev/null | tr '\n' ' ')"
        fi
        rm -rf "$d" "$sock"
    done
done
section_end "$SERVE_ROW"
for side in ref ds; do
    sz=${EXPORT_SIZE[served|$side]:-}
    [ -z "$sz" ] || [ "$sz" = "$DISK_SIZE" ] || problem "served [$side]: export of $sz bytes, the disk is $DISK_SIZE bytes"
done

# Content check (untimed): the served disk, copied with nbdcopy, is byte-identical to the -o probe.
if [ "$SELF_TEST" != 1 ]; then
    d=$TMP/serve-check
    mkdir -p "$d"
    write_spec "$d/spec.toml"
    if start_server serve-check ds "$d"; then
        if timeout "$STEP_TIMEOUT" nbdcopy "$(uri_of serve-check)" "$TMP/served.img" 2>>"$LOGS/serve-check.client.stderr"; then
            cmp -s "$TMP/served.img" "$probe" || problem "the served disk (nbdcopy) differs from disksynth build -o's image ($(cmp -l "$TMP/served.img" "$probe" 2>/dev/null | wc -l || true) bytes)"
        else
            problem "nbdcopy of the served disk failed (see $LOGS/serve-check.client.stderr)"
        fi
        stop_server serve-check
    fi
    rm -f "$TMP/served.img" "$probe"
fi

# ---------------------------------------------------------------- report
build_rows 3 speed-up
SERVE_DS=$(median "${SAMPLES["$SERVE_ROW|ds"]:-}")
if [ -z "$SERVE_DS" ]; then v="no data"
elif awk -v v="$SERVE_DS" 'BEGIN {exit !(v <= 100)}'; then v=PASS
else v=MISS; fi
ABS_SERVE="disksynth: spawn → composed disk served in ≤ 100 ms: median ${SERVE_DS:-n/a} ms → **$v**"
GI=$(median "${SAMPLES["${BUILD_ROW[genimage]}|ref"]:-}")
DSW=$(median "${WALL[ds]:-}")
if [ -n "$GI" ] && [ -n "$DSW" ]; then
    r=$(awk -v a="$GI" -v b="$DSW" 'BEGIN {printf "%.3f", b / a}')
    ABS_STRETCH="build -o vs genimage, stretch target ≤ 0.35×: $r → **$(awk -v r="$r" 'BEGIN {print (r <= 0.35) ? "PASS" : "MISS"}')**"
else
    ABS_STRETCH="build -o vs genimage, stretch target ≤ 0.35×: no data"
fi
rb=${REBUILD[ds]:-}
if [ -z "$rb" ]; then v="no data"; elif [ "$rb" = 0 ]; then v=PASS; else v=MISS; fi
ABS_REBUILD="disksynth rebuild (same spec, other directory, ≥ 1 s later): ${rb:-n/a} bytes differ (target 0) → **$v**"

tool_table() { # the per-tool table (markdown)
    local tool w a wb wc
    echo "| tool | build -o wall (s, median) | image allocated (du, MiB) | written (write_bytes, MiB) | write() bytes (wchar, MiB) | rebuild: bytes differing | content check |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    for tool in "${TOOLS[@]}"; do
        w=$(median "${WALL[$tool]:-}")
        a=$(median "${ALLOC[$tool]:-}")
        wb=$(median "${WBYTES[$tool]:-}")
        wc=$(median "${WCHAR[$tool]:-}")
        echo "| ${TOOLNAME[$tool]} | $(fmt "$w") | ${a:+$(mib "$a")} | ${wb:+$(mib "$wb")} | ${wc:+$(mib "$wc")} | ${REBUILD[$tool]:-n/a} | ${CHECKED[$tool]:-not checked} |"
    done
    for tool in repart fstool; do
        [ -z "${SKIP[$tool]:-}" ] || echo "| ${TOOLNAME[$tool]} | skipped | | | | | ${SKIP[$tool]} |"
    done
}

MD=$OUT/build.md
{
    echo "## disksynth build vs genimage, systemd-repart, fstool — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    [ "$SELF_TEST" != 1 ] || { echo "**SELF-TEST RUN (BENCH_SELF_TEST=1): the disksynth column is genimage; ratios only show the noise floor.**"; echo; }
    echo "Command: \`$CMDLINE\` (build reps=$OUT_REPS, served reps=$REPS)"
    echo
    echo "Machine: $MACHINE"
    echo
    echo "Disk: GPT, ESP (FAT, 64 MiB) from ${TREE_DESC[esp]}; root (ext4, owner root) from ${TREE_DESC[root]}. Every tool gets the same layout: $LAYOUT_NOTE (disksynth's automatic root size). All runs are **warm**: the trees were read once before measuring."
    echo
    echo "Values are the **median** of the repetitions; ratio = disksynth / reference, **lower is better** for disksynth; speed-up = reference / disksynth. Every build is followed by \`sync -f IMG\` inside the timed span and preceded by an untimed \`sync\`; the tools run in rotating order, one rep after the other."
    echo
    md_table speed-up ---:
    echo
    echo "$ABS_STRETCH"
    echo
    echo "$ABS_SERVE"
    echo
    echo "$ABS_REBUILD"
    echo
    tool_table
    echo
    echo "Allocated = \`du --block-size=1 IMG\` of the finished image. written = write_bytes − cancelled_write_bytes of \`/proc/PID/io\` of a shell that ran the tool and reaped its children (bytes the tool dirtied in the page cache of any file, temp files included; for systemd-repart the loop device's own writes to the image file are kernel work and not counted). wchar = bytes passed to write()-like calls. Rebuild = \`cmp -l\` line count between the images of reps 1 and 2 (same configuration, different directories, ≥ 1 s apart). Content check (untimed, first image): GPT with ESP + root-x86-64, \`fsck.fat -n\` and BOOTX64.EFI byte-identical (mcopy), \`e2fsck -fn\`, inodes in use ≥ the tree's entries, two files byte-identical (debugfs cat). The served disk, copied with nbdcopy, must equal the \`-o\` image."
    echo
    echo "Served = time from spawning the command until an NBD client (libnbd in Python: connect + size, what \`nbdinfo --size\` does, polling every 1 ms) has the export size; reference = genimage building the disk, then \`nbdkit -f -U SOCK file IMG\` serving it. bg CPU = CPU used by other processes during the row, % of one core (> ${BG_LIMIT}% = unreliable; kernel writeback and loop-device threads count as other processes). Load average at start: $LOAD_START."
    echo
    echo "Configurations (paths as in this run):"
    echo
    echo '<details><summary>disksynth spec (disksynth build SPEC -o IMG / -U SOCK)</summary>'
    echo
    echo '```toml'
    cat "$SPEC"
    echo '```'
    echo '</details>'
    echo
    echo "<details><summary>genimage.cfg (\`$(genimage_cmd DIR | tr '\n' ' ')\`; ESP: mkdosfs + mcopy, root: mke2fs -d)</summary>"
    echo
    echo '```'
    write_genimage_cfg "$TMP/show-genimage.cfg"
    cat "$TMP/show-genimage.cfg"
    echo '```'
    echo '</details>'
    echo
    echo "<details><summary>systemd-repart definitions (\`$(build_cmd repart DIR | tr '\n' ' ')\`)</summary>"
    echo
    echo '```ini'
    write_repart_defs "$TMP/show-defs" "$ESP_DIR" "$ROOT_DIR" "$ROOT_SIZE"
    cat "$TMP/show-defs/10-esp.conf"
    echo
    cat "$TMP/show-defs/20-root.conf"
    echo '```'
    echo '</details>'
    echo
    echo "<details><summary>fstool spec (\`$(build_cmd fstool DIR | tr '\n' ' ')\`)</summary>"
    echo
    echo '```toml'
    write_fstool_toml "$TMP/show-fstool.toml" "$ESP_DIR" "$ROOT_DIR" "$DISK_SIZE" "$ROOT_SIZE"
    cat "$TMP/show-fstool.toml"
    echo '```'
    echo '</details>'
    echo
    md_raw_samples
    md_problems
} >"$MD"

FMT='%-52s %-4s %-24s %9s %9s %7s %8s %7s %s\n'
echo
echo "Machine: $MACHINE"
echo "Disk: ESP from ${TREE_DESC[esp]}; root from ${TREE_DESC[root]}; $LAYOUT_NOTE; warm page cache"
# shellcheck disable=SC2059
printf "$FMT" workload unit reference "ref" disksynth ratio speed-up target result
for r in "${ROWS[@]}"; do
    IFS='|' read -r row u ref a b ratio col tgt verdict bg sa sb <<<"$r"
    # shellcheck disable=SC2059
    printf "$FMT" "$row" "$u" "$ref" "$a" "$b" "$ratio" "$col" "$tgt" "$verdict"
done
echo "$ABS_STRETCH" | sed 's/\*\*//g'
echo "$ABS_SERVE" | sed 's/\*\*//g'
echo "$ABS_REBUILD" | sed 's/\*\*//g'
echo
tool_table | sed -e 's/^| //' -e 's/ |$//' -e '/^|---/d' -e 's/ | /  |  /g'
echo "(median of $OUT_REPS builds, $REPS serves; ratio = disksynth / reference, lower is better; markdown: $MD; raw: $RAW; logs: $LOGS/)"
finish
