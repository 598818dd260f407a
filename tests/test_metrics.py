"""Tests for alfa_ad.evaluation.metrics.

References are computed inline: scikit-learn for AUROC / AUPR / F1-max, and a
deliberately simple loop-over-every-threshold PRO implementation (``pro_reference``).
Real masks come from ``../shared/data`` (skipped when absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from alfa_ad.evaluation import metrics
from alfa_ad.evaluation.metrics import (
    EVAL_SIZE,
    image_aupr,
    image_auroc,
    image_f1_max,
    pixel_aupr,
    pixel_auroc,
    pixel_f1_max,
    pro_auc,
    summarize,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KEYS = ("image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_aupr", "pixel_f1_max", "pro")


# --------------------------------------------------------------------------- references


def sk_f1_max(y, s) -> float:
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1.0), 0.0)
    return float(f1.max())


def sk_all(y, s) -> tuple[float, float, float]:
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s)), sk_f1_max(y, s)


def pro_reference(masks, maps, fpr_limit: float = 0.3) -> float:
    """Brute force PRO: every distinct score is a threshold (flag ``score >= t``); per
    threshold, loop over the 8-connected regions of every image; curve (0,0) ... (1,1),
    cut at ``fpr_limit`` by linear interpolation, trapezoid, divided by ``fpr_limit``."""
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps, dtype=np.float64)
    regions = []
    for i in range(masks.shape[0]):
        labelled, n = ndimage.label(masks[i], structure=np.ones((3, 3), dtype=int))
        regions += [(i, labelled == k) for k in range(1, n + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        flagged = maps >= t
        overlaps = [flagged[i][region].sum() / region.sum() for i, region in regions]
        pros.append(sum(overlaps) / len(overlaps))
        fprs.append(flagged[normal].sum() / normal.sum())
    fprs.append(1.0)
    pros.append(1.0)
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def random_blobs(n: int, size: int, seed: int, decimals: int | None = None):
    """Masks with 0-3 random rectangles per image, maps = blurred mask + noise (float32)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, 4)):
            y, x = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, size // 3, 2)
            masks[i, y : y + h, x : x + w] = True
    maps = np.stack([ndimage.gaussian_filter(m.astype(float), 1.5) for m in masks])
    maps = maps + rng.normal(0, 0.3, maps.shape)
    if decimals is not None:
        maps = np.round(maps, decimals)
    return masks, maps.astype(np.float32)


# --------------------------------------------------------------------------- image metrics


def test_eval_size_kept():
    assert EVAL_SIZE == 256


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tied", [False, True])
def test_image_metrics_equal_sklearn(seed, tied):
    rng = np.random.default_rng(seed)
    n = 300
    y = (rng.random(n) < 0.35).astype(int)
    s = rng.normal(size=n) + 0.8 * y
    if tied:  # many ties, also between normal and anomalous samples
        s = np.round(s, 1)
    ref = sk_all(y, s)
    got = (image_auroc(y, s), image_aupr(y, s), image_f1_max(y, s))
    assert got == pytest.approx(ref, abs=1e-9)
    # plain lists work too
    assert image_auroc(y.tolist(), s.tolist()) == pytest.approx(ref[0], abs=1e-9)


