"""``alfa-ad ablate``: the paper's Table 2 / Table 6 style grid over a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .._version import __version__
from ..io.datasets import discover
from ..io.images import InputError
from ..model.names import DEFAULT_PRETRAINED
from ..registry import METHODS
from .common import print_table, WEIGHTS_HELP, app, console, fail, say
from .run_support import build_detector, check_device, check_out, name_map


@app.command()
def ablate(
    data: Path = typer.Option(..., "--data", help="MVTec-layout root, VisA root or one class folder (with labels)."),
    out: Path = typer.Option(Path("runs/ablation"), "--out", help="Output folder: ablation.csv and ablation.md."),
    classes: Optional[str] = typer.Option(None, "--classes", help="mvtec, visa, or a comma list of classes."),
    prompt_class: Optional[str] = typer.Option(None, "--prompt-class", help="Prompt-library class to use for the "
                                               "data (e.g. hazelnut for a folder hazelnut_toy); NAME or folder=name."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt library JSON (default: the shipped ones)."),
    model: Optional[str] = typer.Option(None, "--model", help="open_clip model name."),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, "--pretrained", help="open_clip pretrained tag."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Local weights file (safetensors or torch)."),
    weights: str = typer.Option("pretrained", "--weights", help=WEIGHTS_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of random weights and of the --shots draw."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ..."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Disk cache (default $ALFA_AD_CACHE or ./cache)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Registry methods to score beside the grid, one "
                                          "row each on the same model: a comma list (winclip,musc,patchknn) or all "
                                          "(every method but alfa). musc scores each class as one batch; patchknn "
                                          "needs normals (--shots k), else it is skipped with the reason."),
    shots: Optional[str] = typer.Option(None, "--shots", help="Normal references per class for the method rows that need "
                              "them (patchknn): k or all, drawn with --seed from <data>/<class>/train/good or "
                              "--normals (default: all with --normals, else 0); the grid stays zero-shot."),
    normals: Optional[Path] = typer.Option(None, "--normals", help="Folder of normal references (or DIR/<class>) "
                                           "for --shots, instead of the data's train split."),
    coreset: int = typer.Option(4096, "--coreset", min=1, help="Most memory-bank features per layer of those rows."),
) -> None:
    """Run ALFA's ablation grid (prompt sources, contextual scoring, aligner, scales, text
    projection) zero-shot over --data, sharing each image's forward pass across configurations;
    --methods adds a row per other method (winclip, musc, ...) on the same model."""
    from ..ablation import MethodConfig, method_configs
    from ..outputs.ablation_tables import ablation_rows, write_ablation
    from ..llm.generate import resolve_classes

    check_out(out)
    check_device(device)
    try:
        specs = method_configs(methods or "")
    except ValueError as exc:
        fail(f"--methods: {exc}")
    try:
        wanted = resolve_classes(classes) if classes else None
        dataset, warnings = discover(data, wanted, "object")
    except (InputError, ValueError) as exc:
        fail(str(exc))
    if not any(s.label is not None for v in dataset.values() for s in v):
        fail(f"{data}: no labelled test images (an ablation needs good and defective images to compare)")
    if (shots is not None or normals is not None) and not any(METHODS.declares(m.method, "needs_normals")
                                                               for m in specs):
        fail("--shots/--normals fit the method rows that need normal references (--methods patchknn); "
             "the grid is zero-shot")
    references = _references(dataset, data, shots, normals, seed) if specs else {}
    libs = name_map(prompt_class, list(dataset), "--prompt-class")
    detector = build_detector("alfa", model, pretrained, checkpoint, weights, seed, device, "2,3", cache_dir, 1,
                              prompts, True, tile="none")
    for cls, lib in libs.items():
        detector.set_prompt_class(cls, lib)
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True, highlight=False)
    say(f"alfa-ad {__version__} ablate: {sum(map(len, dataset.values()))} images, {len(dataset)} classes, "
        f"{detector.weights_label}")
    rows = _score_with_progress(detector, dataset, specs, references, {"coreset": coreset, "seed": seed})
    header = {"alfa-ad": __version__, "data": str(data), "classes": ", ".join(dataset), "weights": detector.weights_label,
              "model": detector.backbone.weights.model_name, "device": str(detector.backbone.device),
              "torch threads": __import__("torch").get_num_threads()}
    if libs:
        header["prompt classes"] = ", ".join(f"{k}={v}" for k, v in libs.items())
    if specs:
        header["method rows"] = ("each method's own detector on the same model, whole images; latency: wall time of "
                                 "its predict per image (musc: per class batch, over its images)")
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = write_ablation(out, rows, header)
    print_table(ablation_rows(rows), f"alfa-ad ablation - {detector.weights_label}")
    n_methods = sum(isinstance(r.config, MethodConfig) for r in rows)
    rows_said = f"{len(rows) - n_methods} configurations" + (f" + {n_methods} method rows" if specs else "")
    say(f"{rows_said}; {csv_path} and {md_path}")


def _references(dataset: dict, data: Path, shots: Optional[str], normals: Optional[Path], seed: int) -> dict[str, list]:
    """Per class the ``--shots`` references drawn with ``seed`` (``alfa-ad run``'s rules); {} for 0."""
    from ..references import ShotsError, choose_references, find_pool, parse_shots, pool_shortfall

    try:
        k = parse_shots(shots if shots is not None else ("all" if normals is not None else 0))
    except ShotsError as exc:
        fail(str(exc))
    if k == 0:
        if normals is not None:
            fail("--normals gives references for few-shot rows, but --shots is 0; drop --shots or give --shots k|all")
        return {}
    out = {}
    for cls in dataset:
        try:
            pool = find_pool(cls, normals=normals, data=data)
        except (InputError, ValueError) as exc:
            fail(str(exc))
        short = pool_shortfall(cls, pool, k)
        if short:
            fail(short)
        out[cls] = choose_references(pool.images, k, seed)
    return out


def _score_with_progress(detector, dataset: dict, specs: list, references: dict, fit: dict) -> list:
    """:func:`~alfa_ad.ablation.run_ablation` under a progress bar (the grid, then each method
    row's pass); unreadable images and method rows left out are printed as skipped."""
    from ..ablation import run_ablation

    total = sum(len(v) for v in dataset.values()) * (1 + len(specs))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("ablation", total=total)
        done: dict[str, int] = {}

        def on_progress(label: str, n: int, _total: int) -> None:
            done[label] = n
            progress.update(task, completed=sum(done.values()), description=f"ablation {escape(label)}")

        def on_error(msg: str) -> None:
            progress.console.print(f"[yellow]skipped:[/] {escape(msg)}", soft_wrap=True, highlight=False)

        try:
            return run_ablation(detector, dataset, on_progress=on_progress, on_error=on_error, methods=specs,
                                normals=references, on_skip=on_error, fit=fit)
        except ValueError as exc:
            fail(str(exc))
