#!/usr/bin/env bash
# disksynth iso vs nbdkit iso params='-R -J' (and `-o` vs xorriso -as mkisofs -R -J), side by side,
# one run.
#
# Usage:  bench/iso.sh
#
# Environment knobs (defaults in brackets):
#   DISKSYNTH_BIN       disksynth binary                                  [<repo>/target/release/disksynth]
#   BENCH_REPS          repetitions of each measurement; table shows MEDIAN (>= 3)           [5]
#   BENCH_OUT_REPS      repetitions of the -o / xorriso rows (>= 3)                          [3]
#   BENCH_TREE_A        tree (a): ~800 MiB in 2000 files; generated there if missing         [/tmp/t800]
#   BENCH_TREE_B        tree (b): 100,000 small files in 100 dirs; generated if missing      [/tmp/t100k]
#   BENCH_A_MIB         size of tree (a) when it has to be generated, MiB                    [800]
#   BENCH_B_FILES       number of files of tree (b) when it has to be generated             [100000]
#   BENCH_DROP_CACHES   1 = drop the page cache (root) before every ready-time start: cold runs  [0]
#   BENCH_IDLE_WAIT     max seconds to wait at start for other processes to go quiet         [300]
#   BENCH_BG_LIMIT      % of one core other processes may use before a row is flagged       [15]
#   BENCH_STEP_TIMEOUT  seconds allowed for any single step (start, read, -o, xorriso)       [600]
#   BENCH_BUILD_TIMEOUT seconds allowed for `cargo build --release -p disksynth`            [1800]
#   BENCH_OUT           output directory                                                    [<repo>/bench/out]
#
# Output: a table on stdout and as markdown in $BENCH_OUT/iso.md, raw samples in
# $BENCH_OUT/iso.raw.tsv, server/client logs in $BENCH_OUT/iso-logs/.
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
LOGS=$OUT/iso-logs
PY=/usr/bin/python3 # Debian's interpreter has the libnbd bindings (python3-libnbd)

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
CMDLINE="$({ env | grep -E '^(BENCH_[A-Z_]+|DISKSYNTH_BIN)=' || true; } | sort | tr '\n' ' ')bench/iso.sh"
trap 'log "FATAL: line $LINENO: \`$BASH_COMMAND\` failed"' ERR

# ---------------------------------------------------------------- prerequisites
for tool in nbdkit nbdcopy nbdinfo xorriso isoinfo timeout awk; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
check_tree_bench iso
[ "$OUT_REPS" -ge 3 ] || die "BENCH_OUT_REPS must be at least 3 (medians)"
open_outputs iso

ensure_disksynth_bin "^$ROOT/tests/"
"$DISKSYNTH_BIN" iso --help >/dev/null 2>&1 || die "$DISKSYNTH_BIN has no iso subcommand"

# ---------------------------------------------------------------- machine line
xorriso_ver=$(xorriso -version 2>/dev/null | awk '/^xorriso version/ {print $4; exit}')
MACHINE="$(host_line); $(nbd_versions " (iso)"), xorriso ${xorriso_ver:-unknown}; disksynth $(ds_version)"
log "machine: $MACHINE"

# ---------------------------------------------------------------- temp dir + cleanup
pin_binary iso
# nbdkit iso writes its whole image (xorriso's output) to $TMPDIR: keep it in our temp dir so
# it is removed with it.
export TMPDIR=$TMP

# Another benchmark would skew every number.
IDLE_BLOCKERS='bench/(run|floppy|ext4)\.sh'
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
declare -A NFILES=()
for t in a b; do NFILES[$t]=$(find "${TREE[$t]}" -type f | wc -l); done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
wait_for_idle

# ---------------------------------------------------------------- ready time, full reads and memory
server_cmd() { # server_cmd ref|ds TREE SOCK -> the command line, one word per line
    case $1 in
    ref) printf '%s\n' nbdkit -f -U "$3" iso "$2" "params=-R -J" ;;
    ds) printf '%s\n' "$DS" iso "$2" -U "$3" ;;
    esac
}
write_ready_py
measure_ready 0.05 "nbdkit iso -R -J" a b

