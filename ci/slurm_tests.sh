#!/usr/bin/env bash
# Bring the CI Slurm cluster up (ci/slurm_up.sh) and run every @pytest.mark.slurm test with
# SF_MAMBA_REQUIRE_SLURM=1 (a skipped Slurm test is a failure). The tests mostly wait on Slurm
# (status polls, the requeue hold, job start-up), so they run as two concurrent pytest processes,
# each with its own --basetemp: the workflow tests, and everything else. The tests are written to be
# concurrency-safe (jobs are attributed to a test by their working directory).
#
#   bash ci/slurm_tests.sh                 # as .ci/run does (root)
#   PYTHON=/path/to/python bash ci/slurm_tests.sh
#
# Exit status: 0 only if the cluster came up and both pytest runs passed. Prints both logs and the
# wall time of each phase. See docs/slurm-ci.md.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${SF_SLURM_TEST_OUT:-/tmp/sf-mamba-slurm-tests}
LIMIT=${SF_SLURM_TEST_TIMEOUT:-900}   # hard stop per pytest process (each test also has its own timeout)
rm -rf "$OUT"; mkdir -p "$OUT"

t0=$(date +%s)
bash ci/slurm_up.sh || { echo "slurm_tests.sh: the cluster did not come up" >&2; exit 1; }
t1=$(date +%s)
echo "slurm_tests.sh: cluster up in $((t1 - t0)) s" >&2

export SF_MAMBA_REQUIRE_SLURM=1
common=(-m slurm -p no:cacheprovider -q -rfEsxX --durations=8)
workflow=(tests/test_slurm_workflow.py)
others=()
for f in tests/test_slurm_*.py; do [ "$f" = "${workflow[0]}" ] || others+=("$f"); done

timeout -k 30 "$LIMIT" "$PY" -m pytest "${common[@]}" --basetemp="$OUT/tmp-workflow" "${workflow[@]}" \
    >"$OUT/workflow.log" 2>&1 &
pa=$!
timeout -k 30 "$LIMIT" "$PY" -m pytest "${common[@]}" --basetemp="$OUT/tmp-others" "${others[@]}" \
    >"$OUT/others.log" 2>&1 &
pb=$!
wait "$pa"; ra=$?
wait "$pb"; rb=$?
t2=$(date +%s)

for name in others workflow; do
    echo "================ pytest -m slurm: $name ================"
    cat "$OUT/$name.log"
done
echo "slurm_tests.sh: bring-up $((t1 - t0)) s, tests $((t2 - t1)) s, total $((t2 - t0)) s;" \
     "pytest rc: others=$rb workflow=$ra" >&2
[ "$ra" = 0 ] && [ "$rb" = 0 ]
