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

START_TS=$(date +%s)
CMDLINE="$({ env | grep -E '^(BENCH_[A-Z_]+|DISKSYNTH_BIN)=' || true; } | sort | tr '\n' ' ')bench/ext4.sh"
log() { printf '[%4ds] %s\n' "$(($(date +%s) - START_TS))" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
trap 'log "FATAL: line $LINENO: \`$BASH_COMMAND\` failed"' ERR

# ---------------------------------------------------------------- prerequisites
# e2fsprogs lives in /usr/sbin, which a normal user's PATH may lack.
PATH=$PATH:/usr/sbin:/sbin
for tool in nbdkit nbdcopy nbdinfo mke2fs dumpe2fs e2fsck timeout awk; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
[ -x "$PY" ] && "$PY" -c 'import nbd' 2>/dev/null || die "need $PY with the nbd module (python3-libnbd)"
nbdkit linuxdisk --version >/dev/null 2>&1 || die "nbdkit has no linuxdisk plugin"
[ "$REPS" -ge 3 ] || die "BENCH_REPS must be at least 3 (medians)"
[ "$OUT_REPS" -ge 3 ] || die "BENCH_OUT_REPS must be at least 3 (medians)"
if [ "$DROP_CACHES" = 1 ] && [ ! -w /proc/sys/vm/drop_caches ]; then
    die "BENCH_DROP_CACHES=1 needs root (/proc/sys/vm/drop_caches is not writable)"
fi

mkdir -p "$LOGS"
rm -f "$LOGS"/*
RAW=$OUT/ext4.raw.tsv
printf 'workload\tside\trep\tvalue\tunit\n' >"$RAW"

if [ ! -x "$DISKSYNTH_BIN" ]; then
    log "$DISKSYNTH_BIN missing; building: cargo build --release -p disksynth"
    (cd "$ROOT" && timeout "$BUILD_TIMEOUT" cargo build --release -p disksynth) >&2 ||
        die "cargo build --release -p disksynth failed"
    [ -x "$DISKSYNTH_BIN" ] || die "build succeeded but $DISKSYNTH_BIN does not exist"
fi
newest_src=$(find "$ROOT"/*/src "$ROOT"/*/Cargo.toml -newer "$DISKSYNTH_BIN" -name '*.rs' -o -newer "$DISKSYNTH_BIN" -name Cargo.toml 2>/dev/null | grep -v "^$ROOT/tests/" | head -n1 || true)
[ -z "$newest_src" ] || log "WARNING: $DISKSYNTH_BIN is older than $newest_src (stale build? rebuild with cargo build --release -p disksynth)"
"$DISKSYNTH_BIN" ext4 --help >/dev/null 2>&1 || die "$DISKSYNTH_BIN has no ext4 subcommand"

# ---------------------------------------------------------------- machine line
cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
nbdkit_ver=$(nbdkit --version | awk '{print $2}')
libnbd_ver=$(nbdcopy --version | awk '/^libnbd/ {print $2}')
e2fs_ver=$(dpkg-query -W -f='${Version}' e2fsprogs 2>/dev/null || echo unknown)
git_rev=$(git -C "$ROOT" describe --always --dirty --abbrev=10 2>/dev/null || echo unknown)
ds_ver="git $git_rev, binary built $(date -u -r "$DISKSYNTH_BIN" '+%Y-%m-%d %H:%M:%S UTC'), sha256 $(sha256sum "$DISKSYNTH_BIN" | cut -c1-12)"
MACHINE="$(nproc) CPUs (${cpu_model:-unknown CPU}), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r); nbdkit $nbdkit_ver (linuxdisk), libnbd $libnbd_ver, e2fsprogs $e2fs_ver; disksynth $ds_ver"
log "machine: $MACHINE"

# ---------------------------------------------------------------- temp dir + cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/disksynth-ext4-bench.XXXXXX")
declare -A SPID=() # server name -> pid
PROBLEMS=()
problem() { PROBLEMS+=("$*"); log "PROBLEM: $*"; }

cleanup() {
    local rc=$? name pid
    for name in "${!SPID[@]}"; do
        kill "${SPID[$name]}" 2>/dev/null || true
    done
    for name in "${!SPID[@]}"; do
        pid=${SPID[$name]}
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Pin the binary: a `cargo build` elsewhere during the run must not swap it.
cp "$DISKSYNTH_BIN" "$TMP/disksynth"
DS=$TMP/disksynth

uri_of() { printf 'nbd+unix:///?socket=%s' "$TMP/$1.sock"; }

# ---------------------------------------------------------------- background-load accounting
# As in bench/run.sh and bench/floppy.sh: machine-wide busy CPU (/proc/stat) minus the CPU of
# this script, its reaped children and its live servers = "foreign" CPU, in % of one core.
TICK=$(getconf CLK_TCK)
now_ns() { date +%s%N; }
cpu_snapshot() {
    local busy steal own pid t
    read -r busy steal < <(awk '/^cpu / {print $2 + $3 + $4, $9}' /proc/stat)
    own=$(sed 's/^.*) //' /proc/$$/stat | awk '{print $12 + $13 + $14 + $15}')
    for pid in "${SPID[@]}"; do
        t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}') || t=0
        own=$((own + ${t:-0}))
    done
    echo "$busy $steal $own $(now_ns)"
}
cpu_delta() {
    local b0 s0 o0 t0 b1 s1 o1 t1
    read -r b0 s0 o0 t0 <<<"$1"
    read -r b1 s1 o1 t1 < <(cpu_snapshot)
    awk -v db=$((b1 - b0)) -v ds=$((s1 - s0)) -v do_=$((o1 - o0)) -v dt=$((t1 - t0)) -v hz="$TICK" 'BEGIN {
        secs = dt / 1e9; if (secs <= 0) secs = 1e-9
        f = (db - do_) / hz / secs * 100; if (f < 0) f = 0
        printf "%.0f %.0f\n", f, ds / hz / secs * 100 }'
}
declare -A BG=()
SECTION_SNAP=""
section_begin() { SECTION_SNAP=$(cpu_snapshot); }
section_end() { # section_end ROW...
    local d f st row
    d=$(cpu_delta "$SECTION_SNAP")
    f=${d%% *}
    st=${d##* }
    for row in "$@"; do BG[$row]=$d; done
    [ "$f" -le "$BG_LIMIT" ] || problem "$1: other processes used ~${f}% of a core meanwhile (limit ${BG_LIMIT}%); unreliable"
    [ "$st" -le "$BG_LIMIT" ] || problem "$1: hypervisor steal ~${st}% of a core meanwhile"
}
wait_for_idle() {
    local deadline=$(($(date +%s) + IDLE_WAIT)) snap f
    while :; do
        # Another benchmark (bench/run.sh, bench/floppy.sh) would skew every number.
        if pgrep -f 'bench/(run|floppy)\.sh' >/dev/null; then
            f=busy
        else
            snap=$(cpu_snapshot)
            sleep 3
            f=$(cpu_delta "$snap")
            f=${f%% *}
            [ "$f" -gt "$BG_LIMIT" ] || { log "machine idle enough (other processes ~${f}% of a core)"; return 0; }
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            problem "machine still busy after ${IDLE_WAIT}s (other processes: $f); measuring anyway"
            return 0
        fi
        log "machine busy (other processes ~${f}% of a core: $(ps -eo pcpu=,comm= --sort=-pcpu | head -n2 | tr -s ' ' | tr '\n' ';')); waiting"
        sleep 7
    done
}

# ---------------------------------------------------------------- samples and rows
declare -A SAMPLES=() UNIT=() TARGET=() BETTER=() REFNAME=()
ORDER=()
# add_row ROW UNIT BETTER(lower|higher) TARGET(ratio bound or "") REFERENCE-NAME
add_row() { ORDER+=("$1"); UNIT[$1]=$2; BETTER[$1]=$3; TARGET[$1]=$4; REFNAME[$1]=$5; }
record() { # row side(ref|ds) rep value
    SAMPLES["$1|$2"]+="$4 "
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${UNIT[$1]}" >>"$RAW"
}
median() { printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {if (NR==0) exit; if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
sides_for_rep() { if [ $(($1 % 2)) = 1 ]; then echo "ref ds"; else echo "ds ref"; fi; }

# ---------------------------------------------------------------- the trees
# Existing trees are used as they are; a missing one is generated (deterministic sizes and
# names, random contents) with bench/floppy.sh's generator.
gen_tree() { # gen_tree a|b DIR
    "$PY" - "$1" "$2" "$A_MIB" "$B_FILES" <<'EOF'
import math, os, random, sys
kind, root, a_mib, b_files = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.makedirs(root)
def put(rel, size):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        while size > 0:
            n = min(size, 1 << 20)
            f.write(os.urandom(n))
            size -= n
if kind == "a":
    # 2000 files, log-uniform sizes (1 KiB .. 8 MiB) scaled to A MiB, in a few subdirectories.
    rnd = random.Random(42)
    raw = [math.exp(rnd.uniform(math.log(1024), math.log(8 << 20))) for _ in range(2000)]
    scale = a_mib * (1 << 20) / sum(raw)
    dirs = ["", "docs", "media", "media/photos", "media/video", "src", "src/lib", "data"]
    for i, r in enumerate(raw):
        put(os.path.join(dirs[i % len(dirs)], "file-%04d.bin" % i), max(1, int(r * scale)))
else:
    # B small files (64 B .. 4 KiB) in 100 directories.
    rnd = random.Random(43)
    for i in range(b_files):
        put("dir-%03d/small-%06d.txt" % (i % 100, i), rnd.randint(64, 4096))
EOF
}

declare -A TREE=() TREE_BYTES=() TREE_DESC=()
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
    TREE_BYTES[$t]=$(find "$dir" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    nfiles=$(find "$dir" -type f | wc -l)
    ndirs=$(find "$dir" -mindepth 1 -type d | wc -l)
    TREE_DESC[$t]="$dir: $nfiles files in $ndirs dirs, $(awk -v b="${TREE_BYTES[$t]}" 'BEGIN {printf "%.1f MiB", b / 1048576}')"
    log "tree ($t): ${TREE_DESC[$t]}"
    # Warm runs: the trees' data and metadata are in the page cache (unless BENCH_DROP_CACHES=1).
    tar -C "$dir" -cf - . | cat >/dev/null
done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
wait_for_idle

# ---------------------------------------------------------------- ready time
# ready.py URI TIMEOUT LOG CMD...: spawns CMD, then does what nbdinfo does (libnbd connect +
# size) every 1 ms in-process, so nbdinfo's own start-up (~10 ms) is not counted; prints
# "ms size" at the first success, then stops the server by pid (SIGTERM, SIGKILL after 10 s).
cat >"$TMP/ready.py" <<'EOF'
import nbd, subprocess, sys, time
uri, timeout, logpath, cmd = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
with open(logpath, "ab") as logf:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
    ready = size = None
    try:
        while ready is None:
            h = nbd.NBD()
            try:
                h.connect_uri(uri)
                size = h.get_size()
                ready = time.perf_counter() - t0
                h.shutdown()
            except nbd.Error:
                pass
            del h
            if ready is None:
                if p.poll() is not None:
                    sys.exit("server exited with status %s before answering" % p.returncode)
                if time.perf_counter() - t0 > timeout:
                    sys.exit("server did not answer within %s s" % timeout)
                time.sleep(0.001)
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
print("%.2f %d" % (ready * 1000, size))
EOF

server_cmd() { # server_cmd ref|ds TREE SOCK -> the command line, one word per line
    case $1 in
    ref) printf '%s\n' nbdkit -f -U "$3" linuxdisk "$2" type=ext4 ;;
    ds) printf '%s\n' "$DS" ext4 "$2" -U "$3" ;;
    esac
}

declare -A EXPORT_SIZE=()
for t in a b; do
    row="($t) ready: spawn -> NBD answers"
    add_row "$row" ms lower 0.04 "nbdkit linuxdisk"
    section_begin
    for rep in $(seq "$REPS"); do
        for side in $(sides_for_rep "$rep"); do
            name=ready-$t-$side
            sock=$TMP/$name.sock
            rm -f "$sock"
            mapfile -t cmd < <(server_cmd "$side" "${TREE[$t]}" "$sock")
            [ "$DROP_CACHES" != 1 ] || { sync; echo 3 >/proc/sys/vm/drop_caches; }
            if res=$(timeout $((STEP_TIMEOUT + 30)) "$PY" "$TMP/ready.py" "$(uri_of "$name")" "$STEP_TIMEOUT" "$LOGS/$name.log" "${cmd[@]}" 2>>"$LOGS/$name.client.stderr"); then
                record "$row" "$side" "$rep" "${res%% *}"
                EXPORT_SIZE[$t|$side]=${res##* }
                log "  $row [$side] rep $rep: ${res%% *} ms"
            else
                problem "$row [$side] rep $rep failed: ${cmd[*]} -- $(tail -c 300 "$LOGS/$name.client.stderr" "$LOGS/$name.log" 2>/dev/null | tr '\n' ' ')"
            fi
        done
    done
    section_end "$row"
    for side in ref ds; do
        sz=${EXPORT_SIZE[$t|$side]:-}
        [ -z "$sz" ] || [ "$sz" -ge "${TREE_BYTES[$t]}" ] ||
            problem "($t) [$side]: export of $sz bytes cannot hold the tree's ${TREE_BYTES[$t]} bytes"
    done
done

# ---------------------------------------------------------------- full reads and memory
start_server() { # start_server NAME SIDE TREE
    local name=$1 side=$2 sock=$TMP/$1.sock pid deadline
    local -a cmd
    rm -f "$sock"
    mapfile -t cmd < <(server_cmd "$side" "$3" "$sock")
    log "start $name: ${cmd[*]}"
    "${cmd[@]}" >"$LOGS/$name.stdout" 2>"$LOGS/$name.stderr" </dev/null &
    pid=$!
    SPID[$name]=$pid
    deadline=$(($(date +%s) + STEP_TIMEOUT))
    while ! timeout 10 nbdinfo --size "$(uri_of "$name")" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || true
            unset "SPID[$name]"
            problem "$name exited before answering: ${cmd[*]} -- $(tail -c 300 "$LOGS/$name.stderr" | tr '\n' ' ')"
            return 1
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            problem "$name did not answer within ${STEP_TIMEOUT}s"
            kill -9 "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            unset "SPID[$name]"
            return 1
        fi
        sleep 0.01
    done
}

declare -A PEAK_RSS=()
stop_server() {
    local name=$1 pid rc
    pid=${SPID[$name]:-}
    [ -n "$pid" ] || return 0
    PEAK_RSS[$name]=$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status" 2>/dev/null || true)
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        problem "$name (pid $pid) still running 10 s after SIGTERM; sent SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" && rc=0 || rc=$?
    unset "SPID[$name]"
    [ "$rc" = 0 ] || problem "$name exited with status $rc after SIGTERM (expected 0)"
}

nbdcopy_read() { # ROW SIDE NAME REP EXTRA-ARGS...
    local row=$1 side=$2 name=$3 rep=$4 t0 t1 v
    shift 4
    t0=$(now_ns)
    if timeout "$STEP_TIMEOUT" nbdcopy "$@" "$(uri_of "$name")" null: 2>>"$LOGS/$name.client.stderr"; then
        t1=$(now_ns)
        v=$(awk -v ns="$((t1 - t0))" 'BEGIN {printf "%.3f", ns / 1e9}')
        record "$row" "$side" "$rep" "$v"
        log "  $row [$side] rep $rep: $v s"
    else
        problem "$row [$side] rep $rep: nbdcopy $* failed (status $?)"
    fi
}

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

for t in a b; do
    ok_ref=0 ok_ds=0
    start_server "read-$t-ref" ref "${TREE[$t]}" && ok_ref=1
    start_server "read-$t-ds" ds "${TREE[$t]}" && ok_ds=1
    [ "$ok_ds" = 0 ] || fsck_export "read-$t-ds"
    for flags in "" "--no-extents"; do
        row="($t) full read: nbdcopy ${flags:+$flags }URI null:"
        add_row "$row" s lower "" "nbdkit linuxdisk"
        # One untimed read per side first (server-side caches, fd pools).
        [ "$ok_ref" = 0 ] || timeout "$STEP_TIMEOUT" nbdcopy $flags "$(uri_of "read-$t-ref")" null: 2>/dev/null || true
        [ "$ok_ds" = 0 ] || timeout "$STEP_TIMEOUT" nbdcopy $flags "$(uri_of "read-$t-ds")" null: 2>/dev/null || true
        section_begin
        for rep in $(seq "$REPS"); do
            for side in $(sides_for_rep "$rep"); do
                [ "$side" = ref ] && [ "$ok_ref" = 0 ] && continue
                [ "$side" = ds ] && [ "$ok_ds" = 0 ] && continue
                # shellcheck disable=SC2086
                nbdcopy_read "$row" "$side" "read-$t-$side" "$rep" $flags
            done
        done
        section_end "$row"
    done
    stop_server "read-$t-ref"
    stop_server "read-$t-ds"
    row="($t) peak RSS after the reads (VmHWM)"
    add_row "$row" MiB lower "" "nbdkit linuxdisk"
    [ -z "${PEAK_RSS[read-$t-ref]:-}" ] || record "$row" ref 1 "${PEAK_RSS[read-$t-ref]}"
    [ -z "${PEAK_RSS[read-$t-ds]:-}" ] || record "$row" ds 1 "${PEAK_RSS[read-$t-ds]}"
done

# ---------------------------------------------------------------- -o vs mke2fs -d
# The same filesystem size on both sides: disksynth picks its automatic size; mke2fs gets that
# block count, 4 KiB blocks and the same inode count (its default inode ratio leaves too few
# inodes for 100,000 files in that size). Both end with the image on disk (-o syncs before its
# rename; mke2fs is followed by sync -f).
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
    section_begin
    for rep in $(seq "$OUT_REPS"); do
        for side in $(sides_for_rep "$rep"); do
            img=$TMP/out-$t-$side.img
            rm -f "$img"
            sync
            t0=$(now_ns)
            if [ "$side" = ds ]; then
                timeout "$STEP_TIMEOUT" "$DS" ext4 "${TREE[$t]}" -o "$img" 2>>"$LOGS/out-$t.stderr" && rc=0 || rc=$?
            else
                { timeout "$STEP_TIMEOUT" mke2fs -q -F -t ext4 -b 4096 -N "$inodes" -d "${TREE[$t]}" "$img" "$blocks" &&
                    sync -f "$img"; } >>"$LOGS/out-$t.stderr" 2>&1 && rc=0 || rc=$?
            fi
            t1=$(now_ns)
            if [ "$rc" = 0 ]; then
                v=$(awk -v ns="$((t1 - t0))" 'BEGIN {printf "%.3f", ns / 1e9}')
                record "$row" "$side" "$rep" "$v"
                log "  $row [$side] rep $rep: $v s"
            else
                problem "$row [$side] rep $rep failed (status $rc); see $LOGS/out-$t.stderr"
            fi
            rm -f "$img"
        done
    done
    section_end "$row"
done

# ---------------------------------------------------------------- report
fmt() { [ -n "$1" ] && printf '%.2f' "$1" || echo FAIL; }
ROWS=()
for row in "${ORDER[@]}"; do
    a=$(median "${SAMPLES["$row|ref"]:-}")
    b=$(median "${SAMPLES["$row|ds"]:-}")
    ratio="n/a" speedup="n/a"
    if [ -n "$a" ] && [ -n "$b" ]; then
        ratio=$(awk -v a="$a" -v b="$b" 'BEGIN {if (a > 0) printf "%.3f", b / a; else print "n/a"}')
        speedup=$(awk -v a="$a" -v b="$b" 'BEGIN {if (b > 0) printf "%.1f×", a / b; else print "n/a"}')
    fi
    tgt=${TARGET[$row]}
    verdict=""
    if [ -n "$tgt" ]; then
        if [ "$ratio" = n/a ]; then verdict="no data"
        elif awk -v r="$ratio" -v t="$tgt" 'BEGIN {exit !(r <= t)}'; then verdict=PASS
        else verdict=MISS; fi
        tgt="≤${tgt}×"
    else
        tgt="—"
    fi
    bg=${BG[$row]:-}
    [ -z "$bg" ] || bg="${bg%% *}%"
    ROWS+=("$row|${UNIT[$row]}|${REFNAME[$row]}|$(fmt "$a")|$(fmt "$b")|$ratio|$speedup|$tgt|$verdict|$bg|${SAMPLES["$row|ref"]:-}|${SAMPLES["$row|ds"]:-}")
done
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

size_line() { # tree
    local r=${EXPORT_SIZE[$1|ref]:-} d=${EXPORT_SIZE[$1|ds]:-}
    echo "($1) export size: nbdkit linuxdisk ${r:-n/a} B, disksynth ${d:-n/a} B"
}

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
    if [ "$DROP_CACHES" = 1 ]; then
        echo "Ready times are **cold**: the page cache was dropped before every start. Reads and -o are warm."
    else
        echo "All runs are **warm**: the trees were read once before measuring, so they are in the page cache (BENCH_DROP_CACHES=1 for cold starts)."
    fi
    echo
    echo "Values are the **median** of the repetitions; ratio = disksynth / reference, so for every row here **lower is better** for disksynth; speed-up = reference / disksynth. Reference: \`nbdkit -f -U SOCK linuxdisk DIR type=ext4\` (defaults otherwise) or \`mke2fs -q -F -t ext4 -b 4096 -N INODES -d DIR IMG BLOCKS && sync -f IMG\` for the same size."
    echo
    echo "| workload | unit | reference | ref value | disksynth | ratio | speed-up | target | result | bg CPU |"
    echo "|---|---|---|---:|---:|---:|---:|---|---|---:|"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r row u ref a b ratio speedup tgt verdict bg sa sb <<<"$r"
        echo "| $row | $u | $ref | $a | $b | **$ratio** | $speedup | $tgt | $verdict | $bg |"
    done
    echo
    echo "$ABS_A"
    echo
    echo "$ABS_B"
    echo
    echo "Ready = time from spawning the server until an NBD client (libnbd in Python: connect + size, as nbdinfo does, polling every 1 ms) has connected and read the export size; target ≤ 0.04× = at least 25× faster. Full read = \`nbdcopy URI null:\` (default: skips what block status reports as holes; \`--no-extents\`: reads every byte). Peak RSS = VmHWM of the server after the reads (nbdkit linuxdisk keeps its image in a temp file, which is not RSS). bg CPU = CPU used by other processes during the row, % of one core (> ${BG_LIMIT}% = unreliable). Load average at start: $LOAD_START."
    echo
    echo "Raw samples (reference / disksynth):"
    echo
    for r in "${ROWS[@]}"; do
        IFS='|' read -r row u ref a b ratio speedup tgt verdict bg sa sb <<<"$r"
        echo "- $row: ${sa:-none}/ ${sb:-none}"
    done
    if [ "${#PROBLEMS[@]}" -gt 0 ]; then
        echo
        echo "Problems:"
        echo
        for p in "${PROBLEMS[@]}"; do echo "- $p"; done
    fi
} >"$MD"

echo
echo "Machine: $MACHINE"
echo "Trees: (a) ${TREE_DESC[a]}; (b) ${TREE_DESC[b]}; $([ "$DROP_CACHES" = 1 ] && echo "cold starts" || echo "warm page cache")"
printf '%-46s %-4s %17s %10s %10s %7s %8s %7s %s\n' workload unit reference "ref" disksynth ratio speed-up target result
for r in "${ROWS[@]}"; do
    IFS='|' read -r row u ref a b ratio speedup tgt verdict bg sa sb <<<"$r"
    printf '%-46s %-4s %17s %10s %10s %7s %8s %7s %s\n' "$row" "$u" "$ref" "$a" "$b" "$ratio" "$speedup" "$tgt" "$verdict"
done
echo "$ABS_A" | sed 's/\*\*//g'
echo "$ABS_B" | sed 's/\*\*//g'
echo "(median of $REPS runs, -o rows $OUT_REPS; ratio = disksynth / reference, lower is better; markdown: $MD; raw: $RAW; logs: $LOGS/)"
if [ "${#PROBLEMS[@]}" -gt 0 ]; then
    echo
    echo "PROBLEMS (${#PROBLEMS[@]}):"
    for p in "${PROBLEMS[@]}"; do echo "  - $p"; done
fi
log "done in $(($(date +%s) - START_TS)) s"
for r in "${ROWS[@]}"; do
    case $r in *"|FAIL|"*) exit 1 ;; esac
done
