"""The backend interface and what the exported-graph backends share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..export.manifest import OUTPUTS, Manifest, load_manifest
from ..methods.base import BatchScores


class Backend(Protocol):
    name: str

    def __call__(self, pixels: torch.Tensor, text: tuple) -> BatchScores: ...

    def describe(self) -> dict[str, Any]: ...


def create_backend(name: str, detector, exported: Path | None = None, precision: str = "fp32",
                   cache_dir: Path | None = None) -> Backend:
    """The backend ``name`` for ``detector`` (``ValueError``, one line, on any problem)."""
    from ..registry import BACKENDS

    return BACKENDS.get(name).create(detector, exported=exported, precision=precision, cache_dir=cache_dir)


class ExportedBackend:
    """Runs an export folder (:mod:`alfa_ad.export`); subclasses open and run the file."""

    name = ""
    format = ""  # the export format this backend reads

    def __init__(self, folder: Path, manifest: Manifest | None = None) -> None:
        self.folder = Path(folder)
        self.manifest = manifest or load_manifest(self.folder)
        if self.manifest.format != self.format:
            raise ValueError(f"{self.folder} holds a {self.manifest.format} export; --backend {self.name} runs "
                             f"{self.format} exports")
        self.method = None  # set by create(): the detector's method (for its few-shot state)
        self._open(self.folder / self.manifest.file)

    @classmethod
    def create(cls, detector, exported: Path | None = None, precision: str = "fp32",
               cache_dir: Path | None = None) -> "ExportedBackend":
        """For ``detector``: ``exported`` (checked against the detector's options), else the
        export in the cache (written on first use)."""
        from ..export.graphs import identity
        from ..export.writer import cached_export, check_exportable
        from ..io.paths import default_cache_dir

        check_exportable(detector)
        if exported is None:
            exported = cached_export(detector, Path(cache_dir) if cache_dir else default_cache_dir(), cls.format,
                                     precision)
        backend = cls(exported)
        backend.manifest.check(identity(detector))
        backend.method = detector.method
        return backend

    # ------------------------------------------------------------ subclass
    def _open(self, path: Path) -> None:
        raise NotImplementedError

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's outputs (the manifest's ``outputs``) for float32 arrays named by its ``inputs``."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared
    def texts(self, class_name: str) -> tuple[np.ndarray, np.ndarray]:
        """The unit prompt embeddings stored at export time for ``class_name``."""
        facts = self.manifest.classes.get(class_name)
        if facts is None:
            raise ValueError(f"class {class_name!r} was not exported; exported: {', '.join(self.manifest.classes) or 'none'}")
        with np.load(self.folder / "texts.npz") as z:
            return z[f"{facts['index']}_normal"], z[f"{facts['index']}_abnormal"]

    def __call__(self, pixels: torch.Tensor, text: tuple) -> BatchScores:
        """``text``: the class's prompt embeddings (alfa), or the prompt counts of a method
        that reads none (patchknn, whose graph takes the fitted memory bank instead)."""
        if "bank" in self.manifest.inputs:
            return self._with_bank(pixels, text)
        if self.method is not None and self.method.export_bank() is not None:
            raise ValueError("the few-shot memory bank of alfa is not part of the exported model; use --backend torch")
        feeds = dict(zip(self.manifest.inputs, (_array(t) for t in (pixels, *text))))
        out = {k: torch.from_numpy(np.asarray(v)) for k, v in self.run(feeds).items()}
        return BatchScores(out["scores"], out["global_scores"], out["maps"], out["keep_normal"].bool(),
                           out["keep_abnormal"].bool(), out["embeddings"])

    def _with_bank(self, pixels: torch.Tensor, counts: tuple[int, int]) -> BatchScores:
        refs = getattr(self.method, "refs", None)
        if refs is None:
            raise ValueError(f"{self.method.name if self.method else 'this export'} scores against a memory bank: "
                             "fit_normals(images) first (CLI: --shots k, --shots all or --normals)")
        out = {k: torch.from_numpy(np.asarray(v))
               for k, v in self.run({"pixels": _array(pixels), "bank": _array(refs.sets[0])}).items()}
        kept_normal, kept_abnormal = self.method.none_kept(pixels.shape[0], counts)
        return BatchScores(out["scores"], out["scores"], out["maps"], kept_normal, kept_abnormal, out["embeddings"])

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {"backend": self.name, "exported": str(self.folder), "format": m.format, "precision": m.precision,
                "opset": m.opset}


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


__all__ = ["Backend", "ExportedBackend", "OUTPUTS", "create_backend"]
