"""The service app in this process (uvicorn in a thread, real HTTP on 127.0.0.1, planted weights):
overload and recovery, timeouts, body limits, the loading state, and per-class few-shot states."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (test extra) is not installed")

from PIL import Image  # noqa: E402

from alfa_ad import Detector  # noqa: E402
from alfa_ad.serve import ScoringService, ServiceOptions, create_app  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "serve"))  # loadtest.py, the load-test harness
from loadtest import ThreadedServer, png_bytes  # noqa: E402
from conftest import grey_texture, spot_image  # noqa: E402


@pytest.fixture(scope="module")
def service(planted_backbone):
    return ScoringService({"bottle": Detector(planted_backbone, batch_size=8)}, {})


def _detect(client, data: bytes, class_name: str = "bottle"):
    return client.post("/v1/detect", files={"image": ("a.png", data)}, data={"class_name": class_name})


def test_overload_returns_503_with_retry_after_then_recovers(service):
    opts = ServiceOptions(max_batch=1, queue_size=2, max_wait_ms=0)
    big = png_bytes(spot_image(1024, 1024, box=(100, 600, 300, 800))[0])
    n = 40
    barrier = threading.Barrier(n)
    with ThreadedServer(create_app(service, opts)) as s, \
            httpx.Client(base_url=s.url, timeout=120, limits=httpx.Limits(max_connections=n)) as c:
        def call(_):
            barrier.wait()
            return _detect(c, big)

        with ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(call, range(n)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
        for r in responses:
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1 and "queue full" in r.json()["detail"]
        assert [_detect(c, big).status_code for _ in range(3)] == [200] * 3  # recovered
        assert c.get("/readyz").status_code == 200
        metrics = c.get("/metrics").text
        assert "alfa_ad_queue_depth 0.0" in metrics and 'status="503"' in metrics


def test_a_request_past_its_timeout_gets_504_and_the_server_goes_on(service):
    big = png_bytes(spot_image(1024, 1024)[0])
    with ThreadedServer(create_app(service, ServiceOptions(timeout_s=0.002, max_wait_ms=0))) as s, \
            httpx.Client(base_url=s.url, timeout=60) as c:
        r = _detect(c, big)
        assert r.status_code == 504 and "no result within" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_body_limit_applies_to_declared_and_streamed_bodies(service):
    with ThreadedServer(create_app(service, ServiceOptions(max_body_mb=0.05))) as s, \
            httpx.Client(base_url=s.url, timeout=60) as c:
        declared = _detect(c, bytes(60_000))
        assert declared.status_code == 413 and "larger than 50000 bytes" in declared.json()["detail"]
        streamed = c.post("/v1/detect", content=(bytes(10_000) for _ in range(10)),
                          headers={"content-type": "application/json"})  # chunked: no Content-Length
        assert streamed.status_code == 413
        small = png_bytes(grey_texture(64, 64))
        assert _detect(c, small).status_code == 200


def test_loading_state_then_ready():
    release = threading.Event()
    backbone_ready = {}

    def loader():
        release.wait(30)
        from alfa_ad.model import load_backbone

        backbone_ready["b"] = load_backbone(weights="planted", device="cpu")
        return ScoringService({"object": Detector(backbone_ready["b"])}, {})

    with ThreadedServer(create_app(loader, ServiceOptions())) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["retry-after"]
        d = _detect(c, png_bytes(grey_texture(64, 64)))
        assert d.status_code == 503 and d.json()["detail"] == "model loading"
        release.set()
        for _ in range(300):
            ready = c.get("/readyz")
            if ready.status_code == 200 or ready.json()["status"] == "failed":
                break
            threading.Event().wait(0.1)
        assert ready.status_code == 200, ready.json()
        body = _detect(c, png_bytes(grey_texture(64, 64)), class_name="object").json()  # default class too:
        assert body["class_name"] == "object"
        assert c.post("/v1/detect", files={"image": ("a.png", png_bytes(grey_texture(64, 64)))}).status_code == 200


def test_a_failed_load_is_reported_on_one_line():
    errors = []

    def loader():
        raise ValueError("checkpoint x.pt:\n cannot load")

    with ThreadedServer(create_app(loader, ServiceOptions(), on_load_error=errors.append)) as s, \
            httpx.Client(base_url=s.url, timeout=60) as c:
        for _ in range(100):
            if errors:
                break
            threading.Event().wait(0.05)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json() == {"status": "failed", "error": "checkpoint x.pt: cannot load"}
    assert errors == ["checkpoint x.pt: cannot load"]


def _write(folder, images):
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:02d}.png")
    return sorted(folder.iterdir())


def test_few_shot_classes_have_their_own_bank_and_thresholds_on_one_backbone(tmp_path, planted_backbone):
    refs = {"bottle": _write(tmp_path / "normals" / "bottle", [grey_texture(120, 160, seed=s) for s in range(4)]),
            "hazelnut": _write(tmp_path / "normals" / "hazelnut",
                               [spot_image(120, 160, box=(5, 5, 15, 15), seed=s, colour=(40, 40, 200))[0]
                                for s in range(4)])}
    opts = ServiceOptions(classes=["bottle", "hazelnut"], shots="all", normals=tmp_path / "normals", fpr=0.2,
                          max_wait_ms=20)
    service = ScoringService.build({"weights": "planted", "device": "cpu"}, opts)
    a, b = service.detectors["bottle"], service.detectors["hazelnut"]
    assert a is not b and a.backbone is b.backbone  # one model in memory
    assert a.method.bank_size > 0 and b.method.bank_size > 0
    test_images = [spot_image(120, 160, box=(40, 60, 70, 100), seed=9)[0], grey_texture(120, 160, seed=11)]
    expected = {}
    for cls in ("bottle", "hazelnut"):
        det = Detector(planted_backbone, batch_size=8)
        det.fit_normals(refs[cls], coreset=4096, seed=0)
        th = det.calibrate(None, cls, fpr=0.2)
        got = service.thresholds(cls)
        assert abs(got.image - th.image) <= 1e-5 and abs(got.pixel - th.pixel) <= 1e-5
        expected[cls] = det.predict(test_images, cls)
    info = {c["class_name"]: c for c in service.describe()}
    assert info["bottle"]["references"] == 4 and info["bottle"]["thresholds"]["fpr"] == 0.2
    with ThreadedServer(create_app(service, opts)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        for cls in ("bottle", "hazelnut"):
            for im, exp in zip(test_images, expected[cls]):
                body = _detect(c, png_bytes(im), cls).json()
                assert abs(body["score"] - exp.score) <= 1e-5
                assert body["decision"] == ("anomalous" if exp.decision else "normal")
                assert body["threshold"] == pytest.approx(service.thresholds(cls).image, abs=1e-9)
                assert abs(body["mask_area"] - float(np.mean(exp.mask))) <= 1e-4
        # the classes' banks differ: the same image scores differently
        same = png_bytes(test_images[1])
        assert _detect(c, same, "bottle").json()["score"] != _detect(c, same, "hazelnut").json()["score"]


def test_too_few_references_fail_the_build_on_one_line_like_the_cli(tmp_path):
    _write(tmp_path / "data" / "bottle" / "train" / "good", [grey_texture(120, 160, seed=s) for s in range(2)])
    opts = ServiceOptions(classes=["bottle"], shots="3", data=tmp_path / "data")
    with pytest.raises(ValueError) as err:
        ScoringService.build({"weights": "planted", "device": "cpu"}, opts)
    assert str(err.value) == (f"class 'bottle' has 2 normal images (the train split of bottle in {tmp_path / 'data'}) "
                              "but --shots 3 asks for 3")
    with pytest.raises(ValueError, match=r"^class 'bottle': --shots 2 needs --normals or --data$"):
        ScoringService.build({"weights": "planted", "device": "cpu"}, ServiceOptions(classes=["bottle"], shots="02"))


def test_tile_budget_answers_413_before_the_queue_and_bounded_strips_pass(service, planted_backbone):
    """``max_tiles`` is the per-request cost budget: an image whose tiling plan needs more
    model passes is refused with 413 naming the numbers; the auto plan's strips (2 pieces)
    and plain images are served, and so are the requests after a refused one."""
    small_tiles = ScoringService({"bottle": Detector(planted_backbone, batch_size=8, tile="40")}, {})
    big = png_bytes(grey_texture(400, 400))
    strip = png_bytes(spot_image(60, 4000, box=(10, 1000, 50, 1100))[0])
    with ThreadedServer(create_app(small_tiles, ServiceOptions(max_tiles=16))) as s, \
            httpx.Client(base_url=s.url, timeout=120) as c:
        need = small_tiles.detectors["bottle"].tile_count(400, 400)
        assert need > 16
        refused = _detect(c, big)
        assert refused.status_code == 413
        assert refused.json()["detail"] == (f"image 400x400 would cost {need} model passes (tiles), "
                                            "the per-request budget is max_tiles=16")
        assert _detect(c, png_bytes(grey_texture(40, 40))).status_code == 200  # the server goes on
    with ThreadedServer(create_app(service, ServiceOptions(max_tiles=2))) as s, \
            httpx.Client(base_url=s.url, timeout=120) as c:
        body = _detect(c, strip).json()
        assert body["tiles"] == 2  # the bounded auto plan fits a budget of 2
        assert _detect(c, png_bytes(grey_texture(64, 64))).json()["tiles"] == 1
