"""Window strides: where the windows start, that every patch stays covered, that ALFA's
default geometry costs no more than WinCLIP's, and that the option travels through the
config, the record, the CLI, the service config and the export manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from alfa_ad import Detector
from alfa_ad.cli import app
from alfa_ad.config import ConfigFieldError, DetectorConfig
from alfa_ad.export.manifest import Manifest
from alfa_ad.methods.alfa import DEFAULT_SCALES, DEFAULT_STRIDES, default_window_geometry
from alfa_ad.scoring.windows import coverage_matrix, make_window_indices, window_starts

from conftest import spot_image


@pytest.mark.parametrize("length,size,stride,starts", [
    (15, 2, 1, list(range(14))),
    (15, 3, 2, [0, 2, 4, 6, 8, 10, 12]),  # 12 + 3 = 15: the last one is flush already
    (15, 4, 3, [0, 3, 6, 9, 11]),  # 9 + 4 = 13 < 15: one more, flush with the edge
    (15, 5, 3, [0, 3, 6, 9, 10]),
    (8, 5, 3, [0, 3]),
    (5, 5, 2, [0]),
])
def test_window_starts_by_hand(length, size, stride, starts):
    assert window_starts(length, size, stride) == starts


def test_strided_windows_by_hand_and_stride_one_is_unfold():
    # a 5 x 5 grid, 2 x 2 windows every 2 patches: starts 0, 2 and the flush 3 on each axis
    w = make_window_indices((5, 5), 2, 2)
    assert w.shape == (9, 4)
    assert w[0].tolist() == [0, 1, 5, 6] and w[1].tolist() == [2, 3, 7, 8] and w[2].tolist() == [3, 4, 8, 9]
    assert w[-1].tolist() == [18, 19, 23, 24]
    grid = torch.arange(15 * 20).reshape(15, 20)
    for s in (1, 2, 3, 5):
        assert torch.equal(make_window_indices((15, 20), s), grid.unfold(0, s, 1).unfold(1, s, 1).reshape(-1, s * s))
    with pytest.raises(ValueError, match="stride 0 must be 1 to 2"):
        make_window_indices((15, 15), 2, 0)


@pytest.mark.parametrize("grid", [(15, 15), (8, 8), (16, 11), (7, 24)])
def test_every_patch_is_covered_at_every_stride(grid):
    n = grid[0] * grid[1]
    for size in range(1, min(grid) + 1):
        for stride in range(1, size + 1):
            count = coverage_matrix(make_window_indices(grid, size, stride), n).sum(1)
            assert count.min() >= 1, (grid, size, stride)
        with pytest.raises(ValueError, match="would leave patches between windows uncovered"):
            make_window_indices(grid, size, size + 1)


def _tokens(grid: int, scales, strides) -> int:
    """Rows the masked aligner pushes through every block: ``1 + s^2`` per window."""
    return sum(make_window_indices((grid, grid), s, t).shape[0] * (s * s + 1) for s, t in zip(scales, strides))


def test_default_geometry_costs_no_more_than_winclip_on_a_vit_b_grid():
    """ViT-B-16-plus-240 and ViT-B/16 at 224: 15 x 15 and 14 x 14 patches.  The default's masked
    windows are at most WinCLIP's (2, 3 at stride 1) in tokens; the previous default, 2,3,4 at stride 1, was 1.9x."""
    assert (DEFAULT_SCALES, DEFAULT_STRIDES) == ((2, 3, 4, 5), (1, 2, 3, 3))
    for grid in (15, 14):
        winclip = _tokens(grid, (2, 3), (1, 1))
        assert _tokens(grid, DEFAULT_SCALES, DEFAULT_STRIDES) <= winclip
        assert _tokens(grid, (2, 3, 4), (1, 1, 1)) > 1.8 * winclip
    assert default_window_geometry((4, 4)) == ((2, 3, 4), (1, 2, 3))  # what fits a small grid
    assert default_window_geometry((1, 1)) == ((2,), (1,))  # nothing fits: the geometry's own error follows


