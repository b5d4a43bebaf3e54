"""SRFlow: maximum likelihood (NLL in bits/dim) of HR patches given an SRResNet encoder's LR features.

* The encoder starts from `config.init` (a trained srresnet checkpoint of the same scale: its
  channels, blocks and norm set the encoder's config) and is frozen for the first
  `encoder_frozen_fraction` of the iterations (features computed without gradients), then trained
  jointly at the then-current learning rate, reached over `encoder_warmup` steps (0: at once, as the
  paper): Adam's first updates of parameters it has no moments for are sign steps of the full
  learning rate, which shook the pre-trained encoder (loss -4.0 -> -1.7 bits/dim, weights/README).
  A resume may move the unfreezing while the encoder is still frozen; once it trains, it trains to the
  end. Without `init` the encoder starts random (useful for tests only: spec 2.10 says a random frozen
  encoder does not work).
* ActNorm data-dependent initialisation runs on the first batch, in training mode, before any
  optimiser step (not again after a resume: the flags are in the state).
* Loss = mean NLL in bits/dim with the dequantisation noise (`hr_noise`). A step whose loss or
  gradient norm is not finite makes no optimiser step; it is reported as `skipped` = 1 (the log
  shows the fraction of skipped steps per window) and counted in the recipe state.
* Under bf16 autocast the flow's parameter networks run in bf16 too (1.8x faster steps here, measured
  by `benchmarks/flow_precision.py`); the flow's own arithmetic and log-dets stay fp32.
  `param_nets_fp32` keeps them in fp32.
* Adam + warm-up/cosine from train/optim.py over all parameters (Adam skips the frozen encoder,
  whose gradients are None).
* `selection_metric` is None: the exported model is the last step's (live by default: the recipe's
  `ema` default is 0, see `RECIPE` below). Validation NLL keeps
  falling under the cosine schedule, and PSNR at tau 0 would pick the least diverse weights (the
  same reason SRGAN keeps the last weights).

`DEFAULT_ARCH` is the CPU configuration proposed for the shipped model (K = 4 steps per level instead
of the paper's 16; everything else as the paper, with the shipped SRResNet as encoder).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from upscale_cli.archs.srflow import SRFlow, SRFlowConfig, default_stack_blocks
from upscale_cli.checkpoint import load_model, load_strict, read_info
from upscale_cli.bench.quality import diversity, load_pairs, lr_consistency, mean_figures
from upscale_cli.flows.layers import set_param_net_dtype
from upscale_cli.metrics import sr_figures
from upscale_cli.train.config import TrainConfig
from upscale_cli.train.optim import adam_with_schedule
from upscale_cli.train.validate import center_crop_pair
from upscale_cli.train.recipes import AutocastFactory, Batch, Recipe, RecipeSpec, TrainContext, Validator

DEFAULT_ARCH: dict[str, Any] = {"steps": 4, "hidden": 64, "transition_steps": 2}
_ENCODER_KEYS = {"channels": "encoder_channels", "blocks": "encoder_blocks", "norm": "encoder_norm"}


def make_arch_config(config: TrainConfig) -> SRFlowConfig:
    """The SRFlow config: DEFAULT_ARCH, the encoder shape of `config.init`, then `config.arch` overrides."""
    values: dict[str, Any] = dict(DEFAULT_ARCH)
    if config.init:
        info = read_info(Path(config.init))
        if info.arch != "srresnet" or info.scale != config.scale:
            raise ValueError(f"{config.init}: is {info.arch} x{info.scale}; the srflow encoder needs "
                             f"srresnet x{config.scale} weights")
        for src, dst in _ENCODER_KEYS.items():
            if src in info.config:
                if dst in config.arch and config.arch[dst] != info.config[src]:
                    raise ValueError(f"arch.{dst}={config.arch[dst]!r} contradicts the init weights "
                                     f"({src}={info.config[src]!r})")
                values[dst] = info.config[src]
    values.update(config.arch)
    if "stack_blocks" not in values:
        values["stack_blocks"] = default_stack_blocks(values.get("encoder_blocks", SRFlowConfig.encoder_blocks))
    if "scale" in values and values.pop("scale") != config.scale:
        raise ValueError("arch.scale must match the training scale")
    return SRFlowConfig(scale=config.scale, **values)


def load_encoder(model: SRFlow, path: Path) -> None:
    """Copy a trained SRResNet's weights into the encoder (parts SRFlow does not use are left out)."""
    srresnet, _ = load_model(path)
    source = srresnet.state_dict()
    wanted = model.encoder.state_dict()
    load_strict(model.encoder, {k: v for k, v in source.items() if k in wanted}, path)


