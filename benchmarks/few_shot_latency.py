"""Per-image latency added by the few-shot memory bank, and the bank's size.

    python benchmarks/few_shot_latency.py                    # 1, 4 and 200 normals, ALFA, CPU
    python benchmarks/few_shot_latency.py --normals 1,4 --method winclip

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
import time

import numpy as np
import torch
from PIL import Image

from _timing import median_seconds

from alfa_ad import Detector
from alfa_ad.model import load_backbone



def memory_step(det: Detector, image: np.ndarray):
    """The work the bank adds for one image: nearest-neighbour maps from the query's features."""
    method, bb = det.method, det.backbone
    pixels = bb.preprocess([Image.fromarray(image)])
    if method.name == "alfa":
        with torch.inference_mode():
            _, caps = bb.penultimate_with(bb.tokens(pixels), method.memory_layers)

        def step() -> None:
            with torch.inference_mode():
                method._memory_map(caps)
    else:
        with torch.inference_mode():
            _, windows, patches = method._encode(pixels)
        from alfa_ad.scoring.memory import nearest_neighbour_distance
        from alfa_ad.scoring.windows import harmonic_aggregation

        def step() -> None:
            with torch.inference_mode():
                nearest_neighbour_distance(patches, method.ref_patches)
                for emb, ref, cover in zip(windows, method.ref_windows, method.geometry.covers):
                    harmonic_aggregation(nearest_neighbour_distance(emb, ref), cover)
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
        tensors = det.method.bank if args.method == "alfa" else [det.method.ref_patches, *det.method.ref_windows]
        mb = sum(t.numel() * t.element_size() for t in tensors) / 2**20
        per = median_seconds(lambda: det.predict([query], "bottle"), args.repeats)
        added = median_seconds(memory_step(det, query), args.repeats * 4)
        print(f"  {n:4d} normals: bank {bank:6d} features (~{mb:.1f} MB), fit {fit:6.1f} s, "
              f"memory-bank step {added * 1000:6.1f} ms, per image {per * 1000:7.1f} ms")
        det.clear_normals()


if __name__ == "__main__":
    main()
