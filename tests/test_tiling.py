"""Aspect-preserving tiling: geometry, stitching, and planted cues found only with tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from alfa_ad import Detector
from alfa_ad.scoring.tiling import EDGE_WEIGHT, MAX_TILES, STRIP_TILES, parse_tile, plan_tiles, stitch, tent

from conftest import spot_image


def _covers(boxes, h, w):
    seen = np.zeros((h, w), dtype=int)
    for t, l, b, r in boxes:
        seen[t:b, l:r] += 1
    return seen


@pytest.mark.parametrize("h, w", [(500, 1250), (1250, 500), (600, 2000)])
def test_auto_tiles_are_square_cover_the_image_and_overlap(h, w):
    boxes = plan_tiles(h, w, 240, "auto")
    assert boxes is not None and len(boxes) <= MAX_TILES
    sides = {(b - t, r - l) for t, l, b, r in boxes}
    assert len(sides) == 1 and len({*next(iter(sides))}) == 1  # one square size
    side = next(iter(sides))[0]
    assert side == min(h, w, 480)
    assert (_covers(boxes, h, w) >= 1).all()
    assert all(0 <= t < b <= h and 0 <= l < r <= w for t, l, b, r in boxes)
    # neighbours along an axis overlap by at least a quarter tile
    lefts = sorted({l for _, l, _, _ in boxes})
    assert all(b - a <= 0.75 * side + 1 for a, b in zip(lefts, lefts[1:]))


@pytest.mark.parametrize("h, w, n, piece", [(60, 4000, 2, (60, 2286)), (3000, 40, 2, (1715, 40)),
                                            (200, 500, 2, (200, 286)), (4000, 300, 9, (572, 300))])
def test_thin_and_long_images_get_a_few_full_width_pieces(h, w, n, piece):
    """Hand-checked: 4000 px in 2 pieces overlapping by a quarter: ceil(4000 / 1.75) = 2286.
    4000 x 300 would need 18 squares of 300; pieces of at most 2 x 300 = 600 px: 9 of 572."""
    boxes = plan_tiles(h, w, 240, "auto")
    assert len(boxes) == n and {(b - t, r - l) for t, l, b, r in boxes} == {piece}
    assert (_covers(boxes, h, w) >= 1).all()
    long = max(h, w)
    starts = sorted(t if h > w else l for t, l, _, _ in boxes)
    assert starts[0] == 0 and starts[-1] + max(piece) == long


@pytest.mark.parametrize("h, w", [(2048, 2048), (4000, 4000), (300, 20000), (61, 100000), (3000, 3000)])
def test_auto_never_uses_more_than_the_budget(h, w):
    boxes = plan_tiles(h, w, 240, "auto")
    assert boxes is not None and len(boxes) <= (STRIP_TILES if min(h, w) < 240 else MAX_TILES)
    assert (_covers(boxes, h, w) >= 1).all()
    if h == w:  # a large square image: bigger squares, not more (2048: 16 of 646 instead of 36 of 480)
        sides = {(b - t, r - l) for t, l, b, r in boxes}
        assert len(sides) == 1 and len(boxes) == MAX_TILES


def test_an_explicit_tile_size_is_not_bounded():
    assert len(plan_tiles(60, 4000, 240, 60)) == 89  # ceil((4000 - 60) / 45) + 1


def test_rectangular_tent_is_separable_and_a_square_one_unchanged():
    assert torch.equal(tent(30), tent(30, 30))
    w = tent(10, 40)
    assert w.shape == (10, 40) and torch.allclose(w, w[:, 20:21] * w[5:6, :] / w[5, 20])
    assert float(w.max()) == pytest.approx(float(tent(10)[5, 5] * tent(40)[20, 20]) ** 0.5, rel=1e-6)


def test_auto_leaves_ordinary_images_whole_and_none_never_tiles():
    for h, w in [(240, 240), (1024, 1024), (200, 320), (300, 180), (960, 1562)]:
        assert plan_tiles(h, w, 240, "auto") is None
    assert plan_tiles(60, 4000, 240, "none") is None
    assert plan_tiles(600, 600, 240, 300) is not None and plan_tiles(300, 300, 240, 300) is None


def test_parse_tile_errors():
    assert parse_tile("AUTO") == "auto" and parse_tile("256") == 256 and parse_tile(None) == "none"
    for bad in ("big", "0", "-5", "3"):
        with pytest.raises(ValueError, match="--tile"):
            parse_tile(bad)


def test_stitch_single_tile_and_constant_maps():
    m = torch.rand(1, 15, 15)
    whole = stitch(m, [(0, 0, 90, 90)], (90, 90))
    ref = torch.nn.functional.interpolate(m[None], size=(90, 90), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(whole, ref)
    boxes = plan_tiles(100, 700, 50, 100)
    out = stitch(torch.full((len(boxes), 8, 8), 0.3), boxes, (100, 700))
    torch.testing.assert_close(out, torch.full((100, 700), 0.3))


def test_stitch_prefers_the_tile_in_which_a_pixel_is_central():
    w = tent(100)
    assert w[50, 50] > 0.97 and w[0, 0] == pytest.approx(EDGE_WEIGHT**2) and (w > 0).all()
    boxes = [(0, 0, 100, 100), (0, 50, 100, 150)]
    out = stitch(torch.stack([torch.zeros(10, 10), torch.ones(10, 10)]), boxes, (100, 150))
    assert out[50, 10] == 0 and out[50, 140] == 1  # covered by one tile: that tile's value
    assert out[50, 60] < 0.5 < out[50, 90]  # the overlap leans to the nearer centre


def _localizes(det, img, mask) -> tuple[float, bool]:
    r = det(img, "widget")
    assert r.anomaly_map.shape == img.shape[:2]
    peak = np.unravel_index(int(r.anomaly_map.argmax()), r.anomaly_map.shape)
    return roc_auc_score(mask.ravel(), r.anomaly_map.ravel()), bool(mask[peak])


@pytest.mark.parametrize("shape, box", [
    ((2048, 2048), (1500, 300, 1540, 340)),  # a 40-px spot on a 2048^2 image (shrunk 8.5x untiled)
    ((240, 1920), (100, 1500, 132, 1532)),   # a 32-px spot on a 1:8 strip (squashed 8x untiled)
])
def test_small_cue_is_found_with_tiles_and_lost_without(planted_backbone, shape, box):
    """Untiled, the spot shrinks below the planted model's paint threshold: the map's peak
    is elsewhere and the image scores like a clean one.  Tiled, the peak is on the spot
    and the score rises far above the clean image's."""
    img, mask = spot_image(*shape, box=box, seed=3)
    clean, _ = spot_image(*shape, box=(0, 0, 0, 0), seed=3)
    tiled = Detector(planted_backbone, cache_dir=None, tile="auto")
    auroc, on_spot = _localizes(tiled, img, mask)
    assert on_spot and auroc >= 0.95, auroc
    assert tiled(img, "widget").tiles > 1 and tiled(clean, "widget").tiles > 1
    gain_tiled = tiled(img, "widget").score - tiled(clean, "widget").score
    whole = Detector(planted_backbone, cache_dir=None, tile="none")
    _, on_spot_whole = _localizes(whole, img, mask)
    gain_whole = whole(img, "widget").score - whole(clean, "widget").score
    assert not on_spot_whole
    assert gain_tiled > 20 * max(gain_whole, 1e-6), (gain_tiled, gain_whole)


