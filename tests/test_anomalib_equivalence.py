"""WinCLIP side by side with anomalib's ``WinClipModel`` on identical weights and input.

anomalib is a benchmark-only dependency (see benchmarks/agreement/compare_anomalib.py); these
tests are skipped when it cannot be imported.  anomalib hardcodes the backbone
name "ViT-B-16-plus-240"; as in the benchmark, ``open_clip.create_model_and_transforms``
is replaced while the model is built, here by a *small* randomly initialised
open_clip CLIP (240 px input, 16 px patches: the same 15x15 grid) so that the
comparison runs in seconds on a CPU.  One 240x240 image.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from alfa_ad import Detector
from alfa_ad.model.backbone import ClipBackbone
from alfa_ad.model.weights import WeightsInfo
from alfa_ad.prompting import WinClipEnsembleSource
from alfa_ad.prompting.templates import WINCLIP_TEMPLATES_ANOMALIB

from conftest import grey_texture, spot_image

pytestmark = [pytest.mark.anomalib, pytest.mark.slow]

CLASS = "widget"
TOL = 1e-4


def _tiny_clip():
    from open_clip.model import CLIP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = CLIP(
            embed_dim=32,
            vision_cfg={"image_size": 240, "layers": 3, "width": 64, "patch_size": 16, "head_width": 16},
            text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        )
    return clip.eval()


@pytest.fixture(scope="module")
def anomalib_winclip():
    pytest.importorskip("anomalib", reason="anomalib is not installed (benchmark-only dependency)")
    from anomalib.models.image.winclip.torch_model import WinClipModel

    return WinClipModel


@pytest.fixture(scope="module")
def setup(anomalib_winclip):
    """Our backbone on a small random CLIP; anomalib's model on the same state dict,
    zero-shot and 1-shot; one test image and one reference, preprocessed once."""
    import open_clip

    clip = _tiny_clip()
    state = copy.deepcopy(clip.state_dict())
    backbone = ClipBackbone(clip, open_clip.get_tokenizer("ViT-B-16"), WeightsInfo("tiny-vit", "custom", "seed 0"),
                            device="cpu")
    img, _ = spot_image(240, 240, (30, 150, 80, 220), seed=1)
    pixels = backbone.preprocess([Image.fromarray(img)])
    reference = backbone.preprocess([Image.fromarray(grey_texture(240, 240, seed=5))])

    asked = []
    original = open_clip.create_model_and_transforms

    def same_weights(name, pretrained=None, **kwargs):
        asked.append(name)
        model = _tiny_clip()
        model.load_state_dict(state)
        return model.eval(), None, None

    open_clip.create_model_and_transforms = same_weights
    try:
        zero = anomalib_winclip(class_name=CLASS, scales=(2, 3)).eval()
        one = anomalib_winclip(class_name=CLASS, reference_images=reference, scales=(2, 3)).eval()
    finally:
        open_clip.create_model_and_transforms = original
    assert asked == ["ViT-B-16-plus-240"] * 2  # the name anomalib hardcodes; our small model served it
    with torch.no_grad():
        theirs = {0: zero(pixels), 1: one(pixels)}
    return backbone, pixels, reference, theirs


def _ours(backbone, pixels, reference, compat: bool):
    det = Detector(backbone, method="winclip", sources=[WinClipEnsembleSource(WINCLIP_TEMPLATES_ANOMALIB)],
                   cache_dir=None, anomalib_compat=compat)
    text = det.class_text(CLASS)
    if reference is not None:
        det.method.fit_normals([reference])
    return det.method(pixels, text)


def _diffs(theirs, ours) -> tuple[float, float]:
    d_score = (theirs.pred_score.float().cpu() - ours.scores).abs().max().item()
    d_map = (theirs.anomaly_map.float().cpu() - ours.maps).abs().max().item()
    return d_score, d_map


@pytest.mark.parametrize("shots", [0, 1])
def test_anomalib_compat_reproduces_anomalib(setup, shots):
    backbone, pixels, reference, theirs = setup
    ours = _ours(backbone, pixels, reference if shots else None, compat=True)
    assert ours.maps.shape == theirs[shots].anomaly_map.shape == (1, 240, 240)
    d_score, d_map = _diffs(theirs[shots], ours)
    assert d_score <= TOL, d_score
    assert d_map <= TOL, d_map
    assert 0 < float(ours.scores[0]) < 1
    if shots:  # the 1-shot map is not flat: a real comparison of every pixel
        assert float(theirs[shots].anomaly_map.std()) > 1e-3


def test_default_mode_differs_from_anomalib_maps(setup):
    """anomalib permutes the masked batch to sequence-first before open_clip's batch-first
    transformer, so attention runs across windows: with one image every window's class
    token sees the same tokens and its zero-shot map is flat.  Our default mode attends
    within each window; the class-token (global) score does not involve windows and agrees."""
    backbone, pixels, _, theirs = setup
    ours = _ours(backbone, pixels, None, compat=False)
    _, d_map = _diffs(theirs[0], ours)
    assert d_map > 1e-3, d_map
    assert float(theirs[0].anomaly_map.std()) < 1e-6  # anomalib's flat zero-shot map
    assert float(ours.maps.std()) > 1e-4  # ours varies over the image
    assert abs(float(ours.global_scores[0]) - float(theirs[0].pred_score[0])) <= TOL
    assert abs(float(ours.scores[0]) - float(theirs[0].pred_score[0])) <= TOL  # zero-shot score = global score
    one = _ours(backbone, pixels, setup[2], compat=False)
    assert abs(float(one.global_scores[0]) - float(theirs[0].pred_score[0])) <= TOL
    assert _diffs(theirs[1], one)[1] > 1e-3
    assert np.isfinite(ours.maps.numpy()).all()
