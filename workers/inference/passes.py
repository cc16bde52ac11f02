"""How a generation is drawn: at the Main model's native size, and refined at the size asked when that is larger
(the "hires fix" of A1111, the draw-small-refine-large of ComfyUI workflows). Pure arithmetic, no torch.

Stable Diffusion checkpoints are trained at one size (SD 1.5 512x512, SDXL 1024x1024); asked for two to six times
that area they repeat torsos and heads. A request whose area is at most :data:`~app.contract.limits.TWO_PASS_AREA`
times the native area runs in one pass, as asked. A larger one runs in two: pass 1 at the native *area* with the
request's aspect ratio (each side a multiple of 8), then the images are upscaled to the size asked and redrawn by
an img2img pass at the refine strength (the model's ``refine.strength``, or the request's ``Refine.Strength``;
0 = upscale only). docs/API.md "Native size and refinement".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from app.contract.limits import SIZE_MULTIPLE, SIZE_RANGE, TWO_PASS_AREA


@dataclass(frozen=True)
class Passes:
    """The sizes a job is drawn at: ``draw`` (pass 1) and ``final`` (the size asked); one pass when they are the
    same. ``strength``: the refine pass's strength (0: upscale only); ``steps``: the model's denoising steps."""

    draw: tuple[int, int]
    final: tuple[int, int]
    strength: float
    steps: int

    @property
    def two(self) -> bool:
        return self.draw != self.final

    @property
    def refine_steps(self) -> int:
        """The denoising steps of the refine pass: diffusers' img2img count, ``int(steps * strength)`` (0: none)."""
        return min(int(self.steps * self.strength), self.steps) if self.two else 0

    @property
    def refines(self) -> bool:
        """Whether a second pipeline pass runs: two passes whose strength leaves at least one step of the
        schedule (a strength that leaves none, like 0, upscales only)."""
        return self.refine_steps > 0

    def note(self) -> str:
        """What ran, for the task's Notes: ``drawn at 512x768, refined at 1024x1536``."""
        drawn = "drawn at {}x{}".format(*self.draw)
        if not self.two:
            return drawn
        return drawn + (", refined at {}x{}" if self.refines else ", upscaled to {}x{}").format(*self.final)


def plan_passes(width: int, height: int, native: tuple[int, int], strength: float, steps: int) -> Passes:
    """The passes of a ``width`` x ``height`` request of ``steps`` denoising steps on a model of ``native`` size
    (see the module doc)."""
    area = native[0] * native[1]
    if width * height <= TWO_PASS_AREA * area:
        return Passes((width, height), (width, height), strength, steps)
    aspect = width / height
    draw = tuple(min(limit, max(SIZE_RANGE.lo, SIZE_MULTIPLE * round(side / SIZE_MULTIPLE)))
                 for side, limit in ((math.sqrt(area * aspect), width), (math.sqrt(area / aspect), height)))
    return Passes(draw, (width, height), strength, steps)  # type: ignore[arg-type]
