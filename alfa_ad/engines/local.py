"""The local engine: decode ahead in threads, score in batches in this process."""

from __future__ import annotations

from typing import Iterable, Iterator

from ..io.images import load_image
from ..registry import trait
from ..pipeline import default_workers, prefetch
from .base import ClassJob, Engine, Scored, describe_error


class LocalEngine(Engine):
    """Images are decoded ``2 x batch_size`` ahead in ``workers`` threads
    (:func:`alfa_ad.pipeline.prefetch`) and scored with ``detector.predict`` in batches
    of ``detector.batch_size``, one class after the other; a class is prepared (few-shot
    fit, calibration) only when the previous one is scored."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers

    def describe(self) -> dict:
        return {"name": self.name, "decode_threads": self.workers or default_workers()}

    def run(self, detector, jobs: Iterable[ClassJob], explain: int = 0) -> Iterator[tuple[ClassJob, Iterator[Scored]]]:
        for job in jobs:
            yield job, self._stream(detector, job, explain)

    def _stream(self, detector, job: ClassJob, explain: int) -> Iterator[Scored]:
        batch: list[tuple[int, object, object]] = []
        size = call_size(detector, len(job.samples))
        decoded = prefetch(lambda s: load_image(s.path), job.samples, workers=self.workers,
                           lookahead=max(2 * detector.batch_size, size))
        for i, (s, im, exc) in enumerate(decoded):
            if exc is not None:
                yield Scored(i, s, None, describe_error(s.path, exc))
                continue
            batch.append((i, s, im))
            if len(batch) == size:
                yield from _score(detector, batch, job.prompt_name, explain)
                batch = []
        if batch:
            yield from _score(detector, batch, job.prompt_name, explain)


def call_size(detector, count: int) -> int:
    """Images per ``predict`` call for a class of ``count`` images: the detector's
    ``images_per_call``; for a mutual method (musc) the class is cut into that many or fewer
    near-equal groups instead, so no group is left with a lone image."""
    size = detector.images_per_call
    if not trait(detector.method, "mutual"):
        return size
    if count <= size:
        return max(1, count)
    groups = -(-count // size)
    return -(-count // groups)


def _score(detector, batch, prompt_name: str, explain: int) -> Iterator[Scored]:
    if len(batch) < 2 and trait(detector.method, "mutual"):  # a class (or what decoding left of it) of one image
        for i, s, _ in batch:
            yield Scored(i, s, None, f"{s.path}: not scored: {detector.method.name} compares the images of a class "
                                     "with each other and this one has no other readable image")
        return
    results = detector.predict([im for _, _, im in batch], prompt_name, explain=explain)
    for (i, s, im), r in zip(batch, results):
        yield Scored(i, s, r, image=im)
