"""Training checkpoints of ``train.py``: save, check, restore; a resumed run continues bit-for-bit.

A checkpoint (``DIR/checkpoint.pt``) is a plain dict of tensors, numbers, strings, lists and
dicts, read with ``torch.load(weights_only=True)``: the fp32 weights, both optimisers'
states, the step (the learning rate is a function of the step, and every batch and caption
is drawn from ``(seed, step)``), torch's RNG state, the options that decide the weights, the
architecture and a history of the runs that made it.  It is self-contained: a later run (on
another day, after a reboot) needs only the same command plus ``--resume``.

The token embedding is 49,408 x 64 but only the rows of tokens that occurred in a batch
ever change (SparseAdam updates those rows and their moments only, and no weight decay
touches it).  The checkpoint stores those rows and their moments, and a resumed run
rebuilds the others exactly as a fresh run builds them (``--seed``, and ``--init`` if
given); the sha256 of the rebuilt embedding is checked against the one recorded, so a
different torch build that would initialise differently is an error, not a silent drift.
That keeps a checkpoint near 4 MB instead of 42 MB.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
from pathlib import Path

import torch

FORMAT = "alfa-mini-clip-train-checkpoint/1"
NAME = "checkpoint.pt"
EMBEDDING = "token_embedding.weight"
# the options that decide the weights: a resumed run must have the same
WEIGHT_OPTIONS = ("seed", "steps", "batch", "variants", "lr", "warmup", "weight_decay", "pool", "state_mix", "textures")


def options_of(args, cfg: dict, init_sha256: str) -> dict:
    out = {k: getattr(args, k) for k in WEIGHT_OPTIONS}
    out["config"] = json.dumps(cfg, sort_keys=True)
    out["init_sha256"] = init_sha256
    return out


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()


def state(model, opts, touched: torch.Tensor, step: int, options: dict, base_sha256: str, extra: dict) -> dict:
    """The checkpoint of the run after ``step`` optimiser steps."""
    rows = touched.nonzero().squeeze(1)
    model_state = {k: v.detach().clone() for k, v in model.state_dict().items() if k != EMBEDDING}
    sparse = opts[1].state_dict()
    moments = sparse["state"].get(0, {})
    return {
        "format": FORMAT, "step": step, "options": options, "base_embedding_sha256": base_sha256,
        "model": model_state, "token_rows": rows.clone(),
        "token_embedding_rows": model.token_embedding.weight.detach()[rows].clone(),
        "adamw": opts[0].state_dict(),
        "sparse_adam": {"param_groups": sparse["param_groups"], "step": int(moments.get("step", 0)),
                        "exp_avg_rows": moments["exp_avg"][rows].clone() if moments else torch.zeros(0),
                        "exp_avg_sq_rows": moments["exp_avg_sq"][rows].clone() if moments else torch.zeros(0)},
        "rng": {"torch": torch.get_rng_state()},
        **extra,
    }


def save(path: Path, ckpt: dict) -> None:
    """Atomically: a kill while writing leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: {path}: no checkpoint to resume (run without --resume to start)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line naming it
        raise SystemExit(f"error: {path}: not a readable training checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SystemExit(f"error: {path}: not a {FORMAT} file")
    return ckpt


def check_options(ckpt: dict, options: dict, path: Path) -> None:
    """A one-line error naming every option that differs from the checkpoint's."""
    saved = ckpt["options"]
    diff = [k for k in options if saved.get(k) != options[k]]
    if diff:
        parts = ", ".join(f"{k} {_short(saved.get(k))} (now {_short(options[k])})" for k in diff)
        raise SystemExit(f"error: {path} was made with other options: {parts}; resume with the same command")


def _short(v) -> str:
    s = str(v)
    return s if len(s) <= 40 else s[:12] + "..."


def restore_model(ckpt: dict, model, base_sha256: str, path: Path) -> None:
    if ckpt["base_embedding_sha256"] != base_sha256:
        raise SystemExit(f"error: {path}: this torch build initialises the token embedding differently from the "
                         "one that made the checkpoint (sha256 mismatch); resume with the same torch version")
    emb = model.token_embedding.weight.detach().clone()
    emb[ckpt["token_rows"]] = ckpt["token_embedding_rows"]
    model.load_state_dict({**ckpt["model"], EMBEDDING: emb}, strict=True)


def restore_optimizers(ckpt: dict, opts, model) -> None:
    opts[0].load_state_dict(ckpt["adamw"])
    sp = ckpt["sparse_adam"]
    moments = {}
    if sp["step"]:
        w = model.token_embedding.weight
        avg, avg_sq = torch.zeros_like(w), torch.zeros_like(w)
        avg[ckpt["token_rows"]], avg_sq[ckpt["token_rows"]] = sp["exp_avg_rows"], sp["exp_avg_sq_rows"]
        moments = {0: {"step": sp["step"], "exp_avg": avg, "exp_avg_sq": avg_sq}}
    opts[1].load_state_dict({"state": moments, "param_groups": sp["param_groups"]})


def restore_rng(ckpt: dict) -> None:
    torch.set_rng_state(ckpt["rng"]["torch"])


def restore(ckpt: dict, model, opts, touched: torch.Tensor, base_sha256: str, path: Path) -> int:
    """Weights, optimiser states, RNG and touched rows as they were; returns the step to continue from."""
    restore_model(ckpt, model, base_sha256, path)
    restore_optimizers(ckpt, opts, model)
    restore_rng(ckpt)
    touched[ckpt["token_rows"]] = True
    return int(ckpt["step"])


def run_record(start: int, end: int, wall: float, threads: int) -> dict:
    return {"start_step": start, "end_step": end, "wall_seconds": round(wall, 1), "threads": threads,
            "torch": str(torch.__version__), "platform": platform.platform()}


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def status_line(step: int, planned: int, mon: dict, elapsed: float, rate: float | None) -> str:
    """``step S/PLANNED, held-out loss L, monitor AUROC A, elapsed E, eta T``; ``rate`` in steps/s."""
    eta = hms((planned - step) / rate) if rate else "unknown"
    parts = [f"{k.replace('auroc_', '')} {mon[k]:.3f}" for k in ("auroc_objects", "auroc_textures") if k in mon]
    extra = f" ({', '.join(parts)})" if parts else ""
    return (f"step {step}/{planned}, held-out loss {mon.get('heldout_loss', float('nan')):.4f}, "
            f"monitor AUROC {mon.get('auroc', float('nan')):.3f}{extra}, elapsed {hms(elapsed)}, eta {eta}")


class StopRequest:
    """SIGTERM / SIGINT ask the loop to stop after the current step (and save a checkpoint);
    a second signal stops at once.  Handlers are restored on exit (only in the main thread)."""

    def __init__(self) -> None:
        self.requested = False
        self._old = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopRequest":
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no handlers
            self._old = {}
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
