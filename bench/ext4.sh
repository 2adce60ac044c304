#!/usr/bin/env bash
# disksynth ext4 vs nbdkit linuxdisk type=ext4 (and `-o` vs mke2fs -d), side by side, one run.
#
# Usage:  bench/ext4.sh
#
# Environment knobs (defaults in brackets):
#   DISKSYNTH_BIN       disksynth binary                                  [<repo>/target/release/disksynth]
#   BENCH_REPS          repetitions of each measurement; table shows MEDIAN (>= 3)           [5]
#   BENCH_OUT_REPS      repetitions of the -o / mke2fs -d rows (>= 3)                        [3]
#   BENCH_TREE_A        tree (a): ~800 MiB in 2000 files; generated there if missing         [/tmp/t800]
#   BENCH_TREE_B        tree (b): 100,000 small files in 100 dirs; generated if missing      [/tmp/t100k]
#   BENCH_A_MIB         size of tree (a) when it has to be generated, MiB                    [800]
#   BENCH_B_FILES       number of files of tree (b) when it has to be generated             [100000]
#   BENCH_DROP_CACHES   1 = drop the page cache (root) before every ready-time start: cold runs  [0]
#   BENCH_IDLE_WAIT     max seconds to wait at start for other processes to go quiet         [300]
#   BENCH_BG_LIMIT      % of one core other processes may use before a row is flagged       [15]
#   BENCH_STEP_TIMEOUT  seconds allowed for any single step (start, read, -o, mke2fs)        [600]
#   BENCH_BUILD_TIMEOUT seconds allowed for `cargo build --release -p disksynth`            [1800]
#   BENCH_OUT           output directory                                                    [<repo>/bench/out]
#
# Output: a table on stdout and as markdown in $BENCH_OUT/ext4.md, raw samples in
# $BENCH_OUT/ext4.raw.tsv, server/client logs in $BENCH_OUT/ext4-logs/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DISKSYNTH_BIN=${DISKSYNTH_BIN:-$ROOT/target/release/disksynth}
REPS=${BENCH_REPS:-5}
OUT_REPS=${BENCH_OUT_REPS:-3}
TREE_A=${BENCH_TREE_A:-/tmp/t800}
TREE_B=${BENCH_TREE_B:-/tmp/t100k}
A_MIB=${BENCH_A_MIB:-800}
B_FILES=${BENCH_B_FILES:-100000}
DROP_CACHES=${BENCH_DROP_CACHES:-0}
IDLE_WAIT=${BENCH_IDLE_WAIT:-300}
BG_LIMIT=${BENCH_BG_LIMIT:-15}
STEP_TIMEOUT=${BENCH_STEP_TIMEOUT:-600}
BUILD_TIMEOUT=${BENCH_BUILD_TIMEOUT:-1800}
OUT=${BENCH_OUT:-$ROOT/bench/out}
LOGS=$OUT/ext4-logs
PY=/usr/bin/python3 # Debian's interpreter has the libnbd bindings (python3-libnbd)

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
CMDLINE="$({ env | grep -E '^(BENCH_[A-Z_]+|DISKSYNTH_BIN)=' || true; } | sort | tr '\n' ' ')bench/ext4.sh"
trap 'log "FATAL: line $LINENO: \`$BASH_COMMAND\` failed"' ERR

# ---------------------------------------------------------------- prerequisites
# e2fsprogs lives in /usr/sbin, which a normal user's PATH may lack.
PATH=$PATH:/usr/sbin:/sbin
for tool in nbdkit nbdcopy nbdinfo mke2fs dumpe2fs e2fsck timeout awk; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
check_tree_bench linuxdisk
[ "$OUT_REPS" -ge 3 ] || die "BENCH_OUT_REPS must be at least 3 (medians)"
open_outputs ext4

ensure_disksynth_bin "^$ROOT/tests/"
"$DISKSYNTH_BIN" ext4 --help >/dev/null 2>&1 || die "$DISKSYNTH_BIN has no ext4 subcommand"

