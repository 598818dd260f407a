"""MuSc's math (alfa_ad/scoring/mutual.py) on hand-computed numbers, and what a wrong
variant would give."""

from __future__ import annotations

import math

import pytest
import torch

from alfa_ad.scoring.mutual import (aggregate_neighbourhood, interval_bounds, musc_layers, mutual_scores,
                                    normalize_layer, rescore_images, rescore_with_pool)


def test_layers_are_quarters_of_the_depth():
    assert musc_layers(24) == (5, 11, 17, 23)  # MuSc's ViT-L/14 blocks 6, 12, 18, 24
    assert musc_layers(12) == (2, 5, 8, 11)
    assert musc_layers(4) == (0, 1, 2, 3)
    assert musc_layers(2) == (0, 1)


def test_layer_norm_is_over_the_whole_map():
    x = torch.tensor([[[1.0, 3.0], [5.0, 7.0]]])  # one image, 2 patches, 2 channels: mean 4, var 5
    got = normalize_layer(x, eps=0.0)
    assert torch.allclose(got, (x - 4.0) / math.sqrt(5.0))


def test_neighbourhood_mean_counts_the_zero_padding():
    # a 1x3 grid, one channel plus a constant channel (so the unit vectors keep the ratio visible)
    tokens = torch.tensor([[[3.0, 1.0], [6.0, 1.0], [9.0, 1.0]]])
    got = aggregate_neighbourhood(tokens, (1, 3), 3)
    # 3x3 window with zero padding: the middle patch averages 3, 6, 9 over 9 cells -> 2; the
    # constant channel 3/9; the left patch (3 + 6) / 9 = 1 and 2/9
    expect = torch.tensor([[[1.0, 2 / 9], [2.0, 3 / 9], [15 / 9, 2 / 9]]])
    assert torch.allclose(got, torch.nn.functional.normalize(expect, dim=-1), atol=1e-6)
    same = aggregate_neighbourhood(tokens, (1, 3), 1)
    assert torch.allclose(same, torch.nn.functional.normalize(tokens, dim=-1))
    with pytest.raises(ValueError, match="odd number"):
        aggregate_neighbourhood(tokens, (1, 3), 2)
    with pytest.raises(ValueError, match="do not fill a 2x2 grid"):
        aggregate_neighbourhood(tokens, (2, 2), 1)


def test_interval_bounds():
    assert interval_bounds(10, 0.0, 0.3) == (0, 3)
    assert interval_bounds(2, 0.0, 0.3) == (0, 1)  # at least one distance
    assert interval_bounds(10, 0.2, 0.5) == (2, 5)
    assert interval_bounds(3, 0.5, 0.6) == (0, 1)  # lo kept below hi
    with pytest.raises(ValueError, match="interval"):
        interval_bounds(10, 0.5, 0.2)


def _images(*rows):
    """Images of 1-D 'features' as (N, P, 1) tensors (Euclidean distance = |a - b|)."""
    return torch.tensor(rows, dtype=torch.float32).unsqueeze(-1)


def test_mutual_scores_by_hand():
    # four images of two patches; patch 1 of image 3 is odd (9) where the others have ~1
    z = _images([0.0, 1.0], [0.0, 1.2], [0.1, 0.9], [0.0, 9.0])
    got = mutual_scores(z, low=0.0, high=0.7)  # 3 others -> interval [0, 2): the 2 smallest distances
    # image 3, patch 1 (value 9): nearest patch in image 0: 8.0, image 1: 7.8, image 2: 8.1 -> mean(7.8, 8.0)
    assert got[3, 1] == pytest.approx(7.9)
    # image 0, patch 1 (value 1): image 1 -> 0.2, image 2 -> 0.1, image 3 -> 1.0 -> mean(0.1, 0.2)
    assert got[0, 1] == pytest.approx(0.15)
    # image 0, patch 0 (value 0): image 1 -> 0, image 2 -> 0.1, image 3 -> 0 -> mean(0, 0)
    assert got[0, 0] == pytest.approx(0.0)
    assert int(got.flatten().argmax()) == 7  # the odd patch is the most anomalous
    # chunking changes nothing
    assert torch.allclose(mutual_scores(z, high=0.7, chunk=1), got)


def test_an_image_scoring_itself_would_hide_the_anomaly():
    """The deliberately wrong variant: if image i were among its own scorers, every patch
    would find itself at distance 0 and the odd patch would vanish."""
    z = _images([0.0, 1.0], [0.0, 1.2], [0.1, 0.9], [0.0, 9.0])
    right = mutual_scores(z, high=0.4)  # 3 others -> the single nearest image
    flat = z.reshape(-1, 1)
    wrong = torch.cdist(flat, flat).reshape(4, 2, 4, 2).amin(-1).sort(-1).values[..., :1].mean(-1)
    assert wrong.abs().max() == 0  # self-scoring: all zero
    assert right[3, 1] > 7.0 and right[3, 1] > 10 * right[:3].max()


def test_the_interval_counts_the_other_images_only():
    """N = 4 images, high = 0.5: floor(0.5 * 3) = 1 nearest other image, where counting the
    image among its own scorers would average floor(0.5 * 4) = 2."""
    z = _images([1.0], [2.0], [4.0], [8.0])
    got = mutual_scores(z, high=0.5)
    assert got[:, 0].tolist() == pytest.approx([1.0, 1.0, 2.0, 4.0])  # the single nearest other image
    # scorers by image 3 (value 8): 7, 6, 4 -> nearest 4; counting 4 scorers would give (4 + 6) / 2
    assert got[3, 0] != pytest.approx(5.0)


