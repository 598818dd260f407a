"""``alfa-ad report``: (re)build a run folder's report.html from its files."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import app, fail, say


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run folder written by alfa-ad run (or demo)."),
    seeds: bool = typer.Option(True, "--seeds/--no-seeds", help="Also rebuild the seed_*/ reports of a multi-seed run."),
) -> None:
    """Rebuild RUN_DIR/report.html from the run's files (scores, metrics, overlays); works on old runs too."""
    from ..report import RunFolderError, write_report  # here: plotting and metrics load only for this command

    try:
        page = write_report(run_dir, seeds=seeds)
    except RunFolderError as exc:
        fail(str(exc))
    say(f"report: {page}")
