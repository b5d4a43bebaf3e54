"""SRFlow (Lugmayr et al., ECCV 2020): a conditional normalizing flow over HR images given LR features.

Written from the paper and the implementation notes in `shared/research/model_specs.md` section 2
(the official code is CC BY-NC-SA and was not copied).

* Encoder (conditioning network): our SRResNet (`archs/srresnet.py`), so trained SRResNet weights
  initialise it, or (`encoder="rrdb"`) the paper's ESRGAN RRDBNet (`archs/rrdbnet.py`), which the
  authors' released files use. Its tail convs and any upsampling stage the flow does not read are removed.
  Features: `last_lr_fea` = head + trunk_tail(trunk(head)) at LR; the outputs of the residual blocks
  listed in `stack_blocks`, concatenated (4 x 64 = 256 channels); the outputs of the upsampling stages
  (pre-activation: 2xLR, and 4xLR at x8; RRDB: nearest x2 then conv); `fea_up0` = bilinear 1/2 of
  last_lr_fea.
  The stack is resized with nearest-neighbour to each level's resolution and concatenated to that
  level's feature: every condition has (1 + len(stack_blocks)) * encoder_channels (= 320) channels.
  The encoder always runs in eval mode (BatchNorm uses its running statistics, also while it is
  trained jointly), so training, full-image and tiled inference see the same features.
* Flow (encode direction HR -> z), level l = 1..L at HR / 2^l (L = log2(scale) + 1):
  squeeze -> `transition_steps` x (ActNorm, 1x1 conv) -> `steps` x (ActNorm, 1x1 conv, affine
  injector, conditional affine coupling) -> split with a learned prior for l <= L - 2.
  x4: 3 -> 12 @HR/2 (split: 6 out) -> 24 @HR/4 = LR -> 96 @HR/8 = LR/2. Conditions: l1 @2xLR uses
  the 2x upsampling stage, l2 @LR uses last_lr_fea, l3 @LR/2 uses fea_up0. x8 adds one level.
* Latents (`encode` output and `sample`'s `noise`): a list ordered finest first,
  [eps of the split after level 1, (eps after level 2 at x8), z_top]. x4 with LR h x w:
  [(6, 2h, 2w), (96, h/2, w/2)]. All are standard normal under the model.
* NLL in bits per dimension: -(log p(y | x)) / (3 H W ln 2), where log p = sum of log|det J| +
  log N(eps_i; 0, I) for every split + log N(z_top; 0, I). This is the continuous density of the
  [0, 1] image (no constant offset for 8-bit discretisation): it is negative for a good model.
  Training adds Gaussian noise of std 4 / (sqrt(3) * 255) to HR (dequantisation, spec 2.5).
* Sampling: z_top ~ tau * N(0, I) and every split's eps ~ tau * N(0, I), then the flow in reverse in
  fp32 (the encoder may run under bf16 autocast). tau = 0 is the deterministic "mean" output. The LR
  is reflection-padded to even size and the output cropped back; the output is nan_to_num'ed and
  clamped to [0, 1].
* `forward(lr)` is `sample(lr, tau=0)` so that generic code calling `model(lr)` gets the
  deterministic output; sampling at a temperature goes through `sample` or `SRFlowRunner`.
* The authors' `SRFlow_DF2K_4X.pth`-style files (`official_checkpoints.md` section 1) are read by
  `recognise`: the flat `flowUpsamplerNet.layers.{i}` list is walked into levels (a missing index is a
  squeeze, `conv` a split, `affine` a conditional step, else a transition step), zero-conv log scales
  are reshaped, ActNorms marked initialised (the release does not save the flag); the RRDB's tail convs,
  its top upsampling conv and the unused `flowUpsamplerNet.f` never affect the output and are dropped.
  The stacked block indices are not in the weights: the release's configs give (1, 8, 15, 22) at x4
  and (1, 3, 5, 7) at x8.
* A freshly built model cannot sample: its ActNorm layers are initialised from data on the first
  training batch (`initialize`). Loading trained weights restores the initialised state.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from upscale_cli.archs.base import ModelDescriptor, Recognised, unexpected_tensors, RunOptions, Sampling, SizeRequirements
from upscale_cli.archs.rrdbnet import RRDBNet, RRDBNetConfig
from upscale_cli.archs.rrdbnet import recognise as recognise_rrdbnet
from upscale_cli.archs.srresnet import SRResNet, SRResNetConfig
from upscale_cli.device import autocast
from upscale_cli.flows import (
    ActNorm,
    FlowLevel,
    FlowStep,
    MultiScaleFlow,
    param_nets_in,
    standard_normal_log_prob,
    transition_step,
)
from upscale_cli.resize import imresize
from upscale_cli.tiler import IMAGE, Inputs, Tiles, Window, pad_to_multiple

RRDB_SLOPE = 0.2  # the RRDB encoder's LeakyReLU between its upsampling stages
HR_NOISE_STD = 4.0 / (math.sqrt(3.0) * 255.0)  # dequantisation noise of spec 2.5 (on [0, 1] images)
DEFAULT_TAU = 0.8  # the temperature the shipped weights are measured and gated at (the paper shows 0.9)
SUPPORTED_SCALES = (4, 8)


@dataclass(frozen=True)
class SRFlowConfig:
    """SRFlow hyper-parameters. The paper's x4 model is steps=16, hidden=64 with an RRDB encoder;
    here the encoder is an SRResNet of `encoder_blocks` blocks and `encoder_channels` channels."""

    scale: int = 4
    levels: int = 3
    steps: int = 16
    hidden: int = 64
    encoder_channels: int = 64
    encoder_blocks: int = 16
    encoder_norm: str = "batch"
    stack_blocks: tuple[int, ...] = (1, 5, 10, 15)
    transition_steps: int = 2
    encoder: str = "srresnet"  # or "rrdb" (the paper's, and the authors' released files')
    encoder_growth: int = 32  # rrdb: the dense blocks' growth channels

    def __post_init__(self) -> None:
        object.__setattr__(self, "stack_blocks", tuple(int(i) for i in self.stack_blocks))
        if self.scale not in SUPPORTED_SCALES:
            raise ValueError(f"srflow scale must be 4 or 8, not {self.scale}")
        expected = int(math.log2(self.scale)) + 1
        if self.levels != expected:
            raise ValueError(f"srflow x{self.scale} has {expected} levels (HR/2 down to LR/2), not {self.levels}")
        for name in ("steps", "hidden", "encoder_channels", "encoder_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"srflow {name} must be at least 1, not {getattr(self, name)}")
        if self.transition_steps < 0:
            raise ValueError(f"srflow transition_steps must not be negative, not {self.transition_steps}")
        if self.encoder not in ("srresnet", "rrdb"):
            raise ValueError(f"srflow encoder must be 'srresnet' or 'rrdb', not {self.encoder!r}")
        if self.encoder_norm not in ("batch", "none"):
            raise ValueError(f"srflow encoder_norm must be 'batch' or 'none', not {self.encoder_norm!r}")
        if not self.stack_blocks:
            raise ValueError("srflow stack_blocks must name at least one encoder block")
        if len(set(self.stack_blocks)) != len(self.stack_blocks):
            raise ValueError(f"srflow stack_blocks has duplicates: {self.stack_blocks}")
        bad = [i for i in self.stack_blocks if not 0 <= i < self.encoder_blocks]
        if bad:
            raise ValueError(
                f"srflow stack_blocks {bad} are not blocks of a {self.encoder_blocks}-block encoder "
                f"(0-based indices below {self.encoder_blocks})"
            )

    @property
    def cond_channels(self) -> int:
        return (1 + len(self.stack_blocks)) * self.encoder_channels

    def level_factor(self, level: int) -> float:
        """Resolution of flow level `level` (1-based) relative to the LR image: scale / 2^level."""
        return self.scale / 2**level

    def has_split(self, level: int) -> bool:
        return level <= self.levels - 2


def default_stack_blocks(blocks: int) -> tuple[int, ...]:
    """Four encoder blocks spread over the trunk: (1, 5, 10, 15) for 16 blocks, fewer for tiny trunks."""
    if blocks == 16:
        return (1, 5, 10, 15)
    return tuple(sorted({min(blocks - 1, round(1 + i * (blocks - 2) / 3)) for i in range(4)}))


def build_flow(config: SRFlowConfig) -> MultiScaleFlow:
    """SRFlow's multi-scale conditional flow (see the module docstring), from the shared flow library."""
    levels = []
    channels = 3
    for level in range(1, config.levels + 1):
        squeezed = 4 * channels
        block = FlowLevel(squeezed, [transition_step(squeezed) for _ in range(config.transition_steps)],
                          [FlowStep(squeezed, config.cond_channels, config.hidden) for _ in range(config.steps)],
                          split=config.has_split(level))
        levels.append(block)
        channels = block.out_channels
    return MultiScaleFlow(levels)


