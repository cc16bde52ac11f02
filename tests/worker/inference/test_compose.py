"""Mannequin composition: resize modes, mask reading, padding and the exact paste-back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from workers.inference.compose import (
    NEUTRAL_GREY,
    RESIZE_MODES,
    Composition,
    _garment_distance,
    _Seam,
    fit_background,
    fit_geometry,
    inpaint_mask,
    normalize_mask,
    pad_to_multiple,
    paste_back,
    paste_back_pixels,
    prepare,
    with_background,
)

NEAREST = Image.Resampling.NEAREST


def column_index_image(width: int, height: int) -> Image.Image:
    """An L image whose every pixel holds its own column index: resampled with NEAREST, each output pixel
    tells which source column it came from."""
    return Image.fromarray(np.tile(np.arange(width, dtype=np.uint8), (height, 1)))


def row_index_image(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.tile(np.arange(height, dtype=np.uint8)[:, None], (1, width)))


def rectangle(size: tuple[int, int], box: tuple[int, int, int, int], mode: str = "L", colour=255, background=0):
    img = Image.new(mode, size, background)
    img.paste(colour, box)
    return img


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the True pixels, right/bottom exclusive."""
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


# --- fit_geometry -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("src", [(40, 20), (20, 40), (33, 33), (1, 7), (640, 480)])
@pytest.mark.parametrize("dst", [(67, 45), (45, 67), (64, 64), (1, 1), (3, 200)])
def test_fit_geometry_gives_exact_size_for_any_size(mode, src, dst):
    out = fit_geometry(Image.new("RGB", src, (9, 9, 9)), *dst, mode)
    assert out.size == dst
    assert out.mode == "RGB"


def test_just_resize_stretches_both_axes():
    out = np.asarray(fit_geometry(column_index_image(20, 10), 40, 30, "JustResize", NEAREST))
    assert out.shape == (30, 40)
    # every source column becomes two output columns, whatever the row
    np.testing.assert_array_equal(out, np.tile(np.repeat(np.arange(20), 2), (30, 1)))


