"""The manifest of an exported model: what it computes, how it was written, and the
check that a detector's options (its :func:`~alfa_ad.export.graphs.identity`) are the ones
an exported file computes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


MANIFEST = "manifest.json"
INPUTS = ("pixels", "normal", "abnormal")
OUTPUTS = ("scores", "global_scores", "maps", "keep_normal", "keep_abnormal", "embeddings")
BANK_INPUTS = ("pixels", "bank")  # patchknn: the memory bank is an input
BANK_OUTPUTS = ("scores", "maps", "embeddings")


@dataclass
class Manifest:
    format: str  # "onnx" | "openvino"
    precision: str  # "fp32" | "int8"
    file: str  # the model file, relative to the folder
    identity: dict[str, Any]
    opset: int
    versions: dict[str, str]
    quantization: dict[str, Any] | None = None
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> prompts, counts (texts.npz)
    inputs: tuple[str, ...] = INPUTS
    outputs: tuple[str, ...] = OUTPUTS
    weights_label: str = ""
    agreement: dict[str, Any] | None = None  # vs the torch model on check images (backends/agreement.py)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    def check(self, mine: dict[str, Any]) -> None:
        """``ValueError`` naming the first option in which a detector's identity ``mine``
        (:func:`~alfa_ad.export.graphs.identity`) differs from the export's."""
        recorded = dict(self.identity)
        # exports written before window strides existed ran every scale at stride 1
        recorded.setdefault("window_strides", [1] * len(recorded.get("scales") or []))
        for key, value in mine.items():
            theirs = recorded.get(key)
            if json.loads(json.dumps(value)) != theirs:
                raise ValueError(f"the exported model was made with {key}={json.dumps(theirs)}, this run uses "
                                 f"{key}={json.dumps(value)}; export again (alfa-ad export) or drop --exported")


def load_manifest(folder: Path) -> Manifest:
    """The manifest in ``folder``; ``ValueError`` (one line) when missing or unreadable."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder}: no {MANIFEST} (not an alfa-ad export folder)")
    try:
        data = json.loads(path.read_text())
        data["inputs"], data["outputs"] = tuple(data["inputs"]), tuple(data["outputs"])
        manifest = Manifest(**data)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: not a valid export manifest ({exc})") from None
    if not (Path(folder) / manifest.file).is_file():
        raise ValueError(f"{folder}: the model file {manifest.file} named by {MANIFEST} is missing")
    return manifest
