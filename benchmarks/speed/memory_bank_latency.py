"""Per-image latency added by the few-shot memory bank, and the bank's size.

    python benchmarks/speed/memory_bank_latency.py                    # 1, 4 and 200 normals, ALFA, CPU
    python benchmarks/speed/memory_bank_latency.py --normals 1,4 --method winclip

ViT-B-16-plus-240 with random weights (speed does not depend on weight values),
240 px images.  For each number of normals the bank is built (with greedy
coreset subsampling to ``--coreset`` features per layer, the CLI default), then
one image is scored ``--repeats`` times after a warm-up.  Two figures: the
memory-bank step alone (nearest-neighbour search of the query's patch features in
the bank and the map, timed directly: the latency the bank adds), and the
end-to-end per-image time next to the zero-shot one (noisier: both include the
~0.5 s forward pass).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alfa_ad import Detector
from alfa_ad.aligners import encode
from alfa_ad.model import load_backbone
from alfa_ad.model.preprocess import image_to_tensor, resize_to_model
from alfa_ad.scoring.fewshot import visual_map

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common helpers
from _common.timing import median_seconds  # noqa: E402


def memory_step(det: Detector, image: np.ndarray):
    """The work the bank adds for one image: the nearest-neighbour maps of the query's token
    sets (patch features; WinCLIP+ also window embeddings) against the fitted references."""
    method, bb = det.method, det.backbone
    pixels = resize_to_model([image_to_tensor(Image.fromarray(image))], bb.image_size, bb.mean, bb.std, bb.device,
                             bb.dtype)
    with torch.inference_mode():
        if method.name == "winclip":
            _, windows, feats = method.window_features(pixels, method.scorer.capture)
            tokens = method.scorer.tokens(feats.caps, feats.last, windows)
        else:
            feats = encode(bb, pixels, method.scorer.capture)
            tokens = method.scorer.tokens(feats.caps, feats.last)

    def step() -> None:
        with torch.inference_mode():
            visual_map(tokens, method.export_bank(), method.covers())

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--normals", default="1,4,200")
    ap.add_argument("--coreset", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--method", default="alfa")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    backbone = load_backbone("ViT-B-16-plus-240", weights="random", seed=0, device=args.device)
    det = Detector(backbone, method=args.method, cache_dir=None)
    rng = np.random.default_rng(0)
    h, w = backbone.image_size
    query = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    det.predict([query], "bottle")
    base = median_seconds(lambda: det.predict([query], "bottle"), args.repeats)
    print(f"{args.method}, ViT-B-16-plus-240 random weights, {w}x{h}, device {backbone.device}, "
          f"torch threads {torch.get_num_threads()}; zero-shot per image {base * 1000:.1f} ms")
    for n in (int(v) for v in args.normals.split(",")):
        normals = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]
        t = time.perf_counter()
        det.fit_normals(normals, coreset=args.coreset)
        fit = time.perf_counter() - t
        bank = det.method.bank_size
        tensors = det.method.export_bank().sets
        mb = sum(t.numel() * t.element_size() for t in tensors) / 2**20
        per = median_seconds(lambda: det.predict([query], "bottle"), args.repeats)
        added = median_seconds(memory_step(det, query), args.repeats * 4)
        print(f"  {n:4d} normals: bank {bank:6d} features (~{mb:.1f} MB), fit {fit:6.1f} s, "
              f"memory-bank step {added * 1000:6.1f} ms, per image {per * 1000:7.1f} ms")
        det.clear_normals()


if __name__ == "__main__":
    main()
