"""BatchNorm folded at load time against the network as trained: the same model, the same input, one run.

    python benchmarks/fold_speed.py [--model srresnet] [--size 256] [--precision bf16] [--repeats 5]

Both upscalers come from `load_upscaler`; the unfolded one with the fold switched off. Runs alternate
(folded, plain, folded, ...) so that drift of the machine hits both alike; the median of each is
reported with their ratio and the PSNR of the folded output against the plain one.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from unittest import mock

import numpy as np

import upscale_cli.engine as engine
from upscale_cli.bench.report import cpu_model
from upscale_cli.device import cpu_has_native_bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="srresnet")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folded = engine.load_upscaler(args.model, device="cpu", precision=args.precision)
    with mock.patch.object(engine, "fold_batchnorm", lambda module: 0):
        plain = engine.load_upscaler(args.model, device="cpu", precision=args.precision)
    rgb = np.random.default_rng(0).random((args.size, args.size, 3), dtype=np.float32)
    out = (args.size * folded.scale,) * 2
    times: dict[str, list[float]] = {"folded": [], "plain": []}
    outputs = {}
    for _ in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, upscaler in (("folded", folded), ("plain", plain)):
            start = time.perf_counter()
            outputs[name] = upscaler.upscale(rgb, *out, "none")
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values[1:]) for name, values in times.items()}
    mse = float(np.mean((outputs["folded"] - outputs["plain"]) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
    cpu = f"{cpu_model()}{', native bf16' if cpu_has_native_bf16() else ''}"
    print(f"{args.model} {args.size} px {args.precision}, {cpu}: folded {median['folded']:.3f} s, "
          f"plain {median['plain']:.3f} s, ratio {median['plain'] / median['folded']:.2f}x, "
          f"agreement {psnr:.1f} dB")


if __name__ == "__main__":
    main()
