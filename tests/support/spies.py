"""A spy on the real pipeline calls of a test (the jobs' tests of passes, faces and RestoreFaces): what each call was
asked, read from its keyword arguments, while the call itself runs unchanged."""
from __future__ import annotations

from diffusers import StableDiffusionControlNetInpaintPipeline, StableDiffusionInpaintPipeline

PIPELINES = (StableDiffusionInpaintPipeline, StableDiffusionControlNetInpaintPipeline)


def _sizes(images) -> list[tuple[int, int]] | None:
    if images is None:
        return None
    return [image.size for image in (images if isinstance(images, list) else [images])]


def spy_pipeline_calls(monkeypatch, classes=PIPELINES) -> list[dict]:
    """Every call of the pipelines ``classes`` from now to the test's end, in order: its ``size`` (width, height),
    ``strength``, ``images`` (per prompt), ``prompt``, ``start`` (the first start image's size) and ``control`` (the
    control maps' sizes, None without)."""
    seen: list[dict] = []
    for cls in classes:
        original = cls.__call__

        def spy(self, *args, _original=original, **kwargs):
            seen.append({"size": (kwargs["width"], kwargs["height"]), "strength": kwargs["strength"],
                         "images": kwargs["num_images_per_prompt"], "prompt": kwargs["prompt"],
                         "start": _sizes(kwargs["image"])[0], "control": _sizes(kwargs.get("control_image"))})
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", spy)
    return seen
