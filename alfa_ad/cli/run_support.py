"""What ``run`` and ``demo`` share: building the detector from options, checking a run's
inputs before the model loads, planning references, and printing a run's outcome."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import references
from ..config import ConfigFieldError, DetectorConfig
from ..io.datasets import Sample
from ..io.images import InputError
from ..outputs.record import RunOptions
from ..outputs.tables import metrics_table
from ..references import Pool, find_pool
from ..registry import DEFAULT_ALIGNER, ENGINES
from .common import parse_ints, print_table, console, fail, say


def check_device(device: Optional[str]) -> None:
    """A usable ``--device`` or a one-line error (before any model is built)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        fail(f"--device {device!r} is not a device name ({str(exc).splitlines()[0]}); use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            fail(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            fail(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type not in ("cpu", "mps"):
        fail(f"--device {device}: unsupported device type {dev.type!r}; use cpu or cuda")


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        fail(f"{out}: --out must be a folder, and a file has that name")


def build_detector(method: str, model: Optional[str], pretrained: str, checkpoint: Optional[Path], weights: str,
                   seed: int, device: Optional[str], scales: Optional[str], cache_dir: Optional[Path],
                   batch_size: int | str,
                   prompts: Optional[Path] = None, llm: bool = True, anomalib_compat: bool = False,
                   text: bool = True, tile: str = "auto", aligner: str = DEFAULT_ALIGNER,
                   few_shot_scorer: str = "bank", fusion: str = "raw",
                   learned: Optional[Path] = None, contextual: Optional[str] = None,
                   preset: Optional[str] = None, refine: bool = False, refine_layers: Optional[str] = None,
                   window_strides: Optional[str] = None):
    """A :class:`~alfa_ad.Detector` from CLI options; every problem is a one-line error, and
    all but the model's own (a scale larger than its patch grid, say) come before torch loads."""
    from ..model.weights import WeightsUnavailableError, require_pretrained

    method_options: dict[str, Any] = {"anomalib_compat": True} if anomalib_compat else {}
    if not text:
        method_options["use_text"] = False
    config = detector_config(
        method_options, method=method, aligner=aligner, model=model, pretrained=pretrained,
        checkpoint=str(checkpoint) if checkpoint else None, weights=weights, seed=seed, device=device,
        scales=None if scales is None else parse_ints(scales, "--scales"), tile=tile, batch_size=batch_size,
        window_strides=None if window_strides is None else parse_ints(window_strides, "--window-strides"),
        prompts=str(prompts) if prompts else None, llm_prompts=llm, few_shot_scorer=few_shot_scorer,
        fusion=fusion, learned=str(learned) if learned else None, contextual=contextual, preset=preset,
        refine=refine, refine_layers=refine_layers)
    if refine_layers is not None and not refine:
        fail("--refine-layers applies with --refine")
    if window_strides is not None:  # what the config cannot know without the method
        from ..registry import METHODS

        if METHODS.declares(method, "patches_only"):
            fail(f"--window-strides: {method} scores patches, not windows")
        if anomalib_compat and set(config.window_strides) != {1}:
            fail("--window-strides: --anomalib-compat reproduces anomalib's windows at stride 1")
    check_detector_options(method, aligner, tile, prompts, learned, anomalib_compat, text, contextual)
    try:  # missing default weights: the one-line error before torch and the model code load
        require_pretrained(model, pretrained, weights, checkpoint)
    except WeightsUnavailableError as exc:
        fail(str(exc))
    check_device(device)
    from ..detector import Detector  # torch and the model code load from here on
    from ..prompting.library import LibraryError

    try:
        detector = Detector(config=config, cache_dir=cache_dir if cache_dir is not None else True)
    except (WeightsUnavailableError, LibraryError, ValueError) as exc:
        fail(str(exc))
    for source in detector.sources:  # e.g. a plain embedding file that cannot be checked
        for w in getattr(source, "warnings", []):
            console.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True, highlight=False)
    return detector


def detector_config(method_options: dict[str, Any], **fields: Any) -> DetectorConfig:
    """The :class:`DetectorConfig` of CLI options (method options merged as ``Detector`` merges
    them); its error, one line, names the CLI option (``--few-shot-scorer ...``)."""
    try:
        config = DetectorConfig(**fields)
        if method_options:
            config = replace(config, options={**config.options, **method_options})
    except ConfigFieldError as exc:
        fail(f"--{exc.field.replace('_', '-')} {exc.problem}")
    except ValueError as exc:
        fail(str(exc))
    return config


