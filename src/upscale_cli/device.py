"""Choosing the device and the numeric precision, and the autocast context that applies it."""

from __future__ import annotations

import contextlib

import torch

from upscale_cli.cpu import cpu_has_native_bf16

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU; `cuda:N` is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's message lists two dozen device types this program does not run on
        raise ValueError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA was asked for but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return device


def resolve_precision(name: str, device: torch.device, bf16: bool = True, fp16: bool = True) -> str:
    """The concrete precision for `auto`, and refusals for combinations that cannot work.

    auto: bf16 on CPUs with native bf16, fp32 on other CPUs, bf16 (or fp16 without bf16 support)
    on CUDA; `bf16` / `fp16` False (the model's descriptor) keep auto from picking that precision.
    fp16 is never used on the CPU.
    """
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r} (use {', '.join(PRECISIONS)})")
    if name == "auto":
        if device.type == "cuda":
            if bf16 and torch.cuda.is_bf16_supported():
                return "bf16"
            return "fp16" if fp16 else "fp32"
        return "bf16" if bf16 and cpu_has_native_bf16() else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is not supported on the CPU (use bf16 or fp32)")
    return name


def emulated_bf16_warning(device: torch.device, precision: str) -> str | None:
    """A warning for bf16 on a CPU that only emulates it, where it runs several times slower than fp32."""
    if precision != "bf16" or device.type != "cpu" or cpu_has_native_bf16():
        return None
    return ("this CPU has no native bf16 (AMX or AVX-512 BF16): bf16 is emulated here and runs several times "
            "slower than fp32 (compare with `upscale bench speed --precision fp32,bf16`); "
            "--precision auto picks fp32 on such CPUs")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for `precision` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def channels_last_helps(device: torch.device, precision: str) -> bool:
    """channels_last is what makes oneDNN's bf16 convolutions fast on the CPU (and tensor cores on CUDA)."""
    return precision != "fp32" or device.type == "cuda"