def test_image_metrics_bool_labels_and_worse_than_chance():
    y = np.array([True, False, True, False, False])
    s = np.array([0.1, 0.9, 0.2, 0.8, 0.7])  # perfectly inverted
    assert image_auroc(y, s) == pytest.approx(0.0, abs=1e-12)
    assert image_aupr(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert image_f1_max(y, s) == pytest.approx(sk_f1_max(y, s), abs=1e-12)


def test_f1_max_hand_example():
    # labels [0, 0, 1, 1], scores [0.1, 0.4, 0.35, 0.8]; flag score >= t:
    #   t=0.8 : TP=1 FP=0 -> P=1,   R=1/2 -> F1 = 2*1*0.5/(1+0.5)     = 2/3
    #   t=0.4 : TP=1 FP=1 -> P=1/2, R=1/2 -> F1 = 2*0.25/1            = 1/2
    #   t=0.35: TP=2 FP=1 -> P=2/3, R=1   -> F1 = 2*(2/3)/(2/3+1)     = (4/3)/(5/3) = 4/5
    #   t=0.1 : TP=2 FP=2 -> P=1/2, R=1   -> F1 = 2*0.5/1.5           = 2/3
    # (and the PR curve's end point P=1, R=0 -> F1 0).  Maximum: 0.8.
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert image_f1_max(labels, scores) == pytest.approx(0.8, abs=1e-12)
    # AUROC: pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3/4
    assert image_auroc(labels, scores) == pytest.approx(0.75, abs=1e-12)
    # AP: recall steps 1/2 at t=0.8 (P=1) and 1/2 at t=0.35 (P=2/3) -> 0.5 + 1/3 = 5/6
    assert image_aupr(labels, scores) == pytest.approx(5 / 6, abs=1e-12)


def test_constant_scores_are_defined():
    # p = 2/5 anomalous; one threshold flags everything: AUROC 0.5, AP = P = p,
    # F1 = 2 * p * 1 / (p + 1) = 2 * 0.4 / 1.4 = 4/7.
    labels, scores = [1, 0, 1, 0, 0], [3.0] * 5
    assert image_auroc(labels, scores) == 0.5
    assert image_aupr(labels, scores) == pytest.approx(0.4, abs=1e-12)
    assert image_f1_max(labels, scores) == pytest.approx(4 / 7, abs=1e-12)
    assert (image_aupr(labels, scores), image_f1_max(labels, scores)) == pytest.approx(
        sk_all(labels, scores)[1:], abs=1e-12)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1], [], [True, True]])
@pytest.mark.parametrize("fn", [image_auroc, image_aupr, image_f1_max])
def test_image_one_class_is_none(fn, labels):
    assert fn(labels, [0.5] * len(labels)) is None


def test_image_invalid_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="length"):
        image_auroc([0, 1, 1], [0.1, 0.3])
    with pytest.raises(ValueError, match="0/1"):
        image_aupr([0, 2, 1], [0.1, 0.2, 0.3])


# --------------------------------------------------------------------------- pixel metrics


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("chunk", [None, 3])
def test_pixel_metrics_equal_sklearn(decimals, chunk, monkeypatch):
    if chunk is not None:  # tiny chunks: tie runs cross chunk boundaries
        monkeypatch.setattr(metrics, "_CHUNK", chunk)
    masks, maps = random_blobs(4, 24, seed=7, decimals=decimals)
    ref = sk_all(masks.ravel(), maps.ravel())
    got = (pixel_auroc(masks, maps), pixel_aupr(masks, maps), pixel_f1_max(masks, maps))
    assert got == pytest.approx(ref, abs=1e-9)


def test_pixel_metrics_float64_and_uint8_masks():
    masks, maps = random_blobs(3, 20, seed=3)
    maps64 = maps.astype(np.float64) + np.random.default_rng(0).normal(0, 1e-9, maps.shape)
    ref = sk_all(masks.ravel(), maps64.ravel())
    m255 = masks.astype(np.uint8) * 255
    got = (pixel_auroc(m255, maps64), pixel_aupr(m255, maps64), pixel_f1_max(m255, maps64))
    assert got == pytest.approx(ref, abs=1e-9)


def test_pixel_auroc_matches_previous_behaviour():
    # the function replaced here was sklearn's roc_auc_score on float32 maps
    masks, maps = random_blobs(5, 32, seed=11)
    assert pixel_auroc(masks, maps) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.astype(np.float32).ravel()), abs=1e-9)


def test_pixel_constant_map_is_defined():
    masks = np.zeros((2, 4, 5), dtype=bool)
    masks[0, 1:3, 1:3] = True  # 4 of 40 pixels
    maps = np.full(masks.shape, 0.25, dtype=np.float32)
    p = 4 / 40
    assert pixel_auroc(masks, maps) == 0.5
    assert pixel_aupr(masks, maps) == pytest.approx(p, abs=1e-12)
    assert pixel_f1_max(masks, maps) == pytest.approx(2 * p / (1 + p), abs=1e-12)
    # chance line PRO = FPR: area 0.3 * 0.3 / 2 = 0.045, / 0.3 = 0.15
    assert pro_auc(masks, maps) == pytest.approx(0.15, abs=1e-12)


