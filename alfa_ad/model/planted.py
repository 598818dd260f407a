"""The planted-alignment model: a tiny open_clip CLIP with hand-set weights.

It is a real ``open_clip.model.CLIP`` (same modules, same forward code, same
tokenizer) whose weights are written by hand so that

* the patch embedding writes each 16x16 patch's mean colour on colour axes and a
  large constant on a "bias" axis;
* the first block's MLP turns colour into the *paint cue*: how strongly the patch
  is red, green or blue rather than grey, white, cream or yellow
  (``sum of relu-like(gain * (d - 0.2))`` over ``d`` in ``R - G``, ``G - R`` and
  ``B - (R + G) / 2``, see :func:`paint_cue`);
* the other blocks' outputs are zero except the last block's attention, which is
  uniform (zero queries and keys), so the class token becomes the mean of the
  tokens it attends to;
* the text tower averages its token embeddings the same way, and the token
  embeddings of defect words ("damaged", "defect", "scratch", ...) point along
  the same cue axis, while words of normality ("flawless", "without", ...) point
  along a "normal" axis.

So images or windows with painted (red, green, blue) pixels align with abnormal
prompts, and the pipeline must put its anomaly map where the paint is.  This catches transposed,
shifted, flipped, inverted or misaligned maps without any pretrained weights.
"""

from __future__ import annotations

import torch

WIDTH = 16
EMBED_DIM = 8
IMAGE_SIZE = 240
PATCH = 16

ABNORMAL_WORDS = (
    "damaged damage defect defective defects flaw flawed flaws broken crack cracked cracks "
    "scratch scratched scratches hole holes cut contamination contaminated stain stained "
    "bent missing abnormal anomalous anomaly dent dented faulty fault rust rusty torn tear "
    "fold misplaced deformed deformation hazard spot spots"
).split()
NORMAL_WORDS = "flawless perfect unblemished normal good intact clean smooth uniform pristine".split()
NEGATIONS = "without no free".split()

# axes of the residual stream
CUE, ANTI_CUE, BIAS, ANTI_BIAS, NORM, ANTI_NORM = range(6)
COLOUR = (6, 7, 8)  # R, G, B minus CLIP's mean colour
ANTI_COLOUR = (9, 10, 11)
PAINT_THRESHOLD = 0.2  # colour difference (in [0, 1] units) where the cue starts
PAINT_GAIN = 10.0
# colour-difference detectors of the first block's MLP: R - G, G - R, B - (R + G) / 2
PAINT_DETECTORS = ((1.0, -1.0, 0.0), (-1.0, 1.0, 0.0), (-0.5, -0.5, 1.0))
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def paint_cue(rgb):
    """The cue the planted model computes for a patch of mean colour ``rgb`` in [0, 1]
    (up to the layer norms' nearly constant scale): sum over the detectors of
    ``gelu(gain * (w . (rgb - mean) - threshold))``.  Accepts ``(..., 3)`` arrays."""
    import numpy as np

    x = np.asarray(rgb, dtype=np.float64) - np.asarray(CLIP_MEAN)
    out = 0.0
    for w in PAINT_DETECTORS:
        h = PAINT_GAIN * (x @ np.asarray(w) - PAINT_THRESHOLD)
        out = out + 0.5 * h * (1 + np.tanh(0.7978845608 * (h + 0.044715 * h**3)))
    return out


def _zero_block_outputs(block) -> None:
    for p in (block.attn.out_proj.weight, block.attn.out_proj.bias, block.mlp.c_proj.weight, block.mlp.c_proj.bias):
        torch.nn.init.zeros_(p)


def _uniform_mixing(block) -> None:
    """Queries and keys zero (uniform attention), values and output identity, MLP off."""
    w = block.attn.in_proj_weight
    with torch.no_grad():
        w.zero_()
        w[2 * WIDTH :] = torch.eye(WIDTH)
        block.attn.in_proj_bias.zero_()
        block.attn.out_proj.weight.copy_(torch.eye(WIDTH))
        block.attn.out_proj.bias.zero_()
        block.mlp.c_proj.weight.zero_()
        block.mlp.c_proj.bias.zero_()


