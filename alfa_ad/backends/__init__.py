"""Backends: what runs the per-image model in ``Detector.predict``, chosen by name
(:data:`alfa_ad.registry.BACKENDS`): ``torch`` (the method itself), ``onnxruntime`` and
``openvino`` (an exported graph, :mod:`alfa_ad.export`).  Every backend is called like
a method, ``backend(pixels, text) -> BatchScores``; the runner does not know which runs."""

from .base import Backend, create_backend  # noqa: F401
