"""Make the small example inputs in examples/ (committed; re-run to regenerate identically).

- mannequin.png     a grey dress-form mannequin wearing a red dress with a white collar, on a wall
- mannequin_cutout.png  the same with a transparent background (RGBA)
- clothes_mask.png  white = the dress (kept exactly), black = everything to redraw
- background.png    a background reference (a pale street scene of blocks)
"""
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "examples"
W, H = 256, 384


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

    mask = Image.new("L", (W, H), 0)
    dress(ImageDraw.Draw(mask), 255, None)
    mask.save(OUT / "clothes_mask.png", optimize=True)

    bg = Image.new("RGB", (W, H), (170, 200, 230))
    d = ImageDraw.Draw(bg)
    d.rectangle((0, 260, W, H), fill=(120, 120, 115))
    for i, x in enumerate(range(0, W, 48)):
        d.rectangle((x, 120 - 20 * (i % 3), x + 40, 260), fill=(200 - 10 * i, 180, 160 + 8 * i))
    bg.save(OUT / "background.png", optimize=True)
    for p in sorted(OUT.glob("*.png")):
        print(p)


if __name__ == "__main__":
    main()
