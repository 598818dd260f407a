"""Batch size chosen by memory (``--batch-size auto``).

No GPU here: the probe is driven by a fake memory counter whose peak follows the batch
the method really received (a forward hook), so a probe that ran the wrong batch, read
the peaks wrongly or forgot to probe again after a fit gives a different batch size.
"""

from __future__ import annotations

import pytest
import torch

import alfa_ad.detector as detector_module
from alfa_ad import Detector
from alfa_ad.config import DetectorConfig
from alfa_ad.model.batch_memory import CPU_BATCH, auto_batch_size, batch_for_memory, probe_batch_size

from conftest import grey_texture, spot_image

MB = 2**20


def test_batch_for_memory_by_hand():
    # 0.8 * 10000 MB - 1000 MB fixed = 7000 MB; 7000 / 500 per image = 14
    assert batch_for_memory(10_000 * MB, 1_000 * MB, 500 * MB) == 14
    assert batch_for_memory(10_000 * MB, 1_000 * MB, 500 * MB, fraction=0.5) == 8  # (5000 - 1000) / 500
    assert batch_for_memory(10_000 * MB, 1_000 * MB, 1 * MB) == 64  # capped
    assert batch_for_memory(10_000 * MB, 1_000 * MB, 1 * MB, cap=16) == 16
    assert batch_for_memory(1_000 * MB, 1_000 * MB, 500 * MB) == 1  # nothing fits: still one image
    assert batch_for_memory(1_000 * MB, 0, 0) == 64


class FakeCounter:
    """Peak = what was allocated + ``fixed`` + ``per_image`` x the batch the model last saw."""

    def __init__(self, free: int, fixed: int, per_image: int, allocated: int = 3_000 * MB) -> None:
        self.free_bytes, self.fixed, self.per_image, self.base = free, fixed, per_image, allocated
        self.last_batch = 0
        self.resets = 0

    def free(self) -> int:
        return self.free_bytes

    def allocated(self) -> int:
        return self.base

    def reset_peak(self) -> None:
        self.resets += 1
        self.last_batch = 0

    def peak(self) -> int:
        return self.base + (self.fixed + self.per_image * self.last_batch if self.last_batch else 0)


def test_probe_reads_two_batches():
    counter = FakeCounter(free=20_000 * MB, fixed=2_000 * MB, per_image=700 * MB)
    seen = []

    def run(n):
        seen.append(n)
        counter.last_batch = n

    # (0.8 * 20000 - 2000) / 700 = 20
    assert probe_batch_size(run, counter) == 20
    assert seen == [1, 2] and counter.resets == 2


def test_auto_on_the_cpu_runs_nothing():
    def run(n):
        raise AssertionError("no probe on the CPU")

    assert auto_batch_size(run, torch.device("cpu")) == CPU_BATCH


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("AUTO", "auto"), ("4", 4), (3, 3)])
def test_config_accepts_integers_and_auto(value, expected):
    cfg = DetectorConfig(batch_size=value)
    assert cfg.batch_size == expected
    assert DetectorConfig.from_dict(cfg.as_dict()).batch_size == expected


@pytest.mark.parametrize("value", [0, -1, "x", "2.5", 2.5])
def test_config_rejects_other_batch_sizes(value):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1 or auto"):
        DetectorConfig(batch_size=value)


def test_detector_probes_with_its_method_and_again_after_a_fit(planted_backbone, monkeypatch):
    counter = FakeCounter(free=10_000 * MB, fixed=1_000 * MB, per_image=500 * MB)
    probes = []

    def on_gpu(run, device):  # the CUDA path, with the fake counter
        probes.append(device)
        return probe_batch_size(run, counter)

    monkeypatch.setattr(detector_module, "auto_batch_size", on_gpu)
    det = Detector(planted_backbone, cache_dir=None, llm_prompts=False, tile="none", batch_size="auto")
    method_call = type(det.method).__call__

    def counted(self, pixels, *args, **kwargs):  # the peak follows the batch the method receives
        counter.last_batch = pixels.shape[0]
        return method_call(self, pixels, *args, **kwargs)

    monkeypatch.setattr(type(det.method), "__call__", counted)
    assert det.batch_size == 14  # (0.8 * 10000 - 1000) / 500
    assert len(probes) == 1
    results = det.predict([spot_image(seed=i)[0] for i in range(3)], "widget")
    assert len(results) == 3 and len(probes) == 1  # probed once, not per batch
    counter.per_image = 1_000 * MB  # a memory bank makes each image dearer
    det.fit_normals([grey_texture(200, 320, seed=i) for i in range(2)])
    assert det.batch_size == 7  # (8000 - 1000) / 1000: probed again after the fit
    assert len(probes) == 2
    assert det.config.batch_size == "auto"
    assert Detector.from_config(det.config.as_dict(), backbone=planted_backbone, cache_dir=None).config.batch_size == "auto"


def test_auto_batch_size_on_the_cpu_gives_the_same_scores(planted_backbone):
    images = [spot_image(seed=i)[0] for i in range(3)]
    auto = Detector(planted_backbone, cache_dir=None, llm_prompts=False, batch_size="auto")
    fixed = Detector(planted_backbone, cache_dir=None, llm_prompts=False, batch_size=1)
    assert auto.batch_size == CPU_BATCH
    a, b = auto.predict(images, "widget"), fixed.predict(images, "widget")
    assert [r.score for r in a] == pytest.approx([r.score for r in b], abs=1e-5)
