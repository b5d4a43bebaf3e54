"""DASR: a degradation encoder learned MoCo-style, then the whole network with L1 + the contrastive loss.

* Batches (`DegradedPairs`): for each sample, two random augmented HR patches of one image, both
  degraded with the same kernel and noise level (`upscale_cli.degrade`, drawn per sample in the
  recipe's `degradation` setting; the noise samples differ). Patch 1's LR is the query and is super-
  resolved; patch 2's LR is the positive key. The batch also carries each sample's blur width and
  noise level, which only the probe reads.
* Contrast (spec 3.3): query encoder + projection head (Linear 256-256, LReLU, Linear, L2-normalised);
  a key encoder and head that follow them by momentum (0.999) every step and get no gradients; a FIFO
  queue of `queue` past keys as negatives; InfoNCE at temperature 0.07. In-batch samples are not
  negatives. Key encoder, head and queue are training state only: the exported model is the encoder,
  G and the probe.
* Stage 1 (the first `encoder_fraction` of the steps, 1/6 as the paper's 100 of 600 epochs): the
  contrastive loss alone, at `encoder_lr` (1e-3 in the paper) with a cosine decay; G is frozen (and
  left out of DDP). Stage 2: L1(SR, HR) + `contrast_weight` x InfoNCE on everything, at `lr` with the
  shared warm-up/cosine schedule over the remaining steps. `encoder_fraction=1` is a stage-1 run alone,
  whose encoder a later run takes with `--init` (any G configuration; `encoder_fraction=0` there);
  `--init` with an exported model of the same G configuration continues all of it.
* The probe learns, from the representation detached, the blur width / 4 and noise level / 25 with an
  MSE: it never shapes the encoder.
* Validation: Set5 HR (the val folder's HR; its LR files are not used) degraded by each of
  `val_degradations` with a fixed seed; `psnr_y` is their mean (it picks the best checkpoint), and each
  condition's PSNR-Y and the probe's mean absolute errors are logged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upscale_cli.archs.dasr import MAX_NOISE, MAX_WIDTH, REPRESENTATION_DIM, DASR, DASRConfig
from upscale_cli.bench.quality import crop_to_multiple, load_pairs, mean_figures
from upscale_cli.checkpoint import load_model
from upscale_cli.degrade import Degradation, degrade, draw_degradations
from upscale_cli.metrics import sr_figures
from upscale_cli.train.config import TrainConfig
from upscale_cli.train.data import Batch, PatchSampler, data_folders
from upscale_cli.train.losses import pixel_loss
from upscale_cli.train.optim import cosine_lambda, optimizer_step
from upscale_cli.train.recipes import AutocastFactory, Recipe, RecipeSpec, TrainContext, Validator


@dataclass(frozen=True)
class DASROptions:
    """DASR's own settings."""

    degradation: str = "general"  # iso | aniso_noise (the paper's two settings) | general (both blurs, noise)
    sharp_quarters: int = 1  # general: of every 4 groups of 4 samples, how many are drawn sharp (sigma <= 1)
    encoder_fraction: float = 1 / 6  # stage 1: the encoder alone, for this fraction of the steps
    encoder_lr: float = 1e-3  # stage 1's learning rate
    queue: int = 8192  # negative keys
    momentum: float = 0.999  # of the key encoder
    temperature: float = 0.07
    contrast_weight: float = 1.0  # of InfoNCE beside L1 in stage 2
    val_degradations: str = "blur:1.2;blur:2.4;blur:3.6;blur:1.2,noise:10;aniso:0.8,3.2,30,noise:5"


class DegradedPairs(PatchSampler):
    """Two patches per sample from one image, degraded alike (see the module docstring)."""

    def __init__(self, folders: list[Path], patch: int, scale: int, batch: int, seed: int, setting: str,
                 sharp_quarters: int) -> None:
        super().__init__(folders, patch, scale, batch, seed)
        draw_degradations(setting, 1, torch.Generator(), sharp_quarters)  # bad settings fail here, before training
        self.setting, self.sharp_quarters = setting, sharp_quarters

    def next_batch(self) -> Batch:
        images = [self._image() for _ in range(self.batch)]
        hr = torch.stack([self._crop(image) for image in images]).float().div(255)
        key_hr = torch.stack([self._crop(image) for image in images]).float().div(255)
        drawn = draw_degradations(self.setting, self.batch, self.generator, self.sharp_quarters)
        lr = degrade(hr, self.scale, drawn.kernels.float(), drawn.noise, self.generator)
        key = degrade(key_hr, self.scale, drawn.kernels.float(), drawn.noise, self.generator)
        return Batch(lr, hr, {"key": key, "width": drawn.width.float(), "noise": drawn.noise.float()})


