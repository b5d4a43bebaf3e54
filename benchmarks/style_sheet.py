"""A grid of a style model's outputs: a row per content photo, its original then one column per style.

    python benchmarks/style_sheet.py --model weights/artflow_adain.safetensors --size 192 \
        --content ../shared/data/val/Set14/HR/img_003.png --content ../shared/data/val/Set14/HR/img_014.png \
        --style ../shared/data/style/*.jpg -o docs/artflow_sheet.png

Each content image is resized (Lanczos) so its shorter side is `--size` px, as `upscale stylize --size`
does, then stylised by the model (fp32) with each style image; the style thumbnails head the columns.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from upscale_cli import api
from upscale_cli.sheets import contact_sheet


def resized(path: Path, size: int, height: int | None = None) -> np.ndarray:
    """Float RGB with the shorter side `size` (or exactly `size` x `height`, cropped centrally)."""
    image = Image.open(path).convert("RGB")
    factor = size / min(image.size)
    image = image.resize((round(image.width * factor), round(image.height * factor)), Image.LANCZOS)
    if height is not None:
        left, top = (image.width - size) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + size, top + height))
    return np.asarray(image, dtype=np.float32) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--content", type=Path, action="append", required=True)
    parser.add_argument("--style", type=Path, nargs="+", required=True)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    model = api.load(args.model, precision="fp32")
    styles = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in args.style]
    rows = []
    for path in args.content:
        content = resized(path, args.size)
        content = content[: content.shape[0] // 4 * 4, : args.size]
        cells = [content] + [np.clip(model.upscale(content, extras={"style": style}), 0, 1) for style in styles]
        rows.append(cells)
    height, width = rows[0][0].shape[:2]
    rows = [[cell[:height, :width] for cell in row] for row in rows]
    thumbnails = [resized(p, width, height) for p in args.style]
    sheet = contact_sheet([[rows[0][0] * 0 + 1] + thumbnails, *rows], ["style", *(p.stem for p in args.content)],
                          ["content", *(p.stem[:18] for p in args.style)])
    Image.fromarray(np.asarray(sheet)).save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
