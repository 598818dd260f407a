"""Pure scoring math (alfa_ad.scoring): hand-computed numbers, no model."""

from __future__ import annotations

import math

import pytest
import torch

from alfa_ad.scoring.contextual import contextual_scores, interval_distance, keep_masks, masked_class_embeddings
from alfa_ad.scoring.windows import coverage_matrix, harmonic_aggregation, harmonic_mean, make_window_indices
from alfa_ad.scoring.zero_shot import TEMPERATURE, anomaly_probability, image_score, rank_one_transfer

T = torch.tensor


# ----------------------------------------------------------------- interval distance
def test_interval_distance_inside_below_above():
    d = T([0.15, 0.20, 0.25, 0.30, 0.05, 0.42])
    out = interval_distance(d, T(0.20), T(0.30))
    # inside [0.2, 0.3] (ends included) -> 0; 0.05 is 0.15 below; 0.42 is 0.12 above
    torch.testing.assert_close(out, T([0.05, 0.0, 0.0, 0.0, 0.15, 0.12]))


def test_interval_distance_broadcasts_per_row():
    d = T([[0.1, 0.5], [0.1, 0.5]])
    lo, hi = T([[0.0], [0.2]]), T([[0.2], [0.4]])
    # row 0: [0, 0.2] -> 0.1 inside, 0.5 is 0.3 above; row 1: [0.2, 0.4] -> 0.1 below, 0.1 above
    torch.testing.assert_close(interval_distance(d, lo, hi), T([[0.0, 0.3], [0.1, 0.1]]))


# ----------------------------------------------------------------- contextual scores (eq. 4)
def _s(gap: float, k: float = 1.0) -> float:
    return gap / (gap + math.exp(-k * gap))


def test_contextual_scores_hand_example():
    # normal sims [0.30, 0.20] -> I+ = [0.20, 0.30]; abnormal [0.25, 0.10] -> I- = [0.10, 0.25]
    sn, sa = contextual_scores(T([[0.30, 0.20]]), T([[0.25, 0.10]]), k=1.0)
    # normal 0.30: D(I+) = 0, D(I-) = 0.05 -> 0.05 / (0.05 + e^-0.05) = 0.05 / 1.0012294 = 0.0499386
    # normal 0.20: inside both intervals -> 0
    # abnormal 0.25: inside both ([0.2, 0.3] and [0.1, 0.25]) -> 0
    # abnormal 0.10: D(I+) = 0.10, D(I-) = 0 -> 0.1 / (0.1 + e^-0.1) = 0.1 / 1.0048374 = 0.0995186
    assert sn[0, 0].item() == pytest.approx(0.0499386, abs=1e-6)
    assert sn[0, 0].item() == pytest.approx(_s(0.05), abs=1e-6)
    assert sn[0, 1].item() == 0.0
    assert sa[0, 0].item() == 0.0
    assert sa[0, 1].item() == pytest.approx(0.0995186, abs=1e-6)
    assert sa[0, 1].item() == pytest.approx(_s(0.10), abs=1e-6)


def test_contextual_scores_are_in_unit_interval_and_per_image():
    g = torch.Generator().manual_seed(0)
    sim_n = torch.rand(5, 7, generator=g) * 2 - 1
    sim_a = torch.rand(5, 4, generator=g) * 2 - 1
    sn, sa = contextual_scores(sim_n, sim_a)
    assert sn.shape == (5, 7) and sa.shape == (5, 4)
    for s in (sn, sa):
        assert (s >= 0).all() and (s < 1).all()
    # each image uses only its own intervals: scoring image 2 alone gives the same row
    sn2, sa2 = contextual_scores(sim_n[2:3], sim_a[2:3])
    torch.testing.assert_close(sn2[0], sn[2])
    torch.testing.assert_close(sa2[0], sa[2])


def test_contextual_scores_disjoint_intervals_keep_everything():
    # I+ = [0.5, 0.6], I- = [0.1, 0.2]: every prompt lies outside the other side's interval
    sn, sa = contextual_scores(T([[0.5, 0.6]]), T([[0.1, 0.2]]))
    assert (sn > 0).all() and (sa > 0).all()
    # normal 0.5 is 0.3 above I- -> 0.3 / (0.3 + e^-0.3) = 0.3 / 1.0408182 = 0.2882348
    assert sn[0, 0].item() == pytest.approx(0.2882348, abs=1e-6)
    # abnormal 0.2 is 0.3 below I+ -> same gap, same score
    assert sa[0, 1].item() == pytest.approx(0.2882348, abs=1e-6)


