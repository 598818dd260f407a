"""The training monitor: held-out scenes, the class-token zero-shot AUROC and the held-out loss.

The monitor set is evaluation-stream scenes (never training scenes), a defect half of the
time, every class-defect combination allowed.  ``textures`` adds texture scenes from their
own evaluation stream (``round(n * textures)`` of them) after the ``n`` object scenes, so a
run without textures sees exactly the monitor set it always had.
"""

from __future__ import annotations

import numpy as np
import torch

from .captions import STATE_MIX, caption
from .scenes import eval_rng, render_variants, sample_scene, sample_texture_scene, texture_eval_rng
from .vocab import TEXTURES, held_out, readable

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
MONITOR_NORMAL = ("a photo of a flawless {}.", "a photo of a {} without defect.", "a photo of a normal {}.")
MONITOR_ABNORMAL = ("a photo of a damaged {}.", "a photo of a {} with a defect.", "a photo of a broken {}.")
CAPTION_KEY = 0x4E1D  # held-out captions: rng keys [seed, CAPTION_KEY, index]


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def monitor_set(seed: int, n: int, size: int, textures: float = 0.0):
    """``(scenes, normalised pixels)``: ``n`` object scenes, then ``round(n * textures)`` texture scenes."""
    scenes = [sample_scene(eval_rng(seed, 7, i), training=False, style="") for i in range(n)]
    scenes += [sample_texture_scene(texture_eval_rng(seed, 7, i), training=False, style="")
               for i in range(int(round(n * textures)))]
    x = torch.from_numpy(np.stack([render_variants(s, [s.defect], size)[0][0] for s in scenes])).permute(0, 3, 1, 2)
    return scenes, normalise(x)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if labels.any() and (~labels).any() else None


@torch.no_grad()
def monitor(model, scenes, pixels, context: int, loss: dict | None = None) -> dict:
    """Class-token zero-shot AUROC: all scenes, intact vs held-out combinations, and objects /
    textures apart when both are there; ``loss`` (``{"seed", "batch", "mix"}``) adds the
    contrastive loss on the monitor scenes with captions drawn for them (``heldout_loss``)."""
    import open_clip

    model.eval()
    img = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
    cls = {}
    for kind in dict.fromkeys(s.kind for s in scenes):
        emb = []
        for templates in (MONITOR_NORMAL, MONITOR_ABNORMAL):
            t = model.encode_text(open_clip.tokenize([p.format(readable(kind)) for p in templates], context_length=context))
            emb.append(torch.nn.functional.normalize(torch.nn.functional.normalize(t, dim=-1).mean(0), dim=-1))
        cls[kind] = torch.stack(emb)
    scores = np.array([float(((img[i] @ cls[s.kind].T) / 0.07).softmax(-1)[1]) for i, s in enumerate(scenes)])
    labels = np.array([s.defect is not None for s in scenes])
    held = np.array([s.defect is None or held_out(s.kind, s.defect) for s in scenes])
    texture = np.array([s.kind in TEXTURES for s in scenes])
    out = {"auroc": _auroc(labels, scores)}
    if texture.any():
        out["auroc_objects"] = _auroc(labels[~texture], scores[~texture])
        out["auroc_textures"] = _auroc(labels[texture], scores[texture])
    out["auroc_held_out_combos"] = _auroc(labels[held], scores[held])
    if loss is not None:
        out["heldout_loss"] = heldout_loss(model, img, scenes, context, **loss)
    model.train()
    return {k: v for k, v in out.items() if v is not None}


def heldout_loss(model, img: torch.Tensor, scenes, context: int, seed: int, batch: int, mix=STATE_MIX) -> float:
    """open_clip's ClipLoss on the monitor scenes (image features ``img``) with one caption each
    (drawn for ``(seed, index)``), in consecutive chunks of ``batch``; the mean over chunks."""
    from open_clip.loss import ClipLoss

    from .train import tokenize

    texts = [caption(s, np.random.default_rng([seed, CAPTION_KEY, i]), mix) for i, s in enumerate(scenes)]
    tokens = torch.stack([tokenize(t, context) for t in texts])
    txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    loss_fn, scale, losses = ClipLoss(), model.logit_scale.exp(), []
    for a in range(0, len(scenes), batch):
        if len(scenes[a:a + batch]) > 1:
            losses.append(float(loss_fn(img[a:a + batch], txt[a:a + batch], scale)))
    return float(np.mean(losses)) if losses else float("nan")
