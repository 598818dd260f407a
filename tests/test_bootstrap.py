"""Paired bootstrap of metric differences (alfa_ad/evaluation/bootstrap.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from alfa_ad.evaluation.bootstrap import GroupStats, paired_differences, stratified_weights, weighted_auroc
from alfa_ad.evaluation.metrics import pixel_auroc, pro_auc


def _group(seed: int, strength: float, n: int = 16, n_bins: int = 1024):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * (n // 2) + [1] * (n // 2))
    masks, maps = [], []
    for i in range(n):
        m = np.zeros((24, 24), dtype=bool)
        if labels[i]:
            m[3:9, 4:11] = True
            m[15:20, 14:22] = True
        noise = np.random.default_rng([7, i]).normal(0.4, 0.1, m.shape)  # the images' own noise: shared
        maps.append(np.clip(noise + strength * m * rng.random(), 0, 1))
        masks.append(m)
    scores = np.array([mp.max() for mp in maps])
    keys = [f"img{i:02d}" for i in range(n)]
    return GroupStats.build(keys, labels, scores, masks, maps, n_bins), labels, scores, masks, maps


def test_unit_weights_equal_the_exact_metrics():
    g, labels, scores, masks, maps = _group(0, 0.3, n_bins=200_000)
    got = g.metrics(np.ones((1, len(labels))))
    assert got["image_auroc"][0] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["pixel_auroc"][0] == pytest.approx(pixel_auroc(np.stack(masks), np.stack(maps)), abs=1e-6)
    assert got["pro"][0] == pytest.approx(pro_auc(np.stack(masks), np.stack(maps)), abs=1e-5)
    coarse = _group(0, 0.3, n_bins=1024)[0].metrics(np.ones((1, len(labels))))  # the default binning
    assert abs(coarse["pixel_auroc"][0] - got["pixel_auroc"][0]) < 1e-3
    assert abs(coarse["pro"][0] - got["pro"][0]) < 2e-3


def test_weights_are_multiplicities():
    """A weight of 2 counts an image twice: the same as repeating it."""
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.5, 0.7, 0.2])
    w = np.array([[2.0, 1, 1, 0, 3]])
    rep = np.repeat(np.arange(5), w[0].astype(int))
    assert weighted_auroc(labels, scores, w)[0] == pytest.approx(roc_auc_score(labels[rep], scores[rep]))
    ws = stratified_weights(labels, 50, np.random.default_rng(0))
    assert (ws[:, labels == 0].sum(1) == 2).all() and (ws[:, labels == 1].sum(1) == 3).all()


def test_paired_intervals():
    weak, strong = _group(1, 0.15)[0], _group(1, 0.5)[0]
    same = paired_differences({"c": weak}, {"c": weak}, 200)
    assert all(d.value == d.low == d.high == 0 for d in same.values())
    better = paired_differences({"c": strong}, {"c": weak}, 300)
    assert better["pixel_auroc"].above_zero() and better["pro"].above_zero()
    assert better["pixel_auroc"].low <= better["pixel_auroc"].value <= better["pixel_auroc"].high
    worse = paired_differences({"c": weak}, {"c": strong}, 300)
    assert worse["pro"].high < 0
    # pairing is by image: the same stats in another order give the same answer
    order = list(reversed(weak.keys))
    assert paired_differences({"c": strong}, {"c": weak.align(order)}, 300)["pro"].value == \
        pytest.approx(better["pro"].value)
    other = GroupStats(tuple(k + "x" for k in weak.keys), *(getattr(weak, f) for f in
                       ("labels", "scores", "pos", "neg", "region_weight", "regions", "has_mask")))
    with pytest.raises(ValueError, match="not scored by both configurations"):
        paired_differences({"c": strong}, {"c": other}, 10)
