#!/usr/bin/env bash
# Compile time, step time, examples/s and peak memory of the train step and
# inference of the three CycleSegNet Table 1 baselines, through the CLI's
# --mode benchmark (random inputs of the config's shapes; no data read).
# Usage: bash benchmarks/cli_benchmark_baselines.sh [extra --config.* flags]
set -euo pipefail
cd "$(dirname "$0")/.."
for method in baseline mcat mmul; do
  python -m coseg_jax.main --config "configs/baselines_synthetic.py:${method}" \
      --mode benchmark "$@" 2>&1 | grep -v '^[IW][0-9]\{4\} '
done
