"""DescribeImages: captions by a transformers image-to-text folder (a Describer: ``VisionEncoderDecoderModel``
checkpoints such as ``nlpconnect/vit-gpt2-image-captioning``, BLIP's ``Salesforce/blip-image-captioning-*``, GIT...:
whatever ``AutoModelForImageTextToText`` loads and ``generate(pixel_values=...)`` runs), from local files only.

Light to import: torch and transformers are imported by :meth:`Describer.load`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

#: The most new tokens a caption may have (a model's own ``max_new_tokens`` when smaller).
MAX_CAPTION_TOKENS = 60


class DescriberLoadError(RuntimeError):
    """The configured Describer folder could not be loaded."""


@dataclass
class Describer:
    """A loaded image-to-text model with its image processor and tokenizer."""

    model: Any
    processor: Any
    tokenizer: Any
    name: str
    batch_size: int = 8

    @classmethod
    def load(cls, path: Path, device: str = "cpu", dtype: Any = None) -> Describer:
        """The Describer folder ``path`` on ``device`` (in ``dtype`` on a GPU, else float32). Raises
        :class:`DescriberLoadError`."""
        path = Path(path)
        if not path.is_dir():
            raise DescriberLoadError(f"describer folder {path} does not exist")
        try:
            import torch
            from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
                tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
            use = dtype if str(device).startswith("cuda") and dtype is not None else torch.float32
            model.to(device=torch.device(device), dtype=use).eval()
        except Exception as e:  # noqa: BLE001 -- any failure here is a configuration problem
            raise DescriberLoadError(f"cannot load the describer at {path}: {type(e).__name__}: {e}") from e
        return cls(model, processor, tokenizer, path.name)

    def describe(self, images: list[Image.Image]) -> list[str]:
        """One caption per image (RGB; an image with alpha over white), in order, in batches."""
        import torch

        param = next(self.model.parameters())
        limit = min(MAX_CAPTION_TOKENS, getattr(self.model.generation_config, "max_new_tokens", None)
                    or MAX_CAPTION_TOKENS)
        out: list[str] = []
        for start in range(0, len(images), self.batch_size):
            batch = [_rgb(im) for im in images[start:start + self.batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(param.device, param.dtype)
            with torch.inference_mode():
                ids = self.model.generate(pixel_values=pixels, max_new_tokens=limit)
            out += [" ".join(text.split()) for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return out


def _rgb(image: Image.Image) -> Image.Image:
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
