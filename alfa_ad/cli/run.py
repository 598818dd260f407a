"""``alfa-ad run``: score a dataset and write scores, overlays, masks and metrics.

The command checks its options (:func:`check_options`), reads the data and the classes'
reference pools, builds the detector and the engine, then runs once per seed
(:func:`run_seed`) and, for several seeds, writes their summary.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, Optional

import typer

from .._version import __version__
from ..io.datasets import Sample
from ..outputs.record import RunOptions, build_record
from ..outputs.tables import aggregate_seeds, write_seed_summary
from ..outputs.writers import clear_previous, previous_outputs
from ..references import Pool, Shots, ShotsError, calibrates_by_leave_one_out, parse_shots, pool_shortfall
from ..registry import BACKENDS, METHODS
from . import run_options as opt
from .common import app, fail, parse_ints, print_table, say
from .run_options import RunArgs
from .run_support import (build_detector, build_engine, check_device, check_out, discover_data, few_shot_prepare,
                          name_map, reference_pools, run_with_progress, write_html_report)


@app.command()
def run(
    data: Path = opt.DATA,
    out: Path = opt.OUT,
    shots: Optional[str] = opt.SHOTS,
    seed: int = opt.SEED,
    seeds: Optional[str] = opt.SEEDS,
    normals: Optional[Path] = opt.NORMALS,
    coreset: Optional[int] = opt.CORESET,
    calibrate: Optional[Path] = opt.CALIBRATE,
    fpr: float = opt.FPR,
    classes: Optional[str] = opt.CLASSES,
    class_name: Optional[str] = opt.CLASS_NAME,
    prompt_class: Optional[str] = opt.PROMPT_CLASS,
    method: str = opt.METHOD,
    aligner: str = opt.ALIGNER,
    prompts: Optional[Path] = opt.PROMPTS,
    llm: bool = opt.LLM,
    contextual: Optional[str] = opt.CONTEXTUAL,
    preset: Optional[str] = opt.PRESET,
    few_shot_scorer: str = opt.FEW_SHOT_SCORER,
    fusion: str = opt.FUSION,
    learned: Optional[Path] = opt.LEARNED,
    text: bool = opt.TEXT,
    explain: int = opt.EXPLAIN,
    model: Optional[str] = opt.MODEL,
    pretrained: str = opt.PRETRAINED,
    checkpoint: Optional[Path] = opt.CHECKPOINT,
    weights: str = opt.WEIGHTS,
    device: Optional[str] = opt.DEVICE,
    scales: Optional[str] = opt.SCALES,
    window_strides: Optional[str] = opt.WINDOW_STRIDES,
    tile: str = opt.TILE,
    anomalib_compat: bool = opt.ANOMALIB_COMPAT,
    batch_size: str = opt.BATCH_SIZE,
    cache_dir: Optional[Path] = opt.CACHE_DIR,
    overlays: bool = opt.OVERLAYS,
    resume: bool = opt.RESUME,
    workers: Optional[int] = opt.WORKERS,
    engine: str = opt.ENGINE,
    gpus_per_worker: Optional[float] = opt.GPUS_PER_WORKER,
    ray_address: Optional[str] = opt.RAY_ADDRESS,
    overlay_scale: str = opt.OVERLAY_SCALE,
    vlm_explain: int = opt.VLM_EXPLAIN,
    vlm_model: Optional[str] = opt.VLM_MODEL,
    vlm_base_url: Optional[str] = opt.VLM_BASE_URL,
    vlm_fuse: Optional[float] = opt.VLM_FUSE,
    rules: Optional[Path] = opt.RULES,
    backend: str = opt.BACKEND,
    exported: Optional[Path] = opt.EXPORTED,
    precision: str = opt.PRECISION,
    refine: bool = opt.REFINE,
    refine_layers: Optional[str] = opt.REFINE_LAYERS,
) -> None:
    """Score every test image under --data; write scores, overlays, masks and metrics to --out."""
    execute(RunArgs(**locals()))  # first statement: locals() is exactly the parameters


class RunData(NamedTuple):
    """The images to score per class, and how the classes are named in prompts."""

    dataset: dict[str, list[Sample]]
    warnings: list[str]
    names: dict[str, str]  # class folder -> object name in the prompts (--class-name)
    libs: dict[str, str]  # class -> prompt-library class (--prompt-class)
    plain: bool  # a plain folder of images (or one image), not a dataset layout


def execute(a: RunArgs) -> None:
    """The run ``a`` asks for: checks first, then data, references, detector, one run per seed."""
    shots, seed_list = check_options(a)
    check_out(a.out)
    check_device(a.device)
    engine = build_engine(a.engine, a.workers, a.gpus_per_worker, a.ray_address)
    data = read_data(a)
    pools = prepare_pools(a, shots, data) if shots != 0 else {}
    detector = make_detector(a, shots, data)
    prepare_out(a)
    with engine:  # a Ray instance it starts serves every seed, and is shut down here
        reports = [run_seed(a, shots, s, seed_list, detector, data, pools, engine) for s in seed_list]
    if getattr(engine, "startup_seconds", None) is not None:
        say(f"{engine.name}: started in {engine.startup_seconds:.1f} s")
    if not any(r.rows for r in reports):
        raise typer.Exit(1)
    if len(seed_list) > 1:
        summarise_seeds(a.out, reports, seed_list, detector.weights_label)


def check_options(a: RunArgs) -> tuple[Shots, tuple[int, ...]]:
    """``(shots, seeds)`` once every option that needs no data or model is checked; one-line errors."""
    try:
        shots = parse_shots(a.shots if a.shots is not None else ("all" if a.normals is not None else 0))
    except ShotsError as exc:
        fail(str(exc))
    seed_list = tuple(dict.fromkeys(parse_ints(a.seeds, "--seeds", minimum=0))) if a.seeds else (a.seed,)
    if a.normals is not None and shots == 0:
        fail("--normals gives references for few-shot, but --shots is 0; drop --shots or give --shots k|all")
    for folder, option in ((a.normals, "--normals"), (a.calibrate, "--calibrate"), (a.exported, "--exported")):
        if folder is not None and not folder.is_dir():
            fail(f"{folder}: {option} folder not found")
    if not 0 < a.fpr < 1:
        fail(f"--fpr must be between 0 and 1, got {a.fpr}")
    if a.coreset is not None and a.coreset < 1:
        fail("--coreset must be at least 1")
    if a.explain < 0:
        fail("--explain must be 0 or more")
    if not a.text and shots == 0:
        fail("--no-text needs normal references (--shots k or all, or --normals)")
    if a.method in METHODS:  # the registry line's traits: no import of the method (no torch yet)
        if shots == 0 and METHODS.declares(a.method, "needs_normals"):
            fail(f"--method {a.method} needs normal references (--shots k or all, or --normals)")
        if shots != 0 and METHODS.declares(a.method, "zero_shot_only"):
            fail(f"--method {a.method} takes no normal references (it is zero-shot); use --shots 0")
        if METHODS.declares(a.method, "mutual") and a.calibrate is not None:
            fail(f"--method {a.method} scores images against each other: --calibrate thresholds would not carry over")
        if METHODS.declares(a.method, "mutual") and a.engine != "local":
            fail(f"--method {a.method} keeps a class's images together: use --engine local")
    if a.seeds and shots == 0:
        fail("--seeds draws different references per seed; zero-shot has none to draw (use --shots k)")
    if a.backend not in BACKENDS:
        fail(f"--backend must be one of {', '.join(BACKENDS.names())}, got {a.backend!r}")
    if a.backend != "torch" and shots != 0 and not METHODS.declares(a.method, "bank_input"):
        fail(f"--backend {a.backend} runs the exported zero-shot model of --method {a.method}; few-shot "
             "(--shots/--normals) needs --backend torch (patchknn exports with its memory bank as an input)")
    check_output_options(a, seed_list)
    return shots, seed_list


def check_output_options(a: RunArgs, seed_list: tuple[int, ...]) -> None:
    """The options of what a run writes: VLM verdicts, overlays, resuming; one-line errors."""
    if a.vlm_explain < 0 or (a.vlm_explain and not a.vlm_model):
        fail("--vlm-explain N needs N >= 0 and --vlm-model NAME")
    if a.vlm_fuse is not None and not (a.vlm_explain and 0.0 <= a.vlm_fuse <= 1.0):
        fail("--vlm-fuse W needs --vlm-explain and W in [0, 1]")
    if a.rules is not None and not a.rules.is_file():
        fail(f"{a.rules}: --rules file not found")
    if a.overlay_scale not in ("class", "image"):
        fail(f"--overlay-scale must be class or image, got {a.overlay_scale!r}")
    if a.resume and len(seed_list) > 1:
        fail("--resume continues one run; with --seeds, resume each seed_<s> folder with --seed s")


def read_data(a: RunArgs) -> RunData:
    """``--data`` and ``--classes``, with ``--class-name`` and ``--prompt-class`` mapped per class."""
    dataset, warnings, plain = discover_data(a.data, a.classes)
    names = name_map(a.class_name, list(dataset), "--class-name")
    libs = name_map(a.prompt_class, list(dataset), "--prompt-class")
    if plain and names:  # a plain folder's one class takes the given name everywhere
        dataset = {names[c]: [replace(s, class_name=names[c]) for s in v] for c, v in dataset.items()}
        libs = {names.get(c, c): v for c, v in libs.items()}
        names = {}
    return RunData(dataset, warnings, names, libs, plain)


def prepare_pools(a: RunArgs, shots: Shots, data: RunData) -> dict[str, Pool]:
    """Each class's reference pool, checked against ``shots`` before the model loads: a class
    with too few is skipped with a warning; every class with too few is a one-line error."""
    pools = reference_pools(a.data, a.normals, list(data.dataset), data.plain)
    short = {c: message for c, pool in pools.items() if (message := pool_shortfall(c, pool, shots))}
    if short and len(short) == len(pools):
        fail("; ".join(short.values()))
    for cls, message in short.items():
        data.warnings.append(f"{message}; the class is skipped")
        data.dataset.pop(cls)
    return pools


def make_detector(a: RunArgs, shots: Shots, data: RunData):
    """The detector (model loaded) on the chosen backend, with the classes' prompt names set."""
    detector = build_detector(a.method, a.model, a.pretrained, a.checkpoint, a.weights, a.seed, a.device, a.scales,
                              a.cache_dir, a.batch_size, a.prompts, a.llm, a.anomalib_compat, a.text, a.tile,
                              a.aligner, a.few_shot_scorer, a.fusion, a.learned, a.contextual, a.preset,
                              refine=a.refine, refine_layers=a.refine_layers, window_strides=a.window_strides)
    for cls, lib in data.libs.items():
        detector.set_prompt_class(data.names.get(cls, cls), lib)
    if a.backend != "torch" and a.exported is None:
        say(f"--backend {a.backend}: the {a.precision} export in the cache (written on first use: minutes on a CPU)")
    try:
        detector.use_backend(a.backend, a.exported, a.precision)
    except ValueError as exc:
        fail(str(exc))
    from ..registry import trait

    parts = [] if trait(detector.method, "patches_only") else [f"{a.aligner} aligner"]
    if shots != 0:
        parts.append(f"{a.few_shot_scorer} scorer, {a.fusion} fusion")
    if trait(detector.method, "mutual"):
        parts.append(f"the images of a class scored together in groups of at most {detector.images_per_call}")
    note = f" ({', '.join(parts)})" if parts else ""
    say(f"alfa-ad {__version__}: {a.method}{note}, {shots}-shot on {detector.backbone.device}, {detector.weights_label}")
    return detector


