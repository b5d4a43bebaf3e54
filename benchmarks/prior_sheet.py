"""A model with a semantic prior, run on one LR image under several priors, shown side by side on a crop.

    python benchmarks/prior_sheet.py LR.png --model weights/sftgan_x4.safetensors --crop X,Y,W,H \
        --prior auto --prior sky --prior grass --prior building --prior water -o docs/sftgan_prior.png

Each `--prior` is `auto` (the model's own estimate, as `upscale` computes it) or a class name (that class
everywhere, as `upscale --seg-class NAME`); the whole image is upscaled under each, then the same LR crop
(X,Y,W,H in LR px) is cut from every output and shown beside bicubic, enlarged `--zoom` times.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from upscale_cli import api
from upscale_cli.archs.sftgan import class_prior
from upscale_cli.image_io import read_image
from upscale_cli.sheets import contact_sheet, nearest_resize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--crop", required=True, help="X,Y,W,H in LR pixels")
    parser.add_argument("--prior", action="append", required=True, help="auto or a class name (repeatable)")
    parser.add_argument("--zoom", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    x, y, w, h = (int(v) for v in args.crop.split(","))
    lr = read_image(args.image).rgb
    model, bicubic = api.load(args.model, precision="fp32"), api.load("bicubic")
    s = model.scale
    columns = [("bicubic", bicubic.upscale(lr, scale=s))]
    for prior in args.prior:
        extras = None if prior == "auto" else {"prior": class_prior(prior, s * lr.shape[0], s * lr.shape[1])}
        columns.append((f"prior: {prior}", model.upscale(lr, extras=extras)))
    cells = [nearest_resize(out[s * y: s * (y + h), s * x: s * (x + w)], s * w * args.zoom, s * h * args.zoom)
             for _, out in columns]
    sheet = contact_sheet([cells], [""], [name for name, _ in columns])
    from PIL import Image

    Image.fromarray(np.asarray(sheet)).save(args.output)
    print(f"wrote {args.output} ({len(cells)} columns)")


if __name__ == "__main__":
    main()
