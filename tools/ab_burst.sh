#!/usr/bin/env bash
# The burst bench, A/B: revisions A and B alternate (A B A B ...) in one sequence on this machine,
# each with a fresh Ray, so that the two are compared under the same conditions.
#
#   tools/ab_burst.sh REV_A REV_B [ROUNDS]     (default 2 rounds; --quick sizes)
#
# Prints one line per run (revision, round, tasks/s, CPU ms per task) and the ratio B/A of the
# medians. Each run gets a status index and topics of its own (RAYLANE_INDEX_ALIAS,
# RAYLANE_TOPIC_PREFIX), so neither revision meets records or messages of the other. The
# editable install is pointed back at this checkout at the end; each run's log is kept.
set -euo pipefail
a=$1
b=$2
rounds=${3:-2}
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
PYTHON=${PYTHON:-python3}
trap 'cd "$root" && "$PYTHON" -m pip install -q --no-deps -e . 2>/dev/null; raylane stack down ray >/dev/null 2>&1 || true' EXIT
for rev in "$a" "$b"; do
    git -C "$root" worktree add -f --detach "$work/$rev" "$rev" >/dev/null 2>&1
done
for i in $(seq "$rounds"); do
    for rev in "$a" "$b"; do
        (cd "$work/$rev" && "$PYTHON" -m pip install -q --no-deps -e . 2>/dev/null)
        raylane stack down ray >/dev/null 2>&1 || true
        run="ab$i$rev"
        (cd "$work/$rev" && RAYLANE_INDEX_ALIAS="raylane-$run" RAYLANE_TOPIC_PREFIX="raylane.$run." \
            raylane bench --quick --only burst --out "$work/out-$rev-$i" >"$work/log-$rev-$i" 2>&1) ||
            { echo "run $rev $i failed; its log: $work/log-$rev-$i" >&2; exit 1; }
        "$PYTHON" - "$work/out-$rev-$i/latest.json" "$rev" "$i" <<'PY' | tee -a "$work/runs.tsv"
import json, sys
r = json.load(open(sys.argv[1]))
burst = r.get("results", r).get("burst", {})
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{burst.get('tasks_per_s')}\t{burst.get('cpu_ms_per_task')}")
PY
    done
done
"$PYTHON" - "$work/runs.tsv" "$a" "$b" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
med = {rev: statistics.median(float(r[2]) for r in rows if r[0] == rev) for rev in sys.argv[2:4]}
a, b = sys.argv[2], sys.argv[3]
print(f"median tasks/s: {a} {med[a]:.0f}, {b} {med[b]:.0f}; B/A = {med[b] / med[a]:.3f}")
PY
for rev in "$a" "$b"; do git -C "$root" worktree remove --force "$work/$rev" >/dev/null 2>&1 || true; done