def prepare_out(a: RunArgs) -> None:
    """``--out`` ready: a checkpoint to resume from (``--resume``), or an earlier run's outputs removed."""
    if a.resume:
        if not (a.out / ".resume" / "state.json").is_file():
            fail(f"{a.out}: nothing to resume (no checkpoint of an interrupted run there); run without --resume")
        say(f"resuming the run in {a.out}")
    elif previous_outputs(a.out):
        say(f"{a.out} holds an earlier run's outputs: they are replaced")
        clear_previous(a.out)


def run_options(a: RunArgs, shots: Shots, seed: int, seed_list: tuple[int, ...], data: RunData,
                engine_name: str) -> RunOptions:
    """What the run with ``seed`` records beyond the detector."""
    options = RunOptions(data=str(a.data), shots=str(shots), seed=seed, normals=str(a.normals) if a.normals else None,
                         coreset=a.coreset if shots != 0 else None, explain=a.explain, class_names=data.names,
                         prompt_classes=data.libs, seeds=list(seed_list) if len(seed_list) > 1 else None,
                         engine=engine_name)
    if a.calibrate is not None:
        options.calibrate, options.fpr = str(a.calibrate), a.fpr
    elif calibrates_by_leave_one_out(shots) and not a.refine:  # refined maps: calibration images only
        options.calibrate, options.fpr = "leave-one-out", a.fpr
    return options


