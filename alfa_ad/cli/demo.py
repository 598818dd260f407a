"""``alfa-ad demo``: the whole pipeline on generated images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import __version__
from ..io.datasets import discover
from ..model.names import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import app, say
from .run import _detector, _run


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder (synthetic images go to OUT/data)."),
    method: str = typer.Option("alfa", "--method", help="alfa or winclip."),
    weights: str = typer.Option("planted", "--weights",
                                help="planted (hand-made test model, default), random, or pretrained."),
    model: str = typer.Option(DEFAULT_MODEL, "--model"),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, "--pretrained"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Generate synthetic parts with painted red spots and run the whole pipeline on them."""
    from ..demo import make_synthetic_dataset

    data = make_synthetic_dataset(out / "data")
    detector = _detector(method, model, pretrained, None, weights, 0, device, "2,3", None, 8)
    say(f"alfa-ad demo: {method}, {detector.weights_label}")
    config = {"method": method, "shots": 0, "model": detector.backbone.weights.model_name,
              "weights": detector.weights_label, "weights_source": detector.backbone.weights.as_dict(),
              "scales": [2, 3], "prompt_sources": [s.name for s in detector.sources], "data": str(data),
              "version": __version__}
    dataset, warnings = discover(data)
    if not _run(detector, dataset, out / "results", True, config, warnings=warnings).rows:
        raise typer.Exit(1)


