"""Prompt learning: planted-model AUROCs before and after learning, and learning time.

    python benchmarks/accuracy/learned_prompts.py planted            # AUROCs (planted model, generated images)
    python benchmarks/accuracy/learned_prompts.py timing --epochs 4  # CPU time for k = 1, 2, 4 (random ViT-B-16-plus-240)

``planted``: hand-written prompts that miss the planted cue (``unusual`` / ``strange``:
no cue word, so they embed like the normal prompts) or that carry it (``damaged``,
``with a defect``); prompts learned from k = 2 generated grey normal images with the
default configuration (100 epochs), with and without synthetic defects; image and
pixel AUROC on 6 painted and 4 clean generated images (the tests' set).

``timing``: wall and process CPU seconds of ``learn_prompts`` on the train images of
``--data``; the features (once) and then the per-epoch cost are reported apart, and
the 100-epoch figure is ``features + 99 x per-epoch`` CPU seconds.  On a shared,
loaded machine wall time says little; CPU seconds are what the work costs.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def planted(epochs: int) -> None:
    from test_learned_training import ALIGNED, MISALIGNED, _aurocs, planted_images

    from alfa_ad import Detector
    from alfa_ad.learning import LearnConfig, learn_prompts
    from alfa_ad.model.factory import load_backbone
    from alfa_ad.prompting.learned import LearnedPromptSource

    from conftest import grey_texture

    bb = load_backbone(weights="planted", device="cpu")
    data = planted_images()
    shots = [grey_texture(240, 240, seed=100 + j) for j in range(2)]
    for name, hand in (("misaligned", MISALIGNED), ("aligned", ALIGNED)):
        before = _aurocs(Detector(bb, sources=[hand], cache_dir=None), data)
        print(f"{name} hand-written prompts, zero-shot: image AUROC {before[0]:.3f}, pixel AUROC {before[1]:.3f}")
        for synthetic in (16, 0):
            t = time.process_time()
            lp = learn_prompts(bb, {"widget": shots}, LearnConfig(epochs=epochs, synthetic=synthetic), seed=0, k=2,
                               handwritten={"widget": [p.format("widget") for p in hand.abnormal]})
            cpu = time.process_time() - t
            src = LearnedPromptSource(lp, bb)
            both = _aurocs(Detector(bb, sources=[hand, src], cache_dir=None), data)
            alone = _aurocs(Detector(bb, sources=[src], cache_dir=None), data)
            print(f"  + learned ({synthetic} synthetic defects, {epochs} epochs, {cpu:.1f} s CPU): image {both[0]:.3f}, "
                  f"pixel {both[1]:.3f}; learned prompts alone: image {alone[0]:.3f}, pixel {alone[1]:.3f}")


def timing(data: str, epochs: int) -> None:
    from alfa_ad.learning import LearnConfig, learn_prompts
    from alfa_ad.model.factory import load_backbone

    bb = load_backbone(weights="random", device="cpu")
    images = sorted(glob.glob(str(Path(data) / "train" / "good" / "*")))
    for k in (1, 2, 4):
        stamps: list[tuple[float, float]] = []
        c0, t0 = time.process_time(), time.perf_counter()
        learn_prompts(bb, {"c": images[:k]}, LearnConfig(epochs=epochs), seed=0, k=k,
                      on_epoch=lambda *_: stamps.append((time.perf_counter(), time.process_time())))
        n = max(1, len(stamps) - 1)
        feat_cpu = stamps[0][1] - c0
        per_cpu = (stamps[-1][1] - stamps[0][1]) / n
        print(f"k={k}: {epochs} epochs in {time.perf_counter() - t0:.1f} s wall / {time.process_time() - c0:.1f} s "
              f"CPU; features + first epoch {feat_cpu:.1f} s CPU, then {per_cpu:.2f} s CPU per epoch; "
              f"100 epochs ~ {feat_cpu + 99 * per_cpu:.0f} s CPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["planted", "timing"])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--data", default="../shared/data/hazelnut_toy/hazelnut_toy")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    np.seterr(all="ignore")
    planted(args.epochs) if args.what == "planted" else timing(args.data, args.epochs)


if __name__ == "__main__":
    main()