def test_contextual_scores_k_changes_slope():
    sn1, _ = contextual_scores(T([[0.30, 0.20]]), T([[0.25, 0.10]]), k=1.0)
    sn2, sa2 = contextual_scores(T([[0.30, 0.20]]), T([[0.25, 0.10]]), k=2.0)
    # k = 2: 0.05 / (0.05 + e^-0.1) = 0.05 / 0.9548374 = 0.0523649 (k = 1 gave 0.0499386)
    assert sn2[0, 0].item() == pytest.approx(0.0523649, abs=1e-6)
    assert sn2[0, 0] > sn1[0, 0]
    # zeros stay zero for any k
    assert sn2[0, 1].item() == 0.0 and sa2[0, 0].item() == 0.0


# ----------------------------------------------------------------- keep masks
def test_keep_masks_keeps_positive_scores():
    kn, ka = keep_masks(T([[0.05, 0.0, 0.2]]), T([[0.0, 0.1]]))
    assert kn.tolist() == [[True, False, True]]
    assert ka.tolist() == [[False, True]]
    assert kn.dtype == torch.bool


def test_keep_masks_empty_side_falls_back_to_all_per_image():
    # image 0: no normal prompt scores > 0 -> all normal kept; image 1: normal selection kept
    # image 1: no abnormal prompt scores > 0 -> all abnormal kept
    kn, ka = keep_masks(T([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]]), T([[0.0, 0.4], [0.0, 0.0]]))
    assert kn.tolist() == [[True, True, True], [False, True, False]]
    assert ka.tolist() == [[False, True], [True, True]]


# ----------------------------------------------------------------- masked class embeddings
def test_masked_class_embeddings_hand_example():
    normal = T([[1.0, 0.0], [0.6, 0.8]])
    abnormal = T([[0.0, -1.0], [-1.0, 0.0]])
    keep_n = T([[True, True], [False, True]])
    keep_a = T([[True, False], [True, True]])
    out = masked_class_embeddings(normal, abnormal, keep_n, keep_a)
    assert out.shape == (2, 2, 2)
    # image 0 normal: mean([1,0],[0.6,0.8]) = [0.8, 0.4], |.| = 0.894427 -> [0.894427, 0.447214]
    torch.testing.assert_close(out[0, 0], T([0.894427, 0.447214]), atol=1e-6, rtol=0)
    # image 0 abnormal: only [0,-1]
    torch.testing.assert_close(out[0, 1], T([0.0, -1.0]))
    # image 1 normal: only [0.6, 0.8]
    torch.testing.assert_close(out[1, 0], T([0.6, 0.8]))
    # image 1 abnormal: mean([0,-1],[-1,0]) = [-0.5,-0.5] -> [-0.707107, -0.707107]
    torch.testing.assert_close(out[1, 1], T([-0.707107, -0.707107]), atol=1e-6, rtol=0)


# ----------------------------------------------------------------- anomaly probability (eq. 10-11)
def test_anomaly_probability_hand_value():
    p = anomaly_probability(T([[[1.0, 0.0]]]), T([[1.0, 0.0], [0.0, 1.0]]), temperature=0.07)
    # cos to normal 1, to abnormal 0: exp(0) / (exp(1/0.07) + exp(0)) = 1 / (1600320.2 + 1) = 6.2487e-7
    expected = math.exp(0) / (math.exp(1 / 0.07) + math.exp(0))
    assert p.shape == (1, 1)
    assert p.item() == pytest.approx(expected, rel=1e-4)
    assert p.item() == pytest.approx(6.2487e-7, rel=1e-4)
    assert TEMPERATURE == 0.07


