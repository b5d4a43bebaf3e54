"""The inference-time rewrites applied at load against the network as trained: same model, same input, one run.

    python benchmarks/rewrite_speed.py [--model srresnet] [--size 256] [--precision bf16] [--repeats 5]
                                       [--tile none] [--rewrites all|fold]

Both upscalers come from `load_upscaler`; the plain one with `rewrite.prepare_for_inference` switched off,
the rewritten one with all of it (`all`) or only its BatchNorm folding (`fold`). Runs alternate (rewritten,
plain, rewritten, ...) so that drift of the machine hits both alike; the median of each is reported with
their ratio and the PSNR of the rewritten output against the plain one.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from unittest import mock

import numpy as np

import upscale_cli.engine as engine
from upscale_cli.bench.report import cpu_model
from upscale_cli.device import cpu_has_native_bf16
from upscale_cli.rewrite import fold_batchnorm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="srresnet")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tile", default="none", help="the tile spec of both runs (auto: the engine's default)")
    parser.add_argument("--rewrites", choices=("all", "fold"), default="all")
    args = parser.parse_args()
    only_fold = mock.patch.object(engine, "prepare_for_inference", lambda module, hook: fold_batchnorm(module))
    with only_fold if args.rewrites == "fold" else contextlib.nullcontext():
        rewritten = engine.load_upscaler(args.model, device="cpu", precision=args.precision)
    with mock.patch.object(engine, "prepare_for_inference", lambda module, hook: None):
        plain = engine.load_upscaler(args.model, device="cpu", precision=args.precision)
    rgb = np.random.default_rng(0).random((args.size, args.size, 3), dtype=np.float32)
    out = (args.size * rewritten.scale,) * 2
    times: dict[str, list[float]] = {"rewritten": [], "plain": []}
    outputs = {}
    for _ in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, upscaler in (("rewritten", rewritten), ("plain", plain)):
            start = time.perf_counter()
            outputs[name] = upscaler.upscale(rgb, *out, args.tile)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values[1:]) for name, values in times.items()}
    mse = float(np.mean((outputs["rewritten"] - outputs["plain"]) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
    cpu = f"{cpu_model()}{', native bf16' if cpu_has_native_bf16() else ''}"
    print(f"{args.model} {args.size} px {args.precision}, tile {args.tile}, {cpu}: rewritten ({args.rewrites}) "
          f"{median['rewritten']:.3f} s, plain {median['plain']:.3f} s, ratio {median['plain'] / median['rewritten']:.2f}x, "
          f"agreement {psnr:.1f} dB")


if __name__ == "__main__":
    main()
