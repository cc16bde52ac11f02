"""A face redrawn by a Main model (ADetailer's way): its crop (:func:`~workers.faces.geometry.crop_box`) brought to
the model's native area, redrawn by the inpainting pipeline's img2img (:func:`~workers.inference.inpaint.run_inpaint`
with ``starts=`` the crop and ``strength=`` the face strength) where the blend mask reaches, brought back to the
crop's size and blended in with the feathered mask (:func:`~workers.faces.geometry.paste_crop`). The mask is 0 on
every kept pixel (a generation's clothes) and beyond the blend margin, so those pixels keep their values bit for
bit; the model never redraws them either (they are outside its inpainting mask).

Used by the generation (after its passes, the model's ``faces:`` and the request's ``FaceRefine``) and by
RestoreFaces (``RestoreStrength``); docs/faces.md. Imports torch and diffusers through the inpainting module: only
the worker imports this one.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from diffusers import DiffusionPipeline
from PIL import Image

from workers.faces.detect import Face
from workers.faces.geometry import (
    blend_margin,
    blend_mask,
    box_size,
    crop_box,
    face_box,
    paste_crop,
    redraw_region,
    redraw_size,
)
from workers.inference.compose import Composition
from workers.inference.inpaint import Sampling, StepCallback, run_inpaint

#: RestoreFaces' prompt when the Main model's ``faces.prompt`` is empty (after the model's trigger words): the photo's
#: own content is unknown, so the faces are described as what they are.
RESTORE_PROMPT = "a detailed photo of a person's face, sharp focus"

#: SwitchFace's prompt (after the model's trigger words, before its ``faces.prompt``): the new identity comes from the
#: IP-Adapter's reference, so the words only say what is drawn.
SWITCH_PROMPT = "a photo of a person's face"

def face_steps(steps: int, strength: float) -> int:
    """The denoising steps one face's redraw runs: diffusers' img2img count, ``int(steps * strength)`` (0: the
    strength leaves no step of the schedule, and the face is left as it is)."""
    return min(int(steps * strength), steps)


def sized(faces: Sequence[Face], min_size: float, max_size: float = math.inf) -> tuple[list[Face], list[Face]]:
    """(the faces whose box's longer side is within ``min_size..max_size``, the others), each in their order."""
    inside = [face for face in faces if min_size <= box_size(face.box) <= max_size]
    return inside, [face for face in faces if face not in inside]


@dataclass(frozen=True, kw_only=True)
class FaceRedraw:
    """How the faces of one image are redrawn: with ``prompt`` and ``negative``, at ``strength`` (the last
    ``int(steps * strength)`` of ``steps`` denoising steps), classifier-free guidance ``guidance_scale``, each crop
    at the model's ``native`` area (``(width, height)``), from ``seed`` (every face of the image)."""

    prompt: str
    negative: str = ""
    strength: float
    steps: int
    guidance_scale: float
    native: tuple[int, int]
    seed: int

    @property
    def steps_per_face(self) -> int:
        return face_steps(self.steps, self.strength)

    def megapixel_steps(self, count: int) -> float:
        """What redrawing ``count`` faces costs, in megapixels x denoising steps (the unit of a job's time budget,
        docs/deployment.md): each crop is drawn at the native area."""
        return self.native[0] * self.native[1] / 1e6 * self.steps_per_face * count


def redraw_face(pipe: DiffusionPipeline, image: np.ndarray, face: Face, redraw: FaceRedraw, *,
                keep: np.ndarray | None = None, on_step: StepCallback | None = None,
                stats: dict[str, float] | None = None, pipeline_kwargs: dict | None = None) -> bool:
    """Redraw ``face`` of ``image`` (uint8, height x width x 3, written in place) as ``redraw`` says; ``keep`` (a bool
    array of the image's shape) marks pixels that must keep their values (a generation's clothes). Returns whether
    a pixel could change: False when the strength leaves no denoising step or the face lies on kept pixels only
    (nothing is run then). ``on_step`` and ``stats``: :class:`~workers.inference.inpaint.Sampling`'s;
    ``pipeline_kwargs``: more arguments of the pipeline call (a job's IP-Adapter units)."""
    if redraw.steps_per_face == 0:
        return False
    height, width = image.shape[:2]
    crop = left, top, right, bottom = crop_box(face.box, width, height)
    alpha = blend_mask(crop, face_box(face.box, width, height), blend_margin(face.box),
                       None if keep is None else keep[top:bottom, left:right])
    if not alpha.any():
        return False
    size = redraw_size(right - left, bottom - top, redraw.native)
    source = Image.fromarray(np.ascontiguousarray(image[top:bottom, left:right]), "RGB")
    start = source.resize(size, Image.Resampling.LANCZOS)
    comp = Composition(image=start, keep=~redraw_region(alpha, size), figure=None)
    sampling = Sampling(seed=redraw.seed, steps=redraw.steps, guidance_scale=redraw.guidance_scale, on_step=on_step,
                        stats=stats, output="np")
    drawn = run_inpaint(pipe, comp, redraw.prompt, redraw.negative, sampling, starts=[start],
                        strength=redraw.strength, pipeline_kwargs=pipeline_kwargs)[0]
    back = np.asarray(Image.fromarray(drawn, "RGB").resize(source.size, Image.Resampling.LANCZOS))
    paste_crop(image, back, crop, alpha)
    return True


def redraw_faces(pipe: DiffusionPipeline, image: np.ndarray, faces: Sequence[Face], redraw: FaceRedraw, *,
                 keep: np.ndarray | None = None, on_step: Callable[[int, int], None] | None = None,
                 stats: dict[str, float] | None = None, pipeline_kwargs: dict | None = None) -> tuple[np.ndarray, int]:
    """``image`` (uint8, height x width x 3; not changed) with each of ``faces`` redrawn in turn
    (:func:`redraw_face`), and how many were. ``on_step(step, total)`` counts the denoising steps of all of them as
    one run (``total``: ``len(faces)`` x the steps of one face's pipeline call, :attr:`FaceRedraw.steps_per_face`
    for the usual schedulers)."""
    out, count = image.copy(), 0
    for i, face in enumerate(faces):
        step = None if on_step is None else (lambda step, total, i=i: on_step(i * total + step, len(faces) * total))
        count += redraw_face(pipe, out, face, redraw, keep=keep, on_step=step, stats=stats,
                             pipeline_kwargs=pipeline_kwargs)
    return out, count


# --- what the task's Notes say (docs/API.md "Faces", "RestoreFaces") ------------------------------------------


def refined_note(refined: int, outside: int = 0, on_kept: int = 0, sizes: tuple[int, int] = (0, 0)) -> str:
    """After a generation's faces were looked for: ``no face found to refine`` when the detector found none, else
    ``refined N face(s)``, and what was left as drawn (``outside`` the model's face ``sizes``, or lying ``on_kept``
    pixels only)."""
    if refined == outside == on_kept == 0:
        return "no face found to refine"
    left = [f"{outside} face(s) outside {sizes[0]}..{sizes[1]} px"] if outside else []
    left += [f"{on_kept} face(s) on kept pixels"] if on_kept else []
    return f"refined {refined} face(s)" + (f"; left as drawn: {', '.join(left)}" if left else "")


def no_step_note(what: str, strength: float, steps: int) -> str:
    """A face strength that leaves no denoising step of the model's ``steps`` (``what``: the field that gave it)."""
    return f"{what} {strength:g} leaves no denoising step of {steps}: no face redrawn"


def restored_note(restored: int, smaller: int = 0, min_size: int = 0) -> str:
    """After RestoreFaces looked for faces: ``restored N face(s)``, with the ``smaller`` ones than ``min_size`` left
    as they are; or, when none was redrawn, that the image is unchanged."""
    if restored:
        return f"restored {restored} face(s)" + (f"; left as they are: {smaller} face(s) under {min_size} px"
                                                 if smaller else "")
    if smaller:
        return f"no face of {min_size} px or more found ({smaller} smaller): the image is unchanged"
    return "no face found: the image is unchanged"
