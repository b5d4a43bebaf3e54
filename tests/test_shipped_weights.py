"""The shipped weights: complete provenance, figures that a fresh measurement reproduces, and the
behaviour each model promises on held-out images (Set5 with its official LR files)."""

from __future__ import annotations

from pathlib import Path
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
    if key[1] == 1:  # style transfer: no HR to score against; its bar's figures instead
        assert "Set14" in datasets, "figures are recorded by `python benchmarks/artflow_figures.py --record`"
        return
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


# ----- SFT-GAN: the bar of issue #24, on Set5 and Set14 (official LR) -----------------------------------

SET14 = SHARED / "data" / "val" / "Set14"


@pytest.mark.skipif({("srgan", 4), ("sftgan", 4)} - set(SHIPPED) or not (SET14 / "LR_x4").is_dir(),
                    reason="sftgan_x4 or srgan_x4 is not shipped, or Set14 is not present")
@pytest.mark.parametrize("folder", [SET5, SET14], ids=lambda f: f.name)
def test_sftgan_is_above_bicubic_as_sharp_as_srgan_and_perceptually_closer(folder: Any) -> None:
    from upscale_cli.perceptual import weights_path

    dataset = load_dataset(folder, 4)
    figures = {name: measure(name, dataset, ())[None] for name in ("bicubic", "srgan", "sftgan")}
    sftgan, srgan = figures["sftgan"], figures["srgan"]
    assert sftgan["psnr_y"] > figures["bicubic"]["psnr_y"]
    assert sftgan["sharpness"] >= srgan["sharpness"]
    if weights_path() is not None:  # the perceptual extra (in `test`) gives the ST-LPIPS figure
        assert sftgan["stlpips"] < srgan["stlpips"]


# ----- ArtFlow: the bar of issue #25 ------------------------------------------------------------------

STYLES = SHARED / "data" / "style"


@pytest.mark.skipif(("artflow", 1) not in SHIPPED or not (SET14 / "HR").is_dir() or not STYLES.is_dir(),
                    reason="artflow is not shipped, or Set14 or the style paintings are not present")
def test_artflow_round_trips_and_moves_towards_every_style() -> None:
    """One Set14 photo at 128 px with each painting: styled with itself it comes back, C -> S -> C comes
    back (>= 40 dB), and the output's style statistics lie nearer the painting's than the photo's."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from artflow_figures import closer, load_resized, psnr_rgb, stylise

    from upscale_cli.checkpoint import load_model
    from upscale_cli.train.data import list_images
    from upscale_cli.train.recipes.artflow import ArtFlowOptions, loss_network

    model, _ = load_model(SHIPPED[("artflow", 1)])
    content = load_resized(sorted(list_images(SET14 / "HR"))[2], 128)
    nets = {"random": loss_network(ArtFlowOptions(loss_net="random"))}  # the loss network it was trained with
    with torch.no_grad():
        own = model.image_statistics(content)
        assert psnr_rgb(stylise(model, content, own), content) >= 40
        for path in list_images(STYLES):
            style = load_resized(path, 128)
            styled = stylise(model, content, model.image_statistics(style))
            assert psnr_rgb(stylise(model, styled, own), content) >= 40, path.name
            assert closer(nets, styled, content, style)["random"]["closer"], path.name


# ----- DASR: the bar of issue #23, on Set14 with LR made by the degradation module ------------------

DASR_SHIPPED = {("dasr", 4), ("srresnet", 4)} <= set(SHIPPED)
needs_dasr = pytest.mark.skipif(not DASR_SHIPPED or not (SET14 / "HR").is_dir(),
                                reason="dasr_x4 or srresnet_x4 is not shipped, or Set14 is not present")


@pytest.fixture(scope="module")
def set14_degraded() -> dict[str, dict[str, float]]:
    """PSNR-Y of bicubic, srresnet and dasr on Set14 under each condition of the bar (seed 0)."""
    from upscale_cli.degrade import Degradation

    figures: dict[str, dict[str, float]] = {}
    for spec in ("blur:0", "blur:2.4", "blur:3.6", "blur:1.2,noise:10"):
        dataset = load_dataset(SET14, 4, Degradation.parse(spec), seed=0)
        figures[spec] = {name: measure(name, dataset, ())[None]["psnr_y"] for name in ("bicubic", "srresnet", "dasr")}
    return figures


@needs_dasr
def test_dasr_clears_the_blind_super_resolution_bar(set14_degraded: dict[str, dict[str, float]]) -> None:
    for spec in ("blur:2.4", "blur:3.6"):
        assert set14_degraded[spec]["dasr"] >= set14_degraded[spec]["srresnet"] + 1.5, spec
    assert set14_degraded["blur:0"]["dasr"] >= set14_degraded["blur:0"]["srresnet"] - 0.5
    noisy = set14_degraded["blur:1.2,noise:10"]
    assert noisy["dasr"] >= noisy["srresnet"] + 2.0 and noisy["dasr"] >= noisy["bicubic"] + 1.0


@needs_dasr
def test_dasr_representations_retrieve_the_degradation_and_the_probe_estimates_it() -> None:
    """Held-out Set14 images: two different crops under the same (blur, noise) are nearest neighbours among
    eight degradations (chance: 1/8), and the probe's estimates are close to the truth."""
    import math

    import torch

    from upscale_cli.archs.dasr import representation
    from upscale_cli.bench.quality import crop_to_multiple, load_pairs
    from upscale_cli.checkpoint import load_model
    from upscale_cli.degrade import Degradation

    model, _ = load_model(SHIPPED[("dasr", 4)])
    conditions = [Degradation.parse(s) for s in ("blur:0.4", "blur:1.2", "blur:2.4", "blur:3.6", "noise:15",
                                                 "blur:1.2,noise:10", "aniso:0.5,3.5,0,noise:5", "blur:2.4,noise:20")]
    hits, total, width_errors, noise_errors = 0, 0, [], []
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pair in load_pairs(SET14, 4):
            hr = crop_to_multiple(pair.hr, 4)
            if min(hr.shape[-2:]) < 256:
                continue
            top, bottom = hr[:, :128, :128], hr[:, -128:, -128:]
            queries = torch.cat([representation(model, c.apply(top, 4, generator)[None]) for c in conditions])
            keys = torch.cat([representation(model, c.apply(bottom, 4, generator)[None]) for c in conditions])
            similarity = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(keys, dim=1).T
            hits += int((similarity.argmax(dim=1) == torch.arange(len(conditions))).sum())
            total += len(conditions)
            estimates = model.estimate(queries)
            for index, condition in enumerate(conditions):
                width = math.sqrt(condition.aniso[0] * condition.aniso[1]) if condition.aniso else condition.blur
                width_errors.append(abs(float(estimates["blur_width"][index]) - width))
                noise_errors.append(abs(float(estimates["noise_level"][index]) - condition.noise))
    assert hits / total >= 0.5, f"retrieval accuracy {hits / total:.2f}"
    assert sum(width_errors) / len(width_errors) < 0.75 and sum(noise_errors) / len(noise_errors) < 4.0
