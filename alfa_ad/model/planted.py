"""The planted-alignment model: a tiny open_clip CLIP with hand-set weights.

It is a real ``open_clip.model.CLIP`` (same modules, same forward code, same
tokenizer) whose weights are written by hand so that

* every image token carries the *redness* of its 16x16 patch
  (``R - (G + B) / 2``) on a "cue" axis, and a constant "bias" axis;
* all vision blocks but the last are the identity (zero output projections),
  the last block's attention is uniform (zero queries and keys) so the class
  token becomes the mean of the tokens it attends to;
* the text tower averages its token embeddings the same way, and the token
  embeddings of defect words ("damaged", "defect", "scratch", ...) point along
  the same cue axis, while words of normality ("flawless", "without", ...) point
  along a "normal" axis.

So images or windows with red pixels align with abnormal prompts, and the
pipeline must put its anomaly map where the red is.  This catches transposed,
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

    mean = (0.48145466, 0.4578275, 0.40821073)
    std = (0.26862954, 0.26130258, 0.27577711)
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

    # ---- vision: conv1 writes patch redness (in raw [0, 1] units) on the cue axes
    v = clip.visual
    coef = torch.tensor([1.0, -0.5, -0.5])
    per_pixel = cue_gain * coef * torch.tensor(std) / (PATCH * PATCH)
    v.conv1.weight[CUE] = per_pixel.view(3, 1, 1).expand(3, PATCH, PATCH)
    v.conv1.weight[ANTI_CUE] = -v.conv1.weight[CUE]
    v.positional_embedding[:, BIAS] = bias
    v.positional_embedding[:, ANTI_BIAS] = -bias
    for block in v.transformer.resblocks[:-1]:
        _zero_block_outputs(block)
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
    tp[NORM, 1], tp[ANTI_NORM, 1] = 30.0, -30.0
    tp[BIAS, 2], tp[ANTI_BIAS, 2] = 1.0, -1.0
    tp[BIAS, 1], tp[ANTI_BIAS, 1] = 0.3, -0.3
    clip.logit_scale.fill_(torch.log(torch.tensor(1 / 0.07)))
    return clip.eval(), tokenizer
