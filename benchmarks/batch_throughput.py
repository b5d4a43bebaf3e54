"""A folder of small photos through the whole command against the same model's pure compute (#26).

    python benchmarks/batch_throughput.py [--model srresnet] [--count 200] [--size 256] [--json OUT.json]

`count` centre crops of size x size px from distinct photos of ../shared/data/train (PNG, in a temporary
folder). Pure compute: one process decodes them all first, warms up on one, then times `Upscaler.upscale`
on each array. Command: `upscale FOLDER -m MODEL -o OUT --backend torch -q --json` (the engine's backend) timed whole in a fresh process (start-up,
decode, run, encode, write), its summary checked. The figure is the command's images per second as a
share of the compute's, measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "train"


def make_inputs(folder: Path, count: int, size: int) -> list[Path]:
    """Centre crops of the first `count` photos (sorted) at least `size` px a side."""
    from PIL import Image

    made = []
    for photo in sorted(SHARED.rglob("*.png")) + sorted(SHARED.rglob("*.jpg")):
        with Image.open(photo) as image:
            if min(image.size) < size:
                continue
            left, top = (image.width - size) // 2, (image.height - size) // 2
            path = folder / f"{len(made):04d}_{photo.stem}.png"
            image.convert("RGB").crop((left, top, left + size, top + size)).save(path)
        made.append(path)
        if len(made) == count:
            return made
    raise SystemExit(f"only {len(made)} photos of at least {size} px in {SHARED}")


def compute(model: str, folder: Path) -> float:
    """Seconds of `Upscaler.upscale` over every image of `folder`, decoded beforehand (runs in its own process)."""
    from upscale_cli.engine import load_upscaler
    from upscale_cli.image_io import read_image

    arrays = [read_image(str(path)).rgb for path in sorted(folder.iterdir())]
    upscaler = load_upscaler(model, device="cpu")
    size = lambda rgb: (rgb.shape[1] * upscaler.scale, rgb.shape[0] * upscaler.scale)  # noqa: E731
    upscaler.upscale(arrays[0], *size(arrays[0]))
    start = time.perf_counter()
    for rgb in arrays:
        upscaler.upscale(rgb, *size(rgb))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="srresnet")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compute", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compute:
        print(json.dumps({"seconds": compute(args.model, args.compute)}))
        return
    from upscale_cli.bench.report import cpu_model

    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "in", Path(tmp) / "out"
        inputs.mkdir()
        make_inputs(inputs, args.count, args.size)
        done = subprocess.run([sys.executable, __file__, "--model", args.model, "--compute", str(inputs)],
                              capture_output=True, text=True, check=True)
        compute_seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
        start = time.perf_counter()
        command = subprocess.run([sys.executable, "-m", "upscale_cli", str(inputs), "-m", args.model, "-o", str(outputs),
                                  "--backend", "torch", "-q", "--json"], capture_output=True, text=True)
        command_seconds = time.perf_counter() - start
        summary = json.loads(command.stdout.strip().splitlines()[-1])["summary"]
        written = len(list(outputs.iterdir()))
    if command.returncode != 0 or summary.get("ok") != args.count or written != args.count:
        raise SystemExit(f"the command did not write every image: exit {command.returncode}, {summary}, {written} files")
    result = {"cpu": f"{cpu_model()}, {os.cpu_count()} cores", "model": args.model, "count": args.count,
              "size": args.size, "compute_seconds": compute_seconds, "command_seconds": command_seconds,
              "compute_images_per_s": args.count / compute_seconds, "command_images_per_s": args.count / command_seconds,
              "share_of_compute": compute_seconds / command_seconds}
    print(f"CPU: {result['cpu']}; {args.count} images of {args.size} px, {args.model}")
    print(f"compute {compute_seconds:.1f} s ({result['compute_images_per_s']:.3f} img/s), whole command "
          f"{command_seconds:.1f} s ({result['command_images_per_s']:.3f} img/s): "
          f"{100 * result['share_of_compute']:.1f}% of compute throughput")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