def test_crop_and_resize_covers_and_crops_the_centre():
    # 40x20 into 20x20: scale 1 (the height must cover), crop 10 columns off each side
    out = np.asarray(fit_geometry(column_index_image(40, 20), 20, 20, "CropAndResize", NEAREST))
    np.testing.assert_array_equal(out[0], np.arange(10, 30))
    # 40x20 into 60x60: scale 3 -> 120x60, the 30 columns each side are cropped
    out = np.asarray(fit_geometry(column_index_image(40, 20), 60, 60, "CropAndResize", NEAREST))
    np.testing.assert_array_equal(out[0], (np.arange(60) + 30) // 3)
    rows = np.asarray(fit_geometry(row_index_image(40, 20), 60, 60, "CropAndResize", NEAREST))
    np.testing.assert_array_equal(rows[:, 0], np.arange(60) // 3)  # no vertical crop


def test_resize_and_fill_centres_the_image_and_replicates_its_edges():
    src = np.arange(40 * 20, dtype=np.uint32).reshape(20, 40) % 251
    out = np.asarray(fit_geometry(Image.fromarray(src.astype(np.uint8)), 40, 40, "ResizeAndFill", NEAREST))
    np.testing.assert_array_equal(out[10:30], src)  # scale 1, 10 rows of margin above and below
    np.testing.assert_array_equal(out[:10], np.tile(src[0], (10, 1)))  # edge extension
    np.testing.assert_array_equal(out[30:], np.tile(src[-1], (10, 1)))


def test_resize_and_fill_with_a_constant_fill_and_odd_margins():
    out = np.asarray(fit_geometry(Image.new("L", (10, 10), 255), 15, 10, "ResizeAndFill", NEAREST, fill=0))
    assert out.shape == (10, 15)
    # 5 columns of margin: 2 left, 3 right
    assert (out[:, :2] == 0).all() and (out[:, 2:12] == 255).all() and (out[:, 12:] == 0).all()


def test_resize_and_fill_moves_a_marker_rectangle_where_expected():
    # 100x50 -> 50x50: scale 0.5 -> 50x25 placed at top = 12
    src = rectangle((100, 50), (20, 10, 40, 30))
    out = np.asarray(fit_geometry(src, 50, 50, "ResizeAndFill", NEAREST, fill=0))
    assert bbox(out == 255) == (10, 12 + 5, 20, 12 + 15)


def test_fit_geometry_keeps_rgba_channels_in_the_margins():
    src = Image.new("RGBA", (10, 20), (1, 2, 3, 0))
    out = fit_geometry(src, 30, 20, "ResizeAndFill", fill="edge")
    assert out.mode == "RGBA" and out.size == (30, 20)
    assert out.getpixel((0, 0)) == (1, 2, 3, 0)


def test_fit_geometry_refuses_unknown_modes_and_palette_images():
    with pytest.raises(ValueError, match="Stretch"):
        fit_geometry(Image.new("RGB", (4, 4)), 8, 8, "Stretch")
    with pytest.raises(ValueError, match="palette"):
        fit_geometry(Image.new("P", (4, 4)), 8, 8, "JustResize")
    with pytest.raises(ValueError, match="width and height"):
        fit_geometry(Image.new("RGB", (4, 4)), 0, 8, "JustResize")


# --- normalize_mask -----------------------------------------------------------------------------------

def test_grey_mask_threshold_is_128():
    mask = Image.fromarray(np.array([[0, 127, 128, 255]], dtype=np.uint8))
    np.testing.assert_array_equal(normalize_mask(mask), [[False, False, True, True]])


def test_one_bit_mask():
    mask = Image.fromarray(np.array([[True, False]]))
    assert mask.mode == "1"
    np.testing.assert_array_equal(normalize_mask(mask), [[True, False]])


def test_rgb_mask_uses_luminance():
    # white, black, pure red (luminance 76), yellow (226), mid grey 130
    pixels = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [255, 255, 0], [130, 130, 130]]], np.uint8)
    np.testing.assert_array_equal(normalize_mask(Image.fromarray(pixels)), [[True, False, False, True, True]])


def test_rgba_mask_counts_transparent_pixels_as_black():
    pixels = np.array([[[255, 255, 255, 255], [255, 255, 255, 0], [0, 0, 0, 255], [255, 255, 255, 200],
                        [255, 255, 255, 100]]], np.uint8)
    mask = Image.fromarray(pixels)
    assert mask.mode == "RGBA"
    # opaque white, transparent white, opaque black, mostly opaque white (200), mostly transparent (100)
    np.testing.assert_array_equal(normalize_mask(mask), [[True, False, False, True, False]])
    np.testing.assert_array_equal(normalize_mask(mask.convert("LA")), [[True, False, False, True, False]])


def test_palette_masks_with_and_without_transparency():
    mask = Image.new("P", (3, 1))
    mask.putpalette([0, 0, 0, 255, 255, 255])
    mask.putdata([0, 1, 1])
    np.testing.assert_array_equal(normalize_mask(mask), [[False, True, True]])
    mask.info["transparency"] = 1  # palette entry 1 (white) is transparent
    np.testing.assert_array_equal(normalize_mask(mask), [[False, False, False]])


# --- prepare ------------------------------------------------------------------------------------------

def test_prepare_at_the_same_size_copies_the_pixels_exactly():
    rng = np.random.default_rng(1)
    mannequin = Image.fromarray(rng.integers(0, 256, (45, 67, 3), dtype=np.uint8))
    mask = rectangle((67, 45), (10, 5, 30, 40))
    for mode in RESIZE_MODES:
        comp = prepare(mannequin, mask, 67, 45, mode)
        np.testing.assert_array_equal(np.asarray(comp.image), np.asarray(mannequin))
        assert bbox(comp.keep) == (10, 5, 30, 40) and comp.keep.sum() == 20 * 35
        assert comp.figure is None
        assert (comp.width, comp.height) == (67, 45)


