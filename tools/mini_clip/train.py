"""Train the mini-CLIP contrastively on procedural scenes (CPU; docs/mini_clip.md).

The shipped weights come from three stages, from scratch, each later one starting
from the previous one's output (docs/mini_clip.md has the times; the logs are in
docs/mini_clip_training.log)::

    python -m tools.mini_clip.train --seed 4 --steps 2500 --batch 128 --variants 2 --pool 6000 \
        --lr 2e-3 --warmup 100 --eval-every 250 --monitor 192 --state-mix 0,0.6,0.3,0.4 \
        --out runs/mini_clip/stage1.safetensors
    python -m tools.mini_clip.train --seed 5 --init runs/mini_clip/stage1.safetensors --steps 4000 \
        --stop-after 1000 --batch 128 --variants 2 --pool 6000 --lr 1.5e-3 --warmup 50 --eval-every 500 \
        --monitor 192 --state-mix 0,0.6,0.3,0.4 --out runs/mini_clip/stage2.safetensors
    python -m tools.mini_clip.train --seed 6 --init runs/mini_clip/stage2.safetensors --steps 1000 \
        --batch 128 --variants 2 --pool 6000 --lr 1e-3 --warmup 20 --eval-every 500 --monitor 192 \
        --state-mix 0,0.6,0.3,0.4 --out runs/mini_clip/stage3.safetensors
    cp runs/mini_clip/stage3.safetensors alfa_ad/model/shipped/mini_clip.safetensors

Every batch holds 64 scenes, each rendered intact and with one defect, and every
caption states the part's condition (``--state-mix``), so half of what the loss can
learn within a batch is "this part is damaged".

First ``--pool`` training scenes (stream ``TRAIN_STREAM``, keys ``[seed, index]``) are
rendered once, each ``--variants`` times: intact and with different defects allowed
in training.  A batch is ``batch / variants`` whole scene groups (a seeded
permutation per epoch), each rendering with a caption drawn for ``(seed, step)``,
so the contrastive (InfoNCE) loss has to tell a part from the same part with a
defect, and one defect from another.  The model is ``open_clip.model.CLIP`` built
from the config JSON; the loss is open_clip's ``ClipLoss``; AdamW with linear
warm-up and cosine decay.  Everything depends only on the seed, so a run is
deterministic (for a given torch version and thread count).  Weights are saved in
fp16 as safetensors with the training facts in the file's metadata.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads on a busy machine

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.mini_clip.captions import STATE_MIX, caption  # noqa: E402
from tools.mini_clip.scenes import eval_rng, render_variants, sample_scene, train_rng  # noqa: E402
from tools.mini_clip.vocab import HELD_OUT, OBJECTS, allowed_defects, readable  # noqa: E402

CONFIG = REPO / "alfa_ad" / "model" / "shipped" / "alfa-mini-clip.json"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
MONITOR_NORMAL = ("a photo of a flawless {}.", "a photo of a {} without defect.", "a photo of a normal {}.")
MONITOR_ABNORMAL = ("a photo of a damaged {}.", "a photo of a {} with a defect.", "a photo of a broken {}.")


def load_config(path: Path = CONFIG) -> dict:
    return json.loads(Path(path).read_text())


def build_model(cfg: dict):
    from open_clip.model import CLIP

    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])


def _render_group(args):
    """One training scene rendered intact and with ``variants - 1`` different defects."""
    seed, index, size, variants = args
    rng = train_rng(seed, index)
    scene = sample_scene(rng, training=True, defect=None)
    options = allowed_defects(scene.kind, True)
    defects = [None] + [str(d) for d in rng.choice(options, variants - 1, replace=False)]
    images = np.stack([img for img, _ in render_variants(scene, defects, size)])
    return images, [scene.with_defect(d) for d in defects]


def render_pool(seed: int, scenes: int, size: int, variants: int, workers: int):
    """``(uint8 images (scenes, variants, H, W, 3), scene records)``: the training images,
    rendered once (the model then sees each several times, with freshly drawn captions)."""
    jobs = [(seed, i, size, variants) for i in range(scenes)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            out = pool.map(_render_group, jobs, chunksize=32)
    else:
        out = [_render_group(j) for j in jobs]
    return np.stack([o[0] for o in out]), [o[1] for o in out]


class PoolBatches:
    """Batch ``step``: ``batch / variants`` scene groups of the pool (a seeded permutation per
    epoch), all their renderings, each with a caption drawn for ``(seed, step)``."""

    def __init__(self, pool, records, seed: int, batch: int, context: int, mix=STATE_MIX) -> None:
        self.pool, self.records, self.seed, self.context, self.mix = pool, records, seed, context, mix
        self.groups = batch // pool.shape[1]
        if batch % pool.shape[1]:
            raise ValueError(f"--batch {batch} is not a multiple of --variants {pool.shape[1]}")

    def __getitem__(self, step: int):
        n = len(self.pool)
        per_epoch = n // self.groups
        epoch, k = divmod(step, per_epoch)
        order = np.random.default_rng([self.seed, 0xB47C, epoch]).permutation(n)
        idx = order[k * self.groups:(k + 1) * self.groups]
        rng = np.random.default_rng([self.seed, 0xCA9, step])
        texts = [caption(s, rng, self.mix) for i in idx for s in self.records[i]]
        x = torch.from_numpy(self.pool[idx].reshape(-1, *self.pool.shape[2:])).permute(0, 3, 1, 2).contiguous()
        return x, torch.stack([tokenize(t, self.context) for t in texts])


@functools.lru_cache(maxsize=200_000)
def tokenize(text: str, context: int) -> torch.Tensor:
    """open_clip's tokenizer, memoised (its text clean-up is slow and captions repeat)."""
    import open_clip

    return open_clip.tokenize([text], context_length=context)[0]


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def monitor_set(seed: int, n: int, size: int):
    """Held-out scenes (evaluation stream) with defects half of the time, all combinations allowed."""
    scenes = [sample_scene(eval_rng(seed, 7, i), training=False, style="") for i in range(n)]
    x = torch.from_numpy(np.stack([render_variants(s, [s.defect], size)[0][0] for s in scenes])).permute(0, 3, 1, 2)
    return scenes, normalise(x)


