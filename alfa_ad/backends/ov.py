"""The ``openvino`` backend: an OpenVINO IR export compiled for the CPU plugin, with fp32
inference precision (the plugin would otherwise pick bf16 on CPUs that have it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ExportedBackend


class OpenVinoBackend(ExportedBackend):
    name = "openvino"
    format = "openvino"
    device = "CPU"

    def _open(self, path: Path) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise ValueError("openvino is not installed; pip install 'alfa-ad[openvino]'") from None
        core = ov.Core()
        self.compiled = core.compile_model(str(path), self.device, {"INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.request.infer(feeds)
        return {name: np.array(result[self.compiled.output(name)]) for name in self.manifest.outputs}
