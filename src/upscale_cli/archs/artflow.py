"""ArtFlow (An et al., CVPR 2021): style transfer through a reversible flow, so that no content is lost.

Written from the paper and `shared/research/model_specs.md` section 5 (the official code was not copied),
from the shared flow library (`upscale_cli.flows`).

* Projection Flow Network (PFN): `blocks` levels of squeeze 2x2 and `flows` steps of ActNorm,
  LU-decomposed invertible 1x1 convolution and additive coupling (conv 3x3 to `hidden`, ReLU, conv 1x1,
  ReLU, zero-initialised conv 3x3 padded with 1), no splits and no prior. 2 x 8 steps: 6.46 M parameters;
  the latent of an H x W image is 48 x H/4 x W/4.
* Transfer at the latent: AdaIN (per-channel mean and standard deviation of the content latent replaced
  by the style's) or WCT (whitening by the content covariance, colouring by the style's, batched, with
  eigenvalues below 1e-5 left out), then the PFN in reverse. The style's statistics come from its whole
  image and the content's from the whole content image, so that a tiled run (two passes: statistics,
  then transfer) equals an untiled one.

The flow's own arithmetic (ActNorm, the 1x1 convolutions, the additions of the couplings) runs in fp32
whatever the precision asked for. In bf16 the coupling networks, which hold nearly all the compute, run
in bf16 (`flows.param_nets_in`): an additive coupling's inverse subtracts what its network gives for the
same input, so the flow stays a bijection, and outputs agree with fp32 ones to about 72 dB
(benchmarks/NOTES.md). The runner keeps the networks and tiles channels_last, which oneDNN's convolutions
run faster in either precision. Images are RGB in [0, 1]; sides are padded to multiples of 4 (reflection)
and cropped back.

The authors' `glow.pth` files (pkuanjie/ArtFlow; `official_checkpoints.md` section 4) are read by
`recognise`: the same flow, with ActNorm's linear scale stored as its log here (a scale that is not
positive cannot be, and is refused), its LU masks and identity checked and dropped, and `initialized`
required to be 1. The AdaIN and WCT files have one layout; `--method` picks the transfer.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from upscale_cli.archs.base import (IMAGE_TO_IMAGE, WHOLE, ExtraInput, ModelDescriptor, Recognised, RunOptions,
                                   SizeRequirements, unexpected_tensors)
from upscale_cli.archs.catalog import TRANSFER_METHODS
from upscale_cli.flows import (ActNorm, AdditiveCoupling, FlowLevel, FlowSequence, LayerParamNet, LUInvertibleConv1x1,
                               MultiScaleFlow, ZeroConv2d, param_nets_in)
from upscale_cli.tiler import IMAGE, Inputs, Tiles, Window, WindowCache, pad_to_multiple, region_of

TRANSFERS = TRANSFER_METHODS
EIGENVALUE_FLOOR = 1e-5
HIDDEN_INIT_STD = 0.05


@dataclass(frozen=True)
class ArtFlowConfig:
    blocks: int = 2
    flows: int = 8
    hidden: int = 512
    transfer: str = "adain"

    def __post_init__(self) -> None:
        if self.transfer not in TRANSFERS:
            raise ValueError(f"artflow transfer must be one of {', '.join(TRANSFERS)}, not {self.transfer!r}")
        for name in ("blocks", "flows", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"artflow {name} must be at least 1, not {getattr(self, name)}")
        if self.blocks > 2:
            raise ValueError(f"artflow has at most 2 blocks (the size multiple of 4 it declares), not {self.blocks}")

    @property
    def multiple(self) -> int:
        return 2**self.blocks


def coupling_net(hidden: int):
    """ArtFlow's coupling network factory: conv 3x3 -> ReLU -> conv 1x1 -> ReLU -> zero conv 3x3 padded with 1."""

    def build(in_channels: int, out_channels: int) -> nn.Module:
        first, second = nn.Conv2d(in_channels, hidden, 3, padding=1), nn.Conv2d(hidden, hidden, 1)
        for conv in (first, second):
            nn.init.normal_(conv.weight, 0.0, HIDDEN_INIT_STD)
            nn.init.zeros_(conv.bias)
        return LayerParamNet(first, nn.ReLU(), second, nn.ReLU(), ZeroConv2d(hidden, out_channels, pad_value=1.0))

    return build


