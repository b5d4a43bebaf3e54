"""Training: resume is bit-exact, the loss falls, export carries its provenance, DDP ranks agree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from upscale_cli.checkpoint import load_model, read_info
from upscale_cli.train.config import TrainConfig, apply_settings, parse_set_options
from upscale_cli.train.loop import Trainer, TrainingInterrupted

TINY_ARCH = {"channels": 8, "blocks": 1}


def tiny_config(data: Path, **overrides: object) -> TrainConfig:
    base = TrainConfig(model="srresnet", data=str(data), scale=4, iters=6, batch=2, patch=16, lr=1e-3,
                       val_every=1000, log_every=1, precision="fp32", arch=dict(TINY_ARCH), seed=3)
    return apply_settings(base, overrides)


def final_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {**{f"g.{k}": v for k, v in trainer.recipe.generator.state_dict().items()},
            **{f"e.{k}": v for k, v in trainer.ema.shadow.state_dict().items()}}


def interrupt_at(trainer: Trainer, step: int) -> None:
    """Deliver a real SIGTERM to this process once the trainer reaches `step`."""
    original = trainer.recipe.train_step

    def step_then_signal(*args: object, **kwargs: object) -> dict[str, float]:
        result = original(*args, **kwargs)
        if trainer.step + 1 == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    trainer.recipe.train_step = step_then_signal  # type: ignore[method-assign]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_is_bit_exact(image_folder: Path, tmp_path: Path, precision: str) -> None:
    config = tiny_config(image_folder, precision=precision)
    straight = Trainer(config, tmp_path / "straight", "test")
    straight.run()

    first = Trainer(config, tmp_path / "halves", "test")
    interrupt_at(first, 3)
    with pytest.raises(TrainingInterrupted):
        first.run()
    assert first.step == 3
    second = Trainer(config, tmp_path / "halves", "test")
    second.run(resume=True)
    assert second.step == 6
    a, b = final_state(straight), final_state(second)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_from_a_damaged_state_takes_the_one_before_it(image_folder: Path, tmp_path: Path) -> None:
    """#27: the last two states are kept; a truncated newest one is said so and the previous one resumed,
    which continues bit for bit like an uninterrupted run."""
    config = tiny_config(image_folder)
    straight = Trainer(config, tmp_path / "straight", "test")
    straight.run()
    run_dir = tmp_path / "run"
    for stop in (3, 5):
        trainer = Trainer(config, run_dir, "test")
        interrupt_at(trainer, stop)
        with pytest.raises(TrainingInterrupted):
            trainer.run(resume=stop == 5)
    state = run_dir / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    said: list[str] = []
    resumed = Trainer(config, run_dir, "test")
    resumed.echo = said.append  # type: ignore[method-assign]
    resumed.run(resume=True)
    assert any("state.pt is unreadable" in line and "state.prev.pt" in line for line in said), said
    assert any("at step 3" in line for line in said), said
    a, b = final_state(straight), final_state(resumed)
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_resume_without_interrupt_differs_from_a_fresh_seed(image_folder: Path, tmp_path: Path) -> None:
    """Guards the exactness test: another seed gives other weights, so equality is not automatic."""
    one = Trainer(tiny_config(image_folder, seed=1), tmp_path / "one", "test")
    two = Trainer(tiny_config(image_folder, seed=2), tmp_path / "two", "test")
    one.run()
    two.run()
    assert not torch.equal(one.recipe.generator.head[0].weight, two.recipe.generator.head[0].weight)


@pytest.mark.parametrize(("native", "warned"), [(False, True), (True, False)])
def test_training_in_emulated_bf16_warns_once(image_folder: Path, tmp_path: Path, monkeypatch,
                                              native: bool, warned: bool) -> None:
    import upscale_cli.device

    monkeypatch.setattr(upscale_cli.device, "cpu_has_native_bf16", lambda: native)
    lines: list[str] = []
    trainer = Trainer(tiny_config(image_folder, precision="bf16", iters=1), tmp_path / "run", "test", echo=lines.append)
    assert trainer.precision == "bf16"
    assert sum("warning: this CPU has no native bf16" in line for line in lines) == int(warned)


def test_loss_falls_and_export_records_provenance(image_folder: Path, tmp_path: Path) -> None:
    config = tiny_config(image_folder, iters=60, val=str(tmp_path / "val"), val_every=30, log_every=10)
    val = tmp_path / "val"
    val.mkdir()
    (val / "a.png").write_bytes((image_folder / "img_0.png").read_bytes())
    trainer = Trainer(config, tmp_path / "run", "upscale train --model srresnet")  # the recipe's validator
    exported = trainer.run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0] * 0.7
    assert [r["step"] for r in log if "val" in r] == [30, 60]
    info = read_info(exported)
    assert info.training["command"] == "upscale train --model srresnet"
    assert info.training["seed"] == 3 and info.training["data"] == str(image_folder)
    assert "psnr_y" in info.metrics["validation"]
    model, _ = load_model(exported)
    assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


def test_batchnorm_recalibration_measures_the_given_batches() -> None:
    import contextlib

    from torch import nn

    from upscale_cli.train.loop import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    model[1].running_mean.fill_(9.0)  # stale statistics from other weights
    batches = [torch.rand(2, 3, 8, 8) + i for i in range(3)]
    assert recalibrate_batchnorm(model.eval(), batches, contextlib.nullcontext)
    features = torch.cat([model[0](b) for b in batches])  # equal batches: the average of means is the mean
    assert torch.allclose(model[1].running_mean, features.mean((0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack([model[0](b).var((0, 2, 3), correction=1) for b in batches])
    assert torch.allclose(model[1].running_var, per_batch_var.mean(0), atol=1e-4)
    assert not model.training and model[1].momentum == 0.1
    without = nn.Sequential(nn.Conv2d(3, 3, 1))
    assert not recalibrate_batchnorm(without, batches, contextlib.nullcontext)


def test_exported_ema_carries_its_own_batchnorm_statistics(image_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    def exported_statistics(**overrides: object) -> dict[str, torch.Tensor]:
        run_dir = tmp_path / f"run{len(overrides)}"
        trainer = Trainer(tiny_config(image_folder, iters=4, **overrides), run_dir, "test")
        trainer.run()
        live = trainer.recipe.generator.state_dict()
        saved = load_file(run_dir / "last.safetensors")
        return {k: (saved[k], live[k]) for k in saved if k.endswith("running_mean")}

    recalibrated = exported_statistics()
    assert recalibrated and all(not torch.allclose(ema, live) for ema, live in recalibrated.values())
    copied = exported_statistics(bn_batches=0)
    assert all(torch.equal(ema, live) for ema, live in copied.values())


def test_periodic_saves_skip_the_statistics_reestimation(image_folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import upscale_cli.train.loop as loop

    calls: list[int] = []
    real = loop.recalibrate_batchnorm
    monkeypatch.setattr(loop, "recalibrate_batchnorm", lambda *a, **k: calls.append(1) or real(*a, **k))
    # save_minutes=0 makes every step a periodic save; only the last (a milestone) re-estimates.
    trainer = Trainer(tiny_config(image_folder, iters=3, save_minutes=0.0), tmp_path / "run", "test")
    saves: list[bool] = []
    real_save = trainer.save
    monkeypatch.setattr(trainer, "save", lambda refresh_statistics=True: saves.append(refresh_statistics)
                        or real_save(refresh_statistics))
    trainer.run()
    assert saves == [False, False, True]
    assert len(calls) == 1


def test_settings_are_typed_and_unknown_keys_rejected() -> None:
    settings = parse_set_options(("lr=0.5", "iters=7", "arch.blocks=2", "arch.norm=none", 'arch.tag="2"'))
    config = apply_settings(TrainConfig(), settings, strings=True)
    assert config.lr == 0.5 and config.iters == 7
    assert config.arch == {"blocks": 2, "norm": "none", "tag": "2"}
    with pytest.raises(ValueError, match="unknown training setting"):
        apply_settings(TrainConfig(), {"learning_rate": 1})
    with pytest.raises(ValueError, match="expected int"):
        apply_settings(TrainConfig(), {"iters": "many"}, strings=True)
    with pytest.raises(ValueError, match="key=value"):
        parse_set_options(("lr",))


def test_each_recipe_has_its_own_typed_settings() -> None:
    """GAN weights live in the GAN recipe's section and flow schedules in the flow's: each is typed, and a
    setting of another recipe is refused instead of silently carried along."""
    gan = apply_settings(TrainConfig(model="srgan"), {"adv_weight": "0.01", "content": "vgg"}, strings=True)
    assert gan.options.adv_weight == 0.01 and gan.options.content == "vgg"
    assert json.loads(gan.to_json())["adv_weight"] == 0.01  # one flat JSON object, as run directories hold
    assert TrainConfig.from_settings(json.loads(gan.to_json())) == gan
    with pytest.raises(ValueError, match="unknown training setting 'adv_weight'"):
        apply_settings(TrainConfig(model="srresnet"), {"adv_weight": 0.01})
    with pytest.raises(ValueError, match="expected float"):
        apply_settings(TrainConfig(model="srflow"), {"encoder_frozen_fraction": "half"}, strings=True)
    flow = apply_settings(gan, {"model": "srflow", "encoder_warmup": 5})
    assert flow.options.encoder_warmup == 5 and not hasattr(flow.options, "adv_weight")


def test_an_unavailable_training_device_is_a_usage_error(image_folder: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from upscale_cli.cli import cli

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is only seen without it")
    result = CliRunner().invoke(cli, ["train", "--data", str(image_folder), "--device", "cuda", "--iters", "1",
                                      "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "no CUDA device" in result.output
    assert not (tmp_path / "run" / "state.pt").exists()


def test_the_loop_takes_batches_from_the_recipe_and_moves_them_to_the_device(image_folder: Path, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """A recipe's batch source may carry extra inputs (a prior, a style image); the loop hands the whole batch,
    on the training device, to the recipe's step."""
    from upscale_cli.train.data import Batch
    from upscale_cli.train.recipes.srresnet import SRResNetRecipe

    class WithPrior:
        def __init__(self, inner) -> None:
            self.inner = inner

        def next_batch(self) -> Batch:
            batch = self.inner.next_batch()
            return Batch(batch.lr, batch.hr, {"prior": torch.ones(batch.hr.shape[0], 8, *batch.hr.shape[2:])})

        def fork(self, seed: int):
            return WithPrior(self.inner.fork(seed))

        def state_dict(self):
            return self.inner.state_dict()

        def load_state_dict(self, state) -> None:
            self.inner.load_state_dict(state)

    seen = []
    original_batches, original_step = SRResNetRecipe.batches, SRResNetRecipe.train_step
    monkeypatch.setattr(SRResNetRecipe, "batches", lambda self, seed: WithPrior(original_batches(self, seed)))

    def step(self, batch, step, autocast):
        seen.append((sorted(batch.extras), batch.extras["prior"].device, batch.lr.device))
        return original_step(self, batch, step, autocast)

    monkeypatch.setattr(SRResNetRecipe, "train_step", step)
    trainer = Trainer(tiny_config(image_folder, iters=2, device="cpu"), tmp_path / "run", "test")
    trainer.run()
    assert seen == [(["prior"], torch.device("cpu"), torch.device("cpu"))] * 2


