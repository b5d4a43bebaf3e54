"""Tests of the tiled-inference engine: tiling geometry, seamless blending, OOM and NaN recovery."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from upscale_cli.errors import InferenceError
from upscale_cli.tiler import (
    IMAGE,
    Prepared,
    TileSpec,
    Window,
    WindowCache,
    auto_tile_size,
    available_memory,
    is_out_of_memory,
    make_windows,
    partition_spans,
    region_of,
    tile_spans,
    upscale_tiled,
)

RADIUS = 3  # three 3x3 convolutions before the pixel shuffle


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(scale: int, seed: int = 0) -> nn.Module:
    """A random conv net whose output depends on exactly RADIUS LR pixels on each side."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 3 * scale * scale, 3, padding=1),
        nn.PixelShuffle(scale),
    ).eval()


class NetRunner:
    """A plain model: no per-image state; records the shape of every batch it runs."""

    def __init__(self, scale: int = 2) -> None:
        self.scale = scale
        self.net = tiny_net(scale)
        self.shapes: list[tuple[int, ...]] = []

    def prepare(self, inputs, max_pixels: int | None) -> object:
        return None

    def run_tile(self, tiles, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        tile = tiles[IMAGE]
        assert len(windows) == tile.shape[0]
        self.shapes.append(tuple(tile.shape))
        with torch.inference_mode():  # as the real runners do: the engine must cope with inference tensors
            return self.net(tile).float()

    def untiled(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(image)


class OomRunner(NetRunner):
    """Raises a CUDA out-of-memory error whenever a batch holds more than `limit` input pixels."""

    def __init__(self, limit: int, scale: int = 2) -> None:
        super().__init__(scale)
        self.limit = limit
        self.failures = 0

    def run_tile(self, tiles, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        tile = tiles[IMAGE]
        if tile.shape[0] * tile.shape[2] * tile.shape[3] > self.limit:
            self.failures += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return super().run_tile(tiles, state, windows, precision)


class NanRunner(NetRunner):
    """Returns NaN for the tile whose region starts at `bad` when running in one of `nan_precisions`."""

    def __init__(self, bad: tuple[int, int], nan_precisions: tuple[str, ...]) -> None:
        super().__init__()
        self.bad = bad
        self.nan_precisions = nan_precisions
        self.precisions: list[str] = []

    def run_tile(self, tiles, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        self.precisions.append(precision)
        output = super().run_tile(tiles, state, windows, precision).clone()
        for index, window in enumerate(windows):
            if (window.top, window.left) == self.bad and precision in self.nan_precisions:
                output[index, :, 0, 0] = float("nan")
        return output


class CoordRunner:
    """Checks each tile against its window by reading an image whose channels are its row and column indices."""

    scale = 2

    def __init__(self, image_size: tuple[int, int], overlap: int, offset: float) -> None:
        self.height, self.width = image_size
        self.overlap = overlap
        self.offset = offset
        self.prepare_calls = 0

    def prepare(self, inputs, max_pixels: int | None) -> object:
        self.prepare_calls += 1
        return self.offset

    def run_tile(self, tiles, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        tile = tiles[IMAGE]
        for index, window in enumerate(windows):
            assert window.in_top == max(0, window.top - self.overlap)
            assert window.in_left == max(0, window.left - self.overlap)
            assert window.in_top + window.in_height == min(self.height, window.top + window.height + self.overlap)
            assert window.in_left + window.in_width == min(self.width, window.left + window.width + self.overlap)
            rows = torch.arange(window.in_top, window.in_top + window.in_height, dtype=torch.float32)
            cols = torch.arange(window.in_left, window.in_left + window.in_width, dtype=torch.float32)
            assert torch.equal(tile[index, 0], rows[:, None].expand_as(tile[index, 0]))
            assert torch.equal(tile[index, 1], cols[None, :].expand_as(tile[index, 1]))
        upscaled = tile.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        return upscaled + state


def coord_image(height: int, width: int) -> torch.Tensor:
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    return torch.stack([rows, cols])[None]


def random_image(height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# --- tiling geometry ---------------------------------------------------------------------------


def test_tile_spans_properties() -> None:
    for length, tile in itertools.product(range(1, 130, 3), range(1, 70, 4)):
        for overlap in range(0, tile, 3):
            spans = tile_spans(length, tile, overlap)
            assert spans == tile_spans(length, tile, overlap)
            assert spans[0][0] == 0 and spans[-1][1] == length
            assert spans == sorted(spans)
            assert all(0 < end - start <= tile for start, end in spans)
            assert all(a[1] >= b[0] for a, b in zip(spans, spans[1:]))  # coverage
            assert all(a[1] - b[0] >= overlap for a, b in zip(spans, spans[1:]))
            strides = [b[0] - a[0] for a, b in zip(spans, spans[1:])]
            assert not strides or max(strides) - min(strides) <= 1  # evenly spread
            if len(spans) > 1:
                assert len({end - start for start, end in spans}) == 1


def test_partition_spans_cuts_overlapping_spans_into_pieces_inside_them() -> None:
    for length, tile, align in itertools.product(range(4, 130, 7), range(8, 70, 9), (1, 2, 4)):
        for overlap in range(0, tile // align * align - align + 1, 5):
            spans = tile_spans(length, tile, overlap, align)
            pieces = partition_spans(spans, align)
            assert len(pieces) == len(spans)
            assert pieces[0][0] == 0 and pieces[-1][1] == length
            assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))  # a partition: no gap, no overlap
            assert all(s0 <= p0 <= p1 <= s1 for (p0, p1), (s0, s1) in zip(pieces, spans))
            assert all(p0 % align == 0 for p0, _ in pieces)


class ReducingRecorder:
    """A reducing runner (per-channel sums of the input) that records the input windows of both passes."""

    scale = 1

    def __init__(self) -> None:
        self.reduced: list[Window] = []
        self.rendered: list[Window] = []

    def prepare(self, inputs, max_pixels: int | None) -> object:
        return None

    def reduce_tile(self, tiles, state, windows, precision):
        self.reduced += windows
        return {"sum": torch.stack([tiles[IMAGE][i, :, rows, cols].sum(dim=(1, 2))
                                    for i, (rows, cols) in enumerate(region_of(w) for w in windows)])}

    def apply_statistics(self, state, totals):
        return totals["sum"].float()

    def run_tile(self, tiles, state, windows, precision):
        self.rendered += windows
        return tiles[IMAGE] - state[None, :, None, None]


def test_the_statistics_pass_reads_the_second_passs_windows_and_sums_each_pixel_once() -> None:
    image = torch.rand(1, 3, 45, 38, generator=torch.Generator().manual_seed(3))
    runner = ReducingRecorder()
    out = upscale_tiled(runner, image, TileSpec(tile=16, overlap=3))
    boxes = lambda windows: [(w.in_top, w.in_left, w.in_height, w.in_width) for w in windows]  # noqa: E731
    assert len(runner.rendered) > 4 and sorted(boxes(runner.reduced)) == sorted(boxes(runner.rendered))
    torch.testing.assert_close(out, image - image.sum(dim=(2, 3), keepdim=True), atol=1e-3, rtol=0)  # fp32 sums of ~860


def test_a_window_cache_gives_back_what_it_kept_for_the_same_tile_once_within_its_budget(monkeypatch) -> None:
    import upscale_cli.tiler as tiler

    windows = make_windows(20, 20, 12, overlap=2)[:2]
    tiles, values = torch.rand(2, 3, 14, 14), torch.rand(2, 5, 7, 7)
    computed: list[int] = []

    def compute(batch: torch.Tensor) -> torch.Tensor:
        computed.append(batch.shape[0])
        return torch.full((batch.shape[0], 5, 7, 7), -1.0)

    cache = WindowCache()
    cache.reset(torch.device("cpu"))
    cache.keep(tiles, windows, "bf16", values)
    changed = tiles.clone()
    changed[1, 0, 0, 0] += 1
    got = cache.take(changed, windows, "bf16", compute)
    assert torch.equal(got[0], values[0]) and torch.equal(got[1], torch.full((5, 7, 7), -1.0)) and computed == [1]
    assert torch.equal(cache.take(tiles, windows, "bf16", compute), torch.full((2, 5, 7, 7), -1.0))  # used once
    cache.keep(tiles, windows, "bf16", values)
    assert torch.equal(cache.take(tiles, windows, "fp32", compute), torch.full((2, 5, 7, 7), -1.0))  # another key
    monkeypatch.setattr(tiler, "WINDOW_CACHE_BYTES", tiles.numel() * 4 + values.numel() * 4 - 1)
    cache.reset(torch.device("cpu"))
    cache.keep(tiles, windows, "bf16", values)
    assert not cache.entries  # one byte short of the batch: nothing kept


def test_tile_spans_single_and_invalid() -> None:
    assert tile_spans(20, 32, 40) == [(0, 20)]
    assert tile_spans(100, 100, 8) == [(0, 100)]
    with pytest.raises(ValueError):
        tile_spans(100, 8, 8)
    with pytest.raises(ValueError):
        tile_spans(0, 8, 0)


def test_make_windows() -> None:
    assert make_windows(37, 53, None, 4) == [Window(0, 0, 37, 53, 0, 0, 37, 53)]
    windows = make_windows(37, 53, 16, 4)
    assert len(windows) == len(tile_spans(37, 16, 4)) * len(tile_spans(53, 16, 4))
    covered = torch.zeros(37, 53, dtype=torch.bool)
    for w in windows:
        covered[w.top : w.top + w.height, w.left : w.left + w.width] = True
        assert 0 <= w.in_top <= w.top and w.top + w.height <= w.in_top + w.in_height <= 37
        assert 0 <= w.in_left <= w.left and w.left + w.width <= w.in_left + w.in_width <= 53
    assert covered.all()


# --- seamless tiling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "size", "tile", "overlap"),
    [
        (2, (37, 53), 16, 3),
        (2, (64, 48), 24, 4),
        (4, (33, 29), 13, 3),
        (2, (20, 17), 32, 3),  # smaller than one tile
        (2, (45, 70), 20, 8),
        (4, (51, 40), 17, 5),
    ],
)
def test_tiled_equals_untiled(scale: int, size: tuple[int, int], tile: int, overlap: int) -> None:
    runner = NetRunner(scale)
    image = random_image(*size)
    tiled = upscale_tiled(runner, image, TileSpec(tile=tile, overlap=overlap))
    assert tiled.dtype == torch.float32
    assert tiled.shape == (1, 3, size[0] * scale, size[1] * scale)
    assert max_error(tiled, runner.untiled(image)) < 1e-4


@pytest.mark.parametrize(
    ("scale", "size", "spec"),
    [
        (2, (45, 70), TileSpec(tile=20, overlap=8)),
        (4, (51, 40), TileSpec(tile=17, overlap=5, batch=2)),
        (2, (37, 29), TileSpec(tile=16, overlap=4, align=4, minimum=40)),  # padded, then cropped
        (2, (20, 17), TileSpec(tile=None, overlap=RADIUS)),  # one band: the whole image
    ],
)
def test_bands_handed_to_a_sink_are_the_output_row_by_row(scale: int, size: tuple[int, int], spec: TileSpec) -> None:
    runner = NetRunner(scale)
    image = random_image(*size)
    whole = upscale_tiled(runner, image, spec)
    bands: list[torch.Tensor] = []
    assert upscale_tiled(runner, image, spec, sink=bands.append) is None
    assert torch.equal(torch.cat(bands, dim=-2), whole)  # the same values, not merely close ones
    tile_rows = len(tile_spans(size[0], spec.tile or size[0], spec.overlap, spec.align))
    assert len(bands) <= tile_rows and (len(bands) > 1) == (tile_rows > 1)
    assert max(band.shape[-2] for band in bands) <= (spec.tile or size[0]) * scale  # never the whole output at once


def test_bands_stay_exact_when_tiles_shrink_after_out_of_memory() -> None:
    image, spec = random_image(64, 70), TileSpec(tile=32, overlap=RADIUS, min_tile=8)
    whole = upscale_tiled(OomRunner(limit=25 * 25), image, spec)
    bands: list[torch.Tensor] = []
    runner = OomRunner(limit=25 * 25)
    upscale_tiled(runner, image, spec, sink=bands.append)
    assert runner.failures > 0 and len(bands) > 1
    assert torch.equal(torch.cat(bands, dim=-2), whole)
    assert max_error(whole, runner.untiled(image)) < 1e-4


def test_overlap_below_radius_shows_seams() -> None:
    runner = NetRunner()
    image = random_image(40, 40)
    tiled = upscale_tiled(runner, image, TileSpec(tile=16, overlap=1))
    assert max_error(tiled, runner.untiled(image)) > 1e-3


def test_whole_image_without_tile() -> None:
    runner = NetRunner()
    image = random_image(23, 31)
    tiled = upscale_tiled(runner, image, TileSpec(tile=None, overlap=RADIUS))
    assert runner.shapes == [(1, 3, 23, 31)]
    assert max_error(tiled, runner.untiled(image)) < 1e-4


def test_batches_group_same_shaped_windows() -> None:
    runner = NetRunner()
    image = random_image(60, 60)
    tiled = upscale_tiled(runner, image, TileSpec(tile=16, overlap=RADIUS, batch=3))
    assert max(shape[0] for shape in runner.shapes) == 3
    assert sum(shape[0] for shape in runner.shapes) == len(make_windows(60, 60, 16, RADIUS))
    assert max_error(tiled, runner.untiled(image)) < 1e-4


def test_prepare_once_and_windows_match_tiles() -> None:
    size, overlap = (41, 58), 5
    image = coord_image(*size)
    expected = image.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) + 7.0
    runner = CoordRunner(size, overlap, offset=7.0)
    result = upscale_tiled(runner, image, TileSpec(tile=16, overlap=overlap, batch=2))
    assert runner.prepare_calls == 1
    assert max_error(result, expected) < 1e-4

    result = upscale_tiled(runner, image, TileSpec(tile=16, overlap=overlap), prepared=Prepared(7.0))
    assert runner.prepare_calls == 1
    assert max_error(result, expected) < 1e-4


def test_on_tile_counts_to_total() -> None:
    calls: list[tuple[int, int]] = []

    def on_tile(done: int, total: int) -> None:
        calls.append((done, total))

    upscale_tiled(NetRunner(), random_image(50, 35), TileSpec(tile=16, overlap=RADIUS, batch=2), on_tile=on_tile)
    total = len(make_windows(50, 35, 16, RADIUS))
    assert calls == [(done, total) for done in range(1, total + 1)]


# --- out of memory ------------------------------------------------------------------------------


def test_oom_halves_tiles_and_stays_seamless() -> None:
    image = random_image(100, 100)
    runner = OomRunner(limit=30 * 30)  # regions are 36 px, windows up to 44 px
    warnings: list[str] = []
    tiled = upscale_tiled(runner, image, TileSpec(tile=48, overlap=4), warn=warnings.append)
    assert max_error(tiled, runner.untiled(image)) < 1e-4
    assert runner.failures == 1  # later regions were split up front
    assert max(max(h, w) for _, _, h, w in runner.shapes) <= 18 + 2 * 4
    assert warnings == ["out of memory with 36 px tiles; continuing with 18 px tiles"]


def test_oom_halves_repeatedly() -> None:
    image = random_image(64, 64)
    runner = OomRunner(limit=25 * 25)
    warnings: list[str] = []
    tiled = upscale_tiled(runner, image, TileSpec(tile=None, overlap=RADIUS, min_tile=8), warn=warnings.append)
    assert max_error(tiled, runner.untiled(image)) < 1e-4
    # the whole image fails, then its 24 px sub-regions (30 px windows) fail, 12 px ones fit
    assert warnings == [
        "out of memory with 64 px tiles; continuing with 32 px tiles",
        "out of memory with 24 px tiles; continuing with 12 px tiles",
    ]


def test_oom_in_batch_retries_tiles_one_by_one() -> None:
    image = random_image(48, 48)
    runner = OomRunner(limit=25 * 25)  # one window (at most 21 x 21 px) fits, two do not
    warnings: list[str] = []
    tiled = upscale_tiled(runner, image, TileSpec(tile=16, overlap=RADIUS, batch=4), warn=warnings.append)
    assert max_error(tiled, runner.untiled(image)) < 1e-4
    assert runner.failures > 0
    assert all(batch == 1 for batch, _, _, _ in runner.shapes)
    assert warnings == []


def test_oom_below_min_tile_raises() -> None:
    runner = OomRunner(limit=10)
    with pytest.raises(InferenceError, match="out of memory"):
        upscale_tiled(runner, random_image(40, 40), TileSpec(tile=32, overlap=RADIUS, min_tile=16))


def test_other_errors_propagate() -> None:
    class Broken(NetRunner):
        def run_tile(self, *args: object) -> torch.Tensor:
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        upscale_tiled(Broken(), random_image(20, 20), TileSpec(tile=16, overlap=RADIUS))


def test_is_out_of_memory() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("expected 3 channels"))
    assert not is_out_of_memory(ValueError("out of memory"))


# --- non-finite outputs -------------------------------------------------------------------------


def test_nan_in_bf16_is_redone_in_fp32() -> None:
    image = random_image(40, 40)
    bad = make_windows(40, 40, 16, RADIUS)[4]
    runner = NanRunner((bad.top, bad.left), nan_precisions=("bf16",))
    warnings: list[str] = []
    tiled = upscale_tiled(runner, image, TileSpec(tile=16, overlap=RADIUS, batch=2), precision="bf16", warn=warnings.append)
    assert torch.isfinite(tiled).all()
    reference = upscale_tiled(NetRunner(), image, TileSpec(tile=16, overlap=RADIUS), precision="fp32")
    assert max_error(tiled, reference) < 1e-6
    assert runner.precisions.count("fp32") == 1
    assert len(warnings) == 1 and "fp32" in warnings[0] and f"y={bad.top}, x={bad.left}" in warnings[0]


@pytest.mark.parametrize(("precision", "nan_precisions"), [("fp32", ("fp32",)), ("bf16", ("bf16", "fp32"))])
def test_nan_in_fp32_raises(precision: str, nan_precisions: tuple[str, ...]) -> None:
    runner = NanRunner((0, 0), nan_precisions=nan_precisions)
    with pytest.raises(InferenceError, match="NaN"):
        upscale_tiled(runner, random_image(30, 30), TileSpec(tile=16, overlap=RADIUS), precision=precision)


# --- memory sizing ------------------------------------------------------------------------------


def test_auto_tile_size() -> None:
    sizes = [auto_tile_size(4000, 2**k, 16, "fp32") for k in range(20, 36)]
    assert sizes == sorted(sizes)
    assert sizes[0] == 32 and sizes[-1] == 1024
    assert all(size % 8 == 0 for size in sizes)
    for k in range(20, 36):
        assert auto_tile_size(4000, 2**k, 16, "bf16") >= auto_tile_size(4000, 2**k, 16, "fp32")
    tile = auto_tile_size(1000, 10**9, 8, "fp32", maximum=4096)
    assert (tile + 16) ** 2 * 1000 <= 0.5 * 10**9 < (tile + 8 + 16) ** 2 * 1000
    assert auto_tile_size(10**9, 10**6, 8, "fp16", minimum=48) == 48


def test_available_memory_cpu() -> None:
    assert available_memory(torch.device("cpu")) > 0


# --- alignment (models with a latent grid coarser than the LR image, e.g. SRFlow's z at LR/2) ----------


def test_tile_spans_aligned() -> None:
    for align in (2, 4):
        for length, tile in itertools.product(range(1, 90, 5), range(align, 50, 3)):
            for overlap in range(0, tile, 3):
                if length > tile and tile // align <= -(-overlap // align):
                    with pytest.raises(ValueError, match="aligned"):
                        tile_spans(length, tile, overlap, align)
                    continue
                spans = tile_spans(length, tile, overlap, align)
                assert spans[0][0] == 0 and spans[-1][1] == length
                assert all(0 < end - start <= tile for start, end in spans)
                assert all(start % align == 0 for start, _ in spans)
                assert all(end % align == 0 or end == length for _, end in spans)
                assert all(a[1] - b[0] >= overlap for a, b in zip(spans, spans[1:]))
    assert tile_spans(37, 16, 4, 1) == tile_spans(37, 16, 4)  # align 1 is the plain tiling


def test_make_windows_aligned() -> None:
    height, width, align = 38, 54, 2
    windows = make_windows(height, width, 14, 5, align)
    covered = torch.zeros(height, width, dtype=torch.bool)
    for w in windows:
        covered[w.top : w.top + w.height, w.left : w.left + w.width] = True
        for start, size, length in ((w.top, w.height, height), (w.left, w.width, width),
                                    (w.in_top, w.in_height, height), (w.in_left, w.in_width, width)):
            assert start % align == 0 and (start + size) % align == 0 and start + size <= length
        assert w.in_top <= max(0, w.top - 5) and w.in_top + w.in_height >= min(height, w.top + w.height + 5)
        assert w.in_left <= max(0, w.left - 5) and w.in_left + w.in_width >= min(width, w.left + w.width + 5)
    assert covered.all()
    assert make_windows(37, 53, 16, 4, 1) == make_windows(37, 53, 16, 4)


class AlignedRunner(OomRunner):
    """Fails on batches above `limit` input pixels and checks that every window it gets is aligned."""

    def __init__(self, limit: int, align: int) -> None:
        super().__init__(limit)
        self.align = align
        self.windows: list[Window] = []

    def run_tile(self, tiles, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        for w in windows:
            assert w.in_top % self.align == 0 and w.in_left % self.align == 0
            assert w.in_height % self.align == 0 and w.in_width % self.align == 0
            assert w.top % self.align == 0 and w.left % self.align == 0
        self.windows.extend(windows)
        return super().run_tile(tiles, state, windows, precision)


@pytest.mark.parametrize(("size", "tile", "overlap", "align"), [((40, 52), 16, 3, 2), ((48, 36), 20, 5, 4)])
def test_aligned_tiling_is_seamless(size: tuple[int, int], tile: int, overlap: int, align: int) -> None:
    runner = AlignedRunner(limit=10**9, align=align)
    image = random_image(*size)
    tiled = upscale_tiled(runner, image, TileSpec(tile=tile, overlap=overlap, align=align, batch=2))
    assert len(runner.windows) == len(make_windows(*size, tile, overlap, align)) > 1
    assert max_error(tiled, runner.untiled(image)) < 1e-4


def test_aligned_oom_shrinking_keeps_alignment() -> None:
    image = random_image(64, 64)
    runner = AlignedRunner(limit=30 * 30, align=4)
    warnings: list[str] = []
    tiled = upscale_tiled(runner, image, TileSpec(tile=48, overlap=3, align=4), warn=warnings.append)
    assert max_error(tiled, runner.untiled(image)) < 1e-4
    assert runner.failures >= 1 and warnings
    assert all(int(w.split()[-3]) % 4 == 0 for w in warnings)  # "... continuing with N px tiles"


def test_align_arguments_checked() -> None:
    with pytest.raises(ValueError, match="alignment"):
        upscale_tiled(NetRunner(), random_image(20, 20), TileSpec(tile=16, overlap=3, align=0))
    with pytest.raises(ValueError, match="alignment"):
        upscale_tiled(NetRunner(), random_image(20, 20), TileSpec(tile=3, overlap=1, align=4))