def projection_flow(config: ArtFlowConfig) -> MultiScaleFlow:
    """The PFN: squeeze and `flows` steps per block, no splits."""
    levels, channels = [], 3
    for _ in range(config.blocks):
        channels *= 4
        steps = [FlowSequence([ActNorm(channels), LUInvertibleConv1x1(channels),
                               AdditiveCoupling(channels, coupling_net(config.hidden))]) for _ in range(config.flows)]
        levels.append(FlowLevel(channels, [], steps, split=False))
    return MultiScaleFlow(levels)


def adain(content: torch.Tensor, content_stats: dict, style_stats: dict) -> torch.Tensor:
    """Content latents (B, C, h, w) given the style's per-channel mean and std instead of their own."""
    mean, std = content_stats["mean"][..., None, None], content_stats["std"][..., None, None]
    return (content - mean) / std * style_stats["std"][..., None, None] + style_stats["mean"][..., None, None]


def wct(content: torch.Tensor, content_stats: dict, style_stats: dict) -> torch.Tensor:
    """Content latents whitened by their covariance and coloured by the style's (batched over B)."""
    batch, channels = content.shape[:2]
    centred = content.flatten(2) - content_stats["mean"][..., None]
    whiten = _matrix_power(content_stats["cov"], -0.5)
    colour = _matrix_power(style_stats["cov"], 0.5)
    out = colour @ (whiten @ centred) + style_stats["mean"][..., None]
    return out.reshape(content.shape)


def _matrix_power(cov: torch.Tensor, power: float) -> torch.Tensor:
    """cov^power for symmetric (B, C, C) matrices, in float64, eigenvalues below EIGENVALUE_FLOOR left out."""
    values, vectors = torch.linalg.eigh(cov.double())
    kept = values > EIGENVALUE_FLOOR
    scaled = torch.where(kept, values.clamp(min=EIGENVALUE_FLOOR) ** power, torch.zeros_like(values))
    return ((vectors * scaled[:, None, :]) @ vectors.transpose(1, 2)).to(cov.dtype)


def statistics(sums: dict[str, torch.Tensor], transfer: str) -> dict[str, torch.Tensor]:
    """Means and stds (AdaIN) or means and covariances (WCT), from sums of z, z^2 (or z z^T) and counts,
    with the unbiased (N - 1) normalisation."""
    count = sums["count"]
    mean = sums["sum"] / count[..., None]
    dof = (count - 1).clamp(min=1)  # a single latent pixel has no spread: its variance is taken as 0
    if transfer == "adain":
        variance = (sums["square"] - count[..., None] * mean**2) / dof[..., None]
        return {"mean": mean.float(), "std": (variance.clamp(min=0) + 1e-5).sqrt().float()}
    cov = (sums["outer"] - count[..., None, None] * mean[..., :, None] * mean[..., None, :]) / dof[..., None, None]
    return {"mean": mean.float(), "cov": cov.float()}


def latent_sums(z: torch.Tensor, transfer: str) -> dict[str, torch.Tensor]:
    """Per-sample sums of a latent (B, C, h, w) in float64: what `statistics` needs."""
    flat = z.double().flatten(2)
    sums = {"sum": flat.sum(2), "count": torch.full((z.shape[0],), flat.shape[2], dtype=torch.float64,
                                                    device=z.device)}
    if transfer == "adain":
        sums["square"] = (flat**2).sum(2)
    else:
        sums["outer"] = flat @ flat.transpose(1, 2)
    return sums