@pytest.mark.parametrize(("args", "toml", "expected"), [
    (["--model", "srflow"], "", {"model": "srflow", "ema": 0.0, "lr": 2.5e-4}),
    (["--model", "srflow", "--lr", "1e-3", "--set", "ema=0.9"], "", {"ema": 0.9, "lr": 1e-3}),
    ([], 'model = "srflow"\n', {"model": "srflow", "ema": 0.0}),
    ([], 'model = "srflow"\nema = 0.5\n', {"ema": 0.5, "lr": 2.5e-4}),
    (["--model", "srresnet", "--set", "model=srflow"], "", {"model": "srflow", "ema": 0.0}),
    ([], "", {"model": "srresnet", "ema": 0.999, "lr": 2e-4}),
])
def test_each_recipe_starts_from_its_own_defaults(image_folder: Path, tmp_path: Path, monkeypatch,
                                                  args: list[str], toml: str, expected: dict) -> None:
    """SRFlow defaults to no EMA and the paper's lr; the TOML, the options and --set still win, in that order."""
    from click.testing import CliRunner

    import upscale_cli.train.loop as loop
    from upscale_cli.cli import cli

    seen: list[TrainConfig] = []

    class RecordingTrainer:
        def __init__(self, config: TrainConfig, *rest: object, **kwargs: object) -> None:
            seen.append(config)

        def run(self, resume: bool) -> Path:
            raise TrainingInterrupted(0, Path("run"))

    monkeypatch.setattr(loop, "Trainer", RecordingTrainer)
    config_file = tmp_path / "run.toml"
    config_file.write_text(toml)
    result = CliRunner().invoke(cli, ["train", "--data", str(image_folder), "--run-dir", str(tmp_path / "run"),
                                      "--config", str(config_file), *args])
    assert "stopped at step 0" in result.output, result.output
    assert {key: getattr(seen[0], key) for key in expected} == expected


