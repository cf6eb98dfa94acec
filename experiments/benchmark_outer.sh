#!/usr/bin/env bash
# Issue 17: cost of one meta-iteration with the TRPO and the PPO/ProMP outer loop, measured side by side
# on the same day (experiments/results/benchmark/outer/*.json; table in experiments/README.md).
# Run on an otherwise idle machine: other jobs on the same cores distort every number.
set -euo pipefail
cd "$(dirname "$0")/.."
out=experiments/results/benchmark/outer
mkdir -p "$out"
bench() { local name=$1; shift; echo "== $name"; caml-rl benchmark "$@" --json > "$out/$name.json"; cat "$out/$name.json"; }
nav=(--env navigation2d --tasks 20 --episodes 20 --horizon 100 --iterations 5)
cheetah=(--env halfcheetah_vel --preset paper --method caml --iterations 3)
bench navigation_trpo "${nav[@]}"
bench navigation_ppo "${nav[@]}" --set optimizer=ppo
bench halfcheetah_vel_paper_trpo "${cheetah[@]}"
bench halfcheetah_vel_paper_promp "${cheetah[@]}" --set optimizer=ppo --set adaptation.inner_objective=lvc
