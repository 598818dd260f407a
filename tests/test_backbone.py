"""The CLIP backbone wrapper (alfa_ad.model.backbone) on the planted model, plus
one slow round-trip through a real open_clip architecture with random weights."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from alfa_ad.aligners import build_aligner, encode
from alfa_ad.aligners.masked import MaskedAligner
from alfa_ad.model import ClipBackbone, WeightsInfo, WeightsUnavailableError, load_backbone
from alfa_ad.model.planted import ANTI_CUE, CUE, NORM
from alfa_ad.scoring.windows import make_window_indices
from alfa_ad.registry import ALIGNERS

LOCAL_ALIGNERS = [n for n in ALIGNERS.names() if ALIGNERS.get(n).localizes]  # "none" has no windows

ABNORMAL_PROMPT = "a photo of a damaged widget."
NORMAL_PROMPT = "a photo of a flawless widget."
SMALL_VIT = "ViT-S-32"  # the smallest named open_clip ViT: cheap to build for error-path tests


def _features(bb: ClipBackbone, arrays):
    pixels = bb.preprocess([Image.fromarray(a) for a in arrays])
    tokens = bb.tokens(pixels)
    z = bb.penultimate(tokens)
    return pixels, tokens, z


def _all_patches(bb: ClipBackbone) -> torch.Tensor:
    return torch.arange(bb.grid[0] * bb.grid[1]).unsqueeze(0)


def _windows(bb: ClipBackbone, kind: str, pixels: torch.Tensor, windows: torch.Tensor, **options) -> torch.Tensor:
    """Local embeddings ``(B, n, D)`` of ``windows`` from the aligner ``kind``."""
    aligner = build_aligner(kind, bb, **options)
    feats = encode(bb, pixels)
    return aligner(feats, aligner.prepare(feats), windows)


# ------------------------------------------------------------------ planted model basics
def test_planted_backbone_geometry(planted_backbone):
    bb = planted_backbone
    assert bb.image_size == (240, 240)
    assert bb.grid == (15, 15)  # 240 / 16
    assert bb.embed_dim == 8
    assert bb.dtype == torch.float32
    assert bb.weights.source == "planted"
    assert not bb.weights.meaningful


@torch.no_grad()
def test_split_forward_matches_encode_image(planted_backbone, make_spot_image):
    bb = planted_backbone
    img, _ = make_spot_image()
    pixels, tokens, z = _features(bb, [img])
    assert tokens.shape == (1, 1 + 225, 64)  # planted v2: width 64
    g, last = bb.global_embedding(z)
    torch.testing.assert_close(g, bb.clip.encode_image(pixels).float(), atol=1e-5, rtol=1e-5)
    assert last.shape == tokens.shape


@torch.no_grad()
def test_full_window_local_embedding_equals_global(planted_backbone, make_spot_image):
    bb = planted_backbone
    imgs = [make_spot_image()[0], make_spot_image(300, 180, (200, 20, 260, 80), seed=1)[0]]
    pixels, tokens, z = _features(bb, imgs)
    g, _ = bb.global_embedding(z)
    full = _all_patches(bb)
    for kind in ("value", "masked", "none"):
        local = _windows(bb, kind, pixels, full)
        assert local.shape == (2, 1, 8)
        torch.testing.assert_close(local[:, 0], g, atol=1e-5, rtol=0)
    # dense: a full window is the mean of every patch's unit embedding, not f(x)
    dense = _windows(bb, "dense", pixels, full)
    assert dense.shape == (2, 1, 8) and not torch.allclose(dense[:, 0], F.normalize(g, dim=-1), atol=1e-2)


@torch.no_grad()
def test_chunking_does_not_change_window_embeddings(planted_backbone, make_spot_image):
    bb = planted_backbone
    pixels, _, _ = _features(bb, [make_spot_image()[0]])
    windows = make_window_indices(bb.grid, 3)
    torch.testing.assert_close(_windows(bb, "value", pixels, windows, chunk=7), _windows(bb, "value", pixels, windows))
    torch.testing.assert_close(_windows(bb, "masked", pixels, windows[:20], max_tokens=30),  # 3 windows a call
                               _windows(bb, "masked", pixels, windows[:20]))


@pytest.mark.parametrize("max_tokens", [4096, 64, 1])
def test_packed_masked_windows_equal_the_towers_own_blocks(planted_backbone, make_spot_image, monkeypatch, max_tokens):
    """The packed path (every scale and image in one token matrix, attention per window, the
    last block's MLP for class tokens only) gives the vision tower's own forward per window;
    attention across the packed row (a wrong packing) does not."""
    from alfa_ad.aligners import masked

    bb = planted_backbone
    images = [make_spot_image()[0], make_spot_image(seed=3)[0]]
    feats = encode(bb, bb.preprocess([Image.fromarray(im) for im in images]))
    scales = [make_window_indices(bb.grid, s) for s in (2, 3, 4)]
    packed = MaskedAligner(bb, max_tokens=max_tokens)
    assert packed.packed
    reference = MaskedAligner(bb)
    reference.packed = False  # each window through the tower's transformer (nn.MultiheadAttention)
    with torch.inference_mode():
        want = reference.window_embeddings(feats, None, scales)
        got = packed.window_embeddings(feats, None, scales)
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
        one_window = masked._attention

        def across_the_row(block, h, shapes, classes_only=False):  # a wrong packing: no window bounds
            out = one_window(block, h, [(1, h.shape[1])])
            if classes_only:
                out = out[:, [start + j * length for (n, length), start in zip(shapes, masked._starts(shapes))
                              for j in range(n)]]
            return out

        monkeypatch.setattr(masked, "_attention", across_the_row)
        leaked = packed.window_embeddings(feats, None, scales)
    leak = max(float((lk - w).abs().max()) for lk, w in zip(leaked, want))
    if max_tokens == 1:  # one window a call: the row is the window, nothing to leak into
        assert leak < 1e-5
    else:
        assert leak > 1e-2


def _patch_red_fraction(mask: np.ndarray, bb: ClipBackbone) -> np.ndarray:
    """Fraction of each model patch that is spot, after the whole-image resize to 240x240."""
    h, w = bb.image_size
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    gh, gw = bb.grid
    return m.reshape(gh, h // gh, gw, w // gw).mean(axis=(1, 3))


@pytest.mark.parametrize("kind", LOCAL_ALIGNERS)
@torch.no_grad()
def test_windows_on_the_red_spot_align_with_abnormal_prompt(planted_backbone, make_spot_image, kind):
    bb = planted_backbone
    img, mask = make_spot_image()  # 200x320, red at rows 30-70, columns 220-290 (upper right)
    pixels, _, _ = _features(bb, [img])
    windows = make_window_indices(bb.grid, 2)
    emb = _windows(bb, kind, pixels, windows)
    text = F.normalize(bb.encode_text([ABNORMAL_PROMPT, NORMAL_PROMPT]), dim=-1)
    sims = F.normalize(emb[0], dim=-1) @ text.T  # (n_windows, 2)
    # what the methods compare: similarity to the abnormal minus to the normal prompt
    cos = (sims[:, 0] - sims[:, 1]).numpy()

    frac = _patch_red_fraction(mask, bb).ravel()[windows.numpy()].mean(1)  # red fraction per window
    on_spot, off_spot = cos[frac >= 0.5], cos[frac == 0]
    assert on_spot.size >= 4 and off_spot.size >= 100
    assert on_spot.min() > off_spot.max()
    # the best window sits in the upper right: spot rows 36-84 / cols 165-217 at 240 px ->
    # patch rows 2-5, columns 10-13 (a transposed map would put it at rows 10-13)
    best = int(cos.argmax())
    row, col = divmod(int(windows[best, 0]), bb.grid[1])
    assert 2 <= row <= 4 and 10 <= col <= 12, (row, col)
    # and the window in the far lower-left corner scores like any clean window
    corner = (bb.grid[0] - 2) * (bb.grid[1] - 1)  # top-left corner (13, 0) in the window order
    assert cos[corner] < on_spot.min()


@torch.no_grad()
def test_planted_text_tower_separates_prompts(planted_backbone):
    bb = planted_backbone
    emb = F.normalize(bb.encode_text([ABNORMAL_PROMPT, NORMAL_PROMPT]), dim=-1)
    assert emb.shape == (2, 8)
    _, _, z = _features(bb, [np.full((64, 64, 3), (220, 30, 30), np.uint8)])
    g = F.normalize(bb.global_embedding(z)[0], dim=-1)[0]
    # an all-red image is closer to the abnormal prompt; a grey one closer to the normal one
    assert g @ emb[0] > g @ emb[1]
    _, _, z = _features(bb, [np.full((64, 64, 3), 128, np.uint8)])
    g = F.normalize(bb.global_embedding(z)[0], dim=-1)[0]
    assert g @ emb[1] > g @ emb[0]


def test_encode_text_batches_and_empty(planted_backbone):
    bb = planted_backbone
    prompts = [f"a photo of a damaged part number {i}." for i in range(5)]
    torch.testing.assert_close(bb.encode_text(prompts, batch_size=2), bb.encode_text(prompts))
    assert bb.encode_text([]).shape == (0, 8)


# ------------------------------------------------------------------ weights choices / labels
def test_bogus_weights_choice_is_rejected():
    with pytest.raises(ValueError, match="pretrained, random, planted") as exc:
        load_backbone(weights="bogus")
    assert "'bogus'" in str(exc.value)


def test_unknown_model_name_is_rejected():
    with pytest.raises(ValueError, match="unknown open_clip model 'no-such-model'"):
        load_backbone("no-such-model", weights="random")
    # also for the pretrained path: rejected before any download is attempted
    with pytest.raises(ValueError, match="list_models"):
        load_backbone("no-such-model", weights="pretrained")


def test_weights_labels():
    random = WeightsInfo("ViT-B-16", "random", "seed 0")
    assert "random weights" in random.label and "not meaningful" in random.label
    assert not random.meaningful
    assert WeightsInfo("ViT-B-16", "checkpoint", "x.pt").meaningful
    assert WeightsInfo("ViT-B-16", "pretrained", "laion").meaningful
    planted = WeightsInfo("planted-vit", "planted", "colour cue: red")
    assert "planted" in planted.label and not planted.meaningful
    d = random.as_dict()
    assert d == {"model": "ViT-B-16", "source": "random", "detail": "seed 0", "label": random.label}


# ------------------------------------------------------------------ checkpoints
def test_missing_checkpoint_names_path(tmp_path):
    path = tmp_path / "nope" / "weights.pt"
    with pytest.raises(WeightsUnavailableError, match="checkpoint file not found") as exc:
        load_backbone(SMALL_VIT, checkpoint=path)
    assert str(path) in str(exc.value)


def test_checkpoint_directory_is_not_a_file(tmp_path):
    with pytest.raises(WeightsUnavailableError) as exc:
        load_backbone(SMALL_VIT, checkpoint=tmp_path)
    assert str(tmp_path) in str(exc.value)


def test_garbage_checkpoint_names_path(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x01not a checkpoint at all\n" * 10)
    with pytest.raises(WeightsUnavailableError) as exc:
        load_backbone(SMALL_VIT, checkpoint=path)
    message = str(exc.value)
    assert str(path) in message and SMALL_VIT in message
    assert "\n" not in message


class _Touch:
    """Unpickling this object would create ``marker`` (i.e. run arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_arbitrary_pickle_is_refused(tmp_path):
    """weights_only=True: a pickle that would run code on load is refused, the code never runs."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Touch(marker)}, path)  # torch.save pickles it
    with pytest.raises(WeightsUnavailableError) as exc:
        load_backbone(SMALL_VIT, checkpoint=path)
    assert str(path) in str(exc.value)
    assert not marker.exists(), "checkpoint loading executed pickled code (weights_only not used)"
    # the same payload through a raw pickle.load would have created the marker
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Touch(marker)))
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_checkpoint_of_wrong_architecture_is_refused(tmp_path, planted_backbone):
    path = tmp_path / "planted.pt"
    torch.save(planted_backbone.clip.state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="cannot load as ViT-S-32 checkpoint") as exc:
        load_backbone(SMALL_VIT, checkpoint=path)
    assert str(path) in str(exc.value)


@pytest.mark.slow
@torch.no_grad()
def test_random_vit_b16_plus_checkpoint_round_trip(tmp_path, make_spot_image):
    """The real default architecture (random weights): checkpoint round trip, and the
    re-implemented last block (non-uniform attention here) agrees with open_clip."""
    model = "ViT-B-16-plus-240"
    rnd = load_backbone(model, weights="random", seed=0, device="cpu")
    assert rnd.weights.source == "random" and "random weights" in rnd.weights.label
    path = tmp_path / "random-b16plus.pt"
    torch.save(rnd.clip.state_dict(), path)
    loaded = load_backbone(model, checkpoint=path, device="cpu")
    assert loaded.weights.source == "checkpoint" and loaded.weights.meaningful
    assert path.name in loaded.weights.detail
    prompts = [ABNORMAL_PROMPT, NORMAL_PROMPT]
    torch.testing.assert_close(loaded.encode_text(prompts), rnd.encode_text(prompts), atol=0, rtol=0)
    # weights from a file are identified by the file's SHA-256 (no tensor hashing at start-up)
    assert loaded.weights.sha256 and loaded.fingerprint != rnd.fingerprint
    assert load_backbone(model, checkpoint=path, device="cpu").fingerprint == loaded.fingerprint

    # split forward == open_clip's encode_image; full-window local embedding == global
    img, _ = make_spot_image()
    pixels, _, z = _features(rnd, [img])
    g, _ = rnd.global_embedding(z)
    torch.testing.assert_close(g, rnd.clip.encode_image(pixels).float(), atol=1e-4, rtol=1e-4)
    full = _all_patches(rnd)
    for kind in ("value", "masked"):
        torch.testing.assert_close(_windows(rnd, kind, pixels, full)[:, 0], g, atol=1e-4, rtol=1e-4)
        # a real (non-uniform) attention: a 2x2 window differs from the global embedding
        win = make_window_indices(rnd.grid, 2)[:1]
        assert not torch.allclose(_windows(rnd, kind, pixels, win)[:, 0], g, atol=1e-3)
    dense = _windows(rnd, "dense", pixels, make_window_indices(rnd.grid, 1))  # every patch on its own
    assert dense.shape == (1, rnd.grid[0] * rnd.grid[1], rnd.embed_dim)
    torch.testing.assert_close(dense.norm(dim=-1), torch.ones(1, dense.shape[1]), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ fingerprint (text cache key)
def _copy_backbone(bb: ClipBackbone, edit) -> ClipBackbone:
    clip = copy.deepcopy(bb.clip)
    with torch.no_grad():
        edit(clip)
    return ClipBackbone(clip, bb.tokenizer, bb.weights, device="cpu")


def _token_id(bb: ClipBackbone, word: str) -> int:
    return int(bb.tokenizer([word])[0][1])


def test_fingerprint_is_stable_and_ignores_vision_tower(planted_backbone):
    bb = planted_backbone
    fp = bb.fingerprint
    assert isinstance(fp, str) and len(fp) == 32
    same = _copy_backbone(bb, lambda clip: None)
    assert same.fingerprint == fp
    vision_edit = _copy_backbone(bb, lambda clip: clip.visual.proj.mul_(2.0))
    assert vision_edit.fingerprint == fp  # text embeddings do not depend on the vision tower


def test_fingerprint_changes_when_one_token_embedding_changes(planted_backbone):
    bb = planted_backbone
    wid = _token_id(bb, "widget")

    def edit(clip):
        clip.token_embedding.weight[wid, NORM] += 0.5

    modified = _copy_backbone(bb, edit)
    # the edit really changes the text embedding of a prompt with that word ...
    a, b = bb.encode_text(["a photo of a widget."]), modified.encode_text(["a photo of a widget."])
    assert not torch.allclose(a, b)
    # ... so the cache key must change
    assert modified.fingerprint != bb.fingerprint


def test_fingerprint_detects_sum_preserving_token_edit(planted_backbone, tmp_path):
    from alfa_ad.model.text_cache import TextEmbeddingCache

    bb = planted_backbone
    wid = _token_id(bb, "widget")

    def edit(clip):
        clip.token_embedding.weight[wid, CUE] += 1.0
        clip.token_embedding.weight[wid, ANTI_CUE] -= 1.0

    modified = _copy_backbone(bb, edit)
    prompt = ["a photo of a widget."]
    fresh = modified.encode_text(prompt)
    assert not torch.allclose(bb.encode_text(prompt), fresh)  # the text tower did change
    cache = TextEmbeddingCache(tmp_path)
    cache.encode(bb, prompt)
    served = cache.encode(modified, prompt)
    cache.close()
    torch.testing.assert_close(served, fresh)  # fails: the cache returns bb's embedding