def test_prepare_invert_mask_flips_keep():
    mannequin = Image.new("RGB", (20, 20), (50, 60, 70))
    mask = rectangle((20, 20), (5, 5, 15, 15))
    kept = prepare(mannequin, mask, 20, 20).keep
    flipped = prepare(mannequin, mask, 20, 20, invert_mask=True).keep
    np.testing.assert_array_equal(flipped, ~kept)


def test_prepare_resizes_a_mask_of_another_size_to_the_mannequin_first():
    mannequin = Image.new("RGB", (40, 40), (10, 20, 30))
    small_mask = rectangle((20, 20), (0, 0, 10, 10))  # top-left quarter
    comp = prepare(mannequin, small_mask, 40, 40, "JustResize")
    assert bbox(comp.keep) == (0, 0, 20, 20) and comp.keep.sum() == 400


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("size", [(67, 45), (45, 67), (128, 64)])
def test_prepare_applies_the_same_geometry_to_image_and_mask(mode, size):
    """The garment (a red rectangle on the photo, white on the mask) stays registered in every mode."""
    box = (30, 20, 70, 60)
    mannequin = rectangle((100, 80), box, "RGB", (255, 0, 0), (0, 0, 255))
    comp = prepare(mannequin, rectangle((100, 80), box), *size, mode)
    assert comp.image.size == size and comp.keep.shape == (size[1], size[0])
    red = np.asarray(comp.image)[..., 0] >= 128
    kept_box, red_box = bbox(comp.keep), bbox(red)
    assert all(abs(a - b) <= 1 for a, b in zip(kept_box, red_box)), (kept_box, red_box)
    # inside the kept area (away from the resampled border) the image is the garment
    left, top, right, bottom = kept_box
    assert (np.asarray(comp.image)[top + 1 : bottom - 1, left + 1 : right - 1, 0] > 200).all()


def test_prepare_resize_and_fill_margins_are_redrawn_and_edge_extended():
    mannequin = Image.new("RGB", (20, 40), (200, 100, 50))
    mask = Image.new("L", (20, 40), 255)  # all clothes
    comp = prepare(mannequin, mask, 40, 40, "ResizeAndFill")
    assert comp.keep[:, 10:30].all()
    assert not comp.keep[:, :10].any() and not comp.keep[:, 30:].any()
    assert comp.image.getpixel((0, 20)) == (200, 100, 50)  # edge extension, not a flat fill


def test_prepare_composites_a_cut_out_on_grey_and_reports_the_figure():
    pixels = np.zeros((20, 20, 4), np.uint8)
    pixels[5:15, 5:15] = (250, 10, 10, 255)  # an opaque red figure on a transparent background
    pixels[:, :, :3][pixels[:, :, 3] == 0] = (0, 255, 0)  # colour hidden under alpha 0
    mannequin = Image.fromarray(pixels)
    comp = prepare(mannequin, rectangle((20, 20), (8, 8, 12, 12)), 20, 20)
    assert comp.image.getpixel((0, 0)) == NEUTRAL_GREY
    assert comp.image.getpixel((10, 10)) == (250, 10, 10)
    assert comp.figure is not None and bbox(comp.figure) == (5, 5, 15, 15) and comp.figure.sum() == 100
    # resized, the figure follows the same geometry as the image
    half = prepare(mannequin, rectangle((20, 20), (8, 8, 12, 12)), 10, 10, "JustResize")
    assert bbox(half.figure) == (2, 2, 8, 8)  # bilinear: the 5..15 figure, halved, touches pixels 2..7


def test_prepare_refuses_an_unknown_resize_mode():
    with pytest.raises(ValueError, match="unknown resize mode"):
        prepare(Image.new("RGB", (8, 8)), Image.new("L", (8, 8)), 8, 8, "Fill")