def test_tiled_few_shot_references_and_scores(planted_backbone):
    """References are tiled like the query: with a tiled memory bank alone, a clean strip
    scores ~0 and the spot is found."""
    img, mask = spot_image(240, 1920, box=(100, 1500, 132, 1532), seed=3)
    clean, _ = spot_image(240, 1920, box=(0, 0, 0, 0), seed=4)
    det = Detector(planted_backbone, cache_dir=None, tile="auto", use_text=False)
    det.fit_normals([clean])
    assert det.method.bank_size == 2 * 11 * 15 * 15  # 2 memory layers; 240 x 1920 -> 11 tiles of 240 x 240, 25% overlap
    auroc, on_spot = _localizes(det, img, mask)
    assert on_spot and auroc >= 0.95
    assert det(clean, "widget").score < 1e-5


def test_unit_batches_free_each_image_after_its_last_tile(planted_backbone, monkeypatch):
    """Batches of many references or test images hold only the pixel tensors of the images
    in the batch being scored (a long fit used to keep every decoded reference until the end)."""
    import weakref

    import alfa_ad.detector as detector_module

    made = []
    original = detector_module.image_to_tensor

    def recording(image):
        t = original(image)
        made.append(weakref.ref(t))
        return t

    monkeypatch.setattr(detector_module, "image_to_tensor", recording)
    det = Detector(planted_backbone, cache_dir=None, batch_size=2, tile="240")
    from PIL import Image

    images = [Image.fromarray(np.full((240, 240, 3), 100 + i, np.uint8)) for i in range(3)]
    images.insert(1, Image.fromarray(np.full((240, 600, 3), 50, np.uint8)))  # 3+ tiles, spans batches
    groups, units = det._units(images)
    assert len(groups[1]) >= 3
    for b, _ in enumerate(det._unit_batches(images, units)):
        in_batch = {i for i, _ in units[b * 2 : b * 2 + 2]}
        alive = {k for k, ref in enumerate(made) if ref() is not None}
        assert alive <= in_batch, (b, alive, in_batch)
    assert len(made) == len(images)  # each image decoded once, even when its tiles span batches
