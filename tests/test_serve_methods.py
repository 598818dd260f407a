"""The prompt-free methods in the service.  musc against a fixed pool (``Detector.fit_pool``, what ``alfa-ad serve`` does per class):
an image is scored by the pool alone, so its map equals the one a run gives it in a group with
exactly the pool, its score does not depend on what it is scored with, and a deliberately
wrong variant (the uploads of a batch also scoring each other) hides a defect two uploads
share.  Then the service: pool drawn with a seed up to ``group - 1``, HTTP scores equal to
direct scoring, and one-line configuration errors.  patchknn: each class its own memory
bank and thresholds, HTTP scores equal to a Detector fitted on the same references."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

import alfa_ad.methods.musc as musc_module
from alfa_ad import Detector

from conftest import grey_texture, spot_image


@pytest.fixture(scope="module")
def pool_images():
    return [grey_texture(200, 320, seed=s) for s in range(5)]


@pytest.fixture(scope="module")
def spot():
    return spot_image(seed=3)


def _pooled(backbone, pool, **options) -> Detector:
    det = Detector(backbone, method="musc", cache_dir=None, **options)
    det.fit_pool(pool, seed=0, source="test pool")
    return det


def test_an_image_is_scored_by_the_pool_alone(planted_backbone, pool_images, spot):
    image, mask = spot
    det = _pooled(planted_backbone, pool_images, rescore_ks=())
    alone = det.predict([image], "widget")[0]
    assert roc_auc_score(mask.ravel() > 0, alone.anomaly_map.ravel()) > 0.95
    # the same map a run gives the image in a group of exactly the pool and itself
    group = Detector(planted_backbone, method="musc", rescore_ks=(), cache_dir=None)
    in_group = group.predict([*pool_images, image], "widget")[-1]
    # (cdist's matrix-product form rounds near-zero distances to ~1e-4, differently per batch shape)
    np.testing.assert_allclose(alone.anomaly_map, in_group.anomaly_map, atol=2e-4)
    assert abs(alone.score - in_group.score) <= 2e-4 and alone.anomaly_map.max() > 0.1
    # whatever it is scored with: another spot image, a normal image, itself twice
    other, _ = spot_image(seed=4)
    for batch, at in (([image, other], 0), ([grey_texture(200, 320, seed=9), image], 1), ([image, image], 1)):
        got = det.predict(batch, "widget")[at]
        assert abs(got.score - alone.score) <= 2e-4
        np.testing.assert_allclose(got.anomaly_map, alone.anomaly_map, atol=2e-4)  # batched matmuls round apart
    assert "fixed pool of 5 images of its class (test pool)" in det.method.batch_dependence


def test_rescoring_reads_the_pool_not_the_batch(planted_backbone, pool_images, spot):
    image, _ = spot
    det = _pooled(planted_backbone, pool_images)  # default rescore_ks (1, 2, 3)
    alone = det.predict([image], "widget")[0].score
    with_others = det.predict([image, *[grey_texture(200, 320, seed=s) for s in (20, 21)]], "widget")[0].score
    assert abs(alone - with_others) <= 1e-5
    assert det.predict([grey_texture(200, 320, seed=22)], "widget")[0].score < alone


def test_uploads_scoring_each_other_would_hide_a_shared_defect(planted_backbone, pool_images, spot, monkeypatch):
    """The wrong variant: a batch's images score each other as well as being scored by the
    pool.  Two uploads with the same spot then vouch for each other and the spot fades."""
    image, _ = spot
    det = _pooled(planted_backbone, pool_images, rescore_ks=())
    right = det.predict([image, image], "widget")[0].score
    assert abs(right - det.predict([image], "widget")[0].score) <= 1e-5
    real = musc_module.mutual_scores

    def leaky(features, low=0.0, high=0.3, pool=None, chunk=16, pool_only=False):
        return real(features, low, high, pool=pool, chunk=chunk)  # the batch joins the pool as scorers

    monkeypatch.setattr(musc_module, "mutual_scores", leaky)
    wrong = det.predict([image, image], "widget")[0].score
    assert wrong < 0.5 * right


def test_a_pool_is_capped_drawn_with_a_seed_and_refused_for_other_methods(planted_backbone, pool_images):
    det = Detector(planted_backbone, method="musc", group=4, cache_dir=None)
    chosen = det.fit_pool(pool_images, seed=1)
    assert len(chosen) == 3 == det.method.pool.size and chosen == det.method.draw_pool(pool_images, 1)
    assert all(any(c is p for p in pool_images) for c in chosen)
    with pytest.raises(ValueError, match="^a musc pool holds 2 to 3 images"):
        det.fit_pool(pool_images[:1])
    with pytest.raises(ValueError, match="^a musc pool holds group - 1 images, at least 2: use group 3 or more"):
        Detector(planted_backbone, method="musc", group=2, cache_dir=None).fit_pool(pool_images)
    with pytest.raises(ValueError, match="^method alfa takes no pool"):
        Detector(planted_backbone, cache_dir=None).fit_pool(pool_images)


# ---------------------------------------------------------------------------- the service
def _write(folder: Path, images) -> list[Path]:
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:02d}.png")
    return sorted(folder.iterdir())


def test_the_service_scores_each_upload_against_its_class_pool(tmp_path, planted_backbone, pool_images, spot):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    httpx = pytest.importorskip("httpx", reason="httpx (test extra) is not installed")
    from alfa_ad.serve import ScoringService, ServiceOptions, create_app
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "serve"))
    from loadtest import ThreadedServer, png_bytes

    files = _write(tmp_path / "normals" / "widget", pool_images)
    opts = ServiceOptions(classes=["widget"], normals=tmp_path / "normals", max_wait_ms=20)
    service = ScoringService.build({"method": "musc", "group": 4, "weights": "planted", "device": "cpu"}, opts)
    info = service.describe()[0]
    assert info["pool"]["images"] == 3 and info["pool"]["candidates"] == 5 and info["pool"]["seed"] == 0
    direct = Detector(planted_backbone, method="musc", group=4, cache_dir=None)
    direct.fit_pool(files, seed=0)
    image, _ = spot
    expected = direct.predict([image], "widget")[0]
    with ThreadedServer(create_app(service, opts)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        body = c.post("/v1/detect", files={"image": ("a.png", png_bytes(image))},
                      data={"class_name": "widget"}).json()
    assert abs(body["score"] - expected.score) <= 1e-5 and body["method"] == "musc"
    assert "fixed pool of 3 images" in body["scores_depend_on_the_pool"]


def test_the_service_serves_patchknn_from_each_class_references(tmp_path, planted_backbone, pool_images, spot):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from alfa_ad.serve import ScoringService, ServiceOptions

    files = _write(tmp_path / "normals" / "widget", pool_images)
    opts = ServiceOptions(classes=["widget"], normals=tmp_path / "normals", shots="all", fpr=0.2)
    service = ScoringService.build({"method": "patchknn", "weights": "planted", "device": "cpu"}, opts)
    direct = Detector(planted_backbone, method="patchknn", cache_dir=None)
    direct.fit_normals(files, coreset=4096, seed=0)
    threshold = direct.calibrate(None, "widget", fpr=0.2)
    image, _ = spot
    normal = grey_texture(200, 320, seed=30)
    got = service.score("widget", [image, normal])
    want = direct.predict([image, normal], "widget")
    assert [round(r.score, 5) for r in got] == [round(r.score, 5) for r in want] and got[0].score > got[1].score
    assert abs(service.thresholds("widget").image - threshold.image) <= 1e-5
    assert service.describe()[0]["references"] == 5 and got[0].decision and not got[1].decision


@pytest.mark.parametrize("options, message", [
    ({}, "^method: musc scores each upload against a pool of unlabeled images of its class; name it with normals"),
    ({"normals": "refs", "shots": "2"}, "^shots: musc takes no normal references"),
    ({"normals": "refs", "calibrate": "more"}, "^calibrate: musc is served without thresholds"),
])
def test_the_service_names_what_a_musc_pool_needs_on_one_line(options, message):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from alfa_ad.serve.config import ConfigError, split_record

    with pytest.raises(ConfigError, match=message) as err:
        split_record({"method": "musc", "weights": "planted", **options})
    assert "\n" not in str(err.value)
