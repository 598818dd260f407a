"""The ``torch`` backend: the method's own module, on the detector's device and dtype."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TorchBackend:
    name = "torch"

    def __init__(self, method) -> None:
        self.method = method

    @classmethod
    def create(cls, detector, exported: Path | None = None, precision: str = "fp32",
               cache_dir: Path | None = None) -> "TorchBackend":
        if exported is not None:
            raise ValueError("--exported runs with --backend onnxruntime or openvino, not torch")
        if precision != "fp32":
            raise ValueError(f"--precision {precision} needs an exported backend (onnxruntime, openvino)")
        return cls(detector.method)

    def __call__(self, pixels, text):
        return self.method(pixels, text)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}
