"""``alfa-ad serve`` as a real server (subprocess on 127.0.0.1, planted weights).

Concurrent requests score like ``Detector`` in process; bad input gets 4xx and leaves the
server healthy; memory is flat over a 2,000-request soak; the token is required and never
logged.  (Overload, timeouts, loading and few-shot states: tests/test_serve_app.py.)
"""

from __future__ import annotations

import base64
import io
import json
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "serve"))  # loadtest.py, the load-test harness
from loadtest import ServerProcess, bad_images, png_bytes, zero_png  # noqa: E402
from conftest import grey_texture, spot_image  # noqa: E402

TOKEN = "s3cret-token-for-tests-0123456789"
CLASSES = ("bottle", "hazelnut")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads the server's memory from Linux /proc")


def _server(tmp_path_factory, name: str, *args: str) -> ServerProcess:
    folder = tmp_path_factory.mktemp(name)
    (folder / "token").write_text(TOKEN + "\n")
    server = ServerProcess(["--weights", "planted", "--device", "cpu", "--threads", "1", "--classes", ",".join(CLASSES),
                            "--token-file", folder / "token", "--access-log", folder / "access.jsonl", *args],
                           env={"OMP_NUM_THREADS": "1", "ALFA_AD_CACHE": str(folder / "cache")}, log=folder / "out.log")
    server.folder = folder
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise RuntimeError((folder / "out.log").read_text()[-2000:])
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = _server(tmp_path_factory, "serve", "--max-batch", "8", "--max-wait-ms", "30", "--max-pixels", "4000000",
                "--max-body-mb", "2", "--map-size", "64")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60,
                      limits=httpx.Limits(max_connections=64)) as c:
        yield c


@pytest.fixture(scope="module")
def detector():
    from alfa_ad import Detector

    return Detector(weights="planted", device="cpu")


def _images(n: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        if i % 4 == 3:
            out.append(grey_texture(180 + 8 * i, 260, seed=i))
        else:
            top, left = 10 + 7 * i, 20 + 13 * i
            out.append(spot_image(200, 320, box=(top, left, top + 30 + i, left + 40), seed=i)[0])
    return out


def _post(client, image: bytes, class_name: str, as_json: bool = False, **fields):
    if as_json:
        return client.post("/v1/detect", json={"image": base64.b64encode(image).decode(), "class_name": class_name,
                                               **fields})
    data = {"class_name": class_name, **{k: str(v).lower() for k, v in fields.items()}}
    return client.post("/v1/detect", files={"image": ("part.png", image, "image/png")}, data=data)


def test_ready_health_classes_and_docs(server, client):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}  # no token needed
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready", "classes": list(CLASSES)}
    info = client.get("/v1/classes").json()
    assert [c["class_name"] for c in info["classes"]] == list(CLASSES)
    assert "planted" in info["weights"] and info["classes"][0]["n_prompts"]["abnormal"] > 0
    spec = httpx.get(server.url + "/openapi.json").json()
    body = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert httpx.get(server.url + "/docs").status_code == 200


def test_concurrent_requests_score_like_the_detector(server, client, detector):
    images = _images(24)
    jobs = [(png_bytes(im), CLASSES[i % 2], i % 3 == 0) for i, im in enumerate(images)]
    barrier = threading.Barrier(len(jobs))

    def call(job):
        data, cls, as_json = job
        barrier.wait()
        return _post(client, data, cls, as_json, return_map=True, explain=2)

    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(call, jobs))
    assert [r.status_code for r in responses] == [200] * len(jobs), [r.text for r in responses if r.status_code != 200]
    bodies = [r.json() for r in responses]
    assert max(b["batch_size"] for b in bodies) > 1  # requests were batched
    for im, (_, cls, _), body in zip(images, jobs, bodies):
        expected = detector.predict([im], cls, explain=2)[0]
        assert body["class_name"] == cls
        assert abs(body["score"] - expected.score) <= 1e-5
        assert abs(body["global_score"] - expected.global_score) <= 1e-5
        assert abs(body["map_max"] - float(expected.anomaly_map.max())) <= 1e-5
        assert [d["text"] for d in body["descriptors"]] == [d.text for d in expected.descriptors]
        assert body["tiles"] == expected.tiles
        assert (body["width"], body["height"]) == (im.shape[1], im.shape[0])
        small = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["anomaly_map_png"])))) / 255.0
        assert max(small.shape) == 64
        ref = np.asarray(Image.fromarray(expected.anomaly_map).resize(small.shape[::-1], Image.BILINEAR))
        assert np.abs(small - np.clip(ref, 0, 1)).max() <= 1 / 255 + 1e-6
        assert "planted" in body["weights"] and body["version"]


