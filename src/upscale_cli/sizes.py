"""Output sizes of an upscaler, shared by the torch engine and the torch-free OpenVINO path."""

from __future__ import annotations

import math

from upscale_cli.archs.base import SUPER_RESOLUTION


class OutputSizes:
    """`output_size` and `passes` of anything with a `name`, a `task` and a native `scale` (attributes of its own)."""

    def output_size(self, width: int, height: int, scale: float | None = None, out_width: int | None = None,
                    out_height: int | None = None) -> tuple[int, int]:
        """The output (width, height) of a `width` x `height` input: the native scale, another `scale`, or
        `out_width` / `out_height` (the aspect kept when only one is given). Image-to-image models keep the
        input's size and refuse the rest (ValueError)."""
        if self.task != SUPER_RESOLUTION:
            if scale is not None or out_width or out_height:
                raise ValueError(f"{self.name} is an {self.task} model (its output has the input's size): "
                                 "a scale, width or height is for super-resolution models")
            return width, height
        if out_width and out_height:
            return out_width, out_height
        if out_width:
            return out_width, max(1, round(height * out_width / width))
        if out_height:
            return max(1, round(width * out_height / height)), out_height
        factor = scale or self.scale
        return max(1, round(width * factor)), max(1, round(height * factor))

    def passes(self, width: int, height: int, out_width: int, out_height: int) -> int:
        """How many runs of the model a `width` x `height` input needs to reach the output size."""
        if self.task != SUPER_RESOLUTION or self.scale < 2:
            return 1
        factor = max(out_width / width, out_height / height)
        return max(1, math.ceil(math.log(factor) / math.log(self.scale) - 1e-9)) if factor > 1 else 1
