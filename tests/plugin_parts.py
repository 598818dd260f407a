"""A method and a prompt source from outside the package: what "one file plus one
registry line" means (tests/test_extension.py registers them).

``ClassTokenMethod`` scores the class token only (eq. 10) and broadcasts it over the
map; its few-shot half is the shared :class:`~alfa_ad.methods.base.ReferenceBank`.
``shouted_sources`` gives every class one normal and one abnormal sentence.
"""

from __future__ import annotations

from typing import Any

import torch

from alfa_ad.aligners import encode
from alfa_ad.methods.base import BatchScores, ReferenceBank, ZeroShotFeatures, extract_references, upsample
from alfa_ad.prompting.base import tagged
from alfa_ad.scoring.fewshot import image_residual, visual_map
from alfa_ad.scoring.fusion import fuse
from alfa_ad.scoring.zero_shot import TEMPERATURE, anomaly_probability


class ClassTokenMethod(ReferenceBank):
    name = "classtoken"
    peak_of_visual = False
    contextual = "off"

    def __init__(self, backbone: Any, scales: tuple[int, ...] = (), aligner: str = "none", few_shot_scorer: str = "bank",
                 fusion: str = "raw", contextual: str | None = None, memory_layers=None,
                 temperature: float = TEMPERATURE) -> None:
        if scales or aligner != "none" or contextual not in (None, "off"):
            raise ValueError("classtoken has no windows: no scales, aligner none, no eq. 4")
        self.backbone, self.scales, self.temperature = backbone, (), temperature
        self._init_bank(backbone, few_shot_scorer, memory_layers, fusion)

    @classmethod
    def default_prompt_sources(cls, config: Any) -> tuple[str, ...]:
        return ("template",)

    def prepare_text(self, normal: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
        return torch.stack([normal.float().mean(0), abnormal.float().mean(0)]).to(self.backbone.device)

    def covers(self) -> list:
        return [None] * len(self.scorer.layers)

    def extract_normals(self, batches, keep=()):
        def reference_pass(pixels, rows):
            feats = encode(self.backbone, pixels, self.scorer.capture)
            zero_shot = ZeroShotFeatures(feats.g, []).select(rows) if rows else None
            return self.scorer.tokens(feats.caps, feats.last), self.scorer.image(feats.g), zero_shot

        return extract_references(batches, reference_pass, keep)

    def _global(self, g: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return anomaly_probability(g.unsqueeze(1), text, self.temperature)[:, 0]

    @torch.inference_mode()
    def zero_shot_scores(self, features: ZeroShotFeatures, text: torch.Tensor):
        s = self._global(features.g, text)
        return s[:, None].expand(-1, self.backbone.grid[0] * self.backbone.grid[1]), s

    def finish(self, patch_map: torch.Tensor, normalized: bool) -> torch.Tensor:
        return upsample(patch_map, self.backbone.image_size)

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, text: torch.Tensor, fusion=None) -> BatchScores:
        feats = encode(self.backbone, pixels, self.scorer.capture if self.refs is not None else ())
        s = self._global(feats.g, text)
        patch, scores = s.view(-1, 1, 1).expand(-1, *self.backbone.grid), s
        if self.refs is not None:
            visual = visual_map(self.scorer.tokens(feats.caps, feats.last), self.refs, self.covers())
            image = image_residual(self.scorer.image(feats.g), self.refs)
            fused, scores, _ = fuse(patch.flatten(1), s, visual, image, fusion if self.fusion == "normalized" else None)
            patch = fused.view(-1, *self.backbone.grid)
        return BatchScores(scores.cpu(), s.cpu(), self.finish(patch, False).cpu(), None, None, feats.g.float().cpu())


class ShoutedSource:
    name = "shouted"

    def prompts(self, class_name: str):
        return tagged([f"A PERFECT {class_name.upper()}."], [f"A {class_name.upper()} WITH RED PAINT ON IT."], self.name)


def shouted_sources(config: Any, backbone: Any = None) -> list[ShoutedSource]:
    return [ShoutedSource()]
