#!/usr/bin/env bash
# SB3 PPO baselines for the HalfCheetah velocity, direction and dynamics tables, ant_dir and ant_goal. Each command resumes
# from RUN_DIR/ppo_model.zip when interrupted and ends with the same evaluation as the meta-trained runs.
#   ppo:        trained on random tasks without task information, fine-tuned at test time on all weights
#   ppo_oracle: told the goal velocity in its observation (an upper line)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=experiments/configs/halfcheetah_vel_ppo.yaml  # env, 100x100 ReLU policy, inner lr 0.1, evaluation
STEPS=${STEPS:-2000000}
caml-rl baseline "$CONFIG" --out experiments/results/halfcheetah_vel/ppo_seed0 --timesteps "$STEPS" --set torch_threads=1
caml-rl baseline "$CONFIG" --out experiments/results/halfcheetah_vel/ppo_oracle_seed0 --timesteps "$STEPS" --oracle \
  --set torch_threads=1
# HalfCheetah direction, the same protocol
CONFIG=experiments/configs/halfcheetah_dir_ppo.yaml
caml-rl baseline "$CONFIG" --out experiments/results/halfcheetah_dir/ppo_seed0 --timesteps "$STEPS" --set torch_threads=1
caml-rl baseline "$CONFIG" --out experiments/results/halfcheetah_dir/ppo_oracle_seed0 --timesteps "$STEPS" --oracle \
  --set torch_threads=1
# Ant direction (issue 32): the meta-learners' task settings (actions / 10), MAML's Ant actor (64x64 tanh) and its
# test-time protocol (all weights, inner lr 1)
CONFIG=experiments/configs/ant_dir_ppo.yaml
caml-rl baseline "$CONFIG" --out experiments/results/ant_dir/ppo_seed0 --timesteps "$STEPS" --set torch_threads=1
caml-rl baseline "$CONFIG" --out experiments/results/ant_dir/ppo_oracle_seed0 --timesteps "$STEPS" --oracle \
  --set torch_threads=1
# Ant goal and HalfCheetah dynamics (issue 32): the same protocol, MAML's actor and inner lr on each task
for TASK in ant_goal halfcheetah_dynamics; do
  CONFIG=experiments/configs/${TASK}_ppo.yaml
  caml-rl baseline "$CONFIG" --out experiments/results/$TASK/ppo_seed0 --timesteps "$STEPS" --set torch_threads=1
  caml-rl baseline "$CONFIG" --out experiments/results/$TASK/ppo_oracle_seed0 --timesteps "$STEPS" --oracle \
    --set torch_threads=1
done
