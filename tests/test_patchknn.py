"""patchknn (AnomalyDINO-style nearest-neighbour patch distances): the formulas with
hand-computed numbers, planted checks that wrong variants fail, the masking and rotation
options, the missing-normals error and the CLI / API paths.

Planted model (tests/conftest.py): a patch's features carry its paint cue (red, green or
blue rather than grey) and, weakly, its position.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from alfa_ad import Detector
from alfa_ad.cli import app
from alfa_ad.methods.patchknn import PatchKnnMethod, pca_foreground, top_percent_mean
from alfa_ad.scoring.memory import nearest_neighbour_distance

from conftest import grey_texture, spot_image

RED, BLUE = (220, 30, 30), (30, 30, 220)


def _logo(seed: int) -> np.ndarray:
    """A square grey part with a red logo in its top-left corner (normal for these tests)."""
    im = grey_texture(240, 240, seed=seed)
    im[16:64, 16:64] = RED
    return im


@pytest.fixture
def method(planted_backbone):
    return PatchKnnMethod(planted_backbone)


# ------------------------------------------------------------------ formulas
def test_top_percent_mean_by_hand():
    scores = torch.arange(200, dtype=torch.float32).view(1, 200) / 1000  # 0.000 .. 0.199
    assert top_percent_mean(scores, 1.0).item() == pytest.approx((0.199 + 0.198) / 2)  # floor(2.0) = 2 patches
    assert top_percent_mean(scores[:, :150], 1.0).item() == pytest.approx(0.149)  # floor(1.5) = 1: the highest
    assert top_percent_mean(scores[:, :50], 1.0).item() == pytest.approx(0.049)  # floor(0.5) = 0: the highest
    assert top_percent_mean(scores, 5.0).item() == pytest.approx(np.mean(np.arange(190, 200)) / 1000)
    assert top_percent_mean(scores, 100.0).item() == pytest.approx(0.0995)  # every patch: the mean
    two = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.2, 0.4]])
    assert top_percent_mean(two, 1.0).tolist() == pytest.approx([0.9, 0.5])  # per image


def test_distance_to_the_nearest_normal_patch_by_hand(method):
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # any norm: the bank is compared by cosine
    method.set_normals([([bank], None)])
    query = torch.tensor([[[3.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [-1.0, -1.0]]])
    got = method.patch_scores([query])[0]
    r = 1 / math.sqrt(2)
    # (1 - max cos) / 2: identical direction 0; 45 degrees off both; orthogonal to both
    # (the best is cos 0); 135 degrees from both (the best is cos -1/sqrt 2)
    want = [0.0, (1 - r) / 2, 0.5, (1 + r) / 2]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert nearest_neighbour_distance(query, bank)[0].tolist() == pytest.approx(want, abs=1e-6)


def test_the_image_score_is_the_mean_of_the_top_percent_of_patch_distances(planted_backbone):
    """Recomputed outside the method: last block through ln_post, nearest-neighbour distance
    to the references' patches, mean of the top floor(225 * 1%) = 2 patches."""
    bb = planted_backbone
    good = [grey_texture(200, 320, seed=s) for s in (1, 2)]
    image, _ = spot_image(seed=3)

    def features(images):
        with torch.inference_mode():
            x = bb.clip.visual.ln_pre(bb.tokens(bb.preprocess([Image.fromarray(im) for im in images])))
            for block in bb.clip.visual.transformer.resblocks:
                x = block(x)
            return bb.clip.visual.ln_post(x[:, 1:]).float()

    bank = features(good).reshape(-1, features(good).shape[-1])
    distances = nearest_neighbour_distance(features([image]), bank)[0]
    top2 = distances.topk(2).values.mean().item()
    for percent, want in ((1.0, top2), (100.0, distances.mean().item())):
        det = Detector(bb, method="patchknn", top_percent=percent, cache_dir=None)
        det.fit_normals(good)
        assert det(image, "widget").score == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert top2 > 10 * distances.median().item()  # the spot's patches lead; the mean of all is not the top


def test_the_layer_option_reads_that_blocks_output(planted_backbone):
    bb = planted_backbone
    pixels = bb.preprocess([Image.fromarray(spot_image(seed=2)[0])])
    with torch.inference_mode():
        block0 = bb.clip.visual.transformer.resblocks[0](bb.clip.visual.ln_pre(bb.tokens(pixels)))
        want = bb.clip.visual.ln_post(block0[:, 1:]).float()
        for layer in (0, -bb.depth):
            got = PatchKnnMethod(bb, layer=layer).token_sets(pixels)[1]
            assert len(got) == 1 and torch.allclose(got[0], want, atol=1e-5)
        last = PatchKnnMethod(bb).token_sets(pixels)[1][0]
    assert PatchKnnMethod(bb).layer == bb.depth - 1 and not torch.allclose(last, want, atol=1e-3)


