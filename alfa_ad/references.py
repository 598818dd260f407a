"""Normal references of a class: drawing ``k`` of them, fitting them, calibrating thresholds.

Shared by the batch run and the service, so both draw, fit and calibrate identically.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

from .io.images import iter_image_files
from .outputs.record import RunOptions


def choose_references(pool: list[Path], shots: str, seed: int) -> list[Path]:
    return list(pool) if shots == "all" else sorted(random.Random(seed).sample(pool, int(shots)))


def few_shot_prepare(pools: dict[str, tuple[list[Path], str]], options: RunOptions, calibrate: Path | None,
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
