"""Run reports: per-class overlays on one colour scale and a self-contained ``report.html``.

Built only from a run folder's files (:func:`write_report`), so old runs get one too.
Names are imported on first use: a run imports the overlay writer without paying for
matplotlib and jinja2 until the page is written.
"""

import importlib

_EXPORTS = {"write_report": ".html", "ClassOverlayWriter": ".overlays", "RunFolderError": ".runfiles",
            "load_run": ".runfiles", "SCALE_MODES": ".scale", "ColourScale": ".scale", "PixelStats": ".scale"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
