"""Run reports: per-class overlays on one colour scale and a self-contained ``report.html``.

Built only from a run folder's files (:func:`write_report`), so old runs get one too.
"""

from .html import write_report
from .overlays import ClassOverlayWriter
from .runfiles import RunFolderError, load_run
from .scale import SCALE_MODES, ColourScale, PixelStats

__all__ = ["SCALE_MODES", "ClassOverlayWriter", "ColourScale", "PixelStats", "RunFolderError", "load_run",
           "write_report"]
