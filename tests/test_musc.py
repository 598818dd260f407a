"""musc (MuSc-style zero-shot from the images scored together) on the planted model: it
localizes a planted spot with no prompt and no reference, a wrong variant (each image among
its own scorers) does not, results depend on the group and only on it, and the engines and
the CLI keep a class's images together in bounded groups."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import alfa_ad.methods.musc as musc_module
from alfa_ad import Detector
from alfa_ad.cli import app
from alfa_ad.demo import make_synthetic_dataset
from alfa_ad.engines.local import call_size
from alfa_ad.scoring.mutual import interval_bounds

from conftest import grey_texture, spot_image


@pytest.fixture(scope="module")
def det(planted_backbone):
    return Detector(planted_backbone, method="musc", cache_dir=None)


@pytest.fixture(scope="module")
def group():
    normals = [grey_texture(200, 320, seed=s) for s in range(5)]
    image, mask = spot_image(seed=3)
    return normals, image, mask


def test_it_localizes_with_no_prompt_and_no_reference(det, group):
    normals, image, mask = group
    res = det.predict([*normals, image], "widget")
    scores = [r.score for r in res]
    assert int(np.argmax(scores)) == 5 and scores[5] > max(scores[:5]) + 0.1
    assert roc_auc_score(mask.ravel() > 0, res[5].anomaly_map.ravel()) > 0.95
    assert all(r.method == "musc" and not r.kept_prompts["normal"] and not r.kept_prompts["abnormal"] for r in res)
    assert all(0.0 <= r.score <= 1.0 for r in res)


def test_scoring_an_image_against_itself_hides_the_spot(det, group, monkeypatch):
    """The deliberately wrong variant: each image among its own scorers (its patches find
    themselves at distance 0), so nothing stands out."""
    normals, image, mask = group
    right = det.predict([*normals, image], "widget")[5].anomaly_map

    def with_self(features, low=0.0, high=0.3, pool=None, chunk=16):
        n, p, c = features.shape
        lo, hi = interval_bounds(n, low, high)
        d = torch.cdist(features.reshape(-1, c), features.reshape(-1, c)).reshape(n, p, n, p).amin(-1)
        return d.sort(-1).values[..., lo:hi].mean(-1)

    monkeypatch.setattr(musc_module, "mutual_scores", with_self)
    wrong = det.predict([*normals, image], "widget")[5].anomaly_map
    assert wrong.max() < 1e-3 < 0.1 < right.max()  # cdist rounds self-distances to ~1e-4, not 0


def test_scores_depend_on_the_group_and_only_on_it(det, group):
    normals, image, _ = group
    first = det.predict([*normals, image], "widget")
    again = det.predict([*normals, image], "widget")
    assert [r.score for r in first] == [r.score for r in again]  # reproducible for the same group
    reordered = det.predict([image, *normals], "widget")  # the same group, another order
    assert reordered[0].score == pytest.approx(first[5].score, abs=1e-4)  # rounding of another batch order
    assert np.allclose(reordered[0].anomaly_map, first[5].anomaly_map, atol=1e-5)
    # another spotted image joins: the spot is no longer unique, the first one's patch scores change
    other, _ = spot_image(seed=3)
    crowded = det.predict([*normals, image, other], "widget")
    assert not np.allclose(crowded[5].anomaly_map, first[5].anomaly_map, atol=1e-4)


def test_one_image_and_references_are_one_line_errors(det, group):
    normals, image, _ = group
    with pytest.raises(ValueError, match="needs at least 2 images of a class scored together, got 1"):
        det.predict([image], "widget")
    with pytest.raises(ValueError, match=r"takes no normal references \(use --shots 0\)"):
        det.fit_normals(normals)


def test_options_are_checked(planted_backbone):
    for options, match in (({"degrees": (2,)}, "odd numbers"), ({"group": 1}, "at least 2 images"),
                           ({"interval": (0.5, 0.2)}, "interval"), ({"layers": (7,)}, "out of range"),
                           ({"rescore_ks": (0,)}, ">= 1")):
        with pytest.raises(ValueError, match=match):
            Detector(planted_backbone, method="musc", cache_dir=None, **options)
    assert Detector(planted_backbone, method="musc", cache_dir=None, group=8).images_per_call == 8


def test_groups_are_bounded_and_never_leave_a_lone_image():
    mutual = SimpleNamespace(images_per_call=64, batch_size=8, method=SimpleNamespace(mutual=True))
    plain = SimpleNamespace(images_per_call=8, batch_size=8, method=SimpleNamespace())
    assert call_size(mutual, 10) == 10 and call_size(mutual, 64) == 64
    assert call_size(mutual, 65) == 33  # 33 + 32, not 64 + 1
    assert call_size(mutual, 500) == 63  # 8 groups: 7 of 63 and one of 59
    assert call_size(plain, 500) == 8 and call_size(plain, 3) == 8


def test_cli_run_zero_shot_and_its_errors(tmp_path):
    data = make_synthetic_dataset(tmp_path / "data", n_good=3, n_defect=3, seed=2)
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--method", "musc", "--weights", "planted", "--data", str(data),
                                 "--out", str(out), "--no-overlays"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["detector"]["method"] == "musc"
    assert "groups of at most 64" in record["config"]["scores_depend_on_the_batch"]
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(0.0 <= r["score"] <= 1.0 for r in rows)
    few = runner.invoke(app, ["run", "--method", "musc", "--shots", "1", "--weights", "planted", "--data",
                              str(data), "--out", str(tmp_path / "few")])
    assert few.exit_code == 2
    assert _error_lines(few) == ["error: --method musc takes no normal references (it is zero-shot); use --shots 0"]
    for extra, message in ((["--calibrate", str(data / "widget" / "test" / "good")], "--calibrate thresholds"),
                           (["--engine", "ray"], "use --engine local")):
        bad = runner.invoke(app, ["run", "--method", "musc", "--weights", "planted", "--data", str(data),
                                  "--out", str(tmp_path / "bad"), *extra])
        assert bad.exit_code == 2 and len(_error_lines(bad)) == 1 and message in _error_lines(bad)[0]


def test_cli_one_image_class_is_reported_and_the_run_finishes(tmp_path, group):
    from PIL import Image

    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(group[1]).save(folder / "only.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--method", "musc", "--weights", "planted", "--data", str(folder),
                                      "--out", str(out), "--no-overlays"], catch_exceptions=False)
    assert "Traceback" not in result.output and "has no other readable image" in result.output


def _error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def test_the_local_engine_groups_a_class_and_reports_a_lone_image(planted_backbone, group):
    """9 images with group 4: three predict calls of 3 (near-equal, not 4 + 4 + 1); a class of
    one readable image: that image is reported, not scored, and the run goes on."""
    from alfa_ad.engines.base import ClassJob
    from alfa_ad.engines.local import LocalEngine
    from alfa_ad.io.datasets import Sample
    from PIL import Image

    normals, image, _ = group
    det = Detector(planted_backbone, method="musc", group=4, cache_dir=None)
    calls = []
    predict = det.predict
    det.predict = lambda images, *a, **k: calls.append(len(images)) or predict(images, *a, **k)
    images = [*normals, image, *normals[:3]]
    samples = [Sample(im, "widget", "", None, None) for im in images]
    job = ClassJob("widget", "widget", samples)
    scored = [item for _, stream in LocalEngine(1).run(det, [job]) for item in stream]
    assert calls == [3, 3, 3] and all(item.error is None for item in scored)
    alone = ClassJob("widget", "widget", [Sample(Image.fromarray(image), "widget", "", None, None)])
    [(_, stream)] = list(LocalEngine(1).run(det, [alone]))
    [item] = list(stream)
    assert item.result is None and "has no other readable image" in item.error


def test_it_scores_whole_images_and_cannot_be_calibrated(planted_backbone, det, group):
    normals, image, _ = group
    assert det.config.tile == "none"  # auto tiling would let overlapping tiles of one image score each other
    with pytest.raises(ValueError, match="scores whole images against each other"):
        Detector(planted_backbone, method="musc", tile="64", cache_dir=None)
    with pytest.raises(ValueError, match="cannot be calibrated"):
        det.calibrate(normals, "widget")


def test_the_ray_engine_refuses_it_before_starting(det):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from alfa_ad.engines.base import EngineError
    from alfa_ad.registry import ENGINES

    engine = ENGINES.get("ray")()
    with pytest.raises(EngineError, match="use --engine local"):
        next(iter(engine.run(det, [])))