def test_composition_validates_its_arrays():
    with pytest.raises(ValueError, match="keep"):
        Composition(Image.new("RGB", (4, 3)), np.zeros((4, 3), bool), None)
    with pytest.raises(ValueError, match="RGB"):
        Composition(Image.new("L", (4, 3)), np.zeros((3, 4), bool), None)


# --- pad_to_multiple / inpaint_mask -------------------------------------------------------------------

def test_pad_to_multiple_edge_replicates_the_image_and_redraws_the_padding():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (45, 67, 3), dtype=np.uint8)
    keep = np.ones((45, 67), bool)
    comp = Composition(Image.fromarray(image), keep, keep.copy())
    padded = pad_to_multiple(comp, 8)
    assert padded.image.size == (72, 48)
    out = np.asarray(padded.image)
    np.testing.assert_array_equal(out[:45, :67], image)
    np.testing.assert_array_equal(out[:45, 67:], np.repeat(image[:, -1:], 5, axis=1))
    np.testing.assert_array_equal(out[45:, :67], np.repeat(image[-1:], 3, axis=0))
    assert padded.keep[:45, :67].all() and not padded.keep[45:].any() and not padded.keep[:, 67:].any()
    assert padded.figure.all()  # edge-replicated like the image
    assert pad_to_multiple(padded, 8) is padded


def test_inpaint_mask_is_white_where_the_model_redraws():
    keep = np.zeros((3, 4), bool)
    keep[1, 1:3] = True
    mask = inpaint_mask(Composition(Image.new("RGB", (4, 3)), keep, None))
    assert mask.mode == "L" and mask.size == (4, 3)
    np.testing.assert_array_equal(np.asarray(mask), np.where(keep, 0, 255))


# --- paste_back ---------------------------------------------------------------------------------------

def garment_composition(original_value: int = 200) -> Composition:
    keep = np.zeros((30, 40), bool)
    keep[10:20, 10:20] = True
    return Composition(Image.new("RGB", (40, 30), (original_value,) * 3), keep, None)


def test_paste_back_keeps_the_clothes_bit_exact_and_fades_outside_only():
    rng = np.random.default_rng(3)
    original = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    comp = Composition(Image.fromarray(original), garment_composition().keep, None)
    generated = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = np.asarray(paste_back(Image.fromarray(generated), comp, feather_px=4))
    np.testing.assert_array_equal(out[comp.keep], original[comp.keep])
    # farther than 4 px from the garment (chessboard distance): the generated pixels, untouched
    far = np.ones((30, 40), bool)
    far[10 - 4 : 20 + 4, 10 - 4 : 20 + 4] = False
    np.testing.assert_array_equal(out[far], generated[far])


def test_paste_back_blend_weights_decrease_linearly_with_distance():
    comp = garment_composition(original_value=200)
    out = np.asarray(paste_back(Image.new("RGB", (40, 30), (0, 0, 0)), comp, feather_px=4))
    row = out[15, :, 0]
    # left of the garment (x = 9, 8, 7, 6, 5 are at distance 1..5), the garment itself, then the right side
    np.testing.assert_array_equal(row[5:10], [0, 40, 80, 120, 160])
    np.testing.assert_array_equal(row[10:20], [200] * 10)
    np.testing.assert_array_equal(row[20:25], [160, 120, 80, 40, 0])
    assert out[6, 6, 0] == 40 and out[5, 5, 0] == 0  # diagonally: chessboard distances 4 and 5


def test_paste_back_without_feather_is_a_hard_cut():
    comp = garment_composition()
    generated = Image.new("RGB", (40, 30), (7, 8, 9))
    out = np.asarray(paste_back(generated, comp, feather_px=0))
    assert (out[comp.keep] == 200).all()
    assert (out[~comp.keep] == (7, 8, 9)).all()


