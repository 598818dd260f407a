"""alfa-ad: training-free zero-/few-shot visual anomaly detection on OpenCLIP."""

from ._version import __version__

__all__ = ["Detector", "DetectionResult", "detect", "__version__"]


def __getattr__(name: str):
    """Import the API (and torch) on first use, so commands that need neither start fast."""
    if name in ("Detector", "DetectionResult"):
        from . import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'alfa_ad' has no attribute {name!r}")


def detect(image, class_name: str = "object", normals=None, **options):
    """Score one image: :func:`alfa_ad.detector.detect` (the model and memory banks are reused
    across calls).  Missing default weights raise the one-line ``WeightsUnavailableError``
    before torch loads."""
    from .model.names import DEFAULT_PRETRAINED
    from .model.weights import require_pretrained

    if options.get("backbone") is None and options.get("config") is None:
        require_pretrained(options.get("model"), options.get("pretrained", DEFAULT_PRETRAINED),
                           options.get("weights", "pretrained"), options.get("checkpoint"))
    from .detector import detect as _detect

    return _detect(image, class_name, normals, **options)
