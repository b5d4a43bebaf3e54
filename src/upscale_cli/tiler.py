"""Tiled inference: run any model over overlapping tiles and blend them so that no seams show.

The image is cut into regions that overlap by `overlap` LR pixels. Each region is run on an input
window grown by `overlap` on every side, so for a model whose receptive radius is at most `overlap`
the tiled output equals the untiled one. Overlapping outputs are feathered together. Running out of
memory shrinks the tiles; a non-finite tile in bf16/fp16 is redone in fp32.

`align` (default 1) makes every region and input-window boundary a multiple of `align` LR pixels,
except boundaries at the image end; models with a latent grid coarser than the LR image (SRFlow's
z at LR/2) need it. The caller pads the image to a multiple of `align` so that every window is
aligned and has an aligned size, and crops the output afterwards.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from .errors import InferenceError

TILE_PRECISIONS = ("fp32", "bf16", "fp16")
Span = tuple[int, int]


@dataclass(frozen=True)
class Window:
    """A tile: the LR region whose output it contributes (top, left, height, width) and the larger
    input window read around it (the region grown by the overlap on each side, clamped to the image)."""

    top: int
    left: int
    height: int
    width: int
    in_top: int
    in_left: int
    in_height: int
    in_width: int


class TileRunner(Protocol):
    """What a model must offer to be run tile by tile."""

    scale: int

    def prepare(self, image: torch.Tensor) -> object:
        """Per-image state computed once from the whole LR image (1, C, H, W), so that all tiles agree."""
        ...

    def run_tile(self, tile: torch.Tensor, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        """(B, C, h, w) input windows -> (B, C_out, h*scale, w*scale) float32; `windows` says where each sits."""
        ...


def tile_spans(length: int, tile: int, overlap: int, align: int = 1) -> list[Span]:
    """Equal-length regions [start, end) covering [0, length), each at most `tile` long, neighbours
    overlapping by at least `overlap`: the fewest such regions, spread evenly (strides differ by <= 1 px).

    With `align` > 1 the same is done in units of `align` px (tile rounded down, overlap rounded up),
    so every boundary is a multiple of `align` except the end of an image whose length is not.
    """
    if length < 1 or tile < 1 or overlap < 0 or align < 1:
        raise ValueError(f"bad tiling: length={length}, tile={tile}, overlap={overlap}, align={align}")
    if align > 1:
        if length <= tile:
            return [(0, length)]
        units, tile_units, overlap_units = -(-length // align), tile // align, -(-overlap // align)
        if tile_units <= overlap_units:
            raise ValueError(f"the tile size ({tile}) must be larger than the tile overlap ({overlap}) "
                             f"once both are aligned to {align} px")
        spans = tile_spans(units, tile_units, overlap_units)
        return [(start * align, min(end * align, length)) for start, end in spans]
    if length <= tile:
        return [(0, length)]
    if tile <= overlap:
        raise ValueError(f"the tile size ({tile}) must be larger than the tile overlap ({overlap})")
    count = -(-(length - overlap) // (tile - overlap))
    size = -(-(length + (count - 1) * overlap) // count)
    starts = [index * (length - size) // (count - 1) for index in range(count)]
    return [(start, start + size) for start in starts]


def make_windows(height: int, width: int, tile: int | None, overlap: int, align: int = 1) -> list[Window]:
    """All tiles of a height x width image in row-major order; `tile` None gives one window for the whole image."""
    rows, cols = _grid(height, width, tile, overlap, align)
    return [_window(row, col, overlap, height, width, align) for row in rows for col in cols]


def upscale_tiled(
    runner: TileRunner,
    image: torch.Tensor,
    *,
    tile: int | None,
    overlap: int,
    precision: str = "fp32",
    batch: int = 1,
    min_tile: int = 16,
    state: object = None,
    prepared: bool = False,
    on_tile: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] | None = None,
    align: int = 1,
) -> torch.Tensor:
    """Upscale a (1, C, H, W) float32 image tile by tile into (1, C_out, H*s, W*s) float32.

    `runner.prepare` is called once unless `prepared` (then `state` is used); `on_tile(done, total)`
    reports progress; `warn` receives notices about fp32 redos and out-of-memory tile shrinking;
    `align` aligns every tile boundary to a multiple of that many LR px (see the module docstring); an
    image whose size is not a multiple of `align` is padded by reflection and the result cropped.
    """
    _check_arguments(image, tile, overlap, precision, batch, align)
    height, width = image.shape[-2:]
    if height % align or width % align:
        padded = pad_to_multiple(image, align)
        out = upscale_tiled(runner, padded, tile=tile, overlap=overlap, precision=precision, batch=batch,
                            min_tile=min_tile, state=state, prepared=prepared, on_tile=on_tile, warn=warn, align=align)
        return out[..., : height * runner.scale, : width * runner.scale]
    rows, cols = _grid(height, width, tile, overlap, align)
    with torch.no_grad():
        if not prepared:
            state = runner.prepare(image)
        first_tile = tile if tile is not None else max(height, width)
        engine = _Engine(runner, image, state, first_tile, overlap, precision, min_tile, warn, align)
        return engine.render(rows, cols, batch, on_tile)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to a multiple of `multiple` by reflection (replication where reflection cannot)."""
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return image
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