def check_detector_options(method: str, aligner: str, tile: str, prompts: Optional[Path], learned: Optional[Path],
                           anomalib_compat: bool, text: bool, contextual: Optional[str]) -> None:
    """What :class:`DetectorConfig` leaves to the CLI: files that must exist, ``--tile``, and
    options that apply to one method only; one-line errors."""
    from ..scoring.tile_spec import parse_tile

    if prompts is not None and not prompts.is_file():
        fail(f"{prompts}: prompt library not found")
    if learned is not None and not learned.is_file():
        fail(f"{learned}: learned-prompt file not found")
    try:
        parse_tile(tile)
    except ValueError as exc:
        fail(str(exc))
    if contextual not in (None, "off") and method != "alfa":
        fail(f"--contextual {contextual} applies to --method alfa only (WinCLIP has no prompt adaptation)")
    if anomalib_compat and method != "winclip":
        fail("--anomalib-compat applies to --method winclip only")
    if anomalib_compat and aligner != "masked":
        fail(f"--anomalib-compat reproduces anomalib's masked windows; it cannot use --aligner {aligner}")
    if not text and method != "alfa":
        fail("--no-text applies to --method alfa only")


def build_engine(name: str, workers: Optional[int], gpus_per_worker: Optional[float], ray_address: Optional[str]):
    """The ``--engine`` (not started yet) from CLI options; every problem is a one-line error."""
    import inspect

    if name not in ENGINES:
        fail(f"--engine must be one of {', '.join(ENGINES.names())}, got {name!r}")
    if workers is not None and workers < 1:
        fail("--workers must be at least 1")
    if gpus_per_worker is not None and gpus_per_worker < 0:
        fail("--gpus-per-worker must be 0 or more")
    cls = ENGINES.get(name)
    options = {"workers": workers}
    accepted = inspect.signature(cls).parameters
    for key, flag, value in (("gpus_per_worker", "--gpus-per-worker", gpus_per_worker),
                             ("address", "--ray-address", ray_address)):
        if value is None:
            continue
        if key not in accepted:
            fail(f"{flag} does not apply to --engine {name}")
        options[key] = value
    try:
        return cls(**options)
    except (ImportError, ValueError) as exc:
        fail(f"--engine {name}: {exc}")


def name_map(spec: Optional[str], classes: list[str], option: str) -> dict[str, str]:
    """``NAME`` (one class in the data) or ``folder=name,folder2=name2`` -> {folder: name}."""
    if not spec:
        return {}
    if "=" not in spec:
        if len(classes) != 1:
            fail(f"{option} {spec!r} names one class but the data holds {len(classes)} ({', '.join(classes)}); "
                 f"select one with --classes or map them: {option} folder=name,folder2=name2")
        return {classes[0]: " ".join(spec.split())}
    out: dict[str, str] = {}
    for item in spec.split(","):
        folder, _, name = item.partition("=")
        folder, name = folder.strip(), " ".join(name.split())
        if not folder or not name:
            fail(f"{option}: {item!r} is not folder=name")
        if folder not in classes:
            fail(f"{option}: no class {folder!r} in the data; classes: {', '.join(classes)}")
        out[folder] = name
    return out


def discover_data(data: Path, classes: Optional[str]) -> tuple[dict[str, list[Sample]], list[str], bool]:
    """``--data`` (and ``--classes``) -> (images per class, discovery warnings, whether it is a plain
    folder or a single image rather than a dataset layout); every problem is a one-line error."""
    from ..io.datasets import discover, is_class_folder, is_visa_root
    from ..llm.generate import resolve_classes

    try:
        wanted = resolve_classes(classes) if classes else None
        dataset, warnings = discover(data, wanted, "object")
    except (InputError, ValueError) as exc:
        fail(str(exc))
    plain = data.is_file() or not (is_visa_root(data) or is_class_folder(data) or
                                   any(is_class_folder(p) for p in data.iterdir() if p.is_dir()))
    return dataset, warnings, plain


def reference_pools(data: Path, normals: Optional[Path], classes: list[str], plain: bool) -> dict[str, Pool]:
    """Per class, the candidate normal images and where they came from (checked up front): a
    missing ``--normals`` folder is an error, a missing train split an empty pool."""
    pools = {}
    for cls in classes:
        if normals is None and plain:
            fail(f"{data} is a plain folder of images, with no normal training images to draw --shots from; "
                 "pass --normals DIR (a folder of normal images)")
        try:
            pools[cls] = find_pool(cls, normals=normals, data=data)
        except InputError as exc:
            if normals is not None:
                fail(str(exc))
            pools[cls] = Pool((), str(exc))
    return pools


