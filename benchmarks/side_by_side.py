"""Side-by-side crops for the README: bicubic | model... | HR, from an official LR file and its HR.

    python benchmarks/side_by_side.py --lr ../shared/data/val/Set14/LR_x4/img_001.png \
        --hr ../shared/data/val/Set14/HR/img_001.png -m srresnet -m srgan --crop 290,0,128 \
        --out docs/baboon_crops.png

Crops are taken at the same place (HR coordinates x, y, size) from every output and shown 2x with
nearest-neighbour enlargement, so that texture is visible and nothing is smoothed for display.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from upscale_cli.engine import load_upscaler
from upscale_cli.image_io import encode_image, read_image, write_image
from upscale_cli.sheets import contact_sheet, nearest_resize


def crop(image: np.ndarray, x: int, y: int, size: int, zoom: int) -> np.ndarray:
    part = image[y : y + size, x : x + size]
    return nearest_resize(part, size * zoom, size * zoom)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", required=True, type=Path)
    parser.add_argument("--hr", required=True, type=Path)
    parser.add_argument("-m", "--model", action="append", default=[], help="model name or path (repeatable)")
    parser.add_argument("--crop", default="0,0,128", help="x,y,size of the crop in HR pixels")
    parser.add_argument("--zoom", type=int, default=2)
    parser.add_argument("--tau", type=float, default=None, help="temperature for stochastic models")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    x, y, size = (int(v) for v in args.crop.split(","))
    lr, hr = read_image(args.lr), read_image(args.hr)
    cells, labels = [], []
    for name in ["bicubic", *args.model]:
        upscaler = load_upscaler(name, precision="fp32")
        sr = upscaler.upscale(lr.rgb, hr.width, hr.height, "none", tau=args.tau)
        cells.append(crop(np.clip(sr, 0, 1), x, y, size, args.zoom))
        labels.append(upscaler.name)
    cells.append(crop(hr.rgb, x, y, size, args.zoom))
    labels.append("HR")
    sheet = contact_sheet([cells], [""], labels)
    write_image(args.out, encode_image(sheet.astype(np.float32) / 255, None, "png"), overwrite=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
