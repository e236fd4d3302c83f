"""Segmenters: SLIC, DINO-token k-means and SAM (randomly initialised tiny model) behind one interface."""

import importlib.util
import sys
from functools import partial

import numpy as np
import pytest
import torch

from vprkit.models.base import MissingWeightsError
from vprkit.segment import get_segmenter
from vprkit.segment.masks import masks_to_labels
from vprkit.segment.sam import SAM, batched_nms, box_area, import_segment_anything


def _two_tone(h=48, w=64):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (200, 30, 30)
    img[:, w // 2:] = (20, 40, 220)
    return img


def test_slic_follows_a_colour_edge():
    labels = get_segmenter("slic", n_segments=2, compactness=0.1)(_two_tone())
    assert labels.shape == (48, 64) and labels.min() == 0
    assert len(np.unique(labels)) == 2 and labels[0, 0] != labels[0, -1]
    assert (labels[:, :32] == labels[0, 0]).all()


def test_dino_kmeans_splits_distinct_token_regions_into_connected_segments():
    tokens = np.zeros((4, 3, 6), np.float32)
    tokens[0, :, :3] = 1  # left half points one way ...
    tokens[1, :, 3:] = 1  # ... right half another
    labels = get_segmenter("dino_kmeans", num_clusters=2, xy_weight=0.0)(_two_tone(42, 84), tokens)
    assert labels.shape == (42, 84)
    assert (labels[:, :42] == labels[0, 0]).all() and (labels[:, 42:] == labels[0, -1]).all()
    assert labels[0, 0] != labels[0, -1]
    # the same cluster in two separate places becomes two segments
    tokens[:, :, :] = 0
    tokens[0, :, :2] = tokens[0, :, 4:] = 1
    tokens[1, :, 2:4] = 1
    labels = get_segmenter("dino_kmeans", num_clusters=2, xy_weight=0.0)(_two_tone(42, 84), tokens)
    assert len(np.unique(labels)) == 3
    with pytest.raises(ValueError, match="needs the backbone tokens"):
        get_segmenter("dino_kmeans")(_two_tone())


def test_unknown_segmenter_and_bad_images_are_refused():
    with pytest.raises(KeyError, match="slic"):
        get_segmenter("watershed")
    with pytest.raises(ValueError, match="uint8 RGB"):
        get_segmenter("slic")(np.zeros((8, 8), np.uint8))


def test_nms_and_box_area_match_hand_computation():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert box_area(boxes).tolist() == [100, 81, 100]
    # IoU(0, 1) = 81 / 100 > 0.5: box 1 is suppressed, unless it belongs to another category
    assert batched_nms(boxes, scores, torch.zeros(3), 0.5).tolist() == [0, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1, 2]
    assert batched_nms(boxes, scores, torch.zeros(3), 0.9).tolist() == [0, 1, 2]


needs_sam = pytest.mark.skipif(importlib.util.find_spec("segment_anything") is None,
                               reason="pip install segment-anything")


@needs_sam
def test_sam_without_checkpoint_is_a_clear_error():
    with pytest.raises(MissingWeightsError, match="checkpoint"):
        SAM()
    with pytest.raises(MissingWeightsError, match="not found"):
        SAM(checkpoint="/nonexistent/sam_vit_b.pth")
    assert "torchvision" not in sys.modules or sys.modules["torchvision"].__spec__ is not None


@pytest.mark.slow
@needs_sam
def test_sam_automatic_masks_from_a_random_tiny_model():
    """The real segment-anything generator end to end (random weights: masks are arbitrary, not empty)."""
    sa = import_segment_anything()
    m = sa.modeling
    torch.manual_seed(0)
    model = m.Sam(
        image_encoder=m.ImageEncoderViT(img_size=256, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                                        mlp_ratio=2, out_chans=32, qkv_bias=True, window_size=0,
                                        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
        prompt_encoder=m.PromptEncoder(embed_dim=32, image_embedding_size=(16, 16), input_image_size=(256, 256),
                                       mask_in_chans=8),
        mask_decoder=m.MaskDecoder(num_multimask_outputs=3, transformer_dim=32, iou_head_hidden_dim=32,
                                   transformer=m.TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64,
                                                                   num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    seg = get_segmenter("sam", model=model, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    masks = [r["segmentation"] for r in seg.generator.generate(image)]
    assert masks and all(mk.shape == (48, 64) for mk in masks)
    labels = seg(image)
    assert (labels == masks_to_labels(masks, (48, 64))).all()
    kept = seg.masks(image)  # every non-empty mask, overlaps included (what segvlad-ref uses)
    assert (kept == np.stack([mk for mk in masks if mk.any()])).all()
    assert labels.max() >= 0 and set(np.unique(labels)) <= set(range(-1, len(masks)))
    assert "torchvision" not in sys.modules or sys.modules["torchvision"].__spec__ is not None