def auto_tile_size(
    bytes_per_lr_pixel: int,
    available_bytes: int,
    overlap: int,
    precision: str,
    *,
    minimum: int = 32,
    maximum: int = 1024,
    fraction: float = 0.5,
) -> int:
    """Largest tile (a multiple of 8 LR px) whose input window fits in `fraction` of the available memory.

    The window is (tile + 2*overlap)^2 pixels at `bytes_per_lr_pixel` (half that in bf16/fp16); the
    result is clamped to [minimum, maximum].
    """
    budget = int(available_bytes * fraction) * (1 if precision == "fp32" else 2)
    side = math.isqrt(max(budget, 0) // max(bytes_per_lr_pixel, 1))
    tile = min(side - 2 * overlap, maximum) // 8 * 8
    return max(tile, minimum)


def available_memory(device: torch.device) -> int:
    """Free bytes on `device`: CUDA's free memory, or the CPU's MemAvailable (falling back to free pages)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return _mem_available() or os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors, the CPU allocator's "can't allocate memory" and Python's MemoryError."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _mem_available() -> int | None:
    """MemAvailable from /proc/meminfo in bytes, or None where there is no such file."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _check_arguments(image: torch.Tensor, tile: int | None, overlap: int, precision: str, batch: int,
                     align: int = 1) -> None:
    """Reject calls that are programming errors before any work is done."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected a (1, C, H, W) image, got shape {tuple(image.shape)}")
    if tile is not None and tile < 1:
        raise ValueError(f"the tile size must be positive, got {tile}")
    if overlap < 0:
        raise ValueError(f"the tile overlap must not be negative, got {overlap}")
    if precision not in TILE_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (use {', '.join(TILE_PRECISIONS)})")
    if batch < 1:
        raise ValueError(f"the tile batch must be at least 1, got {batch}")
    if align < 1:
        raise ValueError(f"the tile alignment must be at least 1, got {align}")
    if tile is not None and tile < align:
        raise ValueError(f"the tile size ({tile}) must be at least the alignment ({align})")


def _grid(height: int, width: int, tile: int | None, overlap: int, align: int = 1) -> tuple[list[Span], list[Span]]:
    """Row and column spans of the tiling (one span per axis when `tile` is None)."""
    if tile is None:
        return [(0, height)], [(0, width)]
    return tile_spans(height, tile, overlap, align), tile_spans(width, tile, overlap, align)


def _window(rows: Span, cols: Span, overlap: int, height: int, width: int, align: int = 1) -> Window:
    """The tile for one region, its input window grown by `overlap` (outwards to a multiple of `align`)
    and clamped to the image."""
    in_top = max(0, (rows[0] - overlap) // align * align)
    in_bottom = min(height, -(-(rows[1] + overlap) // align) * align)
    in_left = max(0, (cols[0] - overlap) // align * align)
    in_right = min(width, -(-(cols[1] + overlap) // align) * align)
    return Window(
        rows[0], cols[0], rows[1] - rows[0], cols[1] - cols[0],
        in_top, in_left, in_bottom - in_top, in_right - in_left,
    )


def _batches(windows: list[Window], size: int) -> list[list[Window]]:
    """Windows grouped by input shape (in order of first appearance) and cut into batches of at most `size`."""
    groups: dict[tuple[int, int], list[Window]] = {}
    for window in windows:
        groups.setdefault((window.in_height, window.in_width), []).append(window)
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


def _ramp(length: int) -> torch.Tensor:
    """Weights rising linearly across an overlap of `length` px: (i + 0.5) / length, so facing ramps sum to 1."""
    return (torch.arange(length, dtype=torch.float32) + 0.5) / length


def _feather(spans: list[Span], scale: int) -> list[torch.Tensor]:
    """Output-pixel weights of each span: 1, ramping down over the overlap with each neighbour (none at the ends)."""
    weights = []
    for index, (start, end) in enumerate(spans):
        weight = torch.ones((end - start) * scale)
        lead = (spans[index - 1][1] - start) * scale if index > 0 else 0
        trail = (end - spans[index + 1][0]) * scale if index + 1 < len(spans) else 0
        if lead > 0:
            weight[:lead] = torch.minimum(weight[:lead], _ramp(lead))
        if trail > 0:
            weight[-trail:] = torch.minimum(weight[-trail:], _ramp(trail).flip(0))
        weights.append(weight)
    return weights


class _Canvas:
    """Accumulates feathered region outputs over a grid of spans and divides by the summed weights at the end.

    The weights are separable and every (row, column) pair is added, so the summed weight is the outer
    product of the per-axis sums: only 1-D weight sums are stored.
    """

    def __init__(self, rows: list[Span], cols: list[Span], scale: int, device: torch.device) -> None:
        self.top, self.left, self.scale = rows[0][0], cols[0][0], scale
        self.row_weights = {span: w.to(device) for span, w in zip(rows, _feather(rows, scale))}
        self.col_weights = {span: w.to(device) for span, w in zip(cols, _feather(cols, scale))}
        self.row_sum = self._axis_sum(self.row_weights, self.top, rows[-1][1], device)
        self.col_sum = self._axis_sum(self.col_weights, self.left, cols[-1][1], device)
        self.total: torch.Tensor | None = None

    def _axis_sum(self, weights: dict[Span, torch.Tensor], start: int, end: int, device: torch.device) -> torch.Tensor:
        """Summed weight of every output pixel along one axis."""
        total = torch.zeros((end - start) * self.scale, device=device)
        for (span_start, _), weight in weights.items():
            offset = (span_start - start) * self.scale
            total[offset : offset + len(weight)] += weight
        return total

    def add(self, window: Window, output: torch.Tensor) -> None:
        """Blend in the (1, C_out, height*s, width*s) output of the region `window`."""
        row_weight = self.row_weights[(window.top, window.top + window.height)]
        col_weight = self.col_weights[(window.left, window.left + window.width)]
        if self.total is None:
            shape = (1, output.shape[1], len(self.row_sum), len(self.col_sum))
            self.total = output.new_zeros(shape)
        y, x = (window.top - self.top) * self.scale, (window.left - self.left) * self.scale
        region = self.total[..., y : y + len(row_weight), x : x + len(col_weight)]
        region += output * (row_weight[:, None] * col_weight[None, :])

    def result(self) -> torch.Tensor:
        """The blended output of the whole area."""
        assert self.total is not None, "no region was added"
        return self.total.div_(self.row_sum[:, None] * self.col_sum[None, :])


class _Engine:
    """One image's tiled run: the runner and its state, and the current tile size, which shrinks on OOM."""

    def __init__(
        self,
        runner: TileRunner,
        image: torch.Tensor,
        state: object,
        tile: int,
        overlap: int,
        precision: str,
        min_tile: int,
        warn: Callable[[str], None] | None,
        align: int = 1,
    ) -> None:
        self.runner, self.image, self.state = runner, image, state
        self.tile, self.overlap, self.precision, self.min_tile = tile, overlap, precision, min_tile
        self.align = align
        self.warn = warn or (lambda message: None)

    def render(
        self, rows: list[Span], cols: list[Span], batch: int, on_tile: Callable[[int, int], None] | None
    ) -> torch.Tensor:
        """Run every region (batching same-shaped windows) and blend the results into the output image."""
        height, width = self.image.shape[-2:]
        windows = [_window(row, col, self.overlap, height, width, self.align) for row in rows for col in cols]
        canvas = _Canvas(rows, cols, self.runner.scale, self.image.device)
        done = 0
        for chunk in _batches(windows, batch):
            for window, output in zip(chunk, self._batch_outputs(chunk)):
                canvas.add(window, output)
                done += 1
                if on_tile is not None:
                    on_tile(done, len(windows))
        return canvas.result()

    def _batch_outputs(self, chunk: list[Window]) -> list[torch.Tensor]:
        """Region outputs of a batch; on OOM (or once tiles have shrunk) the regions are done one by one."""
        if len(chunk) > 1 and all(self._fits(window) for window in chunk):
            try:
                return self._run(chunk)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
            _free_cache()  # outside the except block, so the failed attempt's tensors are released
        return [self._region(window) for window in chunk]

    def _region(self, window: Window) -> torch.Tensor:
        """The output of one region: run whole if it fits the current tile size, else split into sub-regions."""
        if self._fits(window):
            try:
                return self._run([window])[0]
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
            _free_cache()
            self._shrink(window)
        return self._split(window)

    def _fits(self, window: Window) -> bool:
        """Whether the region is no larger than the current tile size."""
        return max(window.height, window.width) <= self.tile

    def _shrink(self, window: Window) -> None:
        """Halve the tile that ran out of memory, refusing to go below min_tile or down to the overlap."""
        failed = max(window.height, window.width)
        smaller = min(self.tile, failed) // 2 // self.align * self.align
        floor = max(self.min_tile, (-(-self.overlap // self.align) + 1) * self.align)
        if smaller < floor:
            raise InferenceError(
                f"out of memory even with {failed} px tiles (the minimum is {floor} px); "
                "try --device cpu or a smaller image"
            )
        self.warn(f"out of memory with {failed} px tiles; continuing with {smaller} px tiles")
        self.tile = smaller

    def _split(self, window: Window) -> torch.Tensor:
        """A region's output assembled from sub-regions of the current tile size, blended like the image's tiles."""
        height, width = self.image.shape[-2:]
        rows = [(window.top + a, window.top + b)
                for a, b in tile_spans(window.height, self.tile, self.overlap, self.align)]
        cols = [(window.left + a, window.left + b)
                for a, b in tile_spans(window.width, self.tile, self.overlap, self.align)]
        canvas = _Canvas(rows, cols, self.runner.scale, self.image.device)
        for row in rows:
            for col in cols:
                sub = _window(row, col, self.overlap, height, width, self.align)
                canvas.add(sub, self._region(sub))
        return canvas.result()

    def _run(self, windows: list[Window]) -> list[torch.Tensor]:
        """Run same-shaped windows as one batch and return each region's output, redoing non-finite tiles in fp32."""
        tiles = torch.cat([_crop_input(self.image, window) for window in windows])
        outputs = self._call(tiles, windows, self.precision)
        results = []
        for index, window in enumerate(windows):
            output = outputs[index : index + 1]
            if not torch.isfinite(output).all():
                output = self._redo_in_fp32(tiles[index : index + 1], window)
            results.append(_crop_output(output, window, self.runner.scale))
        return results

    def _redo_in_fp32(self, tile: torch.Tensor, window: Window) -> torch.Tensor:
        """Rerun a tile whose reduced-precision output had NaN/Inf; non-finite fp32 output is fatal."""
        where = f"the tile at y={window.top}, x={window.left} ({window.height}x{window.width} LR px)"
        if self.precision == "fp32":
            raise InferenceError(f"the model produced NaN/Inf values for {where} in fp32")
        self.warn(f"NaN/Inf in {self.precision} for {where}; redoing it in fp32")
        output = self._call(tile, [window], "fp32")
        if not torch.isfinite(output).all():
            raise InferenceError(f"the model produced NaN/Inf values for {where} even in fp32")
        return output

    def _call(self, tiles: torch.Tensor, windows: list[Window], precision: str) -> torch.Tensor:
        """runner.run_tile with its output shape checked and moved to the image's device as float32."""
        output = self.runner.run_tile(tiles, self.state, windows, precision)
        scale = self.runner.scale
        expected = (tiles.shape[0], tiles.shape[2] * scale, tiles.shape[3] * scale)
        if output.ndim != 4 or (output.shape[0], *output.shape[2:]) != expected:
            raise InferenceError(
                f"the model returned shape {tuple(output.shape)} for input tiles {tuple(tiles.shape)} at x{scale}"
            )
        return output.to(device=self.image.device, dtype=torch.float32)


def _crop_input(image: torch.Tensor, window: Window) -> torch.Tensor:
    """The input window of a tile."""
    rows = slice(window.in_top, window.in_top + window.in_height)
    cols = slice(window.in_left, window.in_left + window.in_width)
    return image[..., rows, cols]


def _crop_output(output: torch.Tensor, window: Window, scale: int) -> torch.Tensor:
    """The region's own part of a tile's output (dropping the overlap margin)."""
    y, x = (window.top - window.in_top) * scale, (window.left - window.in_left) * scale
    return output[..., y : y + window.height * scale, x : x + window.width * scale]


def _free_cache() -> None:
    """Return cached CUDA blocks to the driver after an out-of-memory error, so the retry has room."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
