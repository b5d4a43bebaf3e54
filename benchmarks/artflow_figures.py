"""ArtFlow's bar (#25): invertibility, unbiasedness, 20-round content leak and style closeness, per pair.

    python benchmarks/artflow_figures.py --model weights/artflow_adain.safetensors \
        [--content ../shared/data/val/Set14/HR] [--styles ../shared/data/style] [--size 256] [--json out.json]
        [--precision fp32|bf16] [--record]

`--record` stores the summary (below) in the checkpoint's metadata under the content folder's dataset name
(with `_bf16` appended for `--precision bf16`: the coupling networks in bf16, as `stylize` runs them on CPUs
with native bf16).

Every content and style image is first resized (MATLAB bicubic) so its shorter side is `--size` px, to
keep the CPU time bounded, and cropped to a multiple of 4 px, the flow's squeeze factor: at other sizes
the padding that `stylize` adds and crops away is lost between rounds, so a round trip is no longer exact
(measured: 20.6-23.4 dB on the five Set14 images whose resized sides are not multiples of 4, against
107-109 dB on the others). Figures are on the float outputs (not clipped or rounded to 8 bits).
* invert: max |PFN^-1(PFN(C)) - C| over the contents.
* round trip, for AdaIN and WCT (the same weights): stylise C with S, then the result with C as the style;
  PSNR (RGB, 0..255) against C, over every content x style pair.
* rounds: C stylised with the five styles in turn `--rounds` times (20 by default), then once with C as
  the style; PSNR and SSIM (Y) against C, per content, AdaIN.
* closer: per pair, whether the output's style statistics (`style_distance`, channel means and stds of
  four layers) lie closer to the style's than to the content's, under both loss networks that need no
  download (the shift-tolerant VGG16 and the fixed random network).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import torch

from upscale_cli.archs.artflow import ArtFlow, latent_sums, statistics
from upscale_cli.checkpoint import load_model, record_metrics
from upscale_cli.flows import param_nets_in
from upscale_cli.metrics import psnr, rgb_to_y, ssim
from upscale_cli.resize import imresize
from upscale_cli.tiler import pad_to_multiple
from upscale_cli.train.data import list_images, load_rgb_u8
from upscale_cli.train.recipes.artflow import ArtFlowOptions, loss_network, style_distance


def load_resized(path: Path, size: int) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1], the shorter side `size` px, cropped to a multiple of 4 (see below)."""
    image = load_rgb_u8(path).float().div(255)[None]
    factor = size / min(image.shape[-2:])
    image = imresize(image, size=(round(image.shape[-2] * factor), round(image.shape[-1] * factor))).clamp(0, 1)
    return image[..., : image.shape[-2] // 4 * 4, : image.shape[-1] // 4 * 4]


def stylise(model: ArtFlow, content: torch.Tensor, style_stats: dict) -> torch.Tensor:
    """The content moved to the given latent statistics (the style's, computed once)."""
    height, width = content.shape[-2:]
    latent = model.project(pad_to_multiple(content, model.config.multiple))
    own = statistics(latent_sums(latent, model.config.transfer), model.config.transfer)
    return model.revert(model.transfer(latent, own, style_stats))[..., :height, :width]


def psnr_rgb(a: torch.Tensor, b: torch.Tensor) -> float:
    return psnr(a * 255, b * 255)


def ssim_y(a: torch.Tensor, b: torch.Tensor) -> float:
    return ssim(rgb_to_y(a.clamp(0, 1))[0], rgb_to_y(b)[0])


@torch.no_grad()
def measure(model: ArtFlow, contents: dict, styles: dict, rounds: int, precision: str = "fp32") -> dict:
    wct = ArtFlow(dataclasses.replace(model.config, transfer="wct")).eval()
    wct.load_state_dict(model.state_dict())
    with param_nets_in(model.pfn, precision), param_nets_in(wct.pfn, precision):
        return _measure(model, wct, contents, styles, rounds)


def _measure(model: ArtFlow, wct: ArtFlow, contents: dict, styles: dict, rounds: int) -> dict:
    nets = {name: loss_network(ArtFlowOptions(loss_net=name)) for name in ("stvgg", "random")}
    invert = max((model.revert(model.project(pad_to_multiple(c, 4)))[..., : c.shape[-2], : c.shape[-1]] - c)
                 .abs().max().item() for c in contents.values())
    figures: dict = {"invert_max_error": invert, "round_trip": {}, "pairs": [], "rounds": {}}
    for name, transfer_model in (("adain", model), ("wct", wct)):
        stats = {key: transfer_model.image_statistics(image) for key, image in {**contents, **styles}.items()}
        trips = []
        for c_name, content in contents.items():
            for s_name in styles:
                styled = stylise(transfer_model, content, stats[s_name])
                trips.append(psnr_rgb(stylise(transfer_model, styled, stats[c_name]), content))
                if name == "adain":
                    figures["pairs"].append({"content": c_name, "style": s_name, **closer(nets, styled, content,
                                                                                            styles[s_name])})
        figures["round_trip"][name] = {"min_psnr": min(trips), "mean_psnr": sum(trips) / len(trips)}
        if name == "adain":
            for c_name, content in contents.items():
                x = content
                for r in range(rounds):
                    x = stylise(model, x, stats[list(styles)[r % len(styles)]])
                back = stylise(model, x, stats[c_name])
                figures["rounds"][c_name] = {"psnr": psnr_rgb(back, content), "ssim_y": ssim_y(back, content)}
    return figures


def closer(nets: dict, styled: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict:
    """Per loss network: the output's style distance to the style and to the content, and which is nearer."""
    result = {}
    for name, net in nets.items():
        out = net(styled)
        to_style, to_content = style_distance(out, net(style)).item(), style_distance(out, net(content)).item()
        result[name] = {"to_style": to_style, "to_content": to_content, "closer": to_style < to_content}
    return result


def summarise(figures: dict, args: argparse.Namespace) -> dict:
    """The headline figures, flat, with the command that measured them (what `--record` stores)."""
    rounds, pairs = list(figures["rounds"].values()), figures["pairs"]
    summary = {"invert_max_error": figures["invert_max_error"]}
    for name, trip in figures["round_trip"].items():
        summary |= {f"round_trip_{name}_min_psnr": trip["min_psnr"], f"round_trip_{name}_mean_psnr": trip["mean_psnr"]}
    for key in ("psnr", "ssim_y"):
        values = [r[key] for r in rounds]
        summary |= {f"rounds_min_{key}": min(values), f"rounds_mean_{key}": sum(values) / len(values)}
    for net in ("stvgg", "random"):
        summary[f"style_closer_{net}"] = sum(p[net]["closer"] for p in pairs) / len(pairs)
    return summary | {"rounds": args.rounds, "size": args.size, "pairs": len(pairs), "precision": args.precision,
                      "command": "python " + shlex.join(sys.argv)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--content", type=Path, default=Path("../shared/data/val/Set14/HR"))
    parser.add_argument("--styles", type=Path, default=Path("../shared/data/style"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: the coupling networks in bf16, the flow's arithmetic in fp32")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--record", action="store_true", help="store the summary in the checkpoint's metadata")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, _ = load_model(args.model)
    contents = {p.stem: load_resized(p, args.size) for p in list_images(args.content)}
    styles = {p.stem: load_resized(p, args.size) for p in list_images(args.styles)}
    figures = measure(model, contents, styles, args.rounds, args.precision)
    pairs, summary = figures["pairs"], summarise(figures, args)
    print(f"invert: max error {summary['invert_max_error']:.2e}")
    for name in ("adain", "wct"):
        print(f"round trip C -> S -> C ({name}): PSNR min {summary[f'round_trip_{name}_min_psnr']:.2f} "
              f"mean {summary[f'round_trip_{name}_mean_psnr']:.2f} dB")
    print(f"{args.rounds} rounds then C: PSNR min {summary['rounds_min_psnr']:.2f} mean {summary['rounds_mean_psnr']:.2f}"
          f" dB, SSIM-Y min {summary['rounds_min_ssim_y']:.4f} mean {summary['rounds_mean_ssim_y']:.4f}")
    print("closer to the style than to the content (pairs), per style:")
    for s_name in styles:
        row = [p for p in pairs if p["style"] == s_name]
        print(f"  {s_name}: " + ", ".join(f"{net} {sum(p[net]['closer'] for p in row)}/{len(row)}"
                                          for net in ("stvgg", "random")))
    if args.record:
        dataset = args.content.parent.name if args.content.name == "HR" else args.content.name
        record_metrics(args.model, dataset + ("_bf16" if args.precision == "bf16" else ""), summary)
        print(f"recorded the summary in {args.model}")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"model": str(args.model), "content": str(args.content),
                                                                    "styles": str(args.styles),
                                                                    "json": str(args.json)}, **figures}, indent=1))


if __name__ == "__main__":
    main()
