"""Match figures: two images side by side with the verified patch correspondences of every patch size."""

from __future__ import annotations

from pathlib import Path

from ...data.images import load_image
from ...data.safeio import replacing
from ...features import patches


def images_for_display(names: list[str | Path], size: list[int]):
    """The two images at the size the patches were computed at."""
    return [load_image(n).resize(tuple(size), patches.RESAMPLE) for n in names]


def draw_matches(images: list, lines: list[list[tuple]], path: Path, scale: float = 1.0) -> None:
    """Side-by-side image (format from the suffix) with one colour per patch size; each line joins matched
    patch centres. `scale` resizes the images first (the lines stay one pixel wide)."""
    from PIL import Image, ImageDraw

    if scale != 1.0:
        images = [im.resize((round(im.width * scale), round(im.height * scale)), patches.RESAMPLE) for im in images]
        lines = [[((xa * scale, ya * scale), (xb * scale, yb * scale)) for (xa, ya), (xb, yb) in pairs]
                 for pairs in lines]
    w, h = images[0].size
    canvas = Image.new("RGB", (2 * w, h))
    canvas.paste(images[0], (0, 0))
    canvas.paste(images[1], (w, 0))
    draw = ImageDraw.Draw(canvas)
    colours = [(255, 60, 60), (60, 220, 60), (60, 140, 255), (255, 200, 0)]
    for s, pairs in enumerate(lines):
        for (xa, ya), (xb, yb) in pairs:
            c = colours[s % len(colours)]
            draw.line([(xa, ya), (xb + w, yb)], fill=c, width=1)
            for x, y in ((xa, ya), (xb + w, yb)):
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=c)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:  # quality: JPEG's, ignored by PNG
        canvas.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"), quality=85)
