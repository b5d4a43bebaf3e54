"""Speed and memory of upscalers: latency, output megapixels per second and peak memory per configuration.

A configuration is (model, input size, precision, tile). It is run `warmup` times, then timed `repeat`
times; the median and the spread are reported. Peak memory on the CPU is the process RSS high-water
mark, which never goes down, so by default every configuration runs in a fresh worker process
(`python -m upscale_cli.bench.speed JOB.json`) whose 8-bit output comes back through a .npy file.
Outputs of one model and size are compared with each other: every precision against fp32 and every
tiling against the untiled run, so a speed-up never hides a loss of quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from upscale_cli.archs.base import SUPER_RESOLUTION, RunOptions
from upscale_cli.bench.quality import open_upscaler, precisions_for
from upscale_cli.bench.report import BenchError, typed_errors
from upscale_cli.errors import ExitCode, UpscaleError
from upscale_cli.metrics import psnr
from upscale_cli.models import BICUBIC
from upscale_cli.resize import imresize
from upscale_cli.train.data import list_images, load_rgb

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class SpeedConfig:
    """One measured configuration and how to measure it."""

    model: str  # name, `bicubic` or a .safetensors path
    size: int  # input (LR) side in pixels
    precision: str
    tile: str  # none, auto or a tile size in LR pixels
    scale: int = 4
    device: str = "auto"
    threads: int | None = None
    repeat: int = 5
    warmup: int = 1
    inputs: dict[str, str] = field(default_factory=dict)  # extra inputs as on the command line (name -> value)

    @property
    def label(self) -> str:
        return f"{Path(self.model).name} {self.size}px {self.precision} tile={self.tile}"


class WorkerError(UpscaleError):
    """An error a worker process reported, raised again here with the worker's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = ExitCode(exit_code)


def configurations(models: list[str], sizes: list[int], precisions: tuple[str, ...], tiles: tuple[str, ...],
                   inputs: dict[str, dict[str, str]] | None = None, **common: Any) -> list[SpeedConfig]:
    """Every (model, size, precision, tile) in that order; bicubic only once per size (fp32, untiled).
    `inputs` gives each model's extra inputs (model -> name -> value), where it takes any."""
    return [SpeedConfig(model, size, precision, tile, inputs=(inputs or {}).get(model, {}), **common)
            for model in models for size in sizes for precision in precisions_for(model, precisions)
            for tile in (("none",) if model == BICUBIC else tiles)]


def shared_dir() -> Path:
    """The shared data folder: $UPSCALE_SHARED, else `shared/` beside the source checkout."""
    return Path(os.environ.get("UPSCALE_SHARED") or REPO_ROOT.parent / "shared")


def default_image_paths() -> list[Path]:
    """Candidate real inputs, best first: images in examples/, then the first Set5 and Set14 LR images."""
    folders = [REPO_ROOT / "examples"] + [shared_dir() / "data" / "val" / s / "LR_x4" for s in ("Set5", "Set14")]
    return [path for folder in folders if folder.is_dir() for path in list_images(folder)[:1]]


