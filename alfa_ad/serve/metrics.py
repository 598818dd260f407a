"""Prometheus metrics (prometheus_client) on a registry of the app's own, and JSON-lines logging."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import ProcessCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    """Request count by path and status, latency histogram, batch sizes and times, queue depth."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], float] = lambda: 0, inflight: Callable[[], float] = lambda: 0) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, open fds
        r = self.registry
        self.requests = Counter("alfa_ad_http_requests", "HTTP requests by route and status.", ["path", "status"], registry=r)
        self.latency = Histogram("alfa_ad_http_request_duration_seconds", "HTTP request latency by route.", ["path"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("alfa_ad_batch_size", "Requests per model batch.", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("alfa_ad_batch_duration_seconds", "Model time per batch.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("alfa_ad_queue_depth", "Requests waiting for a model batch.", registry=r)
        self.queue_depth.set_function(queue_depth)
        self.inflight = Gauge("alfa_ad_inflight_requests", "Detect requests admitted and not yet answered.", registry=r)
        self.inflight.set_function(inflight)
        self.ready = Gauge("alfa_ad_ready", "1 once the model and every class are loaded.", registry=r)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def json_logger(name: str, destination: str) -> logging.Logger:
    """A logger writing one JSON object per line to stderr (``-``), a file, or nowhere (``off``)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    if destination == "off":
        logger.addHandler(logging.NullHandler())
    else:
        handler = logging.StreamHandler() if destination == "-" else logging.FileHandler(destination, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger


def log_event(logger: logging.Logger, event: str, **fields: Any) -> None:
    """One JSON line: time, event and the given fields (callers never pass image bytes or tokens)."""
    if logger.isEnabledFor(logging.INFO):
        record = {"ts": round(time.time(), 3), "event": event, **fields}
        logger.info(json.dumps(record, ensure_ascii=True, default=str))