def test_a_pool_scores_but_is_not_scored():
    z = _images([0.0, 5.0], [0.0, 1.0])
    refs = _images([0.0, 3.0], [0.0, 4.5])
    got = mutual_scores(z, high=0.7, pool=refs)  # 3 scorers each -> floor(2.1) = the 2 nearest
    assert got.shape == (2, 2)
    # image 0's 5: image 1 -> 4, refs -> 2 and 0.5 -> mean(0.5, 2); image 1's 1: 1 from every scorer (their 0s)
    assert got[0, 1] == pytest.approx(1.25) and got[1, 1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 images"):
        mutual_scores(_images([0.0, 1.0]))


def test_rescore_by_hand():
    s = torch.tensor([0.2, 0.4, 1.0])
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # cos(0,1) 0.8, cos(1,2) 0.6, cos(0,2) 0
    assert torch.allclose(rescore_images(s, emb, ks=(1,)), s)  # each image's own score
    # k = 2: image 0 with image 1 (weights 1, 0.8); image 1's neighbours by cosine: itself 1,
    # image 0 0.8; image 2 with image 1 (0.6)
    k2 = torch.tensor([(1 * 0.2 + 0.8 * 0.4) / 1.8, (1 * 0.4 + 0.8 * 0.2) / 1.8, (1 * 1.0 + 0.6 * 0.4) / 1.6])
    assert torch.allclose(rescore_images(s, emb, ks=(2,)), k2, atol=1e-6)
    assert torch.allclose(rescore_images(s, emb, ks=(1, 2)), (s + k2) / 2, atol=1e-6)
    # no per-group normalisation: a group of equal, low scores stays low (the paper's min-max
    # would spread a group of normal images over [0, 1] and make groups incomparable)
    assert torch.allclose(rescore_images(torch.full((3,), 0.01), emb), torch.full((3,), 0.01))
    with pytest.raises(ValueError, match=">= 1"):
        rescore_images(s, emb, ks=(0,))


def test_pool_only_scores_each_image_by_the_pool_alone():
    """1-D patches: images 0 and 0.5, pool 1 and 3, interval [0, 0.5).  By the pool alone the
    distances are (1, 3) and (0.5, 2.5): the smallest, 1.0 and 0.5.  With the images also
    scoring each other, image 0's nearest is image 1 at 0.5 (others = 3, still one kept)."""
    images = torch.tensor([[[0.0]], [[0.5]]])
    pool = torch.tensor([[[1.0]], [[3.0]]])
    alone = mutual_scores(images, 0.0, 0.5, pool=pool, pool_only=True)
    assert torch.allclose(alone, torch.tensor([[1.0], [0.5]]), atol=1e-5)
    together = mutual_scores(images, 0.0, 0.5, pool=pool)
    assert torch.allclose(together, torch.tensor([[0.5], [0.5]]), atol=1e-5)
    assert torch.allclose(mutual_scores(images[:1], 0.0, 1.0, pool=pool, pool_only=True), torch.tensor([[2.0]]))
    with pytest.raises(ValueError, match="pool_only needs a pool"):
        mutual_scores(images, pool_only=True)


def test_rescore_with_pool_reads_each_image_with_the_pool_only():
    """k = 1: an image's most similar image (cosine, itself included) is itself, so its own
    score stays; k = 2: the weighted mean with its nearest pool image.  Image 0 (embedding
    e1) has pool image 0 (e1, score 0.2) at cosine 1: (1 * 0.8 + 1 * 0.2) / 2 = 0.5.  Image 1
    (e2) is nearest pool image 1 (e2, score 0.6): (0.4 + 0.6) / 2 = 0.5.  The other image of
    the batch never enters: the same result for each image alone."""
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    scores, embeddings = torch.tensor([0.8, 0.4]), torch.stack([e1, e2])
    pool_scores, pool_embeddings = torch.tensor([0.2, 0.6]), torch.stack([e1, e2])
    k1 = rescore_with_pool(scores, embeddings, pool_scores, pool_embeddings, ks=(1,))
    assert torch.allclose(k1, scores)
    k2 = rescore_with_pool(scores, embeddings, pool_scores, pool_embeddings, ks=(2,))
    assert torch.allclose(k2, torch.tensor([0.5, 0.5]))
    alone = [rescore_with_pool(scores[i:i + 1], embeddings[i:i + 1], pool_scores, pool_embeddings, ks=(2,))
             for i in range(2)]
    assert torch.allclose(torch.cat(alone), k2)
    # two alike uploads (cosine 0.98): re-scored together with the pool (the wrong variant),
    # image 0's third neighbour is the other upload (0.9), not pool image 1 (cosine 0)
    twin = torch.nn.functional.normalize(torch.tensor([0.98, 0.2]), dim=0)
    alike, alike_scores = torch.stack([e1, twin]), torch.tensor([0.8, 0.9])
    right = rescore_with_pool(alike_scores, alike, pool_scores, pool_embeddings, ks=(3,))
    wrong = rescore_images(torch.cat([alike_scores, pool_scores]), torch.cat([alike, pool_embeddings]), ks=(3,))[:2]
    assert abs(float(right[0]) - 0.5) < 1e-6 and float(wrong[0]) > 0.6
