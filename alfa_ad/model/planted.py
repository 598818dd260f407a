"""The planted-alignment model (v2): a tiny open_clip CLIP with hand-set weights whose
anomaly cue is known, and whose blocks mix tokens the way a real ViT does.

It is a real ``open_clip.model.CLIP`` (same modules, same forward code, same
tokenizer) with three vision blocks and hand-written weights:

* **patch embedding**: each 16x16 patch's mean colour on colour axes, a large constant
  on a "bias" axis, and a 2-D positional code (``cos``/``sin`` of the column and row,
  frequency ``pi / 15``) on positional axes; the class token carries a "class" axis;
* **block 0** (MLP): colour -> the *paint cue*, how strongly the patch is red, green or
  blue rather than grey, white, cream or yellow (:func:`paint_cue`, saturating at
  ``SATURATION``).  The cue *rotates* the token's (cue, bias) pair away from the bias
  axis (by ``CUE_ANGLE`` at saturation) instead of adding to it, so every token keeps
  about the same norm and the layer norms before the attention blocks rescale all
  tokens alike (their attention patterns do not depend on the paint); its attention is
  off;
* **block 1** (attention + MLP): **mixes tokens**.  Each patch attends to itself and its
  neighbours (query-key logits ``MIX_SHARPNESS * (cos(w dx) + cos(w dy))``, about a 3x3
  neighbourhood) and the class token attends uniformly to every token; the attended
  (cue, bias) pair is blended in, ``(own + MIX_GAIN * attended) / (1 + MIX_GAIN)`` (the
  MLP does the division).  So the cue spreads to neighbouring patches and the class
  token carries the whole image's mean cue;
* **block 2** (last; attention, MLP off): **non-uniform attention**.  The class query
  prefers central patches (logit ``CENTRE_BIAS * (cos(w (x-7)) + cos(w (y-7)))``, about
  40x more weight at the centre than in a corner); patch queries attend to nearby
  patches (``LOCAL_SHARPNESS``), and query-query attention is just as local (what
  dense ClearCLIP-style aligners read).  Every value carries ``VALUE_CUE_GAIN`` times the
  token's cue **plus a constant** ``VALUE_OFFSET`` on the cue axis (the common part of
  the values, which real CLIP also has), and a copy of the bias axis;
* **joint space**: e0 <- cue ("abnormal"), e1 and e2 <- bias ("normal", "shared").

What it catches: the map must sit on the paint; an aligner that reads a window's
attention without renormalising it over the window turns each window's attention
*mass* (large at the centre) times the constant value offset into a score and paints
the image centre; one that lets the class token's whole-image cue into every window
gives a flat map; one that reads shifted tokens gives a shifted map.

The text tower averages its token embeddings (uniform attention); token embeddings of
defect words ("damaged", "defect", "scratch", ...) point along the cue axis, words of
normality ("flawless", "without", ...) along a "normal" axis.
"""

from __future__ import annotations

import math

import torch

WIDTH = 64  # vision width (one attention head)
TEXT_WIDTH = 16
EMBED_DIM = 8
IMAGE_SIZE = 240
PATCH = 16
GRID = IMAGE_SIZE // PATCH
LAYERS = 3

ABNORMAL_WORDS = (
    "damaged damage defect defective defects flaw flawed flaws broken crack cracked cracks "
    "scratch scratched scratches hole holes cut contamination contaminated stain stained "
    "bent missing abnormal anomalous anomaly dent dented faulty fault rust rusty torn tear "
    "fold misplaced deformed deformation hazard spot spots"
).split()
NORMAL_WORDS = "flawless perfect unblemished normal good intact clean smooth uniform pristine".split()
NEGATIONS = "without no free".split()

# Positional code: cos/sin of column and row at frequencies OMEGAS (the lowest one is
# monotonic across the grid, the higher ones make neighbouring codes distinct, so
# attention can be local with small logits that layer-norm wobble cannot reorder).
OMEGAS = tuple(math.pi / GRID * 2**k for k in range(4))
N_POS = 4 * len(OMEGAS)

# axes of the residual stream (each feature with an "anti" twin, so every token has mean 0
# across the width and layer norms only rescale)
CUE, ANTI_CUE, BIAS, ANTI_BIAS, NORM, ANTI_NORM = range(6)
COLOUR = (6, 7, 8)  # R, G, B minus CLIP's mean colour
ANTI_COLOUR = (9, 10, 11)
POS = tuple(range(12, 12 + N_POS))  # per frequency: cos(w col), sin(w col), cos(w row), sin(w row)
ANTI_POS = tuple(range(12 + N_POS, 12 + 2 * N_POS))
CLS_AXIS, ANTI_CLS_AXIS = 12 + 2 * N_POS, 13 + 2 * N_POS

