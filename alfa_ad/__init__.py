"""alfa-ad: training-free zero-/few-shot visual anomaly detection on OpenCLIP."""

__version__ = "0.1.0"

__all__ = ["Detector", "DetectionResult", "detect", "__version__"]


def __getattr__(name: str):
    """Import the API (and torch) on first use, so commands that need neither start fast."""
    if name in ("Detector", "DetectionResult", "detect"):
        from . import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'alfa_ad' has no attribute {name!r}")
