"""Image folders: recursive stable listing and defensive decoding.

A map can hold 100k files, some broken. Loading never raises for one bad file inside a folder
scan: `ImageError` names the file and the problem so the caller can warn, count and move on.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .safeio import InputError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DEFAULT_MAX_PIXELS = 100_000_000
# a tab, or what Python's str.splitlines takes for a line break: the separators of vprkit's text outputs
UNSAFE_NAME = re.compile("[\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# vprkit's own output folders, by the file that marks each and keys always in it. The data layer cannot import
# `index.layout.MANIFEST_FILE` or `results.RESULTS_FILE`; tests/test_images.py checks these names are theirs.
OUTPUT_MARKERS = {"manifest.json": ("index", {"conf", "names", "map_dir"}),
                  "results.json": ("results folder", {"index", "queries"}),
                  "compare.json": ("comparison", {"A", "B", "metrics"})}
MARKER_HEAD = 1 << 20  # bytes of a marker file read to recognise it
logger = logging.getLogger("vprkit")


class ImageError(ValueError):
    """An image that cannot be used, with the file named in the message."""


class PixelLimitError(ImageError):
    """An image whose header declares more pixels than allowed (refused before decoding)."""


def list_images(root: str | Path) -> list[str]:
    """Image paths under `root`, relative to it, in a stable (sorted) order, recursively; vprkit's own output
    folders inside `root` are skipped (`vprkit index mi -o mi/idx`: the index, its results and report thumbnails are
    never read back as map images or queries)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        skipped = [d for d in dirs if output_kind(here / d)]
        for d in skipped:
            logger.info("%s: skipped, a vprkit %s (output, not input)", here / d, output_kind(here / d))
        dirs[:] = [d for d in dirs if d not in skipped]
        found += [(here / f).relative_to(root).as_posix() for f in files
                  if os.path.splitext(f)[1].lower() in EXTENSIONS and (here / f).is_file()]
    return _usable(root, sorted(found))


def _usable(root: Path, found: list[str]) -> list[str]:
    """`found` without names that are not valid UTF-8 (no output can hold them: skipped, named in a warning); a
    name holding a tab or a line break, which would break the tab-separated outputs (predictions, pairs) after
    all the work, refuses the folder before anything is done (one line naming the file)."""
    names = [n for n in found if _is_utf8(n)]
    if len(names) < len(found):
        skipped = [os.fsencode(n) for n in found if not _is_utf8(n)]
        logger.warning("%s: skipping %d images whose file names are not valid UTF-8 (rename them to use them): %s",
                       root, len(skipped), ", ".join(map(repr, skipped[:10])) + (" ..." if len(skipped) > 10 else ""))
    if not names:
        raise ValueError(f"no images ({', '.join(sorted(EXTENSIONS))}) found under {root}")
    unsafe = [n for n in names if UNSAFE_NAME.search(n)]
    if unsafe:
        raise InputError(f"{root / unsafe[0]!r}: a file name with a tab or a line break cannot be written to the "
                         f"tab-separated outputs; rename it ({len(unsafe)} such names under {root})")
    return names


def output_kind(folder: Path) -> str | None:
    """What vprkit output `folder` is ('index', 'results folder', 'comparison'), or None for any other folder.

    Recognised by the file vprkit writes there and the keys it always writes into it, so a user's folder that
    merely holds a file of the same name is still listed."""
    for name, (kind, keys) in OUTPUT_MARKERS.items():
        path = folder / name
        if path.is_file() and _has_keys(path, keys):
            return kind
    return None


def _has_keys(path: Path, keys: set[str]) -> bool:
    """Whether a JSON object file has `keys` at its top level. A file past MARKER_HEAD bytes (the manifest of a
    10M-image map lists every name: ~1 GB) is judged from its head, where vprkit writes these keys before the
    name list, so recognising an index costs one small read however large its map."""
    try:
        with path.open("rb") as f:
            head = f.read(MARKER_HEAD + 1)
        if len(head) <= MARKER_HEAD:
            data = json.loads(head.decode("utf-8"))
            return isinstance(data, dict) and keys <= set(data)
    except (OSError, ValueError):
        return False
    return head.lstrip().startswith(b"{") and all(f'"{k}":'.encode() in head for k in keys)


def _is_utf8(name: str) -> bool:
    """Whether a file name decoded from the file system is valid UTF-8 (else it holds surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def upright_rgb(img: Image.Image) -> Image.Image:
    """A decoded image as vprkit describes it: its EXIF orientation applied (once: the tag is dropped), any mode
    as 8-bit RGB. Files and images given in memory both go through here, so they are described alike."""
    return _to_rgb(ImageOps.exif_transpose(img))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F) to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0)) if img.mode != "F" else 255.0 / max(hi, 1e-12)
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file as upright 8-bit RGB, refusing empty, broken or oversized files."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
        with open(path, "rb") as fp:
            return decode_image(fp, str(path), max_pixels)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from exc


def decode_image(fp: BinaryIO, label: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an open image stream (a file or uploaded bytes) as upright 8-bit RGB; errors name `label`.

    The pixel limit is checked from the header before decoding, so a decompression bomb never
    allocates its full size.
    """
    try:
        with Image.open(fp) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise PixelLimitError(f"{label}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
            img.load()
            return upright_rgb(img)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{label}: cannot decode image ({exc})") from exc


def resize_to_stride(img: Image.Image, resize_max: int | None, stride: int, resize_min: int | None = None
                     ) -> Image.Image:
    """Resize so the long side is `resize_max` (or the short side `resize_min`, which wins when both are given)
    and both sides are multiples of the backbone stride."""
    w, h = img.size
    if resize_min:
        scale = resize_min / min(w, h)
    else:
        scale = resize_max / max(w, h) if resize_max else 1.0
    nw = max(stride, round(w * scale / stride) * stride)
    nh = max(stride, round(h * scale / stride) * stride)
    if (nw, nh) == (w, h):
        return img
    return img.resize((nw, nh), Image.Resampling.BICUBIC)