def _word_token_ids(tokenizer, words) -> list[int]:
    ids: set[int] = set()
    for w in words:
        tokens = tokenizer([w])[0].tolist()
        ids.update(t for t in tokens[1:] if t not in (0, tokens[0]) and t != max(tokens))
    return sorted(ids)


@torch.no_grad()
def build_planted_clip(cue_gain: float = 10.0, bias: float = 1.0):
    """Return ``(clip, tokenizer)`` for the planted-alignment model."""
    import open_clip
    from open_clip.model import CLIP

    clip = CLIP(
        embed_dim=EMBED_DIM,
        vision_cfg={"image_size": IMAGE_SIZE, "layers": 2, "width": WIDTH, "patch_size": PATCH, "head_width": 8},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": WIDTH, "heads": 2, "layers": 1},
    )
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    for p in clip.parameters():
        torch.nn.init.zeros_(p)
    for ln in [m for m in clip.modules() if isinstance(m, torch.nn.LayerNorm)]:
        torch.nn.init.ones_(ln.weight)

    # ---- vision: conv1 writes the patch's mean colour (minus CLIP's mean) on colour axes
    v = clip.visual
    for c in range(3):
        v.conv1.weight[COLOUR[c], c] = CLIP_STD[c] / (PATCH * PATCH)
        v.conv1.weight[ANTI_COLOUR[c], c] = -CLIP_STD[c] / (PATCH * PATCH)
    v.positional_embedding[:, BIAS] = 10.0 * bias
    v.positional_embedding[:, ANTI_BIAS] = -10.0 * bias
    for block in v.transformer.resblocks[:-1]:
        _zero_block_outputs(block)
    # first block's MLP: colour differences -> paint cue.  Tokens reach it layer-normed;
    # the large bias axis keeps the norm's scale nearly constant (~ sqrt(2 * 100 / 16)).
    scale = (2 * (10.0 * bias) ** 2 / WIDTH) ** 0.5
    mlp = v.transformer.resblocks[0].mlp
    for j, w in enumerate(PAINT_DETECTORS):
        for c in range(3):
            mlp.c_fc.weight[j, COLOUR[c]] = PAINT_GAIN * scale * w[c]
        mlp.c_fc.bias[j] = -PAINT_GAIN * PAINT_THRESHOLD
        mlp.c_proj.weight[CUE, j] = cue_gain / 4.0
        mlp.c_proj.weight[ANTI_CUE, j] = -cue_gain / 4.0
    _uniform_mixing(v.transformer.resblocks[-1])
    # joint space: e0 abnormal, e1 normal, e2 shared
    v.proj[CUE, 0], v.proj[ANTI_CUE, 0] = 1.0, -1.0
    v.proj[BIAS, 1], v.proj[ANTI_BIAS, 1] = 1.0, -1.0
    v.proj[BIAS, 2], v.proj[ANTI_BIAS, 2] = 1.0, -1.0

    # ---- text: every token carries a large bias; defect / normality words add cues
    emb = clip.token_embedding.weight
    emb[:, BIAS], emb[:, ANTI_BIAS] = 10.0, -10.0
    for i in _word_token_ids(tokenizer, ABNORMAL_WORDS):
        emb[i, CUE], emb[i, ANTI_CUE] = 1.0, -1.0
    for i in _word_token_ids(tokenizer, NORMAL_WORDS):
        emb[i, NORM], emb[i, ANTI_NORM] = 1.0, -1.0
    for i in _word_token_ids(tokenizer, NEGATIONS):
        emb[i, NORM], emb[i, ANTI_NORM] = 2.0, -2.0
        emb[i, CUE], emb[i, ANTI_CUE] = -1.0, 1.0
    for block in clip.transformer.resblocks:
        _uniform_mixing(block)
    tp = clip.text_projection
    tp[CUE, 0], tp[ANTI_CUE, 0] = 100.0, -100.0
    tp[NORM, 1], tp[ANTI_NORM, 1] = 100.0, -100.0
    tp[BIAS, 2], tp[ANTI_BIAS, 2] = 1.0, -1.0
    tp[BIAS, 1], tp[ANTI_BIAS, 1] = 0.3, -0.3
    clip.logit_scale.fill_(torch.log(torch.tensor(1 / 0.07)))
    return clip.eval(), tokenizer
