#!/usr/bin/env bash
# Reproduces experiments/results/benchmark/*.json (the figures in experiments/README.md).
# Run on an otherwise idle machine: other jobs on the same cores distort every number.
set -euo pipefail
cd "$(dirname "$0")/.."
out=experiments/results/benchmark
mkdir -p "$out"
bench() { local name=$1; shift; echo "== $name"; caml-rl benchmark "$@" --json > "$out/$name.json"; cat "$out/$name.json"; }
# the headline configs exactly, with the update broken into its parts (update_parts, in fwd+bwd units)
bench halfcheetah_vel_headline_caml --config experiments/configs/halfcheetah_vel_caml.yaml --iterations 3
bench halfcheetah_vel_headline_maml --config experiments/configs/halfcheetah_vel_maml.yaml --iterations 3
bench halfcheetah_vel_paper_caml   --env halfcheetah_vel --preset paper   --method caml --iterations 3
bench halfcheetah_vel_paper_maml   --env halfcheetah_vel --preset paper   --method maml --iterations 3
bench halfcheetah_vel_mamlrl_caml  --env halfcheetah_vel --preset maml-rl --method caml --iterations 4
bench halfcheetah_vel_mamlrl_maml  --env halfcheetah_vel --preset maml-rl --method maml --iterations 4
bench ant_vel_paper_caml           --env ant_vel         --preset paper   --method caml --iterations 2
bench navigation_paper_caml        --env navigation2d --tasks 20 --episodes 20 --horizon 100 --iterations 5
# two workers on the same machine vs one process (torch.distributed, gloo)
echo "== halfcheetah_vel_paper_caml_2workers"
torchrun --standalone --nproc_per_node 2 -m caml_rl benchmark --env halfcheetah_vel --preset paper --method caml \
    --iterations 3 --json > "$out/halfcheetah_vel_paper_caml_2workers.json"
cat "$out/halfcheetah_vel_paper_caml_2workers.json"
