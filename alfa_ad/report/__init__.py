"""Run reports: per-class overlays on one colour scale and a self-contained ``report.html``.

Built only from a run folder's files (:func:`write_report`), so old runs get one too.
"""

from .overlays import ClassOverlayWriter
from .scale import SCALE_MODES, ColourScale, PixelStats
from .html import write_report
from .runfiles import RunFolderError, load_run

__all__ = ["ClassOverlayWriter", "ColourScale", "PixelStats", "RunFolderError", "SCALE_MODES", "load_run",
           "write_report"]