def test_real_images_of_shared_data_score_like_the_detector(client, detector, shared_data):
    files = [sorted((shared_data / root / cls / "test").glob("*/*"))[0]
             for root, cls in (("mvtec_ad_mini", "grid"), ("mvtec3d_rgb", "tire"), ("mpdd", "metal_plate"))]
    for path in files:  # 1024 px grayscale, 800x600 RGB, 512 px RGB: uploaded as the files are
        body = client.post("/v1/detect", files={"image": (path.name, path.read_bytes())},
                           data={"class_name": "bottle"}).json()
        expected = detector(path, "bottle")
        assert abs(body["score"] - expected.score) <= 1e-5, path
        assert (body["height"], body["width"]) == expected.anomaly_map.shape


def test_token_is_required_and_never_logged(server, client):
    png = png_bytes(_images(1)[0])
    assert httpx.post(server.url + "/v1/detect", files={"image": ("a.png", png)}).status_code == 401
    wrong = httpx.get(server.url + "/v1/classes", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/metrics", headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    assert _post(client, png, "bottle").status_code == 200
    log = (server.folder / "access.jsonl").read_text()
    records = [json.loads(line) for line in log.splitlines()]
    assert TOKEN not in log and "Bearer" not in log
    assert base64.b64encode(png[:30]).decode()[:20] not in log  # no image bytes
    access = [r for r in records if r["event"] == "access"]
    assert {"ts", "method", "path", "status", "ms"} <= set(access[-1])
    assert any(r["status"] == 401 for r in access)
    assert any(r.get("class_name") == "bottle" and r["status"] == 200 for r in access)


def test_100_malformed_uploads_leave_the_server_healthy(server, client):
    good = png_bytes(_images(1)[0])
    before = _post(client, good, "bottle").json()["score"]
    requests = [("multipart", what, data, "bottle") for what, data in bad_images()]
    requests += [("multipart", "bomb 2500x2000 zeros", zero_png(2500, 2000), "bottle"),
                 ("json", "bad base64", "%%%not-base64%%%", "bottle"),
                 ("multipart", "unknown class", good, "screwdriver"),
                 ("multipart", "body over limit", b"\x89PNG" + bytes(2_100_000), "bottle"),
                 ("raw", "wrong content type", b"plain text", "bottle"),
                 ("jsonraw", "json not an object", b"[1, 2]", "bottle"),
                 ("jsonraw", "json without image", b'{"class_name": "bottle"}', "bottle"),
                 ("fields", "explain out of range", good, "bottle"),
                 ("fields", "unknown field", good, "bottle"),
                 ("noimage", "no image field", good, "bottle")]
    statuses = []
    for i in range(100):
        kind, what, data, cls = requests[i % len(requests)]
        if kind == "multipart":
            r = client.post("/v1/detect", files={"image": ("x.png", data)}, data={"class_name": cls})
        elif kind == "json":
            r = client.post("/v1/detect", json={"image": data, "class_name": cls})
        elif kind == "raw":
            r = client.post("/v1/detect", content=data, headers={"content-type": "text/plain"})
        elif kind == "jsonraw":
            r = client.post("/v1/detect", content=data, headers={"content-type": "application/json"})
        elif kind == "fields":
            extra = {"explain": "-3"} if "explain" in what else {"colour": "red"}
            r = client.post("/v1/detect", files={"image": ("x.png", data)}, data={"class_name": cls, **extra})
        else:
            r = client.post("/v1/detect", files={"picture": ("x.png", data)}, data={"class_name": cls})
        statuses.append(r.status_code)
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail, (what, detail)
    assert {400, 413, 415, 422} <= set(statuses)
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert _post(client, good, "bottle").json()["score"] == before
    assert server.proc.poll() is None
    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics


def test_metrics_report_requests_latency_batches_and_queue(client):
    text = client.get("/metrics").text
    ok = [line for line in text.splitlines() if line.startswith('alfa_ad_http_requests_total{path="/v1/detect",status="200"}')]
    assert ok and float(ok[0].split()[-1]) >= 1
    for name in ("alfa_ad_http_request_duration_seconds_bucket", "alfa_ad_batch_size_bucket", "alfa_ad_queue_depth",
                 "alfa_ad_inflight_requests", "alfa_ad_ready 1.0", "process_resident_memory_bytes"):
        assert name in text, name


@pytest.mark.slow
def test_rss_flat_over_a_2000_request_soak(server, client):
    payloads = [png_bytes(im) for im in _images(8)]

    def burst(start: int, n: int) -> list[int]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda i: _post(client, payloads[i % 8], CLASSES[i % 2]).status_code,
                                 range(start, start + n)))

    assert set(burst(0, 200)) == {200}
    after_200 = server.rss
    assert set(burst(200, 1800)) == {200}
    after_2000 = server.rss
    assert abs(after_2000 - after_200) <= 0.10 * after_200, (after_200, after_2000)
