"""``alfa-ad serve``: an HTTP scoring service (FastAPI + uvicorn), optional extra ``serve``.

* :mod:`.config`: one flat record (file and/or CLI) -> Detector options + :class:`ServiceOptions`;
* :mod:`.scoring`: :class:`ScoringService`, the model and per-class fitted states (no HTTP);
* :mod:`.batcher`: :class:`MicroBatcher`, concurrent requests -> batches per class;
* :mod:`.app`: :func:`create_app`, the endpoints; :mod:`.models`: request/response bodies;
* :mod:`.metrics`, :mod:`.middleware`: Prometheus metrics, JSON-lines access log, body limit.
"""

from __future__ import annotations

from .config import ConfigError, ServiceOptions, build_detector, load_config_file, split_record
from .scoring import ScoringService

__all__ = ["ConfigError", "ScoringService", "ServiceOptions", "build_detector", "create_app", "load_config_file",
           "split_record"]


def __getattr__(name: str):
    if name == "create_app":  # FastAPI is imported only when an app is made
        from .app import create_app

        return create_app
    raise AttributeError(name)
