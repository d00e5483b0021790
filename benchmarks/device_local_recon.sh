#!/usr/bin/env bash
# Issue #15's GPU row in one call of the device tool: the local reconstruction against the global
# one on an accelerator, the same benchmark (local_recon_bench) as the CPU rows of
# benchmarks/README.md, "Local alignment". Run it from the repository root there:
#
#     bash benchmarks/device_local_recon.sh            # writes into $OUT (the device tool's folder)
#     DEVICE_CHECK_QUICK=1 OUT=/tmp/x bash benchmarks/device_local_recon.sh   # a small dry run here
#
# Nothing needs installing on the device's image: the benchmark imports only jax and numpy
# (checked here with every other dependency of the package blocked). Each field runs under its
# own time limit so that one slow compile cannot spend the session's device time; the log says
# which finished. Copy the JSON files into benchmarks/results/ and report them as the README says.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1
PY=${PYTHON:-python3}
STAMP=$(date -u +%Y-%m-%d)
LOG="$OUT/device-local-recon.log"

{
    date -u
    git rev-parse HEAD 2>/dev/null || echo "(no git)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "(no nvidia-smi)"
    "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
} >"$LOG" 2>&1

# name | limit (s) | arguments; quick: the same fields, small
if [[ -n "${DEVICE_CHECK_QUICK:-}" ]]; then
    RUNS=(
        "bba|300|--field bba --size 512 --views 61 --thickness 32 --repeat 1 --no-exact"
        "rough-256|300|--field rough --size 256 --views 21 --thickness 32 --repeat 1"
    )
else
    RUNS=(
        "bba|60|--field bba --size 512 --views 61 --thickness 128 --repeat 5"
        "midzone2a|180|--field midzone2a --size 1950 --views 81 --thickness 256 --repeat 3"
        "rough-1k|120|--field rough --size 1024 --views 61 --thickness 256 --repeat 3"
        "xtilt|60|--field xtilt --size 512 --views 61 --thickness 128 --repeat 5 --no-exact"
    )
fi

for run in "${RUNS[@]}"; do
    IFS='|' read -r name limit args <<<"$run"
    echo "== $name (limit ${limit} s): $args" >>"$LOG"
    # shellcheck disable=SC2086  # the arguments are meant to split
    timeout "$limit" "$PY" -m benchmarks.local_recon_bench $args \
        --out "$OUT/$STAMP-device-local-recon-$name.json" >>"$LOG" 2>&1
    echo "== $name exit $?" >>"$LOG"
done

# the local alignment's joint refinement (its compiled scan) on the accelerator: the 4096 px domed
# field of benchmarks/README.md, "Kept patches refined together"; it needs the package's own
# dependencies (jaxtyping), which the image may lack: then the log says so and it is skipped
if "$PY" -c "import lmalign_jax.core.local" >>"$LOG" 2>&1; then
    if [[ -n "${DEVICE_CHECK_QUICK:-}" ]]; then joint_args="--seeds 11 --no-real --no-large"; else joint_args="--seeds 11 --no-real"; fi
    echo "== local-joint (limit 240 s): $joint_args" >>"$LOG"
    # shellcheck disable=SC2086
    timeout 240 "$PY" -m benchmarks.local_joint_bench $joint_args \
        --out "$OUT/$STAMP-device-local-joint.json" >>"$LOG" 2>&1
    echo "== local-joint exit $?" >>"$LOG"
else
    echo "== local-joint skipped: lmalign_jax.core.local does not import here (see above)" >>"$LOG"
fi
cat "$LOG"
