"""`vprkit match-two`: the Patch-NetVLAD score and verified correspondences of two images, without a map."""

from __future__ import annotations

from pathlib import Path

from .draw import draw_matches, images_for_display
from .matcher import Matcher, verified_lines
from .model import build_model


def match_two(image_a: str | Path, image_b: str | Path, conf: dict, out_png: str | Path | None = None) -> dict:
    """Patch-NetVLAD score of two images (weighted sum of per-size raw scores, higher = more similar).

    Without a map there is nothing to fit PCA on, so (unless `checkpoint` brings its PCA) the raw
    normalised patch VLADs are matched, with a vocabulary fitted on the two images. Draws the patch
    correspondences that survive RANSAC (homography) for every patch size into `out_png`.
    """
    names = [str(image_a), str(image_b)]
    model = build_model(conf, None, None, images=(Path(""), names))
    _, local, bad = model.local_features(Path(""), names)
    if bad:
        raise ValueError(f"cannot read {', '.join(bad)}")
    feats = model.describe(local)
    sizes = conf["patch_sizes"]
    matcher = Matcher(conf, model)
    q, db = [feats[f"p{s}"][0] for s in sizes], [feats[f"p{s}"][1:] for s in sizes]
    raw = matcher.scale_scores(q, db)[:, 0]
    score = float(sum(w * r for w, r in zip(conf["patch_weights"], raw.tolist(), strict=True)))
    lines = verified_lines(matcher, q, db)
    if out_png is not None:
        draw_matches(images_for_display(names, conf["resize"]), lines, Path(out_png))
    return {"score": score, "scale_scores": dict(zip(map(str, sizes), raw.tolist(), strict=True)),
            "inliers": dict(zip(map(str, sizes), map(len, lines), strict=True))}
