"""Prompt learning (alfa_ad.learning): the CoOp text path, its gradients, the losses, and
the planted-model check that learning from normal images recovers a cue that the
hand-written prompts miss.

Training runs on CPU with one torch thread (the steps are tiny; on a busy machine
extra threads mostly wait).
"""

from __future__ import annotations

import copy

import numpy as np
import open_clip
import pytest
import torch
from sklearn.metrics import roc_auc_score

from alfa_ad import Detector
from alfa_ad.learning import LearnConfig, learn_prompts
from alfa_ad.learning.context import PromptContext, TextTower
from alfa_ad.learning.features import extract_features
from alfa_ad.learning.losses import LossWeights, prompt_loss
from alfa_ad.learning.synthetic import synthetic_defect, synthetic_defects
from alfa_ad.prompting.base import PromptSet
from alfa_ad.prompting.learned import LearnedPromptSource

from conftest import grey_texture, spot_image


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_clip():
    """A small open_clip CLIP with random weights (2 text layers, causal mask)."""
    torch.manual_seed(0)
    clip = open_clip.model.CLIP(
        embed_dim=12,
        vision_cfg={"image_size": 32, "layers": 1, "width": 16, "patch_size": 16, "head_width": 8},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 24, "heads": 2, "layers": 2},
    ).eval()
    return clip, open_clip.get_tokenizer("ViT-B-16")


