"""The two stages of the Ray engine's pipeline, as plain functions and classes (no Ray
import: they are tested in-process too).

* :func:`decode_batch`: a CPU stage (Ray tasks) -- each row's file decoded with the same
  :func:`~alfa_ad.io.images.load_image` as the local engine, to uint8 RGB pixels, or the
  same one-line error;
* :class:`BatchScorer`: the scoring stage (a pool of Ray actors) -- builds the Detector
  once per actor from the run's :class:`~alfa_ad.config.DetectorConfig` and installs
  every class's driver-computed state (:class:`alfa_ad.class_state.ClassState`); per batch it only
  runs ``Detector.predict``.  Each result goes back whole (pickled
  :class:`~alfa_ad.results.DetectionResult`, its map float32 at the image's size), so
  the driver's writers and metrics get exactly what the local engine gives them.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import replace
from typing import Any, NoReturn

import numpy as np
from PIL import Image

from ..io.images import load_image
from ..class_state import ClassState
from ..detector import Detector
from .base import describe_error

# fault injection for the tests: when this names an existing file, the first scoring
# actor to claim it (renaming it to <file>.fired) exits its process at once, mid-batch
CRASH_ONCE_ENV = "ALFA_AD_RAY_CRASH_ONCE"


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows ``{job, index, path, ...}`` -> ``{job, index, pixels, height, width, error}``:
    RGB pixels as bytes (``height x width x 3`` uint8), or the error the local engine
    reports ("" when decoded)."""
    n = len(batch["path"])
    pixels = np.empty(n, dtype=object)
    height, width = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    errors = np.empty(n, dtype=object)
    for i, path in enumerate(batch["path"]):
        try:
            im = load_image(str(path))
        except Exception as exc:  # noqa: BLE001 - reported per image, like the local engine
            pixels[i], errors[i] = b"", describe_error(path, exc)
            continue
        pixels[i], errors[i] = im.tobytes(), ""
        width[i], height[i] = im.size
    return {"job": np.asarray(batch["job"]), "index": np.asarray(batch["index"]), "pixels": pixels,
            "height": height, "width": width, "error": errors}


def _crash_if_armed() -> None:
    marker = os.environ.get(CRASH_ONCE_ENV)
    if not marker:
        return
    try:
        os.rename(marker, marker + ".fired")  # atomic: exactly one process wins
    except OSError:
        return
    os._exit(17)


class BatchScorer:
    """Scores decoded batches with one Detector built in the constructor.

    ``config``: the run's DetectorConfig as a dict (``Detector.from_config``) with the
    actor's device.  ``classes``: per job number, the object name in its prompts and its
    :class:`~alfa_ad.class_state.ClassState` (prompt embeddings, memory bank,
    thresholds) computed once on the driver, or a Ray object reference to that dict.  The detector gets no prompt sources and a
    text cache that refuses to encode, so nothing is recomputed here.
    """

    def __init__(self, config: dict[str, Any], classes: dict[int, tuple[str, ClassState]] | Any, explain: int = 0
                 ) -> None:
        if not isinstance(classes, dict):  # a Ray object reference to the driver's state
            import ray

            classes = ray.get(classes)

        self.detector = Detector.from_config(config, sources=[], cache_dir=None)
        self.detector.text_cache = NoTextEncoding()
        self.explain = explain
        self.classes = {job: (name, self.detector.import_class_state(name, state)) for job, (name, state) in classes.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _crash_if_armed()
        jobs, errors = batch["job"], batch["error"]
        n = len(jobs)
        results = np.empty(n, dtype=object)
        results[:] = [b""] * n
        out_errors = np.array([str(e) for e in errors], dtype=object)
        for job in dict.fromkeys(int(j) for j in jobs):  # classes in the batch, in order
            rows = [i for i in range(n) if int(jobs[i]) == job and not errors[i]]
            if not rows:
                continue
            name, state = self.classes[job]
            self.detector.activate_class_state(state)
            images = [Image.frombytes("RGB", (int(batch["width"][i]), int(batch["height"][i])), batch["pixels"][i])
                      for i in rows]
            for i, r in zip(rows, self.detector.predict(images, name, explain=self.explain)):
                results[i] = pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL)
        return {"job": np.asarray(jobs), "index": np.asarray(batch["index"]), "result": results,
                "error": out_errors}


def actor_config(config, gpus_per_worker: float) -> dict[str, Any]:
    """The DetectorConfig dict a scoring actor builds from: the run's, on the device the
    actor was given (CUDA when it holds a GPU share, else CPU)."""
    return replace(config, device="cuda" if gpus_per_worker > 0 else "cpu").as_dict()


class NoTextEncoding:
    """A text cache that refuses to encode: installed in remote detectors, whose prompt
    embeddings all come from the driver (a call here means state was not passed)."""

    def encode(self, backbone, texts) -> NoReturn:
        raise RuntimeError(f"a scoring worker was asked to encode {len(texts)} prompt(s); every class's "
                           "prompt embeddings must come from the driver (Detector.export_class_state)")
