"""What the benchmarks print and write: the environment record, rich tables, JSON and the quality/speed plot."""

from __future__ import annotations

import json
import math
import platform
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from upscale_cli.errors import ExitCode, InferenceError, UpscaleError

PLOT_HINT = "pip install 'upscale-cli[plot]'"


class BenchError(UpscaleError):
    """A benchmark cannot run as asked (bad data folder, option, input image or worker failure)."""

    exit_code = ExitCode.USAGE


@contextmanager
def typed_errors(label: str) -> Iterator[None]:
    """Inside, a ValueError (impossible settings) becomes a BenchError and a RuntimeError an InferenceError."""
    try:
        yield
    except ValueError as exc:
        raise BenchError(f"{label}: {exc}") from None
    except RuntimeError as exc:
        raise InferenceError(f"{label}: {exc}".strip().splitlines()[0]) from None


def cpu_model() -> str:
    """The CPU's "model name" from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment(device: Any) -> dict[str, Any]:
    """Where the figures were measured: device, CPU, threads, torch and Python versions."""
    import torch

    from upscale_cli import __version__
    from upscale_cli.device import cpu_has_native_bf16

    env: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "upscale_cli": __version__,
    }
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def describe_environment(env: dict[str, Any]) -> str:
    """One line for the terminal: device, CPU model, threads and torch version."""
    where = env.get("gpu") or env["cpu"]
    return f"{env['device']} ({where}), {env['threads']} threads, torch {env['torch']}"


def json_safe(value: Any) -> Any:
    """`value` with infinities as the strings "inf"/"-inf" and NaN as null, so the file is strict JSON."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` as indented strict JSON, creating the parent folder."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise BenchError(f"--json {path}: cannot write ({exc.strerror or exc})") from None


def print_table(table: Any) -> None:
    """Print a rich table on stdout, at least 160 columns wide when stdout is not a terminal."""
    from rich.console import Console

    Console(width=shutil.get_terminal_size((160, 24)).columns).print(table)


def fmt_db(value: float | None, digits: int = 2) -> str:
    """A dB figure for a table cell; identical images show as "identical"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "identical" if math.isinf(value) else f"{value:.{digits}f}"


def fmt_num(value: float | None, digits: int) -> str:
    """A plain figure for a table cell, "-" when absent."""
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def quality_table(rows: list[dict[str, Any]], scale: int) -> Any:
    """The quality results: one row per dataset, LR source, model, precision and temperature."""
    from rich.table import Table

    stochastic = any(row["tau"] is not None for row in rows)
    table = Table(title=f"Quality x{scale}: PSNR/SSIM on Y (BT.601), {scale} px border shaved, "
                        "SSIM 11x11 Gaussian sigma 1.5")
    columns = ["data", "LR", "model", "prec.", "PSNR-Y", "SSIM-Y", "PSNR-RGB", "sharpness", "LR-PSNR"]
    columns += ["tau", "samples", "diversity"] if stochastic else []
    density = any("nll_bpd" in row["mean"] for row in rows)
    columns += ["NLL bits/dim"] if density else []
    perceptual = any("stlpips" in row["mean"] for row in rows)
    columns += ["ST-LPIPS"] if perceptual else []
    for name in [*columns, "out MP/s"]:
        table.add_column(name, justify="left" if name in ("data", "LR", "model", "prec.") else "right",
                         overflow="fold")
    for row in rows:
        mean = row["mean"]
        cells = [row["dataset"], row["lr"], row["model"], row["precision"], fmt_db(mean["psnr_y"]),
                 fmt_num(mean["ssim_y"], 4), fmt_db(mean["psnr_rgb"]), fmt_num(mean["sharpness"], 3),
                 fmt_db(mean["lr_psnr"])]
        if stochastic:
            cells += ["-" if row["tau"] is None else f"{row['tau']:g}", str(row["samples"]),
                      fmt_num(mean.get("diversity"), 2)]
        if density:
            cells.append(fmt_num(mean.get("nll_bpd"), 3))
        if perceptual:
            cells.append(fmt_num(mean.get("stlpips"), 4))
        table.add_row(*cells, fmt_num(row["megapixels_per_second"], 2))
    return table


def speed_table(rows: list[dict[str, Any]], memory_note: str) -> Any:
    """The speed results: latency median and spread, throughput, speed-up, agreement and memory."""
    from rich.table import Table

    table = Table(title="Speed: median of the timed runs after warm-up; speed-up and PSNR agreement against "
                        "fp32 (same tile) and untiled (same precision)",
                  caption=f"mem: growth of the peak memory during warm-up and runs ({memory_note})")
    for name in ("model", "in px", "out px", "prec.", "tile", "latency ms", "min-max ms", "out MP/s",
                 "vs fp32", "PSNR vs fp32", "PSNR vs untiled", "mem +MB"):
        table.add_column(name, justify="left" if name in ("model", "prec.", "tile") else "right", overflow="fold")
    for row in rows:
        latency = row["latency_ms"]
        table.add_row(
            row["model"], f"{row['size']}", f"{row['out_width']}x{row['out_height']}", row["precision"],
            row["tile"], f"{latency['median']:.1f}", f"{latency['min']:.1f}-{latency['max']:.1f}",
            f"{row['megapixels_per_second']:.3f}",
            "-" if row["speedup_vs_fp32"] is None else f"{row['speedup_vs_fp32']:.2f}x",
            fmt_db(row["agreement_vs_fp32_db"]), fmt_db(row["agreement_vs_untiled_db"]),
            f"{row['memory']['increase_bytes'] / 2**20:.1f}")
    return table


def require_matplotlib() -> None:
    """Fail early, before any measuring, when --plot is asked for but matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BenchError(f"--plot needs matplotlib, which is not installed: {PLOT_HINT}") from None


def plot_quality_speed(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """PSNR-Y against output megapixels per second, one point per model and precision, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    panels: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        panels.setdefault(f"{row['dataset']} ({row['lr']})", []).append(row)
    labels = list(dict.fromkeys(_point_label(row) for row in rows))
    colours = plt.get_cmap("tab10")
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 2, 4.5), squeeze=False)
    for axis, (name, points) in zip(axes[0], panels.items()):
        for point in points:
            label = _point_label(point)
            axis.scatter(point["megapixels_per_second"], point["mean"]["psnr_y"], label=label,
                         color=colours(labels.index(label) % 10), marker="os^Dv"[labels.index(label) // 10 % 5])
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("output megapixels per second")
        axis.set_ylabel("PSNR-Y (dB)")
        axis.set_title(name)
        axis.grid(True, alpha=0.3)
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="center right", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1 - 1.8 / (5 * len(panels) + 2), 1))
    try:
        figure.savefig(path, dpi=120)
    except OSError as exc:
        raise BenchError(f"--plot {path}: cannot write ({exc.strerror or exc})") from None
    finally:
        plt.close(figure)


def _point_label(row: dict[str, Any]) -> str:
    """"model precision", and the temperature for stochastic models."""
    label = f"{row['model']} {row['precision']}"
    return label if row["tau"] is None else f"{label} tau={row['tau']:g}"
