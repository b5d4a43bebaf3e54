#!/usr/bin/env bash
# The #23 bar for a DASR checkpoint: Set14 x4, LR made from HR by the degradation module (seed 0), beside
# bicubic and srresnet_x4, one table per condition. Usage: benchmarks/dasr_bar.sh [MODEL] [OUT_PREFIX]
set -euo pipefail
model=${1:-dasr}
out=${2:-benchmarks/results/dasr_bar}
for spec in blur:0 blur:1.2 blur:2.4 blur:3.6 blur:1.2,noise:10; do
    echo "== $spec"
    upscale bench quality --data ../shared/data/val/Set14 -m srresnet -m "$model" --degrade "$spec" --seed 0 \
        --json "${out}_${spec//[:,]/_}.json"
done
