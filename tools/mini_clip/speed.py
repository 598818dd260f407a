"""Training-step speed of a mini-CLIP architecture (images/s), for choosing a config.

    python -m tools.mini_clip.speed --image-size 60 --patch-size 4 --seconds 60 --threads 1

Random pixels and real captions' token lengths; one step = forward, ClipLoss, backward and
both optimisers' steps, exactly as ``train.py`` runs it.  The first steps (warm-up) are not
timed.  The result depends on what else the machine is doing: the load average is printed.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from tools.mini_clip.train import CONFIG, build_model, load_config, normalise, optimise, optimizers  # noqa: E402


def measure(cfg: dict, batch: int, seconds: float, warmup: int = 3) -> dict:
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    model = build_model(cfg).train()
    opts = optimizers(model, 1e-3, 0.1)
    loss_fn = ClipLoss()
    size, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    tokens = torch.randint(1, 2000, (batch, ctx))
    tokens[:, 16:] = 0
    steps, t0 = 0, None
    while True:
        optimise(model, opts, loss_fn, normalise(x), tokens)
        steps += 1
        if steps == warmup:
            t0 = time.perf_counter()
        elif t0 is not None and time.perf_counter() - t0 >= seconds:
            break
    el = time.perf_counter() - t0
    return {"steps": steps - warmup, "seconds": round(el, 1), "images_per_s": round((steps - warmup) * batch / el, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--patch-size", type=int, default=None)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = copy.deepcopy(load_config(a.config))
    if a.image_size:
        cfg["vision_cfg"]["image_size"] = a.image_size
    if a.patch_size:
        cfg["vision_cfg"]["patch_size"] = a.patch_size
    v = cfg["vision_cfg"]
    grid = v["image_size"] // v["patch_size"]
    r = measure(cfg, a.batch, a.seconds)
    print(f"image {v['image_size']} px, patch {v['patch_size']} px, grid {grid}x{grid}, batch {a.batch}, "
          f"{a.threads} thread(s): {r['images_per_s']} images/s ({r['steps']} steps in {r['seconds']} s); "
          f"1-min load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
