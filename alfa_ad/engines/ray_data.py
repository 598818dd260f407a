"""The Ray engine: the same run on Ray Data, on this machine or on a cluster.

Pipeline (as Ray recommends for batch inference)::

    from_items(rows: job, index, path, class, defect_type, label, mask_path)
      -> map_batches(decode_batch)            CPU tasks, 1 CPU each: files -> uint8 RGB pixels
      -> map_batches(BatchScorer)             actor pool of --workers actors, --gpus-per-worker
                                              GPUs each, batch size = --batch-size
      -> iter_rows() on the driver            -> the run's one consumer (writers, metrics)

Every class is prepared on the driver first (few-shot fit, calibration: the same code
and the same detector as the local engine), and its state -- prompt embeddings, memory
bank, thresholds, descriptions for ``--explain`` -- is captured once
(:meth:`alfa_ad.Detector.export_class_state`) and handed to each actor's constructor, so one
pipeline scores all classes and each actor builds its Detector once.  Ray Data keeps the
rows' order (``preserve_order``), so results arrive class after class in dataset order.
A scoring actor that dies is restarted and its batch retried (``max_restarts``,
``max_task_retries``); the consumer drops a second result for an image and fails on a
missing one, so no image is lost or written twice.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import warnings
from typing import Any, Iterable, Iterator

from ..registry import trait
from .base import ClassJob, Engine, EngineError, Scored
from .scorer import BatchScorer, actor_config, decode_batch

LOCAL_OBJECT_STORE_BYTES = 1 << 30  # a started local instance: 1 GiB of object store (spills to disk beyond)
MAX_RESTARTS = 3  # a scoring actor that dies is restarted at most this many times ...
MAX_TASK_RETRIES = 3  # ... and a batch it was scoring (or a decode task) is retried at most this many times


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.data") is not None


class RayEngine(Engine):
    """``address``: a Ray cluster to join (``auto``, ``ray://host:10001``, ...); without
    one, a Ray instance already started in this process is used, else a local one is
    started with this machine's CPUs and a bounded object store, and shut down by
    :meth:`close`.  ``workers``: scoring actors (default: one per GPU share when
    ``gpus_per_worker`` > 0, else one CPU fewer than the instance has, at least 1)."""

    name = "ray"

    def __init__(self, workers: int | None = None, gpus_per_worker: float = 0.0, address: str | None = None,
                 cpus_per_worker: float = 1.0) -> None:
        if not ray_available():
            raise ImportError('the ray engine needs Ray Data: pip install "alfa-ad[ray]"')
        if workers is not None and workers < 1:
            raise ValueError("workers must be at least 1")
        if gpus_per_worker < 0:
            raise ValueError("gpus_per_worker must be 0 or more")
        self.workers, self.gpus_per_worker, self.address = workers, float(gpus_per_worker), address
        self.cpus_per_worker = cpus_per_worker
        self.started = False  # this engine started the Ray instance (and shuts it down)
        self.startup_seconds: float | None = None
        self.stats: dict[str, Any] = {}
        self._state_ref: Any = None

    # ------------------------------------------------------------ instance
    def local_init_kwargs(self) -> dict[str, Any]:
        """``ray.init`` arguments of a local instance: this machine's CPUs, a bounded
        object store, no dashboard, warnings only."""
        return {"num_cpus": os.cpu_count() or 1, "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
                "include_dashboard": False, "logging_level": logging.WARNING}

    def open(self) -> None:
        import ray

        if ray.is_initialized():
            return
        t0 = time.perf_counter()
        if self.address:
            ray.init(address=self.address, logging_level=logging.WARNING)
        else:
            ray.init(**self.local_init_kwargs())
        self.started = True
        self.startup_seconds = time.perf_counter() - t0

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

    def pool_size(self) -> int:
        import ray

        resources = ray.cluster_resources()
        if self.workers is not None:
            cpus = resources.get("CPU", 0)
            if self.gpus_per_worker == 0 and self.workers * self.cpus_per_worker >= cpus:
                raise EngineError(f"--workers {self.workers} scoring actors take all {cpus:g} CPUs of the Ray instance "
                                 "and leave none for decoding images; use fewer")
            return self.workers
        if self.gpus_per_worker > 0:
            return max(1, int(resources.get("GPU", 0) // self.gpus_per_worker))
        return max(1, int(resources.get("CPU", 1)) - 1)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": self.workers, "gpus_per_worker": self.gpus_per_worker,
                "address": self.address or "local instance"}

    # ------------------------------------------------------------ pipeline
    def run(self, detector, jobs: Iterable[ClassJob], explain: int = 0) -> Iterator[tuple[ClassJob, Iterator[Scored]]]:
        if trait(detector.method, "mutual"):
            raise EngineError(f"the ray engine scores rows in blocks that mix classes; {detector.method.name} scores "
                              "a class's images against each other: use --engine local")
        self.open()
        prepared: list[tuple[ClassJob, Any]] = []
        for job in jobs:  # each class prepared by the caller, its state captured before the next one
            prepared.append((job, detector.export_class_state(job.prompt_name, bool(explain)) if job.samples else None))
        rows = [{"job": j, "index": i, "path": str(s.path), "class": s.class_name, "defect_type": s.defect_type,
                 "label": -1 if s.label is None else int(s.label), "mask_path": str(s.mask_path or "")}
                for j, (job, _) in enumerate(prepared) for i, s in enumerate(job.samples)]
        results: Iterator[dict[str, Any]] = iter(())
        if rows:
            classes = {j: (job.prompt_name, st) for j, (job, st) in enumerate(prepared) if st is not None}
            results = iter(self._dataset(detector, rows, classes, explain).iter_rows())
        head = [next(results, None)]
        for j, (job, _) in enumerate(prepared):
            yield job, self._class_stream(j, job, head, results)
        if head[0] is not None:
            raise RuntimeError(f"Ray returned a row of job {head[0]['job']} out of class order")
        self._state_ref = None

    def _dataset(self, detector, rows: list[dict[str, Any]], classes: dict, explain: int):
        import ray

        batch = detector.batch_size
        pool = self.pool_size()
        # the classes' state goes to the object store once; the driver holds the reference for
        # the whole run, so an actor restarted after a crash can still read it
        self._state_ref = ray.put(classes)
        blocks = max(1, min(len(rows) // batch + (len(rows) % batch > 0), 1000))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        with warnings.catch_warnings():  # Ray 2.60 has no named parameter for the retry limits yet
            warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
            ds = ds.map_batches(decode_batch, batch_size=batch, num_cpus=1, batch_format="numpy",
                                max_retries=MAX_TASK_RETRIES)
            ds = ds.map_batches(BatchScorer, batch_size=batch, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=pool),
                                num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker or None,
                                fn_constructor_kwargs={"config": actor_config(detector.config, self.gpus_per_worker),
                                                       "classes": self._state_ref, "explain": explain},
                                max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)
        ctx = ds.context
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False  # the CLI shows its own
        ctx.print_on_execution_start = False
        self.stats = {"workers": pool, "batch_size": batch, "blocks": blocks}
        return ds

    @staticmethod
    def _class_stream(j: int, job: ClassJob, head: list, results: Iterator[dict[str, Any]]) -> Iterator[Scored]:
        while head[0] is not None and int(head[0]["job"]) == j:
            row, head[0] = head[0], next(results, None)
            i = int(row["index"])
            if row["error"]:
                yield Scored(i, job.samples[i], None, str(row["error"]))
            else:
                yield Scored(i, job.samples[i], pickle.loads(row["result"]))