def test_anomaly_probability_is_norm_invariant_and_uses_cosine():
    # f = [3, 4] (cosines 0.6 to e0 normal and 0.8 to e1 abnormal), tau = 1:
    # e^0.8 / (e^0.6 + e^0.8) = 1 / (1 + e^-0.2) = 0.5498340
    classes = T([[2.0, 0.0], [0.0, 5.0]])
    p = anomaly_probability(T([[[3.0, 4.0], [0.3, 0.4]]]), classes, temperature=1.0)
    torch.testing.assert_close(p, T([[0.5498340, 0.5498340]]), atol=1e-6, rtol=0)


def test_anomaly_probability_class_shapes_agree():
    g = torch.Generator().manual_seed(1)
    b, n, d = 3, 5, 6
    emb = torch.randn(b, n, d, generator=g)
    classes = torch.randn(2, d, generator=g)
    shared = anomaly_probability(emb, classes)
    per_image = anomaly_probability(emb, classes.expand(b, 2, d))
    per_window = anomaly_probability(emb, classes.expand(b, n, 2, d))
    assert shared.shape == per_image.shape == per_window.shape == (b, n)
    torch.testing.assert_close(per_image, shared)
    torch.testing.assert_close(per_window, shared)
    # per-image classes really are used per image: swapping rows of image 1 gives 1 - p for it
    swapped = classes.expand(b, 2, d).clone()
    swapped[1] = classes.flip(0)
    out = anomaly_probability(emb, swapped)
    torch.testing.assert_close(out[1], 1 - shared[1])
    torch.testing.assert_close(out[0], shared[0])


# ----------------------------------------------------------------- image score (eq. 12)
def test_image_score_eq12():
    g = T([0.2, 0.6])
    maps = T([[[0.1, 0.8], [0.3, 0.4]], [[0.5, 0.2], [0.1, 0.0]]])
    # 0.5 * (0.2 + 0.8) = 0.5; 0.5 * (0.6 + 0.5) = 0.55
    torch.testing.assert_close(image_score(g, maps), T([0.5, 0.55]))


# ----------------------------------------------------------------- windows and harmonic aggregation
def test_make_window_indices_4x4():
    w = make_window_indices((4, 4), 2)
    assert w.shape == (9, 4)
    assert w[0].tolist() == [0, 1, 4, 5]
    assert w[1].tolist() == [1, 2, 5, 6]  # row-major by top-left corner
    assert w[3].tolist() == [4, 5, 8, 9]
    assert w[-1].tolist() == [10, 11, 14, 15]


def test_make_window_indices_non_square_and_stride():
    w = make_window_indices((2, 3), 2)
    assert w.tolist() == [[0, 1, 3, 4], [1, 2, 4, 5]]
    w3 = make_window_indices((5, 5), 3, stride=2)
    # corners (0,0), (0,2), (2,0), (2,2)
    assert w3.shape == (4, 9)
    assert w3[:, 0].tolist() == [0, 2, 10, 12]


@pytest.mark.parametrize("grid,size", [((3, 3), 4), ((2, 5), 3), ((3, 3), 0)])
def test_make_window_indices_rejects_bad_sizes(grid, size):
    with pytest.raises(ValueError, match="does not fit"):
        make_window_indices(grid, size)


