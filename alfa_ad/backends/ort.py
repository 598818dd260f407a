"""The ``onnxruntime`` backend: an ONNX export run by ONNX Runtime (CPU, or CUDA when
onnxruntime-gpu is installed and offers it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ExportedBackend


class OnnxRuntimeBackend(ExportedBackend):
    name = "onnxruntime"
    format = "onnx"

    def _open(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ValueError("onnxruntime is not installed; pip install 'alfa-ad[onnx]'") from None
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # buffer-reuse notes on dynamic prompt counts are not problems
        self.session = ort.InferenceSession(str(path), options, providers=providers)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = list(self.manifest.outputs)
        return dict(zip(outputs, self.session.run(outputs, feeds)))