def test_config_record_and_rebuild(planted_backbone):
    det = Detector(planted_backbone, cache_dir=None)
    assert (det.config.scales, det.config.window_strides) == ((2, 3, 4, 5), (1, 2, 3, 3))
    assert [w.shape[0] for w, _ in det.method.head.geometry()] == [196, 49, 25, 25]
    record = json.loads(json.dumps(det.config.as_dict()))
    again = Detector.from_config(record, backbone=planted_backbone, cache_dir=None)
    assert again.config == det.config and again.method.head.strides == (1, 2, 3, 3)
    # a record written before strides existed: given scales ran at stride 1, and still do
    old = {k: v for k, v in record.items() if k != "window_strides"} | {"scales": [2, 3, 4]}
    assert Detector.from_config(old, backbone=planted_backbone, cache_dir=None).config.window_strides == (1, 1, 1)
    one = Detector(planted_backbone, cache_dir=None, scales=(2, 3), window_strides=(2,))
    assert one.method.head.strides == (2, 2)
    assert Detector(planted_backbone, cache_dir=None, method="winclip").config.window_strides == (1, 1)
    # checked by the config, before any model loads: count, range, type
    with pytest.raises(ConfigFieldError, match="window strides 1,2,3: give one stride >= 1 per scale \\(2,3\\)"):
        DetectorConfig(scales=(2, 3), window_strides=(1, 2, 3))
    with pytest.raises(ConfigFieldError, match="window strides 1,2: give one stride >= 1 per scale \\(2,3,4,5\\)"):
        DetectorConfig(window_strides=(1, 2))  # ALFA's default scales
    with pytest.raises(ConfigFieldError, match="window stride 3 is longer than its window \\(2 patches\\)"):
        DetectorConfig(scales=(2, 3), window_strides=(3,))
    for bad in (True, "2", (2.5,), ("2",)):
        with pytest.raises(ConfigFieldError, match="window_strides must be integers"):
            DetectorConfig(window_strides=bad)
    assert DetectorConfig(window_strides=2).window_strides == (2,)
    assert DetectorConfig(scales=[np.int64(2), np.int64(3)]).scales == (2, 3)
    # new scales over a built config: stride 1 again, as for a new one (the old strides were the old scales')
    paper = Detector(config=det.config, backbone=planted_backbone, cache_dir=None, preset="paper")
    assert paper.config.window_strides == (1, 1)
    for scales in ((2, 3), (3, 4, 5, 6)):
        again = Detector(config=det.config, backbone=planted_backbone, cache_dir=None, scales=scales)
        assert again.config.window_strides == (1,) * len(scales)
    again = Detector.from_config(record, backbone=planted_backbone, cache_dir=None, scales=(2, 3), window_strides=2)
    assert again.config.window_strides == (2, 2)
    with pytest.raises(ValueError, match="anomalib_compat reproduces anomalib's windows at stride 1"):
        Detector(planted_backbone, cache_dir=None, method="winclip", window_strides=(2,),
                 options={"anomalib_compat": True})
    with pytest.raises(ValueError, match="patchknn scores patches, not windows: window strides"):
        Detector(planted_backbone, cache_dir=None, method="patchknn", window_strides=(2,))


def _corner_spot_map(det: Detector) -> tuple[float, float, bool]:
    """The planted cue on the last two patch rows and columns of a 240 x 240 image: the map's
    mean on it, its median elsewhere, and whether the map's peak is on it."""
    img, mask = spot_image(240, 240, box=(208, 208, 240, 240))
    amap = np.asarray(det.predict([Image.fromarray(img)])[0].anomaly_map)
    return float(amap[mask].mean()), float(np.median(amap[~mask])), bool(mask.flat[amap.argmax()])