# ---------------------------------------------------------------- machine line
e2fs_ver=$(dpkg-query -W -f='${Version}' e2fsprogs 2>/dev/null || echo unknown)
MACHINE="$(host_line); $(nbd_versions " (linuxdisk)"), e2fsprogs $e2fs_ver; disksynth $(ds_version)"
log "machine: $MACHINE"

# ---------------------------------------------------------------- temp dir + cleanup
pin_binary ext4

# Another benchmark (bench/run.sh, bench/floppy.sh) would skew every number.
IDLE_BLOCKERS='bench/(run|floppy)\.sh'
IDLE_GIVEUP_FMT='machine still busy after %ss (other processes: %s); measuring anyway'

# ---------------------------------------------------------------- the trees
# Existing trees are used as they are; a missing one is generated (deterministic sizes and
# names, random contents) with bench/floppy.sh's generator (gen_tree in bench/lib.sh).
TREE[a]=$TREE_A
TREE[b]=$TREE_B
for t in a b; do
    dir=${TREE[$t]}
    if [ -d "$dir" ]; then
        log "using tree ($t) $dir"
    else
        log "generating tree ($t) in $dir"
        gen_tree "$t" "$dir" || die "generating tree $t failed"
    fi
    describe_tree "$t" 1 "$dir: "
done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
wait_for_idle

# ---------------------------------------------------------------- ready time, full reads and memory
server_cmd() { # server_cmd ref|ds TREE SOCK -> the command line, one word per line
    case $1 in
    ref) printf '%s\n' nbdkit -f -U "$3" linuxdisk "$2" type=ext4 ;;
    ds) printf '%s\n' "$DS" ext4 "$2" -U "$3" ;;
    esac
}
write_ready_py
measure_ready 0.04 "nbdkit linuxdisk" a b

# Content check: disksynth's export, copied with nbdcopy, must be a clean ext4 (e2fsck -fn).
# Untimed.
fsck_export() { # fsck_export NAME
    local img=$TMP/fsck.img
    rm -f "$img"
    if ! timeout "$STEP_TIMEOUT" nbdcopy "$(uri_of "$1")" "$img" 2>>"$LOGS/$1.client.stderr"; then
        problem "$1: nbdcopy of the export for e2fsck failed"
    else
        timeout "$STEP_TIMEOUT" e2fsck -fn "$img" >>"$LOGS/$1.fsck" 2>&1 ||
            problem "$1: e2fsck -fn of the served image is not clean (see $LOGS/$1.fsck)"
    fi
    rm -f "$img"
}
READ_CHECK=fsck_export
measure_reads "nbdkit linuxdisk" a b

# ---------------------------------------------------------------- -o vs mke2fs -d
# The same filesystem size on both sides: disksynth picks its automatic size; mke2fs gets that
# block count, 4 KiB blocks and the same inode count (its default inode ratio leaves too few
# inodes for 100,000 files in that size). Both end with the image on disk (-o syncs before its
# rename; mke2fs is followed by sync -f).
make_image() { # make_image SIDE T IMG
    if [ "$1" = ds ]; then
        timeout "$STEP_TIMEOUT" "$DS" ext4 "${TREE[$2]}" -o "$3" 2>>"$LOGS/out-$2.stderr"
    else
        { timeout "$STEP_TIMEOUT" mke2fs -q -F -t ext4 -b 4096 -N "$inodes" -d "${TREE[$2]}" "$3" "$blocks" &&
            sync -f "$3"; } >>"$LOGS/out-$2.stderr" 2>&1
    fi
}
declare -A row_note=()
for t in a b; do
    row="($t) image: disksynth -o vs mke2fs -d"
    add_row "$row" s lower 0.8 "mke2fs -d"
    probe=$TMP/probe.img
    if ! timeout "$STEP_TIMEOUT" "$DS" ext4 "${TREE[$t]}" -o "$probe" 2>>"$LOGS/out-$t.stderr"; then
        problem "$row: disksynth ext4 -o failed"
        continue
    fi
    timeout "$STEP_TIMEOUT" e2fsck -fn "$probe" >>"$LOGS/out-$t.fsck" 2>&1 || problem "($t) disksynth -o image: e2fsck -fn not clean (see $LOGS/out-$t.fsck)"
    blocks=$(dumpe2fs -h "$probe" 2>/dev/null | awk -F: '/^Block count/ {print $2 + 0}')
    inodes=$(dumpe2fs -h "$probe" 2>/dev/null | awk -F: '/^Inode count/ {print $2 + 0}')
    rm -f "$probe"
    log "$row: $blocks blocks of 4 KiB, $inodes inodes"
    row_note[$t]="$((blocks * 4 / 1024)) MiB, $inodes inodes"
    measure_image "$row" "$t"
