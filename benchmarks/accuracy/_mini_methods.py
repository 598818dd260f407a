"""Baselines of the mini-CLIP table that are not alfa-ad methods.

Both follow the method interface the Detector drives (``prepare_text``, ``__call__`` ->
``BatchScores``; zero-shot only) and use ALFA's own prompt adaptation
(:meth:`AlfaHead.adapt`, the detector's default placement of eq. 4), so that they differ
from ALFA only in where the local evidence comes from:

* ``ClassTokenMethod``: the class-token score (eq. 10) and no map (a constant map per
  image; the table leaves its pixel metrics empty).
* ``PatchTokenMethod``: the naive local reading of a CLIP trained only for global
  alignment: every patch token of the last block goes through ``ln_post`` and the
  projection and is compared with the class embeddings the windows would meet (eq. 11
  per patch); the map is upsampled and smoothed as ALFA's, and the image score is
  eq. (12) with that map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alfa_ad.aligners import build_aligner
from alfa_ad.methods.alfa_head import AlfaHead
from alfa_ad.methods.base import BatchScores
from alfa_ad.scoring.zero_shot import anomaly_probability, image_score


class _ZeroShotBase:
    name = "baseline"
    bank_size = 0

    def __init__(self, backbone, scales=(2, 3), **_ignored) -> None:
        self.backbone = backbone
        self.head = AlfaHead(build_aligner("none", backbone), backbone.grid, backbone.image_size, scales)

    def prepare_text(self, normal: torch.Tensor, abnormal: torch.Tensor):
        device = self.backbone.device
        return F.normalize(normal.float(), dim=-1).to(device), F.normalize(abnormal.float(), dim=-1).to(device)

    def clear_normals(self) -> None:
        pass


class ClassTokenMethod(_ZeroShotBase):
    name = "class_token"

    @torch.inference_mode()
    def __call__(self, pixels, text, fusion=None) -> BatchScores:  # fusion: few-shot only, unused here
        feats = self.head.encode(pixels)
        ad = self.head.adapt(feats.g, *text)
        s = ad.global_scores
        maps = s.view(-1, 1, 1).expand(-1, *self.backbone.image_size).float()
        return BatchScores(s.cpu(), s.cpu(), maps.cpu(), ad.keep_normal.cpu(), ad.keep_abnormal.cpu(), feats.g.cpu())


class PatchTokenMethod(_ZeroShotBase):
    name = "patch_tokens"

    @torch.inference_mode()
    def __call__(self, pixels, text, fusion=None) -> BatchScores:  # fusion: few-shot only, unused here
        bb = self.backbone
        feats = self.head.encode(pixels)
        ad = self.head.adapt(feats.g, *text)
        patches = bb.head(feats.last[:, 1:])  # ln_post + proj of every patch token: (B, P, D)
        classes = ad.local_classes if ad.local_classes.ndim == 3 else ad.local_classes.expand(len(patches), 2, -1)
        patch_map = anomaly_probability(patches, classes, self.head.temperature).view(-1, *bb.grid)
        return BatchScores(image_score(ad.global_scores, patch_map).cpu(), ad.global_scores.cpu(),
                           self.head.finish(patch_map).cpu(), ad.keep_normal.cpu(), ad.keep_abnormal.cpu(),
                           feats.g.cpu())


BASELINES = {"class_token": ClassTokenMethod, "patch_tokens": PatchTokenMethod}