def run_seed(a: RunArgs, shots: Shots, seed: int, seed_list: tuple[int, ...], detector, data: RunData,
             pools: dict[str, Pool], engine):
    """One run (references drawn with ``seed``) into ``--out``, or ``--out/seed_<seed>`` with ``--seeds``."""
    options = run_options(a, shots, seed, seed_list, data, engine.name)
    prompt_counts = {c: detector.prompts(data.names.get(c, c)).sources for c in data.dataset}
    record = build_record(detector, options, list(data.dataset), prompt_counts)
    record["backend"] = detector.backend.describe() if detector.backend else {"backend": "torch"}
    prepare = few_shot_prepare(pools, options, a.calibrate) if (shots != 0 or a.calibrate is not None) else None
    target = a.out if len(seed_list) == 1 else a.out / f"seed_{seed}"
    if len(seed_list) > 1:
        say(f"--- seed {seed} -> {target}")
    detector.clear_normals()
    vlm = dict(n=a.vlm_explain, model=a.vlm_model, base_url=a.vlm_base_url, fuse=a.vlm_fuse,
               rules=a.rules) if a.vlm_explain else None
    return run_with_progress(detector, data.dataset, target, record, options, overlays=a.overlays, prepare=prepare,
                             warnings=list(data.warnings), resume=a.resume, workers=a.workers,
                             overlay_scale=a.overlay_scale, engine=engine, vlm=vlm)


def summarise_seeds(out: Path, reports: list, seed_list: tuple[int, ...], weights_label: str) -> None:
    """``metrics_seeds.{json,csv,md}``: mean ± std over the seeds' runs, printed and in the report."""
    rows = write_seed_summary(out, {**reports[0].config, "seed": None}, seed_list,
                              aggregate_seeds([r.metrics for r in reports]))
    print_table(rows, f"mean ± std over seeds {','.join(map(str, seed_list))} - {weights_label}")
    say(f"seed summary in {out}/metrics_seeds.{{json,csv,md}}")
    write_html_report(out)
