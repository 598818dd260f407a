"""Template prompt sources: ALFA's unified template and WinCLIP's ensemble."""

from __future__ import annotations

from typing import Any

from .base import PromptSet, tagged

# WinCLIP's compositional prompt ensemble (Jeong et al., CVPR'23, appendix):
# state words x photo templates.
WINCLIP_NORMAL_STATES = (
    "{}", "flawless {}", "perfect {}", "unblemished {}",
    "{} without flaw", "{} without defect", "{} without damage",
)
WINCLIP_ABNORMAL_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
WINCLIP_TEMPLATES = (
    "a cropped photo of the {}.", "a cropped photo of a {}.",
    "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.",
    "a dark photo of the {}.", "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.", "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.", "a blurry photo of a {}.",
    "a photo of a {}.", "a photo of the {}.",
    "a photo of a small {}.", "a photo of the small {}.",
    "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
)

# anomalib 2.x's copy of that list: 21 entries, "a jpeg corrupted photo of the {}."
# twice and "a cropped photo of a {}." / "a jpeg corrupted photo of a {}." missing.
# Used only with WinCLIP's anomalib_compat flag (side-by-side comparison).
WINCLIP_TEMPLATES_ANOMALIB = tuple(
    t for t in WINCLIP_TEMPLATES if t not in ("a cropped photo of a {}.", "a jpeg corrupted photo of a {}.")
)
WINCLIP_TEMPLATES_ANOMALIB = (
    WINCLIP_TEMPLATES_ANOMALIB[:7] + ("a jpeg corrupted photo of the {}.",) + WINCLIP_TEMPLATES_ANOMALIB[7:]
)

# ALFA's unified template "A {domain} image of a {state} {class} [with {details}]":
# 12 domains x 6 states = 72 prompts per label (72 normal + 72 abnormal).  The paper
# counts prompts per label: "we only design 72 prompts based on the template, a notable
# 53.2% reduction as compared to over 150 required by baselines" (section 5.3) compares
# 72 with WinCLIP's 154 normal prompts (1 - 72/154 = 0.532), and its "88 to 216 per
# label" includes the 72 template prompts (docs/method.md section 1).
ALFA_DOMAINS = ("industrial", "manufacturing", "close-up", "cropped", "zoomed-in", "bright", "dark", "blurry",
                "sharp", "high-resolution", "low-resolution", "top-view")
ALFA_NORMAL_STATES = (
    "normal {}", "flawless {}", "perfect {}", "unblemished {}",
    "{} without defect", "{} without damage",
)
ALFA_ABNORMAL_STATES = (
    "damaged {}", "defective {}", "broken {}", "abnormal {}",
    "{} with a defect", "{} with damage",
)


def readable_class_name(name: str) -> str:
    """Folder names to words: ``metal_nut`` -> ``metal nut``."""
    return " ".join(name.replace("_", " ").replace("-", " ").split())


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def alfa_prompt(domain: str, state: str) -> str:
    """``A {domain} image of a {state phrase}.`` with a/an fixed for both slots."""
    return f"{_article(domain).capitalize()} {domain} image of {_article(state)} {state}."


class AlfaTemplateSource:
    """ALFA's unified-template prompts (the base detector of paper section 4.2)."""

    name = "template"
    explains = False

    def prompts(self, class_name: str) -> PromptSet:
        c = readable_class_name(class_name)
        normal = [alfa_prompt(d, s.format(c)) for s in ALFA_NORMAL_STATES for d in ALFA_DOMAINS]
        abnormal = [alfa_prompt(d, s.format(c)) for s in ALFA_ABNORMAL_STATES for d in ALFA_DOMAINS]
        return tagged(normal, abnormal, self.name)


class WinClipEnsembleSource:
    """WinCLIP's compositional prompt ensemble (7 x 22 normal, 4 x 22 abnormal)."""

    name = "winclip"
    explains = False

    def __init__(self, templates: tuple[str, ...] = WINCLIP_TEMPLATES) -> None:
        self.templates = templates

    def prompts(self, class_name: str) -> PromptSet:
        c = readable_class_name(class_name)
        normal = [t.format(s.format(c)) for s in WINCLIP_NORMAL_STATES for t in self.templates]
        abnormal = [t.format(s.format(c)) for s in WINCLIP_ABNORMAL_STATES for t in self.templates]
        return tagged(normal, abnormal, self.name)


def template_sources(config: Any, backbone: Any = None) -> list[AlfaTemplateSource]:
    """The ``template`` entry of :data:`alfa_ad.registry.PROMPT_SOURCES`."""
    return [AlfaTemplateSource()]


def winclip_sources(config: Any, backbone: Any = None) -> list[WinClipEnsembleSource]:
    """The ``winclip`` entry: the ensemble, anomalib's template list under ``anomalib_compat``."""
    compat = bool(config.options.get("anomalib_compat"))
    return [WinClipEnsembleSource(WINCLIP_TEMPLATES_ANOMALIB if compat else WINCLIP_TEMPLATES)]
