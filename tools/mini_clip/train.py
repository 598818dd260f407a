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

from tools.mini_clip import resume as R  # noqa: E402
from tools.mini_clip.captions import STATE_MIX, caption  # noqa: E402
from tools.mini_clip.monitor import MEAN, STD, monitor, monitor_set, normalise  # noqa: E402,F401
from tools.mini_clip.pool import cached_pool, render_pool  # noqa: E402,F401

CONFIG = REPO / "alfa_ad" / "model" / "shipped" / "alfa-mini-clip.json"
CONFIG_V2 = REPO / "alfa_ad" / "model" / "shipped" / "alfa-mini-clip-v2.json"


def load_config(path: Path = CONFIG) -> dict:
    return json.loads(Path(path).read_text())


def build_model(cfg: dict):
    from open_clip.model import CLIP

    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])


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


def parse_args(argv=None) -> argparse.Namespace:
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
    ap.add_argument("--textures", type=float, default=0.0,
                    help="fraction of the pool (and, relative to --monitor, of the monitor) that is texture scenes")
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--monitor", type=int, default=256, help="held-out object scenes for the monitor AUROC")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this many steps of the --steps schedule")
    ap.add_argument("--state-mix", default=",".join(map(str, STATE_MIX)), help="caption state-word mix (captions.py)")
    ap.add_argument("--init", type=Path, default=None, help="start from these weights (a previous stage's output)")
    ap.add_argument("--checkpoint-dir", type=Path, default=None,
                    help="save a resumable training checkpoint (DIR/checkpoint.pt) every --checkpoint-minutes and at the end")
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0)
    ap.add_argument("--resume", action="store_true", help="continue the run in --checkpoint-dir (same command)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--log", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.resume and args.checkpoint_dir is None:
        ap.error("--resume needs --checkpoint-dir")
    if not 0 <= args.textures <= 1:
        ap.error(f"--textures {args.textures}: a fraction in [0, 1]")
    if args.init is not None and not args.init.is_file():
        ap.error(f"--init {args.init}: file not found")
    if args.config != CONFIG and not Path(args.config).is_file():
        ap.error(f"--config {args.config}: file not found")
    return args


def build(args):
    """Threads, seed, the model (from scratch or ``--init``) and its optimisers, as every run starts."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    cfg = load_config(args.config)
    model = build_model(cfg).train()
    if args.init is not None:
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() for k, v in load_file(str(args.init)).items()}, strict=True)
    return cfg, model, optimizers(model, args.lr, args.weight_decay)


def open_checkpoint(args, options: dict):
    """``(path or None, checkpoint dict or None)``; one-line errors for a missing or mismatched one."""
    if args.checkpoint_dir is None:
        return None, None
    path = args.checkpoint_dir / R.NAME
    if not args.resume:
        if path.exists():
            raise SystemExit(f"error: {path} exists: add --resume to continue that run, or choose another --checkpoint-dir")
        return path, None
    ckpt = R.load(path)
    R.check_options(ckpt, options, path)
    stop = min(args.steps, args.stop_after or args.steps)
    if ckpt["step"] > stop:
        raise SystemExit(f"error: {path} is at step {ckpt['step']}, beyond --stop-after {stop}")
    return path, ckpt


def logger(path: Path | None):
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a") if path else None

    def say(msg: str) -> None:
        print(msg, flush=True)
        if log:
            log.write(msg + "\n")
            log.flush()
    return say


def optimise(model, opts, loss_fn, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """One optimisation step of the contrastive loss on a batch; the loss."""
    img, txt, scale = model(pixels, tokens)
    loss = loss_fn(img, txt, scale)
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in opts:
        opt.step()
    return loss


def run_steps(args, run: dict, start: int, stop: int, say) -> tuple[int, dict]:
    """Steps ``start .. stop - 1`` (fewer when a stop is requested); ``(steps done, last monitor)``.
    ``run`` holds the model, optimisers, batches, monitor set and checkpoint writer."""
    model, opts, loss_fn, batches = run["model"], run["opts"], run["loss_fn"], run["batches"]
    t0, last_ckpt, last, done = time.perf_counter(), time.perf_counter(), run["last"], start
    for step in range(start, stop):
        x, tokens = batches[step]
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for opt in opts:
            for g in opt.param_groups:
                g["lr"] = lr
        loss = optimise(model, opts, loss_fn, normalise(x), tokens)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        run["touched"][tokens.unique()] = True  # the embedding rows SparseAdam has updated
        done = step + 1
        el = time.perf_counter() - t0
        if step % 25 == 0 or step == stop - 1:
            say(f"step {step} loss {loss.item():.4f} lr {lr:.2e} scale {model.logit_scale.exp().item():.1f} "
                f"elapsed {el:.0f}s ({(done - start) * args.batch / el:.1f} img/s)")
        if done % args.eval_every == 0 or step == stop - 1:
            last = monitor(model, run["scenes"], run["pixels"], run["ctx"], run["loss_args"])
            say(f"monitor step {done}: " + " ".join(f"{k} {v:.3f}" for k, v in last.items()))
            say(R.status_line(done, args.steps, last, run["elapsed_before"] + el, (done - start) / el))
            save(model, args.out.with_suffix(".partial.safetensors"), {"step": done})
        stopping = run["stop_request"].requested
        if run["write"] and (stopping or time.perf_counter() - last_ckpt >= 60 * args.checkpoint_minutes):
            run["write"](done, last, time.perf_counter() - t0)
            last_ckpt = time.perf_counter()
        if stopping:
            say(f"# stop requested: stopped after step {done}")
            break
    return done, last


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg, model, opts = build(args)
    size, ctx = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    from open_clip.loss import ClipLoss

    options = R.options_of(args, cfg, sha256(args.init) if args.init else "")
    base_sha = R.digest(model.token_embedding.weight)
    ckpt_path, ckpt = open_checkpoint(args, options)
    touched = torch.zeros(model.token_embedding.num_embeddings, dtype=torch.bool)
    start = R.restore(ckpt, model, opts, touched, base_sha, ckpt_path) if ckpt else 0
    t_pool = time.perf_counter()
    pool, records, pool_sha = cached_pool(args.checkpoint_dir, args.seed, args.pool, size, args.variants, args.workers,
                                          args.textures)
    mix = tuple(float(v) for v in args.state_mix.split(","))
    batches = PoolBatches(pool, records, args.seed, args.batch, ctx, mix)
    scenes, pixels = monitor_set(args.seed, args.monitor, size, args.textures)
    say = logger(args.log)
    command = "python -m tools.mini_clip.train " + " ".join(argv if argv is not None else sys.argv[1:])
    say(f"# {command}\n# config {json.dumps(cfg)}\n# params {sum(p.numel() for p in model.parameters())}")
    pool_s = time.perf_counter() - t_pool
    say(f"# pool: {pool.shape[0]} scenes x {pool.shape[1]} renderings in {pool_s:.0f} s")
    runs = list(ckpt["runs"]) if ckpt else []
    elapsed_before = sum(r["wall_seconds"] for r in runs)
    if ckpt:
        say(f"# resumed from {ckpt_path} at step {start} ({len(runs)} earlier run(s), {elapsed_before:.0f} s of training)")
        if ckpt.get("pool_sha256", pool_sha) != pool_sha:
            raise SystemExit(f"error: {ckpt_path}: the training pool rendered now differs from the checkpoint's "
                             "(the scene generator changed?); resume with the code that started the run")
        if runs and runs[-1]["threads"] != args.threads:
            say(f"# warning: --threads {args.threads}, the checkpoint's run had {runs[-1]['threads']}: "
                "the continuation is not bit-for-bit the same as one run")
    stop = min(args.steps, args.stop_after or args.steps)

    written = {"step": None}

    def write(done: int, last: dict, wall: float) -> None:
        written["step"] = done
        extra = {"monitor": last, "runs": runs + [R.run_record(start, done, wall, args.threads)],
                 "config_name": Path(args.config).stem, "data_seed": args.seed, "planned_steps": args.steps,
                 "pool_sha256": pool_sha}
        R.save(ckpt_path, R.state(model, opts, touched, done, options, base_sha, extra))
        say(f"# checkpoint: step {done} -> {ckpt_path} ({ckpt_path.stat().st_size / 1e6:.1f} MB)")

    t0, c0 = time.perf_counter(), time.process_time()
    with R.StopRequest() as req:
        run = {"model": model, "opts": opts, "loss_fn": ClipLoss(), "batches": batches, "touched": touched,
               "scenes": scenes, "pixels": pixels, "ctx": ctx, "last": dict(ckpt["monitor"]) if ckpt else {},
               "loss_args": {"seed": args.seed, "batch": args.batch, "mix": mix}, "elapsed_before": elapsed_before,
               "stop_request": req, "write": write if ckpt_path else None}
        done, last = run_steps(args, run, start, stop, say)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if ckpt_path and written["step"] != done:  # at the end, unless the loop has just written it
            write(done, last, wall)
    if done < stop:
        raise SystemExit(f"stopped at step {done} of {stop}: continue with the same command and --resume")
    finish(args, cfg, model, done, last, elapsed_before + wall, pool_s, cpu, command, say)


def finish(args, cfg, model, stop: int, last: dict, wall: float, pool_s: float, cpu: float, command: str, say) -> None:
    """The final weights (fp16 safetensors, the training facts in the metadata)."""
    meta = {"config": Path(args.config).stem, "config_json": json.dumps(cfg), "seed": args.seed,
            "init": f"{args.init.name} sha256 {sha256(args.init)[:12]}" if args.init else "",
            "steps": args.steps, "stopped_after": stop, "state_mix": args.state_mix,
            "batch": args.batch, "variants": args.variants, "pool": args.pool, "lr": args.lr, "warmup": args.warmup,
            "weight_decay": args.weight_decay, "textures": args.textures,
            "threads": args.threads, "wall_seconds": round(wall, 1), "pool_seconds": round(pool_s, 1),
            "main_process_cpu_seconds": round(cpu, 1),
            "command": command, "torch": torch.__version__, "platform": platform.platform(),
            "monitor": json.dumps(last), "note": "mini-CLIP trained on synthetic scenes - not a real CLIP"}
    save(model, args.out, meta)
    args.out.with_suffix(".partial.safetensors").unlink(missing_ok=True)
    say(f"done: pool {pool_s:.0f} s, {stop} steps in {wall:.0f} s wall ({cpu:.0f} s CPU in the training process); "
        f"saved {args.out}")


if __name__ == "__main__":
    main()