class _Objective(nn.Module):
    """The per-sample training NLL as a module, so DDP can wrap it (its forward is what DDP syncs)."""

    def __init__(self, model: SRFlow) -> None:
        super().__init__()
        self.model = model
        self.frozen_encoder = True
        self.noise = True
        self.autocast: AutocastFactory = contextlib.nullcontext

    def forward(self, hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        with self.autocast(), torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_encoder):
            conds = self.model.features(lr)
        return self.model.nll_bits_per_dim(hr, lr, noise=self.noise, conds=conds)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def _broadcast_from_rank0(module: nn.Module) -> None:
    """Give every rank rank 0's data-initialised ActNorm values (each rank saw its own batch)."""
    if not _distributed():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            dist.broadcast(tensor.data, 0)


def _all_finite(value: torch.Tensor) -> bool:
    """True when `value` is finite on every rank (so all ranks skip a step together)."""
    flag = torch.isfinite(value.detach()).all().to(torch.int32).reshape(1)
    if _distributed():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


@dataclass(frozen=True)
class FlowOptions:
    """SRFlow's own settings."""

    encoder_frozen_fraction: float = 0.5  # encoder (from `init`) frozen for this fraction of iters, then trained
    encoder_warmup: int = 0  # steps over which the unfrozen encoder's updates ramp from 0 to the full learning rate
    hr_noise: bool = True  # dequantisation noise (Gaussian, std 4/(sqrt(3)*255)) added to HR while training
    param_nets_fp32: bool = False  # keep the flow's parameter networks in fp32 under bf16 (1.8x slower steps)
    val_crop: int = 128  # validation uses HR centre crops of at most this size (CPU cost)


class SRFlowRecipe(Recipe):
    arch_id = "srflow"
    selection_metric = None
    recalibrate_batchnorm = False  # the encoder always uses the statistics it came with (see archs/srflow.py)

    def __init__(self, config: TrainConfig, context: TrainContext) -> None:
        flow = config.options
        if not 0.0 <= flow.encoder_frozen_fraction <= 1.0:
            raise ValueError(f"encoder_frozen_fraction must be in [0, 1], not {flow.encoder_frozen_fraction}")
        if flow.encoder_warmup < 0:
            raise ValueError(f"encoder_warmup must be 0 or more steps, not {flow.encoder_warmup}")
        self.config = config
        self.wrap = context.wrap
        self.arch_config = make_arch_config(config)
        multiple = 2**self.arch_config.levels
        if config.patch % multiple:
            raise ValueError(f"srflow x{config.scale} needs an HR patch that is a multiple of {multiple} "
                             f"(LR/2 latent grid), not {config.patch}")
        self.generator = SRFlow(self.arch_config)
        if config.init:
            load_encoder(self.generator, Path(config.init))
        self.generator.to(context.device).train()
        self.objective = _Objective(self.generator)
        self.objective.noise = flow.hr_noise
        self.net: nn.Module | None = None
        self.frozen: bool | None = None
        self.freeze_steps = round(flow.encoder_frozen_fraction * config.iters)
        self.unfrozen_at: int | None = None  # the step the encoder started training (it never freezes again)
        self.optimizer, self.schedule = adam_with_schedule(self.generator.parameters(), config.lr, config)
        self.skipped_total = 0

    def _set_phase(self, frozen: bool) -> None:
        """Freeze or unfreeze the encoder; (re)wrap for DDP, which registers only trainable parameters."""
        if frozen == self.frozen:
            return
        self.frozen = frozen
        self.generator.encoder.requires_grad_(not frozen)
        self.objective.frozen_encoder = frozen
        self.net = self.wrap(self.objective)

    def _encoder_frozen(self, step: int) -> bool:
        """Frozen before `freeze_steps`, trained from then on for good: a resume that raises `iters` (and
        with it `freeze_steps`) must not freeze an encoder that is already training."""
        if self.unfrozen_at is None and step >= self.freeze_steps:
            self.unfrozen_at = step
        return self.unfrozen_at is None

    def _param_nets_follow(self, autocast: AutocastFactory, device_type: str) -> None:
        """Run the flow's parameter networks in the run's autocast dtype unless `param_nets_fp32`."""
        with autocast():
            dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        set_param_net_dtype(self.generator.flow, None if self.config.options.param_nets_fp32 else dtype)

    def validator(self) -> Validator | None:
        return make_flow_validator(self.config) if self.config.val else None

    def train_step(self, batch: Batch, step: int, autocast: AutocastFactory) -> dict[str, float]:
        lr, hr = batch.lr, batch.hr
        self._param_nets_follow(autocast, hr.device.type)
        if not self.generator.initialized:
            self.generator.initialize(hr, lr, noise=self.config.options.hr_noise)
            _broadcast_from_rank0(self.generator)
        self._set_phase(self._encoder_frozen(step))
        assert self.net is not None
        self.generator.train()
        self.objective.autocast = autocast
        loss = self.net(hr, lr).mean()
        self.optimizer.zero_grad(set_to_none=True)
        skipped = True
        if _all_finite(loss):
            loss.backward()
            max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
            norm = nn.utils.clip_grad_norm_(self.generator.parameters(), max_norm)
            if _all_finite(norm):
                self._optimizer_step(step)
                skipped = False
            else:
                self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.skipped_total += int(skipped)
        return {"loss": loss.item(), "skipped": float(skipped)}

    def encoder_update_fraction(self, step: int) -> float:
        """How much of its Adam update the encoder takes at `step`: 0 while frozen, then a linear ramp
        over `encoder_warmup` steps (1/N on the first trained step) to 1."""
        if self.unfrozen_at is None:
            return 0.0
        return min(1.0, (step - self.unfrozen_at + 1) / max(1, self.config.options.encoder_warmup))

    def _optimizer_step(self, step: int) -> None:
        """One Adam step; during the encoder's warm-up its parameters move only part of the way, which is
        Adam at a proportionally lower learning rate for them (the update is additive, no weight decay)."""
        fraction = self.encoder_update_fraction(step)
        encoder = [p for p in self.generator.encoder.parameters() if p.grad is not None] if fraction < 1 else []
        before = [p.detach().clone() for p in encoder]
        self.optimizer.step()
        with torch.no_grad():
            for param, old in zip(encoder, before):
                param.lerp_(old, 1.0 - fraction)

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "skipped_total": self.skipped_total,
                "unfrozen_at": self.unfrozen_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.skipped_total = int(state["skipped_total"])
        self.unfrozen_at = state.get("unfrozen_at")  # absent in states saved before it was recorded