def test_harmonic_aggregation_anomalib_example():
    windows = make_window_indices((3, 3), 2)  # [0,1,3,4], [1,2,4,5], [3,4,6,7], [4,5,7,8]
    cover = coverage_matrix(windows, 9)
    assert cover.shape == (9, 4)
    assert cover.sum(0).tolist() == [4, 4, 4, 4]
    assert cover.sum(1).tolist() == [1, 2, 1, 2, 4, 2, 1, 2, 1]
    out = harmonic_aggregation(T([[1.0, 0.75, 0.5, 0.25]]), cover).view(3, 3)
    # patch 1: 2 / (1 + 1/0.75) = 0.857143; centre: 4 / (1 + 1/0.75 + 2 + 4) = 0.48;
    # patch 5: 2 / (1/0.75 + 4) = 0.375; patch 7: 2 / (2 + 4) = 0.333333
    expected = T([[1.0, 0.857143, 0.75], [0.666667, 0.48, 0.375], [0.5, 0.333333, 0.25]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert out[0, 0].item() == pytest.approx(1.0)
    assert out[1, 1].item() == pytest.approx(0.48, abs=1e-7)


def test_harmonic_aggregation_zero_window_score_gives_zero_not_nan():
    """A window scoring exactly 0 zeroes the patches it covers and leaves the others alone
    (a plain ``(1 / s) @ cover.T`` gives 0 * inf = NaN for every patch it does not cover)."""
    cover = coverage_matrix(make_window_indices((3, 3), 2), 9)
    out = harmonic_aggregation(T([[0.0, 0.75, 0.5, 0.25]]), cover).view(3, 3)
    assert not torch.isnan(out).any()
    # patches 0, 1, 3, 4 are covered by window 0 (score 0) -> 0; patch 2: 0.75 alone;
    # patch 5: 2 / (1/0.75 + 4) = 0.375; patch 6: 0.5; patch 7: 2 / (2 + 4); patch 8: 0.25
    expected = T([[0.0, 0.0, 0.75], [0.0, 0.0, 0.375], [0.5, 0.333333, 0.25]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_harmonic_aggregation_batch_and_uncovered_patches():
    windows = torch.tensor([[0, 1, 3, 4]])  # one 2 x 2 window on a 3 x 3 grid (make_window_indices covers all)
    cover = coverage_matrix(windows, 9)
    out = harmonic_aggregation(T([[0.4], [0.9]]), cover)
    assert out.shape == (2, 9)
    expected_row = [1, 1, 0, 1, 1, 0, 0, 0, 0]
    torch.testing.assert_close(out[0], 0.4 * T(expected_row, dtype=torch.float32))
    torch.testing.assert_close(out[1], 0.9 * T(expected_row, dtype=torch.float32))


def test_harmonic_mean():
    # 2 / (1/1 + 1/0.5) = 2/3
    assert harmonic_mean(T([1.0, 0.5])).item() == pytest.approx(2 / 3)
    maps = T([[[1.0, 0.2]], [[0.5, 0.2]]])  # 2 scales of a 1x2 map
    torch.testing.assert_close(harmonic_mean(maps, dim=0), T([[2 / 3, 0.2]]))
    # along dim 1: [1, 0.2] -> 2 / (1 + 5) = 1/3; [0.5, 0.2] -> 2 / (2 + 5) = 2/7
    torch.testing.assert_close(harmonic_mean(maps[:, 0], dim=1), T([1 / 3, 2 / 7]))


# ----------------------------------------------------------------- rank-one text transfer
def test_rank_one_transfer_maps_global_to_local():
    g = T([[2.0, 0.0, 0.0]])  # unit g = e0
    local = T([[[0.0, 3.0, 0.0], [0.0, 0.0, 0.5]]])  # unit l = e1 (window 0), e2 (window 1)
    text = T([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # row 0: g itself, row 1: orthogonal to g
    out = rank_one_transfer(g, local, text)
    assert out.shape == (1, 2, 2, 3)
    # W_T g = l exactly (unit local embedding)
    torch.testing.assert_close(out[0, 0, 0], T([0.0, 1.0, 0.0]))
    torch.testing.assert_close(out[0, 1, 0], T([0.0, 0.0, 1.0]))
    # vectors orthogonal to g are unchanged
    torch.testing.assert_close(out[0, 0, 1], T([0.0, 0.0, 1.0]))
    torch.testing.assert_close(out[0, 1, 1], T([0.0, 0.0, 1.0]))


def test_rank_one_transfer_general_vector():
    g = T([[1.0, 0.0, 0.0]])
    local = T([[[0.0, 1.0, 0.0]]])
    text = T([[[0.6, 0.0, 0.8], [-1.0, 0.0, 0.0]]])
    out = rank_one_transfer(g, local, text)
    # t + (l - g) <g, t>: [0.6,0,0.8] + [-1,1,0]*0.6 = [0, 0.6, 0.8]; [-1,0,0] + [-1,1,0]*(-1) = [0,-1,0]
    torch.testing.assert_close(out[0, 0], T([[0.0, 0.6, 0.8], [0.0, -1.0, 0.0]]))


def test_rank_one_transfer_random_batch_identity_properties():
    gen = torch.Generator().manual_seed(3)
    b, n, d = 2, 4, 8
    g = torch.randn(b, d, generator=gen)
    local = torch.randn(b, n, d, generator=gen)
    gu = torch.nn.functional.normalize(g, dim=-1)
    lu = torch.nn.functional.normalize(local, dim=-1)
    ortho = torch.randn(b, d, generator=gen)
    ortho = ortho - (ortho * gu).sum(-1, keepdim=True) * gu  # remove the g component
    text = torch.stack([gu, ortho], dim=1)  # (B, 2, D)
    out = rank_one_transfer(g, local, text)
    torch.testing.assert_close(out[:, :, 0], lu, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, :, 1], ortho.unsqueeze(1).expand(b, n, d), atol=1e-5, rtol=0)
    # a window whose local embedding equals the global one leaves the text untouched
    same = rank_one_transfer(g, g.unsqueeze(1) * 3.0, text)
    torch.testing.assert_close(same[:, 0], text, atol=1e-6, rtol=0)


# ------------------------------------------------------------------ numerical safety (exact ties)
def test_harmonic_aggregation_is_finite_on_exact_zeros_and_rounding_negatives():
    """Identical windows give distances of exactly 0 or a few ulp below it; the aggregation
    must stay finite and non-negative (it was inf when reciprocals cancelled)."""
    from alfa_ad.scoring.windows import SCORE_FLOOR, coverage_matrix, harmonic_aggregation, harmonic_mean, make_window_indices

    win = make_window_indices((4, 4), 2)
    cover = coverage_matrix(win, 16)
    for scores in (torch.zeros(1, win.shape[0]), torch.full((1, win.shape[0]), -6e-8),
                   torch.tensor([[6e-8, -6e-8] * (win.shape[0] // 2) + [0.0] * (win.shape[0] % 2)])):
        bound = float(scores.clamp_min(0).max()) + 10 * SCORE_FLOOR  # a harmonic mean <= its largest term
        out = harmonic_aggregation(scores, cover)
        assert torch.isfinite(out).all() and (out >= 0).all() and out.max() <= bound
        across = harmonic_mean(torch.stack([out, out]), dim=0)
        assert torch.isfinite(across).all() and across.max() <= bound


def test_nearest_neighbour_distance_of_identical_features_is_exactly_in_range():
    from alfa_ad.scoring.memory import nearest_neighbour_distance

    g = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 640, generator=g) * 37.0  # large norms: cos(x, x) rounds above 1
    d = nearest_neighbour_distance(bank, bank)
    assert (d >= 0).all() and (d <= 1).all() and d.max() < 1e-6
    far = nearest_neighbour_distance(-bank[:3], bank[:1])
    assert (far <= 1).all()


# ----------------------------------------------------------------- Gaussian smoothing in torch
@pytest.mark.parametrize("sigma", [4.0, 1.5, 0.6, 40.0])
def test_gaussian_blur_equals_scipy_gaussian_filter(sigma):
    """The torch blur of the maps equals scipy's gaussian_filter (mode "reflect", truncate 4)
    over the whole map, boundaries included (sigma 40: a radius longer than the map side)."""
    import numpy as np
    from scipy import ndimage

    from alfa_ad.scoring.smoothing import GaussianBlur, reflect_index

    maps = torch.rand(3, 120, 90, generator=torch.Generator().manual_seed(1))
    out = GaussianBlur(sigma)(maps)
    ref = ndimage.gaussian_filter(maps.numpy().astype(np.float64), sigma=(0, sigma, sigma))
    assert out.shape == maps.shape and out.dtype == torch.float32
    assert np.abs(out.numpy() - ref).max() < 1e-5
    # a different boundary mode differs at the edges by 10x the tolerance above or more
    # (8e-4 at sigma 40, where the blurred noise is nearly flat): the equality is not accidental
    other = ndimage.gaussian_filter(maps.numpy().astype(np.float64), sigma=(0, sigma, sigma), mode="mirror")
    assert np.abs(out.numpy() - other).max() > 1e-4
    assert reflect_index(3, 4).tolist() == [2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]  # c c b a | a b c | c b a a


def test_gaussian_blur_zero_sigma_is_identity():
    from alfa_ad.scoring.smoothing import GaussianBlur

    maps = torch.rand(2, 10, 12)
    assert torch.equal(GaussianBlur(0)(maps), maps)
