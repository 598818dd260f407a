"""Engines: where a batch run's images are decoded and scored.

An engine turns per-class jobs into per-class streams of :class:`Scored` items
(sample, result or error); it writes nothing.  One consumer
(:func:`alfa_ad.runner.run_dataset`) takes every stream, puts it in dataset order
(:func:`in_order`) and feeds the same writers, metrics, progress, errors and resume
checkpoints whatever the engine, so the outputs of two engines are the same.

Engines are chosen by name from :data:`alfa_ad.registry.ENGINES`:

* ``local``: decode ahead in threads, score in this process
  (:class:`alfa_ad.engines.local.LocalEngine`);
* ``ray``: decode in CPU tasks and score in an actor pool on Ray Data
  (:class:`alfa_ad.engines.ray_data.RayEngine`, optional extra ``ray``).
"""

from .base import ClassJob, Engine, EngineError, LostImagesError, Scored, describe_error, in_order

__all__ = ["ClassJob", "Engine", "EngineError", "LostImagesError", "Scored", "describe_error", "in_order"]
