"""Heat maps on one colour scale per class: ClassOverlayWriter, PixelStats, the colour bar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alfa_ad.evaluation.metrics import pixel_auroc, pro_auc
from alfa_ad.io.overlay import THRESHOLD_COLOUR, render_overlay
from alfa_ad.report import ClassOverlayWriter, PixelStats
from alfa_ad.report.scale import BIN_WIDTH, HIGH_QUANTILE, LOW_QUANTILE, eval_resize, pixel_curves

W, H = 120, 160


def _grey(path: Path) -> Path:
    Image.new("RGB", (W, H), (128, 128, 128)).save(path)
    return path


def _maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A calm map (normal image) and a hot one (defective image); both hold 0.5 at [60:90, 20:40] (below the banner)."""
    calm = np.full((H, W), 0.30, np.float32)
    calm[60:90, 20:40] = 0.5
    hot = np.full((H, W), 0.35, np.float32)
    hot[60:90, 20:40] = 0.5
    hot[110:140, 70:110] = 0.9
    mask = np.zeros((H, W), bool)
    mask[110:140, 70:110] = True
    return calm, hot, mask


def _write(tmp_path: Path, scale: str, thresholds=None, decisions=(None, None)
           ) -> tuple[np.ndarray, np.ndarray, ClassOverlayWriter]:
    calm, hot, mask = _maps()
    w = ClassOverlayWriter(tmp_path, "part", scale=scale, thresholds=thresholds, alpha=1.0)
    w.add("part/good/a", _grey(tmp_path / "a.png"), calm, np.zeros_like(mask), score=0.3, decision=decisions[0])
    w.add("part/defect/b", _grey(tmp_path / "b.png"), hot, mask, score=0.9, decision=decisions[1])
    if scale == "class":  # maps wait on disk, not in memory, until the class is finished
        spills = list(tmp_path.glob(".spill-*"))
        assert len(spills) == 1 and len(list(spills[0].glob("*.npz"))) == 2
        assert not (tmp_path / "overlays").exists()
    w.finish()
    assert not list(tmp_path.glob(".spill-*")), "spill not deleted"
    a = np.asarray(Image.open(tmp_path / "overlays" / "part" / "good" / "a.png").convert("RGB"))
    b = np.asarray(Image.open(tmp_path / "overlays" / "part" / "defect" / "b.png").convert("RGB"))
    return a, b, w


