"""Checkpoints of a batch run, so ``--resume`` continues an interrupted one.

``OUT/.resume/state.json`` says how many rows of ``scores.jsonl`` are covered (the
images done: their paths are in those rows), which classes are finished (their facts
and metrics) and, for the class in progress, its facts; ``OUT/.resume/class.npz``
holds that class's metric accumulators.  Both are written atomically every ``CHECKPOINT_EVERY`` images and at
the end of each class; rows written after the last checkpoint are scored again.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import atomic_write_bytes, atomic_write_text

CHECKPOINT_EVERY = 64
FOLDER = ".resume"


@dataclass
class ResumeState:
    rows: int = 0  # rows of scores.jsonl covered
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)  # class -> {"facts", "metrics"}
    current: str | None = None
    current_facts: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    record_detector: dict[str, Any] = field(default_factory=dict)


def save(out: Path, state: ResumeState, arrays: dict[str, np.ndarray] | None) -> None:
    folder = out / FOLDER
    if arrays is not None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(folder / "class.npz", buf.getvalue())
    atomic_write_text(folder / "state.json", json.dumps(state.__dict__))


def load(out: Path) -> tuple[ResumeState, dict[str, np.ndarray] | None] | None:
    """The last checkpoint in ``out``, or None."""
    folder = out / FOLDER
    try:
        state = ResumeState(**json.loads((folder / "state.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    arrays = None
    if state.current is not None and (folder / "class.npz").is_file():
        with np.load(folder / "class.npz") as data:
            arrays = {k: data[k] for k in data.files}
    return state, arrays
