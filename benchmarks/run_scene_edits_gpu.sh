#!/usr/bin/env bash
# The scene-edit bench's GPU half (bench_scene_edits.py plan) in N concurrent shards on one GPU, for the device
# machine (torch only). Grasp checks and PSNR are valid; timings are contended (run one shard alone for them).
#
#   here:  python benchmarks/bench_scene_edits.py render --scenes 10 --moves 3 --full-moves 1 --out .gpudata/edits10c
#          git rev-parse --short HEAD > .gpudata/commit      (.gpudata/ in .git/info/exclude; carried to the device)
#   there: bash benchmarks/run_scene_edits_gpu.sh '<refresh options JSON>' '<variants JSON>' TAG [N] [tests]
#          e.g. bash benchmarks/run_scene_edits_gpu.sh '{"through": true}' '[]' defaults 4 tests
#   here:  python benchmarks/bench_scene_edits.py judge <the N se_TAG_s*.json> --data-root .gpudata/edits10c
#
# Environment: DATA (default .gpudata/edits10c), EDIT (--edit-options JSON, default {}), MAXM (--max-moves, 0 =
# all), LIM (seconds per shard, default 540); DEVICE, STEPS, RSTEPS, PLANNER (cuda, 2000, 800, reference: a dry
# run on a CPU takes e.g. DEVICE=cpu STEPS=20 RSTEPS=10 PLANNER=fast MAXM=1). A fifth argument first runs the CUDA-only tests (CUDA graphs, the
# moved-colour grids) beside the shards. Writes $OUT/se_TAG_s*.json (each after every scene) and $OUT/se_TAG.log.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
export F3RM_COMMIT=$(cat .gpudata/commit 2>/dev/null || echo unknown)
OUT=${OUT:-/tmp/se_out}; mkdir -p "$OUT"
N=${4:-2}
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
run() {
  timeout "${LIM:-540}" python3 benchmarks/bench_scene_edits.py plan --data-root "${DATA:-.gpudata/edits10c}" \
    --device "${DEVICE:-cuda}" --steps "${STEPS:-2000}" --refresh-steps "${RSTEPS:-800}" --refresh-options "$1" \
    --variants "$2" --rays 4096 --planner "${PLANNER:-reference}" --edit-options "${EDIT:-{\}}" --max-moves "${MAXM:-0}" --work "/tmp/se_w$4" \
    --shard "$4/$N" --out "$OUT/se_$3_s$4.json" > "/tmp/se_$3_s$4.log" 2>&1
}
for i in $(seq 0 $((N - 1))); do run "$1" "$2" "$3" "$i" & done
if [ -n "${5:-}" ]; then
  timeout 300 python3 -m pytest -q -x test/test_trainer_graphs.py test/test_moved_colour.py > "$OUT/tests_$3.log" 2>&1
  echo "CUDA tests: exit $?"; tail -5 "$OUT/tests_$3.log"
fi
wait
for i in $(seq 0 $((N - 1))); do cat "/tmp/se_$3_s$i.log"; done > "$OUT/se_$3.log"
grep -v '^\s*$' "$OUT/se_$3.log" | grep -v variant | tail -60
