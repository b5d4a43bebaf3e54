"""SRFlow sampling before and after #26's changes, side by side in one process, on the shipped weights.

    python benchmarks/flow_reverse.py [--weights weights/srflow_x4.safetensors] [--images 4] [--seeds 2] [--json OUT]

Inputs: the first `images` official Set14 x4 LR images, centre-cropped to at most 128 x 128 px (even sides).
* before: what sampling did until now: the encoder in fp32 on every sample, the flow in reverse in fp32
  with NCHW tensors (a separate copy of the model);
* after: `Upscaler.upscale` with precision auto (bf16 encoder and parameter networks, fp32 affine
  arithmetic, channels_last) on the same image and seed, so on the same noise.
Reported: the reverse pass alone (medians of interleaved repeats on one image), the time per sample of
`seeds` samples of each image (after: the encoder runs on the first sample only), and the PSNR of every
after-sample against its before-sample (the agreement the issue asks: 45 dB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from upscale_cli.checkpoint import load_model
from upscale_cli.engine import load_upscaler
from upscale_cli.image_io import read_image
from upscale_cli.archs.base import RunOptions

LR_FOLDER = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "val" / "Set14" / "LR_x4"
TAU = 0.8


def crops(count: int) -> list[np.ndarray]:
    out = []
    for path in sorted(LR_FOLDER.iterdir())[:count]:
        rgb = read_image(str(path)).rgb
        top, left = max(0, (rgb.shape[0] - 128) // 2), max(0, (rgb.shape[1] - 128) // 2)
        crop = rgb[top : top + 128, left : left + 128]
        out.append(np.ascontiguousarray(crop[: crop.shape[0] // 2 * 2, : crop.shape[1] // 2 * 2]))  # even sides
    return out


@torch.inference_mode()
def before(model, rgb: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """The old path: fp32 NCHW encoder and reverse; returns the sample and the reverse pass's seconds."""
    lr = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]
    noise = model.draw_noise(lr.shape[-2], lr.shape[-1], TAU, torch.Generator().manual_seed(seed))
    conds = model.features(lr)
    start = time.perf_counter()
    hr, _ = model.decode(noise, conds)
    seconds = time.perf_counter() - start
    return hr[0].clamp(0, 1).permute(1, 2, 0).numpy(), seconds


@torch.inference_mode()
def reverse_after(upscaler, rgb: np.ndarray) -> float:
    """The new reverse pass alone (bf16 parameter networks, channels_last), on cached conditions."""
    from upscale_cli.flows.layers import param_nets_in

    model = upscaler.module
    lr = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None].contiguous(memory_format=torch.channels_last)
    noise = [z.contiguous(memory_format=torch.channels_last)
             for z in model.draw_noise(lr.shape[-2], lr.shape[-1], TAU, torch.Generator().manual_seed(0))]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=upscaler.precision == "bf16"):
        conds = [c.to(torch.bfloat16 if upscaler.precision == "bf16" else torch.float32)
                 .contiguous(memory_format=torch.channels_last) for c in model.features(lr)]
    with param_nets_in(model.flow, upscaler.precision):
        start = time.perf_counter()
        model.decode(noise, conds)
        return time.perf_counter() - start


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.round(a * 255) - np.round(b * 255)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/srflow_x4.safetensors")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from upscale_cli.bench.report import cpu_model

    old, _ = load_model(args.weights)
    old.eval()
    upscaler = load_upscaler(args.weights, device="cpu")
    images = crops(args.images)
    first = images[0]
    before(old, first, 0), reverse_after(upscaler, first)  # warm-up
    old_reverse, new_reverse = [], []
    for _ in range(args.repeats):
        old_reverse.append(before(old, first, 0)[1])
        new_reverse.append(reverse_after(upscaler, first))
    old_sample, new_sample, agreement = [], [], []
    for rgb in images:
        height, width = rgb.shape[:2]
        for seed in range(args.seeds):
            start = time.perf_counter()
            reference, _ = before(old, rgb, seed)
            old_sample.append(time.perf_counter() - start)
            start = time.perf_counter()
            sample = upscaler.upscale(rgb, width * 4, height * 4, "none", options=RunOptions(seed, TAU))
            new_sample.append(time.perf_counter() - start)
            agreement.append(psnr(np.clip(sample, 0, 1), reference))
    result = {"cpu": f"{cpu_model()}, {os.cpu_count()} cores", "precision_after": upscaler.precision,
              "reverse_before_s": statistics.median(old_reverse), "reverse_after_s": statistics.median(new_reverse),
              "sample_before_s": statistics.mean(old_sample), "sample_after_s": statistics.mean(new_sample),
              "psnr_after_vs_before_min": min(agreement), "psnr_after_vs_before_mean": statistics.mean(agreement),
              "images": args.images, "seeds": args.seeds, "tau": TAU}
    print(f"CPU: {result['cpu']}; after = precision {upscaler.precision}")
    print(f"reverse pass, 128 px: before {result['reverse_before_s']:.2f} s, after {result['reverse_after_s']:.2f} s "
          f"({result['reverse_before_s'] / result['reverse_after_s']:.2f}x)")
    print(f"per sample ({args.images} images x {args.seeds} seeds): before {result['sample_before_s']:.2f} s, "
          f"after {result['sample_after_s']:.2f} s ({result['sample_before_s'] / result['sample_after_s']:.2f}x)")
    print(f"after vs before, same noise: PSNR min {result['psnr_after_vs_before_min']:.1f} dB, "
          f"mean {result['psnr_after_vs_before_mean']:.1f} dB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