BIAS_VALUE = 10.0
PAINT_THRESHOLD = 0.2  # colour difference (in [0, 1] units) where the cue starts
PAINT_GAIN = 10.0
SATURATION = 4.0  # paint cue where the cue saturates (a strong red patch, the demo's paint)
CUE_ANGLE = math.radians(80)  # rotation of the (cue, bias) pair at saturation
KNOTS = 4  # piecewise-linear segments of the rotation
RAMP = 4.0  # sharpness of the gelu ramps at the knots
# colour-difference detectors of the first block's MLP: R - G, G - R, B - (R + G) / 2
PAINT_DETECTORS = ((1.0, -1.0, 0.0), (-1.0, 1.0, 0.0), (-0.5, -0.5, 1.0))
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MIX_SHARPNESS = 2.0  # block 1: logit = MIX_SHARPNESS * (positional code . code), 8 * MIX_SHARPNESS at self
MIX_GAIN = 0.5  # block 1: weight of the attended (cue, bias) pair against the token's own
CENTRE_BIAS = 2.0  # block 2: class-query logit = CENTRE_BIAS * (cos(w0 (col-7)) + cos(w0 (row-7)))
LOCAL_SHARPNESS = 2.0  # block 2: patch-to-patch positional logit scale (as block 1)
CONTENT_SHARPNESS = 15.0  # block 2: patch-to-patch logit between two saturated patches (content attention)
VALUE_CUE_GAIN = 3.0  # block 2: values carry the cue ...
VALUE_OFFSET = 1.5  # ... plus this constant (in units of the paint cue; saturation is SATURATION)
VALUE_BIAS = 1.0  # ... and a copy of the bias axis
JOINT_CUE = 1.0  # joint e0 per unit of residual cue (bias -> e1, e2 with weight 1)


def paint_cue(rgb):
    """The cue the planted model computes for a patch of mean colour ``rgb`` in [0, 1]
    (up to the layer norms' nearly constant scale): the sum over the detectors of
    ``h = gain * (w . (rgb - mean) - threshold)`` clipped to ``[0, SATURATION]`` (with
    smooth corners).  The model rotates each token's (cue, bias) pair by
    ``CUE_ANGLE * paint_cue / SATURATION``.  Accepts ``(..., 3)`` arrays."""
    import numpy as np
    from scipy.special import erf

    def ramp(u):
        u = RAMP * u
        return 0.5 * u * (1 + erf(u / np.sqrt(2))) / RAMP

    x = np.asarray(rgb, dtype=np.float64) - np.asarray(CLIP_MEAN)
    out = 0.0
    for w in PAINT_DETECTORS:
        h = PAINT_GAIN * (x @ np.asarray(w) - PAINT_THRESHOLD)
        out = out + ramp(h) - ramp(h - SATURATION)
    return out


def _pair(weight: torch.Tensor, row: int, anti_row: int, col: int, value: float) -> None:
    """Write ``value`` from input axis ``col`` to output ``row`` and ``-value`` to its twin."""
    weight[row, col] += value
    weight[anti_row, col] -= value


def _uniform_mixing(block, width: int) -> None:
    """Queries and keys zero (uniform attention), values and output identity, MLP off."""
    w = block.attn.in_proj_weight
    with torch.no_grad():
        w.zero_()
        w[2 * width :] = torch.eye(width)
        block.attn.in_proj_bias.zero_()
        block.attn.out_proj.weight.copy_(torch.eye(width))
        block.attn.out_proj.bias.zero_()
        block.mlp.c_proj.weight.zero_()
        block.mlp.c_proj.bias.zero_()


def _word_token_ids(tokenizer, words) -> list[int]:
    ids: set[int] = set()
    for w in words:
        tokens = tokenizer([w])[0].tolist()
        ids.update(t for t in tokens[1:] if t not in (0, tokens[0]) and t != max(tokens))
    return sorted(ids)


def positional_code(grid: int = GRID) -> torch.Tensor:
    """``(grid * grid, N_POS)``: per frequency, cos/sin of each patch's column and row
    (row-major patch order).  ``code_i . code_j = sum_w cos(w dx) + cos(w dy)``."""
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    c, r = cols.reshape(-1), rows.reshape(-1)
    parts = []
    for w in OMEGAS:
        parts += [torch.cos(w * c), torch.sin(w * c), torch.cos(w * r), torch.sin(w * r)]
    return torch.stack(parts, 1)


