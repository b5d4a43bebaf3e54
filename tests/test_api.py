"""The Python API: the same pixels as the CLI, images given back the way they came, sampling by seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import smooth_image
from upscale_cli import api
from upscale_cli.cli import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pil_in_pil_out_gives_the_cli_s_pixels(tiny_checkpoint: Path, tmp_path: Path) -> None:
    photo = tmp_path / "in.png"
    Image.fromarray(smooth_image(18, 22, 3)).save(photo)
    result = CliRunner().invoke(cli, [str(photo), "-m", str(tiny_checkpoint), "--precision", "fp32",
                                      "-o", str(tmp_path / "cli.png"), "-q"])
    assert result.exit_code == 0, result.output
    model = api.load(str(tiny_checkpoint), precision="fp32")
    out = model.upscale(Image.open(photo))
    assert isinstance(out, Image.Image) and out.size == (88, 72) and out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(Image.open(tmp_path / "cli.png")))
    assert model.upscale(Image.open(photo), width=50).size == (50, 41)  # the CLI's --width rule


def test_arrays_come_back_in_their_own_layout(tiny_checkpoint: Path) -> None:
    model = api.load(str(tiny_checkpoint), precision="fp32")
    rgb8 = smooth_image(10, 12, 1)
    as_float = model.upscale(rgb8.astype(np.float64) / 255)
    assert as_float.shape == (40, 48, 3) and as_float.dtype == np.float64
    as_u8 = model.upscale(rgb8)
    assert as_u8.dtype == np.uint8 and np.array_equal(as_u8, (np.clip(as_float, 0, 1) * 255).round().astype(np.uint8))
    as_u16 = model.upscale(rgb8.astype(np.uint16) * 257)
    assert as_u16.dtype == np.uint16 and np.abs(as_u16.astype(float) / 65535 - np.clip(as_float, 0, 1)).max() < 1e-4
    grey = model.upscale(rgb8[:, :, 0])
    assert grey.shape == (40, 48) and grey.dtype == np.uint8
    rgba = np.concatenate([rgb8, np.full((10, 12, 1), 128, np.uint8)], axis=2)
    with_alpha = model.upscale(rgba)
    assert with_alpha.shape == (40, 48, 4) and np.abs(with_alpha[..., 3].astype(int) - 128).max() <= 1
    with pytest.raises(ValueError, match="expected an"):
        model.upscale(np.zeros((4, 4, 5), np.uint8))


def test_sampling_follows_the_seed_and_deterministic_models_refuse_it(tiny_checkpoint: Path) -> None:
    sampler = api.load(api.DEFAULT_SAMPLER, precision="fp32")
    lr = smooth_image(10, 12, 2)
    first, second = sampler.sample(lr, n=2, tau=0.8, seed=3)
    assert not np.array_equal(first, second)
    assert np.array_equal(sampler.sample(lr, n=1, tau=0.8, seed=4)[0], second)  # sample i uses seed + i
    with pytest.raises(ValueError, match="deterministic"):
        api.load(str(tiny_checkpoint)).sample(lr)


def test_progress_shows_a_tqdm_bar_over_the_tiles(tiny_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match="larger than the overlap"):
        api.load(str(tiny_checkpoint), tile="16")
    model = api.load(str(tiny_checkpoint), precision="fp32", tile="24")
    model.upscale(smooth_image(40, 40, 1), progress=True)
    assert "tile" in capsys.readouterr().err
    model.upscale(smooth_image(40, 40, 1))
    assert capsys.readouterr().err == ""


def test_the_readme_example_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The README's Python section is run as written, from the repository root."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    section = text[text.index("### Python"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python") + 9)]
    monkeypatch.chdir(root)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["big"].size == (500, 480)
    assert len(namespace["samples"]) == 2 and namespace["samples"][0].size == (192, 160)
    assert "(500, 480)" in capsys.readouterr().out
