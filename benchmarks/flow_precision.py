"""Can SRFlow's parameter networks run in bf16? Speed, invertibility and sample agreement side by side.

    python benchmarks/flow_precision.py                       # the CPU training config, perturbed init
    python benchmarks/flow_precision.py --weights weights/srflow_x4.safetensors --image \
        ../shared/data/val/Set14/HR/img_005.png

Each mode runs the flow's affine arithmetic, 1x1 convs and log-dets in fp32; "bf16 nets" runs only
the parameter networks (and the encoder) under bf16 autocast. Reported per mode, from one run:
* training step (NLL forward + backward, encoder frozen), seconds, median of interleaved repeats;
* round trip: max |decode(encode(x)) - x| on an image (fp32 arithmetic either way);
* NLL in bits/dim of the same image and the difference to fp32;
* a tau 0.8 sample drawn from the same noise in both modes: PSNR of bf16 against fp32.
Without --weights the model is data-initialised and every parameter perturbed (std 0.02), so that
no coupling is an identity; the figures for trained weights are the ones that decide.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from upscale_cli.archs.srflow import SRFlow, SRFlowConfig
from upscale_cli.checkpoint import load_model
from upscale_cli.flows.layers import set_param_net_dtype
from upscale_cli.image_io import read_image
from upscale_cli.metrics import psnr
from upscale_cli.resize import imresize
from upscale_cli.train.recipes.srflow import DEFAULT_ARCH

MODES = {"fp32": None, "bf16 nets": torch.bfloat16}


def build_model(weights: Path | None, hr: torch.Tensor, lr: torch.Tensor) -> SRFlow:
    if weights is not None:
        model, _ = load_model(weights)
        assert isinstance(model, SRFlow), f"{weights} is not an srflow checkpoint"
        return model.eval()
    torch.manual_seed(0)
    model = SRFlow(SRFlowConfig(**DEFAULT_ARCH))
    model.initialize(hr, lr)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.flow.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return model.eval()


def step_seconds(model: SRFlow, hr: torch.Tensor, lr: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        conds = model.features(lr)
    model.nll_bits_per_dim(hr, lr, noise=True, conds=conds).mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


@torch.no_grad()
def agreement(model: SRFlow, hr: torch.Tensor, lr: torch.Tensor, noise: list[torch.Tensor],
              dtype: torch.dtype | None) -> dict[str, float | torch.Tensor]:
    set_param_net_dtype(model.flow, dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        conds = model.features(lr)
    latents, _ = model.encode(hr, conds=conds)
    back, _ = model.decode(latents, conds)
    sample, _ = model.decode(noise, conds)
    return {
        "round_trip_max_error": float((back - hr).abs().max()),
        "nll_bpd": float(model.nll_bits_per_dim(hr, conds=conds).mean()),
        "sample": sample.clamp(0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="trained srflow checkpoint (default: perturbed init)")
    parser.add_argument("--image", type=Path, help="HR image (centre 96 px crop; default: random)")
    parser.add_argument("--batch", type=int, default=8, help="training-step batch of 96 px patches")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.image:
        image = torch.from_numpy(read_image(args.image).rgb).permute(2, 0, 1).float()
        top, left = (image.shape[1] - 96) // 2, (image.shape[2] - 96) // 2
        hr = image[:3, top : top + 96, left : left + 96].unsqueeze(0).contiguous()
    else:
        hr = torch.rand(1, 3, 96, 96)
    lr = imresize(hr, 0.25).clamp(0, 1)
    batch_hr = hr.repeat(args.batch, 1, 1, 1)
    batch_lr = F.interpolate(batch_hr, scale_factor=0.25, mode="area")
    model = build_model(args.weights, batch_hr, batch_lr)
    noise = model.draw_noise(lr.shape[-2], lr.shape[-1], 0.8, torch.Generator().manual_seed(3))

    times: dict[str, list[float]] = {name: [] for name in MODES}
    model.encoder.requires_grad_(False)
    for _ in range(args.repeat + 1):  # the first round warms up and is dropped
        for name, dtype in MODES.items():
            set_param_net_dtype(model.flow, dtype)
            times[name].append(step_seconds(model, batch_hr, batch_lr))
    results = {name: agreement(model, hr, lr, noise, dtype) for name, dtype in MODES.items()}
    reference = results["fp32"]
    report = {}
    for name, figures in results.items():
        report[name] = {
            "train_step_s": statistics.median(times[name][1:]),
            "round_trip_max_error": figures["round_trip_max_error"],
            "nll_bpd": figures["nll_bpd"],
            "nll_bpd_minus_fp32": figures["nll_bpd"] - reference["nll_bpd"],
            "sample_psnr_vs_fp32": psnr(figures["sample"], reference["sample"], data_range=1.0),
        }
    report["speed_up"] = report["fp32"]["train_step_s"] / report["bf16 nets"]["train_step_s"]
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"weights": str(args.weights or "perturbed init"), **report}, indent=2))


if __name__ == "__main__":
    main()
