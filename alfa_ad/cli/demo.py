"""``alfa-ad demo``: the whole pipeline on generated images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..io.datasets import discover
from ..model.names import DEFAULT_PRETRAINED
from ..outputs.record import RunOptions, build_record
from ..outputs.writers import clear_previous
from .common import app, say
from .run_support import build_detector, check_out, run_with_progress


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder (synthetic images go to OUT/data)."),
    method: str = typer.Option("alfa", "--method", help="alfa or winclip."),
    weights: str = typer.Option("planted", "--weights",
                                help="planted (hand-made test model, default), random, or pretrained."),
    model: Optional[str] = typer.Option(None, "--model"),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, "--pretrained"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Generate synthetic parts with painted red spots and run the whole pipeline on them."""
    from ..demo import make_synthetic_dataset

    check_out(out)
    detector = build_detector(method, model, pretrained, None, weights, 0, device, "2,3", None, 8)
    data = make_synthetic_dataset(out / "data")
    say(f"alfa-ad demo: {method}, {detector.weights_label}")
    dataset, warnings = discover(data)
    options = RunOptions(data=str(data))
    record = build_record(detector, options, list(dataset), {c: detector.prompts(c).sources for c in dataset})
    clear_previous(out / "results")
    if not run_with_progress(detector, dataset, out / "results", record, options, overlays=True,
                             warnings=warnings).rows:
        raise typer.Exit(1)