@pytest.mark.parametrize("fill", [False, True])
@pytest.mark.parametrize("fn", [pixel_auroc, pixel_aupr, pixel_f1_max, pro_auc])
def test_pixel_undefined_is_none(fn, fill):
    masks = np.full((2, 6, 6), fill, dtype=bool)  # no positive / no negative pixel
    maps = np.random.default_rng(0).random(masks.shape).astype(np.float32)
    assert fn(masks, maps) is None


@pytest.mark.parametrize("fn", [pixel_auroc, pixel_aupr, pixel_f1_max, pro_auc])
def test_pixel_empty_is_none(fn):
    assert fn(np.zeros((0, 8, 8), dtype=bool), np.zeros((0, 8, 8), dtype=np.float32)) is None


def test_pixel_invalid_inputs_raise():
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = True
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(masks, np.zeros((1, 4, 5)))
    maps = np.zeros((1, 4, 4), dtype=np.float32)
    maps[0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pixel_aupr(masks, maps)
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_auc(masks, np.zeros((1, 4, 4)), fpr_limit=0.0)


# --------------------------------------------------------------------------- PRO, hand-made


def two_regions():
    """One 8x8 image with two equal 2x2 regions A (top left) and B (bottom right)."""
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 1:3, 1:3] = True  # A
    masks[0, 5:7, 5:7] = True  # B
    return masks


def test_pro_perfect_map_is_one():
    # thresholds 1 -> (FPR 0, PRO 1), 0 -> (1, 1): flat at 1, area 0.3 / 0.3 = 1
    masks = two_regions()
    maps = masks.astype(np.float32)
    assert pro_auc(masks, maps) == pytest.approx(1.0, abs=1e-12)
    assert pro_reference(masks, maps) == pytest.approx(1.0, abs=1e-12)


def test_pro_constant_map():
    # one threshold flags everything: (0,0) -> (1,1), PRO = FPR; 0.5*0.3*0.3 / 0.3 = 0.15
    masks = two_regions()
    maps = np.full(masks.shape, 7.0, dtype=np.float32)
    assert pro_auc(masks, maps) == pytest.approx(0.15, abs=1e-12)
    assert pro_reference(masks, maps) == pytest.approx(0.15, abs=1e-12)


def test_pro_one_of_two_regions_flat_half():
    # A = 1, normal pixels = 0.5, B = 0: thresholds 1 -> (0, 0.5), 0.5 -> (1, 0.5),
    # 0 -> (1, 1).  PRO is 0.5 over the whole FPR range: area 0.5 * 0.3 / 0.3 = 0.5
    masks = two_regions()
    maps = np.full(masks.shape, 0.5, dtype=np.float32)
    maps[0, 1:3, 1:3] = 1.0
    maps[0, 5:7, 5:7] = 0.0
    assert pro_auc(masks, maps) == pytest.approx(0.5, abs=1e-12)
    assert pro_reference(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_pro_one_of_two_regions_rest_zero():
    # A = 1, everything else 0 (B ties with the normal pixels): thresholds 1 -> (0, 0.5),
    # 0 -> (1, 1), so PRO(x) = 0.5 + 0.5 x on [0, 1]:
    # area to 0.3 = 0.3 * 0.5 + 0.5 * 0.5 * 0.3^2 = 0.15 + 0.0225 = 0.1725; / 0.3 = 0.575
    masks = two_regions()
    maps = np.zeros(masks.shape, dtype=np.float32)
    maps[0, 1:3, 1:3] = 1.0
    assert pro_auc(masks, maps) == pytest.approx(0.575, abs=1e-12)
    assert pro_reference(masks, maps) == pytest.approx(0.575, abs=1e-12)


def test_pro_averages_regions_not_pixels():
    # a 1-pixel region fully found and a 3x3 region missed: PRO 0.5 (pixel share would be 0.1)
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 0, 7] = True
    masks[0, 4:7, 0:3] = True
    maps = np.full(masks.shape, 0.5, dtype=np.float32)
    maps[0, 0, 7] = 1.0
    maps[0, 4:7, 0:3] = 0.0
    assert pro_auc(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_pro_regions_are_8_connected():
    # 2x2 block plus a pixel touching it only diagonally = ONE region of 5 pixels under the
    # MVTec 3x3 structure.  Finding only the diagonal pixel (flat curve as above) gives
    # PRO 1/5 = 0.2; with 4-connectivity it would be mean(0, 1) = 0.5.
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 1:3, 1:3] = True
    masks[0, 3, 3] = True
    maps = np.full(masks.shape, 0.5, dtype=np.float32)
    maps[masks] = 0.0
    maps[0, 3, 3] = 1.0
    assert pro_auc(masks, maps) == pytest.approx(0.2, abs=1e-12)
    assert pro_reference(masks, maps) == pytest.approx(0.2, abs=1e-12)


