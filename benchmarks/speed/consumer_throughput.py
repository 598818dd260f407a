"""Images/s of the driver-side consumer alone: what one process can write when
an engine (Ray actors on GPUs, say) hands it results faster than it can take them.

    python benchmarks/speed/consumer_throughput.py                 # ../shared/data/hazelnut_toy, 3 passes
    python benchmarks/speed/consumer_throughput.py --passes 5 --no-overlays

An engine that scores nothing yields ready-made results (a smooth random map at each
image's size, as ``Detector.predict`` returns it), so the time measured is the consumer's:
dataset order, score rows, ground truth, pixel metrics, masks and, unless
``--no-overlays``, the overlays.  Nothing is asserted; the figure is printed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from alfa_ad.engines import Engine, Scored
from alfa_ad.io.datasets import discover
from alfa_ad.outputs.record import RunOptions
from alfa_ad.results import DetectionResult
from alfa_ad.runner import run_dataset

DATA = Path("../shared/data/hazelnut_toy")


class ReadyResults(Engine):
    name = "ready-results"

    def run(self, detector, jobs, explain=0):
        for job in jobs:
            yield job, self._stream(job)

    @staticmethod
    def _stream(job):
        rng = np.random.default_rng(0)
        for i, s in enumerate(job.samples):
            with Image.open(s.path) as im:
                w, h = im.size
            small = rng.random((15, 15)).astype(np.float32)
            amap = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
            yield Scored(i, s, DetectionResult(score=float(amap.max()), anomaly_map=amap, global_score=0.5,
                                               kept_prompts={"normal": [], "abnormal": []},
                                               n_prompts={"normal": 0, "abnormal": 0}, method="none",
                                               weights="none"))


class _Detector:  # what run_dataset asks of a detector when the engine does the scoring
    batch_size = 8
    prompt_classes: dict = {}
    sources: list = []

    def prompts(self, name):
        from alfa_ad.prompting import PromptSet

        return PromptSet(["a"], ["b"], ["template"], ["template"])

    def explanation_candidates(self, name):
        return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--no-overlays", action="store_true")
    args = ap.parse_args()
    dataset, _ = discover(args.data)
    dataset = {f"{c}_{p}": [s.__class__(**{**s.__dict__, "class_name": f"{c}_{p}"}) for s in v]
               for p in range(args.passes) for c, v in dataset.items()}
    n = sum(len(v) for v in dataset.values())
    record = {"version": "bench", "weights": "none", "weights_source": {"source": "random"}, "detector": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report = run_dataset(_Detector(), dataset, Path(tmp), record, RunOptions(data=str(args.data)),
                             overlays=not args.no_overlays, engine=ReadyResults())
        wall = time.perf_counter() - t0
    print(f"{len(report.rows)} of {n} images ({args.data.name}, overlays {'off' if args.no_overlays else 'on'}): "
          f"{wall:.1f} s, {len(report.rows) / wall:.1f} images/s through the consumer")


if __name__ == "__main__":
    main()