def test_resume_refuses_changed_settings(image_folder: Path, tmp_path: Path) -> None:
    first = Trainer(tiny_config(image_folder), tmp_path / "run", "test")
    interrupt_at(first, 2)
    with pytest.raises(TrainingInterrupted):
        first.run()
    changed = Trainer(tiny_config(image_folder, lr=5e-3), tmp_path / "run", "test")
    with pytest.raises(ValueError, match="lr"):
        changed.run(resume=True)


def test_resume_with_ema_zero_exports_the_live_weights_of_the_same_trajectory(image_folder: Path,
                                                                            tmp_path: Path) -> None:
    straight = Trainer(tiny_config(image_folder), tmp_path / "straight", "test")
    straight.run()

    first = Trainer(tiny_config(image_folder), tmp_path / "run", "test")
    interrupt_at(first, 3)
    with pytest.raises(TrainingInterrupted):
        first.run()
    second = Trainer(tiny_config(image_folder, ema=0.0), tmp_path / "run", "test")
    second.run(resume=True)
    live = second.recipe.generator.state_dict()
    exported, _ = load_model(tmp_path / "run" / "last.safetensors")
    for key, value in straight.recipe.generator.state_dict().items():
        assert torch.equal(live[key], value), key  # the EMA setting does not touch training itself
    for key, value in exported.state_dict().items():
        if "running_" not in key and "num_batches" not in key:  # BatchNorm statistics are re-estimated
            assert torch.equal(value, live[key]), key
    assert not all(torch.equal(v, straight.ema.shadow.state_dict()[k]) for k, v in live.items())


