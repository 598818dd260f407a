"""Start-up of a one-image CLI run with weights from a local file.

    python benchmarks/speed/cli_startup.py                       # ViT-B-16-plus-240, random weights saved to a file
    python benchmarks/speed/cli_startup.py --format safetensors --runs 5

Writes a ViT-B-16-plus-240 state dict (random weights, about 833 MB) to a temporary
folder once, then times ``alfa-ad run --checkpoint FILE --data ONE_IMAGE --no-overlays``
as a fresh process ``--runs`` times: wall time and the whole process's peak RSS
(``ru_maxrss`` of the child).  The first run is cold (it hashes the file and encodes
the prompts); the later ones are warm (hash and text embeddings come from the cache).
Prints every run and the median of the warm ones (targets: <= 5 s, <= 1.5 GB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--format", choices=("pt", "safetensors"), default="pt")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "alfa-ad-startup"))
    args = ap.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / f"{args.model}-random.{args.format}"
    if not ckpt.is_file():
        import torch

        from alfa_ad.model import load_backbone

        state = load_backbone(args.model, weights="random", seed=0, device="cpu").clip.state_dict()
        if args.format == "pt":
            torch.save(state, ckpt)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    image = folder / "part.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 240, 3), dtype=np.uint8)).save(image)
    env = {**os.environ, "ALFA_AD_CACHE": str(folder / "cache")}
    cmd = ["alfa-ad", "run", "--checkpoint", str(ckpt), "--model", args.model, "--data", str(image),
           "--out", str(folder / "out"), "--no-overlays", "--no-llm"]
    print(f"checkpoint {ckpt} ({ckpt.stat().st_size / 2**20:.0f} MB)")
    # peak RSS of each run alone: each measurement runs in its own short-lived parent
    results = []
    for i in range(args.runs):
        probe = subprocess.run([sys.executable, "-c", (
            "import resource, subprocess, sys, time, json;"
            "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True);"
            "w = time.perf_counter() - t;"
            "print(json.dumps([p.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))"),
            *cmd], env=env, capture_output=True, text=True)
        import json

        rc, wall, peak = json.loads(probe.stdout)
        if rc != 0:
            sys.exit("run failed")
        results.append((wall, peak))
        print(f"run {i + 1} ({'cold' if i == 0 else 'warm'}): {wall:.2f} s, peak RSS {peak:.0f} MB")
    warm = results[1:] or results
    print(f"warm median: {statistics.median(w for w, _ in warm):.2f} s, "
          f"{statistics.median(p for _, p in warm):.0f} MB peak RSS (targets <= 5 s, <= 1536 MB)")


if __name__ == "__main__":
    main()