# ------------------------------------------------------------------ wrong variants fail
def test_an_image_scored_against_itself_is_zero_everywhere(planted_backbone):
    image, mask = spot_image(seed=3)
    itself = Detector(planted_backbone, method="patchknn", cache_dir=None)
    itself.fit_normals([image])
    r = itself(image, "widget")
    assert r.score < 1e-5 and r.anomaly_map.max() < 1e-5  # the spot is its own nearest neighbour
    right = Detector(planted_backbone, method="patchknn", cache_dir=None)
    right.fit_normals([grey_texture(200, 320, seed=s) for s in (1, 2)])
    found = right(image, "widget")
    assert found.score > 0.1 and roc_auc_score(mask.ravel(), found.anomaly_map.ravel()) > 0.99


def test_without_the_nearest_neighbour_min_a_normal_logo_is_an_anomaly(planted_backbone):
    """References carry a red logo.  The nearest normal patch of a logo patch is a logo patch
    (distance ~0); the mean distance over the bank (the min left out, implemented here
    only) scores every logo patch as high as a real defect, so a normal part scores as high
    as a defective one."""
    det = Detector(planted_backbone, method="patchknn", cache_dir=None)
    det.fit_normals([_logo(1), _logo(2)])
    defective = _logo(3)
    defective[150:200, 140:200] = BLUE
    normal = _logo(4)

    def mean_over_bank(im):
        with torch.inference_mode():
            _, sets = det.method.token_sets(planted_backbone.preprocess([Image.fromarray(im)]))
        q = F.normalize(sets[0][0], dim=-1)
        return ((1 - q @ det.method.refs.sets[0].T) / 2).mean(-1).view(planted_backbone.grid)

    right = {k: det(im, "widget").score for k, im in (("defective", defective), ("normal", normal))}
    assert right["defective"] > 1000 * right["normal"], right
    wrong = {k: top_percent_mean(mean_over_bank(im).flatten()[None], 1.0).item()
             for k, im in (("defective", defective), ("normal", normal))}
    assert wrong["defective"] < 1.05 * wrong["normal"], wrong
    logo_wrong, logo_right = mean_over_bank(normal)[1:4, 1:4].mean().item(), det(normal, "w").anomaly_map[16:64, 16:64]
    assert logo_wrong > 0.1 and logo_right.max() < 1e-5


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("flip", [False, True])
def test_pca_foreground_keeps_the_centred_object_dilated_and_closed(flip, monkeypatch):
    """``flip``: the SVD returns the component with the other sign (either is a valid SVD);
    the central-crop rule must still keep the object."""
    if flip:
        svd = torch.linalg.svd

        def flipped(x, full_matrices=True):
            u, s, vh = svd(x, full_matrices=full_matrices)
            return -u, s, -vh

        monkeypatch.setattr(torch.linalg, "svd", flipped)
    torch.manual_seed(0)
    grid = (16, 16)
    obj, background = torch.randn(16), torch.randn(16)
    inside = torch.zeros(grid, dtype=torch.bool)
    inside[3:13, 3:13] = True  # the object fills the central crop (the grid without 3 patches a side)
    inside[6:9, 7:10] = False  # a 3x3 hole in the object: the dilation narrows it, the closing fills it
    feats = torch.where(inside.flatten()[:, None], obj, background) + 0.01 * torch.randn(256, 16)
    want = torch.zeros(grid, dtype=torch.bool)
    want[2:14, 2:14] = True  # the object dilated by one patch, the hole closed
    for x in (feats, -feats, 5 * feats + 3):  # the features' sign, scale and offset do not matter
        assert torch.equal(pca_foreground(x[None], grid)[0].view(grid), want)


def test_masking_pca_zeroes_a_changed_background_and_keeps_defects_on_the_part(planted_backbone):
    """References: grey parts filling the frame.  Test: a grey part on a blue table (the
    background changed, a 3-patch border) with and without a red defect on the part.  The
    mask is dilated by one patch, so the ring of table next to the part still scores; the
    two outer patch rows score 0."""
    refs = [grey_texture(240, 240, seed=s) for s in (1, 2)]
    on_table = grey_texture(240, 240, seed=3)
    on_table[:48], on_table[-48:], on_table[:, :48], on_table[:, -48:] = BLUE, BLUE, BLUE, BLUE
    defective = on_table.copy()
    defective[100:140, 100:140] = RED
    scores = {}
    for masking in ("off", "pca"):
        det = Detector(planted_backbone, method="patchknn", masking=masking, cache_dir=None)
        det.fit_normals(refs)
        scores[masking] = [det(im, "widget") for im in (on_table, defective)]
    off, pca = scores["off"], scores["pca"]
    assert off[0].score > 0.1 and off[0].anomaly_map[:16].min() > 0.05  # the table is a false alarm
    assert pca[0].anomaly_map[:16].max() < 1e-6 and pca[0].anomaly_map[:, :16].max() < 1e-6  # masked: 0
    assert pca[0].anomaly_map[100:140, 100:140].max() < 1e-3  # the part is normal
    assert pca[1].anomaly_map[110:130, 110:130].min() > 0.1  # the defect on the part still scores
    assert pca[0].anomaly_map[40, 64:176].min() > 0.1  # the dilation's ring: patch row 2, table, kept


