"""The same service as a Ray Serve deployment: replicas, autoscaling, one app per replica.

    pip install "alfa-ad[ray-serve]"
    serve run alfa_ad.serve.ray_app:app_builder config=serve.yaml max_replicas=4

Each replica runs the app of :func:`alfa_ad.serve.create_app` (same endpoints, same
micro-batcher, same limits) around a :class:`ScoringService` it builds when it starts
(so a replica takes traffic only once its model, text embeddings, memory banks and
thresholds are loaded).  Ray's proxy spreads requests over the replicas and its
autoscaler adds replicas while the ongoing requests per replica stay above
``target_ongoing_requests``.  Builder arguments (strings, from ``serve run`` or a Serve
config file's ``args``): ``config`` (a JSON/YAML file of Detector and service options, see
``alfa-ad serve --config``), ``min_replicas``, ``max_replicas``,
``target_ongoing_requests`` (default: the micro-batch size), ``num_cpus``, ``num_gpus``
per replica.  Any other argument is a config option (``weights=planted``).
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from .config import load_config_file, read_token, split_record

RAY_KEYS = ("config", "min_replicas", "max_replicas", "target_ongoing_requests", "num_cpus", "num_gpus")


def deployment_options(args: dict[str, Any], options) -> dict[str, Any]:
    """Ray Serve deployment options for the service options: autoscaling, bounds, resources."""
    per_replica = options.queue_size + options.max_batch
    actor: dict[str, Any] = {"num_cpus": float(args.get("num_cpus", 1))}
    if float(args.get("num_gpus", 0)) > 0:
        actor["num_gpus"] = float(args["num_gpus"])
    return {
        "name": "alfa-ad",
        "ray_actor_options": actor,
        # a replica is sent at most what its own queue admits; beyond that Ray holds a
        # bounded queue per deployment and answers 503 when it is full
        "max_ongoing_requests": per_replica,
        "max_queued_requests": per_replica * int(args.get("max_replicas", 1)),
        "autoscaling_config": {
            "min_replicas": int(args.get("min_replicas", 1)),
            "max_replicas": int(args.get("max_replicas", 1)),
            "target_ongoing_requests": float(args.get("target_ongoing_requests", options.max_batch)),
        },
    }


def app_builder(args: dict[str, Any]) -> Application:
    """``serve run alfa_ad.serve.ray_app:app_builder config=FILE [max_replicas=N ...]``."""
    record = load_config_file(args["config"]) if args.get("config") else {}
    record.update({k.replace("-", "_"): v for k, v in args.items() if k not in RAY_KEYS})
    detector_record, options = split_record(record)  # fail here, in the driver, on a bad config
    options.check_folders()

    def build_asgi_app():  # runs in each replica when it starts
        from .app import create_app
        from .metrics import json_logger
        from .scoring import ScoringService

        token = read_token(options.token_file) if options.token_file is not None else None
        return create_app(ScoringService.build(detector_record, options), options, token=token,
                          logger=json_logger("alfa_ad.serve", options.access_log))

    ingress = serve.ingress(build_asgi_app)
    return serve.deployment(ingress(), **deployment_options(args, options)).bind()
