"""The training loop shared by every recipe: sampling, EMA, validation, resumable state, logging, DDP.

A run directory holds `state.pt` (everything needed to continue bit for bit, written atomically and
read with `weights_only=True`; the one before it is kept as `state.prev.pt`), `config.json`, `log.jsonl`, `best.safetensors` (EMA weights with the
best validation PSNR) and `last.safetensors` (the EMA weights at the last save).
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from upscale_cli import __version__
from upscale_cli.archs import get_architecture
from upscale_cli.atomic import write_atomically
from upscale_cli.checkpoint import CheckpointInfo, config_dict, save_checkpoint
from upscale_cli.device import autocast, emulated_bf16_warning, resolve_device, resolve_precision
from upscale_cli.train.config import TrainConfig
from upscale_cli.train.recipes import Recipe, TrainContext, Validator, make_recipe

# Settings --resume may change; any other change is refused. `iters` and `encoder_frozen_fraction` reshape
# the schedule from the current step on, `encoder_warmup` the encoder's ramp after its unfreezing; `ema`
# only changes the averaged copy that is validated and exported (ema=0: the live weights), never the
# training trajectory; `device` moves a run to another machine (a CPU run continued on a GPU).
RESUMABLE_CHANGES = ("iters", "out", "ema", "encoder_frozen_fraction", "encoder_warmup", "device")


class TrainingInterrupted(Exception):
    """Raised after the state was saved because of SIGINT/SIGTERM; the run can be resumed."""

    def __init__(self, step: int, run_dir: Path) -> None:
        super().__init__(f"stopped at step {step}; state saved, continue with --resume {run_dir}")
        self.step = step


class ModelEMA:
    """Exponential moving average of a module's parameters (buffers are copied), warmed up early on."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        ema_params = list(self.shadow.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - decay)
        for ema_buf, buf in zip(self.shadow.buffers(), model.buffers()):
            ema_buf.copy_(buf)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor],
                          autocast_factory: Callable[[], Any]) -> bool:
    """Re-estimate every BatchNorm's running statistics of `model` as plain averages over `batches`.

    An EMA generator averages weights but copies the live model's statistics, which belong to other
    weights; statistics measured on the averaged weights themselves score better (+0.1 dB on Set5 for
    SRResNet at step 12.5k). Returns False, touching nothing, when `model` has no BatchNorm.
    """
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm))]
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    try:
        with autocast_factory():
            for lr in batches:
                model(lr.contiguous(memory_format=torch.channels_last))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(was_training)
    return True


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through the one atomic writer: a crash never leaves half a state file."""
    write_atomically(path, lambda handle: torch.save(obj, handle))


class Distributed:
    """Rank and world size from torchrun's environment; a single process when it is absent."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        if self.world == 1:
            return module
        if self.device.type == "cuda":
            return nn.parallel.DistributedDataParallel(module, device_ids=[self.device])
        return nn.parallel.DistributedDataParallel(module)

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (so all ranks stop together)."""
        if self.world == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value)
        return bool(value.item())

    @torch.no_grad()
    def average_buffers(self, module: nn.Module) -> None:
        """Average float buffers (BatchNorm running statistics) over ranks so every rank holds the same model.

        SyncBatchNorm does not run on the CPU; averaging the running statistics after each step gives the
        same running mean as statistics over the whole distributed batch, at the cost of a tiny all-reduce.
        """
        if self.world == 1:
            return
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer.div_(self.world)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def training_device(name: str) -> torch.device:
    """The device of this process: `name` resolved, and under torchrun on CUDA the GPU of its LOCAL_RANK."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _tensorboard_writer(run_dir: Path) -> Any:
    """A SummaryWriter in `run_dir/tensorboard`, or False without the optional tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    return SummaryWriter(str(run_dir / "tensorboard"))


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{"val": {"psnr_y": 30}} -> {"val/psnr_y": 30}; non-numbers and the step are left out."""
    flat: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and key != "step":
            flat[f"{prefix}{key}"] = float(value)
    return flat


