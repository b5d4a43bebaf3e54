"""What SFT-GAN's automatic prior costs beside the network: both timed in one run, same input.

    python benchmarks/prior_cost.py [--model weights/sftgan_x4.safetensors] [--size 256] [--repeat 3]

Times, on a `--size` px square LR crop of the bundled example (made larger by mirroring when needed):
the prior alone (`estimate_prior`, what `upscale` computes when no `--seg` is given), `upscale` with the
automatic prior, and `upscale` with a prior given (one class), fp32, untiled; medians of `--repeat` runs
after one warm-up. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from upscale_cli import api
from upscale_cli.archs.sftgan import class_prior, estimate_prior
from upscale_cli.image_io import read_image

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "baboon_lr.png"


def median_ms(run, repeat: int) -> float:
    run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="weights/sftgan_x4.safetensors")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rgb = read_image(EXAMPLE).rgb
    pad = ((0, max(0, args.size - rgb.shape[0])), (0, max(0, args.size - rgb.shape[1])), (0, 0))
    lr = np.ascontiguousarray(np.pad(rgb, pad, mode="symmetric")[: args.size, : args.size])
    model = api.load(args.model, precision="fp32", tile="none")
    tensor = torch.from_numpy(lr.transpose(2, 0, 1).copy())[None].float()
    given = {"prior": class_prior("background", 4 * args.size, 4 * args.size)}
    prior = median_ms(lambda: estimate_prior(tensor), args.repeat)
    automatic = median_ms(lambda: model.upscale(lr), args.repeat)
    fixed = median_ms(lambda: model.upscale(lr, extras=given), args.repeat)
    print(f"{args.size}x{args.size} LR -> x4, fp32, {torch.get_num_threads()} threads, untiled:")
    print(f"  prior alone {prior:.0f} ms; upscale with the automatic prior {automatic:.0f} ms; "
          f"with a given prior {fixed:.0f} ms; the prior's share {prior / automatic:.1%}")


if __name__ == "__main__":
    main()
