"""The one list of models: the names users type, the architecture each runs on, and its training recipe.

Adding a model is one entry here (plus its architecture and recipe modules). Everything that lists
models reads this: the architecture registry, `upscale models`, `--model NAME`, `upscale train --model`.
It imports nothing heavy, so that `upscale --help` can read it.
"""

from __future__ import annotations

from dataclasses import dataclass


TRANSFER_METHODS = ("adain", "wct")  # statistics a transfer model can move (`RunOptions.method`)

@dataclass(frozen=True)
class CatalogEntry:
    """A model name (`-m NAME`, weights file `NAME_x{scale}.safetensors`), the architecture its checkpoints
    name and the module defining that architecture's `DESCRIPTOR`, and the module of its training recipe
    (None: not trainable by `upscale train`)."""

    name: str
    arch: str
    arch_module: str
    about: str
    recipe_module: str | None = None


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry("srresnet", "srresnet", "upscale_cli.archs.srresnet",
                 "SRResNet, PSNR-oriented (Ledig et al. 2017)", "upscale_cli.train.recipes.srresnet"),
    CatalogEntry("srgan", "srresnet", "upscale_cli.archs.srresnet",
                 "SRGAN generator, perceptual / GAN-trained (Ledig et al. 2017)", "upscale_cli.train.recipes.srgan"),
    CatalogEntry("srflow", "srflow", "upscale_cli.archs.srflow",
                 "SRFlow, draws many plausible HR images for one LR (Lugmayr et al. 2020)",
                 "upscale_cli.train.recipes.srflow"),
    CatalogEntry("dasr", "dasr", "upscale_cli.archs.dasr",
                 "DASR, blind SR for blurry, noisy photos, degradation learned contrastively (Wang et al. 2021)",
                 "upscale_cli.train.recipes.dasr"),
    CatalogEntry("sftgan", "sftgan", "upscale_cli.archs.sftgan",
                 "SFT-GAN, textures steered by a semantic prior (Wang et al. 2018)", "upscale_cli.train.recipes.sftgan"),
    CatalogEntry("artflow", "artflow", "upscale_cli.archs.artflow",
                 "ArtFlow, style transfer through a reversible flow that loses no content (An et al. 2021)",
                 "upscale_cli.train.recipes.artflow"),
)

DEFAULT_MODEL = "srgan"  # what `upscale` runs without --model
DEFAULT_SAMPLER = "srflow"  # what `upscale sample` runs without --model
DEFAULT_RECIPE = "srresnet"  # what `upscale train` trains without --model
DEFAULT_STYLIZER = "artflow"  # what `upscale stylize` runs without --model


def entry(name: str) -> CatalogEntry | None:
    """The catalog entry of model `name`, or None."""
    return next((e for e in CATALOG if e.name == name), None)


def recipes() -> tuple[str, ...]:
    """Names of the models `upscale train --model` can train."""
    return tuple(e.name for e in CATALOG if e.recipe_module)


# Architectures with no model of ours: they run other projects' weights (`upscale convert`, --model FILE.pth).
IMPORTED_ARCHITECTURES = {"rrdbnet": "upscale_cli.archs.rrdbnet", "compact": "upscale_cli.archs.compact",
                          "msrresnet": "upscale_cli.archs.msrresnet"}


def architecture_modules() -> dict[str, str]:
    """Architecture id -> the module that defines its DESCRIPTOR."""
    return {**{e.arch: e.arch_module for e in CATALOG}, **IMPORTED_ARCHITECTURES}
