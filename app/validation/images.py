"""Decoding and checking the base64 images of a request (``ImageAndMaskList``).

What is accepted:

* a base64 string in the standard (``+/``) or URL-safe (``-_``) alphabet, with or without ``=``
  padding, with any ASCII whitespace or line breaks inside, optionally behind a data-URL prefix
  ``data:<media type>;base64,`` (the media type is not trusted: the bytes decide the format). The
  whole string, prefix included, is ASCII: any other character (a non-breaking space, an accented
  letter, ...) is "not valid base64", wherever it stands;
* an image in one of :data:`ALLOWED_FORMATS` (PNG, JPEG, WEBP, BMP). Other formats (GIF, TIFF,
  ...) are refused: they add decoder attack surface and no client of this API needs them. Of a
  multi-frame file (animated PNG/WEBP) the first frame is the image;
* at most ``max_pixels`` pixels (width x height), and never more than Pillow's own
  ``Image.MAX_IMAGE_PIXELS``. The size is read from the header and checked BEFORE any pixel is
  decoded, so a small file that claims 20000x20000 pixels (a decompression bomb) costs nothing;
* a complete file: the image is fully decoded once, and a PNG's chunk checksums are verified, so a
  truncated or corrupted upload is refused here rather than failing later in a worker. Once: a file whose
  content hash the service has already stored (it passed these checks when it was stored, and the hash names
  the very bytes) is only opened for its header, so a shop sending the same photo with every request does not
  pay its decoding again (``known``, the storage's ``has_input``).

Every refusal is an :class:`~app.errors.ApiError` 230 naming the field, e.g.
``Params [ImageAndMaskList[1]] not available: not a decodable image (PNG, JPEG, WEBP or BMP)``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from app.errors import ApiError

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP")
"""Pillow format names accepted as input images."""
#: Pillow modes with an alpha channel.
ALPHA_MODES: tuple[str, ...] = ("RGBA", "LA", "PA", "RGBa", "La")

_DATA_URL = re.compile(r"data:[^,;]*(?:;[^,;]*)*?;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_URLSAFE = str.maketrans("-_", "+/")
_NOT_AN_IMAGE = f"not a decodable image ({', '.join(ALLOWED_FORMATS[:-1])} or {ALLOWED_FORMATS[-1]})"


@dataclass(frozen=True)
class DecodedImage:
    """One checked input image.

    ``data`` is the file exactly as uploaded (after base64), ``sha256`` its hex digest (a content
    address for storage); ``width``, ``height``, ``format`` (Pillow's name, e.g. ``PNG``) and
    ``mode`` (e.g. ``RGB``, ``RGBA``, ``L``) describe it as Pillow reads it.
    """

    data: bytes
    sha256: str
    width: int
    height: int
    format: str
    mode: str
    #: whether it has an alpha channel (an alpha mode, or a palette or grey image with a transparent entry)
    alpha: bool = False


def _base64_bytes(value: str, field: str) -> bytes:
    if not value.isascii():  # base64 and data URLs are ASCII; b64decode would raise a ValueError
        raise ApiError.param(field, "not valid base64")
    text = _WHITESPACE.sub("", value)
    prefix = _DATA_URL.match(text)
    if prefix:
        text = text[prefix.end():]
    elif text[:5].lower() == "data:":
        raise ApiError.param(field, "a data URL must be base64 (data:image/...;base64,...)")
    text = text.translate(_URLSAFE).rstrip("=")
    if not text:
        raise ApiError.param(field, "must not be empty")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ApiError.param(field, "not valid base64") from None


def _pixel_limit(max_pixels: int) -> int:
    pil_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if pil_limit is None else min(max_pixels, pil_limit)


def _open(data: bytes, field: str, limit: int) -> Image.Image:
    """Open (header only) and check format and size; no pixel is decoded yet."""
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard (the Warning only where the process turned warnings into errors).
        raise ApiError.param(field, f"image has more than {limit} pixels") from None
    except Exception:  # noqa: BLE001 - any failure to parse untrusted bytes is the client's 230
        raise ApiError.param(field, _NOT_AN_IMAGE) from None
    width, height = image.size
    if width * height > limit:
        image.close()
        raise ApiError.param(field, f"image has more than {limit} pixels ({width}x{height})")
    return image


def decode_image(value: object, field: str, max_pixels: int,
                 known: Callable[[str], bool] | None = None) -> DecodedImage:
    """Decode and check one base64 image; raise ApiError 230 naming ``field`` if it is unusable.

    ``field`` is the parameter's path for the message (e.g. ``ImageAndMaskList[1]``);
    ``max_pixels`` the largest width x height accepted (``Settings.max_image_pixels``); ``known(sha256)``:
    whether a file of that content hash was stored, so checked, before (then only its header is read: format
    and size are checked again, the decoding is not repeated).
    """
    if not isinstance(value, str):
        raise ApiError.param(field, "must be a base64 string")
    data = _base64_bytes(value, field)
    sha256 = hashlib.sha256(data).hexdigest()
    limit = _pixel_limit(max_pixels)
    image = _open(data, field, limit)
    try:  # a stored file was decoded and verified when it was stored; the storage's fault is not the image's
        verified = known is not None and known(sha256)
    except BaseException:
        image.close()
        raise
    try:
        if not verified:
            if image.format == "PNG":
                image.verify()  # chunk CRCs through IEND: catches truncation after the pixel data
                image.close()
                image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)  # verify() spends an image
            image.load()  # the full decode: a truncated or corrupt stream raises here
    except Exception:  # noqa: BLE001 - as in _open
        raise ApiError.param(field, f"{_NOT_AN_IMAGE}: the file is truncated or corrupt") from None
    finally:
        image.close()
    return DecodedImage(
        data=data,
        sha256=sha256,
        width=image.width,
        height=image.height,
        format=str(image.format),
        mode=image.mode,
        alpha=image.mode in ALPHA_MODES or "transparency" in image.info,
    )
