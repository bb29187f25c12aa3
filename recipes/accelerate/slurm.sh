#!/bin/bash
# Multi-node SEAL on Slurm: one `accelerate launch` per node, ranks wired from the allocation.
#   sbatch recipes/accelerate/slurm.sh recipes/knowledge/qwen2.5-7b.yaml [--section.key VALUE ...]
#SBATCH --job-name=seal
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
set -euo pipefail
CONFIG=${1:?usage: sbatch slurm.sh RECIPE.yaml [overrides...]}; shift
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
  --config_file recipes/accelerate/multi_node.yaml \
  --num_machines $SLURM_NNODES --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
  --machine_rank \$SLURM_NODEID --main_process_ip $MAIN_IP --main_process_port 29500 \
  recipes/seal.py --config $CONFIG $*"