class ArtFlow(nn.Module):
    """The PFN and its transfer; `forward(content, style)` stylises whole images (tests, training)."""

    def __init__(self, config: ArtFlowConfig) -> None:
        super().__init__()
        self.config = config
        self.pfn = projection_flow(config)

    def project(self, image: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W), sides multiples of 2^blocks -> latent (B, 3 * 4^blocks, H / 2^blocks, W / 2^blocks)."""
        with torch.autocast(image.device.type, enabled=False):
            return self.pfn(image.float())[0][-1]

    def revert(self, latent: torch.Tensor) -> torch.Tensor:
        with torch.autocast(latent.device.type, enabled=False):
            return self.pfn.reverse([latent.float()])[0]

    def image_statistics(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The latent statistics of whole images (B, 3, H, W), padded to the size multiple by reflection."""
        return statistics(latent_sums(self.project(pad_to_multiple(image, self.config.multiple)),
                                      self.config.transfer), self.config.transfer)

    def transfer(self, latent: torch.Tensor, content_stats: dict, style_stats: dict) -> torch.Tensor:
        move = adain if self.config.transfer == "adain" else wct
        return move(latent, content_stats, style_stats)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        height, width = content.shape[-2:]
        padded = pad_to_multiple(content, self.config.multiple)
        latent = self.project(padded)
        stats = statistics(latent_sums(latent, self.config.transfer), self.config.transfer)
        out = self.revert(self.transfer(latent, stats, self.image_statistics(style)))
        return out[..., :height, :width]