@torch.no_grad()
def build_planted_clip():
    """Return ``(clip, tokenizer)`` for the planted-alignment model (v2)."""
    import open_clip
    from open_clip.model import CLIP

    clip = CLIP(
        embed_dim=EMBED_DIM,
        vision_cfg={"image_size": IMAGE_SIZE, "layers": LAYERS, "width": WIDTH, "patch_size": PATCH,
                    "head_width": WIDTH},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": TEXT_WIDTH, "heads": 2, "layers": 1},
    )
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    for p in clip.parameters():
        torch.nn.init.zeros_(p)
    for ln in [m for m in clip.modules() if isinstance(m, torch.nn.LayerNorm)]:
        torch.nn.init.ones_(ln.weight)
    _vision(clip.visual)
    _text(clip, tokenizer)
    clip.logit_scale.fill_(math.log(1 / 0.07))
    return clip.eval(), tokenizer


def _vision(v) -> None:
    """The vision tower's hand-set weights: tokens, three blocks, the joint projection."""
    s, big, root = _vision_tokens(v)
    b0, b1, b2 = v.transformer.resblocks
    _paint_block(b0, s, big)
    _mixing_block(b1, s, big, root)
    _last_block(b2, s, big, root)
    _joint_projection(v)


def _vision_tokens(v) -> tuple[float, float, float]:
    # ---- tokens: colour (minus CLIP's mean), bias, positional code; class token: class axis
    for c in range(3):
        v.conv1.weight[COLOUR[c], c] = CLIP_STD[c] / (PATCH * PATCH)
        v.conv1.weight[ANTI_COLOUR[c], c] = -CLIP_STD[c] / (PATCH * PATCH)
    pe = v.positional_embedding
    pe[:, BIAS], pe[:, ANTI_BIAS] = BIAS_VALUE, -BIAS_VALUE
    code = positional_code().float()
    for i, (a, b) in enumerate(zip(POS, ANTI_POS)):
        pe[1:, a], pe[1:, b] = code[:, i], -code[:, i]
    pe[0, CLS_AXIS], pe[0, ANTI_CLS_AXIS] = 1.0, -1.0
    # ln_pre divides every token by ~ s (the bias dominates its norm); later layer norms see
    # tokens of norm ~ sqrt(WIDTH), which the blocks below keep (the cue rotates, mixing blends)
    s = ((2 * BIAS_VALUE**2 + 2 * 2 * len(OMEGAS)) / WIDTH) ** 0.5
    big = BIAS_VALUE / s  # the bias in the residual stream
    root = WIDTH**0.5  # attention divides logits by sqrt(d_head)
    return s, big, root


def _paint_block(b0, s: float, big: float) -> None:
    # ---- block 0: attention off; MLP: colour differences -> paint cue h (clipped to
    # [0, SATURATION]), which rotates the (cue, bias) pair by phi = CUE_ANGLE * h / SATURATION:
    # cue += B sin(phi), bias += B (cos(phi) - 1), as a piecewise-linear function of h with
    # knots every SATURATION / KNOTS (sharpened gelu ramps), so every token keeps its norm.
    for p in (b0.attn.out_proj.weight, b0.attn.out_proj.bias):
        torch.nn.init.zeros_(p)
    knots = [SATURATION * k / KNOTS for k in range(KNOTS + 1)]
    phis = [CUE_ANGLE * k / KNOTS for k in range(KNOTS + 1)]
    targets = {(CUE, ANTI_CUE): [big * math.sin(f) for f in phis],
               (BIAS, ANTI_BIAS): [big * (math.cos(f) - 1) for f in phis]}
    unit = 0
    for w in PAINT_DETECTORS:
        for k, knot in enumerate(knots):
            for c in range(3):
                b0.mlp.c_fc.weight[unit, COLOUR[c]] = RAMP * PAINT_GAIN * s * w[c]
            b0.mlp.c_fc.bias[unit] = -RAMP * (PAINT_GAIN * PAINT_THRESHOLD + knot)  # gelu(RAMP (h - knot)) / RAMP
            for (axis, anti), ys in targets.items():
                slope = [(ys[i + 1] - ys[i]) / (knots[i + 1] - knots[i]) for i in range(KNOTS)] + [0.0]
                change = slope[k] - (slope[k - 1] if k else 0.0)
                _pair(b0.mlp.c_proj.weight, axis, anti, unit, change / RAMP)
            unit += 1


