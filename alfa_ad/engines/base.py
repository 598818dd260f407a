"""The engine contract: the job an engine is given, the items it streams back, and the
one consumer-side helper (:func:`in_order`) every engine's stream goes through."""


from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..io.images import ImageLoadError

if TYPE_CHECKING:
    from PIL import Image

    from ..detector import Detector
    from ..io.datasets import Sample
    from ..results import DetectionResult


@dataclass
class ClassJob:
    """One class to score: its folder name, the object name in its prompts, its samples
    (already without those a resumed run finished) and the consumer's own ``context``."""

    class_name: str
    prompt_name: str
    samples: list["Sample"]
    context: Any = None


@dataclass
class Scored:
    """The outcome for ``job.samples[index]``: a result, or the one-line error that
    skipped it.  ``image``: the decoded image when the engine has it in this process
    (saves re-reading the file for ``--overlay-scale image``), else None."""

    index: int
    sample: "Sample"
    result: "DetectionResult | None"
    error: str | None = None
    image: "Image.Image | None" = None


def describe_error(path: Any, exc: BaseException) -> str:
    """The one line a run reports for an image it could not score (every engine)."""
    return str(exc) if isinstance(exc, ImageLoadError) else f"{path}: {type(exc).__name__}: {exc}"


class Engine:
    """What every engine provides.  Use as a context manager, or call :meth:`close`."""

    name = "engine"

    def run(self, detector: "Detector", jobs: Iterable[ClassJob], explain: int = 0
            ) -> Iterator[tuple[ClassJob, Iterator[Scored]]]:
        """Per job, in order, the job and the stream of its items (each index once).

        ``jobs`` is lazy: the caller prepares a class (few-shot fit, calibration) when
        the engine asks for it; an engine that needs every class's state before it
        starts may take them all first.  Each stream is consumed before the next pair
        is asked for."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the run record says about the engine."""
        return {"name": self.name}

    def close(self) -> None:
        """Release what the engine started (threads, a Ray instance)."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EngineError(ValueError):
    """An engine cannot run as configured (one line, shown by the CLI as an option error)."""


class LostImagesError(RuntimeError):
    """An engine ended a class's stream without an item for some samples."""


def in_order(items: Iterable[Scored], total: int, stats: dict[str, int] | None = None) -> Iterator[Scored]:
    """``items`` (indices ``0 .. total-1`` in any order) in index order.

    Items that come early wait in a buffer until their predecessors arrive; how many
    wait at most is ``stats["max_waiting"]`` (the local engine: at most one batch plus
    its decode look-ahead; the Ray engine: none, Ray Data keeps the order).  A second
    item for an index already seen (an engine retrying work whose first result did
    arrive) is dropped and counted in ``stats["duplicates"]``, so no image is written
    twice.  Indices missing at the end raise :class:`LostImagesError`, so none is lost
    silently."""
    stats = stats if stats is not None else {}
    stats.setdefault("max_waiting", 0)
    stats.setdefault("duplicates", 0)
    waiting: dict[int, Scored] = {}
    nxt = 0
    for item in items:
        if not 0 <= item.index < total:
            raise ValueError(f"engine returned index {item.index} outside 0..{total - 1}")
        if item.index < nxt or item.index in waiting:
            stats["duplicates"] += 1
            continue
        waiting[item.index] = item
        stats["max_waiting"] = max(stats["max_waiting"], len(waiting) - (item.index == nxt))
        while nxt in waiting:
            yield waiting.pop(nxt)
            nxt += 1
    if nxt < total:
        missing = [i for i in range(nxt, total) if i not in waiting]
        raise LostImagesError(f"the engine returned no result for {len(missing)} of {total} images "
                              f"(first: index {missing[0]})")
