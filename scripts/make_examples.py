"""Make the small example inputs in examples/ (committed; re-run to regenerate identically).

Flat drawing (256x384, PNG):

- mannequin.png     a grey dress-form mannequin wearing a red dress with a white collar, on a wall
- mannequin_cutout.png  the same with a transparent background (RGBA)
- mannequin_figure.png  the true figure of mannequin.png (L, 0/255: body + dress, no wall)
- clothes_mask.png  white = the dress (kept exactly), black = everything to redraw
- background.png    a background reference (a pale street scene of blocks)

Photographic example (320x480, made by code from a seeded RNG, so it is the same on every run):

- photo_mannequin.jpg  a product photo of a light-grey dress form on a stand wearing a saturated teal dress:
  shaded body (light from the upper left), fabric weave and skirt folds, a soft floor shadow and an uneven
  warm-grey paper backdrop; JPEG quality 82, so it has JPEG artefacts
- photo_mannequin_figure.png   its true figure (L, 0/255: body + dress + stand; not the shadow, not the backdrop)
- photo_mannequin_garment.png  its true dress mask (L, 0/255; the arms hang in front of it)

The photo is composited from the masks (drawn 4x larger, averaged to a coverage), and a mask is that coverage
thresholded at 50%, so the masks are true by construction.
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

OUT = Path(__file__).resolve().parents[1] / "examples"
W, H = 256, 384
PW, PH = 320, 480   # the photo
SS = 4              # supersampling of the photo's masks
SEED = 20240611
PAPER = 2.0         # backdrop paper grain (grey levels, std)
CHROMA = 4.0        # per-channel sensor noise on the backdrop (std); it also keeps GrabCut's background model broad
SHADOW = 0.18       # darkening at the core of the floor shadow


def figure(draw: ImageDraw.ImageDraw, fill) -> None:
    draw.ellipse((103, 20, 153, 80), fill=fill)                       # head
    draw.rectangle((120, 75, 136, 100), fill=fill)                    # neck
    draw.polygon([(80, 100), (176, 100), (168, 230), (88, 230)], fill=fill)   # torso
    draw.rectangle((60, 105, 80, 220), fill=fill)                     # arms
    draw.rectangle((176, 105, 196, 220), fill=fill)
    draw.rectangle((100, 300, 116, 370), fill=fill)                   # legs
    draw.rectangle((140, 300, 156, 370), fill=fill)


def dress(draw: ImageDraw.ImageDraw, fill, collar) -> None:
    draw.polygon([(84, 105), (172, 105), (200, 310), (56, 310)], fill=fill)
    if collar:
        draw.polygon([(110, 105), (146, 105), (128, 130)], fill=collar)


# ---------------------------------------------------------------- the photographic example

def _hires(draw_fn) -> np.ndarray:
    """A boolean mask at SS x the photo size, drawn by draw_fn(draw, s) with s = the scale to apply to coordinates."""
    im = Image.new("L", (PW * SS, PH * SS), 0)
    draw_fn(ImageDraw.Draw(im), SS)
    return np.asarray(im) > 127


def _coverage(hi: np.ndarray) -> np.ndarray:
    """Fraction of each photo pixel that a high-resolution mask covers."""
    return hi.reshape(PH, SS, PW, SS).mean(axis=(1, 3))


def _sc(pts, s):
    return [(x * s, y * s) for x, y in pts]


def _mirror(pts):
    return [(PW - x, y) for x, y in pts]


def _skirt_half_width(y):
    """Half width of the dress at height y (photo pixels), for the waist to hem A-line."""
    return 35.0 + (np.asarray(y, float) - 236.0) / 104.0 * 33.0


def _fold_phase(x, y):
    return (np.asarray(x, float) - 160.0) / _skirt_half_width(y) * 2.5 * np.pi + 0.6


def _draw_torso(d, s):
    side = [(124, 116), (108, 124), (100, 138), (108, 160), (126, 236), (116, 290), (122, 336)]
    d.polygon(_sc(side + _mirror(side)[::-1], s), fill=255)


def _draw_neck(d, s):
    d.polygon(_sc([(150, 86), (170, 86), (174, 124), (146, 124)], s), fill=255)


def _draw_head(d, s):
    d.ellipse((134 * s, 28 * s, 186 * s, 94 * s), fill=255)


def _draw_arms(d, s):
    arm = [(94, 128), (117, 134), (79, 290), (59, 286)]
    for pts, hand in ((arm, (52, 278, 77, 310)), (_mirror(arm), (PW - 77, 278, PW - 52, 310))):
        d.polygon(_sc(pts, s), fill=255)
        d.ellipse((hand[0] * s, hand[1] * s, hand[2] * s, hand[3] * s), fill=255)
    # rounded shoulder caps
    d.ellipse((96 * s, 118 * s, 128 * s, 146 * s), fill=255)
    d.ellipse(((PW - 128) * s, 118 * s, (PW - 96) * s, 146 * s), fill=255)


def _draw_dress(d, s):
    neck = [(114, 140), (134, 137), (148, 150), (160, 154)]
    side = [(107, 152), (110, 172), (125, 236)]
    left = neck[:1] + side
    xs = np.linspace(92, 228, 69)   # the hem waves with the folds
    hem = [(x, 338 + 2.5 * np.sin(_fold_phase(x, 338))) for x in xs]
    pts = neck + _mirror(neck[:-1])[::-1] + _mirror(left[1:]) + [(228, 338)] + hem[::-1] + [(92, 338)] + left[:0:-1]
    d.polygon(_sc(pts, s), fill=255)


def _draw_pole(d, s):
    d.rectangle((153 * s, 320 * s, 167 * s, 428 * s), fill=255)


def _draw_base(d, s):
    d.ellipse((116 * s, 418 * s, 204 * s, 440 * s), fill=255)
    d.rectangle((150 * s, 414 * s, 170 * s, 428 * s), fill=255)


def _shading(hard: np.ndarray, light=(-0.62, -0.38, 0.69), depth=2.2, blur=1.5) -> np.ndarray:
    """Lambert shading of a rounded (pillow) surface raised from a mask: height = depth * sqrt(distance to edge)."""
    h = depth * np.sqrt(ndimage.distance_transform_edt(hard))
    h = ndimage.gaussian_filter(h, blur)
    gy, gx = np.gradient(h)
    n = np.stack([-gx, -gy, np.ones_like(h)], axis=-1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    lam = np.clip(n @ np.asarray(light) / np.linalg.norm(light), 0.0, 1.0)
    return lam


def _backdrop(rng: np.random.Generator) -> np.ndarray:
    """A warm-grey paper sweep: a little brighter towards the floor and the light (left), low-frequency unevenness."""
    y = np.linspace(0.0, 1.0, PH)[:, None]
    x = np.linspace(0.0, 1.0, PW)[None, :]
    sweep = 1.0 / (1.0 + np.exp(-(y - 0.72) * 12.0))           # wall -> floor
    lum = 223.0 + 6.0 * sweep + 5.0 * (0.5 - x)
    coarse = rng.normal(0.0, 1.0, (7, 5))
    lum = lum + 2.0 * np.asarray(Image.fromarray(coarse.astype(np.float32), "F").resize((PW, PH), Image.BICUBIC))
    paper = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (PH, PW)), 0.8)
    lum = np.clip(lum, 218.0, 234.0) + PAPER * paper / paper.std()   # paper grain
    tint = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (PH, PW, 3)), (0.7, 0.7, 0))
    tint = CHROMA * tint / tint.std()
    return lum[..., None] * np.array([1.0, 0.987, 0.965]) + tint


def photo(rng: np.random.Generator) -> tuple[Image.Image, Image.Image, Image.Image]:
    """The photographic example and its true figure and garment masks."""
    hi = {name: _hires(fn) for name, fn in (
        ("torso", _draw_torso), ("neck", _draw_neck), ("head", _draw_head), ("pole", _draw_pole),
        ("base", _draw_base), ("dress", _draw_dress), ("arms", _draw_arms))}
    order = ["pole", "base", "torso", "neck", "head", "dress", "arms"]   # back to front

    yy, xx = np.mgrid[0:PH, 0:PW].astype(float)
    img = _backdrop(rng)

    # a soft floor shadow under the base, thrown to the right (light from the upper left): not part of the figure
    shadow = ((xx - 172.0) / 86.0) ** 2 + ((yy - 434.0) / 11.0) ** 2 < 1.0
    shadow = ndimage.gaussian_filter(shadow.astype(float), 8.0)
    img = img * (1.0 - SHADOW * shadow[..., None])

    grain = rng.normal(0.0, 1.0, (PH, PW))
    body_rgb = np.array([1.0, 0.99, 0.972])
    for name in order:
        a = _coverage(hi[name])
        hard = a >= 0.5
        if name == "dress":
            lam = _shading(hard, depth=1.6)
            t = np.clip((yy - 236.0) / 104.0, 0.0, 1.0)
            folds = 1.0 + 0.34 * t ** 0.8 * np.sin(_fold_phase(xx, np.maximum(yy, 236.0)))
            darts = 1.0 + 0.06 * (yy < 236) * np.sin((xx - 160.0) / 9.0) * np.clip((yy - 170.0) / 60.0, 0, 1)
            weave = 1.0 + 0.05 * np.sin(xx * 2.0 * np.pi / 3.0) * np.sin(yy * 2.0 * np.pi / 3.0)
            noise = 1.0 + 0.03 * ndimage.gaussian_filter(rng.normal(0.0, 1.0, (PH, PW)), 0.6) / 0.34
            f = (0.55 + 0.55 * lam) * folds * darts * weave * noise
            col = np.array([16.0, 118.0, 132.0])[None, None, :] * np.clip(f, 0.35, 1.6)[..., None]
        elif name in ("pole", "base"):
            lam = _shading(hard, depth=1.2, blur=1.0)
            lum = 68.0 + 70.0 * lam + 35.0 * lam ** 12          # dark metal with a highlight
            col = lum[..., None] * np.array([1.0, 1.0, 1.02])
        else:
            lam = _shading(hard)
            lum = 112.0 + 62.0 * lam + 14.0 * lam ** 10 + 1.2 * grain   # matte light-grey plastic
            col = lum[..., None] * body_rgb
        img = img * (1.0 - a[..., None]) + col * a[..., None]

    img = img + 1.0 * grain[..., None]               # sensor noise, neutral
    rgb = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")

    union = np.zeros_like(hi["dress"])
    for m in hi.values():
        union |= m
    garment = hi["dress"] & ~hi["arms"]
    fig = Image.fromarray(np.where(_coverage(union) >= 0.5, 255, 0).astype(np.uint8), "L")
    gar = Image.fromarray(np.where(_coverage(garment) >= 0.5, 255, 0).astype(np.uint8), "L")
    return rgb, fig, gar


def main() -> None:
    OUT.mkdir(exist_ok=True)
    wall = Image.new("RGB", (W, H), (225, 222, 215))
    d = ImageDraw.Draw(wall)
    figure(d, (150, 150, 150))
    dress(d, (190, 30, 45), (245, 245, 245))
    wall.save(OUT / "mannequin.png", optimize=True)

    cut = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(cut)
    figure(d, (150, 150, 150, 255))
    dress(d, (190, 30, 45, 255), (245, 245, 245, 255))
    cut.save(OUT / "mannequin_cutout.png", optimize=True)

    fig = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(fig)
    figure(d, 255)
    dress(d, 255, None)
    fig.save(OUT / "mannequin_figure.png", optimize=True)

    mask = Image.new("L", (W, H), 0)
    dress(ImageDraw.Draw(mask), 255, None)
    mask.save(OUT / "clothes_mask.png", optimize=True)

    bg = Image.new("RGB", (W, H), (170, 200, 230))
    d = ImageDraw.Draw(bg)
    d.rectangle((0, 260, W, H), fill=(120, 120, 115))
    for i, x in enumerate(range(0, W, 48)):
        d.rectangle((x, 120 - 20 * (i % 3), x + 40, 260), fill=(200 - 10 * i, 180, 160 + 8 * i))
    bg.save(OUT / "background.png", optimize=True)

    rgb, pfig, pgar = photo(np.random.default_rng(SEED))
    rgb.save(OUT / "photo_mannequin.jpg", quality=82, optimize=True)
    pfig.save(OUT / "photo_mannequin_figure.png", optimize=True)
    pgar.save(OUT / "photo_mannequin_garment.png", optimize=True)
    for p in sorted(OUT.iterdir()):
        print(p)


if __name__ == "__main__":
    main()