def test_rotations_put_quarter_turns_of_the_references_in_the_bank(planted_backbone):
    reference, _ = spot_image(240, 240, box=(20, 20, 60, 60), seed=5)  # paint in one corner is normal here
    turned = np.ascontiguousarray(np.rot90(reference))
    scores = {}
    for rotations in (False, True):
        det = Detector(planted_backbone, method="patchknn", rotations=rotations, cache_dir=None)
        det.fit_normals([reference, grey_texture(240, 240, seed=7)])
        p = planted_backbone.grid[0] * planted_backbone.grid[1]
        assert det.method.bank_size == 2 * p * (4 if rotations else 1)
        assert det.method.refs.loo_visual.shape == (2, p)  # leave-one-out: one upright map per reference
        assert det.calibrate().n_images == 2
        scores[rotations] = det(turned, "widget").score
        assert det(reference, "widget").score < 1e-5
    assert scores[True] < 1e-5 and scores[False] > 100 * scores[True], scores


def test_bad_options_are_one_line_errors(planted_backbone):
    cases = [({"masking": "grabcut"}, "masking must be one of off, pca"), ({"top_percent": 0}, "top_percent"),
             ({"layer": 3}, "layer 3 out of range -3..2"), ({"scales": (2,)}, "scales"),
             ({"memory_layers": (1,)}, "give layer"), ({"contextual": "all"}, "no prompts to adapt"),
             ({"few_shot_scorer": "residual", "layer": 1}, "layer applies to the bank scorer")]
    for options, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            PatchKnnMethod(planted_backbone, **options)
        assert "\n" not in str(err.value)


def test_the_residual_scorer_supplies_its_token_sets(planted_backbone):
    det = Detector(planted_backbone, method="patchknn", few_shot_scorer="residual", cache_dir=None)
    assert det.method.layer is None and len(det.method.covers()) == len(det.method.scorer.layers)
    image, mask = spot_image(seed=3)
    det.fit_normals([grey_texture(200, 320, seed=s) for s in (1, 2)])
    assert roc_auc_score(mask.ravel(), det(image, "widget").anomaly_map.ravel()) > 0.99


# ------------------------------------------------------------------ no normals; API and CLI
def test_without_normals_scoring_is_a_one_line_error(planted_backbone):
    det = Detector(planted_backbone, method="patchknn", cache_dir=None)
    with pytest.raises(ValueError, match="^patchknn needs normal references") as err:
        det(grey_texture(200, 320), "widget")
    assert "\n" not in str(err.value) and "--shots" in str(err.value)
    det.fit_normals([grey_texture(200, 320, seed=1)])
    det.clear_normals()
    with pytest.raises(ValueError, match="needs normal references"):
        det(grey_texture(200, 320), "widget")


def test_the_api_reports_no_prompt_kept_and_rebuilds_from_its_record(planted_backbone):
    det = Detector(planted_backbone, method="patchknn", masking="pca", rotations=True, cache_dir=None)
    refs = [grey_texture(200, 320, seed=s) for s in (1, 2)]
    det.fit_normals(refs)
    image, _ = spot_image(seed=3)
    r = det(image, "widget")
    assert r.method == "patchknn" and r.kept_prompts == {"normal": [], "abnormal": []}
    assert r.global_score == r.score  # no class-token part: the image score is repeated
    record = json.loads(json.dumps(det.config.as_dict()))
    assert record["options"] == {"masking": "pca", "rotations": True} and record["scales"] == []
    again = Detector.from_config(record, backbone=planted_backbone, cache_dir=None)
    again.fit_normals(refs)
    assert again.method.masking == "pca" and again.method.rotations
    assert again(image, "widget").score == pytest.approx(r.score, abs=1e-7)


def _folder(path, images):
    path.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(path / f"{i:03d}.png")
    return path


def test_the_cli_runs_patchknn_with_references_and_refuses_zero_shot(tmp_path):
    from alfa_ad.demo import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_good=2, n_defect=2, seed=3)
    normals = _folder(tmp_path / "normals", [grey_texture(200, 320, seed=s) for s in (40, 41)])
    runner = CliRunner()
    base = ["run", "--data", str(data), "--weights", "planted", "--method", "patchknn", "--no-overlays"]
    zero = runner.invoke(app, base + ["--out", str(tmp_path / "zero")], catch_exceptions=False)
    errors = [line for line in zero.output.splitlines() if line.startswith("error:")]
    assert zero.exit_code == 2 and errors == ["error: --method patchknn needs normal references "
                                              "(--shots k or all, or --normals)"], zero.output
    out = tmp_path / "out"
    result = runner.invoke(app, base + ["--out", str(out), "--normals", str(normals), "--shots", "1"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["detector"]["method"] == "patchknn"
    assert record["mean"]["image_auroc"] == 1.0 and record["mean"]["pixel_auroc"] > 0.95
