"""The procedural scene generator of the mini-CLIP (tools/mini_clip): determinism,
defects where their masks are, held-out combinations, captions, benchmark layout."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy import ndimage

from tools.mini_clip.captions import DEFECT_WORDS, GENERIC_BAD, caption
from tools.mini_clip.mvtec import write_benchmark
from tools.mini_clip.scenes import MODEL_PX, eval_rng, render, render_variants, sample_scene, train_rng
from tools.mini_clip.vocab import DEFECTS, HELD_OUT, OBJECTS, allowed_defects, readable


def test_render_is_deterministic_and_variants_match_render():
    scene = sample_scene(train_rng(3, 7), training=True, defect=None)
    a, ma = render(scene, 96)
    b, _ = render(scene, 96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8 and not ma.any()
    assert np.array_equal(a, b)
    defect = allowed_defects(scene.kind, True)[0]
    (clean, m0), (bad, m1) = render_variants(scene, [None, defect], 96)
    assert np.array_equal(clean, a) and not m0.any()
    ref, mref = render(scene.with_defect(defect), 96)
    assert np.array_equal(bad, ref) and np.array_equal(m1, mref)


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_defect_changes_the_image_where_its_mask_is(defect):
    for i, kind in enumerate(OBJECTS[:4]):
        scene = sample_scene(eval_rng(11, i), training=False, kind=kind, defect=None, style="")
        (clean, _), (bad, mask) = render_variants(scene, [None, defect], 128)
        assert mask.mean() > 0.001, f"{kind}/{defect}: empty mask"
        diff = np.abs(clean.astype(int) - bad.astype(int)).sum(-1)
        assert diff[mask].mean() > 20, f"{kind}/{defect}: image hardly changed inside the mask"
        # a changed outline also moves the object's drop shadow (offset and blur: 2 px of the 64 px view)
        near = ndimage.binary_dilation(mask, iterations=3 * 128 // MODEL_PX)
        outside = diff[~near]
        assert (outside > 30).mean() < 0.01, f"{kind}/{defect}: image changed outside the mask"


def test_training_never_draws_a_held_out_combination():
    seen = set()
    for i in range(3000):
        s = sample_scene(train_rng(0, i), training=True, p_defect=1.0)
        seen.add((s.kind, s.defect))
    assert not seen & HELD_OUT
    assert len(seen) == len(OBJECTS) * len(DEFECTS) - len(HELD_OUT)  # every other combination occurs
    kind, defect = sorted(HELD_OUT)[0]
    with pytest.raises(ValueError, match="held out"):
        sample_scene(train_rng(0, 0), training=True, kind=kind, defect=defect)
    assert sample_scene(eval_rng(0, 0), training=False, kind=kind, defect=defect).defect == defect


def test_training_and_evaluation_streams_differ():
    train = {sample_scene(train_rng(0, i), training=True).seed for i in range(500)}
    evaluation = {sample_scene(eval_rng(0, i), training=False).seed for i in range(500)}
    assert len(train) == 500 and not train & evaluation


def test_captions_name_the_object_and_only_defective_scenes_name_a_defect():
    bad_words = {w for adj, post in DEFECT_WORDS.values() for w in adj + post} | set(GENERIC_BAD[0] + GENERIC_BAD[1])
    for i in range(400):
        rng = train_rng(1, i)
        s = sample_scene(rng, training=True)
        text = caption(s, rng)
        assert readable(s.kind) in text
        named = any(re.search(rf"\b{re.escape(w)}\b", text) for w in bad_words)
        assert named == (s.defect is not None), text
    texts = {caption(s, train_rng(2, i)) for i, s in enumerate([sample_scene(train_rng(2, 0), training=True)] * 50)}
    assert len(texts) > 20  # many templates


def test_benchmark_layout(tmp_path):
    from alfa_ad.io.datasets import discover, train_images

    m = write_benchmark(tmp_path, classes=("washer", "gear"), n_train=2, n_good=2, n_defect=1, size=96)
    dataset, warnings = discover(tmp_path)
    assert set(dataset) == {"washer", "gear"} and not warnings
    for cls, samples in dataset.items():
        assert len(samples) == 2 + len(DEFECTS)
        assert len(train_images(tmp_path, cls)) == 2
        for s in samples:
            assert (s.label == 0) == (s.defect_type == "good")
            if s.label:
                from PIL import Image

                assert np.asarray(Image.open(s.mask_path)).any()
    assert "washer/bent" in m["held_out_of_training"]
    assert json.loads((tmp_path / "manifest.json").read_text())["classes"]["gear"]["train"] == 2