def _mixing_block(b1, s: float, big: float, root: float) -> None:
    # ---- block 1: positional attention (patches: local; class token: uniform, it has no
    # code); the attended (cue, bias) pair is added, then the MLP divides the pair by 1 + gain
    wq, wk, wv = b1.attn.in_proj_weight.chunk(3)
    gain = (MIX_SHARPNESS * root) ** 0.5 * s  # q.k / sqrt(d) = MIX_SHARPNESS * code_i . code_j
    for i, a in enumerate(POS):
        wq[i, a] = gain
        wk[i, a] = gain
    wv[0, CUE], wv[0, ANTI_CUE] = 1.0, -1.0  # value dim 0: 2 x cue
    wv[1, BIAS], wv[1, ANTI_BIAS] = 1.0, -1.0  # value dim 1: 2 x bias
    _pair(b1.attn.out_proj.weight, CUE, ANTI_CUE, 0, MIX_GAIN / 2)
    _pair(b1.attn.out_proj.weight, BIAS, ANTI_BIAS, 1, MIX_GAIN / 2)
    # MLP: pair -= c * pair, c = gain / (1 + gain), linear through gelu(u) - gelu(-u) = u; its
    # input is layer-normed by ~ sigma (the pair has grown by 1 + gain)
    shrink = MIX_GAIN / (1 + MIX_GAIN)
    sigma = (((1 + MIX_GAIN) ** 2 * 2 * big**2 + 2 * 2 * len(OMEGAS) / s**2) / WIDTH) ** 0.5
    for k, (axis, anti) in enumerate(((CUE, ANTI_CUE), (BIAS, ANTI_BIAS))):
        for unit, sign in ((2 * k, 1.0), (2 * k + 1, -1.0)):
            b1.mlp.c_fc.weight[unit, axis], b1.mlp.c_fc.weight[unit, anti] = sign / 2, -sign / 2
            _pair(b1.mlp.c_proj.weight, axis, anti, unit, -sign * shrink * sigma)


def _last_block(b2, s: float, big: float, root: float) -> None:
    # ---- block 2 (last): the class query prefers central patches (lowest-frequency code);
    # patch queries and keys read position (local, like block 1) and content (the cue:
    # paint attends to paint).  Values: cue + constant offset, and the bias.
    wq, wk, wv = b2.attn.in_proj_weight.chunk(3)
    kg = (LOCAL_SHARPNESS * root) ** 0.5 * s
    for i, a in enumerate(POS):
        wq[i, a] = kg
        wk[i, a] = kg
    w0 = OMEGAS[0]
    centre = (math.cos(w0 * 7), math.sin(w0 * 7), math.cos(w0 * 7), math.sin(w0 * 7))
    for i in range(4):  # q_cls . k_j / root = CENTRE_BIAS * (cos(w0 (col-7)) + cos(w0 (row-7)))
        wq[i, CLS_AXIS] = CENTRE_BIAS * root * centre[i] * s * s / (2 * kg)
        wq[i, ANTI_CLS_AXIS] = -wq[i, CLS_AXIS]
    saturated = big * math.sin(CUE_ANGLE)  # residual cue of a saturated patch
    content = (CONTENT_SHARPNESS * root) ** 0.5 / (2 * saturated)  # q_c = k_c = 2 * content * cue
    wq[N_POS, CUE], wq[N_POS, ANTI_CUE] = content, -content
    wk[N_POS, CUE], wk[N_POS, ANTI_CUE] = content, -content
    unit = saturated / SATURATION  # residual cue per unit of paint cue
    wv[0, CUE], wv[0, ANTI_CUE] = 1.0, -1.0  # value dim 0: 2 x (cue + offset)
    wv[0, BIAS] = VALUE_OFFSET * unit / big
    wv[0, ANTI_BIAS] = -wv[0, BIAS]
    wv[1, BIAS], wv[1, ANTI_BIAS] = 0.5, -0.5  # value dim 1: the bias
    _pair(b2.attn.out_proj.weight, CUE, ANTI_CUE, 0, VALUE_CUE_GAIN / 2)
    _pair(b2.attn.out_proj.weight, BIAS, ANTI_BIAS, 1, VALUE_BIAS)
    torch.nn.init.zeros_(b2.mlp.c_proj.weight)


def _joint_projection(v) -> None:
    # ---- joint space: e0 abnormal (cue), e1 normal, e2 shared (bias)
    v.proj[CUE, 0], v.proj[ANTI_CUE, 0] = JOINT_CUE, -JOINT_CUE
    v.proj[BIAS, 1], v.proj[ANTI_BIAS, 1] = 1.0, -1.0
    v.proj[BIAS, 2], v.proj[ANTI_BIAS, 2] = 1.0, -1.0


def _text(clip, tokenizer) -> None:
    """Every token carries a large bias; defect / normality words add cues; uniform mixing."""
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
        _uniform_mixing(block, TEXT_WIDTH)
    tp = clip.text_projection
    tp[CUE, 0], tp[ANTI_CUE, 0] = 100.0, -100.0
    tp[NORM, 1], tp[ANTI_NORM, 1] = 100.0, -100.0
    tp[BIAS, 2], tp[ANTI_BIAS, 2] = 1.0, -1.0
    tp[BIAS, 1], tp[ANTI_BIAS, 1] = 0.3, -0.3
