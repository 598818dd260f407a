"""The service as a Ray Serve deployment (alfa_ad/serve/ray_app.py), on a local Ray instance:
two replicas behind Ray's proxy score like ``Detector`` in process.  Skipped without Ray."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (extra ray-serve)")
pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (test extra) is not installed")

from alfa_ad import Detector  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "serve"))  # loadtest.py, the load-test harness
from loadtest import free_port, png_bytes  # noqa: E402
from conftest import spot_image  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="local Ray on Linux only")]


@pytest.fixture(scope="module")
def ray_url(tmp_path_factory):
    import ray

    from alfa_ad.serve.ray_app import app_builder

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = app_builder({"weights": "planted", "device": "cpu", "classes": "bottle,hazelnut", "threads": "1",
                           "min_replicas": "2", "max_replicas": "2", "num_cpus": "0.5", "access_log": "off",
                           "max_wait_ms": "20"})
        serve.run(app, name="alfa-ad", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_bad_builder_arguments_fail_in_the_driver():
    from alfa_ad.serve.config import ConfigError
    from alfa_ad.serve.ray_app import app_builder

    with pytest.raises(ConfigError, match="max_batch"):
        app_builder({"weights": "planted", "max_batch": "0"})


def test_replicas_score_like_the_detector(ray_url):
    assert httpx.get(ray_url + "/readyz", timeout=30).json()["status"] == "ready"
    images = [spot_image(200, 320, box=(10 + 9 * i, 30 + 20 * i, 50 + 9 * i, 90 + 20 * i), seed=i)[0] for i in range(8)]
    with httpx.Client(base_url=ray_url, timeout=120) as c, ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda i: c.post("/v1/detect", files={"image": ("a.png", png_bytes(images[i]))},
                                               data={"class_name": ("bottle", "hazelnut")[i % 2]}).json(), range(8)))
    det = Detector(weights="planted", device="cpu")
    for i, body in enumerate(bodies):
        assert abs(body["score"] - det.predict([images[i]], ("bottle", "hazelnut")[i % 2])[0].score) <= 1e-5
    status = serve.status().applications["alfa-ad"].deployments["alfa-ad"]
    assert status.replica_states.get("RUNNING") == 2
