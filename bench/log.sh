#!/usr/bin/env bash
# The cost of a log record at its call site, this tree against a baseline,
# in one run:
#
#   bench/log.sh
#
# Builds examples/log_bench.rs from this tree and from BASE (default: the
# commit before src/log.rs moved onto tracing; the same example, cut of its
# span part, is compiled against BASE's library), then runs the two REPS
# times alternately: RECORDS (1,000,000) `log!` calls from THREADS (2)
# threads into a file in a temp dir. Prints per run the callers' ns per
# record and the records written and dropped (a full queue drops: cheaper
# for the caller, so compare the dropped counts too), then the median ratio
# this/BASE. Knobs: BASE, REPS (5), RECORDS, THREADS, KEEP=1 (temp dir).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
REPS=${REPS:-5}
export RECORDS=${RECORDS:-1000000} THREADS=${THREADS:-2}
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

if [ -z "${BASE:-}" ]; then
    first=$(git -C "$ROOT" log --format=%H -S'tracing_subscriber' -- src/log.rs | tail -n1)
    [ -n "$first" ] || die "no commit moved src/log.rs onto tracing yet: set BASE"
    BASE="$first^"
fi
BASE_REV=$(git -C "$ROOT" rev-parse --short "$BASE")
T=$(mktemp -d /tmp/blackpony-logbench.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT TERM

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
say "building log_bench from this tree and from $BASE_REV (target dir $TARGET)"
(cd "$ROOT" && cargo build -q --release --example log_bench)
cp "$TARGET/release/examples/log_bench" "$T/this"
mkdir "$T/base"
git -C "$ROOT" archive "$BASE" | tar -x -C "$T/base"
mkdir -p "$T/base/examples"
sed '/BEGIN span/,/END span/d' "$ROOT/examples/log_bench.rs" >"$T/base/examples/log_bench.rs"
(cd "$T/base" && CARGO_TARGET_DIR=$TARGET cargo build -q --release --example log_bench)
cp "$TARGET/release/examples/log_bench" "$T/base-bin"

# run NAME BIN: one run; prints "NAME explicit ns ... written dropped" lines.
run() {
    local name=$1 bin=$2 log="$T/run.log"
    rm -f "$log"
    LOG=$log "$bin" >"$T/out"
    local written dropped
    written=$(grep -vc ' log: dropped ' "$log" || true)
    dropped=$(awk '/ log: dropped /{for(i=1;i<=NF;i++) if($i=="dropped") s+=$(i+1)} END{print s+0}' "$log")
    while read -r what _ ns; do
        printf '%-6s %-8s %s written_total=%s dropped_total=%s\n' "$name" "$what" "${ns#ns_per_record=}" "$written" "$dropped"
    done <"$T/out"
}

printf '%-6s %-8s %s\n' run mode ns_per_record
for i in $(seq "$REPS"); do
    run base "$T/base-bin" | tee -a "$T/results"
    run this "$T/this" | tee -a "$T/results"
done

median() { sort -n | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
b=$(awk '$1=="base" && $2=="explicit"{print $3}' "$T/results" | median)
e=$(awk '$1=="this" && $2=="explicit"{print $3}' "$T/results" | median)
s=$(awk '$1=="this" && $2=="span"{print $3}' "$T/results" | median)
echo
echo "median ns per record: base($BASE_REV) $b, this $e, this in a session span $s"
awk -v b="$b" -v e="$e" -v s="$s" 'BEGIN{printf "ratio this/base %.2f, span/base %.2f\n", e/b, s/b}'
echo "load average at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores shared)"
