"""upscale against a plain PyTorch reference and OpenVINO on the same weights, each case a fresh process (#26).

    python benchmarks/compare_reference.py [--models srresnet srgan sftgan artflow] [--sizes 64 256 1024]
                                           [--json OUT.json]

Cases, per shipped model and input size (crops of a real photo, ../shared/data/train/sunhays80/img_057.png,
928 x 1024 px: the largest photo there, so "1024 px" is its whole 928 x 1024). A model's extra inputs are
what its descriptor computes from the image (sftgan's automatic prior, inside each timed case) or, where it
computes none, the values in EXTRA_VALUES (artflow's style: a painting of ../shared/data/style):

* reference: what research scripts do: the network in fp32, NCHW, on the whole image, under no_grad;
* engine: `load_upscaler` with its defaults (precision auto, the inference rewrites of `rewrite.py`, tiles auto), on the array;
  engine-openvino: the same with `backend="openvino"` (the converted network run by the tiler);
* command: the whole `upscale IN.png -m MODEL -o OUT.png --backend torch` (import, decode, run, encode, write);
  command-openvino: the same with `--backend openvino` and the conversion already cached (a first run on a
  16 px crop makes it), which for inputs up to 384 px never imports torch;
* openvino: the same network (BatchNorm folded) converted by `openvino.convert_model` and compiled for
  the CPU with OpenVINO's defaults ("where it converts": a failure is reported, not hidden).

Compute cases time one forward after a warm-up on a 64 px input; the command is timed whole. Each case
reports output megapixels per second, its process's peak RSS (getrusage of a watcher's one child) and the PSNR of its output
against the reference's; ratios are against the reference of the same size, all from one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
PHOTO = SHARED / "data" / "train" / "sunhays80" / "img_057.png"
EXTRA_VALUES = {"style": str(SHARED / "data" / "style" / "vangogh_church_auvers.jpg")}
COMPUTE_CASES = ("reference", "engine", "engine-openvino", "openvino")
COMMAND_BACKENDS = {"command": "torch", "command-openvino": "openvino"}


def crop(size: int, folder: Path) -> Path:
    """A centred size x size crop of the photo (the whole photo when it is smaller), as PNG."""
    from PIL import Image

    image = Image.open(PHOTO).convert("RGB")
    width, height = image.size
    left, top = max(0, (width - size) // 2), max(0, (height - size) // 2)
    path = folder / f"in{size}.png"
    image.crop((left, top, min(width, left + size), min(height, top + size))).save(path)
    return path


# ----- one case, in its own process --------------------------------------------------------------------

def given_extras(descriptor) -> dict[str, str]:
    """The values this script gives for a model's extra inputs that it cannot compute from the image."""
    return {extra.name: EXTRA_VALUES[extra.name] for extra in descriptor.extra_inputs if extra.default is None}


def extra_tensors(descriptor, image):
    """A model's extra inputs for `image` (1, 3, h, w), by name, in the order its forward takes them: computed
    from the image by the descriptor where it can, else loaded from EXTRA_VALUES."""
    values = given_extras(descriptor)
    return {extra.name: extra.default(image) if extra.default is not None
            else extra.load(values[extra.name], *image.shape[-2:]) for extra in descriptor.extra_inputs}


def run_case(case: str, model: str, image_path: Path, out_path: Path) -> dict:
    """Run one compute case; save its float output (.npy) and return its timing."""
    import torch

    from upscale_cli.archs import get_architecture
    from upscale_cli.archs.base import RunOptions
    from upscale_cli.checkpoint import load_model
    from upscale_cli.engine import load_upscaler
    from upscale_cli.image_io import read_image
    from upscale_cli.models import find_weights
    from upscale_cli.rewrite import fold_batchnorm

    rgb = read_image(str(image_path)).rgb
    tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    warm = tensor[..., :64, :64].contiguous()
    if case.startswith("engine"):
        upscaler = load_upscaler(model, device="cpu", backend="openvino" if case == "engine-openvino" else "torch")
        scale = upscaler.scale
        options = RunOptions(extras=upscaler.load_extras(given_extras(upscaler.descriptor), *rgb.shape[:2]))
        upscaler.upscale(warm[0].permute(1, 2, 0).numpy(), 64 * scale, 64 * scale, options=options)
        start = time.perf_counter()
        out = upscaler.upscale(rgb, rgb.shape[1] * scale, rgb.shape[0] * scale, options=options)
        seconds = time.perf_counter() - start
        detail = f"precision {upscaler.precision}, backend {upscaler.backend}"
    else:
        module, info = load_model(find_weights(model, None))
        module = module.eval()
        descriptor = get_architecture(info.arch)
        if case == "reference":
            network, detail = module, "fp32 NCHW, whole image, no_grad"
        else:
            import openvino as ov

            fold_batchnorm(module)
            example = extra_tensors(descriptor, warm)
            converted = ov.convert_model(module, example_input=(warm, *example.values()),
                                         input=[[1, 3, -1, -1]] + [[1, t.shape[1], -1, -1] for t in example.values()])
            compiled = ov.Core().compile_model(converted, "CPU")
            network = lambda x, *extras: torch.from_numpy(compiled([x.numpy(), *(e.numpy() for e in extras)])[0])  # noqa: E731
            detail = f"OpenVINO {ov.__version__}, defaults (inference precision {compiled.get_property('INFERENCE_PRECISION_HINT')})"

        def forward(image: torch.Tensor) -> torch.Tensor:
            return network(image, *extra_tensors(descriptor, image).values())

        with torch.no_grad():
            forward(warm)
            start = time.perf_counter()
            result = forward(tensor)
            seconds = time.perf_counter() - start
        out = result[0].permute(1, 2, 0).float().numpy()
    np.save(out_path, np.clip(out, 0, 1).astype(np.float32))
    return {"seconds": seconds, "detail": detail, "out_pixels": int(out.shape[0] * out.shape[1])}


