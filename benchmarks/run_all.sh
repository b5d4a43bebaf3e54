#!/usr/bin/env bash
# Quality on Set5 + Set14 and speed/memory of every shipped model (bicubic alongside), as JSON in
# benchmarks/results/. Slow: minutes per model on a CPU; run it on an otherwise idle machine.
#
#   benchmarks/run_all.sh                      # every shipped model
#   MODELS="srresnet srgan" benchmarks/run_all.sh
#   SIZES=128,256 PRECISIONS=fp32 benchmarks/run_all.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
shared="${UPSCALE_SHARED:-$(dirname "$(dirname "$here")")/shared}"
results="$here/results"
sizes="${SIZES:-128,256,512}"
precisions="${PRECISIONS:-fp32,bf16}"
tiles="${TILES:-none,128}"
repeat="${REPEAT:-5}"

if [[ ! -d "$shared/data/val/Set5" || ! -d "$shared/data/val/Set14" ]]; then
    echo "error: Set5/Set14 not found under $shared/data/val (set UPSCALE_SHARED)" >&2
    exit 2
fi
models=()
for model in ${MODELS:-}; do
    models+=(--model "$model")
done
mkdir -p "$results"

plot=()
if python -c "import matplotlib" 2>/dev/null; then
    plot=(--plot "$results/quality_vs_speed.png")
else
    echo "note: no matplotlib, so no plot (pip install 'upscale-cli[plot]')" >&2
fi

upscale bench quality --data "$shared/data/val/Set5" --data "$shared/data/val/Set14" "${models[@]}" \
    --json "$results/quality.json" "${plot[@]}" | tee "$results/quality.txt"

upscale bench speed "${models[@]}" --size "$sizes" --precision "$precisions" --tile "$tiles" \
    --repeat "$repeat" --json "$results/speed.json" | tee "$results/speed.txt"
