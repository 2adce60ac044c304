#!/usr/bin/env bash
# disksynth floppy vs nbdkit floppy (and `-o` vs mkfs.fat + mcopy), side by side, one run.
#
# Usage:  bench/floppy.sh
#
# Environment knobs (defaults in brackets):
#   DISKSYNTH_BIN       disksynth binary                                  [<repo>/target/release/disksynth]
#   BENCH_REPS          repetitions of each measurement; table shows MEDIAN (>= 3)           [5]
#   BENCH_OUT_REPS      repetitions of the -o / mkfs.fat+mcopy rows                          [3]
#   BENCH_A_MIB         size of tree (a), MiB of random data in 2000 files                   [800]
#   BENCH_B_FILES       number of small files in tree (b), in 100 directories                [100000]
#   BENCH_TREES         directory where the trees are generated and kept between runs
#                       (regenerated when the parameters change)       [a fresh temp dir, removed]
#   BENCH_DROP_CACHES   1 = drop the page cache (root) before every ready-time start: cold runs  [0]
#   BENCH_IDLE_WAIT     max seconds to wait at start for other processes to go quiet         [300]
#   BENCH_BG_LIMIT      % of one core other processes may use before a row is flagged       [15]
#   BENCH_STEP_TIMEOUT  seconds allowed for any single step (start, read, -o, mkfs+mcopy)    [600]
#   BENCH_BUILD_TIMEOUT seconds allowed for `cargo build --release -p disksynth`            [1800]
#   BENCH_SECTIONS      which measurements: any of ready, read, image                       [all three]
#   BENCH_OUT           output directory                                                    [<repo>/bench/out]
#
# Output: a table on stdout and as markdown in $BENCH_OUT/floppy.md, raw samples in
# $BENCH_OUT/floppy.raw.tsv, server/client logs in $BENCH_OUT/floppy-logs/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DISKSYNTH_BIN=${DISKSYNTH_BIN:-$ROOT/target/release/disksynth}
REPS=${BENCH_REPS:-5}
OUT_REPS=${BENCH_OUT_REPS:-3}
A_MIB=${BENCH_A_MIB:-800}
B_FILES=${BENCH_B_FILES:-100000}
TREES=${BENCH_TREES:-}
DROP_CACHES=${BENCH_DROP_CACHES:-0}
IDLE_WAIT=${BENCH_IDLE_WAIT:-300}
BG_LIMIT=${BENCH_BG_LIMIT:-15}
STEP_TIMEOUT=${BENCH_STEP_TIMEOUT:-600}
BUILD_TIMEOUT=${BENCH_BUILD_TIMEOUT:-1800}
OUT=${BENCH_OUT:-$ROOT/bench/out}
SECTIONS=${BENCH_SECTIONS:-ready read image}
LOGS=$OUT/floppy-logs
PY=/usr/bin/python3 # Debian's interpreter has the libnbd bindings (python3-libnbd)

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
CMDLINE="$({ env | grep -E '^(BENCH_[A-Z_]+|DISKSYNTH_BIN)=' || true; } | sort | tr '\n' ' ')bench/floppy.sh"
trap 'log "FATAL: line $LINENO: \`$BASH_COMMAND\` failed"' ERR

# ---------------------------------------------------------------- prerequisites
for tool in nbdkit nbdcopy nbdinfo mkfs.fat mcopy timeout awk; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
check_tree_bench floppy
open_outputs floppy

ensure_disksynth_bin
"$DISKSYNTH_BIN" floppy --help >/dev/null 2>&1 || die "$DISKSYNTH_BIN has no floppy subcommand"

# ---------------------------------------------------------------- machine line
mkfs_ver=$(dpkg-query -W -f='${Version}' dosfstools 2>/dev/null || echo unknown)
mtools_ver=$({ mcopy -V || true; } | awk 'NR==1 {print $NF}')
MACHINE="$(host_line); $(nbd_versions), dosfstools $mkfs_ver, mtools $mtools_ver; disksynth $(ds_version)"
log "machine: $MACHINE"

# ---------------------------------------------------------------- temp dir + cleanup
pin_binary floppy

# Sections to run (BENCH_SECTIONS); a section that is off adds no rows.
trees_for() { case " $SECTIONS " in *" $1 "*) echo a b ;; esac; }

# ---------------------------------------------------------------- the trees
if [ -n "$TREES" ]; then
    mkdir -p "$TREES"
    TREE_ROOT=$(cd "$TREES" && pwd)
else
    TREE_ROOT=$TMP/trees
    mkdir -p "$TREE_ROOT"
fi
for t in a b; do
    dir=$TREE_ROOT/$t
    stamp="a=$A_MIB b=$B_FILES v1"
    if [ -f "$TREE_ROOT/$t.ok" ] && [ "$(cat "$TREE_ROOT/$t.ok")" = "$stamp" ]; then
        log "reusing tree ($t) in $dir"
    else
        rm -rf "$dir" "$TREE_ROOT/$t.ok"
        log "generating tree ($t) in $dir"
        gen_tree "$t" "$dir" || die "generating tree $t failed"
        echo "$stamp" >"$TREE_ROOT/$t.ok"
    fi
    TREE[$t]=$dir
    describe_tree "$t" 0
done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
wait_for_idle