done

# ---------------------------------------------------------------- report
build_rows 3 speed-up
# Absolute targets (issue 4): the 800 MiB / 2000-file tree ready in <= 50 ms, 100,000 files < 1 s.
abs_line() { # abs_line TREE LIMIT-MS TEXT
    local v verdict
    v=$(median "${SAMPLES["($1) ready: spawn -> NBD answers|ds"]:-}")
    if [ -z "$v" ]; then verdict="no data"
    elif awk -v v="$v" -v l="$2" 'BEGIN {exit !(v <= l)}'; then verdict=PASS
    else verdict=MISS; fi
    echo "($1) disksynth ready $3: median ${v:-n/a} ms → **$verdict**"
}
ABS_A=$(abs_line a 50 "in ≤ 50 ms")
ABS_B=$(abs_line b 999.999 "in < 1 s")
REF_SERVER="nbdkit linuxdisk"

MD=$OUT/ext4.md
{
    echo "## disksynth ext4 vs nbdkit linuxdisk type=ext4 — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Command: \`$CMDLINE\` (reps=$REPS, -o reps=$OUT_REPS)"
    echo
    echo "Machine: $MACHINE"
    echo
    echo "Trees: (a) ${TREE_DESC[a]}; (b) ${TREE_DESC[b]}. $(size_line a); $(size_line b). Image rows: (a) ${row_note[a]:-n/a}; (b) ${row_note[b]:-n/a} (mke2fs -b 4096 -N set to match)."
    echo
    md_cache_note
    echo
    echo "Values are the **median** of the repetitions; ratio = disksynth / reference, so for every row here **lower is better** for disksynth; speed-up = reference / disksynth. Reference: \`nbdkit -f -U SOCK linuxdisk DIR type=ext4\` (defaults otherwise) or \`mke2fs -q -F -t ext4 -b 4096 -N INODES -d DIR IMG BLOCKS && sync -f IMG\` for the same size."
    echo
    md_table speed-up ---:
    echo
    echo "$ABS_A"
    echo
    echo "$ABS_B"
    echo
    echo "Ready = time from spawning the server until an NBD client (libnbd in Python: connect + size, as nbdinfo does, polling every 1 ms) has connected and read the export size; target ≤ 0.04× = at least 25× faster. Full read = \`nbdcopy URI null:\` (default: skips what block status reports as holes; \`--no-extents\`: reads every byte). Peak RSS = VmHWM of the server after the reads (nbdkit linuxdisk keeps its image in a temp file, which is not RSS). bg CPU = CPU used by other processes during the row, % of one core (> ${BG_LIMIT}% = unreliable). Load average at start: $LOAD_START."
    echo
    md_raw_samples
    md_problems
} >"$MD"

print_rows '%-46s %-4s %17s %10s %10s %7s %8s %7s %s\n' 1 workload unit reference "ref" disksynth ratio speed-up target result
echo "$ABS_A" | sed 's/\*\*//g'
echo "$ABS_B" | sed 's/\*\*//g'
echo "(median of $REPS runs, -o rows $OUT_REPS; ratio = disksynth / reference, lower is better; markdown: $MD; raw: $RAW; logs: $LOGS/)"
finish