WORKER = """
import sys, json
from pathlib import Path
from safetensors.torch import save_file
from upscale_cli.train.config import TrainConfig
from upscale_cli.train.loop import Trainer
import torch.distributed as dist

config = TrainConfig.from_settings(json.loads(sys.argv[1]))
trainer = Trainer(config, Path(sys.argv[2]), "test")
rank = trainer.dist.rank
trainer.run()
state = {k: v.contiguous() for k, v in trainer.recipe.generator.state_dict().items()}
save_file(state, str(Path(sys.argv[2]) / f"rank{rank}.safetensors"))
"""


def test_two_process_ddp_ranks_agree_and_learn(image_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    config = tiny_config(image_folder, iters=40, log_every=10, lr=2e-3)
    settings = json.loads(config.to_json())
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(worker), json.dumps(settings), str(run_dir)],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = load_file(str(run_dir / "rank0.safetensors")), load_file(str(run_dir / "rank1.safetensors"))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    info = read_info(run_dir / "last.safetensors")
    assert info.training["batch"] == 2 * config.batch  # the effective batch spans both ranks

    single = Trainer(config, tmp_path / "single", "test")
    single.run()
    def losses(folder: Path) -> list[float]:
        return [json.loads(l)["loss"] for l in (folder / "log.jsonl").read_text().splitlines() if '"loss"' in l]
    ddp_losses, single_losses = losses(run_dir), losses(tmp_path / "single")
    assert ddp_losses[-1] < ddp_losses[0] and single_losses[-1] < single_losses[0]
    assert abs(ddp_losses[-1] - single_losses[-1]) < 0.5 * single_losses[0]