def run_with_progress(detector, dataset: dict[str, list[Sample]], out: Path, record: dict, options: RunOptions, *,
                      overlays: bool, prepare=None, warnings: list[str] | None = None, resume: bool = False,
                      workers: int | None = None, overlay_scale: str = "class", report_html: bool = True,
                      vlm: dict | None = None, engine=None):
    """Run ``engine`` (default: local) with a progress bar, then print warnings, facts and the table."""
    from ..engines import EngineError
    from ..runner import run_dataset

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

        try:
            report = run_dataset(detector, dataset, out, record, options, overlays=overlays, warnings=warnings or [],
                                 prepare=prepare, on_progress=on_progress, on_error=on_error, resume=resume,
                                 workers=workers, overlay_scale=overlay_scale, engine=engine)
        except EngineError as exc:
            fail(f"--engine {engine.name}: {exc}")
        except ValueError as exc:
            if not resume:
                raise
            fail(str(exc))
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
        th, counts = facts.get("thresholds"), facts.get("decisions")
        if th and counts:
            line = (f"{cls}: {counts['flagged']} of {counts['images']} flagged at FPR {th['fpr']:g}; thresholds "
                    f"image {th['image']:.3f}, pixel {th['pixel']:.3f}")
            if "tp" in counts:
                line += f" (true positives {counts['tp']}, false positives {counts['fp']}, missed {counts['fn']})"
            say(line + f"; masks in {out / 'masks'}")
    if report.metrics:
        print_table(metrics_table(report.metrics, report.mean_metrics()),
                     f"alfa-ad {record['method']}, {record['shots']}-shot - {record['weights']}")
    skipped_classes = sum(e.startswith("class ") for e in report.errors)
    if report.resumed_rows:
        say(f"{report.resumed_rows} images were scored before the interruption and kept")
    say(f"{len(report.rows)} images scored, {len(report.errors) - skipped_classes} images skipped, "
        f"{skipped_classes} classes skipped, {report.seconds:.1f} s; outputs in {out} ({record['weights']})")
    if vlm:
        vlm_second_opinion(out, **vlm)
    if report_html:
        write_html_report(out)
    return report


def vlm_second_opinion(out: Path, n: int, model: str, base_url: Optional[str], fuse: Optional[float],
                       rules: Optional[Path]) -> None:
    """``--vlm-explain``: verdicts of a vision-language model on the run's top-``n`` images,
    written into scores.json; failures are reported per image, the run's files stay."""
    from ..llm.second_opinion import vlm_explain_run
    from ..llm.client import LLMConfig, LLMError
    from ..llm.rules import RulesError, load_rules

    try:
        summary = vlm_explain_run(out, n, config=LLMConfig(model=model, base_url=base_url, max_tokens=512),
                                  rules=load_rules(rules) if rules else None, fuse=fuse)
    except (LLMError, RulesError, ValueError) as exc:
        console.print(f"[yellow]warning:[/] --vlm-explain: {escape(str(exc))}", soft_wrap=True)
        return
    for err in summary["errors"]:
        console.print(f"[yellow]vlm:[/] {escape(err)}", soft_wrap=True, highlight=False)
    say(f"VLM verdicts for {summary['answered']} of {summary['asked']} images in {out / 'scores.json'}")


def write_html_report(out: Path) -> None:
    """``report.html`` from the run folder's files; a failure is a warning, never a lost run."""
    from ..report import write_report

    try:
        write_report(out)
    except Exception as exc:  # noqa: BLE001 - the scores are written; the page is a view of them
        console.print(f"[yellow]warning:[/] report.html not written: {escape(str(exc))}", soft_wrap=True)
        return
    say(f"report: {out / 'report.html'}")


def few_shot_prepare(pools: dict[str, Pool], options: RunOptions, calibrate: Optional[Path]):
    """:func:`alfa_ad.references.few_shot_prepare` with its warnings printed."""

    def warn(class_name: str, message: str) -> None:
        console.print(f"[yellow]warning:[/] {escape(class_name)}: {escape(message)}", soft_wrap=True)

    return references.few_shot_prepare(pools, options, calibrate, on_warning=warn)
