#!/usr/bin/env bash
# L1 against MSE as SRResNet's pixel loss (issue #4): two runs from scratch that differ only in --loss,
# same seed, data, crops and schedule, then both measured on Set5 + Set14 with the official LR files.
# About 25 minutes per run at the default 2,000 steps on 2 Sapphire Rapids cores; run it alone.
#
#   benchmarks/pixel_loss.sh                 # ITERS=2000, runs under /tmp/pixel_loss
#   ITERS=500 RUNS=/tmp/pl benchmarks/pixel_loss.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
shared="${UPSCALE_SHARED:-$(dirname "$(dirname "$here")")/shared}"
iters="${ITERS:-2000}"
runs="${RUNS:-/tmp/pixel_loss}"

for loss in l1 mse; do
    upscale train --model srresnet --data "$shared/data/train/sunhays80" --val "$shared/data/val/Set5" \
        --iters "$iters" --batch 16 --patch 96 --lr 2e-4 --loss "$loss" --seed 0 \
        --run-dir "$runs/$loss" --out "$runs/srresnet_$loss.safetensors" --set "val_every=$iters"
done

upscale bench quality --data "$shared/data/val/Set5" --data "$shared/data/val/Set14" \
    -m "$runs/srresnet_l1.safetensors" -m "$runs/srresnet_mse.safetensors" \
    --json "$here/results/pixel_loss_${iters}.json" | tee "$here/results/pixel_loss_${iters}.txt"