# ---------------------------------------------------------------- ready time, full reads and memory
server_cmd() { # server_cmd ref|ds TREE SOCK -> the command line, one word per line
    case $1 in
    ref) printf '%s\n' nbdkit -f -U "$3" floppy "$2" ;;
    ds) printf '%s\n' "$DS" floppy "$2" -U "$3" ;;
    esac
}
write_ready_py
# shellcheck disable=SC2046
measure_ready 1.0 nbdkit $(trees_for ready)
# shellcheck disable=SC2046
measure_reads nbdkit $(trees_for read)

# ---------------------------------------------------------------- -o vs mkfs.fat + mcopy
# The same volume on both sides: disksynth picks its automatic size (--partition none, so the
# image is the bare volume); mkfs.fat gets exactly that size, FAT type and cluster size, and
# mcopy -s fills it.
make_image() { # make_image SIDE T IMG
    if [ "$1" = ds ]; then
        timeout "$STEP_TIMEOUT" "$DS" floppy "${TREE[$2]}" --partition none -o "$3" 2>>"$LOGS/out-$2.stderr"
    else
        # mcopy writes through stdio; like -o (which syncs before its rename) the timed
        # step ends with the data on disk.
        { timeout "$STEP_TIMEOUT" mkfs.fat -C -F "$fatbits" -s "$spc" "$3" "$img_kib" >/dev/null &&
            (cd "${TREE[$2]}" && timeout "$STEP_TIMEOUT" mcopy -s -Q -i "$3" ./* ::) &&
            sync -f "$3"; } 2>>"$LOGS/out-$2.stderr"
    fi
}
declare -A row_note=()
for t in $(trees_for image); do
    row="($t) image: disksynth -o vs mkfs.fat + mcopy -s"
    add_row "$row" s lower 0.8 "mkfs.fat+mcopy"
    probe=$TMP/probe.img
    if ! timeout "$STEP_TIMEOUT" "$DS" floppy "${TREE[$t]}" --partition none -o "$probe" 2>>"$LOGS/out-$t.stderr"; then
        problem "$row: disksynth floppy -o failed"
        continue
    fi
    img_kib=$(($(stat -c %s "$probe") / 1024))
    # mkfs.fat gets disksynth's FAT type and cluster size too: with its own default cluster size
    # 100,000 small files may not fit in the same volume.
    read -r spc fatbits < <("$PY" - "$probe" <<'EOF2'
import sys
b = open(sys.argv[1], "rb").read(512)
u16 = lambda o: int.from_bytes(b[o:o + 2], "little")
u32 = lambda o: int.from_bytes(b[o:o + 4], "little")
spc, rsvd, nfats, root = b[13], u16(14), b[16], u16(17)
tot = u16(19) or u32(32)
fatsz = u16(22) or u32(36)
count = (tot - rsvd - nfats * fatsz - (root * 32 + 511) // 512) // spc
print(spc, 12 if count < 4085 else 16 if count < 65525 else 32)
EOF2
)
    rm -f "$probe"
    log "$row: volume of $img_kib KiB, FAT$fatbits, $spc sectors per cluster"
    row_note[$t]="volume $img_kib KiB, FAT$fatbits, $((spc * 512))-byte clusters"
    measure_image "$row" "$t"
done

# ---------------------------------------------------------------- report
build_rows 2 better
# Absolute target: 100,000 files ready in under 1 s.
b_ready=$(median "${SAMPLES["(b) ready: spawn -> NBD answers|ds"]:-}")
if [ -z "$b_ready" ]; then ABS="no data"
elif awk -v v="$b_ready" 'BEGIN {exit !(v < 1000)}'; then ABS=PASS
else ABS=MISS; fi
ABS_LINE="(b) disksynth ready in < 1 s with ${TREE_DESC[b]%% files*} files: median ${b_ready:-n/a} ms → **$ABS**"
REF_SERVER=nbdkit

MD=$OUT/floppy.md
{
    echo "## disksynth floppy vs nbdkit floppy — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Command: \`$CMDLINE\` (reps=$REPS, -o reps=$OUT_REPS, sections: $SECTIONS)"
    echo
    echo "Machine: $MACHINE"
    echo
    echo "Trees: (a) ${TREE_DESC[a]} (random data); (b) ${TREE_DESC[b]}. $(size_line a); $(size_line b). Image rows: (a) ${row_note[a]:-n/a}; (b) ${row_note[b]:-n/a} (mkfs.fat -F/-s set to match)."
    echo
    md_cache_note
    echo
    echo "Values are the **median** of the repetitions; ratio = disksynth / reference, so for every row here **lower is better** for disksynth. Reference: nbdkit floppy (\`nbdkit -f -U SOCK floppy DIR\`, defaults) or mkfs.fat + \`mcopy -s\` into an image of the same size."
    echo
    md_table better ---
    echo
    echo "$ABS_LINE"
    echo
    echo "Ready = time from spawning the server until an NBD client (libnbd, polling every 1 ms) has connected and read the export size. Full read = \`nbdcopy URI null:\` (default: skips what block status reports as holes; \`--no-extents\`: reads every byte). Peak RSS = VmHWM of the server after the reads. bg CPU = CPU used by other processes during the row, % of one core (> ${BG_LIMIT}% = unreliable). Load average at start: $LOAD_START."
    echo
    md_raw_samples
    md_problems
} >"$MD"

print_rows '%-52s %-4s %14s %10s %10s %6s %7s %s\n' 0 workload unit reference "ref" disksynth ratio target result
echo "$ABS_LINE" | sed 's/\*\*//g'
echo "(median of $REPS runs, -o rows $OUT_REPS; ratio = disksynth / reference, lower is better; markdown: $MD; raw: $RAW; logs: $LOGS/)"
finish
