#!/usr/bin/env bash
# Every GPU measurement of issue 15 in one command, on a CUDA machine (nothing else running):
#     pip install -e '.[warp]' && bash experiments/benchmark_gpu.sh
# Writes experiments/results/benchmark/gpu_<card>.json: the card (nvidia-smi), CPU, commit, the GPU
# tests' outcome and every run's `caml-rl benchmark --json` figures, side by side:
#   - HalfCheetah velocity at paper scale (40 tasks x 20 episodes x 200 steps, 200x200, 50 context):
#     physics alone at 800, 8192 and 65536 worlds, sampler, iteration seconds; MuJoCo Warp on the GPU,
#     and C MuJoCo (mujoco.batch) on this machine's cores feeding a GPU policy and a CPU policy;
#   - the same with a 10x meta-batch (400 tasks x 20 episodes);
#   - Ant velocity at paper scale on MuJoCo Warp; 2D navigation entirely on the GPU.
# Targets (H100): physics >= 1M env steps/s at >= 8k worlds; paper-scale iteration <= 1 s; 400-task
# iteration <= 3 s; 2D navigation >= 10M env steps/s. Budget: about 10 minutes, kernel compiles included.
# SKIP_TESTS=1 skips the GPU tests (pytest -m gpu) that run first.
set -uo pipefail
cd "$(dirname "$0")/.."
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
[ -n "$card" ] || { echo "benchmark_gpu.sh: nvidia-smi names no GPU; run this on a CUDA machine" >&2; exit 2; }
python -c 'import mujoco_warp' 2>/dev/null || { echo "benchmark_gpu.sh: pip install -e '.[warp]' first" >&2; exit 2; }
slug=$(echo "$card" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '_' | sed 's/^_//; s/_$//')
out=${OUT:-experiments/results/benchmark}  # OUT=DIR writes elsewhere
tmp=$(mktemp -d)
mkdir -p "$out"

tests=skipped
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    echo "== GPU tests (pytest -m gpu)"
    if timeout 300 pytest -q -m gpu tests/test_gpu.py tests/test_warp_backend.py > "$tmp/tests.log" 2>&1; then
        tests=passed
    else
        tests=failed
    fi
    tail -n 3 "$tmp/tests.log"
fi

bench() {  # NAME TIMEOUT_S ARGS...: one `caml-rl benchmark --json` run; a failure is recorded, not fatal
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" caml-rl benchmark "$@" --json > "$tmp/$name.json" 2> "$tmp/$name.err"
    local rc=$?
    if [ "$rc" = 0 ]; then
        cat "$tmp/$name.json"
        return
    fi
    [ "$rc" = 124 ] && echo "timed out after ${limit} s" >> "$tmp/$name.err"
    echo "failed: $(tail -n 1 "$tmp/$name.err")"
}
paper=(--env halfcheetah_vel --preset paper --method caml)
bench halfcheetah_vel_paper_warp_cuda 240 "${paper[@]}" --simulator warp --device cuda --iterations 3 --worlds 800 8192 65536
bench halfcheetah_vel_paper_batch_cuda 240 "${paper[@]}" --simulator batch --device cuda --iterations 3 --worlds 800 8192 65536
bench halfcheetah_vel_paper_batch_cpu 240 "${paper[@]}" --simulator batch --device cpu --iterations 2
bench halfcheetah_vel_paper_400tasks_warp_cuda 180 "${paper[@]}" --tasks 400 --simulator warp --device cuda --iterations 3
bench halfcheetah_vel_paper_400tasks_batch_cuda 180 "${paper[@]}" --tasks 400 --simulator batch --device cuda --iterations 1
bench ant_vel_paper_warp_cuda 180 --env ant_vel --preset paper --simulator warp --device cuda --iterations 2 --worlds 800 8192
bench navigation_cuda 120 --env navigation2d --tasks 20 --episodes 20 --horizon 100 --device cuda --iterations 5 \
    --worlds 800 8192 65536 1048576

python - "$tmp" "$out/gpu_$slug.json" "$card" "$tests" <<'EOF'
import json, os, pathlib, platform, subprocess, sys, time

tmp, dest, card, tests = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
runs = {}
for path in sorted(tmp.glob("*.json")):
    try:
        runs[path.stem] = json.loads(path.read_text())
    except ValueError:
        runs[path.stem] = {"error": (tmp / f"{path.stem}.err").read_text().strip().splitlines()[-1:]}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
smi = lambda q: subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                               capture_output=True, text=True).stdout.strip()
record = {
    "card": card,
    "driver": (smi("driver_version").splitlines() or [""])[0],
    "cpu": cpu,
    "cpu_cores": len(os.sched_getaffinity(0)),
    "commit": git("rev-parse", "HEAD"),
    "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "gpu_tests": tests,
    "runs": runs,
}
pathlib.Path(dest).write_text(json.dumps(record, indent=1) + "\n")
print(f"wrote {dest}")
EOF
rm -rf "$tmp"
