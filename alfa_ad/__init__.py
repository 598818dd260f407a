"""alfa-ad: training-free zero-/few-shot visual anomaly detection on OpenCLIP."""

__version__ = "0.1.0"

from .detector import DetectionResult, Detector, detect  # noqa: E402

__all__ = ["Detector", "DetectionResult", "detect", "__version__"]
