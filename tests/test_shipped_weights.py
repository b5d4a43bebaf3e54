"""The shipped weights: complete provenance, figures that a fresh measurement reproduces, and the
behaviour each model promises on held-out images (Set5 with its official LR files)."""

from __future__ import annotations

from typing import Any

import pytest

from upscale_cli.bench.quality import evaluate_upscaler, figures_key, load_dataset, open_upscaler
from upscale_cli.checkpoint import read_info
from upscale_cli.models import shipped_weights

from conftest import SHARED

SET5 = SHARED / "data" / "val" / "Set5"
SHIPPED = {(w.name, w.scale): w.path for w in shipped_weights()}
needs_set5 = pytest.mark.skipif(not (SET5 / "LR_x4").is_dir(), reason=f"{SET5} (HR/ + LR_x4/) is not present")


BAR_TAU = 0.8  # the temperature at which the SRFlow issue sets its bar
ByTau = dict[float | None, dict[str, float]]  # figures by temperature (None: a deterministic model)


@pytest.mark.parametrize("key", sorted(SHIPPED), ids=lambda k: f"{k[0]}_x{k[1]}")
def test_shipped_checkpoint_records_how_it_was_made(key: tuple[str, int]) -> None:
    info = read_info(SHIPPED[key])
    training = info.training
    assert training["command"].startswith(f"upscale train --model {key[0]} ")
    assert training["iterations"] > 0 and training["hours"] > 0 and isinstance(training["seed"], int)
    datasets = {name.split("@")[0] for name in info.metrics}  # stochastic models: "Set5@tau0.8"
    assert {"Set5", "Set14"} <= datasets, "figures are recorded by `upscale bench quality --record`"


def measure(name: str, dataset: Any, taus: tuple[float, ...] = (BAR_TAU,)) -> ByTau:
    """Set5 x4 means (fp32, untiled, the bench's default samples and seed) by temperature."""
    results = evaluate_upscaler(open_upscaler(name, 4, "cpu"), dataset.pairs, 4, "none", taus)
    return {result["tau"]: result["mean"] for result in results}


@pytest.fixture(scope="module")
def set5() -> Any:
    return load_dataset(SET5, 4)


@pytest.fixture(scope="module")
def set5_results(set5: Any) -> dict[str, ByTau]:
    """bicubic and every shipped x4 model measured now (stochastic ones at BAR_TAU)."""
    names = ["bicubic"] + [name for name, scale in SHIPPED if scale == 4]
    return {name: measure(name, set5) for name in names}


@pytest.fixture(scope="module")
def set5_figures(set5_results: dict[str, ByTau]) -> dict[str, dict[str, float]]:
    return {name: next(iter(by_tau.values())) for name, by_tau in set5_results.items()}


@needs_set5
@pytest.mark.parametrize("name", sorted(name for name, scale in SHIPPED if scale == 4))
def test_recorded_figures_are_reproduced(name: str, set5_results: dict[str, ByTau]) -> None:
    (tau, measured), = set5_results[name].items()
    recorded = read_info(SHIPPED[(name, 4)]).metrics[figures_key("Set5", tau)]
    assert measured["psnr_y"] == pytest.approx(recorded["psnr_y"], abs=0.01)
    assert measured["sharpness"] == pytest.approx(recorded["sharpness"], abs=0.005)
    assert measured["lr_psnr"] == pytest.approx(recorded["lr_psnr"], abs=0.05)


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


@needs_set5
@pytest.mark.skipif({("srresnet", 4), ("srflow", 4)} - set(SHIPPED), reason="srflow_x4 or srresnet_x4 is not shipped")
def test_srflow_samples_clear_the_bar(set5: Any, set5_figures: dict[str, dict[str, float]]) -> None:
    """At tau 0.8: LR-consistent (>= 45 dB), sharper than srresnet, above bicubic; diversity grows with tau."""
    srflow, srresnet, bicubic = set5_figures["srflow"], set5_figures["srresnet"], set5_figures["bicubic"]
    assert srflow["lr_psnr"] >= 45.0
    assert abs(1 - srflow["sharpness"]) < abs(1 - srresnet["sharpness"])
    assert srflow["psnr_y"] > bicubic["psnr_y"]
    cooler = measure("srflow", set5, (0.0, 0.4))
    assert 0 <= cooler[0.0]["diversity"] < cooler[0.4]["diversity"] < srflow["diversity"]