def test_planted_corner_spot_needs_the_flush_edge_window(planted_backbone):
    """The strided default finds a cue in the last patch rows and columns; a broken variant whose
    strided windows stop short of the far edge (plain ``unfold``) leaves the last patch row and
    column uncovered at scales 4 and 5, and its map there collapses."""
    det = Detector(planted_backbone, cache_dir=None, tile="none")
    on_spot, elsewhere, peak_on_spot = _corner_spot_map(det)
    assert on_spot > elsewhere + 0.1 and peak_on_spot, (on_spot, elsewhere)

    broken = Detector(planted_backbone, cache_dir=None, tile="none")
    head, n = broken.method.head, 15 * 15
    grid = torch.arange(n).reshape(15, 15)
    for i, (s, t) in enumerate(zip(head.scales, head.strides)):
        w = grid.unfold(0, s, t).unfold(1, s, t).reshape(-1, s * s)
        setattr(head, f"windows_{i}", w)
        setattr(head, f"cover_{i}", coverage_matrix(w, n))
    broken_on_spot, broken_elsewhere, broken_peak_on_spot = _corner_spot_map(broken)
    assert broken_on_spot < broken_elsewhere and not broken_peak_on_spot, (broken_on_spot, broken_elsewhere)


def test_cli_and_service_config(tmp_path):
    from alfa_ad.cli.serve import merged_record
    from alfa_ad.serve.config import ConfigError, detector_kwargs

    runner = CliRunner()
    img = tmp_path / "one"
    img.mkdir()
    Image.fromarray(spot_image(240, 240)[0]).save(img / "a.png")
    bad = runner.invoke(app, ["run", "--data", str(img), "--out", str(tmp_path / "o"), "--weights", "planted",
                              "--scales", "2,3", "--window-strides", "1,2,3"])
    assert bad.exit_code != 0 and "--window-strides 1,2,3: give one stride >= 1 per scale" in bad.output
    ok = runner.invoke(app, ["run", "--data", str(img), "--out", str(tmp_path / "o"), "--weights", "planted",
                             "--scales", "2,3", "--window-strides", "2", "--no-overlays"])
    assert ok.exit_code == 0, ok.output
    config = json.loads((tmp_path / "o" / "scores.json").read_text())["config"]
    assert config["window_strides"] == [2, 2] and config["detector"]["window_strides"] == [2, 2]
    assert detector_kwargs({"window_strides": "1,2,3,3"})["window_strides"] == (1, 2, 3, 3)
    assert detector_kwargs({"window_strides": 2})["window_strides"] == (2,)
    for bad in (True, [2.5], "a"):
        with pytest.raises(ConfigError, match="window_strides: must be integers"):
            detector_kwargs({"window_strides": bad})
    with pytest.raises(ConfigError, match="window_strides: patchknn scores patches, not windows"):
        detector_kwargs({"method": "patchknn", "window_strides": 2})
    # a CLI --scales over a config file drops the file's strides (they were for the file's scales)
    cfg = tmp_path / "serve.json"
    cfg.write_text(json.dumps({"scales": [2, 3, 4, 5], "window_strides": [1, 2, 3, 3]}))
    assert "window_strides" not in merged_record(cfg, {"scales": "2,3"})
    assert merged_record(cfg, {})["window_strides"] == [1, 2, 3, 3]
    # one-line errors before torch loads: what only the method knows, from its registry line
    for args, message in ((["--method", "patchknn", "--shots", "1", "--normals", str(img)],
                           "--window-strides: patchknn scores patches"),
                          (["--method", "winclip", "--anomalib-compat"], "--anomalib-compat reproduces anomalib's")):
        res = runner.invoke(app, ["run", "--data", str(img), "--out", str(tmp_path / "x"), "--weights", "planted",
                                  "--window-strides", "2", *args])
        assert res.exit_code != 0 and message in res.output, res.output


def test_manifest_check_reads_old_exports_as_stride_one():
    old = Manifest(format="onnx", precision="fp32", file="model.onnx", opset=18, versions={}, quantization=None,
                   classes={}, identity={"scales": [2, 3]}, inputs=("pixels",), outputs=("scores",))
    old.check({"scales": [2, 3], "window_strides": [1, 1]})
    with pytest.raises(ValueError, match="made with window_strides=\\[1, 1\\], this run uses window_strides=\\[2, 2\\]"):
        old.check({"scales": [2, 3], "window_strides": [2, 2]})