def test_paste_back_resizes_a_generated_image_of_another_size():
    comp = garment_composition()
    out = paste_back(Image.new("RGB", (80, 60), (0, 0, 0)), comp)
    assert out.size == (40, 30) and out.mode == "RGB"
    assert (np.asarray(out)[comp.keep] == 200).all()


def test_paste_back_refuses_a_negative_feather():
    with pytest.raises(ValueError, match="feather_px"):
        paste_back(Image.new("RGB", (40, 30)), garment_composition(), feather_px=-1)


def test_paste_back_with_a_wider_keep_mask_and_another_source():
    """Generalised: any kept area (e.g. clothes + a held background) copied from any source image."""
    rng = np.random.default_rng(4)
    comp = garment_composition(original_value=200)
    source = np.asarray(comp.image).copy()
    source[:, :8] = rng.integers(0, 256, (30, 8, 3), dtype=np.uint8)  # a "background" strip on the left
    keep = comp.keep.copy()
    keep[:, :8] = True
    generated = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = np.asarray(paste_back(Image.fromarray(generated), comp, feather_px=2, keep=keep,
                                source=Image.fromarray(source)))
    np.testing.assert_array_equal(out[keep], source[keep])
    # the seam lies outside the kept area: x = 8, 9 next to the strip blend, x = 10.. (far enough) untouched
    np.testing.assert_array_equal(out[0, 8], np.rint(2 / 3 * source[0, 8] + 1 / 3 * generated[0, 8]).astype(np.uint8))
    np.testing.assert_array_equal(out[0, 10:], generated[0, 10:])
    with pytest.raises(ValueError, match="keep"):
        paste_back(Image.fromarray(generated), comp, keep=keep[:, :20])
    with pytest.raises(ValueError, match="source"):
        paste_back(Image.fromarray(generated), comp, keep=keep, source=Image.new("RGB", (8, 8)))


# --- background reference -----------------------------------------------------------------------------

@pytest.mark.parametrize("src", [(200, 50), (50, 200), (64, 48), (3, 3)])
@pytest.mark.parametrize("dst", [(64, 48), (67, 45), (1, 1)])
def test_fit_background_gives_exact_size_rgb(src, dst):
    out = fit_background(Image.new("RGB", src, (1, 2, 3)), *dst)
    assert out.size == dst and out.mode == "RGB"


def test_fit_background_covers_and_crops_the_centre():
    # 40 columns x 10 rows into 10x10: scale 1 (height fits), crop columns 15..24
    out = np.asarray(fit_background(column_index_image(40, 10).convert("RGB"), 10, 10))
    np.testing.assert_array_equal(out[0, :, 0], np.arange(15, 25))
    # 10 x 40 into 20 x 20: scaled x2 to 20 x 80, rows 30..49 kept (every source row twice, from row 15)
    out = np.asarray(fit_background(row_index_image(10, 40).convert("RGB"), 20, 20))
    assert out[0, 0, 0] in (14, 15) and out[-1, 0, 0] in (24, 25)
    assert out.shape == (20, 20, 3)


def test_fit_background_composites_transparency_onto_grey():
    bg = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    bg.paste((0, 0, 255, 255), (0, 0, 10, 20))
    out = fit_background(bg, 20, 20)
    assert out.getpixel((2, 5)) == (0, 0, 255) and out.getpixel((17, 5)) == NEUTRAL_GREY
    palette = Image.new("P", (8, 8), 0)
    assert fit_background(palette, 4, 4).mode == "RGB"


def test_with_background_replaces_everything_but_the_clothes():
    rng = np.random.default_rng(8)
    comp = Composition(Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)),
                       garment_composition().keep, np.ones((30, 40), bool))
    start = with_background(comp, Image.new("RGB", (80, 60), (5, 6, 7)))
    out = np.asarray(start.image)
    np.testing.assert_array_equal(out[comp.keep], np.asarray(comp.image)[comp.keep])
    assert (out[~comp.keep] == (5, 6, 7)).all()
    assert start.keep is comp.keep and start.figure is comp.figure


