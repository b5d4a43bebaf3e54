"""The shipped weights: complete provenance, figures that a fresh measurement reproduces, and the
behaviour each model promises on held-out images (Set5 with its official LR files)."""

from __future__ import annotations

import pytest

from upscale_cli.bench.quality import evaluate_upscaler, load_dataset, open_upscaler
from upscale_cli.checkpoint import read_info
from upscale_cli.models import shipped_weights

from conftest import SHARED

SET5 = SHARED / "data" / "val" / "Set5"
SHIPPED = {(w.name, w.scale): w.path for w in shipped_weights()}
needs_set5 = pytest.mark.skipif(not (SET5 / "LR_x4").is_dir(), reason=f"{SET5} (HR/ + LR_x4/) is not present")


@pytest.mark.parametrize("key", sorted(SHIPPED), ids=lambda k: f"{k[0]}_x{k[1]}")
def test_shipped_checkpoint_records_how_it_was_made(key: tuple[str, int]) -> None:
    info = read_info(SHIPPED[key])
    training = info.training
    assert training["command"].startswith(f"upscale train --model {key[0]} ")
    assert training["iterations"] > 0 and training["hours"] > 0 and isinstance(training["seed"], int)
    assert {"Set5", "Set14"} <= set(info.metrics), "figures are recorded by `upscale bench quality --record`"


@pytest.fixture(scope="module")
def set5_figures() -> dict[str, dict[str, float]]:
    """Set5 x4 means (fp32, untiled) of bicubic and every shipped x4 model, measured now."""
    dataset = load_dataset(SET5, 4)
    names = ["bicubic"] + [name for name, scale in SHIPPED if scale == 4]
    return {name: evaluate_upscaler(open_upscaler(name, 4, "cpu"), dataset.pairs, 4, "none")[0]["mean"]
            for name in names}


@needs_set5
@pytest.mark.parametrize("name", sorted(name for name, scale in SHIPPED if scale == 4))
def test_recorded_figures_are_reproduced(name: str, set5_figures: dict[str, dict[str, float]]) -> None:
    recorded = read_info(SHIPPED[(name, 4)]).metrics["Set5"]
    assert set5_figures[name]["psnr_y"] == pytest.approx(recorded["psnr_y"], abs=0.01)
    assert set5_figures[name]["sharpness"] == pytest.approx(recorded["sharpness"], abs=0.005)


@needs_set5
@pytest.mark.skipif(("srresnet", 4) not in SHIPPED, reason="srresnet_x4 is not shipped")
def test_srresnet_beats_bicubic(set5_figures: dict[str, dict[str, float]]) -> None:
    assert set5_figures["srresnet"]["psnr_y"] > set5_figures["bicubic"]["psnr_y"] + 1.0
    assert set5_figures["srresnet"]["ssim_y"] > set5_figures["bicubic"]["ssim_y"]


@needs_set5
@pytest.mark.skipif({("srresnet", 4), ("srgan", 4)} - set(SHIPPED), reason="srgan_x4 or srresnet_x4 is not shipped")
def test_srgan_is_sharper_than_srresnet_and_stays_above_bicubic(set5_figures: dict[str, dict[str, float]]) -> None:
    srgan, srresnet, bicubic = set5_figures["srgan"], set5_figures["srresnet"], set5_figures["bicubic"]
    assert abs(1 - srgan["sharpness"]) < abs(1 - srresnet["sharpness"])
    assert srgan["psnr_y"] > bicubic["psnr_y"]
