"""What a DASR model's encoder sees: the probe's blur-width and noise estimates on Set14 under known degradations.

    python benchmarks/dasr_probe.py MODEL.safetensors [--data ../shared/data/val/Set14] [--images 6]

Each HR image is degraded (seed 0) by each condition and its whole LR image represented, as `upscale`
does; one line per condition gives the estimates per image. An encoder that tells degradations apart
gives estimates that follow the truth; one that sees mostly content gives nearly the same numbers per image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from upscale_cli.archs.dasr import describe_input
from upscale_cli.bench.quality import crop_to_multiple, load_pairs
from upscale_cli.checkpoint import load_model
from upscale_cli.degrade import Degradation

CONDITIONS = ("blur:0", "blur:0.8", "blur:1.2", "blur:2.4", "blur:3.6", "blur:1.2,noise:10", "noise:20")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/val/Set14"))
    parser.add_argument("--images", type=int, default=6)
    args = parser.parse_args()
    model, _ = load_model(args.model)
    pairs = load_pairs(args.data, 4)[: args.images]
    print(f"{args.model.name}: estimated blur width (HR px) / noise (0..255) per image, {len(pairs)} images")
    with torch.no_grad():
        for spec in CONDITIONS:
            condition, estimates = Degradation.parse(spec), []
            for pair in pairs:
                lr = condition.apply(crop_to_multiple(pair.hr, 4), 4, torch.Generator().manual_seed(0))
                estimates.append(describe_input(model, lr[None].float()))
            cells = "  ".join(f"{e['blur_width']:.2f}/{e['noise_level']:.1f}" for e in estimates)
            print(f"{spec:>18}: {cells}")


if __name__ == "__main__":
    main()