class Trainer:
    """Runs one recipe to `config.iters` steps in `run_dir`, resuming from its state when asked."""

    def __init__(self, config: TrainConfig, run_dir: Path, command: str,
                 validate: Validator | None = None,
                 echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> None:
        """`validate` replaces the recipe's own validator (None: the recipe's)."""
        self.config = config
        self.run_dir = Path(run_dir)
        self.command = command
        self.echo = echo
        self.device = training_device(config.device)
        self.dist = Distributed(self.device)
        # fp16 would need loss scaling, which the recipes do not do: auto picks bf16 or fp32 only.
        self.precision = resolve_precision(config.precision, self.device, fp16=False)
        warning = emulated_bf16_warning(self.device, self.precision)
        if warning and self.dist.main:
            self.echo(f"warning: {warning}")
        torch.manual_seed(config.seed)
        self.recipe: Recipe = make_recipe(config, TrainContext(self.device, self.dist.wrap))
        self.validate = validate if validate is not None else self.recipe.validator()
        self.ema = ModelEMA(self.recipe.generator, config.ema)
        self.sampler = self.recipe.batches(seed=config.seed + 1_000_003 * self.dist.rank)
        skipped = getattr(self.sampler, "skipped", [])
        if skipped and self.dist.main:
            self.echo(f"note: {len(skipped)} image(s) smaller than the {config.patch}px patch are not used: "
                      + ", ".join(Path(p).name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
        self.step = 0
        self.best: dict[str, Any] = {}
        self.latest_validation: dict[str, Any] = {}
        self.resumed_with: list[str] = []
        self.elapsed = 0.0
        self._stop_signal: int | None = None
        self._board: Any = None  # TensorBoard writer, False when tensorboard is not installed
        self._ema_statistics_step = -1  # the step whose EMA BatchNorm statistics were re-estimated

    # ----- state -----------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.pt"

    def state_dict(self) -> dict[str, Any]:
        samplers = self.dist.gather(self.sampler.state_dict())
        return {
            "step": self.step,
            "config": self.config.to_json(),
            "recipe": self.recipe.state_dict(),
            "ema": self.ema.shadow.state_dict(),
            "samplers": samplers,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.zeros(0),
            "best": json.dumps(self.best),
            "latest_validation": json.dumps(self.latest_validation),
            "elapsed": self.elapsed,
            "command": self.command,
            "resumed_with": json.dumps(self.resumed_with),
        }

    @property
    def previous_state_path(self) -> Path:
        return self.run_dir / "state.prev.pt"

    def _read_state(self) -> dict[str, Any]:
        """The newest readable state: `state.pt`, else (said so) the one before it, `state.prev.pt`, when the
        newest is missing (a kill between the two writes of `save`), truncated or corrupt."""
        problems = []
        for path in (self.state_path, self.previous_state_path):
            if not path.exists():
                problems.append(f"{path.name} is missing")
                continue
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # damage fails in the unpickler, the zip reader or torch's own checks
                problems.append(f"{path.name} is unreadable ({type(exc).__name__})")
                continue
            if problems:
                self.echo(f"{self.run_dir}: {problems[0]}; resuming from {path.name}, the state before it")
            return state
        raise ValueError(f"{self.run_dir}: no state to resume from ({'; '.join(problems)})")

    def resume(self) -> None:
        """Load the newest readable state; the config in the run directory must match the one given."""
        state = self._read_state()
        saved = json.loads(state["config"])
        current = json.loads(self.config.to_json())
        changed = sorted(k for k in saved if k not in RESUMABLE_CHANGES and saved[k] != current.get(k))
        if changed:
            raise ValueError(f"{self.run_dir}: the run was started with different settings: {', '.join(changed)}")
        self.step = state["step"]
        self.recipe.load_state_dict(state["recipe"])
        self.ema.shadow.load_state_dict(state["ema"])
        self.sampler.load_state_dict(state["samplers"][self.dist.rank])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None and len(state["cuda_rng"]):
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.best = json.loads(state["best"])
        self.latest_validation = json.loads(state.get("latest_validation", "{}"))  # absent in older states
        self.elapsed = state["elapsed"]
        # Exports keep the command that started the run; resume commands are listed beside it.
        self.resumed_with = json.loads(state.get("resumed_with", "[]")) + [self.command]
        self.command = state.get("command", self.command)

    def save(self, refresh_statistics: bool = True) -> None:
        """Write `state.pt` and `last.safetensors`. The periodic safety saves pass
        `refresh_statistics=False`: their export keeps the live BatchNorm statistics (re-estimating
        them costs about 20 s, 6 % of training at one save per 5 minutes)."""
        state = self.state_dict()  # collective: every rank takes part
        if self.dist.main:
            if self.state_path.exists():  # the last two states are kept: a damaged newest one is not the end
                os.replace(self.state_path, self.previous_state_path)
            atomic_torch_save(state, self.state_path)
            metrics = {"validation": self.latest_validation} if self.latest_validation else {}
            self.export(self.run_dir / "last.safetensors", metrics, refresh_statistics)

    # ----- export ------------------------------------------------------------------------------
    def checkpoint_info(self, metrics: dict[str, Any]) -> CheckpointInfo:
        recipe = self.recipe
        scale = get_architecture(recipe.arch_id).scale(recipe.arch_config)  # 1 for image-to-image models
        return CheckpointInfo(
            arch=recipe.arch_id,
            scale=scale,
            config=config_dict(recipe.arch_config),
            name=f"{self.config.model}_x{scale}",
            training={
                "command": self.command,
                "resumed_with": self.resumed_with,
                "recipe": self.config.model,
                "data": self.config.data,
                "seed": self.config.seed,
                "iterations": self.step,
                "batch": self.config.batch * self.dist.world,
                "patch": self.config.patch,
                "precision": self.precision,
                "hours": round(self.elapsed / 3600, 3),
                "settings": json.loads(self.config.to_json()),
                "upscale_version": __version__,
                "torch_version": torch.__version__,
            },
            metrics=metrics,
        )

    def export(self, path: Path, metrics: dict[str, Any] | None = None, refresh_statistics: bool = True) -> None:
        if refresh_statistics:
            self._refresh_ema_statistics()
        save_checkpoint(path, self.ema.shadow, self.checkpoint_info(metrics if metrics is not None else {}))

    def _refresh_ema_statistics(self) -> None:
        """BatchNorm statistics of the EMA weights, from `bn_batches` fixed training batches (once a step).

        The next EMA update copies the live statistics back, so training itself is unaffected.
        """
        if (not self.recipe.recalibrate_batchnorm or self.config.bn_batches <= 0
                or self._ema_statistics_step == self.step):
            return
        sampler = self.sampler.fork(self.config.seed + 7)
        batches = (sampler.next_batch().lr.to(self.device) for _ in range(self.config.bn_batches))
        recalibrate_batchnorm(self.ema.shadow, batches, lambda: autocast(self.device, self.precision))
        self._ema_statistics_step = self.step

    # ----- loop --------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stop_signal = signum

    def _log(self, record: dict[str, Any]) -> None:
        """Append to log.jsonl, and to TensorBoard when the tensorboard package is installed."""
        if not self.dist.main:
            return
        with open(self.run_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._board is None:
            self._board = _tensorboard_writer(self.run_dir)
        if self._board:
            for key, value in _flatten(record).items():
                self._board.add_scalar(key, value, record["step"])
            self._board.flush()

    def _validate(self) -> None:
        if self.validate is None or not self.dist.main:
            return
        self._refresh_ema_statistics()
        figures = self.validate(self.ema.shadow)
        self.latest_validation = figures
        record = {"step": self.step, "val": figures}
        self._log(record)
        self.echo(f"step {self.step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()
                                                              if isinstance(v, float)))
        key = self.recipe.selection_metric
        if key is not None and figures[key] > self.best.get(key, -math.inf):
            self.best = {"step": self.step, **figures}
            self.export(self.run_dir / "best.safetensors", {"validation": figures})

    def run(self, resume: bool = False) -> Path:
        """Train to `config.iters`; returns the path of the exported weights (best, else last)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
            self.echo(f"resumed {self.run_dir} at step {self.step}")
        if self.dist.main:  # on resume too: a new --iters or --out is what the next resume reads
            (self.run_dir / "config.json").write_text(self.config.to_json() + "\n")
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._loop()
        finally:
            for s, handler in old_handlers.items():
                signal.signal(s, handler)
            self.dist.close()
        best = self.run_dir / "best.safetensors"
        return best if best.exists() else self.run_dir / "last.safetensors"

    def _loop(self) -> None:
        cfg = self.config
        last_save = time.monotonic()
        window_start, window_steps = time.monotonic(), 0
        sums: dict[str, float] = {}
        while self.step < cfg.iters:
            started = time.monotonic()
            batch = self.sampler.next_batch().to(self.device)
            figures = self.recipe.train_step(batch, self.step, lambda: autocast(self.device, self.precision))
            self.dist.average_buffers(self.recipe.generator)
            self.ema.update(self.recipe.generator, self.step)
            self.step += 1
            self.elapsed += time.monotonic() - started
            window_steps += 1
            for k, v in figures.items():
                sums[k] = sums.get(k, 0.0) + v
            if self.step % cfg.log_every == 0 or self.step == cfg.iters:
                rate = window_steps / max(1e-9, time.monotonic() - window_start)
                record = {"step": self.step, **{k: v / window_steps for k, v in sums.items()},
                          "lr": self.recipe.current_lr(), "it_per_s": rate}
                self._log(record)
                eta = (cfg.iters - self.step) / max(rate, 1e-9)
                self.echo(f"step {self.step}/{cfg.iters} " + " ".join(
                    f"{k} {v:.4g}" for k, v in record.items() if k != "step") + f" eta {eta / 60:.1f} min")
                sums, window_start, window_steps = {}, time.monotonic(), 0
            if self.step % cfg.val_every == 0 or self.step == cfg.iters:
                self._validate()
            stop = self.dist.any(self._stop_signal is not None)
            due = time.monotonic() - last_save > cfg.save_minutes * 60
            milestone = self.step % cfg.val_every == 0 or self.step == cfg.iters or stop
            if milestone or self.dist.any(due):
                self.save(refresh_statistics=milestone)
                last_save = time.monotonic()
            if stop:
                raise TrainingInterrupted(self.step, self.run_dir)
