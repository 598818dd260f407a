"""The few-shot scorer registry (bank | residual), the InCTRL-style residual
scorer, fusion on comparable scales, and leave-one-out calibration without model runs.

Planted-model tests: patch redness is the anomaly cue, so red spots on grey textures
must be found where they are.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from alfa_ad import Detector
from alfa_ad.cli import app
from alfa_ad.config import DetectorConfig
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.methods.alfa import AlfaMethod
from alfa_ad.methods.alfa_head import AlfaHead
from alfa_ad.scoring.fewshot import default_memory_layers, default_residual_layers
from alfa_ad.scoring.fusion import Stat, fuse, reference_stats
from alfa_ad.registry import trait
from alfa_ad.registry import FEW_SHOT_SCORERS, METHODS
from PIL import Image

from conftest import grey_texture, spot_image

SPOTS = [(200, 320, (30, 220, 70, 290)), (240, 240, (140, 20, 185, 60)), (300, 180, (20, 110, 80, 170))]


@pytest.fixture(scope="module")
def spots():
    images, masks = [], []
    for i, (h, w, box) in enumerate(SPOTS):
        img, mask = spot_image(h, w, box, seed=i)
        images.append(img)
        masks.append(mask)
    images.append(grey_texture(240, 240, seed=30))
    masks.append(np.zeros((240, 240), dtype=bool))
    return images, masks


def _clean(n: int, seed: int = 100, size=(240, 240)) -> list[np.ndarray]:
    return [grey_texture(*size, seed=seed + k) for k in range(n)]


def _pixel_auroc(det: Detector, images, masks) -> float:
    results = det.predict(images, "widget")
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([r.anomaly_map.ravel() for r in results])
    return roc_auc_score(y, s)


# ------------------------------------------------------------------ registry and config
def test_default_layers():
    assert default_residual_layers(12) == (6, 8, 10)  # InCTRL's blocks 7, 9, 11 (1-based)
    assert default_residual_layers(24) == (13, 17, 21)
    assert default_residual_layers(3) == (1, 2)
    assert default_memory_layers(12) == (5, 8)


def test_scorer_is_recorded_and_rebuilt(planted_backbone):
    det = Detector(planted_backbone, cache_dir=None, few_shot_scorer="residual", fusion="raw")
    assert det.method.scorer.name == "residual" and det.method.memory_layers == (1, 2)
    record = json.loads(json.dumps(det.config.as_dict()))
    assert record["few_shot_scorer"] == "residual" and record["fusion"] == "raw"
    again = Detector.from_config(record, backbone=planted_backbone, cache_dir=None)
    assert again.method.scorer.name == "residual" and again.method.fusion == "raw"
    win = Detector(planted_backbone, method="winclip", cache_dir=None, few_shot_scorer="residual")
    assert win.method.scorer.name == "residual"
    with pytest.raises(ValueError, match="choose from bank, residual"):
        DetectorConfig(few_shot_scorer="incontext")
    with pytest.raises(ValueError, match="fusion"):
        DetectorConfig(fusion="max")


# ------------------------------------------------------------------ residual scorer localizes
@pytest.mark.parametrize("method", [m for m in METHODS.names() if not trait(METHODS.get(m), "zero_shot_only")])
def test_residual_scorer_alone_localizes_a_planted_cue(planted_backbone, spots, method):
    opts = {"use_text": False} if method == "alfa" else {}
    det = Detector(planted_backbone, method=method, cache_dir=None, few_shot_scorer="residual", **opts)
    det.fit_normals(_clean(3))
    auroc = _pixel_auroc(det, *spots)
    assert auroc >= 0.95, auroc
    results = det.predict(spots[0], "widget")
    labels = [int(m.any()) for m in spots[1]]
    assert roc_auc_score(labels, [r.score for r in results]) == 1.0
    for r, m in zip(results, spots[1]):
        if m.any():
            assert m[np.unravel_index(int(r.anomaly_map.argmax()), r.anomaly_map.shape)], "peak outside the spot"


def test_residual_scorer_with_text_and_normalized_fusion_localizes(planted_backbone, spots):
    det = Detector(planted_backbone, cache_dir=None, few_shot_scorer="residual", fusion="normalized")
    det.fit_normals(_clean(3))
    assert det.fusion_statistics("widget") is not None
    assert _pixel_auroc(det, *spots) >= 0.95
    one = Detector(planted_backbone, cache_dir=None, few_shot_scorer="residual", fusion="normalized")
    one.fit_normals(_clean(1))  # one reference: no leave-one-out statistics, raw fusion
    assert one.fusion_statistics("widget") is None
    assert _pixel_auroc(one, *spots) >= 0.95


def test_residual_features_are_after_ln_post(planted_backbone):
    """The residual scorer compares ln_post-normalized tokens: a token rescaled or shifted
    by a constant along the width gives the same features (the bank's raw tokens do not)."""
    det = Detector(planted_backbone, cache_dir=None, few_shot_scorer="residual")
    x = torch.randn(1, 5, planted_backbone.clip.visual.ln_post.normalized_shape[0])
    scorer = det.method.scorer
    a = scorer.tokens([x], x)[0]
    b = scorer.tokens([3 * x + 0.5], 3 * x + 0.5)[0]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ fusion on comparable scales
def _parts(rng, n_img=40, p=64, scale_b=1000.0, informative_b=True):
    """Two noisy views of the same planted spots: part a in [0, 1]-ish, part b scaled by ``scale_b``."""
    truth = np.zeros((n_img, p), dtype=bool)
    for i in range(n_img // 2):
        truth[i, rng.integers(0, p - 4) + np.arange(4)] = True
    a = 0.2 + 0.05 * truth + 0.03 * rng.normal(size=truth.shape)
    b = scale_b * ((0.05 * truth if informative_b else 0) + 0.03 * rng.normal(size=truth.shape))
    return truth, torch.tensor(a), torch.tensor(b)


def _fused_auroc(truth, a, b, stats):
    z, _, normalized = fuse(a, None, b, None, stats)
    return roc_auc_score(truth.ravel(), z.numpy().ravel()), normalized


def _stats(rng, scale_b):
    """Statistics from 8 'normal references' drawn like the normal patches of _parts."""
    refs_a = torch.tensor(0.2 + 0.03 * rng.normal(size=(8, 64)))
    refs_b = torch.tensor(scale_b * 0.03 * rng.normal(size=(8, 64)))
    return reference_stats(refs_b, None, refs_a, None, list(range(8)))


@pytest.mark.parametrize("scale_b", [1000.0, 0.001])
def test_normalized_fusion_beats_both_parts_when_one_is_rescaled(scale_b):
    rng = np.random.default_rng(0)
    truth, a, b = _parts(rng, scale_b=scale_b)
    stats = _stats(rng, scale_b)
    auc_a = roc_auc_score(truth.ravel(), a.numpy().ravel())
    auc_b = roc_auc_score(truth.ravel(), b.numpy().ravel())
    normalized, flag = _fused_auroc(truth, a, b, stats)
    raw, _ = _fused_auroc(truth, a, b, None)
    assert flag
    assert normalized > max(auc_a, auc_b) + 0.01, (normalized, auc_a, auc_b)
    # the broken variant: raw fusion follows the part with the larger range, gains nothing
    assert raw < max(auc_a, auc_b) + 0.002, (raw, auc_a, auc_b)


def test_normalized_fusion_survives_a_part_of_scaled_noise():
    rng = np.random.default_rng(1)
    truth, a, b = _parts(rng, scale_b=50.0, informative_b=False)
    stats = _stats(rng, 50.0)
    auc_a = roc_auc_score(truth.ravel(), a.numpy().ravel())
    normalized, _ = _fused_auroc(truth, a, b, stats)
    raw, _ = _fused_auroc(truth, a, b, None)
    assert auc_a > 0.75
    assert normalized > 0.5 + 0.6 * (auc_a - 0.5), (normalized, auc_a)  # keeps most of the signal
    assert raw < 0.55, raw  # raw fusion drowns it in the noise's range


def test_normalized_fusion_is_the_mean_z_score_up_to_a_positive_affine_map():
    rng = np.random.default_rng(2)
    _, a, b = _parts(rng, scale_b=30.0)
    stats = _stats(rng, 30.0)
    g = torch.tensor(rng.uniform(0.3, 0.7, size=a.shape[0]))
    st = reference_stats(stats_v := torch.tensor(30 * 0.03 * rng.normal(size=(8, 64))), None,
                         torch.tensor(0.2 + 0.03 * rng.normal(size=(8, 64))), torch.tensor(rng.uniform(0.4, 0.6, 8)),
                         list(range(8)))
    assert stats_v.shape == (8, 64)
    m, s, normalized = fuse(a, g, b, None, st)
    z = 0.5 * (st.language.z(a) + st.visual.z(b))
    slope, icept = np.polyfit(z.numpy().ravel(), m.numpy().ravel(), 1)
    assert slope > 0 and np.abs(slope * z.numpy() + icept - m.numpy()).max() < 1e-9
    zs = 0.5 * (st.global_.z(g) + st.peak.z(m.amax(-1)))
    slope, icept = np.polyfit(zs.numpy(), s.numpy(), 1)
    assert slope > 0 and np.abs(slope * zs.numpy() + icept - s.numpy()).max() < 1e-9
    assert normalized and stats is not None
    st = Stat.of(torch.tensor([1.0, 1.0, 1.0]))
    assert st.std > 0  # floored: a part constant on the references does not divide by zero


def test_planted_noise_language_part_normalized_vs_raw(planted_backbone, spots, monkeypatch):
    """Planted model, the language map replaced by noise of a 100x larger range: normalized
    fusion keeps the visual part's localization, raw fusion loses it."""
    gen = torch.Generator().manual_seed(0)

    def noisy_language(self, g, locals_, classes, projection=None, global_scores=None):
        return 100.0 * torch.rand(g.shape[0], *self.grid, generator=gen)

    monkeypatch.setattr(AlfaHead, "language_map", noisy_language)
    visual = Detector(planted_backbone, cache_dir=None, use_text=False)
    visual.fit_normals(_clean(4))
    auc_visual = _pixel_auroc(visual, *spots)
    out = {}
    for fusion in ("normalized", "raw"):
        det = Detector(planted_backbone, cache_dir=None, fusion=fusion)
        det.fit_normals(_clean(4))
        out[fusion] = _pixel_auroc(det, *spots)
    assert auc_visual >= 0.95
    assert out["normalized"] >= 0.9, out
    assert out["raw"] < 0.75, out


# ------------------------------------------------------------------ fast leave-one-out calibration
@pytest.mark.parametrize("scorer", FEW_SHOT_SCORERS.names())
def test_leave_one_out_equals_refitting_without_each_reference(planted_backbone, scorer):
    """Raw fusion, no coreset: the fast leave-one-out scores equal scoring each reference
    with a detector fitted on the others (references at model size: no resizing)."""
    refs = [grey_texture(240, 240, seed=500 + i) for i in range(4)]
    refs[2][100:130, 60:90, 0] = 200  # one reference with a red patch: its LOO score stands out
    det = Detector(planted_backbone, cache_dir=None, few_shot_scorer=scorer, fusion="raw")
    det.fit_normals(refs)
    scores, maxima = det._leave_one_out("widget", 16)
    order = list(det._loo.chosen)
    for k, i in enumerate(order):
        slow = Detector(planted_backbone, cache_dir=None, few_shot_scorer=scorer, fusion="raw")
        slow.fit_normals([r for j, r in enumerate(refs) if j != i])
        r = slow(refs[i], "widget")
        assert scores[k] == pytest.approx(r.score, abs=1e-5)
        assert maxima[k] == pytest.approx(float(r.anomaly_map.max()), abs=1e-4)
    assert scores[order.index(2)] == max(scores)


def test_calibration_runs_no_model_per_reference(planted_backbone, monkeypatch):
    """Fitting keeps the leave-one-out references' zero-shot features (from the fit's own
    forward pass); calibration scores them against each class's prompts and runs no model."""
    det = Detector(planted_backbone, cache_dir=None, few_shot_scorer="residual")
    det.fit_normals(_clean(5, seed=700))
    calls = {"call": 0, "encode": 0}
    call = AlfaMethod.__call__
    import alfa_ad.methods.alfa as alfa_module

    encode = alfa_module.encode

    def counting_encode(*a, **k):
        calls["encode"] += 1
        return encode(*a, **k)

    def counting_call(self, *a, **k):
        calls["call"] += 1
        return call(self, *a, **k)

    monkeypatch.setattr(AlfaMethod, "__call__", counting_call)
    monkeypatch.setattr(alfa_module, "encode", counting_encode)
    monkeypatch.setattr(planted_backbone, "tokens", lambda *a: pytest.fail("the model ran during calibration"))
    th = det.calibrate(class_name="widget")
    assert th.n_images == 5 and 0 < th.image < 1 and 0 < th.pixel <= 1
    det.calibrate(class_name="gadget", fpr=0.2)  # another class: its prompts, the same kept features
    assert calls == {"call": 0, "encode": 0}
    monkeypatch.undo()
    # nothing but the coreset, leave-one-out results and <= 16 references' zero-shot features is kept
    assert not hasattr(det, "_normal_features") and not hasattr(det, "_loo_images")
    assert len(det._loo.chosen) == 5 and det._loo.features.count == 5
    assert all(not isinstance(v, Image.Image) for v in vars(det).values())
    many = Detector(planted_backbone, cache_dir=None)
    many.fit_normals(_clean(20, seed=800, size=(64, 64)), coreset=100)
    assert len(many._loo.chosen) == 16 and many.method.bank_size <= 2 * 100
    assert many.calibrate(class_name="widget").n_images == 16
    none_kept = Detector(planted_backbone, cache_dir=None)
    none_kept.fit_normals(_clean(3, seed=800), max_leave_one_out=0)
    assert none_kept._loo.features is None
    with pytest.raises(ValueError, match="max_leave_one_out"):
        none_kept.calibrate(class_name="widget")


# ------------------------------------------------------------------ command line
def test_cli_residual_scorer_run(tmp_path, planted_backbone):
    root = make_synthetic_dataset(tmp_path / "data", n_good=2, n_defect=2, seed=0)
    train = root / "widget" / "train" / "good"
    train.mkdir(parents=True)
    for i, img in enumerate(_clean(3, seed=900)):
        from PIL import Image

        Image.fromarray(img).save(train / f"t{i}.png")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["run", "--data", str(root), "--out", str(out), "--weights", "planted", "--no-llm",
                                   "--no-overlays", "--shots", "2", "--few-shot-scorer", "residual"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    record = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else None
    metrics = json.loads((out / "metrics.json").read_text())
    text = json.dumps(metrics) + json.dumps(record)
    assert "residual" in text
    bad = CliRunner().invoke(app, ["run", "--data", str(root), "--out", str(tmp_path / "o2"), "--weights", "planted",
                                   "--shots", "2", "--few-shot-scorer", "nope"])
    assert bad.exit_code == 2 and "--few-shot-scorer" in bad.output
