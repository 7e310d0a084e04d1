#!/usr/bin/env bash
# Step launch overhead of the plugin, side by side in one run:
#   srun -nN --sif-image=IMG true   vs   srun -nN true
# for N = 2 and N = all CPUs of the node. Also prints the per-node setup time
# the plugin logs ("sifrun: container ready in N ms").
# Usage (as root, with the cluster and plugin set up as tests/run-all does):
#   bench/srun-bench.sh [IMAGE] [USER]
set -euo pipefail
IMG="${1:?image}"
USER_="${2:-sifrun-test}"
N=$(nproc)
cd /tmp
runuser -u "$USER_" -- hyperfine -N --warmup 3 --runs 20 \
    "srun -n2 true" "srun -n2 --sif-image=$IMG true" \
    "srun -n$N true" "srun -n$N --sif-image=$IMG true"
echo
echo "per-node container setup, as logged by the plugin (last 10 steps):"
grep -o 'sifrun: container ready in [0-9]* ms' /var/log/slurm/slurmd.log | tail -10 | awk '{ s += $5; n++; print } END { if (n) printf "mean %.1f ms\n", s / n }'
