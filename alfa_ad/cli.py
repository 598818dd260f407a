"""Command line: ``alfa-ad run``, ``alfa-ad demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .detector import Detector
from .io.datasets import discover
from .io.images import InputError
from .model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED, WeightsUnavailableError
from .runner import RunReport, run_dataset

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Training-free visual anomaly detection (ALFA, WinCLIP).")
console = Console(stderr=True)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        fail(f"{what} must be comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        fail(f"{what} must be positive integers, got {text!r}")
    return values


def _print_report(report: RunReport) -> None:
    table = Table(title=f"alfa-ad {report.config['method']} - {report.config['weights']}")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("image AUROC", justify="right")
    table.add_column("pixel AUROC", justify="right")
    fmt = lambda v: "undefined" if v is None else f"{100 * v:.1f}"  # noqa: E731
    counts: dict[str, int] = {}
    for row in report.rows:
        counts[row["class"]] = counts.get(row["class"], 0) + 1
    for cls, m in report.metrics.items():
        table.add_row(cls, str(counts.get(cls, 0)), fmt(m["image_auroc"]), fmt(m["pixel_auroc"]))
    if len(report.metrics) > 1:
        mean = report.mean_metrics()
        table.add_row("mean", str(len(report.rows)), fmt(mean["image_auroc"]), fmt(mean["pixel_auroc"]))
    Console().print(table)


def _run(detector: Detector, data: Path, out: Path, classes: Optional[str], class_name: str, overlays: bool,
         config: dict) -> RunReport:
    try:
        dataset, warnings = discover(data, [c for c in classes.split(",") if c] if classes else None, class_name)
    except InputError as exc:
        fail(str(exc))
    total = sum(len(v) for v in dataset.values())
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("scoring", total=total)
        seen: dict[str, int] = {}

        def on_progress(cls: str, done: int, _n: int) -> None:
            seen[cls] = done
            progress.update(task, completed=sum(seen.values()), description=f"scoring {cls}")

        def on_error(msg: str) -> None:
            progress.console.print(f"[yellow]skipped:[/] {msg}", soft_wrap=True, highlight=False)

        report = run_dataset(detector, dataset, out, config, overlays=overlays, on_progress=on_progress,
                             on_error=on_error)
    report.warnings[:0] = warnings
    report.write()
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}", soft_wrap=True, highlight=False)
    if report.metrics:
        _print_report(report)
    console.print(f"{len(report.rows)} images scored, {len(report.errors)} skipped, "
                  f"{report.seconds:.1f} s; outputs in {out} ({report.config['weights']})", highlight=False)
    if not report.rows:
        raise typer.Exit(1)
    return report


def _detector(method: str, model: str, pretrained: str, checkpoint: Optional[Path], weights: str, seed: int,
              device: Optional[str], scales: str, cache_dir: Optional[Path], batch_size: int) -> Detector:
    if method not in ("alfa", "winclip"):
        fail(f"--method must be alfa or winclip, got {method!r}")
    if batch_size < 1:
        fail("--batch-size must be at least 1")
    try:
        return Detector(method=method, model=model, pretrained=pretrained, checkpoint=checkpoint, weights=weights,
                        seed=seed, device=device, scales=_parse_ints(scales, "--scales"),
                        cache_dir=cache_dir if cache_dir is not None else True, batch_size=batch_size)
    except (WeightsUnavailableError, ValueError) as exc:
        fail(str(exc))


@app.command()
def run(
    data: Path = typer.Option(..., "--data", help="MVTec-layout root, one class folder, or a folder of images."),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="Output folder."),
    shots: int = typer.Option(0, "--shots", help="Normal reference images per class (0 = zero-shot)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma list of class folders to run."),
    class_name: str = typer.Option("object", "--class-name", help="Object name for a plain folder of images."),
    method: str = typer.Option("alfa", "--method", help="alfa or winclip."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="open_clip model name."),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, "--pretrained", help="open_clip pretrained tag."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Local weights file for --model."),
    weights: str = typer.Option("pretrained", "--weights", help="pretrained, random (smoke test) or planted (test model)."),
    seed: int = typer.Option(0, "--seed", help="Seed for random weights."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)."),
    scales: str = typer.Option("2,3", "--scales", help="Window sizes in patches."),
    batch_size: int = typer.Option(8, "--batch-size"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Disk cache (default $ALFA_AD_CACHE or ./cache)."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write heat-map overlays."),
) -> None:
    """Score every test image under --data; write scores, overlays and metrics to --out."""
    if shots != 0:
        fail("only --shots 0 (zero-shot) is available in this version")
    detector = _detector(method, model, pretrained, checkpoint, weights, seed, device, scales, cache_dir, batch_size)
    console.print(f"alfa-ad {__version__}: {method} on {detector.backbone.device}, {detector.weights_label}",
                  highlight=False)
    config = {"method": method, "shots": shots, "model": model, "pretrained": pretrained,
              "checkpoint": str(checkpoint) if checkpoint else None, "weights": detector.weights_label,
              "weights_source": detector.backbone.weights.as_dict(), "scales": list(detector.method.geometry.scales),
              "prompt_sources": [s.name for s in detector.sources], "seed": seed, "data": str(data),
              "version": __version__}
    _run(detector, data, out, classes, class_name, overlays, config)


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
    from .demo import make_synthetic_dataset

    data = make_synthetic_dataset(out / "data")
    detector = _detector(method, model, pretrained, None, weights, 0, device, "2,3", None, 8)
    console.print(f"alfa-ad demo: {method}, {detector.weights_label}", highlight=False)
    config = {"method": method, "shots": 0, "model": detector.backbone.weights.model_name, "weights": detector.weights_label,
              "weights_source": detector.backbone.weights.as_dict(), "scales": [2, 3],
              "prompt_sources": [s.name for s in detector.sources], "data": str(data), "version": __version__}
    _run(detector, data, out / "results", None, "widget", True, config)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
