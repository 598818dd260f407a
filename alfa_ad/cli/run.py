"""``alfa-ad run``: score a dataset and write scores, overlays and metrics."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import __version__
from ..detector import Detector
from ..io.datasets import discover, train_images
from ..io.images import InputError, iter_image_files
from ..model.backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED, WeightsUnavailableError
from ..prompting.library import LibraryError
from ..runner import RunReport, aggregate_seeds, metrics_table, run_dataset, write_seed_summary
from .common import _parse_ints, _print_table, app, console, fail, say


def _run(detector: Detector, dataset: dict, out: Path, overlays: bool, config: dict, *, explain: int = 0,
         prepare=None, warnings: list[str] | None = None) -> RunReport:
    total = sum(len(v) for v in dataset.values())
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("scoring", total=total)
        seen: dict[str, int] = {}

        def on_progress(cls: str, done: int, _n: int) -> None:
            seen[cls] = done
            progress.update(task, completed=sum(seen.values()), description=f"scoring {escape(cls)}")

        def on_error(msg: str) -> None:
            progress.console.print(f"[yellow]skipped:[/] {escape(msg)}", soft_wrap=True, highlight=False)

        report = run_dataset(detector, dataset, out, config, overlays=overlays, explain=explain,
                             warnings=warnings or [], prepare=prepare, on_progress=on_progress, on_error=on_error)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True, highlight=False)
    for cls, facts in report.classes.items():
        kept = facts.get("mean_prompts_kept")
        line = f"{cls}: prompt sources {facts['prompt_sources']}"
        if kept:
            line += f"; prompts kept per image on average: {kept['normal']:.1f} normal, {kept['abnormal']:.1f} abnormal"
        if facts.get("thresholds"):
            line += f"; {facts['thresholds']['description']}"
        say(line)
    if report.metrics:
        _print_table(metrics_table(report.metrics, report.mean_metrics()),
                     f"alfa-ad {config['method']}, {config['shots']}-shot - {config['weights']}")
    skipped_classes = sum(e.startswith("class ") for e in report.errors)
    say(f"{len(report.rows)} images scored, {len(report.errors) - skipped_classes} images skipped, "
        f"{skipped_classes} classes skipped, {report.seconds:.1f} s; outputs in {out} ({config['weights']})")
    return report


def _detector(method: str, model: str, pretrained: str, checkpoint: Optional[Path], weights: str, seed: int,
              device: Optional[str], scales: str, cache_dir: Optional[Path], batch_size: int,
              prompts: Optional[Path] = None, llm: bool = True, anomalib_compat: bool = False,
              text: bool = True) -> Detector:
    if method not in ("alfa", "winclip"):
        fail(f"--method must be alfa or winclip, got {method!r}")
    if batch_size < 1:
        fail("--batch-size must be at least 1")
    if prompts is not None and not prompts.is_file():
        fail(f"{prompts}: prompt library not found")
    options: dict[str, Any] = {"anomalib_compat": True} if anomalib_compat else {}
    if anomalib_compat and method != "winclip":
        fail("--anomalib-compat applies to --method winclip only")
    if not text:
        if method != "alfa":
            fail("--no-text applies to --method alfa only")
        options["use_text"] = False
    try:
        return Detector(method=method, model=model, pretrained=pretrained, checkpoint=checkpoint, weights=weights,
                        seed=seed, device=device, scales=_parse_ints(scales, "--scales"),
                        cache_dir=cache_dir if cache_dir is not None else True, batch_size=batch_size,
                        prompts=prompts, llm_prompts=llm, **options)
    except (WeightsUnavailableError, LibraryError, ValueError) as exc:
        fail(str(exc))


def _references(data: Path, normals: Optional[Path], class_name: str) -> tuple[list[Path], str]:
    """Candidate normal images for a class and where they came from."""
    if normals is not None:
        folder = normals / class_name if (normals / class_name).is_dir() else normals
        return iter_image_files(folder), str(folder)
    return train_images(data, class_name), f"{data}/{class_name}/train/good"


def _few_shot_prepare(data: Path, normals: Optional[Path], shots: str, seed: int, coreset: Optional[int],
                      calibrate: Optional[Path], fpr: float):
    def prepare(detector: Detector, class_name: str) -> dict[str, Any]:
        facts: dict[str, Any] = {}
        if shots != "0":
            pool, where = _references(data, normals, class_name)
            if shots == "all":
                chosen = pool
            else:
                k = int(shots)
                if len(pool) < k:
                    raise ValueError(f"only {len(pool)} normal images in {where}, --shots {k} asked")
                chosen = sorted(random.Random(seed).sample(pool, k))
            if not chosen:
                raise ValueError(f"no normal images in {where}")
            warns = detector.fit_normals(chosen, coreset=coreset, seed=seed)
            facts.update({"references": [str(p) for p in chosen], "memory_bank_size": detector.method.bank_size,
                          "reference_warnings": warns})
            for w in warns:
                console.print(f"[yellow]warning:[/] {escape(class_name)}: {escape(w)}", soft_wrap=True)
        if calibrate is not None:
            folder = calibrate / class_name if (calibrate / class_name).is_dir() else calibrate
            facts["thresholds"] = detector.calibrate(iter_image_files(folder), class_name, fpr).as_dict()
        elif shots != "0" and len(detector.normals) >= 2:
            facts["thresholds"] = detector.calibrate(None, class_name, fpr).as_dict()
        return facts

    return prepare


@app.command()
def run(
    data: Path = typer.Option(..., "--data", help="MVTec-layout root, VisA root, one class folder, or a folder of images."),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="Output folder."),
    shots: str = typer.Option("0", "--shots", help="Normal reference images per class: 0 (zero-shot), k, or all."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling references (and random weights)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma list of seeds: one run each, mean ± std."),
    normals: Optional[Path] = typer.Option(None, "--normals", help="Folder of normal references (or DIR/<class>)."),
    coreset: Optional[int] = typer.Option(4096, "--coreset", help="Most memory-bank features per layer (greedy k-center)."),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="Folder of extra normal images for thresholds."),
    fpr: float = typer.Option(0.01, "--fpr", help="Target false-positive rate of the thresholds."),
    classes: Optional[str] = typer.Option(None, "--classes", help="mvtec, visa, or a comma list of classes."),
    class_name: str = typer.Option("object", "--class-name", help="Object name for a plain folder of images."),
    method: str = typer.Option("alfa", "--method", help="alfa or winclip."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt library JSON (default: the shipped ones)."),
    llm: bool = typer.Option(True, "--llm/--no-llm", help="Use LLM-generated prompts (ALFA)."),
    text: bool = typer.Option(True, "--text/--no-text", help="ALFA few-shot: --no-text scores with the memory bank alone."),
    explain: int = typer.Option(0, "--explain", help="Write the top-N LLM descriptors per image."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="open_clip model name."),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, "--pretrained", help="open_clip pretrained tag."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Local weights file for --model."),
    weights: str = typer.Option("pretrained", "--weights", help="pretrained, random (smoke test), planted (test model) or mini (mini-CLIP trained here)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)."),
    scales: str = typer.Option("2,3", "--scales", help="Window sizes in patches."),
    anomalib_compat: bool = typer.Option(False, "--anomalib-compat", help="WinCLIP exactly as anomalib 2.x computes it."),
    batch_size: int = typer.Option(8, "--batch-size"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Disk cache (default $ALFA_AD_CACHE or ./cache)."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write heat-map overlays."),
) -> None:
    """Score every test image under --data; write scores, overlays and metrics to --out."""
    from ..prompting.llm import resolve_classes

    if shots != "all" and not shots.isdigit():
        fail(f"--shots must be a number or 'all', got {shots!r}")
    shots = shots if shots == "all" else str(int(shots))  # "00" -> "0"
    if normals is not None and not normals.is_dir():
        fail(f"{normals}: --normals folder not found")
    if calibrate is not None and not calibrate.is_dir():
        fail(f"{calibrate}: --calibrate folder not found")
    if not 0 < fpr < 1:
        fail(f"--fpr must be between 0 and 1, got {fpr}")
    if coreset is not None and coreset < 1:
        fail("--coreset must be at least 1")
    try:
        wanted = resolve_classes(classes) if classes else None
        dataset, warnings = discover(data, wanted, class_name)
    except (InputError, ValueError) as exc:
        fail(str(exc))
    seed_list = tuple(dict.fromkeys(_parse_ints(seeds, "--seeds", minimum=0))) if seeds else (seed,)
    detector = _detector(method, model, pretrained, checkpoint, weights, seed, device, scales, cache_dir, batch_size,
                         prompts, llm, anomalib_compat, text)
    if not text and shots == "0":
        fail("--no-text needs normal references (--shots k or all)")
    say(f"alfa-ad {__version__}: {method}, {shots}-shot on {detector.backbone.device}, {detector.weights_label}")
    reports = []
    for s in seed_list:
        config = {"method": method, "shots": shots, "seed": s, "model": model, "pretrained": pretrained,
                  "checkpoint": str(checkpoint) if checkpoint else None, "weights": detector.weights_label,
                  "weights_source": detector.backbone.weights.as_dict(),
                  "scales": list(detector.method.geometry.scales), "prompt_sources": [x.name for x in detector.sources],
                  "prompts_file": str(prompts) if prompts else None, "anomalib_compat": anomalib_compat, "text": text,
                  "normals": str(normals) if normals else None, "coreset": coreset,
                  "calibrate": str(calibrate) if calibrate else None, "fpr": fpr, "data": str(data),
                  "torch_seed_weights": seed, "version": __version__}
        prepare = None
        if shots != "0" or calibrate is not None:
            prepare = _few_shot_prepare(data, normals, shots, s, coreset, calibrate, fpr)
        target = out if len(seed_list) == 1 else out / f"seed_{s}"
        if len(seed_list) > 1:
            say(f"--- seed {s} -> {target}")
        detector.clear_normals()
        reports.append(_run(detector, dataset, target, overlays, config, explain=explain, prepare=prepare,
                            warnings=list(warnings)))
    if not any(r.rows for r in reports):
        raise typer.Exit(1)
    if len(seed_list) > 1:
        rows = write_seed_summary(out, {**reports[0].config, "seed": None}, seed_list, aggregate_seeds(reports))
        _print_table(rows, f"mean ± std over seeds {','.join(map(str, seed_list))} - {detector.weights_label}")
        say(f"seed summary in {out}/metrics_seeds.{{json,csv,md}}")