# Content check (untimed): an ISO image with Rock Ridge and Joliet that holds every file of the
# tree (xorriso reads it back).
check_iso_image() { # check_iso_image IMG WHAT TREE-KEY LOGNAME
    local n
    timeout "$STEP_TIMEOUT" isoinfo -d -i "$1" >"$LOGS/$4.isoinfo" 2>&1 || true
    grep -q "Rock Ridge signatures" "$LOGS/$4.isoinfo" && grep -q "Joliet with UCS level 3" "$LOGS/$4.isoinfo" ||
        problem "$2: isoinfo -d sees no Rock Ridge or no Joliet (see $LOGS/$4.isoinfo)"
    n=$(timeout "$STEP_TIMEOUT" xorriso -indev "$1" -find / -type f 2>/dev/null | wc -l)
    [ "$n" = "${NFILES[$3]}" ] || problem "$2: xorriso finds $n files, the tree has ${NFILES[$3]}"
}
check_export() { # check_export NAME
    local img=$TMP/check.iso t=${1#read-}
    t=${t%%-*}
    rm -f "$img"
    if ! timeout "$STEP_TIMEOUT" nbdcopy "$(uri_of "$1")" "$img" 2>>"$LOGS/$1.client.stderr"; then
        problem "$1: nbdcopy of the export for the check failed"
    else
        check_iso_image "$img" "$1 (served)" "$t" "$1"
    fi
    rm -f "$img"
}
READ_CHECK=check_export
measure_reads "nbdkit iso -R -J" a b

# ---------------------------------------------------------------- -o vs xorriso -as mkisofs
# Both end with the image on disk (-o syncs before its rename; xorriso is followed by sync -f).
make_image() { # make_image SIDE T IMG
    if [ "$1" = ds ]; then
        timeout "$STEP_TIMEOUT" "$DS" iso "${TREE[$2]}" -o "$3" 2>>"$LOGS/out-$2.stderr"
    else
        { timeout "$STEP_TIMEOUT" xorriso -as mkisofs -quiet -R -J -o "$3" "${TREE[$2]}" &&
            sync -f "$3"; } >>"$LOGS/out-$2.stderr" 2>&1
    fi
}
for t in a b; do
    row="($t) image: disksynth -o vs xorriso -as mkisofs"
    add_row "$row" s lower 0.8 "xorriso -R -J"
    probe=$TMP/probe.iso
    if ! timeout "$STEP_TIMEOUT" "$DS" iso "${TREE[$t]}" -o "$probe" 2>>"$LOGS/out-$t.stderr"; then
        problem "$row: disksynth iso -o failed"
        continue
    fi
    check_iso_image "$probe" "($t) disksynth -o image" "$t" "out-$t"
    rm -f "$probe"
    measure_image "$row" "$t"
done

# ---------------------------------------------------------------- report
build_rows 3 speed-up
# Absolute target (issue 5): the 800 MiB / 2000-file tree ready in <= 50 ms.
abs_line() { # abs_line TREE LIMIT-MS TEXT
    local v verdict
    v=$(median "${SAMPLES["($1) ready: spawn -> NBD answers|ds"]:-}")
    if [ -z "$v" ]; then verdict="no data"
    elif awk -v v="$v" -v l="$2" 'BEGIN {exit !(v <= l)}'; then verdict=PASS
    else verdict=MISS; fi
    echo "($1) disksynth ready $3: median ${v:-n/a} ms → **$verdict**"
}
ABS_A=$(abs_line a 50 "in ≤ 50 ms")
REF_SERVER="nbdkit iso"
# Full-read throughput (MiB/s of export) from the medians.
thr_line() { # thr_line TREE
    local row="($1) full read: nbdcopy --no-extents URI null:" a b
    a=$(median "${SAMPLES["$row|ref"]:-}")
    b=$(median "${SAMPLES["$row|ds"]:-}")
    awk -v a="$a" -v b="$b" -v r="${EXPORT_SIZE[$1|ref]:-0}" -v d="${EXPORT_SIZE[$1|ds]:-0}" -v t="$1" 'BEGIN {
        printf "(%s) full-read throughput (--no-extents, every byte): nbdkit iso %s MiB/s, disksynth %s MiB/s\n", t,
            (a > 0 ? sprintf("%.0f", r / a / 1048576) : "n/a"), (b > 0 ? sprintf("%.0f", d / b / 1048576) : "n/a") }'
}
THR_A=$(thr_line a)
THR_B=$(thr_line b)

MD=$OUT/iso.md
{
    echo "## disksynth iso vs nbdkit iso params='-R -J' — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Command: \`$CMDLINE\` (reps=$REPS, -o reps=$OUT_REPS)"
    echo
    echo "Machine: $MACHINE"
    echo
    echo "Trees: (a) ${TREE_DESC[a]}; (b) ${TREE_DESC[b]}. $(size_line a); $(size_line b)."
    echo
    md_cache_note
    echo
    echo "Values are the **median** of the repetitions; ratio = disksynth / reference, so for every row here **lower is better** for disksynth; speed-up = reference / disksynth. Reference: \`nbdkit -f -U SOCK iso DIR params='-R -J'\` (xorriso into a temp file before it listens; defaults otherwise) or \`xorriso -as mkisofs -quiet -R -J -o IMG DIR && sync -f IMG\`."
    echo
    md_table speed-up ---:
    echo
    echo "$ABS_A"
    echo
    echo "$THR_A"
    echo
    echo "$THR_B"
    echo
    echo "Ready = time from spawning the server until an NBD client (libnbd in Python: connect + size, as nbdinfo does, polling every 1 ms) has connected and read the export size; target ≤ 0.05× = at least 20× faster. Full read = \`nbdcopy URI null:\` (default: skips what block status reports as holes; \`--no-extents\`: reads every byte). Peak RSS = VmHWM of the server after the reads (nbdkit iso keeps its image in a temp file, which is not RSS). bg CPU = CPU used by other processes during the row, % of one core (> ${BG_LIMIT}% = unreliable). Load average at start: $LOAD_START."
    echo
    md_raw_samples
    md_problems
} >"$MD"

print_rows '%-46s %-4s %17s %10s %10s %7s %8s %7s %s\n' 1 workload unit reference "ref" disksynth ratio speed-up target result
echo "$ABS_A" | sed 's/\*\*//g'
echo "$THR_A"
echo "$THR_B"
echo "(median of $REPS runs, -o rows $OUT_REPS; ratio = disksynth / reference, lower is better; markdown: $MD; raw: $RAW; logs: $LOGS/)"
finish