class ArtFlowRunner:
    """Two tiled passes: the content latent's statistics over the whole image (`reduce_tile`), then the
    transfer and the reverse flow per tile; the style's statistics are computed once in `prepare`. The
    statistics pass's latents are kept for the transfer pass (`WindowCache`), so each tile is projected once
    (the flow's forward is half the cost of a run). The coupling networks run in bf16 when the pass's
    precision is bf16."""

    scale = 1

    def __init__(self, model: ArtFlow, device: torch.device, precision: str, strength: float = 1.0) -> None:
        self.model = model.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)
        self.device = device
        self.precision = precision
        self.strength = strength
        self.factor = 1 / model.config.multiple
        self.latents = WindowCache()  # keyed by precision too: an fp32 redo of a bf16 tile projects afresh

    def _project(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.model.project(tiles.to(self.device, memory_format=torch.channels_last))

    def prepare(self, inputs: Inputs, max_pixels: int | None) -> dict:
        """The style's latent statistics, from the whole painting (as costly as a content of its size)."""
        self.latents.reset(self.device)
        with param_nets_in(self.model.pfn, self.precision):
            style = inputs["style"].tensor.to(self.device, memory_format=torch.channels_last)
            return {"style": self.model.image_statistics(style)}

    def reduce_tile(self, tiles: Tiles, state: object, windows: list[Window], precision: str) -> dict[str, torch.Tensor]:
        with param_nets_in(self.model.pfn, precision):
            latent = self._project(tiles[IMAGE])
        self.latents.keep(tiles[IMAGE], windows, precision, latent)
        per_window = []
        for index, window in enumerate(windows):
            rows, cols = region_of(window, self.factor)
            per_window.append(latent_sums(latent[index : index + 1, :, rows, cols], self.model.config.transfer))
        return {name: torch.cat([sums[name] for sums in per_window]).cpu() for name in per_window[0]}

    def apply_statistics(self, state: object, totals: dict[str, torch.Tensor]) -> dict:
        assert isinstance(state, dict)
        content = statistics({name: value[None].to(self.device) for name, value in totals.items()},
                             self.model.config.transfer)
        return {**state, "content": content}

    @torch.inference_mode()
    def run_tile(self, tiles: Tiles, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        assert isinstance(state, dict) and "content" in state, "run the statistics pass first"
        with param_nets_in(self.model.pfn, precision):
            latent = self.latents.take(tiles[IMAGE], windows, precision, self._project)
            batch = latent.shape[0]
            expand = lambda stats: {k: v.expand(batch, *v.shape[1:]) for k, v in stats.items()}  # noqa: E731
            moved = self.model.transfer(latent, expand(state["content"]), expand(state["style"]))
            blended = latent + self.strength * (moved - latent)  # strength 0: the content itself, 1: the full transfer
            return self.model.revert(blended).float().cpu().contiguous()


def read_style(path: str) -> torch.Tensor:
    """A style image file as (1, 3, H, W) in [0, 1], decoded as every input is (`image_io.read_image`)."""
    from upscale_cli.errors import ImageReadError
    from upscale_cli.image_io import read_image

    try:
        return torch.from_numpy(read_image(path).rgb.transpose(2, 0, 1).copy())[None]
    except ImageReadError as exc:
        raise ValueError(str(exc)) from None


def make_runner(model: ArtFlow, device: torch.device, precision: str, options: RunOptions) -> ArtFlowRunner:
    """The runner, with the transfer `options.method` names (AdaIN or WCT: the same weights serve both)."""
    if options.method is not None and options.method != model.config.transfer:
        other = copy.copy(model)  # shares the parameters; only the transfer differs
        other.config = dataclasses.replace(model.config, transfer=options.method)
        model = other
    return ArtFlowRunner(model, device, precision, options.strength)


def receptive_radius(config: ArtFlowConfig) -> int:
    """Input pixels on each side that can change one output pixel: each coupling reads 2 px of its level
    (two 3x3 convs), which is 2^level input px, over `flows` steps, once encoding and once decoding; the
    squeezes' 2x2 cells add one cell per level each way."""
    one_way = sum(config.flows * 2 * 2**level + 2**level for level in range(1, config.blocks + 1))
    return 2 * one_way


_OFFICIAL_FLOW = re.compile(r"^blocks\.(\d+)\.flows\.(\d+)\.(actnorm|invconv|coupling)\.(.+)$")
_OFFICIAL_LEAVES = {  # (their layer, their name) -> (our layer index in a step, our name)
    ("actnorm", "loc"): (0, "bias"), ("actnorm", "scale"): (0, "logs"), ("actnorm", "initialized"): (0, "initialized"),
    ("invconv", "w_l"): (1, "lower"), ("invconv", "w_u"): (1, "upper"), ("invconv", "w_s"): (1, "log_s"),
    ("invconv", "w_p"): (1, "permutation"), ("invconv", "s_sign"): (1, "sign"), ("invconv", "l_mask"): (1, "lower_mask"),
    ("coupling", "net.0.weight"): (2, "net.0.weight"), ("coupling", "net.0.bias"): (2, "net.0.bias"),
    ("coupling", "net.2.weight"): (2, "net.2.weight"), ("coupling", "net.2.bias"): (2, "net.2.bias"),
    ("coupling", "net.4.scale"): (2, "net.4.logs"), ("coupling", "net.4.conv.weight"): (2, "net.4.conv.weight"),
    ("coupling", "net.4.conv.bias"): (2, "net.4.conv.bias"),
}


def recognise(tensors: Mapping[str, torch.Tensor]) -> Recognised | None:
    """The authors' ArtFlow Glow (additive coupling, LU 1x1 convs) under our names, or None."""
    if "blocks.0.flows.0.invconv.w_p" not in tensors or "blocks.0.flows.0.coupling.net.4.scale" not in tensors:
        return None
    if any(".prior." in key for key in tensors):
        return None  # rosinality-style Glow: a split and a prior, another network
    family = "ArtFlow official release (pkuanjie/ArtFlow)"
    named, problems, unknown = {}, [], []
    for key, value in tensors.items():
        match = _OFFICIAL_FLOW.match(key)
        if match is None:
            unknown.append(key)
            continue
        block, flow, layer, leaf = match.groups()
        if (layer, leaf) in (("invconv", "u_mask"), ("invconv", "l_eye")):
            problems += _fixed_buffer_problem(key, value, leaf)
            continue
        if (layer, leaf) not in _OFFICIAL_LEAVES:
            unknown.append(key)
            continue
        index, ours = _OFFICIAL_LEAVES[layer, leaf]
        named[f"pfn.levels.{block}.steps.layers.{flow}.layers.{index}.{ours}"] = _converted(key, leaf, value, problems)
    problems += unexpected_tensors(unknown)
    blocks = len({key.split(".")[1] for key in tensors if key.startswith("blocks.")})
    flows = len({key.split(".")[3] for key in tensors if key.startswith("blocks.0.flows.")})
    hidden = tensors.get("blocks.0.flows.0.coupling.net.0.weight", torch.empty(0)).shape[:1]
    try:
        config = ArtFlowConfig(blocks=blocks, flows=flows, hidden=int(hidden[0]) if hidden else 0)
    except ValueError as exc:
        return Recognised(family, {}, named, problems=problems + [str(exc)])
    return Recognised(family, dataclasses.asdict(config), named, problems)


def _converted(key: str, leaf: str, value: torch.Tensor, problems: list[str]) -> torch.Tensor:
    """A tensor in our convention: ActNorm's scale as its log, `initialized` as a bool that must be set."""
    if leaf == "scale" and ".actnorm." in key:
        if not bool((value > 0).all()):
            problems.append(f"{key} has scales that are not positive (this flow stores their logarithm)")
        return torch.log(value.double().clamp(min=1e-30))
    if leaf == "initialized":
        if int(value) != 1:
            problems.append(f"{key} is 0: the file's ActNorm was never initialised from data")
        return torch.tensor(bool(value))
    return value


def _fixed_buffer_problem(key: str, value: torch.Tensor, leaf: str) -> list[str]:
    """The LU conv's strictly-upper mask and identity are fixed by the layer; a file with others is not this flow."""
    size = value.shape[0] if value.dim() == 2 else 0
    expected = torch.triu(torch.ones(size, size), 1) if leaf == "u_mask" else torch.eye(size)
    return [] if value.dim() == 2 and torch.equal(value.float(), expected) else [f"{key} is not the standard {leaf}"]


def initialize_from(model: ArtFlow, image: torch.Tensor) -> None:
    """Data-dependent ActNorm initialisation from a batch of images (multiples of 2^blocks after cropping)."""
    step = model.config.multiple
    image = image[..., : image.shape[-2] // step * step, : image.shape[-1] // step * step]
    model.train()
    with torch.no_grad():
        model.project(image)
    model.eval()


DESCRIPTOR = ModelDescriptor(
    id="artflow",
    paper="An et al., ArtFlow: Unbiased Image Style Transfer via Reversible Neural Flows, CVPR 2021",
    config_type=ArtFlowConfig,
    build=ArtFlow,
    receptive_radius=receptive_radius,
    # fp32 per input pixel: the coupling's hidden maps at the first level (hidden channels at 1/4 of the
    # pixels, two of them) and the latents, x2 for slack.
    bytes_per_input_pixel=lambda cfg: 2 * 4 * (2 * cfg.hidden // 4 + 48),
    task=IMAGE_TO_IMAGE,
    recognise=recognise,
    extra_inputs=(ExtraInput("style", 3, WHOLE, "the style image (RGB, any size)",
                             load=lambda value, height, width: read_style(value)),),
    size=SizeRequirements(multiple=4),
    # bf16: the coupling networks in bf16, the flow's arithmetic in fp32 (the module docstring). fp16 is not offered.
    fp16=False,
    tile_overlap=64,
    # 64 px overlaps on every side: fewer, larger tiles pay (928 x 1024 photo, 2 AMD EPYC cores, fp32, before the
    # latents were kept between the passes: 512 px tiles 20.1 s, whole 12.9 s).
    cpu_auto_tile=1024,
    make_runner=make_runner,
    initialize=initialize_from,
    small_config={"blocks": 2, "flows": 1, "hidden": 8},
)