def test_normal_and_defective_overlays_share_one_scale(tmp_path):
    a, b, _ = _write(tmp_path, "class")
    assert a.shape == b.shape and a.shape[1] > 2 * W  # image | overlay | colour bar
    # equal map values (0.5 in both) get the same colour in both overlays
    assert (a[75, W + 30] == b[75, W + 30]).all()
    # the calm background (0.30) is cooler than the defective image's background (0.35): not stretched
    assert not (a[H - 5, W + 10] == b[H - 5, W + 10]).all()
    # identical colour bars (values and labels) below the banner
    assert (a[H // 2 :, 2 * W :] == b[H // 2 :, 2 * W :]).all()
    stats = json.loads((tmp_path / "class_stats" / "part.json").read_text())
    assert stats["scale"]["rule"] == "quantiles" and stats["n_images"] == 2 and stats["n_regions"] == 1
    assert (tmp_path / "class_stats" / "part.npz").is_file()


def test_image_scale_stretches_each_map(tmp_path):
    a, b, _ = _write(tmp_path, "image")
    assert not (a[75, W + 30] == b[75, W + 30]).all()  # the same 0.5 is red in one, green in the other
    assert not (a[H // 2 :, 2 * W :] == b[H // 2 :, 2 * W :]).all()  # different colour bars


def test_threshold_sits_mid_scale_and_flagged_defects_are_outlined(tmp_path):
    """The outline is the defect mask of a flagged image (scoring/masks.py: each region
    above the threshold cut at half height); an image judged normal gets none, even
    where its map crosses the pixel threshold."""
    a, b, _ = _write(tmp_path, "class", thresholds={"image": 0.6, "pixel": 0.45, "fpr": 0.01},
                     decisions=(False, True))
    scale = json.loads((tmp_path / "class_stats" / "part.json").read_text())["scale"]
    assert scale["rule"] == "threshold" and scale["threshold"] == 0.45
    assert scale["vmin"] < 0.45 < scale["vmax"]
    assert scale["vmin"] + scale["vmax"] == pytest.approx(0.9)
    assert not (a[:, W : 2 * W] == THRESHOLD_COLOUR).all(axis=2).any()  # normal decision: no outline
    magenta = (b[:, W : 2 * W] == THRESHOLD_COLOUR).all(axis=2)
    # the weaker 0.5 region is cut at its own half height (0.45 + 0.5 * 0.05 < 0.5), so it is
    # outlined; the strong defect's outline lies on its ground truth, drawn over it in white;
    # the 0.35 background is not outlined
    assert magenta[60:90, 20:40].any() and not magenta[H - 5 :, :].any()
    assert (b[110, W + 70 : W + 110] == 255).all()
    assert (a[:, 2 * W :] == THRESHOLD_COLOUR).all(axis=2).any()  # threshold marked on the colour bar


def test_ground_truth_outlined_on_defective_overlay(tmp_path):
    a, b, _ = _write(tmp_path, "class")
    white = (b[:, W : 2 * W] == 255).all(axis=2)
    assert white[110, 70:110].all() and not white[115:135, 75:105].any()
    assert not (a[:, W : 2 * W] == 255).all(axis=2)[H // 3 :].any()


def test_pixel_stats_quantiles_and_curves_match_exact_metrics(tmp_path):
    rng = np.random.default_rng(0)
    stats, maps, masks = PixelStats(), [], []
    for i in range(6):
        mask = np.zeros((96, 128), bool)
        if i % 2:
            mask[20 + 5 * i : 50 + 5 * i, 30:70] = True
            mask[70:90, 100:120] = True
        amap = np.clip(0.4 + 0.08 * rng.standard_normal((96, 128)) + 0.15 * mask, 0, 1).astype(np.float32)
        stats.add(amap, mask)
        maps.append(eval_resize(amap))
        masks.append(eval_resize(mask.astype(np.float32)) >= 0.5)
    values = np.concatenate([m.ravel() for m in maps])
    assert abs(stats.quantile(LOW_QUANTILE) - np.quantile(values, LOW_QUANTILE, method="inverted_cdf")) <= 2 * BIN_WIDTH
    assert abs(stats.quantile(HIGH_QUANTILE) - np.quantile(values, HIGH_QUANTILE, method="inverted_cdf")) <= 2 * BIN_WIDTH
    stats.save(tmp_path / "s.npz")
    curves = pixel_curves(tmp_path / "s.npz")
    auc = np.trapezoid(curves["tpr"], curves["fpr"])
    assert auc == pytest.approx(pixel_auroc(np.stack(masks), np.stack(maps)), abs=1e-3)
    keep = curves["fpr"] <= 0.3
    fpr, pro = curves["fpr"][keep], curves["pro"][keep]
    area = (np.trapezoid(pro, fpr) + (0.3 - fpr[-1]) * pro[-1]) / 0.3  # up to the limit (bins are fine)
    assert area == pytest.approx(pro_auc(np.stack(masks), np.stack(maps)), abs=5e-3)


def test_render_overlay_colorbar_labels_and_width():
    image = Image.new("RGB", (200, 150), (128, 128, 128))
    scores = np.linspace(0.2, 0.4, 200 * 150).reshape(150, 200)
    plain = render_overlay(image, scores, vmin=0.2, vmax=0.4)
    barred = render_overlay(image, scores, vmin=0.2, vmax=0.4, colorbar=True, threshold=0.3)
    assert plain.size == (400, 150) and barred.size[0] > 400 and barred.size[1] == 150
    strip = np.asarray(barred)[:, 400:]
    assert (strip == THRESHOLD_COLOUR).all(axis=2).any()  # threshold line and label
    assert (strip.max(axis=2) - strip.min(axis=2) > 100).any()  # coloured gradient
    assert (strip == 0).all(axis=2).any()  # black value labels
    assert (np.asarray(barred)[:, :400] == np.asarray(
        render_overlay(image, scores, vmin=0.2, vmax=0.4, threshold=0.3))).all()


def test_writer_rejects_unknown_scale(tmp_path):
    with pytest.raises(ValueError, match="overlay scale"):
        ClassOverlayWriter(tmp_path, "part", scale="global")


def test_no_render_still_collects_stats(tmp_path):
    calm, _, mask = _maps()
    w = ClassOverlayWriter(tmp_path, "part", render=False)
    w.add("part/good/a", tmp_path / "missing.png", calm, np.zeros_like(mask))
    w.finish()
    assert not (tmp_path / "overlays").exists()
    assert json.loads((tmp_path / "class_stats" / "part.json").read_text())["n_images"] == 1


def test_unreadable_image_at_render_time_is_a_warning(tmp_path):
    calm, _, _ = _maps()
    w = ClassOverlayWriter(tmp_path, "part")
    w.add("part/good/a", tmp_path / "gone.png", calm, None)
    w.finish()
    assert len(w.warnings) == 1 and "gone.png" in w.warnings[0]
    assert not list(tmp_path.glob(".spill-*"))


def test_colorbar_on_a_tiny_image_under_a_tall_banner():
    out = render_overlay(Image.new("RGB", (12, 9)), np.zeros((9, 12)), banner="a long banner " * 6, colorbar=True)
    assert out.size[1] == 9 and out.size[0] > 24


def test_defect_outline_not_drawn_along_the_frame():
    image = Image.new("RGB", (40, 30), (128, 128, 128))
    scores = np.zeros((30, 40))
    scores[:, 20:] = 1.0  # a defect region up to the right edge
    right = np.asarray(render_overlay(image, scores, prediction=scores >= 0.5))[:, 40:]
    magenta = (right == THRESHOLD_COLOUR).all(axis=2)
    assert magenta[:, 20].all()  # the region's inner edge
    assert not magenta[:, 39].any() and not magenta[0, 21:].any()  # not the frame
