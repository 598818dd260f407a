"""Anomaly region refinement (alfa_ad/scoring/refine.py, ``--refine``): the propagation
with hand-computed numbers, the coarse-to-fine order (the reversed order fails the same
checks), the grid/model-resolution identity, and the detector, record and CLI paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from alfa_ad import Detector
from alfa_ad.cli import app
from alfa_ad.scoring.refine import RegionRefiner, affinity, default_layers, propagate

from conftest import spot_image

A1 = torch.tensor([[[1.0, 0, 0], [0, 0.5, 0.5], [0, 0.5, 0.5]]])  # the "deep" block: patches 2 and 3 alike
A2 = torch.tensor([[[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]]])  # the "shallow" block: patches 1 and 2 alike


def test_propagation_by_hand_and_its_order():
    m = torch.tensor([[1.0, 0.0, 0.0]])
    # alpha 1: A2 (A1 m) = A2 [1, 0, 0] = [.5, .5, 0]
    assert torch.allclose(propagate(m, [A1, A2], alpha=1.0), torch.tensor([[0.5, 0.5, 0.0]]))
    # alpha .5: step 1 keeps [1, 0, 0]; step 2: .5 [1, 0, 0] + .5 [.5, .5, 0] = [.75, .25, 0]
    assert torch.allclose(propagate(m, [A1, A2], alpha=0.5), torch.tensor([[0.75, 0.25, 0.0]]))
    # the wrong order (fine to coarse): A1 (A2 m) = [.5, .25, .25], not the numbers above
    wrong = propagate(m, [A2, A1], alpha=1.0)
    assert torch.allclose(wrong, torch.tensor([[0.5, 0.25, 0.25]]))
    assert not torch.allclose(wrong, propagate(m, [A1, A2], alpha=1.0))


def test_affinity_is_the_softmax_of_centred_cosines():
    x = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])  # mean (1, 1): centred (1,-1), (-1,1), (0,0)
    a = affinity(x, temperature=0.5)
    c = F.normalize(x - x.mean(1, keepdim=True), dim=-1)[0]
    cos = c @ c.T  # [[1, -1, 0], [-1, 1, 0], [0, 0, 0]]
    assert torch.allclose(cos, torch.tensor([[1.0, -1, 0], [-1, 1, 0], [0, 0, 0]]))
    row0 = torch.softmax(torch.tensor([1.0, -1.0, 0.0]) / 0.5, 0)
    assert torch.allclose(a[0, 0], row0, atol=1e-6)
    assert torch.allclose(a.sum(-1), torch.ones(1, 3))
    # uncentred tokens all look alike (positive cosines): centring is what separates them
    raw = torch.softmax(F.normalize(x, dim=-1)[0] @ F.normalize(x, dim=-1)[0].T / 0.5, -1)
    assert raw[0, 1] > 2 * a[0, 0, 1]
    # a constant map stays constant
    assert torch.allclose(propagate(torch.full((1, 3), 0.3), [a, a]), torch.full((1, 3), 0.3))


def test_default_layers_are_deepest_first():
    assert default_layers(12) == (11, 8, 5)
    assert default_layers(4) == (3, 2, 1)
    assert default_layers(1) == (0,)


@torch.inference_mode()
def test_refiner_reads_the_blocks_in_the_order_given(planted_backbone):
    bb = planted_backbone
    img, _ = spot_image(240, 240, (40, 40, 110, 110), seed=2)
    pixels = bb.preprocess([__import__("PIL.Image", fromlist=["Image"]).fromarray(img)])
    layers = default_layers(bb.depth)
    ref = RegionRefiner(bb, layers)
    tokens = ref.block_tokens(pixels)
    z, caps = bb.penultimate_with(bb.tokens(pixels), [i for i in layers if i != bb.depth - 1])
    expected = {i: c[:, 1:] for i, c in zip([i for i in layers if i != bb.depth - 1], caps)}
    expected[bb.depth - 1] = bb.global_embedding(z)[1][:, 1:]
    for i, t in zip(layers, tokens):
        assert torch.equal(t, expected[i]), i
    # the refined grid map is the propagation with the affinities in the given order
    grid = torch.rand(1, *bb.grid)
    maps = F.interpolate(grid[:, None], size=bb.image_size, mode="bilinear", align_corners=False)[:, 0]
    out = ref(pixels, maps)
    affs = [affinity(t) for t in tokens]
    assert torch.allclose(out.after.flatten(1), propagate(out.before.flatten(1), affs), atol=1e-6)
    reversed_ = RegionRefiner(bb, tuple(reversed(layers)))(pixels, maps)
    assert not torch.allclose(reversed_.after, out.after, atol=1e-4)  # the order matters
    # at model resolution: the method's map plus the upsampled grid change
    change = F.interpolate((out.after - out.before)[:, None], size=bb.image_size, mode="bilinear",
                           align_corners=False)[:, 0]
    assert torch.allclose(out.maps, maps + change, atol=1e-6)


def test_refiner_rejects_blocks_out_of_range(planted_backbone):
    with pytest.raises(ValueError, match="out of range"):
        RegionRefiner(planted_backbone, (planted_backbone.depth,))


def test_detector_refines_maps_not_scores_and_records_it(planted_backbone):
    img, mask = spot_image(240, 240, (40, 40, 110, 110), seed=3)
    plain = Detector(planted_backbone, cache_dir=None)
    refined = Detector(planted_backbone, cache_dir=None, refine=True)
    a, b = plain(img, "widget"), refined(img, "widget")
    assert a.score == b.score and not np.allclose(a.anomaly_map, b.anomaly_map)
    assert refined.config.refine_layers == default_layers(planted_backbone.depth)
    record = refined.config.as_dict()
    assert record["refine"] is True and record["refine_layers"] == list(default_layers(planted_backbone.depth))
    again = Detector.from_config(record, backbone=planted_backbone, cache_dir=None)
    assert np.array_equal(again(img, "widget").anomaly_map, b.anomaly_map)
    assert plain.refiner is None


def test_leave_one_out_calibration_with_refinement_is_refused(planted_backbone):
    det = Detector(planted_backbone, cache_dir=None, refine=True)
    normals = [spot_image(240, 240, (0, 0, 1, 1), seed=s)[0] for s in range(3)]
    det.fit_normals(normals)
    with pytest.raises(ValueError, match="calibrate on normal images"):
        det.calibrate()
    assert det.calibrate(normals[:2]).n_images == 2  # calibration images work


def test_cli_refine(tmp_path):
    from alfa_ad.demo import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_good=1, n_defect=1)
    runner = CliRunner()
    bad = runner.invoke(app, ["run", "--data", str(data), "--out", str(tmp_path / "o1"), "--weights", "planted",
                              "--refine-layers", "1,0"])
    assert bad.exit_code != 0 and "--refine-layers applies with --refine" in bad.stderr
    bad = runner.invoke(app, ["run", "--data", str(data), "--out", str(tmp_path / "o2"), "--weights", "planted",
                              "--refine", "--refine-layers", "x"])
    assert bad.exit_code != 0 and len(bad.stderr.strip().splitlines()) == 1 and "refine" in bad.stderr
    ok = runner.invoke(app, ["run", "--data", str(data), "--out", str(tmp_path / "o3"), "--weights", "planted",
                             "--refine", "--refine-layers", "1,0", "--no-overlays"])
    assert ok.exit_code == 0, ok.output
    record = json.loads((tmp_path / "o3" / "metrics.json").read_text())["config"]["detector"]
    assert record["refine"] is True and record["refine_layers"] == [1, 0]