@torch.no_grad()
def monitor(model, scenes, pixels, context: int) -> dict:
    """Class-token zero-shot AUROC (all, and intact vs held-out combinations)."""
    import open_clip
    from sklearn.metrics import roc_auc_score

    model.eval()
    img = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
    cls = {}
    for kind in OBJECTS:
        emb = []
        for templates in (MONITOR_NORMAL, MONITOR_ABNORMAL):
            t = model.encode_text(open_clip.tokenize([p.format(readable(kind)) for p in templates], context_length=context))
            emb.append(torch.nn.functional.normalize(torch.nn.functional.normalize(t, dim=-1).mean(0), dim=-1))
        cls[kind] = torch.stack(emb)
    scores = np.array([float(((img[i] @ cls[s.kind].T) / 0.07).softmax(-1)[1]) for i, s in enumerate(scenes)])
    labels = np.array([s.defect is not None for s in scenes])
    held = np.array([s.defect is None or (s.kind, s.defect) in HELD_OUT for s in scenes])
    model.train()
    out = {"auroc": float(roc_auc_score(labels, scores))}
    if labels[held].any() and (~labels[held]).any():
        out["auroc_held_out_combos"] = float(roc_auc_score(labels[held], scores[held]))
    return out


def optimizers(model, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
    """AdamW (weight decay on matrices, none on gains, biases, embeddings' rows or the scale),
    and SparseAdam for the token embedding: only the rows of tokens in the batch get a
    gradient (49408 rows, a few hundred used), so a dense update would be mostly zeros."""
    model.token_embedding.sparse = True

    def no_decay(n, p):
        return p.ndim < 2 or "ln" in n or "bias" in n or "logit_scale" in n or "embedding" in n

    named = [(n, p) for n, p in model.named_parameters() if n != "token_embedding.weight"]
    groups = [{"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": weight_decay}]
    return [torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6),
            torch.optim.SparseAdam([model.token_embedding.weight], lr=lr, betas=(0.9, 0.98), eps=1e-6)]


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save(model, path: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    os.replace(tmp, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--variants", type=int, default=4, help="renderings per scene in a batch: intact + defects")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--workers", type=int, default=2, help="scene-rendering processes for the pool")
    ap.add_argument("--pool", type=int, default=2500, help="training scenes rendered once (each --variants times)")
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--monitor", type=int, default=256, help="held-out scenes for the monitor AUROC")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this many steps of the --steps schedule")
    ap.add_argument("--state-mix", default=",".join(map(str, STATE_MIX)), help="caption state-word mix (captions.py)")
    ap.add_argument("--init", type=Path, default=None, help="start from these weights (a previous stage's output)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--log", type=Path, default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    cfg = load_config(args.config)
    size, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    model = build_model(cfg).train()
    if args.init is not None:
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() for k, v in load_file(str(args.init)).items()}, strict=True)
    opts = optimizers(model, args.lr, args.weight_decay)
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    t_pool = time.perf_counter()
    pool, records = render_pool(args.seed, args.pool, size, args.variants, args.workers)
    mix = tuple(float(v) for v in args.state_mix.split(","))
    batches = PoolBatches(pool, records, args.seed, args.batch, ctx, mix)
    scenes, pixels = monitor_set(args.seed, args.monitor, size)
    log = open(args.log, "a") if args.log else None
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        print(msg, flush=True)
        if log:
            log.write(msg + "\n")
            log.flush()

    command = "python -m tools.mini_clip.train " + " ".join(argv if argv is not None else sys.argv[1:])
    say(f"# {command}\n# config {json.dumps(cfg)}\n# params {sum(p.numel() for p in model.parameters())}")
    pool_s = time.perf_counter() - t_pool
    say(f"# pool: {pool.shape[0]} scenes x {pool.shape[1]} renderings in {pool_s:.0f} s")
    t0, c0 = time.perf_counter(), time.process_time()
    last = {}
    stop = min(args.steps, args.stop_after or args.steps)
    for step in range(stop):
        x, tokens = batches[step]
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for opt in opts:
            for g in opt.param_groups:
                g["lr"] = lr
        img, txt, scale = model(normalise(x), tokens)
        loss = loss_fn(img, txt, scale)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 25 == 0 or step == stop - 1:
            el = time.perf_counter() - t0
            say(f"step {step} loss {loss.item():.4f} lr {lr:.2e} scale {model.logit_scale.exp().item():.1f} "
                f"elapsed {el:.0f}s ({(step + 1) * args.batch / el:.1f} img/s)")
        if (step + 1) % args.eval_every == 0 or step == stop - 1:
            last = monitor(model, scenes, pixels, ctx)
            say(f"monitor step {step + 1}: " + " ".join(f"{k} {v:.3f}" for k, v in last.items()))
            save(model, args.out.with_suffix(".partial.safetensors"), {"step": step + 1})
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    meta = {"config": "alfa-mini-clip", "config_json": json.dumps(cfg), "seed": args.seed,
            "init": f"{args.init.name} sha256 {sha256(args.init)[:12]}" if args.init else "",
            "steps": args.steps, "stopped_after": stop, "state_mix": args.state_mix,
            "batch": args.batch, "variants": args.variants, "pool": args.pool, "lr": args.lr, "warmup": args.warmup, "weight_decay": args.weight_decay,
            "threads": args.threads, "wall_seconds": round(wall, 1), "pool_seconds": round(pool_s, 1), "main_process_cpu_seconds": round(cpu, 1),
            "command": command, "torch": torch.__version__, "platform": platform.platform(),
            "monitor": json.dumps(last), "note": "mini-CLIP trained on synthetic scenes - not a real CLIP"}
    save(model, args.out, meta)
    args.out.with_suffix(".partial.safetensors").unlink(missing_ok=True)
    say(f"done: pool {pool_s:.0f} s, {stop} steps in {wall:.0f} s wall ({cpu:.0f} s CPU in the training process); saved {args.out}")


if __name__ == "__main__":
    main()
