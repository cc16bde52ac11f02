"""How a generation is drawn: at the Main model's native size, and refined at the size asked when that is larger
(the "hires fix" of A1111, the draw-small-refine-large of ComfyUI workflows). Pure arithmetic, no torch.

Stable Diffusion checkpoints are trained at one size (SD 1.5 512x512, SDXL 1024x1024); asked for two to six times
that area they repeat torsos and heads. A request whose area is at most :data:`~app.contract.limits.TWO_PASS_AREA`
times the native area runs in one pass, as asked. A larger one runs in two: pass 1 at the native *area* with the
request's aspect ratio (each side a multiple of 8), then the images are upscaled to the size asked and redrawn by
an img2img pass at the refine strength (the model's ``refine.strength``, or the request's ``Refine.Strength``;
0 = upscale only). docs/API.md "Native size and refinement".

A refine pass over more than ``tile_above`` (the model's ``refine.tile_above``, default
:data:`~app.contract.limits.REFINE_TILE_ABOVE`) times the native area runs in overlapping tiles (:func:`tile_grid`),
each at most that area, refined one after the other from the image as the tiles before left it and blended in
over :data:`~app.contract.limits.REFINE_TILE_OVERLAP` pixels (:func:`tile_weights`): the memory and the attention
cost of a call stay those of a bounded size whatever the size asked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.contract.limits import REFINE_TILE_ABOVE, REFINE_TILE_OVERLAP, SIZE_MULTIPLE, SIZE_RANGE, TWO_PASS_AREA

#: A tile of the refine pass: (left, top, right, bottom) in the final image, right and bottom exclusive.
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Passes:
    """The sizes a job is drawn at: ``draw`` (pass 1) and ``final`` (the size asked); one pass when they are the
    same. ``strength``: the refine pass's strength (0: upscale only); ``steps``: the model's denoising steps;
    ``tiles``: the tiles the refine pass runs in (none: the whole image in one call)."""

    draw: tuple[int, int]
    final: tuple[int, int]
    strength: float
    steps: int
    tiles: tuple[Box, ...] = ()

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

    @property
    def refine_calls(self) -> int:
        """The pipeline calls of the refine pass per batch: one per tile, one for the whole image, none."""
        return max(1, len(self.tiles)) if self.refines else 0

    @property
    def refine_area(self) -> int:
        """The pixels the refine pass redraws: the final area, or the tiles' (their overlaps counted twice)."""
        if not self.refines:
            return 0
        return sum((r - x) * (b - y) for x, y, r, b in self.tiles) if self.tiles else self.final[0] * self.final[1]

    def note(self) -> str:
        """What ran, for the task's Notes: ``drawn at 512x768, refined at 1024x1536`` (``..., in 4 tiles`` when
        the refine pass ran in tiles)."""
        drawn = "drawn at {}x{}".format(*self.draw)
        if not self.two:
            return drawn
        if not self.refines:
            return drawn + ", upscaled to {}x{}".format(*self.final)
        tiled = f" in {len(self.tiles)} tiles" if self.tiles else ""
        return drawn + ", refined at {}x{}".format(*self.final) + tiled


def plan_passes(width: int, height: int, native: tuple[int, int], strength: float, steps: int,
                tile_above: float = REFINE_TILE_ABOVE) -> Passes:
    """The passes of a ``width`` x ``height`` request of ``steps`` denoising steps on a model of ``native`` size
    (see the module doc)."""
    area = native[0] * native[1]
    if width * height <= TWO_PASS_AREA * area:
        return Passes((width, height), (width, height), strength, steps)
    aspect = width / height
    draw = tuple(min(limit, max(SIZE_RANGE.lo, SIZE_MULTIPLE * round(side / SIZE_MULTIPLE)))
                 for side, limit in ((math.sqrt(area * aspect), width), (math.sqrt(area / aspect), height)))
    tiles: tuple[Box, ...] = ()
    if width * height > tile_above * area:
        scale = math.sqrt(tile_above)
        tiles = tile_grid(width, height, (_down(native[0] * scale), _down(native[1] * scale)))
    return Passes(draw, (width, height), strength, steps, tiles)  # type: ignore[arg-type]


def _down(side: float) -> int:
    return max(SIZE_MULTIPLE, SIZE_MULTIPLE * int(side // SIZE_MULTIPLE))


def _spans(length: int, most: int, overlap: int) -> list[tuple[int, int]]:
    """``length`` pixels covered by the fewest equal spans of at most ``most`` (starting at multiples of 8 but
    for the last), each overlapping the next by at least ``overlap``."""
    if length <= most:
        return [(0, length)]
    count = math.ceil((length - overlap) / (most - overlap))
    while True:
        size = min(most, SIZE_MULTIPLE * math.ceil((length + (count - 1) * overlap) / count / SIZE_MULTIPLE))
        starts = [round(i * (length - size) / (count - 1)) // SIZE_MULTIPLE * SIZE_MULTIPLE for i in range(count)]
        starts[-1] = length - size
        if all(a + size - b >= overlap for a, b in zip(starts, starts[1:])):
            return [(start, start + size) for start in starts]
        count += 1


def tile_grid(width: int, height: int, most: tuple[int, int], overlap: int = REFINE_TILE_OVERLAP) -> tuple[Box, ...]:
    """Tiles covering a ``width`` x ``height`` image, each at most ``most`` (width, height), neighbours
    overlapping by at least ``overlap`` pixels, in reading order (rows top to bottom, each left to right)."""
    overlap = min(overlap, most[0] // 2, most[1] // 2)
    return tuple((x0, y0, x1, y1) for y0, y1 in _spans(height, most[1], overlap)
                 for x0, x1 in _spans(width, most[0], overlap))


def tile_weights(box: Box, size: tuple[int, int], overlap: int = REFINE_TILE_OVERLAP) -> np.ndarray:
    """How much of a refined tile is taken over the image beneath (float32, the tile's height x width, 0..1):
    1 inside, ramping linearly down to 0 over ``overlap`` pixels towards each side the tile shares with the
    image's interior (a side on the image's border stays at 1), so that neighbouring tiles meet without a seam."""
    x0, y0, x1, y1 = box
    width, height = size

    def ramp(n: int, near: bool, far: bool) -> np.ndarray:
        t = np.ones(n, np.float32)
        m = min(overlap, n // 2)
        edge = (np.arange(m, dtype=np.float32) + 0.5) / m if m else np.zeros(0, np.float32)
        if near:
            t[:m] = np.minimum(t[:m], edge)
        if far:
            t[n - m:] = np.minimum(t[n - m:], edge[::-1])
        return t

    cols = ramp(x1 - x0, x0 > 0, x1 < width)
    rows = ramp(y1 - y0, y0 > 0, y1 < height)
    return rows[:, None] * cols[None, :]