class SRFlow(nn.Module):
    """SRFlow: SRResNet encoder + conditional multi-scale flow. See the module docstring."""

    def __init__(self, config: SRFlowConfig) -> None:
        super().__init__()
        self.config = config
        # Keep the upsampling stages up to the last one the flow reads (pre-activation).
        self.up_stages = int(math.log2(config.scale)) - 1
        self.encoder = (_rrdb_encoder(config, self.up_stages) if config.encoder == "rrdb"
                        else _srresnet_encoder(config, self.up_stages)).eval()
        self.flow = build_flow(config)
        self._stack = set(config.stack_blocks)

    # ----- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> SRFlow:
        super().train(mode)
        self.encoder.eval()  # frozen BatchNorm statistics, always (see module docstring)
        return self

    @property
    def initialized(self) -> bool:
        """True when every ActNorm (flow and parameter networks) has been initialised from data."""
        return all(m.is_initialized for m in self.modules() if isinstance(m, ActNorm))

    def _check_initialized(self) -> None:
        if not self.initialized:
            raise RuntimeError(
                "this SRFlow model is untrained: its ActNorm layers are initialised from the first training "
                "batch (SRFlow.initialize) or by loading trained weights"
            )

    @torch.no_grad()
    def initialize(self, hr: torch.Tensor, lr: torch.Tensor, noise: bool = True) -> None:
        """Data-dependent ActNorm initialisation: one encode pass in training mode (no-op once done)."""
        was_training = self.training
        self.train()
        try:
            self.nll_bits_per_dim(hr, lr, noise=noise)
        finally:
            self.train(was_training)

    # ----- conditioning ------------------------------------------------------------------------
    def features(self, lr: torch.Tensor) -> list[torch.Tensor]:
        """The per-level conditions (finest first), float32, each (B, cond_channels, h_l, w_l).

        LR must have even height and width. Runs under whatever autocast the caller set (bf16 is
        fine here); the results are cast to float32 for the flow.
        """
        if lr.shape[-2] % 2 or lr.shape[-1] % 2:
            raise ValueError(f"srflow needs an even LR size, got {tuple(lr.shape[-2:])} (pad it by reflection)")
        rrdb = self.config.encoder == "rrdb"
        enc = self.encoder
        head = enc.conv_first(lr) if rrdb else enc.head(lr)
        h = head
        stacked = []
        for index, block in enumerate(enc.body if rrdb else enc.trunk):
            h = block(h)
            if index in self._stack:
                stacked.append(h)
        last = head + (enc.conv_body(h) if rrdb else enc.trunk_tail(h))
        by_factor: dict[float, torch.Tensor] = {1.0: last}
        x, factor = last, 1.0
        for stage in range(self.up_stages):
            up = self._upsample_stage(x, stage)
            factor *= 2
            by_factor[factor] = up
            x = up  # the next stage's input, after the activation
            if stage + 1 < self.up_stages:
                x = F.leaky_relu(up, RRDB_SLOPE) if rrdb else enc.upsample[3 * stage + 2](up)
        by_factor[0.5] = F.interpolate(last, scale_factor=0.5, mode="bilinear", align_corners=False)
        stack = torch.cat(stacked, 1)
        conds = []
        for level in range(1, self.config.levels + 1):
            factor = self.config.level_factor(level)
            conds.append(torch.cat([by_factor[factor], _nearest(stack, factor)], 1).float())
        return conds

    def _upsample_stage(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Upsampling stage `stage` (0-based) of the encoder, before its activation."""
        if self.config.encoder == "rrdb":
            conv = getattr(self.encoder, f"conv_up{stage + 1}")
            return conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        stages = self.encoder.upsample
        return stages[3 * stage + 1](stages[3 * stage](x))  # conv, pixel shuffle

    # ----- density -----------------------------------------------------------------------------
    def encode(self, hr: torch.Tensor, lr: torch.Tensor | None = None,
               conds: Sequence[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """HR (B, 3, H, W) in [0, 1] -> (latents, logdet) in fp32; H and W must be multiples of 2^levels."""
        if conds is None:
            assert lr is not None, "give lr or conds"
            conds = self.features(lr)
        step = 2**self.config.levels
        if hr.shape[-2] % step or hr.shape[-1] % step:
            raise ValueError(f"srflow x{self.config.scale} needs HR sizes that are multiples of {step}, "
                             f"got {tuple(hr.shape[-2:])}")
        with torch.autocast(hr.device.type, enabled=False):
            return self.flow(hr.float(), [u.float() for u in conds])

    def log_prob(self, hr: torch.Tensor, lr: torch.Tensor | None = None,
                 conds: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """log p(hr | lr) in nats per image, shape (B,): logdet + every split's and the top-level prior."""
        latents, logdet = self.encode(hr, lr, conds)
        return logdet + sum(standard_normal_log_prob(z) for z in latents)

    def nll_bits_per_dim(self, hr: torch.Tensor, lr: torch.Tensor | None = None, noise: bool = False,
                         conds: Sequence[torch.Tensor] | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """-log p(hr | lr) / (3 H W ln 2), shape (B,); `noise` adds the dequantisation noise first."""
        if noise:
            device = generator.device if generator is not None else hr.device
            draw = torch.randn(hr.shape, generator=generator, device=device, dtype=torch.float32)
            hr = hr.float() + HR_NOISE_STD * draw.to(hr.device)
        dims = hr.shape[1] * hr.shape[2] * hr.shape[3]
        return -self.log_prob(hr, lr, conds) / (dims * math.log(2.0))

    # ----- sampling ----------------------------------------------------------------------------
    def latent_shapes(self, lr_height: int, lr_width: int) -> list[tuple[int, int, int]]:
        """(C, h, w) of each latent for an (even-sized) LR image, in `encode` order (splits, then top)."""
        shapes = []
        for level, block in zip(range(1, self.config.levels + 1), self.flow.levels):
            if block.split is not None:
                f = self.config.level_factor(level)
                shapes.append((block.split.out_channels, int(lr_height * f), int(lr_width * f)))
        shapes.append((self.flow.top_channels, lr_height // 2, lr_width // 2))
        return shapes

    def latent_factors(self) -> list[float]:
        """Resolution of each latent relative to the LR image, in `latent_shapes` order."""
        factors = [self.config.level_factor(level) for level in range(1, self.config.levels + 1)
                   if self.config.has_split(level)]
        return factors + [0.5]

    def draw_noise(self, lr_height: int, lr_width: int, tau: float, generator: torch.Generator | None = None,
                   batch: int = 1, device: torch.device | str | None = None) -> list[torch.Tensor]:
        """tau * N(0, I) latents for an LR image (sizes rounded up to even), drawn in `latent_shapes` order.

        Draws on `generator`'s device (the CPU by default), so a seed gives the same noise everywhere.
        """
        lr_height, lr_width = lr_height + lr_height % 2, lr_width + lr_width % 2
        gen_device = generator.device if generator is not None else torch.device("cpu")
        out = []
        for shape in self.latent_shapes(lr_height, lr_width):
            z = torch.randn((batch, *shape), generator=generator, device=gen_device, dtype=torch.float32)
            out.append((z * tau).to(device if device is not None else gen_device))
        return out

    def decode(self, latents: Sequence[torch.Tensor],
               conds: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents -> (HR, logdet) through the flow in reverse, in fp32 (no clamping)."""
        self._check_initialized()
        device = conds[0].device
        with torch.autocast(device.type, enabled=False):
            return self.flow.reverse([z.float().to(device) for z in latents], [u.float() for u in conds])

    def sample(self, lr: torch.Tensor, tau: float = DEFAULT_TAU, noise: Sequence[torch.Tensor] | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """SR samples (B, 3, H*s, W*s) in [0, 1] for LR (B, 3, H, W) of any size.

        `noise` (already scaled by the temperature; `tau` is then unused) is a list shaped like
        `latent_shapes` of the LR padded to even size; without it the noise is tau * N(0, I) drawn
        from `generator` (CPU). tau = 0 gives the deterministic mean.
        """
        height, width = lr.shape[-2:]
        padded = pad_to_multiple(lr, 2)
        conds = self.features(padded)
        if noise is None:
            noise = self.draw_noise(padded.shape[-2], padded.shape[-1], tau, generator, batch=lr.shape[0])
        hr, _ = self.decode(noise, conds)
        s = self.config.scale
        return sanitize(hr[..., : height * s, : width * s])

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """The deterministic tau = 0 output (`sample(lr, tau=0)`), for code that treats models as functions."""
        return self.sample(lr, tau=0.0)


def _srresnet_encoder(config: SRFlowConfig, up_stages: int) -> SRResNet:
    encoder = SRResNet(SRResNetConfig(scale=config.scale, channels=config.encoder_channels,
                                      blocks=config.encoder_blocks, norm=config.encoder_norm))
    encoder.upsample = nn.Sequential(*list(encoder.upsample)[: 3 * up_stages - 1])
    del encoder.tail
    return encoder


def _rrdb_encoder(config: SRFlowConfig, up_stages: int) -> RRDBNet:
    encoder = RRDBNet(RRDBNetConfig(scale=config.scale, features=config.encoder_channels,
                                    blocks=config.encoder_blocks, growth=config.encoder_growth))
    for stage in range(up_stages + 1, int(math.log2(config.scale)) + 1):
        delattr(encoder, f"conv_up{stage}")
    del encoder.conv_hr, encoder.conv_last
    return encoder


def _nearest(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Nearest-neighbour resize by 2^k: repeat pixels up, keep every other pixel (top-left) down."""
    if factor >= 1:
        k = int(factor)
        return x if k == 1 else x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
    step = int(round(1 / factor))
    return x[..., ::step, ::step]


def sanitize(image: torch.Tensor) -> torch.Tensor:
    """NaN -> 0, +-inf -> 1 / 0, then clamp to [0, 1]."""
    return torch.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


# ----- tiled sampling ------------------------------------------------------------------------------


class SRFlowRunner:
    """TileRunner for SRFlow: one noise field for the whole image, cropped per tile.

    `prepare(image)` draws every latent for the whole (even-padded) LR image from `seed` (on the CPU,
    so any device gives the same image) and scales it by `tau`. `run_tile` crops each window's part
    of every latent grid (LR/2 for z_top, 2xLR for the x4 split; in general LR * scale / 2^level), runs
    the encoder on the LR window and the flow in reverse. In bf16 the encoder and the flow's parameter
    networks run under bf16 autocast while the affine arithmetic stays fp32: only the reverse pass is run
    here, so the exact invertibility that bf16 parameter networks lose (`benchmarks/flow_precision.py`)
    is not needed; the samples agree with fp32 ones to 53.6 dB or more in 8 bits (benchmarks/flow_reverse.py). Tensors are
    channels_last (faster convolutions in fp32 too). The encoder's conditions of each window are kept
    per model while the same image is sampled again (`ConditionCache`), so `upscale sample -n 8` runs the
    encoder once per window, not once per sample.
    Windows must start at even LR coordinates and have even sizes: the descriptor's size requirement
    (multiples of 2) makes the tiler align them (it pads the image to even size and crops the result).
    In fp32 the output is nan_to_num'ed and clamped; in bf16 NaNs are left in so that the tiler redoes
    the tile in fp32.
    """

    def __init__(self, model: SRFlow, device: torch.device | str = "cpu", precision: str = "fp32",
                 tau: float = DEFAULT_TAU, seed: int = 0) -> None:
        self.model = model.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)
        self.scale = model.config.scale
        self.device = torch.device(device)
        self.precision = precision
        self.tau = tau
        self.seed = seed
        self.factors = model.latent_factors()
        self.conditions = _CONDITIONS.setdefault(model, ConditionCache())

    def prepare(self, inputs: Inputs, max_pixels: int | None) -> list[torch.Tensor]:
        image = inputs[IMAGE].tensor
        self.conditions.use_for(image)
        generator = torch.Generator().manual_seed(self.seed)
        return self.model.draw_noise(image.shape[-2], image.shape[-1], self.tau, generator)

    def _crop(self, latent: torch.Tensor, window: Window, factor: float) -> torch.Tensor:
        if window.in_top % 2 or window.in_left % 2 or window.in_height % 2 or window.in_width % 2:
            raise ValueError(f"srflow tiles must be aligned to 2 LR px (tiler align=2 on an even-sized image), "
                             f"got {window}")
        top, left = int(window.in_top * factor), int(window.in_left * factor)
        height, width = int(window.in_height * factor), int(window.in_width * factor)
        return latent[..., top : top + height, left : left + width]

    @torch.inference_mode()
    def run_tile(self, tiles: Tiles, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        assert isinstance(state, list), "call prepare() first"
        noise = [_channels_last(torch.cat([self._crop(latent, w, f) for w in windows]).to(self.device))
                 for latent, f in zip(state, self.factors)]
        lr = tiles[IMAGE]
        conds = self.conditions.get((tuple(windows), precision), lr, self.model, lambda: self._features(lr, precision))
        with param_nets_in(self.model.flow, precision):
            hr, _ = self.model.decode(noise, conds)
        hr = hr.float()
        hr = sanitize(hr) if precision == "fp32" else hr.clamp(0.0, 1.0)
        return hr.cpu().contiguous()

    def _features(self, lr: torch.Tensor, precision: str) -> list[torch.Tensor]:
        """The encoder's conditions, channels_last, in bf16 when the parameter networks that read them are."""
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        with autocast(self.device, precision):
            return [_channels_last(c.to(dtype)) for c in self.model.features(_channels_last(lr.to(self.device)))]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class ConditionCache:
    """The encoder's conditions per tile of the image being sampled, up to a byte budget, so that later
    samples of the same image skip the encoder. An entry is used only for the same LR tile, bit for bit,
    and while no weight of the model has changed (every in-place update bumps a tensor's version). A new
    image empties the cache; once full it keeps what it has (samples visit the tiles in the same order,
    so evicting would only thrash)."""

    def __init__(self, budget_bytes: int = 512 * 2**20) -> None:
        self.budget, self.used = budget_bytes, 0
        self.image: torch.Tensor | None = None
        self.entries: dict[object, tuple[torch.Tensor, int, list[torch.Tensor], int]] = {}

    def use_for(self, image: torch.Tensor) -> None:
        """Start afresh unless `image` is the one the entries were made from."""
        if self.image is None or self.image.shape != image.shape or not torch.equal(self.image, image):
            self.image, self.entries, self.used = image.clone(), {}, 0

    def get(self, key: object, lr: torch.Tensor, model: nn.Module,
            compute: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
        """The conditions of `lr` stored under `key`, or `compute()`'s, stored if they fit the budget."""
        weights = sum(p._version for p in model.parameters())
        if key in self.entries:
            stored_lr, stored_weights, conditions, size = self.entries.pop(key)
            if stored_weights == weights and stored_lr.shape == lr.shape and torch.equal(stored_lr, lr):
                self.entries[key] = (stored_lr, stored_weights, conditions, size)
                return conditions
            self.used -= size
        conditions = compute()
        size = sum(c.numel() * c.element_size() for c in conditions) + lr.numel() * lr.element_size()
        if self.used + size <= self.budget:
            self.entries[key], self.used = (lr.clone(), weights, conditions, size), self.used + size
        return conditions


_CONDITIONS: weakref.WeakKeyDictionary[SRFlow, ConditionCache] = weakref.WeakKeyDictionary()


@torch.inference_mode()
def image_nll_bits_per_dim(model: SRFlow, hr: torch.Tensor, lr: torch.Tensor,
                           device: torch.device | str = "cpu", seed: int = 0) -> float:
    """NLL in bits/dim of one HR image (3, H, W) given its LR, as training measures it (with the
    dequantisation noise, drawn from `seed`). The flow needs sides that are multiples of 2^levels, so
    HR is cropped at the bottom and right to the largest such size, and LR to match."""
    step, scale = 2**model.config.levels, model.config.scale
    height, width = hr.shape[-2] // step * step, hr.shape[-1] // step * step
    if height == 0 or width == 0:
        raise ValueError(f"HR {tuple(hr.shape[-2:])} is smaller than the {step} px the flow's NLL needs")
    hr = hr[None, :, :height, :width].to(device)
    lr = lr[None, :, : height // scale, : width // scale].to(device)
    generator = torch.Generator().manual_seed(seed)
    return model.eval().nll_bits_per_dim(hr, lr, noise=True, generator=generator).item()


# ----- sizing ----------------------------------------------------------------------------------------


def receptive_radius(config: SRFlowConfig) -> int:
    """LR pixels on each side that can change one output pixel (exact chain bound, not an estimate).

    Walking the sampling direction from an HR pixel: unsqueezing halves a radius (rounded up), each
    conditional step adds 2 (3x3 convs of the coupling/injector networks, reading x and the condition),
    each split's prior adds 1. The condition of level l is read within that level's radius; converted
    to LR px it gains 1 per upsampling conv (above LR) or 1 for the 2x2 bilinear/nearest halving (LR/2).
    The encoder adds its own radius (9x9 head, 2 per residual block, the trunk conv).
    """
    radius, cond_radius = 0, 0
    for level in range(1, config.levels + 1):
        radius = -(-radius // 2) + 2 * config.steps
        factor = config.level_factor(level)
        if factor >= 1:
            lr_radius = -(-radius // int(factor)) + int(math.log2(factor))
        else:
            lr_radius = radius * int(round(1 / factor)) + 1
        cond_radius = max(cond_radius, lr_radius)
        if config.has_split(level):
            radius += 1
    if config.encoder == "rrdb":  # conv_first, 15 convs per RRDB, conv_body
        return cond_radius + 1 + 15 * config.encoder_blocks + 1
    return cond_radius + 4 + 2 * config.encoder_blocks + 1


def bytes_per_lr_pixel(config: SRFlowConfig) -> int:
    """fp32 bytes per LR pixel alive while sampling, x2 for allocator slack.

    Per LR pixel: the conditions of every level (cond_channels * (scale/2^l)^2 floats), the stacked
    encoder features, and at the finest level the parameter network's input plus its hidden maps.
    """
    fine = (config.scale / 2) ** 2
    conds = config.cond_channels * sum(config.level_factor(lv) ** 2 for lv in range(1, config.levels + 1))
    encoder = (len(config.stack_blocks) + 3) * config.encoder_channels * (1 + fine / 4)
    param_net = (config.cond_channels + 6 + 4 * config.hidden + 48) * fine
    return int(2 * 4 * (conds + encoder + param_net))


OFFICIAL_STACKS = {4: (1, 8, 15, 22), 8: (1, 3, 5, 7)}  # the release's configs: not recoverable from weights
_OFFICIAL_LAYER = re.compile(r"^flowUpsamplerNet\.layers\.(\d+)\.(.+)$")
_OFFICIAL_DROPPED = ("flowUpsamplerNet.f.",)  # built by the release's constructor, never called
_PARAM_NET = {"0.weight": "conv1.weight", "0.actnorm.bias": "norm1.bias", "0.actnorm.logs": "norm1.logs",
              "2.weight": "conv2.weight", "2.actnorm.bias": "norm2.bias", "2.actnorm.logs": "norm2.logs",
              "4.weight": "out.conv.weight", "4.bias": "out.conv.bias", "4.logs": "out.logs"}


def recognise(tensors: Mapping[str, torch.Tensor]) -> Recognised | None:
    """The authors' SRFlow release (RRDB encoder + flow) under our names, or None (module docstring)."""
    if "RRDB.conv_first.weight" not in tensors or not any(k.startswith("flowUpsamplerNet.layers.") for k in tensors):
        return None
    family = "SRFlow official release (andreas128/SRFlow)"
    scale = 8 if "RRDB.upconv3.weight" in tensors else 4
    encoder = recognise_rrdbnet({k[5:]: v for k, v in tensors.items() if k.startswith("RRDB.")})
    if encoder is None or encoder.problems:
        problems = [f"its RRDB encoder is not an ESRGAN RRDBNet{': ' + '; '.join(encoder.problems) if encoder else ''}"]
    else:
        problems = []
    unused = ("conv_hr.", "conv_last.", f"conv_up{int(math.log2(scale))}.")  # the SR tail the flow never reads
    named = {f"encoder.{k}": v for k, v in (encoder.tensors if encoder else {}).items() if not k.startswith(unused)}
    flow, flow_problems, levels, steps, transitions = _official_flow(tensors)
    named.update(flow)
    problems += flow_problems
    leftover = [k for k in tensors if not k.startswith(("RRDB.", "flowUpsamplerNet.layers.", *_OFFICIAL_DROPPED))]
    problems += unexpected_tensors(leftover)
    try:
        blocks = encoder.config["blocks"] if encoder else 0
        config = SRFlowConfig(scale=scale, levels=levels, steps=steps, transition_steps=transitions,
                              hidden=tensors["flowUpsamplerNet.layers.3.affine.fAffine.0.weight"].shape[0],
                              encoder="rrdb", encoder_channels=tensors["RRDB.conv_first.weight"].shape[0],
                              encoder_blocks=blocks, encoder_growth=encoder.config["growth"] if encoder else 32,
                              stack_blocks=OFFICIAL_STACKS[scale] if blocks > max(OFFICIAL_STACKS[scale]) else ())
    except (KeyError, ValueError) as exc:
        return Recognised(family, {}, named, problems=problems + [f"not the release's configuration: {exc}"])
    return Recognised(family, asdict(config), named, problems)


def _official_flow(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], int, int, int]:
    """The flat `flowUpsamplerNet.layers.{i}` list as our levels: (tensors, problems, levels, steps per level,
    transition steps per level). A missing index is a squeeze (a new level), `conv` a split."""
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if m := _OFFICIAL_LAYER.match(key):
            by_index.setdefault(int(m[1]), {})[m[2]] = value
    named, problems, level, counts = {}, [], -1, []
    for index in range(max(by_index, default=-1) + 1):
        layer = by_index.get(index)
        if layer is None:  # a squeeze starts the next level
            level, counts = level + 1, counts + [[0, 0]]
            continue
        prefix = f"flow.levels.{level}"
        if "conv.weight" in layer:
            named.update({f"{prefix}.split.prior.conv.weight": layer.pop("conv.weight"),
                          f"{prefix}.split.prior.conv.bias": layer.pop("conv.bias", None),
                          f"{prefix}.split.prior.logs": _logs(layer.pop("conv.logs", None))})
        elif any(k.startswith("affine.") for k in layer):
            ours = f"{prefix}.steps.layers.{counts[level][1]}"
            counts[level][1] += 1
            named.update(_actnorm(f"{ours}.actnorm", layer.pop("actnorm.bias", None), layer.pop("actnorm.logs", None)))
            named[f"{ours}.conv.weight"] = layer.pop("invconv.weight", None)
            for theirs, net in (("fFeatures", "injector"), ("fAffine", "coupling")):
                for leaf, our_leaf in _PARAM_NET.items():
                    value = layer.pop(f"affine.{theirs}.{leaf}", None)
                    named[f"{ours}.{net}.net.{our_leaf}"] = _logs(value) if leaf == "4.logs" else value
                for norm in ("norm1", "norm2"):
                    named[f"{ours}.{net}.net.{norm}.initialized"] = torch.tensor(True)
        else:
            ours = f"{prefix}.transitions.layers.{counts[level][0]}.layers"
            counts[level][0] += 1
            named.update(_actnorm(f"{ours}.0", layer.pop("actnorm.bias", None), layer.pop("actnorm.logs", None)))
            named[f"{ours}.1.weight"] = layer.pop("invconv.weight", None)
        problems += [f"unexpected tensors in flowUpsamplerNet.layers.{index}: {', '.join(sorted(layer)[:3])}"] if layer else []
    missing = sorted(k for k, v in named.items() if v is None)
    problems += [f"missing tensors for {', '.join(missing[:4])}"] if missing else []
    if not counts or len({tuple(c) for c in counts}) != 1:
        problems.append(f"levels of different lengths (transition, conditional steps): {counts}")
    transitions, steps = counts[0] if counts else (0, 0)
    return {k: v for k, v in named.items() if v is not None}, problems, len(counts), steps, transitions


def _actnorm(name: str, bias: torch.Tensor | None, logs: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """An ActNorm's tensors; the release trained it, but keeps the flag as a plain attribute, not saved."""
    return {f"{name}.bias": bias, f"{name}.logs": logs, f"{name}.initialized": torch.tensor(True)}


def _logs(value: torch.Tensor | None) -> torch.Tensor | None:
    """A zero-conv's log scale, [C, 1, 1] in the release, as our [1, C, 1, 1]."""
    return None if value is None else value.reshape(1, -1, 1, 1)


def make_runner(model: SRFlow, device: torch.device, precision: str, options: RunOptions) -> SRFlowRunner:
    """The sampler of one image: the sample of `options.seed` at `options.tau` (default DEFAULT_TAU)."""
    tau = DEFAULT_TAU if options.tau is None else options.tau
    return SRFlowRunner(model, device, precision, tau=tau, seed=options.seed)


def initialize_from_lr(model: SRFlow, lr: torch.Tensor) -> None:
    """ActNorm initialisation of a fresh model from an LR batch alone (its bicubic upscale stands in for HR),
    cropped to the flow's size multiple: enough to run an untrained model in tests."""
    step = 2**model.config.levels // model.config.scale or 1
    lr = lr[..., : lr.shape[-2] // step * step, : lr.shape[-1] // step * step]
    hr = imresize(lr, scale=model.config.scale).clamp(0, 1)
    model.initialize(hr, lr)


DESCRIPTOR = ModelDescriptor(
    id="srflow",
    paper="Lugmayr et al., SRFlow: Learning the Super-Resolution Space with Normalizing Flow, ECCV 2020",
    config_type=SRFlowConfig,
    build=SRFlow,
    receptive_radius=receptive_radius,
    bytes_per_input_pixel=bytes_per_lr_pixel,
    sampling=Sampling(default_tau=DEFAULT_TAU),
    size=SizeRequirements(multiple=2),
    # bf16: the encoder and the parameter networks in bf16, the affine arithmetic in fp32. The reverse pass
    # of a 128 px sample 1.95-2.01x faster than fp32 NCHW on 2 AMD EPYC cores, samples within 53.6 dB of fp32's
    # (benchmarks/flow_reverse.py).
    bf16=True,
    fp16=False,
    tile_overlap=32,  # "generous": one noise field is shared, so the rest of the radius barely matters
    make_runner=make_runner,
    recognise=recognise,
    initialize=initialize_from_lr,
    likelihood=image_nll_bits_per_dim,
    small_config={"scale": 4, "levels": 3, "steps": 1, "hidden": 8, "encoder_channels": 8, "encoder_blocks": 2,
                  "stack_blocks": [0, 1], "transition_steps": 1},
)