def test_fit_background_follows_image2image_resize_mode():
    bg = Image.new("RGB", (40, 20))
    bg.putdata([(x * 6, y * 12, 100) for y in range(20) for x in range(40)])
    cover = fit_background(bg, 20, 20)  # default: cover (scale to 40x20... already 20 high) and crop the centre
    assert cover.size == (20, 20) and np.array_equal(np.asarray(cover), np.asarray(bg)[:, 10:30])
    assert np.array_equal(np.asarray(fit_background(bg, 20, 20, "CropAndResize")), np.asarray(cover))
    stretched = fit_background(bg, 20, 20, "JustResize")
    assert np.array_equal(np.asarray(stretched), np.asarray(bg.resize((20, 20), Image.Resampling.LANCZOS)))
    filled = np.asarray(fit_background(bg, 20, 20, "ResizeAndFill"))  # 20x10 in the middle, edges extended
    inner = np.asarray(bg.resize((20, 10), Image.Resampling.LANCZOS))
    assert np.array_equal(filled[5:15], inner)
    assert np.array_equal(filled[0], inner[0]) and np.array_equal(filled[19], inner[-1])
    same = fit_background(bg, 40, 20, "JustResize")  # already the size: untouched whatever the mode
    assert all(np.array_equal(np.asarray(fit_background(bg, 40, 20, m)), np.asarray(bg))
               for m in ("JustResize", "CropAndResize", "ResizeAndFill")) and same.size == (40, 20)


def _whole_image_seam(keep: np.ndarray, feather_px: int) -> tuple[np.ndarray, np.ndarray]:
    """The band and weights of the seam by the definition: distances over the whole image."""
    distance = _garment_distance(keep, feather_px).reshape(-1)
    band = np.flatnonzero((distance > 0) & (distance <= feather_px))
    return band, 1.0 - distance[band] / (feather_px + 1)


@pytest.mark.parametrize("feather_px", [1, 4, 9])
@pytest.mark.parametrize("seed", range(6))
def test_the_seam_computed_around_the_garment_equals_the_whole_image_one(feather_px, seed):
    rng = np.random.default_rng(seed)
    keep = np.zeros((70, 90), dtype=bool)
    for _ in range(rng.integers(1, 4)):  # blobs anywhere, some touching the image's edges
        top, left = rng.integers(-5, 65), rng.integers(-5, 85)
        keep[max(0, top):top + rng.integers(1, 20), max(0, left):left + rng.integers(1, 30)] = True
    keep &= rng.random(keep.shape) < 0.9  # holes: kept pixels the band must go around
    if not keep.any():
        keep[35, 45] = True
    seam = _Seam.of(keep, feather_px)
    band, weight = _whole_image_seam(keep, feather_px)
    assert np.array_equal(np.sort(seam.band), band)
    order = np.argsort(seam.band)
    assert np.array_equal(seam.weight[order, 0], weight)
    rows, cols = np.nonzero(keep)
    assert seam.box == (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))


def test_the_seam_of_nothing_kept_writes_nothing():
    generated = np.full((20, 30, 3), 77, dtype=np.uint8)
    comp = Composition(Image.new("RGB", (30, 20), (1, 2, 3)), np.zeros((20, 30), dtype=bool), None)
    assert np.array_equal(np.asarray(paste_back(generated, comp)), generated)


def test_paste_back_overwrites_the_generated_array_only_when_allowed():
    man, mask = Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("L", (40, 30), 0)
    mask.paste(255, (10, 10, 20, 20))
    comp = prepare(man, mask, 40, 30)
    generated = np.full((30, 40, 3), 50, dtype=np.uint8)
    kept = paste_back_pixels(generated, comp)
    assert (generated == 50).all()  # by default the caller's array is left alone
    result = paste_back_pixels(generated, comp, overwrite=True)
    assert result is generated and np.array_equal(generated, kept)  # ... with overwrite it is the result's memory