FLOW_TAU = 0.8  # sampling temperature of the stochastic validation figures
FLOW_SAMPLES = 3  # samples per image for the tau 0.8 figures and the diversity


def make_flow_validator(config: TrainConfig) -> Validator:
    """SRFlow figures on HR centre crops of at most `val_crop` px, averaged over the images:

    nll_bpd (bits/dim with the training noise, fixed seed), psnr_y_tau0 and lr_psnr_tau0 of the tau 0
    output, psnr_y_tau08 / lr_psnr_tau08 (means over 3 samples at tau 0.8), diversity_tau08 (mean
    per-pixel std of those samples, 0..255). Seeds are fixed per image, so figures are reproducible.
    """
    levels = int(math.log2(config.scale)) + 1
    pairs = [center_crop_pair(p, config.scale, 2**levels, config.options.val_crop)
             for p in load_pairs(Path(config.val), config.scale)]

    @torch.no_grad()
    def validate(model: nn.Module) -> dict[str, Any]:
        model.eval()
        device = next(model.parameters()).device
        figures = []
        for index, pair in enumerate(pairs):
            generator = torch.Generator().manual_seed(index)
            hr, lr = pair.hr[None].to(device), pair.lr[None].to(device)
            nll = model.nll_bits_per_dim(hr, lr, noise=config.options.hr_noise, generator=generator).item()
            mean = model.sample(lr, tau=0.0)[0].cpu()
            draws = list(model.sample(lr.expand(FLOW_SAMPLES, -1, -1, -1), tau=FLOW_TAU, generator=generator).cpu())
            figures.append({
                "nll_bpd": nll,
                "psnr_y_tau0": sr_figures(mean, pair.hr, border=config.scale)["psnr_y"],
                "lr_psnr_tau0": lr_consistency(mean, pair.lr),
                "psnr_y_tau08": mean_figures([sr_figures(d, pair.hr, border=config.scale) for d in draws])["psnr_y"],
                "lr_psnr_tau08": sum(lr_consistency(d, pair.lr) for d in draws) / len(draws),
                "diversity_tau08": diversity(draws),
            })
        return mean_figures(figures)

    return validate


RECIPE = RecipeSpec(build=SRFlowRecipe, options=FlowOptions,
                    # The paper's learning rate; no EMA, because the average of a flow's weights is a worse flow
                    # than the live weights (weights/README.md, SRFlow section).
                    defaults={"lr": 2.5e-4, "ema": 0.0})
