"""Texture classes of the mini-CLIP scene generator (tools/mini_clip/surfaces.py): the material
fills the frame, defects change it where their masks are, held-out texture combinations never
occur in training, captions name the texture and the condition, and the MVTec-layout writer
includes texture classes (one look per class, a different piece of material per image)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tools.mini_clip.captions import DEFECT_WORDS, GENERIC_BAD, caption
from tools.mini_clip.mvtec import write_benchmark
from tools.mini_clip.scenes import render, render_variants, sample_texture_scene, texture_eval_rng, texture_train_rng
from tools.mini_clip.vocab import TEXTURE_DEFECTS, TEXTURE_HELD_OUT, TEXTURE_WORDS, TEXTURES, allowed_defects


@pytest.mark.parametrize("kind", TEXTURES)
def test_each_texture_fills_the_frame_and_is_deterministic(kind):
    scene = sample_texture_scene(texture_eval_rng(4, 0), training=False, kind=kind, defect=None, style="")
    a, mask = render(scene, 120)
    b, _ = render(scene, 120)
    assert a.shape == (120, 120, 3) and np.array_equal(a, b) and not mask.any()
    assert a.reshape(-1, 3).std(0).mean() > 4, f"{kind}: a flat image"
    quarters = [a[:60, :60], a[:60, 60:], a[60:, :60], a[60:, 60:]]  # no empty background anywhere
    means = [q.reshape(-1, 3).mean(0) for q in quarters]
    assert max(np.abs(m - means[0]).max() for m in means) < 40, f"{kind}: quarters differ like object and background"


@pytest.mark.parametrize("defect", TEXTURE_DEFECTS)
def test_each_texture_defect_changes_the_image_where_its_mask_is(defect):
    for i, kind in enumerate(TEXTURES):
        scene = sample_texture_scene(texture_eval_rng(11, i), training=False, kind=kind, defect=None, style="")
        (clean, m0), (bad, mask) = render_variants(scene, [None, defect], 128)
        assert not m0.any() and mask.mean() > 0.001, f"{kind}/{defect}: empty mask"
        diff = np.abs(clean.astype(int) - bad.astype(int)).sum(-1)
        assert diff[mask].mean() > 15, f"{kind}/{defect}: image hardly changed inside the mask"
        outside = diff[~_dilate(mask, 3 * 128 // 64)]
        assert (outside > 30).mean() < 0.01, f"{kind}/{defect}: image changed outside the mask"


def _dilate(mask, n):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=n)


def test_training_never_draws_a_held_out_texture_combination():
    seen = {(s.kind, s.defect) for s in (sample_texture_scene(texture_train_rng(0, i), training=True, p_defect=1.0)
                                         for i in range(1500))}
    assert not seen & TEXTURE_HELD_OUT
    assert len(seen) == len(TEXTURES) * len(TEXTURE_DEFECTS) - len(TEXTURE_HELD_OUT)
    kind, defect = sorted(TEXTURE_HELD_OUT)[0]
    assert defect not in allowed_defects(kind, True) and defect in allowed_defects(kind, False)
    with pytest.raises(ValueError, match="held out of training"):
        sample_texture_scene(texture_train_rng(0, 0), training=True, kind=kind, defect=defect)
    with pytest.raises(ValueError, match="unknown texture 'gear'"):
        sample_texture_scene(texture_train_rng(0, 0), training=True, kind="gear")


def test_texture_captions_name_the_texture_and_only_defective_ones_a_defect():
    bad_words = {w for adj, post in DEFECT_WORDS.values() for w in adj + post} | set(GENERIC_BAD[0] + GENERIC_BAD[1])
    for i in range(400):
        rng = texture_train_rng(1, i)
        s = sample_texture_scene(rng, training=True)
        text = caption(s, rng)
        assert any(w in text for w in TEXTURE_WORDS[s.kind]), text
        named = any(re.search(rf"\b{re.escape(w)}\b", text) for w in bad_words)
        assert named == (s.defect is not None), text


def test_benchmark_with_texture_classes(tmp_path):
    from PIL import Image

    from alfa_ad.io.datasets import discover

    m = write_benchmark(tmp_path, classes=("gear", "carpet"), n_train=2, n_good=2, n_defect=1, size=96)
    dataset, warnings = discover(tmp_path)
    assert set(dataset) == {"gear", "carpet"} and not warnings
    assert len(dataset["carpet"]) == 2 + len(TEXTURE_DEFECTS)
    assert "carpet/stain" in m["held_out_of_training"] and "gear/hole" in m["held_out_of_training"]
    assert m["classes"]["carpet"]["texture"] is True
    good = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "carpet" / "train" / "good").glob("*.png"))]
    assert not np.array_equal(good[0], good[1])  # other pieces of the material ...
    assert np.abs(good[0].reshape(-1, 3).mean(0) - good[1].reshape(-1, 3).mean(0)).max() < 25  # ... of one look
    with pytest.raises(ValueError, match="unknown class banana"):
        write_benchmark(tmp_path / "x", classes=("banana",))
