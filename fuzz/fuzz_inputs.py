"""Fuzz the decode and checkpoint-load paths with mutated files (issue #27). Not part of CI.

    pip install -e '.[fuzz]'
    python fuzz/fuzz_inputs.py --target png --minutes 10 [--memory-gib 8] [--out fuzz/found]

Targets: png, jpeg, webp, tiff (`image_io.read_image` on a mutated small image of that format) and
checkpoint (`checkpoint.load_model` on a mutated tiny checkpoint: header JSON, metadata and tensor bytes).
Hypothesis draws the mutations (byte flips, overwrites, insertions, deletions, truncations, chunk
splices; for checkpoints also edits of the JSON header's values) and shrinks any failure to a small one.

A case passes when it decodes or fails with the one error type users see (`ImageReadError`,
`CheckpointError`), within `--seconds` per case and under the address-space limit (`--memory-gib`,
applied to the whole process). Anything else (another exception, a hang, a MemoryError) is a finding:
its input is written to `--out` and the run stops with exit 1. Each input is also written to
`--out/last_input` before it runs, so a crash of the interpreter itself leaves the input behind.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import signal
import struct
import sys
import time
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

IMAGE_TARGETS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "tiff": "TIFF"}


class CaseTimeout(Exception):
    pass


def seed_image(fmt: str) -> bytes:
    """A small image with alpha (where the format has it), EXIF and an ICC-like profile: many code paths."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((24, 20, 4)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGBA" if fmt != "JPEG" else None)
    if fmt == "JPEG":
        image = image.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the rotate path
    exif[0x010F] = "fuzz camera"
    buffer = io.BytesIO()
    image.save(buffer, fmt, exif=exif.tobytes())
    return buffer.getvalue()


def seed_checkpoint() -> bytes:
    import torch

    from upscale_cli.archs.srresnet import SRResNet, SRResNetConfig
    from upscale_cli.checkpoint import CheckpointInfo, config_dict
    from safetensors.torch import save

    torch.manual_seed(0)
    config = SRResNetConfig(channels=4, blocks=1)
    tensors = {k: v.contiguous() for k, v in SRResNet(config).state_dict().items()}
    return save(tensors, metadata=CheckpointInfo("srresnet", 4, config_dict(config), name="fuzz").to_metadata())


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "splice", "int"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice" and data:  # repeat a chunk of the file elsewhere (chunks, markers, IFDs)
            start = draw(st.integers(0, len(data) - 1))
            data[at:at] = data[start : start + draw(st.integers(1, 256))]
        elif kind == "int" and at + 4 <= len(data):  # a length, offset or size field set to an edge value
            value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, len(data), len(data) + 1]))
            data[at : at + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), value)
    return bytes(data)


@st.composite
def mutated_checkpoint(draw: st.DrawFn, seed: bytes) -> bytes:
    """Either raw byte mutations, or an edit of one value in the JSON header (shapes, dtypes, offsets,
    metadata strings such as the config), re-serialised with a consistent header length."""
    if draw(st.booleans()):
        return draw(mutated(seed))
    length = int.from_bytes(seed[:8], "little")
    header = json.loads(seed[8 : 8 + length])
    name = draw(st.sampled_from(sorted(header)))
    if name == "__metadata__":
        key = draw(st.sampled_from(sorted(header[name])))
        config = json.loads(header[name]["config"])
        if key == "config" and draw(st.booleans()):
            field = draw(st.sampled_from(sorted(config)))
            config[field] = draw(st.one_of(st.integers(-2, 10**12), st.text(max_size=8), st.none(),
                                           st.lists(st.integers(-1, 99), max_size=4), st.floats()))
            header[name][key] = json.dumps(config)
        else:
            header[name][key] = draw(st.text(max_size=40))
    else:
        entry = header[name]
        part = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        if part == "dtype":
            entry[part] = draw(st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I32", "BOOL", "U8", "XX"]))
        else:
            entry[part] = draw(st.lists(st.integers(-1, 2**40), min_size=0, max_size=5))
    body = json.dumps(header).encode()
    return len(body).to_bytes(8, "little") + body + seed[8 + length :]


def run_case(target: str, data: bytes, out: Path, seconds: float) -> None:
    from upscale_cli.errors import CheckpointError, ImageReadError

    (out / "last_input").write_bytes(data)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        if target == "checkpoint":
            from upscale_cli.checkpoint import load_model

            path = out / "case.safetensors"
            path.write_bytes(data)
            load_model(path)
        else:
            from upscale_cli.image_io import read_image

            read_image(data, max_pixels=4_000_000)
    except (ImageReadError, CheckpointError):
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=[*IMAGE_TARGETS, "checkpoint"], required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="per case")
    parser.add_argument("--memory-gib", type=float, default=8.0, help="address space (torch alone maps ~2 GiB)")
    parser.add_argument("--out", type=Path, default=Path("fuzz/found"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    limit = int(args.memory_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def timeout(signum: int, frame: object) -> None:
        raise CaseTimeout(f"a case ran past {args.seconds} s")

    signal.signal(signal.SIGALRM, timeout)
    seed = seed_checkpoint() if args.target == "checkpoint" else seed_image(IMAGE_TARGETS[args.target])
    strategy = mutated_checkpoint(seed) if args.target == "checkpoint" else mutated(seed)
    cases = 0

    @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def fuzz(data: bytes) -> None:
        nonlocal cases
        cases += 1
        run_case(args.target, data, args.out, args.seconds)

    started = time.monotonic()
    try:
        while time.monotonic() < started + args.minutes * 60:  # rounds of fresh random examples
            fuzz()
    except Exception as exc:  # Hypothesis re-raises the shrunk failure: keep its input
        finding = args.out / f"{args.target}_{int(time.time())}.bin"
        (args.out / "last_input").replace(finding)
        print(f"{args.target}: FINDING after {cases} cases: {type(exc).__name__}: {exc}".splitlines()[0])
        print(f"  input: {finding}")
        sys.exit(1)
    print(f"{args.target}: {cases} cases in {time.monotonic() - started:.0f} s, no finding")


if __name__ == "__main__":
    main()
