"""Baselines of the mini-CLIP table that are not alfa-ad methods, and the
contextual-scoring switch.

Both baselines follow the method interface the Detector drives
(``prepare_text``, ``__call__`` -> ``BatchScores``; zero-shot only):

* ``ClassTokenMethod``: the class-token score (ALFA eq. 10 with the prompts of the
  run, contextual filtering included) and no map (a constant map per image; the
  table leaves its pixel metrics empty).
* ``PatchTokenMethod``: the naive local reading of a CLIP trained only for global
  alignment: every patch token of the last block goes through ``ln_post`` and the
  projection and is compared with the class embeddings like the class token
  (eq. 10 per patch); the map is upsampled and smoothed as ALFA's, and the image
  score is eq. (12) with that map.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F
from scipy import ndimage

from alfa_ad.methods import alfa as alfa_module
from alfa_ad.methods.base import BatchScores, WindowGeometry, upsample
from alfa_ad.scoring.contextual import contextual_scores, keep_masks, masked_class_embeddings
from alfa_ad.scoring.zero_shot import TEMPERATURE, anomaly_probability, image_score


class _ZeroShotBase:
    name = "baseline"

    def __init__(self, backbone, scales=(2, 3), temperature: float = TEMPERATURE, sigma: float = 4.0) -> None:
        self.backbone = backbone
        self.geometry = WindowGeometry(backbone.grid, scales)
        self.temperature = temperature
        self.sigma = sigma

    def prepare_text(self, normal: torch.Tensor, abnormal: torch.Tensor):
        device = self.backbone.device
        return F.normalize(normal.float(), dim=-1).to(device), F.normalize(abnormal.float(), dim=-1).to(device)

    def clear_normals(self) -> None:
        pass

    bank_size = 0

    def _global(self, pixels, text):
        bb = self.backbone
        normal, abnormal = text
        g, last = bb.global_embedding(bb.penultimate(bb.tokens(pixels)))
        gn = F.normalize(g, dim=-1)
        keep_n, keep_a = keep_masks(*contextual_scores(gn @ normal.T, gn @ abnormal.T))
        classes = masked_class_embeddings(normal, abnormal, keep_n, keep_a)
        return g, last, classes, anomaly_probability(g.unsqueeze(1), classes, self.temperature)[:, 0], keep_n, keep_a


class ClassTokenMethod(_ZeroShotBase):
    name = "class_token"

    @torch.inference_mode()
    def __call__(self, pixels, text, fusion=None) -> BatchScores:  # fusion: few-shot only, unused here
        g, _, _, s, keep_n, keep_a = self._global(pixels, text)
        maps = s.view(-1, 1, 1).expand(-1, *self.backbone.image_size).float()
        return BatchScores(s.cpu(), s.cpu(), maps.cpu(), keep_n.cpu(), keep_a.cpu(), g.cpu())


class PatchTokenMethod(_ZeroShotBase):
    name = "patch_tokens"

    @torch.inference_mode()
    def __call__(self, pixels, text, fusion=None) -> BatchScores:  # fusion: few-shot only, unused here
        bb = self.backbone
        g, last, classes, s, keep_n, keep_a = self._global(pixels, text)
        patches = bb.head(last[:, 1:])  # ln_post + proj of every patch token: (B, P, D)
        patch_map = anomaly_probability(patches, classes, self.temperature).view(-1, *bb.grid)
        maps = upsample(patch_map, bb.image_size)
        if self.sigma > 0:
            maps = torch.from_numpy(ndimage.gaussian_filter(maps.cpu().numpy(), sigma=(0, self.sigma, self.sigma)))
        return BatchScores(image_score(s, patch_map).cpu(), s.cpu(), maps.cpu(), keep_n.cpu(), keep_a.cpu(), g.cpu())


BASELINES = {"class_token": ClassTokenMethod, "patch_tokens": PatchTokenMethod}


def _keep_all(scores_normal, scores_abnormal):
    return torch.ones_like(scores_normal, dtype=torch.bool), torch.ones_like(scores_abnormal, dtype=torch.bool)


def supports_option(method: str, option: str) -> bool:
    """Whether the alfa-ad method class takes keyword ``option`` (e.g. ``aligner``, ``contextual``)."""
    from alfa_ad.methods import METHODS

    return option in inspect.signature(METHODS[method].__init__).parameters


@contextlib.contextmanager
def contextual(enabled: bool):
    """Run-time prompt adaptation off: every prompt kept for every image (ALFA's
    ``keep_masks`` replaced for the duration, when the method has no option for it)."""
    if enabled:
        yield
        return
    saved = alfa_module.keep_masks
    alfa_module.keep_masks = _keep_all
    try:
        yield
    finally:
        alfa_module.keep_masks = saved