def projection_head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(REPRESENTATION_DIM, REPRESENTATION_DIM), nn.LeakyReLU(0.1),
                         nn.Linear(REPRESENTATION_DIM, REPRESENTATION_DIM))


class _Query(nn.Module):
    """What gets gradients in a step, as one module for DDP: the encoder, head, probe and (stage 2) G.
    Returns the normalised queries, the probe's outputs (from the detached representation) and SR."""

    def __init__(self, model: DASR, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head
        self.with_sr = False

    def forward(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        representation = self.model.encoder(lr)
        query = F.normalize(self.head(representation).float(), dim=1)
        probe = self.model.probe(representation.detach().float())
        sr = self.model.super_resolve(lr, representation) if self.with_sr else None
        return query, probe, sr


class DASRRecipe(Recipe):
    arch_id = "dasr"

    def __init__(self, config: TrainConfig, context: TrainContext) -> None:
        options = config.options
        if not 0.0 <= options.encoder_fraction <= 1.0:
            raise ValueError(f"encoder_fraction must be in [0, 1], not {options.encoder_fraction}")
        if options.queue % config.batch:
            raise ValueError(f"the queue ({options.queue}) must be a multiple of the batch ({config.batch})")
        self.config, self.wrap = config, context.wrap
        self.arch_config = DASRConfig(scale=config.scale, **config.arch)
        if not self.arch_config.probe:
            raise ValueError("dasr training trains the probe too: arch.probe must stay true")
        torch.manual_seed(config.seed)
        self.generator = DASR(self.arch_config).to(context.device).train()
        if config.init:
            load_start(self.generator, Path(config.init))
        self.head = projection_head().to(context.device)
        self.key_encoder = copy.deepcopy(self.generator.encoder).requires_grad_(False)
        self.key_head = copy.deepcopy(self.head).requires_grad_(False)
        self.queue = F.normalize(torch.randn(options.queue, REPRESENTATION_DIM, device=context.device), dim=1)
        self.queue_position = 0
        self.stage1_steps = round(options.encoder_fraction * config.iters)
        self.stage2_at: int | None = None  # the step stage 2 began: a resume that raises iters never goes back
        self.optimizer = torch.optim.Adam([*self.generator.parameters(), *self.head.parameters()],
                                          lr=config.lr, betas=(0.9, 0.999))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.query = _Query(self.generator, self.head)
        self.net: nn.Module | None = None
        self.stage: int | None = None

    # ----- schedule and stages -----------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        """Stage 1: encoder_lr with a cosine over its steps; stage 2: lr with warm-up and cosine over the rest."""
        config = self.config
        if self._stage(step) == 1:
            decay = cosine_lambda(self.stage1_steps, 0, config.lr_floor)(step)
            return config.options.encoder_lr / config.lr * decay
        start = self.stage2_at if self.stage2_at is not None else self.stage1_steps
        return cosine_lambda(config.iters - start, config.warmup, config.lr_floor)(step - start)

    def _stage(self, step: int) -> int:
        return 2 if self.stage2_at is not None or step >= self.stage1_steps else 1

    def _set_stage(self, stage: int) -> None:
        """Stage 1 trains the encoder and head only; DDP is re-wrapped as it registers trainable parameters."""
        if stage == self.stage:
            return
        self.stage = stage
        for parameter in self.generator.sr_parameters():
            parameter.requires_grad_(stage == 2)
        self.query.with_sr = stage == 2
        self.net = self.wrap(self.query)

    # ----- one step -------------------------------------------------------------------------------------
    @torch.no_grad()
    def _keys(self, key_lr: torch.Tensor, autocast: AutocastFactory) -> torch.Tensor:
        """Momentum-update the key encoder and head, then encode the positive keys with them."""
        m = self.config.options.momentum
        for key, query in ((self.key_encoder, self.generator.encoder), (self.key_head, self.head)):
            torch._foreach_lerp_(list(key.parameters()), [p.detach() for p in query.parameters()], 1 - m)
        with autocast():
            return F.normalize(self.key_head(self.key_encoder(key_lr)).float(), dim=1)

    def _enqueue(self, keys: torch.Tensor) -> None:
        batch = keys.shape[0]
        self.queue[self.queue_position : self.queue_position + batch] = keys
        self.queue_position = (self.queue_position + batch) % self.queue.shape[0]

    def train_step(self, batch: Batch, step: int, autocast: AutocastFactory) -> dict[str, float]:
        options = self.config.options
        if self.stage2_at is None and self._stage(step) == 2:
            self.stage2_at = step
        self._set_stage(self._stage(step))
        assert self.net is not None
        self.generator.train()
        self.key_encoder.train()
        keys = self._keys(batch.extras["key"], autocast)
        with autocast():
            query, probe_out, sr = self.net(batch.lr)
        positive = (query * keys).sum(dim=1, keepdim=True)
        negative = query @ self.queue.T
        logits = torch.cat([positive, negative], dim=1) / options.temperature
        contrast = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
        targets = torch.stack([batch.extras["width"] / MAX_WIDTH, batch.extras["noise"] / MAX_NOISE], dim=1)
        probe = F.mse_loss(probe_out.float(), targets)
        figures = {"contrast": contrast.item(), "probe": probe.item(), "stage": float(self.stage),
                   "top1": (logits.argmax(dim=1) == 0).float().mean().item()}
        loss = (options.contrast_weight if sr is not None else 1.0) * contrast + probe
        if sr is not None:
            l1 = pixel_loss(self.config.loss, sr, batch.hr)
            loss = loss + l1
            figures["l1"] = l1.item()
        optimizer_step(loss, self.optimizer, self.schedule, self.query.parameters(), self.config.grad_clip)
        self._enqueue(keys)
        return {"loss": loss.item(), **figures}

    # ----- the rest of the recipe -----------------------------------------------------------------------
    def batches(self, seed: int) -> DegradedPairs:
        config = self.config
        return DegradedPairs(data_folders(config.data), config.patch, config.scale, config.batch, seed,
                             config.options.degradation, config.options.sharp_quarters)

    def validator(self) -> Validator | None:
        return make_validator(self.config) if self.config.val else None

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "head": self.head.state_dict(),
                "key_encoder": self.key_encoder.state_dict(), "key_head": self.key_head.state_dict(),
                "queue": self.queue, "queue_position": self.queue_position, "stage2_at": self.stage2_at,
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.head.load_state_dict(state["head"])
        self.key_encoder.load_state_dict(state["key_encoder"])
        self.key_head.load_state_dict(state["key_head"])
        self.queue.copy_(state["queue"])
        self.queue_position = int(state["queue_position"])
        self.stage2_at = state["stage2_at"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])


def load_start(model: DASR, path: Path) -> None:
    """Start from another DASR checkpoint: its degradation encoder and probe always (a stage-1 run's: its G
    may have any configuration), and its whole G too when G's configuration is this run's (continuing an
    exported model with fresh optimiser state). The projection head starts afresh, and so does the probe
    of a source without one (the authors' release)."""
    source, info = load_model(path)
    if info.arch != "dasr":
        raise ValueError(f"{path}: is {info.arch}, not a dasr checkpoint to start from")
    if replace(source.config, probe=model.config.probe) == model.config:
        model.load_state_dict(source.state_dict(), strict=source.probe is not None)  # no probe: a fresh one
        return
    model.encoder.load_state_dict(source.encoder.state_dict())
    if source.probe is not None:
        model.probe.load_state_dict(source.probe.state_dict())


def validation_conditions(config: TrainConfig) -> list[Degradation]:
    return [Degradation.parse(spec) for spec in config.options.val_degradations.split(";") if spec.strip()]


def make_validator(config: TrainConfig) -> Validator:
    """PSNR-Y on the val folder's HR images degraded by each validation condition (fixed seed), their mean
    (`psnr_y`), and the probe's mean absolute error on blur width and noise level."""
    scale = config.scale
    hrs = [crop_to_multiple(pair.hr, scale) for pair in load_pairs(Path(config.val), scale)]
    cases = []
    for condition in validation_conditions(config):
        generator = torch.Generator().manual_seed(0)
        width = math.sqrt(condition.aniso[0] * condition.aniso[1]) if condition.aniso else condition.blur
        cases.append((condition, width, [(hr, condition.apply(hr, scale, generator)) for hr in hrs]))

    @torch.no_grad()
    def validate(model: nn.Module) -> dict[str, Any]:
        model.eval()
        device = next(model.parameters()).device
        figures: dict[str, float] = {}
        width_errors, noise_errors = [], []
        for condition, width, pairs in cases:
            scores = []
            for hr, lr in pairs:
                representation = model.encoder(lr[None].to(device))
                sr = model.super_resolve(lr[None].to(device), representation)[0].float().cpu()
                scores.append(sr_figures(sr, hr, border=scale))
                estimate = model.estimate(representation)
                width_errors.append(abs(estimate["blur_width"].item() - width))
                noise_errors.append(abs(estimate["noise_level"].item() - condition.noise))
            figures[f"psnr_y@{condition.label}"] = mean_figures(scores)["psnr_y"]
        conditions = [value for key, value in figures.items() if key.startswith("psnr_y@")]
        return {"psnr_y": sum(conditions) / len(conditions), **figures,
                "probe_width_mae": sum(width_errors) / len(width_errors),
                "probe_noise_mae": sum(noise_errors) / len(noise_errors)}

    return validate


# The CPU configuration of the shipped model is recorded with its weights (weights/README.md).
RECIPE = RecipeSpec(build=DASRRecipe, options=DASROptions, defaults={"lr": 1e-4, "patch": 128, "ema": 0.999})