def test_srgan_recipe_trains_with_discriminator_features(image_folder: Path, tmp_path: Path) -> None:
    config = tiny_config(image_folder, model="srgan", iters=4, log_every=1, pixel_weight=0.01)
    trainer = Trainer(config, tmp_path / "gan", "test")
    trainer.run()
    records = [json.loads(l) for l in (tmp_path / "gan" / "log.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for record in records:
        assert 0.0 <= record["d_acc"] <= 1.0
        assert all(torch.isfinite(torch.tensor(record[k])) for k in ("loss", "content", "adv", "d_loss"))
    assert read_info(tmp_path / "gan" / "last.safetensors").training["recipe"] == "srgan"


def test_srgan_vgg_content_loads_torchvision_layout(image_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from upscale_cli.train.discriminator import VGG19Features

    torch.manual_seed(0)
    vgg = VGG19Features()
    weights = tmp_path / "vgg19.safetensors"
    save_file({k: v.contiguous() for k, v in vgg.state_dict().items()}, str(weights))
    loaded = VGG19Features.from_file(weights)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded(x), vgg.eval()(x))
    config = tiny_config(image_folder, model="srgan", iters=2, content="vgg", vgg_weights=str(weights))
    Trainer(config, tmp_path / "gan", "test").run()
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not torchvision VGG19 weights"):
        VGG19Features.from_file(tmp_path / "bad.pth")


def test_tensorboard_scalars_when_installed(image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    """With tensorboard importable, every logged figure also goes to a SummaryWriter in the run dir."""
    import types

    written: list[tuple[str, float, int]] = []

    class FakeWriter:
        def __init__(self, folder: str) -> None:
            assert folder.endswith("tensorboard")

        def add_scalar(self, key: str, value: float, step: int) -> None:
            written.append((key, value, step))

        def flush(self) -> None:
            pass

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    Trainer(tiny_config(image_folder, iters=2, log_every=1), tmp_path / "tb", "test").run()
    assert {k for k, _, _ in written} >= {"loss", "lr", "it_per_s"}
    assert sorted({s for _, _, s in written}) == [1, 2]


def test_train_command_end_to_end(image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    """`upscale train` wires its options, refuses to clobber a run, resumes, and exports with provenance."""
    from click.testing import CliRunner

    from upscale_cli.cli import cli

    monkeypatch.chdir(tmp_path)
    toml = tmp_path / "tiny.toml"
    toml.write_text('batch = 2\npatch = 16\nlog_every = 1\nval_every = 1000\n[arch]\nchannels = 8\nblocks = 1\n')
    args = ["train", "--model", "srresnet", "--data", str(image_folder), "--config", str(toml), "--iters", "3",
            "--lr", "0.001", "--loss", "mse", "--seed", "4", "--precision", "fp32", "--run-dir", "run",
            "--out", "out.safetensors", "--set", "ema=0.5"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["lr"] == 0.001 and saved["loss"] == "mse" and saved["seed"] == 4 and saved["ema"] == 0.5
    assert saved["batch"] == 2 and saved["arch"] == {"channels": 8, "blocks": 1}
    info = read_info(tmp_path / "out.safetensors")
    assert info.training["iterations"] == 3 and info.training["command"].startswith("upscale train")
    assert info.config["channels"] == 8

    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "holds a run already" in again.output
    longer = CliRunner().invoke(cli, ["train", "--resume", "run", "--iters", "5"])
    assert longer.exit_code == 0, longer.output
    assert "resumed run at step 3" in longer.output
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["step"] == 5
    resumed = read_info(tmp_path / "run" / "last.safetensors").training
    assert resumed["command"] == info.training["command"]  # the command that started the run
    assert resumed["resumed_with"] == ["upscale train --resume run --iters 5"] and resumed["iterations"] == 5
    assert read_info(tmp_path / "out.safetensors").training["iterations"] == 5  # --out is remembered
    moved = CliRunner().invoke(cli, ["train", "--resume", "run", "--iters", "6", "--out", "moved.safetensors"])
    assert moved.exit_code == 0, moved.output
    assert read_info(tmp_path / "moved.safetensors").training["iterations"] == 6
    again = CliRunner().invoke(cli, ["train", "--resume", "run"])  # remembers iters 6 and the new --out
    assert again.exit_code == 0 and json.loads((tmp_path / "run" / "config.json").read_text())["iters"] == 6
    nothing = CliRunner().invoke(cli, ["train", "--resume", "nowhere"])
    assert nothing.exit_code == 2 and "no state.pt" in nothing.output
    unknown = CliRunner().invoke(cli, ["train", "--data", str(image_folder), "--set", "nope=1"])
    assert unknown.exit_code == 2 and "unknown training setting 'nope'" in unknown.output
    assert CliRunner().invoke(cli, ["train", "--model", "srresnet"]).exit_code == 2  # no --data