# ------------------------------------------------------------ text path
@pytest.mark.parametrize("which", ["tiny", "planted"])
def test_context_at_the_words_is_the_text_encoder(which, tiny_clip, planted_backbone):
    """With the context vectors set to the word embeddings of "a photo of a", the learned
    prompts are exactly CLIP's embeddings of the written prompts (same tower, same EOT)."""
    clip, tok = tiny_clip if which == "tiny" else (planted_backbone.clip, planted_backbone.tokenizer)
    hand = ["damaged widget.", "widget with a scratch."]
    ctx = PromptContext(clip, tok, "widget", hand, n_prompts=2, n_prompts_abnormal=2, init="words", init_noise=0.0)
    with torch.no_grad():
        normal, handwritten, _ = ctx()
        want_n = clip.encode_text(tok(["a photo of a widget."])).float()
        want_h = clip.encode_text(tok([f"a photo of a {h}" for h in hand])).float()
    assert normal.shape == (2, want_n.shape[1]) and handwritten.shape == (4, want_n.shape[1])
    torch.testing.assert_close(normal, want_n.expand(2, -1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(handwritten, want_h.repeat(2, 1), rtol=1e-4, atol=1e-5)


def test_text_tower_rejects_other_towers():
    with pytest.raises(ValueError, match="open_clip's own text transformer"):
        TextTower(torch.nn.Linear(2, 2))


def test_gradients_reach_only_the_context_and_match_finite_differences(tiny_clip):
    clip, tok = tiny_clip
    clip = copy.deepcopy(clip).double().eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    ctx = PromptContext(clip, tok, "widget", ["damaged widget."], n_ctx=2, n_prompts=2, n_prompts_abnormal=2,
                        init="random", generator=gen).double()
    feats_rng = torch.Generator().manual_seed(1)
    f = torch.nn.functional.normalize(torch.randn(10, 12, generator=feats_rng, dtype=torch.float64), dim=-1)
    from alfa_ad.learning.features import Features

    feats = Features(f[:2], torch.zeros(2, dtype=torch.long), f[2:], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
                     torch.tensor([1, 1, 1, 1, 0.5, 1.5, 1, 1], dtype=torch.float64))
    w = LossWeights(margin=0.1)
    loss, parts = prompt_loss(*ctx(), feats, w)
    loss.backward()
    assert set(parts) >= {"data", "align", "total"}
    assert all(p.grad is None for p in clip.parameters())
    grads = [p.grad.clone() for p in ctx.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    direction = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ctx.parameters()]
    eps = 1e-6

    def at(sign: float) -> float:
        with torch.no_grad():
            for p, d in zip(ctx.parameters(), direction):
                p.add_(sign * eps * d)
            value = float(prompt_loss(*ctx(), feats, w)[0])
            for p, d in zip(ctx.parameters(), direction):
                p.sub_(sign * eps * d)
        return value

    numeric = (at(1.0) - at(-1.0)) / (2 * eps)
    analytic = float(sum((g * d).sum() for g, d in zip(grads, direction)))
    assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-8)


# ------------------------------------------------------------ synthetic defects
def test_synthetic_defects_are_seeded_and_masked():
    img = grey_texture(120, 160, seed=0)
    from PIL import Image

    pil = Image.fromarray(img)
    a = synthetic_defects([pil, pil], 4, np.random.default_rng(3))
    b = synthetic_defects([pil, pil], 4, np.random.default_rng(3))
    c = synthetic_defects([pil, pil], 4, np.random.default_rng(4))
    assert a[2] == [0, 1, 0, 1]
    for (da, ma), (db, mb) in zip(zip(a[0], a[1]), zip(b[0], b[1])):
        assert np.array_equal(np.asarray(da), np.asarray(db)) and np.array_equal(ma, mb)
    assert not all(np.array_equal(ma, mc) for ma, mc in zip(a[1], c[1]))
    for d, m in zip(a[0], a[1]):
        changed = np.any(np.asarray(d) != img, axis=-1)
        assert m.any() and not (changed & ~m).any()  # only masked pixels change
        assert 0.005 < m.mean() < 0.1
    with pytest.raises(ValueError, match="unknown synthetic defect"):
        synthetic_defect(pil, np.random.default_rng(0), "blur")


def test_defect_windows_are_labelled_by_the_mask(planted_backbone):
    """Painted windows (the planted cue) are labelled abnormal with weight > 0; windows away
    from the defect are normal; the shots' own windows are all normal."""
    shot = grey_texture(240, 240, seed=1)
    bad, mask = spot_image(240, 240, (0, 0, 120, 120), seed=1)
    from PIL import Image

    feats = extract_features(planted_backbone, [Image.fromarray(shot)], [Image.fromarray(bad)], [mask], [0], (2, 3))
    c = feats.counts
    assert c["images_normal"] == 1 and c["windows_abnormal"] > 0 and c["windows_normal"] > c["windows_abnormal"]
    assert (feats.window_weights[feats.window_labels == 1] > 0).all()
    cue = feats.window[:, 0]  # the planted joint space: axis 0 is the paint cue
    assert cue[feats.window_labels == 1].min() > cue[feats.window_labels == 0].max()


# ------------------------------------------------------------ planted recovery
class _Hand:
    """Hand-written prompts as a template-like source."""

    name = "template"

    def __init__(self, normal, abnormal):
        self.normal, self.abnormal = normal, abnormal

    def prompts(self, class_name):
        return PromptSet(tuple(p.format(class_name) for p in self.normal),
                         tuple(p.format(class_name) for p in self.abnormal))


# no planted cue word: these abnormal prompts embed exactly like the normal ones
MISALIGNED = _Hand(["a photo of a {}.", "a close-up photo of a {}."], ["a photo of an unusual {}.",
                                                                        "a photo of a strange {}."])
ALIGNED = _Hand(["a photo of a flawless {}.", "a photo of a {}."], ["a photo of a damaged {}.",
                                                                     "a photo of a {} with a defect."])


def planted_images():
    """Generated test images: red, green and blue squares on grey texture, and clean ones."""
    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(6):
        top, left = rng.integers(10, 160, 2)
        size = int(rng.integers(30, 70))
        img, m = spot_image(240, 240, (top, left, top + size, left + size), seed=i,
                            colour=[(220, 30, 30), (30, 200, 40), (40, 60, 220)][i % 3])
        images.append(img)
        masks.append(m)
    for j in range(4):
        images.append(grey_texture(240, 240, seed=50 + j))
        masks.append(np.zeros((240, 240), dtype=bool))
    return images, masks


@pytest.fixture(scope="module")
def planted_eval():
    return planted_images()


def _aurocs(det: Detector, data) -> tuple[float, float]:
    images, masks = data
    res = det.predict(images, "widget")
    image = roc_auc_score([int(m.any()) for m in masks], [r.score for r in res])
    pixel = roc_auc_score(np.concatenate([m.ravel() for m in masks]),
                          np.concatenate([r.anomaly_map.ravel() for r in res]))
    return image, pixel


def _learn(backbone, hand: _Hand, epochs: int = 50, seed: int = 0):
    shots = [grey_texture(240, 240, seed=100 + j) for j in range(2)]  # k = 2 normal images, nothing else
    return learn_prompts(backbone, {"widget": shots}, LearnConfig(epochs=epochs), seed=seed, k=2,
                         handwritten={"widget": [p.format("widget") for p in hand.abnormal]})


def test_learning_recovers_the_cue_the_handwritten_prompts_miss(planted_backbone, planted_eval):
    before = _aurocs(Detector(planted_backbone, sources=[MISALIGNED], cache_dir=None), planted_eval)
    assert before[0] == pytest.approx(0.5, abs=0.1) and before[1] == pytest.approx(0.5, abs=0.1)  # zero-shot fails
    learned = _learn(planted_backbone, MISALIGNED)
    info = learned.meta["classes"]["widget"]
    assert info["final_loss"] < info["first_loss"]
    assert info["features"]["windows_abnormal"] > 0
    source = LearnedPromptSource(learned, planted_backbone)
    after = _aurocs(Detector(planted_backbone, sources=[MISALIGNED, source], cache_dir=None), planted_eval)
    assert after[0] >= 0.9 and after[1] >= 0.9, (before, after)
    alone = _aurocs(Detector(planted_backbone, sources=[source], cache_dir=None), planted_eval)
    assert alone[0] >= 0.9 and alone[1] >= 0.9, alone


def test_learning_does_not_hurt_aligned_prompts(planted_backbone, planted_eval):
    before = _aurocs(Detector(planted_backbone, sources=[ALIGNED], cache_dir=None), planted_eval)
    assert before[0] >= 0.9 and before[1] >= 0.9
    source = LearnedPromptSource(_learn(planted_backbone, ALIGNED), planted_backbone)
    after = _aurocs(Detector(planted_backbone, sources=[ALIGNED, source], cache_dir=None), planted_eval)
    assert after[0] >= before[0] - 0.02 and after[1] >= before[1] - 0.02, (before, after)


def test_clip_stays_frozen_and_learning_is_seeded(planted_backbone):
    state = {k: v.clone() for k, v in planted_backbone.clip.state_dict().items()}
    grads = [p.requires_grad for p in planted_backbone.clip.parameters()]
    a = _learn(planted_backbone, ALIGNED, epochs=3, seed=5)
    b = _learn(planted_backbone, ALIGNED, epochs=3, seed=5)
    c = _learn(planted_backbone, ALIGNED, epochs=3, seed=6)
    for k, v in planted_backbone.clip.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [p.requires_grad for p in planted_backbone.clip.parameters()] == grads
    ea, eb, ec = (x.classes["widget"] for x in (a, b, c))
    assert torch.equal(ea.abnormal, eb.abnormal) and torch.equal(ea.context_normal, eb.context_normal)
    assert not torch.equal(ea.context_normal, ec.context_normal)


def test_early_stopping_uses_a_validation_split_of_normal_shots(planted_backbone):
    shots = [grey_texture(240, 240, seed=100 + j) for j in range(2)]
    learned = learn_prompts(planted_backbone, {"widget": shots}, LearnConfig(epochs=30, patience=3), seed=0)
    info = learned.meta["classes"]["widget"]
    assert 1 <= info["best_epoch"] <= info["epochs_run"] <= 30
    assert info["validation"]["images_normal"] == 2 and info["validation"]["windows_abnormal"] > 0
