"""VLM second opinion: vision requests against the local fake OpenAI server (real ``openai`` client)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from alfa_ad.cli import app
from alfa_ad.llm.second_opinion import explain_image, fuse_score, vlm_explain_run
from alfa_ad.llm.client import LLMClient, LLMConfig, LLMError
from alfa_ad.llm.vlm import build_vlm_messages, image_data_uri, open_vlm_cache, parse_verdict

from conftest import spot_image
from llm_server import VERDICT, FakeLLMServer, good, image_urls, status, text_parts

KEY = "sk-vision-SECRET-77"
RULES = ["exactly one red spot is allowed on the label", "no text on the cap"]


@pytest.fixture
def server():
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def detector(planted_backbone):
    from alfa_ad import Detector

    return Detector(planted_backbone, cache_dir=None)


def config(url: str, **kw) -> LLMConfig:
    opts = dict(api_key=KEY, timeout=5.0, max_retries=3, backoff=0.001)
    opts.update(kw)
    return LLMConfig("fake-vlm", base_url=url, **opts)


def decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def files_bytes(*folders: Path) -> bytes:
    return b"".join(p.read_bytes() for f in folders if f.exists() for p in sorted(f.rglob("*")) if p.is_file())


# --------------------------------------------------------------------------- the request
def test_images_arrive_as_data_uris_with_rules_and_context(server, detector, tmp_path):
    img, _ = spot_image(200, 320, seed=1)
    normals = [spot_image(200, 320, seed=s, box=(0, 0, 0, 0))[0] for s in (2, 3, 4)]
    out = explain_image(detector, img, "bottle", config=config(server.base_url), normals=normals, k=2,
                        rules=RULES, cache_dir=tmp_path / "c")
    assert server.count == 1
    body = server.requests[0]["body"]
    assert body["model"] == "fake-vlm"
    urls = image_urls(body)
    assert len(urls) == 1 + 1 + 2                      # image, our overlay, k=2 normal references
    first, overlay, ref = decode(urls[0]), decode(urls[1]), decode(urls[2])
    assert first.size == (320, 200)
    assert np.array_equal(np.asarray(first.convert("RGB")), img)          # the image itself, lossless
    assert overlay.size == (640, 200)                                      # image | heat map
    assert np.array_equal(np.asarray(ref.convert("RGB")), normals[0])
    text = text_parts(body)
    for rule in RULES:
        assert f"- {rule}" in text
    assert "Object class: bottle." in text and "glass bottle" in text      # class context
    assert "Detector anomaly score" in text and "JSON" in text and "anomalous" in text
    assert "industrial anomaly detection" in body["messages"][0]["content"]   # task description
    assert out["vlm"]["verdict"] == VERDICT
    assert out["vlm"]["model"] == "fake-vlm" and out["vlm"]["images"] == 4
    assert out["rules"] == RULES and out["n_normals"] == 2
    assert 0.0 <= out["score"] <= 1.0


def test_large_images_are_downscaled(tmp_path):
    big = np.zeros((1000, 2000, 3), dtype=np.uint8)
    assert decode(image_data_uri(big, max_side=500)).size == (500, 250)
    msgs = build_vlm_messages(big, "screw", max_side=300)
    assert decode(image_urls({"messages": msgs})[0]).size == (300, 150)
    assert "Normality rules" not in text_parts({"messages": msgs})     # no rules given, none mentioned


# --------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize("reply, ok", [
    (json.dumps(VERDICT), True),
    ("Sure.\n```json\n" + json.dumps(VERDICT) + "\n```\n", True),
    ('{"anomalous": "no", "reason": "clean", "confidence": 0.9}', True),
    ("not json at all", False),
    ('{"anomalous": true, "reason": "x", "confidence": 1.5}', False),
    ('{"anomalous": true, "confidence": 0.5}', False),
    ('{"anomalous": "maybe", "reason": "x", "confidence": 0.5}', False),
    ('{"anomalous": true, "reason": "  ", "confidence": 0.5}', False),
    ('[1, 2]', False),
])
def test_parse_verdict(reply, ok):
    v = parse_verdict(reply)
    assert (v is not None) == ok
    if ok:
        assert isinstance(v.anomalous, bool) and 0 <= v.confidence <= 1


def test_malformed_verdicts_are_retried(server, detector, tmp_path):
    img, _ = spot_image(seed=5)
    server.script(good("I think it is broken."), good('{"anomalous": true, "reason": "x", "confidence": 7}'),
                  status(503))
    sleeps: list[float] = []
    client = LLMClient(config(server.base_url), sleep=sleeps.append)
    out = explain_image(detector, img, "widget", client=client, cache_dir=tmp_path / "c")
    assert server.count == 4 and len(sleeps) == 3
    assert out["vlm"]["verdict"] == VERDICT


def test_persistent_malformed_verdict_is_a_one_line_error_and_not_cached(server, detector, tmp_path):
    img, _ = spot_image(seed=6)
    server.default = good("no verdict here")
    with pytest.raises(LLMError) as exc:
        explain_image(detector, img, "widget", config=config(server.base_url, max_retries=1),
                      cache_dir=tmp_path / "c")
    msg = str(exc.value)
    assert "not a valid JSON verdict after 2 tries" in msg and "\n" not in msg and KEY not in msg
    assert server.count == 2
    cache = open_vlm_cache(tmp_path / "c")
    assert len(cache) == 0
    cache.close()


def test_cache_hit_makes_no_request(server, detector, tmp_path):
    img, _ = spot_image(seed=7)
    cfg, cdir = config(server.base_url), tmp_path / "c"
    first = explain_image(detector, img, "widget", config=cfg, rules=RULES, cache_dir=cdir)
    again = explain_image(detector, img, "widget", config=cfg, rules=RULES, cache_dir=cdir)
    assert server.count == 1 and again["vlm"]["from_cache"] and not first["vlm"]["from_cache"]
    assert again["vlm"]["verdict"] == first["vlm"]["verdict"]
    # another key: same entry (the key is not part of the cache key)
    explain_image(detector, img, "widget", config=config(server.base_url, api_key="other-key"), rules=RULES,
                  cache_dir=cdir)
    assert server.count == 1
    # the prompt, the image and the model are part of the key; refresh asks again
    explain_image(detector, img, "widget", config=cfg, rules=RULES[:1], cache_dir=cdir)
    assert server.count == 2
    explain_image(detector, spot_image(seed=8)[0], "widget", config=cfg, rules=RULES, cache_dir=cdir)
    assert server.count == 3
    explain_image(detector, img, "widget", config=LLMConfig("other-vlm", base_url=server.base_url, api_key=KEY),
                  rules=RULES, cache_dir=cdir)
    assert server.count == 4
    explain_image(detector, img, "widget", config=cfg, rules=RULES, cache_dir=cdir, refresh=True)
    assert server.count == 5
    assert KEY.encode() not in files_bytes(cdir)
    assert all(r["headers"]["authorization"] in (f"Bearer {KEY}", "Bearer other-key") for r in server.requests)


def test_client_error_fails_at_once_and_is_scrubbed(server, detector, tmp_path):
    server.default = status(401, body=json.dumps({"error": {"message": f"bad key {KEY}"}}))
    with pytest.raises(LLMError) as exc:
        explain_image(detector, spot_image()[0], "widget", config=config(server.base_url), cache_dir=tmp_path)
    assert "HTTP 401" in str(exc.value) and KEY not in str(exc.value) and server.count == 1


# --------------------------------------------------------------------------- fusion
def test_fuse_score():
    yes, no = {"anomalous": True, "confidence": 0.9}, {"anomalous": False, "confidence": 0.9}
    assert fuse_score(0.4, yes, 0.0) == 0.4
    assert fuse_score(0.4, yes, 1.0) == pytest.approx(0.9)
    assert fuse_score(0.4, no, 1.0) == pytest.approx(0.1)
    assert fuse_score(0.4, yes, 0.5) == pytest.approx(0.65)
    assert fuse_score(0.4, no, 0.5) == pytest.approx(0.25)
    assert fuse_score(0.4, yes) > fuse_score(0.4, {"anomalous": True, "confidence": 0.2})
    assert fuse_score(0.6, no) > fuse_score(0.4, no)                       # monotone in our score
    for s in (0.0, 1.0):
        for v in (yes, no):
            assert 0.0 <= fuse_score(s, v, 0.3) <= 1.0
    with pytest.raises(ValueError):
        fuse_score(0.5, yes, 1.5)


# --------------------------------------------------------------------------- a finished run
def _fake_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    rows = []
    for i, score in enumerate([0.2, 0.9, 0.5, 0.7]):
        img, _ = spot_image(seed=10 + i)
        path = tmp_path / "data" / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        ov = out / "overlays" / "widget" / "images" / f"img{i}.png"
        ov.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate([img, img], axis=1)).save(ov)
        rows.append({"class": "widget", "path": str(path), "defect_type": None, "label": "", "score": score,
                     "descriptors": [["red stain", 0.3]]})
    rows.append({"class": "widget", "path": str(tmp_path / "data" / "gone.png"), "defect_type": None,
                 "label": "", "score": 0.8})
    (out / "scores.json").write_text(json.dumps({"config": {}, "images": rows, "errors": [], "warnings": []}))
    return out


def test_vlm_explain_run_writes_verdicts_into_scores_json(server, tmp_path):
    out = _fake_run(tmp_path)
    before = json.loads((out / "scores.json").read_text())
    summary = vlm_explain_run(out, 3, config=config(server.base_url), rules=RULES, cache_dir=tmp_path / "c")
    assert summary["asked"] == 3 and summary["answered"] == 2 and len(summary["errors"]) == 1
    assert "gone.png" in summary["errors"][0]
    rows = {Path(r["path"]).name: r for r in json.loads((out / "scores.json").read_text())["images"]}
    assert rows["img1.png"]["vlm"]["verdict"] == VERDICT and rows["img3.png"]["vlm"]["verdict"] == VERDICT
    assert "error" in rows["gone.png"]["vlm"]                   # reported, the batch went on
    assert "vlm" not in rows["img0.png"] and "vlm" not in rows["img2.png"]      # not in the top 3
    assert [r["score"] for r in json.loads((out / "scores.json").read_text())["images"]] == \
        [r["score"] for r in before["images"]]                  # no fusion: scores unchanged
    assert server.count == 2
    for req in server.requests:
        assert len(image_urls(req["body"])) == 2               # image + the run's overlay
        assert "red stain" in text_parts(req["body"]) and RULES[0] in text_parts(req["body"])
    assert KEY.encode() not in files_bytes(out, tmp_path / "c")


def test_vlm_explain_run_fusion(server, tmp_path):
    out = _fake_run(tmp_path)
    vlm_explain_run(out, 1, config=config(server.base_url), fuse=0.5, cache_dir=tmp_path / "c")
    rows = {Path(r["path"]).name: r for r in json.loads((out / "scores.json").read_text())["images"]}
    assert rows["img1.png"]["score_unfused"] == 0.9
    assert rows["img1.png"]["score"] == pytest.approx(0.5 * 0.9 + 0.5 * 0.8)
    assert rows["img1.png"]["vlm"]["fused_score"] == rows["img1.png"]["score"]
    assert rows["img0.png"]["score"] == 0.2 and "score_unfused" not in rows["img0.png"]
    with pytest.raises(ValueError):
        vlm_explain_run(out, 1, config=config(server.base_url), fuse=2.0)
    with pytest.raises(ValueError, match="no scores.json"):
        vlm_explain_run(tmp_path / "nowhere", 1, config=config(server.base_url))


# --------------------------------------------------------------------------- command line
def test_explain_cli(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    img, _ = spot_image(seed=3)
    path = tmp_path / "part.png"
    Image.fromarray(img).save(path)
    refs = tmp_path / "good"
    refs.mkdir()
    for s in range(3):
        Image.fromarray(spot_image(seed=20 + s, box=(0, 0, 0, 0))[0]).save(refs / f"g{s}.png")
    rules = tmp_path / "rules.txt"
    rules.write_text("# rules\n[widget]\nexactly one red spot is allowed on the label\n")
    runner = CliRunner()
    args = ["explain", str(path), "--vlm-model", "fake-vlm", "--base-url", server.base_url, "--weights", "planted",
            "--class-name", "widget", "--normals", str(refs), "--k", "2", "--rules", str(rules),
            "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "v.json")]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "v.json").read_text())
    assert saved["vlm"]["verdict"] == VERDICT and saved["n_normals"] == 2
    assert "anomalous (confidence 0.80)" in result.output and KEY not in result.output
    assert len(image_urls(server.requests[0]["body"])) == 4
    assert "exactly one red spot" in text_parts(server.requests[0]["body"])
    assert KEY.encode() not in files_bytes(tmp_path)
    bad = runner.invoke(app, ["explain", str(tmp_path / "missing.png"), "--vlm-model", "m"])
    assert bad.exit_code == 2 and "missing.png" in bad.output


def test_explain_help_documents_the_command():
    result = CliRunner().invoke(app, ["explain", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for word in ("--vlm-model", "--base-url", "--normals", "--rules", "JSON", "data URIs"):
        assert word in result.output, word


def test_explain_image_with_rules(server, detector, tmp_path):
    out = explain_image(detector, spot_image(seed=9)[0], "widget", config=config(server.base_url), rules=RULES[:1],
                        cache_dir=tmp_path / "c")
    assert out["vlm"]["verdict"] == VERDICT and server.count == 1
    assert RULES[0] in text_parts(server.requests[0]["body"])


def test_run_vlm_explain_asks_about_the_top_images(server, tmp_path, monkeypatch):
    """`alfa-ad run --vlm-explain N` sends the run's own overlays and writes the verdicts
    into scores.json; the report is written after them."""
    from typer.testing import CliRunner

    from alfa_ad.cli import app
    from alfa_ad.demo import make_synthetic_dataset

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    data = make_synthetic_dataset(tmp_path / "data", n_good=2, n_defect=2, seed=5)
    out = tmp_path / "out"
    rules = tmp_path / "rules.txt"
    rules.write_text(RULES[0] + "\n")
    result = CliRunner().invoke(app, ["run", "--data", str(data), "--out", str(out), "--weights", "planted",
                                      "--no-llm", "--vlm-explain", "2", "--vlm-model", "fake-vlm",
                                      "--vlm-base-url", server.base_url, "--rules", str(rules)])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "scores.json").read_text())["images"]
    asked = sorted(rows, key=lambda r: r["score"], reverse=True)[:2]
    assert all(r["vlm"]["verdict"] == VERDICT for r in asked)
    assert sum("vlm" in r for r in rows) == 2 and server.count == 2
    for req in server.requests:
        assert len(image_urls(req["body"])) == 2 and RULES[0] in text_parts(req["body"])
    assert "VLM verdicts for 2 of 2 images" in result.output and (out / "report.html").is_file()
    assert "VLM fake-vlm: " in (out / "report.html").read_text()  # the verdicts are in the page
    assert KEY.encode() not in files_bytes(out)
    bad = CliRunner().invoke(app, ["run", "--data", str(data), "--out", str(tmp_path / "o2"), "--weights", "planted",
                                   "--vlm-explain", "2"])
    assert bad.exit_code == 2 and "--vlm-model" in bad.output
