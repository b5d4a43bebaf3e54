"""Tiled inference: run any model over overlapping tiles and blend them so that no seams show.

The image is cut into regions that overlap by `overlap` input pixels. Each region is run on an input
window grown by `overlap` on every side, so for a model whose receptive radius is at most `overlap`
the tiled output equals the untiled one. Overlapping outputs are feathered together. Running out of
memory shrinks the tiles; a non-finite tile in bf16/fp16 is redone in fp32.

A model may take several named inputs (`TileInput`): besides the image, inputs at the image's or the
output's resolution are cropped, padded and batched with it, and whole inputs (a style image) are
handed over as they are. One `TileSpec` says how to tile.

Per-image work runs before the tiles, inside the out-of-memory back-off: `runner.prepare` (a
representation of the whole image, a noise field), and for runners with `reduce_tile` a first tiled
pass over disjoint regions whose statistics (sums, counts, covariances) are added up in float64 and
handed to `runner.apply_statistics`, so that a model needing image-wide statistics stays exact. That
pass reads the second pass's input windows (each region a piece of one tile's region, `partition_spans`),
so a runner may keep what it computed on a window for the second pass.

`TileSpec.align` (default 1) makes every region and input-window boundary a multiple of `align` input
pixels, except boundaries at the image end; models with a latent grid coarser than the input need it.
The image (and every spatial input) is padded by reflection to a multiple of `align` and to at least
`minimum` pixels a side, and the output cropped afterwards.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

import torch
import torch.nn.functional as F

from .errors import InferenceError

TILE_PRECISIONS = ("fp32", "bf16", "fp16")
IMAGE = "image"  # the name of the main input among a runner's tiles
MIN_PREPARE_PIXELS = 64 * 64  # prepare's pixel budget is halved on out-of-memory down to this
Span = tuple[int, int]


@dataclass(frozen=True)
class Window:
    """A tile: the region whose output it contributes (top, left, height, width) and the larger
    input window read around it (the region grown by the overlap on each side, clamped to the image)."""

    top: int
    left: int
    height: int
    width: int
    in_top: int
    in_left: int
    in_height: int
    in_width: int


@dataclass(frozen=True)
class TileSpec:
    """How to tile: tile side (None: the whole image at once), overlap, windows per batch, the smallest
    tile out-of-memory halving may reach, boundary alignment and the smallest input side (from the model's
    size requirements)."""

    tile: int | None = None
    overlap: int = 0
    batch: int = 1
    min_tile: int = 16
    align: int = 1
    minimum: int = 1

    def check(self) -> None:
        """Reject specs that are programming errors before any work is done."""
        if self.tile is not None and self.tile < 1:
            raise ValueError(f"the tile size must be positive, got {self.tile}")
        if self.overlap < 0:
            raise ValueError(f"the tile overlap must not be negative, got {self.overlap}")
        if self.batch < 1:
            raise ValueError(f"the tile batch must be at least 1, got {self.batch}")
        if self.align < 1:
            raise ValueError(f"the tile alignment must be at least 1, got {self.align}")
        if self.minimum < 1:
            raise ValueError(f"the minimum input side must be at least 1, got {self.minimum}")
        if self.tile is not None and self.tile < self.align:
            raise ValueError(f"the tile size ({self.tile}) must be at least the alignment ({self.align})")


@dataclass(frozen=True)
class TileInput:
    """A named input: a (1, C, h, w) tensor and how many of its pixels lie on one image pixel per side
    (1 at the image's size, the model's scale at the output's size), or None for a whole input."""

    tensor: torch.Tensor
    scale: int | None = 1


Inputs = Mapping[str, TileInput]
Tiles = Mapping[str, torch.Tensor]


class TileRunner(Protocol):
    """What a model must offer to be run tile by tile."""

    scale: int

    def prepare(self, inputs: Inputs, max_pixels: int | None) -> object:
        """Per-image state computed once from the whole (padded) inputs, so that all tiles agree; after an
        out-of-memory error it is asked again with a pixel budget for its whole-image work."""
        ...

    def run_tile(self, tiles: Tiles, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        """(B, C, h, w) input windows (`tiles[IMAGE]`, the other inputs cropped to match) ->
        (B, C_out, h*scale, w*scale) float32; `windows` says where each sits."""
        ...


class ReducingRunner(TileRunner, Protocol):
    """A runner whose output needs statistics of the whole image, gathered in a first tiled pass."""

    def reduce_tile(self, tiles: Tiles, state: object, windows: list[Window], precision: str) -> dict[str, torch.Tensor]:
        """Per window (leading axis B) sums over that window's own region only: the regions of this pass
        are disjoint, so adding them up over all windows gives the whole image's sums."""
        ...

    def apply_statistics(self, state: object, totals: dict[str, torch.Tensor]) -> object:
        """The state of the second pass, from `prepare`'s state and the float64 totals."""
        ...


WINDOW_CACHE_BYTES = 1 << 30  # the most a WindowCache keeps per image (and at most a quarter of free memory)


class WindowCache:
    """What a reducing runner computed on its statistics pass's windows (a flow's latents), kept for its second
    pass, which reads the same input windows: at most a budget of bytes per image, each value used once, and
    only for a tile equal to the one it was computed from (a state `prepared` on another image misses)."""

    def __init__(self) -> None:
        self.entries: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.room = 0

    def reset(self, device: torch.device) -> None:
        """Forget everything and set the budget for a new image (a runner's `prepare`)."""
        self.entries.clear()
        self.room = min(WINDOW_CACHE_BYTES, available_memory(device) // 4)

    def keep(self, tiles: torch.Tensor, windows: list[Window], key: object, values: torch.Tensor) -> None:
        """Keep `values[i]`, computed from `tiles[i]` of `windows[i]`, if the whole batch fits what is left."""
        size = tiles.numel() * tiles.element_size() + values.numel() * values.element_size()
        if size > self.room:
            return
        self.room -= size
        for index, window in enumerate(windows):
            self.entries[_window_key(window, key)] = (tiles[index : index + 1], values[index : index + 1])

    def take(self, tiles: torch.Tensor, windows: list[Window], key: object,
             compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The values of every window of the batch: the kept ones where the tile is the same, the others from
        `compute(the tiles that missed)`, one batch."""
        found: list[torch.Tensor | None] = []
        for index, window in enumerate(windows):
            seen, values = self.entries.pop(_window_key(window, key), (None, None))
            found.append(values if seen is not None and torch.equal(seen, tiles[index : index + 1]) else None)
        missing = [index for index, values in enumerate(found) if values is None]
        if missing:
            fresh = compute(tiles if len(missing) == len(windows) else tiles[missing])
            for position, index in enumerate(missing):
                found[index] = fresh[position : position + 1]
        return torch.cat(found) if len(found) > 1 else found[0]  # type: ignore[arg-type]


def _window_key(window: Window, key: object) -> tuple:
    return window.in_top, window.in_left, window.in_height, window.in_width, key


def region_of(window: Window, factor: float = 1.0) -> tuple[slice, slice]:
    """Where a window's own region lies inside its input window, on a grid `factor` times the input's."""
    top, left = round((window.top - window.in_top) * factor), round((window.left - window.in_left) * factor)
    return slice(top, top + round(window.height * factor)), slice(left, left + round(window.width * factor))


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


def disjoint_spans(length: int, tile: int, align: int = 1) -> list[Span]:
    """Regions [start, end) that partition [0, length) into the fewest pieces of at most `tile` px,
    as even as alignment allows (boundaries multiples of `align`, but for the end)."""
    units, tile_units = -(-length // align), max(1, tile // align)
    count = -(-units // tile_units)
    bounds = [min(length, index * units // count * align) for index in range(count + 1)]
    return [(start, end) for start, end in zip(bounds, bounds[1:]) if end > start]


def partition_spans(spans: list[Span], align: int = 1) -> list[Span]:
    """One piece inside each of the overlapping `spans` (in order, covering [0, end)), cut halfway through each
    overlap (rounded down to a multiple of `align`): the pieces partition what the spans cover; a piece may be
    empty where three spans overlap."""
    cuts = [(start + end) // 2 // align * align for (_, end), (start, _) in zip(spans, spans[1:])]
    bounds = [spans[0][0], *cuts, spans[-1][1]]
    return list(zip(bounds, bounds[1:]))


def make_windows(height: int, width: int, tile: int | None, overlap: int, align: int = 1) -> list[Window]:
    """All tiles of a height x width image in row-major order; `tile` None gives one window for the whole image."""
    rows, cols = _grid(height, width, tile, overlap, align)
    return [_window(row, col, overlap, height, width, align) for row in rows for col in cols]


def upscale_tiled(
    runner: TileRunner,
    image: torch.Tensor,
    spec: TileSpec = TileSpec(),
    *,
    extras: Mapping[str, TileInput] | None = None,
    precision: str = "fp32",
    on_tile: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] | None = None,
    prepared: Prepared | None = None,
    sink: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """Upscale a (1, C, H, W) float32 image tile by tile into (1, C_out, H*s, W*s) float32.

    `extras` are the runner's other named inputs; `on_tile(done, total)` reports progress (both passes of
    a reducing runner as one count); `warn` receives notices about fp32 redos and out-of-memory shrinking;
    `prepared` (from `image_state`) reuses a per-image state instead of computing it from this image.
    With `sink`, the output is handed to it instead, top to bottom in bands of finished rows ((1, C_out, h,
    W*s), the same values), each as soon as no later tile reaches it: only about one row of tiles of the
    output is ever held. It then returns None.
    """
    _check_arguments(image, spec, precision)
    inputs = _padded_inputs(image, extras, spec)
    height, width = inputs[IMAGE].tensor.shape[-2:]
    rows, cols = _grid(height, width, spec.tile, spec.overlap, spec.align)
    out_height, out_width = image.shape[-2] * runner.scale, image.shape[-1] * runner.scale
    with torch.no_grad():
        engine = _Engine(runner, inputs, None, spec, precision, warn)
        if prepared is None:
            prepared = engine.image_state(on_tile, rows, cols)
        engine.state = prepared.state
        if sink is not None:
            engine.render(rows, cols, on_tile, _cropping(sink, out_height, out_width))
            return None
        out = engine.render(rows, cols, on_tile)
    return out[..., :out_height, :out_width]


def _cropping(sink: Callable[[torch.Tensor], None], height: int, width: int) -> Callable[[torch.Tensor], None]:
    """`sink` handed only the first `height` rows and `width` columns of the bands it is given (the padding cut off)."""
    passed = 0

    def take(band: torch.Tensor) -> None:
        nonlocal passed
        kept = band[..., : max(0, height - passed), :width]
        passed += band.shape[-2]
        if kept.shape[-2]:
            sink(kept)

    return take


@dataclass(frozen=True)
class Prepared:
    """A runner's per-image state, computed by `image_state` (it may be None)."""

    state: object


def image_state(runner: TileRunner, image: torch.Tensor, spec: TileSpec = TileSpec(), *,
                extras: Mapping[str, TileInput] | None = None, precision: str = "fp32",
                warn: Callable[[str], None] | None = None) -> Prepared:
    """What `upscale_tiled` computes before its tiles: `prepare`, and a reducing runner's statistics pass."""
    _check_arguments(image, spec, precision)
    inputs = _padded_inputs(image, extras, spec)
    rows, cols = _grid(*inputs[IMAGE].tensor.shape[-2:], spec.tile, spec.overlap, spec.align)
    with torch.no_grad():
        return _Engine(runner, inputs, None, spec, precision, warn).image_state(None, rows, cols)


def _padded_inputs(image: torch.Tensor, extras: Mapping[str, TileInput] | None, spec: TileSpec) -> dict[str, TileInput]:
    """The image and its extra inputs, the spatial ones padded to the size requirements."""
    inputs = {IMAGE: TileInput(image, 1), **(extras or {})}
    height, width = _padded_size(image.shape[-2], spec), _padded_size(image.shape[-1], spec)
    if (height, width) == tuple(image.shape[-2:]):
        return inputs
    return {name: _pad_input(item, height, width) for name, item in inputs.items()}


def prepare_with_backoff(runner: TileRunner, inputs: Inputs, warn: Callable[[str], None] | None = None) -> object:
    """`runner.prepare`, asked again with half the pixel budget after each out-of-memory error."""
    image = inputs[IMAGE].tensor
    limit: int | None = None
    while True:
        try:
            return runner.prepare(inputs, limit)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        _free_cache()  # outside the except block, so the failed attempt's tensors are released
        limit = (image.shape[-2] * image.shape[-1] if limit is None else limit) // 2
        if limit < MIN_PREPARE_PIXELS:
            raise InferenceError(f"out of memory preparing the whole image, even on {2 * limit} pixels; "
                                 "try --device cpu or a smaller image")
        if warn is not None:
            warn(f"out of memory preparing the whole image; retrying on at most {limit} pixels of it")


def _padded_size(length: int, spec: TileSpec) -> int:
    """A side grown to a multiple of the alignment and to at least the minimum."""
    needed = max(length, spec.minimum)
    return -(-needed // spec.align) * spec.align


def _pad_input(item: TileInput, height: int, width: int) -> TileInput:
    """A spatial input padded at the bottom and right to (height, width) image pixels; whole inputs stay."""
    if item.scale is None:
        return item
    return TileInput(pad_to(item.tensor, height * item.scale, width * item.scale), item.scale)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to a multiple of `multiple` by reflection (replication where reflection cannot)."""
    height, width = image.shape[-2:]
    return pad_to(image, -(-height // multiple) * multiple, -(-width // multiple) * multiple)


def pad_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad bottom/right to (height, width) by reflection (replication where reflection cannot)."""
    pad_h, pad_w = height - image.shape[-2], width - image.shape[-1]
    if not pad_h and not pad_w:
        return image
    mode = "reflect" if pad_h < image.shape[-2] and pad_w < image.shape[-1] else "replicate"
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
    result is clamped to [minimum, maximum], and is always larger than the overlap (a tile no larger than
    its overlap tiles nothing), whatever the memory.
    """
    budget = int(available_bytes * fraction) * (1 if precision == "fp32" else 2)
    side = math.isqrt(max(budget, 0) // max(bytes_per_lr_pixel, 1))
    tile = min(side - 2 * overlap, maximum) // 8 * 8
    return max(tile, minimum, overlap // 8 * 8 + 8)


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


def _check_arguments(image: torch.Tensor, spec: TileSpec, precision: str) -> None:
    """Reject calls that are programming errors before any work is done."""
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected a (1, C, H, W) image, got shape {tuple(image.shape)}")
    if precision not in TILE_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (use {', '.join(TILE_PRECISIONS)})")
    spec.check()


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
    """Accumulates feathered region outputs over a grid of spans and divides by the summed weights when rows
    are taken.

    The weights are separable and every (row, column) pair is added, so the summed weight is the outer
    product of the per-axis sums: only 1-D weight sums are stored. A `rolling` canvas holds only the rows
    from the last ones taken down to the lowest region added so far; otherwise the whole area is allocated
    at once.
    """

    def __init__(self, rows: list[Span], cols: list[Span], scale: int, device: torch.device,
                 rolling: bool = False) -> None:
        self.top, self.left, self.scale, self.rolling = rows[0][0], cols[0][0], scale, rolling
        self.row_weights = {span: w.to(device) for span, w in zip(rows, _feather(rows, scale))}
        self.col_weights = {span: w.to(device) for span, w in zip(cols, _feather(cols, scale))}
        self.row_sum = self._axis_sum(self.row_weights, self.top, rows[-1][1], device)
        self.col_sum = self._axis_sum(self.col_weights, self.left, cols[-1][1], device)
        self.total: torch.Tensor | None = None
        self.taken = 0  # output rows already taken from the top

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
        y, x = (window.top - self.top) * self.scale - self.taken, (window.left - self.left) * self.scale
        self._reach(output, y + len(row_weight))
        region = self.total[..., y : y + len(row_weight), x : x + len(col_weight)]
        region += output * (row_weight[:, None] * col_weight[None, :])

    def _reach(self, output: torch.Tensor, bottom: int) -> None:
        """Hold the rows down to `bottom` (of the rows not yet taken), growing the canvas with zeros."""
        held = 0 if self.total is None else self.total.shape[-2]
        if bottom <= held:
            return
        if not self.rolling:
            bottom = len(self.row_sum) - self.taken
        more = output.new_zeros((1, output.shape[1], bottom - held, len(self.col_sum)))
        self.total = more if self.total is None else torch.cat([self.total, more], dim=-2)

    def take_rows(self, before: int) -> torch.Tensor:
        """The blended output above input row `before` (every region over it added) and not taken yet; the
        canvas lets go of those rows."""
        assert self.total is not None, "no region was added"
        end = (before - self.top) * self.scale - self.taken
        done = self.total[..., :end, :]
        done.div_(self.row_sum[self.taken : self.taken + end, None] * self.col_sum[None, :])
        self.total, self.taken = self.total[..., end:, :], self.taken + end
        return done

    def result(self) -> torch.Tensor:
        """The blended output of the whole area."""
        return self.take_rows(self.top + len(self.row_sum) // self.scale)


class _Engine:
    """One image's tiled passes: the runner, its inputs and state, and the current tile size, which shrinks
    on out-of-memory errors."""

    def __init__(self, runner: TileRunner, inputs: Inputs, state: object, spec: TileSpec, precision: str,
                 warn: Callable[[str], None] | None) -> None:
        self.runner, self.inputs, self.state, self.spec, self.precision = runner, inputs, state, spec, precision
        self.height, self.width = inputs[IMAGE].tensor.shape[-2:]
        self.tile = spec.tile if spec.tile is not None else max(self.height, self.width)
        self.warn = warn or (lambda message: None)
        self.done, self.total = 0, 0
        self.on_tile: Callable[[int, int], None] | None = None

    # ----- the passes ----------------------------------------------------------------------------
    def image_state(self, on_tile: Callable[[int, int], None] | None, rows: list[Span], cols: list[Span]) -> Prepared:
        """`prepare` inside the back-off, then for a reducing runner the statistics pass over the tiling
        `rows` x `cols` of the second pass."""
        state = prepare_with_backoff(self.runner, self.inputs, self.warn)
        if hasattr(self.runner, "reduce_tile"):
            self.state = state
            state = self.runner.apply_statistics(state, self.reduce(on_tile, rows, cols))  # type: ignore[attr-defined]
        return Prepared(state)

    def reduce(self, on_tile: Callable[[int, int], None] | None, rows: list[Span], cols: list[Span]) -> dict[str, torch.Tensor]:
        """The first pass of a reducing runner: statistics summed in float64 over disjoint regions, each a piece of
        one second-pass tile's region read through that tile's input window (progress counts both passes)."""
        spec = self.spec
        windows = [dataclasses.replace(_window(row, col, spec.overlap, self.height, self.width, spec.align),
                                       top=piece_rows[0], height=piece_rows[1] - piece_rows[0],
                                       left=piece_cols[0], width=piece_cols[1] - piece_cols[0])
                   for row, piece_rows in zip(rows, partition_spans(rows, spec.align))
                   for col, piece_cols in zip(cols, partition_spans(cols, spec.align))
                   if piece_rows[1] > piece_rows[0] and piece_cols[1] > piece_cols[0]]
        self._start_progress(on_tile, len(windows) + len(rows) * len(cols))
        totals: dict[str, torch.Tensor] = {}
        for chunk in _batches(windows, spec.batch):
            for statistics in self._outputs(chunk, self._reduce_run, self._split_sum):
                for name, value in statistics.items():
                    totals[name] = totals[name] + value if name in totals else value
                self._tick()
        return totals

    def render(self, rows: list[Span], cols: list[Span], on_tile: Callable[[int, int], None] | None,
               sink: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor | None:
        """Run every region, a row of tiles at a time (batching same-shaped windows), and blend the results
        into the output image; with `sink`, hand it each band of rows that the next row of tiles leaves
        finished, and return None."""
        spec = self.spec
        if self.on_tile is None:
            self._start_progress(on_tile, len(rows) * len(cols))
        canvas = _Canvas(rows, cols, self.runner.scale, self.inputs[IMAGE].tensor.device, rolling=sink is not None)
        for index, row in enumerate(rows):
            windows = [_window(row, col, spec.overlap, self.height, self.width, spec.align) for col in cols]
            for chunk in _batches(windows, spec.batch):
                for window, output in zip(chunk, self._outputs(chunk, self._run, self._split_blend)):
                    canvas.add(window, output)
                    self._tick()
            if sink is not None:
                sink(canvas.take_rows(rows[index + 1][0] if index + 1 < len(rows) else row[1]))
        return None if sink is not None else canvas.result()

    def _start_progress(self, on_tile: Callable[[int, int], None] | None, total: int) -> None:
        self.on_tile, self.done, self.total = on_tile or (lambda done, total: None), 0, total

    def _tick(self) -> None:
        self.done += 1
        assert self.on_tile is not None
        self.on_tile(self.done, self.total)

    # ----- out-of-memory back-off, shared by both passes ---------------------------------------------
    def _outputs(self, chunk: list[Window], compute: Callable[[list[Window]], list], split: Callable[[Window], object]) -> list:
        """Results of a batch; on OOM (or once tiles have shrunk) the regions are done one by one."""
        if len(chunk) > 1 and all(self._fits(window) for window in chunk):
            try:
                return compute(chunk)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
            _free_cache()  # outside the except block, so the failed attempt's tensors are released
        return [self._region(window, compute, split) for window in chunk]

    def _region(self, window: Window, compute: Callable[[list[Window]], list], split: Callable[[Window], object]) -> object:
        """The result of one region: run whole if it fits the current tile size, else split into sub-regions."""
        if self._fits(window):
            try:
                return compute([window])[0]
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
            _free_cache()
            self._shrink(window)
        return split(window)

    def _fits(self, window: Window) -> bool:
        """Whether the region is no larger than the current tile size."""
        return max(window.height, window.width) <= self.tile

    def _shrink(self, window: Window) -> None:
        """Halve the tile that ran out of memory, refusing to go below min_tile or down to the overlap."""
        align = self.spec.align
        failed = max(window.height, window.width)
        smaller = min(self.tile, failed) // 2 // align * align
        floor = max(self.spec.min_tile, (-(-self.spec.overlap // align) + 1) * align)
        if smaller < floor:
            raise InferenceError(
                f"out of memory even with {failed} px tiles (the minimum is {floor} px); "
                "try --device cpu or a smaller image"
            )
        self.warn(f"out of memory with {failed} px tiles; continuing with {smaller} px tiles")
        self.tile = smaller

    def _sub_windows(self, window: Window, rows: list[Span], cols: list[Span]) -> list[Window]:
        return [_window(row, col, self.spec.overlap, self.height, self.width, self.spec.align)
                for row in rows for col in cols]

    def _disjoint(self, start: int, length: int) -> list[Span]:
        return [(start + a, start + b) for a, b in disjoint_spans(length, self.tile, self.spec.align)]

    # ----- rendering: blended regions -------------------------------------------------------------
    def _split_blend(self, window: Window) -> torch.Tensor:
        """A region's output assembled from sub-regions of the current tile size, blended like the image's tiles."""
        spec = self.spec
        rows = [(window.top + a, window.top + b) for a, b in tile_spans(window.height, self.tile, spec.overlap, spec.align)]
        cols = [(window.left + a, window.left + b) for a, b in tile_spans(window.width, self.tile, spec.overlap, spec.align)]
        canvas = _Canvas(rows, cols, self.runner.scale, self.inputs[IMAGE].tensor.device)
        for sub in self._sub_windows(window, rows, cols):
            canvas.add(sub, self._region(sub, self._run, self._split_blend))
        return canvas.result()

    def _run(self, windows: list[Window]) -> list[torch.Tensor]:
        """Run same-shaped windows as one batch and return each region's output, redoing non-finite tiles in fp32."""
        tiles = self._tiles(windows)
        outputs = self._call(tiles, windows, self.precision)
        results = []
        for index, window in enumerate(windows):
            output = outputs[index : index + 1]
            if not torch.isfinite(output).all():
                output = self._redo_in_fp32(self._one(tiles, index), window)
            results.append(_crop_output(output, window, self.runner.scale))
        return results

    def _redo_in_fp32(self, tiles: Tiles, window: Window) -> torch.Tensor:
        """Rerun a tile whose reduced-precision output had NaN/Inf; non-finite fp32 output is fatal."""
        where = f"the tile at y={window.top}, x={window.left} ({window.height}x{window.width} px)"
        if self.precision == "fp32":
            raise InferenceError(f"the model produced NaN/Inf values for {where} in fp32")
        self.warn(f"NaN/Inf in {self.precision} for {where}; redoing it in fp32")
        output = self._call(tiles, [window], "fp32")
        if not torch.isfinite(output).all():
            raise InferenceError(f"the model produced NaN/Inf values for {where} even in fp32")
        return output

    def _call(self, tiles: Tiles, windows: list[Window], precision: str) -> torch.Tensor:
        """runner.run_tile with its output shape checked and moved to the image's device as float32."""
        output = self.runner.run_tile(tiles, self.state, windows, precision)
        scale, image = self.runner.scale, tiles[IMAGE]
        expected = (image.shape[0], image.shape[2] * scale, image.shape[3] * scale)
        if output.ndim != 4 or (output.shape[0], *output.shape[2:]) != expected:
            raise InferenceError(
                f"the model returned shape {tuple(output.shape)} for input tiles {tuple(image.shape)} at x{scale}"
            )
        return output.to(device=self.inputs[IMAGE].tensor.device, dtype=torch.float32)

    # ----- reducing: summed statistics of disjoint regions ----------------------------------------
    def _split_sum(self, window: Window) -> dict[str, torch.Tensor]:
        """A region's statistics as the sum over disjoint sub-regions of the current tile size."""
        rows, cols = self._disjoint(window.top, window.height), self._disjoint(window.left, window.width)
        totals: dict[str, torch.Tensor] = {}
        for sub in self._sub_windows(window, rows, cols):
            for name, value in self._region(sub, self._reduce_run, self._split_sum).items():
                totals[name] = totals[name] + value if name in totals else value
        return totals

    def _reduce_run(self, windows: list[Window]) -> list[dict[str, torch.Tensor]]:
        """Statistics of same-shaped windows run as one batch, per window in float64 (fp32 redo if non-finite)."""
        tiles = self._tiles(windows)
        batch = self.runner.reduce_tile(tiles, self.state, windows, self.precision)  # type: ignore[attr-defined]
        results = []
        for index, window in enumerate(windows):
            statistics = {name: value[index].double() for name, value in batch.items()}
            if not all(torch.isfinite(value).all() for value in statistics.values()):
                if self.precision == "fp32":
                    raise InferenceError(f"the model's statistics are NaN/Inf for the region at y={window.top}, "
                                         f"x={window.left} in fp32")
                self.warn(f"NaN/Inf statistics in {self.precision} at y={window.top}, x={window.left}; redoing in fp32")
                again = self.runner.reduce_tile(self._one(tiles, index), self.state, [window], "fp32")  # type: ignore[attr-defined]
                statistics = {name: value[0].double() for name, value in again.items()}
            results.append(statistics)
        return results

    # ----- cropping the inputs ----------------------------------------------------------------------
    def _tiles(self, windows: list[Window]) -> dict[str, torch.Tensor]:
        """Every input cropped to each window and batched; whole inputs as they are."""
        return {name: item.tensor if item.scale is None else torch.cat([_crop_input(item, w) for w in windows])
                for name, item in self.inputs.items()}

    def _one(self, tiles: Tiles, index: int) -> dict[str, torch.Tensor]:
        """The tiles of one window of a batch."""
        return {name: tiles[name] if item.scale is None else tiles[name][index : index + 1]
                for name, item in self.inputs.items()}


def _crop_input(item: TileInput, window: Window) -> torch.Tensor:
    """A spatial input's part under a tile's input window."""
    scale = item.scale or 1
    rows = slice(window.in_top * scale, (window.in_top + window.in_height) * scale)
    cols = slice(window.in_left * scale, (window.in_left + window.in_width) * scale)
    return item.tensor[..., rows, cols]


def _crop_output(output: torch.Tensor, window: Window, scale: int) -> torch.Tensor:
    """The region's own part of a tile's output (dropping the overlap margin)."""
    y, x = (window.top - window.in_top) * scale, (window.left - window.in_left) * scale
    return output[..., y : y + window.height * scale, x : x + window.width * scale]


def _free_cache() -> None:
    """Return cached CUDA blocks to the driver after an out-of-memory error, so the retry has room."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