def test_pro_regions_do_not_span_images():
    # the same pixel position in two images is two regions; image 0's is found, image 1's not
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[:, 2, 2] = True
    maps = np.full(masks.shape, 0.5, dtype=np.float32)
    maps[0, 2, 2] = 1.0
    maps[1, 2, 2] = 0.0
    assert pro_auc(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_pro_interpolates_at_the_limit():
    # 1 region (1 px, score 1) + 10 normal pixels scored 0.9 ... 0.0 (FPR steps of 0.1), the
    # region found first: PRO is 1 from FPR 0.  With the region at score 0.75 instead (found
    # after 2 normal pixels, FPR 0.2 -> 0.2): curve (0,0) (0.1,0) (0.2,0) (0.2,1) ... ->
    # area to 0.3 = 0.1 * 1 = 0.1, / 0.3 = 1/3.  With fpr_limit 0.25: 0.05 / 0.25 = 0.2.
    masks = np.zeros((1, 1, 11), dtype=bool)
    masks[0, 0, 0] = True
    maps = np.zeros((1, 1, 11), dtype=np.float64)
    maps[0, 0, 1:] = np.arange(9, -1, -1) / 10
    maps[0, 0, 0] = 1.0
    assert pro_auc(masks, maps) == pytest.approx(1.0, abs=1e-12)
    maps[0, 0, 0] = 0.75
    assert pro_auc(masks, maps) == pytest.approx(1 / 3, abs=1e-12)
    assert pro_auc(masks, maps, fpr_limit=0.25) == pytest.approx(0.2, abs=1e-12)
    assert pro_reference(masks, maps, fpr_limit=0.25) == pytest.approx(0.2, abs=1e-12)
    # region tied with a normal pixel at 0.8 (diagonal segment (0.1,0) -> (0.2,1)):
    # area to 0.3 = 0.1 * 0.5 + 0.1 * 1 = 0.15 -> 0.5
    maps[0, 0, 0] = 0.8
    assert pro_auc(masks, maps) == pytest.approx(0.5, abs=1e-12)
    assert pro_reference(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_pro_single_image_2d():
    masks = two_regions()
    maps = np.zeros(masks.shape, dtype=np.float32)
    maps[0, 1:3, 1:3] = 1.0
    assert pro_auc(masks[0], maps[0]) == pytest.approx(0.575, abs=1e-12)


# --------------------------------------------------------------------------- PRO vs brute force


@pytest.mark.parametrize("decimals", [None, 2])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_pro_equals_reference_random(decimals, fpr_limit):
    masks, maps = random_blobs(4, 16, seed=5, decimals=decimals)
    assert masks.any() and not masks.all()
    ref = pro_reference(masks, maps, fpr_limit)
    assert pro_auc(masks, maps, fpr_limit) == pytest.approx(ref, abs=1e-9)


def test_pro_equals_reference_small_chunks(monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK", 5)
    masks, maps = random_blobs(3, 16, seed=9, decimals=1)
    assert pro_auc(masks, maps) == pytest.approx(pro_reference(masks, maps), abs=1e-9)


def tire_masks(size: int = 64) -> np.ndarray:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present: real-mask PRO tests skipped")
    from PIL import Image

    root = SHARED_DATA / "mvtec3d_rgb" / "tire" / "ground_truth"
    files = [f for d in ("combined", "contamination", "cut", "hole")
             for f in sorted((root / d).glob("*_mask.png"))[:2]]
    assert len(files) == 8, files
    masks = [np.asarray(Image.open(f).convert("L").resize((size, size), Image.NEAREST)) > 0 for f in files]
    masks += [np.zeros((size, size), dtype=bool)] * 2  # two normal images
    return np.stack(masks)


@pytest.mark.parametrize("decimals", [4, 2])  # 2: many ties; 4: few (and a short brute force)
def test_pro_equals_reference_real_masks(decimals):
    masks = tire_masks()
    n_regions = sum(ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks)
    assert n_regions >= 8
    rng = np.random.default_rng(0)
    maps = np.stack([ndimage.gaussian_filter(m.astype(float), 1.0) for m in masks])
    maps = maps + rng.normal(0, 0.05, maps.shape)
    maps = np.round(maps, decimals).astype(np.float32)
    ref = pro_reference(masks, maps)
    got = pro_auc(masks, maps)
    assert 0.0 < ref < 1.0
    assert got == pytest.approx(ref, abs=1e-9)
    # pixel metrics on the same real masks against scikit-learn
    assert (pixel_auroc(masks, maps), pixel_aupr(masks, maps), pixel_f1_max(masks, maps)) == pytest.approx(
        sk_all(masks.ravel(), maps.ravel()), abs=1e-9)


# --------------------------------------------------------------------------- summarize


def test_summarize_matches_individual_functions():
    masks, maps = random_blobs(6, 20, seed=2, decimals=2)
    labels = masks.any(axis=(1, 2)).astype(int)
    scores = maps.max(axis=(1, 2))
    assert 0 < labels.sum() < len(labels)
    out = summarize(labels, scores, masks, maps)
    assert tuple(out) == KEYS
    expected = {
        "image_auroc": image_auroc(labels, scores), "image_aupr": image_aupr(labels, scores),
        "image_f1_max": image_f1_max(labels, scores), "pixel_auroc": pixel_auroc(masks, maps),
        "pixel_aupr": pixel_aupr(masks, maps), "pixel_f1_max": pixel_f1_max(masks, maps),
        "pro": pro_auc(masks, maps),
    }
    assert all(v is not None for v in expected.values())
    assert out == pytest.approx(expected, abs=1e-12)
    assert out["pro"] == pytest.approx(pro_reference(masks, maps), abs=1e-9)
    # PRO without the precomputed permutation (internal fallback) agrees
    assert metrics._PixelData(masks, maps).pro() == pytest.approx(out["pro"], abs=1e-12)
    assert all(isinstance(v, float) for v in out.values())


@pytest.mark.parametrize("masks, maps", [(None, None), (np.zeros((0, 4, 4), bool), np.zeros((0, 4, 4)))])
def test_summarize_without_pixels(masks, maps):
    out = summarize([0, 1, 1], [0.2, 0.1, 0.9], masks, maps)
    assert tuple(out) == KEYS
    assert out["image_auroc"] == pytest.approx(0.5)
    assert all(out[k] is None for k in KEYS[3:])


def test_summarize_undefined_parts():
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[1, 1:3, 1:3] = True
    maps = masks.astype(np.float32)
    out = summarize([1, 1], [0.3, 0.4], masks, maps)  # one image class: image metrics None
    assert [out[k] for k in KEYS[:3]] == [None, None, None]
    assert out["pixel_auroc"] == pytest.approx(1.0) and out["pro"] == pytest.approx(1.0)
    out = summarize([0, 1], [0.3, 0.4], np.zeros((2, 5, 5), bool), maps)  # no anomalous pixel
    assert out["image_auroc"] == pytest.approx(1.0)
    assert all(out[k] is None for k in KEYS[3:])
