"""Normal references of a class: what ``--shots`` asks for, where the candidates (the
class's pool) are, whether there are enough, drawing ``k`` of them, fitting them and
calibrating thresholds.

Shared by ``alfa-ad run``, ``alfa-ad learn-prompts`` and the service, so all of them read
the option, report a short pool, draw, fit and calibrate identically:

* :func:`parse_shots`: ``"all"`` or a count (``"00"`` is 0), a one-line error otherwise;
* :func:`find_pool`: a class's candidate references, a normals folder (or its ``<class>``
  sub-folder) or the class's train split of the data;
* :func:`pool_shortfall`: the one-line message when a pool holds fewer images than asked;
* :func:`choose_references`: the ``k`` drawn with a seed; :func:`few_shot_prepare`: fit
  and calibrate a class before it is scored.

No torch here.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, NamedTuple, Sequence, Union

from .io.datasets import train_images
from .io.images import iter_image_files
from .outputs.record import RunOptions

Shots = Union[Literal["all"], int]


class ShotsError(ValueError):
    """A bad shots value; ``problem`` is the message without the option's name (for a front
    end that names the option its own way, such as the service's ``shots: ...``)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.problem = problem


def parse_shots(value: object, *, minimum: int = 0, name: str = "--shots") -> Shots:
    """``"all"`` or a count of at least ``minimum`` (surrounding spaces ignored, ``"00"`` is 0);
    :class:`ShotsError` naming the option and ``value`` otherwise."""
    text = str(value).strip()
    if text == "all":
        return "all"
    if text.isascii() and text.isdigit() and int(text) >= minimum:
        return int(text)
    at_least = f" of at least {minimum}" if minimum > 0 else ""
    raise ShotsError(name, f"must be a number{at_least} or 'all', got {value!r}")


def calibrates_by_leave_one_out(shots: Shots) -> bool:
    """Whether, without a calibration folder, the references alone set the thresholds
    (leave-one-out, which needs two or more of them)."""
    return shots == "all" or shots >= 2


class Pool(NamedTuple):
    """A class's candidate references, and where they are in words (messages, run facts)."""

    images: tuple[Path, ...]
    where: str


def find_pool(class_name: str, *, normals: Path | None = None, data: Path | None = None,
              name_data: bool = False) -> Pool:
    """The candidate references of ``class_name``: the images of ``normals/<class>`` when that
    folder exists, else of ``normals``; without ``normals``, the class's train split of ``data``
    (MVTec ``<class>/train/good`` or the VisA split; ``name_data``: ``where`` names ``data`` too).

    Raises :class:`~alfa_ad.io.images.InputError` (one line) for a missing folder or split.
    """
    if normals is not None:
        folder = Path(normals)
        folder = folder / class_name if (folder / class_name).is_dir() else folder
        return Pool(tuple(iter_image_files(folder)), str(folder))
    if data is None:
        raise ValueError(f"class {class_name!r}: normal references need a normals folder or data")
    where = f"the train split of {class_name}" + (f" in {data}" if name_data else "")
    return Pool(tuple(train_images(data, class_name)), where)


def pool_shortfall(class_name: str, pool: Pool, shots: Shots) -> str | None:
    """``None`` when ``pool`` holds enough images for ``shots`` (``"all"``: at least one), else
    the one-line message naming the class, where the pool is, how many images it holds and
    how many were asked."""
    need = 1 if shots == "all" else shots
    if len(pool.images) >= need:
        return None
    asked = "at least one" if shots == "all" else str(shots)
    return (f"class {class_name!r} has {len(pool.images)} normal images ({pool.where}) "
            f"but --shots {shots} asks for {asked}")


def choose_references(pool: Sequence[Path], shots: Shots | str, seed: int) -> list[Path]:
    """The references ``--shots k --seed s`` draws from ``pool`` (all of it for ``"all"``)."""
    k = parse_shots(shots)
    return list(pool) if k == "all" else sorted(random.Random(seed).sample(list(pool), k))


def few_shot_prepare(pools: Mapping[str, Pool], options: RunOptions, calibrate: Path | None,
                     on_warning: Callable[[str, str], None] | None = None):
    """``prepare`` for :func:`alfa_ad.runner.run_dataset` (and the service): fit the class's
    references (drawn as ``--shots k --seed s`` draws them), then calibrate thresholds from
    ``calibrate`` (a folder, or ``DIR/<class>``) or by leave-one-out over the references."""

    def prepare(detector, class_name: str, prompt_name: str) -> dict[str, Any]:
        facts: dict[str, Any] = {}
        if options.few_shot:
            pool, where = pools[class_name]
            chosen = choose_references(pool, options.shots, options.seed)
            warns = detector.fit_normals(chosen, coreset=options.coreset, seed=options.seed)
            facts.update({"references": [str(p) for p in chosen], "references_from": where,
                          "memory_bank_size": detector.method.bank_size})
            if warns:
                facts["reference_warnings"] = warns
            stats = detector.fusion_statistics(prompt_name)
            facts["few_shot"] = {"scorer": detector.config.few_shot_scorer,
                                 "fusion": detector.config.fusion if stats is not None else "raw",
                                 "fusion_statistics": stats}
            for w in warns:
                if on_warning:
                    on_warning(class_name, w)
        if calibrate is not None:
            folder = calibrate / class_name if (calibrate / class_name).is_dir() else calibrate
            facts["thresholds"] = detector.calibrate(iter_image_files(folder), prompt_name, options.fpr).as_dict()
        elif options.calibrate == "leave-one-out":
            if len(detector.normals) >= 2:
                facts["thresholds"] = detector.calibrate(None, prompt_name, options.fpr).as_dict()
            else:
                facts["thresholds_skipped"] = "leave-one-out calibration needs at least 2 references"
        return facts

    return prepare
