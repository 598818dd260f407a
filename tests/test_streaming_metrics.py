"""Constant-memory pixel metrics against the exact ones."""

from __future__ import annotations

import numpy as np
import pytest

from alfa_ad.evaluation.metrics import summarize
from alfa_ad.evaluation.streaming import StreamingPixelMetrics, rounded, value_keys

PIXEL = ("pixel_auroc", "pixel_aupr", "pixel_f1_max", "pro")


def _stack(seed: int, n: int = 6, size: int = 64):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    maps = rng.normal(0.13, 0.01, (n, size, size)).astype(np.float32)
    for i in range(n):
        if i % 3 == 0:
            continue  # some normal images
        for _ in range(rng.integers(1, 3)):
            t, l = rng.integers(0, size - 12, 2)
            h, w = rng.integers(3, 12, 2)
            masks[i, t:t + h, l:l + w] = True
            maps[i, t:t + h, l:l + w] += rng.uniform(0.0, 0.03)
    return masks, np.clip(maps, 0, 1)


def test_value_keys_preserve_order_and_clip():
    v = np.array([-2.0, -0.0, 0.0, 1e-8, 0.13, 0.130001, 0.5, 1.0, 60000.0], dtype=np.float32)
    keys = value_keys(v)
    assert (np.diff(keys) >= 0).all() and keys[0] == 0 and keys[-1] == (1 << 20) - 1
    assert keys[5] > keys[4]  # 1e-6 apart: distinct bins


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_equals_exact_metrics_of_rounded_maps_and_is_close_to_float32(seed):
    masks, maps = _stack(seed)
    acc = StreamingPixelMetrics()
    for m, a in zip(masks, maps):
        acc.add(m, a)
    got = acc.metrics()
    exact16 = summarize(None, None, masks, rounded(maps))
    exact32 = summarize(None, None, masks, maps)
    for k in PIXEL:
        assert got[k] == pytest.approx(exact16[k], abs=1e-9), k
        assert abs(got[k] - exact32[k]) <= 1e-3, (k, got[k], exact32[k])


def test_streaming_merge_state_and_undefined_cases():
    masks, maps = _stack(5)
    a, b = StreamingPixelMetrics(), StreamingPixelMetrics()
    for i, (m, x) in enumerate(zip(masks, maps)):
        (a if i < 3 else b).add(m, x)
    whole = StreamingPixelMetrics()
    for m, x in zip(masks, maps):
        whole.add(m, x)
    a.merge(StreamingPixelMetrics.from_state(b.state()))
    assert a.metrics() == whole.metrics()
    only_normal = StreamingPixelMetrics()
    only_normal.add(np.zeros((4, 4), bool), np.zeros((4, 4)))
    assert only_normal.metrics() == dict.fromkeys(PIXEL)
    const = StreamingPixelMetrics()
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    const.add(mask, np.full((8, 8), 0.3))
    m = const.metrics()
    assert m["pixel_auroc"] == 0.5 and m["pro"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="NaN"):
        const.add(mask, np.full((8, 8), np.nan))
