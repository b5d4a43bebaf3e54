"""The #23 figure: one Set14 image blurred and noisy, upscaled by bicubic, srresnet and a DASR checkpoint, beside HR.

    python benchmarks/dasr_crops.py MODEL [--image img_013] [--degrade blur:1.2,noise:10] [--crop X,Y,W,H] -o OUT.png

The LR is made from HR by `upscale_cli.degrade` exactly as `bench quality --degrade` makes it (crop to a
multiple of 4, the same seed), written as a PNG, and handed to `upscale compare`, which labels each
crop with its PSNR-Y against HR.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from upscale_cli.degrade import Degradation

SET14 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "val" / "Set14" / "HR"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--image", default="img_013")
    parser.add_argument("--degrade", default="blur:1.2,noise:10")
    parser.add_argument("--crop", default="60,40,40,40", help="the LR region (X,Y,W,H)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    hr = np.asarray(Image.open(SET14 / f"{args.image}.png").convert("RGB"))
    hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
    tensor = torch.from_numpy(hr.transpose(2, 0, 1).copy()).double() / 255
    lr = Degradation.parse(args.degrade).apply(tensor, 4, torch.Generator().manual_seed(args.seed))
    with tempfile.TemporaryDirectory() as tmp:
        lr_path, hr_path = Path(tmp) / f"{args.image}_lr.png", Path(tmp) / f"{args.image}_hr.png"
        Image.fromarray((lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(lr_path)
        Image.fromarray(hr).save(hr_path)
        command = [sys.executable, "-m", "upscale_cli", "compare", str(lr_path), "--hr", str(hr_path), "-m", "srresnet",
                   "-m", args.model, "--crop", args.crop, "--zoom", "2", "--precision", "fp32", "-o", str(args.output),
                   "--overwrite"]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