def synthetic_image(size: int = 256, seed: int = 0) -> np.ndarray:
    """Smooth coloured noise (H, W, 3) in [0, 1]: seeded coarse and finer random layers upscaled with bicubic."""
    generator = torch.Generator().manual_seed(seed)
    layers = [imresize(torch.rand(3, size // f, size // f, generator=generator, dtype=torch.float64),
                       size=(size, size)) for f in (16, 4)]
    image = (0.75 * layers[0] + 0.25 * layers[1]).clamp(0, 1)
    return image.permute(1, 2, 0).float().numpy()


def choose_input(path: Path | None) -> tuple[np.ndarray, str, bool]:
    """The benchmark input as float RGB (H, W, 3), a description, and whether it is a real image."""
    candidates = [Path(path)] if path is not None else default_image_paths()
    if not candidates:
        return synthetic_image(), "synthetic smooth noise (no examples/ or Set5/Set14 image found)", False
    try:
        image = load_rgb(candidates[0]).permute(1, 2, 0).numpy()
    except (OSError, ValueError) as exc:
        raise BenchError(f"--image {candidates[0]}: cannot read ({exc})") from None
    return image, str(candidates[0]), True


def fit_to_size(image: np.ndarray, size: int) -> np.ndarray:
    """A size x size crop from the centre of `image`, mirrored outwards first where it is smaller."""
    pad_h, pad_w = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
                       mode="symmetric")
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def max_rss_bytes() -> int:
    """This process's peak resident set size so far (a high-water mark that never decreases)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Peak memory growth from now on: the CUDA allocator's peak, or the growth of the RSS high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
        else:
            self.base = max_rss_bytes()

    def result(self) -> dict[str, Any]:
        """The increase over the starting point, the absolute peak, and how they were measured."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            method = "torch.cuda.max_memory_allocated"
        else:
            peak, method = max_rss_bytes(), "ru_maxrss (RSS high-water mark)"
        return {"increase_bytes": max(0, peak - self.base), "peak_bytes": peak, "method": method}


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An output as the 8-bit image a saved file would hold."""
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def load_for(config: SpeedConfig) -> Any:
    """The Upscaler a configuration runs."""
    return open_upscaler(config.model, config.scale, config.device, config.precision, config.threads)


def measure(upscaler: Any, lr: np.ndarray, config: SpeedConfig) -> tuple[dict[str, Any], np.ndarray]:
    """Warm up, time `repeat` runs of one configuration, and return its figures and 8-bit output."""
    height, width = lr.shape[:2]
    scale = config.scale if upscaler.task == SUPER_RESOLUTION else 1  # image-to-image models keep the size
    out_w, out_h = width * scale, height * scale
    memory = PeakMemory(upscaler.device)
    times = []
    with typed_errors(config.label):
        options = RunOptions(extras=upscaler.load_extras(config.inputs, height, width) if config.inputs else {})
        for _ in range(config.warmup):
            upscaler.upscale(lr, out_w, out_h, config.tile, options=options)
        for _ in range(config.repeat):
            started = time.perf_counter()
            output = upscaler.upscale(lr, out_w, out_h, config.tile, options=options)
            times.append(time.perf_counter() - started)
    ms = np.array(times) * 1000
    median = float(np.median(ms))
    megapixels = out_w * out_h / 1e6
    result = {
        "model": upscaler.name, "model_spec": config.model, "size": config.size, "in_width": width,
        "in_height": height, "out_width": out_w, "out_height": out_h, "precision": upscaler.precision,
        "tile": config.tile, "tile_px": upscaler.choose_tile(config.tile, height, width),
        "warmup": config.warmup, "repeat": config.repeat, "threads": torch.get_num_threads(),
        "latency_ms": {"median": median, "min": float(ms.min()), "max": float(ms.max()),
                       "q1": float(np.percentile(ms, 25)), "q3": float(np.percentile(ms, 75)),
                       "runs": [float(t) for t in ms]},
        "megapixels_per_second": megapixels / (median / 1000),
        "megapixels_per_second_range": [megapixels / (float(ms.max()) / 1000), megapixels / (float(ms.min()) / 1000)],
        "memory": memory.result(),
    }
    return result, to_uint8(output)


class InProcess:
    """Runs configurations in this process, keeping loaded models; memory figures are high-water growth only."""

    isolated = False

    def __init__(self, loaded: dict[tuple[str, str], Any]) -> None:
        self.loaded = loaded  # (model, precision) -> Upscaler, added to as needed

    def run(self, config: SpeedConfig, lr: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        key = (config.model, config.precision)
        if key not in self.loaded:
            self.loaded[key] = load_for(config)
        return measure(self.loaded[key], lr, config)


class Isolated:
    """Runs every configuration in a fresh `python -m upscale_cli.bench.speed` process."""

    isolated = True

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0

    def run(self, config: SpeedConfig, lr: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        self.count += 1
        files = {name: str(self.workdir / f"{self.count}.{name}")
                 for name in ("input.npy", "output.npy", "result.json")}
        np.save(files["input.npy"], lr)
        job = self.workdir / f"{self.count}.job.json"
        job.write_text(json.dumps({"config": asdict(config), **files}))
        done = subprocess.run([sys.executable, "-m", "upscale_cli.bench.speed", str(job)],
                              capture_output=True, text=True, check=False)
        result_path = Path(files["result.json"])
        if not result_path.is_file():
            lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
            raise BenchError(f"{config.label}: the worker process failed: {lines[-1]}")
        result = json.loads(result_path.read_text())
        if "error" in result:
            raise WorkerError(result["error"], result["exit_code"])
        return result, np.load(files["output.npy"])


def agreement_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB, RGB, 0..255) between two 8-bit outputs; infinite when identical."""
    return psnr(torch.from_numpy(a), torch.from_numpy(b))


def compare_group(rows: list[dict[str, Any]], outputs: list[np.ndarray]) -> None:
    """Add speed-up and agreement against fp32 (same tile) and against untiled (same precision) to one model+size."""
    index = {(row["precision"], row["tile"]): i for i, row in enumerate(rows)}
    for row, output in zip(rows, outputs):
        fp32 = index.get(("fp32", row["tile"]))
        untiled = index.get((row["precision"], "none"))
        row["speedup_vs_fp32"] = None if fp32 is None else (
            rows[fp32]["latency_ms"]["median"] / row["latency_ms"]["median"])
        row["agreement_vs_fp32_db"] = None if fp32 is None or row["precision"] == "fp32" else (
            agreement_db(outputs[fp32], output))
        row["agreement_vs_untiled_db"] = None if untiled is None or row["tile"] == "none" else (
            agreement_db(outputs[untiled], output))


def run_speed(configs: list[SpeedConfig], image: np.ndarray, isolate: bool,
              on_result: Callable[[dict[str, Any]], None],
              loaded: dict[tuple[str, str], Any] | None = None) -> list[dict[str, Any]]:
    """Measure every configuration (grouped by model and size) and return their figures with comparisons.

    In-process runs reuse the upscalers in `loaded`, keyed by (model, precision).
    """
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="upscale-bench-") as workdir:
        runner = Isolated(Path(workdir)) if isolate else InProcess(dict(loaded or {}))
        for _, group in groupby(configs, key=lambda c: (c.model, c.size)):
            group_rows, outputs = [], []
            for config in group:
                result, output = runner.run(config, fit_to_size(image, config.size))
                result["isolated"] = runner.isolated
                on_result(result)
                group_rows.append(result)
                outputs.append(output)
            compare_group(group_rows, outputs)
            rows += group_rows
    return rows


def worker_main(job_path: str) -> int:
    """Measure the one configuration described in a job file and write its result (or error) as JSON."""
    job = json.loads(Path(job_path).read_text())
    config = SpeedConfig(**job["config"])
    try:
        result, output = measure(load_for(config), np.load(job["input.npy"]), config)
        np.save(job["output.npy"], output)
    except UpscaleError as exc:
        result = {"error": str(exc), "exit_code": int(exc.exit_code)}
    Path(job["result.json"]).write_text(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