# ----- the driver ------------------------------------------------------------------------------------------

def in_fresh_process(argv: list[str]) -> tuple[str, float, float]:
    """Run argv in a fresh process: its stdout, wall seconds and peak RSS in GiB. A small watcher process
    runs it, so that the watcher's children's peak RSS is this one process's."""
    watcher = [sys.executable, __file__, "--watch", json.dumps(argv)]
    done = subprocess.run(watcher, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(f"{' '.join(argv[1:4])}... failed: {lines[-1] if lines else done.returncode}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["stdout"], report["wall"], report["peak_rss_gib"]


def watch(argv: list[str]) -> None:
    """The watcher: run argv, then print its stdout, wall time and peak RSS as one JSON line."""
    import resource

    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(done.stderr.strip() or f"exit {done.returncode}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"stdout": done.stdout, "wall": wall, "peak_rss_gib": peak}))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def command_extras(model: str) -> dict[str, str]:
    from upscale_cli.archs import get_architecture
    from upscale_cli.checkpoint import read_info
    from upscale_cli.models import find_weights

    return given_extras(get_architecture(read_info(find_weights(model, None)).arch))


def measure(model: str, image: Path, folder: Path) -> list[dict]:
    rows, outputs = [], {}
    for case in COMPUTE_CASES:
        out = folder / f"{model}_{image.stem}_{case}.npy"
        argv = [sys.executable, __file__, "--case", case, "--model", model, "--input", str(image), "--save", str(out)]
        try:
            stdout, wall, rss = in_fresh_process(argv)
        except RuntimeError as error:
            rows.append({"model": model, "input": image.name, "case": case, "error": str(error)})
            continue
        result = json.loads(stdout.strip().splitlines()[-1])
        outputs[case] = np.load(out)
        rows.append({"model": model, "input": image.name, "case": case, "seconds": result["seconds"],
                     "process_seconds": wall, "peak_rss_gib": rss, "detail": result["detail"],
                     "mp_per_s": result["out_pixels"] / 1e6 / result["seconds"]})
    from upscale_cli.image_io import read_image

    for case, backend in COMMAND_BACKENDS.items():
        written = folder / f"{model}_{image.stem}_{case}.png"
        given = [f"--input={name}={value}" for name, value in command_extras(model).items()]
        command = [sys.executable, "-m", "upscale_cli", "-m", model, "--backend", backend, "--overwrite", "--quiet",
                   *given]
        if backend != "torch":  # convert (and compile) once, untimed, as a user's first run would
            in_fresh_process([*command, str(folder / "in16.png"), "-o", str(folder / "warm.png")])
        _, wall, rss = in_fresh_process([*command, str(image), "-o", str(written)])
        outputs[case] = read_image(str(written)).rgb
        pixels = outputs[case].shape[0] * outputs[case].shape[1]
        rows.append({"model": model, "input": image.name, "case": case, "seconds": wall, "process_seconds": wall,
                     "peak_rss_gib": rss, "detail": f"the whole upscale command, --backend {backend}",
                     "mp_per_s": pixels / 1e6 / wall})
    reference = outputs.get("reference")
    for row in rows:
        if reference is not None and row["case"] in outputs:
            row["psnr_vs_reference"] = psnr(outputs[row["case"]], reference)
        base = next((r for r in rows if r["case"] == "reference" and "seconds" in r), None)
        if base is not None and "seconds" in row:
            key = "process_seconds" if row["case"] in COMMAND_BACKENDS else "seconds"
            row["speedup_vs_reference"] = base[key] / row["seconds"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["srresnet", "srgan", "sftgan", "artflow"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--case", choices=COMPUTE_CASES, help=argparse.SUPPRESS)
    parser.add_argument("--watch", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watch:
        watch(json.loads(args.watch))
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.model, args.input, args.save)))
        return
    from upscale_cli.bench.report import cpu_model
    from upscale_cli.device import cpu_has_native_bf16

    cpu = f"{cpu_model()}, {os.cpu_count()} cores{', native bf16' if cpu_has_native_bf16() else ''}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(folder / "cache")  # every case converts afresh, into a cache of its own
        crop(16, folder)
        for size in args.sizes:
            image = crop(size, folder)
            for model in args.models:
                rows += measure(model, image, folder)
    print(f"CPU: {cpu}")
    print(f"{'model':10} {'input':10} {'case':16} {'s':>8} {'MP/s':>7} {'x ref':>6} {'RSS GiB':>8} {'PSNR':>6}")
    for row in rows:
        if "error" in row:
            print(f"{row['model']:10} {row['input']:10} {row['case']:16} failed: {row['error']}")
            continue
        print(f"{row['model']:10} {row['input']:10} {row['case']:16} {row['seconds']:8.2f} {row['mp_per_s']:7.2f} "
              f"{row.get('speedup_vs_reference', float('nan')):6.2f} {row['peak_rss_gib']:8.2f} "
              f"{row.get('psnr_vs_reference', float('nan')):6.1f}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
