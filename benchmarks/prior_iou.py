"""How well the automatic SFT-GAN prior finds sky, building and plant on labelled street scenes.

    python benchmarks/prior_iou.py [--data ../shared/data/seg_eval/camvid_val] [--json out.json]

Each 480x360 CamVid photo is shrunk x4 with MATLAB bicubic (the prior is always computed from an LR
image, upsampled), the prior estimated, and its most probable class compared with the labels mapped to
SFT-GAN's categories (see the data's README; unlabelled pixels are ignored). Per-class IoU over all
images, beside the trivial all-background prior (IoU 0 for every class but background). CamVid is CC
BY-NC: evaluation only, never training data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from upscale_cli.archs.sftgan import CLASSES, estimate_prior
from upscale_cli.image_io import read_image
from upscale_cli.resize import imresize, quantize

# CamVid label -> SFT-GAN class index (None: ignored)
CAMVID = {0: "sky", 1: "building", 2: "background", 3: "background", 4: "background", 5: "plant", 6: "background",
          7: "background", 8: "background", 9: "background", 10: "background", 11: None}
REPORTED = ("sky", "building", "plant", "background")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                        / "seg_eval" / "camvid_val")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    lookup = np.full(256, -1)
    for label, name in CAMVID.items():
        if name is not None:
            lookup[label] = CLASSES.index(name)
    intersection = {name: 0 for name in REPORTED}
    union = {name: 0 for name in REPORTED}
    union_trivial = {name: 0 for name in REPORTED}
    intersection_trivial = {name: 0 for name in REPORTED}
    images = sorted((args.data / "images").glob("*.png"))
    for path in images:
        from PIL import Image

        truth = lookup[np.asarray(Image.open(args.data / "labels" / path.name))]
        hr = torch.from_numpy(read_image(path).rgb.transpose(2, 0, 1).copy())
        height, width = hr.shape[-2] // 4 * 4, hr.shape[-1] // 4 * 4
        lr = quantize(imresize(hr[:, :height, :width], scale=0.25))
        with torch.no_grad():
            guess = estimate_prior(lr[None])[0].argmax(dim=0).numpy()
        truth = truth[:height, :width]
        valid = truth >= 0
        for name in REPORTED:
            k = CLASSES.index(name)
            said, true = (guess == k) & valid, (truth == k) & valid
            intersection[name] += int((said & true).sum())
            union[name] += int((said | true).sum())
            trivial = valid if name == "background" else np.zeros_like(valid)
            intersection_trivial[name] += int((trivial & true).sum())
            union_trivial[name] += int((trivial | true).sum())
    result = {"images": len(images), "data": str(args.data),
              "iou": {n: intersection[n] / max(union[n], 1) for n in REPORTED},
              "iou_all_background": {n: intersection_trivial[n] / max(union_trivial[n], 1) for n in REPORTED}}
    for name in REPORTED:
        print(f"{name:10s} IoU {result['iou'][name]:.3f}   all-background prior {result['iou_all_background'][name]:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
