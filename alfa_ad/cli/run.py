"""``alfa-ad run``: score a dataset and write scores, overlays, masks and metrics."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from .._version import __version__
from ..model.names import DEFAULT_MODEL, DEFAULT_PRETRAINED
from ..outputs.record import RunOptions, build_record
from ..outputs.tables import aggregate_seeds, write_seed_summary
from ..outputs.writers import clear_previous, previous_outputs
from ..registry import ALIGNERS, BACKENDS, DEFAULT_ALIGNER, DEFAULT_FEW_SHOT_SCORER, ENGINES, FEW_SHOT_SCORERS
from .common import _parse_ints, _print_table, WEIGHTS_HELP, app, fail, say
from .run_support import (build_detector, build_engine, check_device, check_out, discover_data, few_shot_prepare,
                          name_map, reference_pools, run_with_progress, write_html_report)

# kept for callers of the earlier module layout
_detector = build_detector


@app.command()
def run(
    data: Path = typer.Option(..., "--data", help="MVTec-layout root, VisA root, one class folder, a folder of "
                              "images, or one image file."),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="Output folder (an earlier run's outputs in it are "
                             "replaced)."),
    shots: Optional[str] = typer.Option(None, "--shots", help="Normal reference images per class: 0 (zero-shot), k, or "
                                        "all (default: all when --normals is given, else 0)."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling references (and random weights)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma list of seeds for few-shot: one run each, mean ± std."),
    normals: Optional[Path] = typer.Option(None, "--normals", help="Folder of normal references (or DIR/<class>); "
                                           "implies few-shot."),
    coreset: Optional[int] = typer.Option(4096, "--coreset", help="Most memory-bank features per layer (greedy k-center)."),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="Folder of extra normal images for thresholds."),
    fpr: float = typer.Option(0.01, "--fpr", help="Target false-positive rate of the thresholds."),
    classes: Optional[str] = typer.Option(None, "--classes", help="mvtec, visa, or a comma list of classes."),
    class_name: Optional[str] = typer.Option(None, "--class-name", help="Object name in the prompts (default: the "
                                             "folder name, or 'object'); NAME, or folder=name,folder2=name2."),
    prompt_class: Optional[str] = typer.Option(None, "--prompt-class", help="Prompt-library class to use for the "
                                               "data (e.g. hazelnut for a folder hazelnut_toy); NAME or folder=name."),
    method: str = typer.Option("alfa", "--method", help="alfa or winclip."),
    aligner: str = typer.Option(DEFAULT_ALIGNER, "--aligner", help="Local embeddings (docs/method.md section 4): "
                                + ALIGNERS.help() + "."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt library JSON (default: the shipped ones)."),
    llm: bool = typer.Option(False, "--llm/--no-llm", help="ALFA: add the shipped LLM-generated prompts to the "
                             "template prompts (off by default, docs/mini_clip.md; --prompts FILE implies it)."),
    contextual: Optional[str] = typer.Option(None, "--contextual", help="ALFA: where eq. 4's per-image prompt "
                                             "selection applies: off (default), global (image-level score only), "
                                             "all (image score and every window, the paper's reading), soft "
                                             "(image score, prompts weighted by S_c)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A named configuration: paper (ALFA as the paper "
                                         "writes it: eq. 4 everywhere, scales 2,3, rank-1 text projection, LLM "
                                         "prompts, sigma 4); it sets those options, recorded in every output."),
    few_shot_scorer: str = typer.Option(DEFAULT_FEW_SHOT_SCORER, "--few-shot-scorer", help="How queries meet the "
                                        "references (docs/method.md section 7): " + FEW_SHOT_SCORERS.help() + "."),
    fusion: str = typer.Option("raw", "--fusion", help="Few-shot fusion of the zero-shot and few-shot parts: raw "
                               "(plain mean, as alfa-ad 0.1) or normalized (each part weighted by 1 / its leave-one-out "
                               "spread over the references; raw with one reference)."),
    learned: Optional[Path] = typer.Option(None, "--learned", help="Learned prompt embeddings (alfa-ad learn-prompts) "
                                           "or a plain normal/abnormal embedding file: one more prompt source."),
    text: bool = typer.Option(True, "--text/--no-text", help="ALFA few-shot: --no-text scores with the memory bank alone."),
    explain: int = typer.Option(0, "--explain", help="Write the top-N LLM descriptions per image."),
    model: Optional[str] = typer.Option(None, "--model", help=f"open_clip model name (default {DEFAULT_MODEL}, or the "
                                        "one a --checkpoint's manifest names)."),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, "--pretrained", help="open_clip pretrained tag."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Local weights file (safetensors or torch)."),
    weights: str = typer.Option("pretrained", "--weights", help=WEIGHTS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)."),
    scales: Optional[str] = typer.Option(None, "--scales", help="Window sizes in patches (default: ALFA 2,3,4; "
                                         "WinCLIP 2,3)."),
    tile: str = typer.Option("auto", "--tile", help="auto, none or a tile side in pixels: score large or elongated "
                             "images in overlapping square tiles (auto: when squashing would distort by > 2:1 or "
                             "shrink by > 4.5x; docs/method.md)."),
    anomalib_compat: bool = typer.Option(False, "--anomalib-compat", help="WinCLIP exactly as anomalib 2.x computes it."),
    batch_size: str = typer.Option("8", "--batch-size", help="Images (or tiles) per model batch, or auto: the "
                                   "largest that fits the device's free memory, probed once (CUDA; 8 on the CPU)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Disk cache (default $ALFA_AD_CACHE or ./cache)."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write heat-map overlays."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out: images already "
                                "scored are skipped, metrics come out as if it had not stopped."),
    workers: Optional[int] = typer.Option(None, "--workers", help="local engine: threads decoding images ahead of "
                                          "the model (default: min(4, CPUs)); ray engine: scoring actors (default: "
                                          "one per GPU share, else CPUs - 1)."),
    engine: str = typer.Option("local", "--engine", help=f"Where images are decoded and scored: {ENGINES.help()}."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", help="ray engine: GPUs per scoring "
                                                    "actor (e.g. 1, or 0.5 for two actors per GPU; default 0: CPU)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="ray engine: a cluster to join (auto, "
                                              "ray://head:10001); default: start a local Ray instance."),
    overlay_scale: str = typer.Option("class", "--overlay-scale",
                                      help="class: one colour scale per class; image: each map's own range."),
    vlm_explain: int = typer.Option(0, "--vlm-explain", help="Ask a vision-language model for a verdict on the N "
                                    "highest-scoring images (OpenAI protocol; see alfa-ad explain)."),
    vlm_model: Optional[str] = typer.Option(None, "--vlm-model", help="Vision model name for --vlm-explain."),
    vlm_base_url: Optional[str] = typer.Option(None, "--vlm-base-url", help="Its endpoint (default $OPENAI_BASE_URL)."),
    vlm_fuse: Optional[float] = typer.Option(None, "--vlm-fuse", help="Weight w in [0, 1]: scores.json's score of an "
                                             "explained image becomes (1-w) score + w p_VLM (docs/method.md 1c)."),
    rules: Optional[Path] = typer.Option(None, "--rules", help="Normality rules (text or YAML) for --vlm-explain."),
    backend: str = typer.Option("torch", "--backend", help="What runs the model: " + BACKENDS.help() + "."),
    exported: Optional[Path] = typer.Option(None, "--exported", help="Export folder (alfa-ad export) for --backend "
                                            "onnxruntime/openvino (default: exported into the cache on first use)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or int8, for the export made on first use."),
) -> None:
    """Score every test image under --data; write scores, overlays, masks and metrics to --out."""
    if shots is None:
        shots = "all" if normals is not None else "0"
    if shots != "all" and not shots.isdigit():
        fail(f"--shots must be a number or 'all', got {shots!r}")
    shots = shots if shots == "all" else str(int(shots))  # "00" -> "0"
    if normals is not None and shots == "0":
        fail("--normals gives references for few-shot, but --shots is 0; drop --shots or give --shots k|all")
    if normals is not None and not normals.is_dir():
        fail(f"{normals}: --normals folder not found")
    if calibrate is not None and not calibrate.is_dir():
        fail(f"{calibrate}: --calibrate folder not found")
    if not 0 < fpr < 1:
        fail(f"--fpr must be between 0 and 1, got {fpr}")
    if coreset is not None and coreset < 1:
        fail("--coreset must be at least 1")
    if explain < 0:
        fail("--explain must be 0 or more")
    if not text and shots == "0":
        fail("--no-text needs normal references (--shots k or all, or --normals)")
    if seeds and shots == "0":
        fail("--seeds draws different references per seed; zero-shot has none to draw (use --shots k)")
    check_out(out)
    check_device(device)
    run_engine = build_engine(engine, workers, gpus_per_worker, ray_address)
    dataset, warnings, plain = discover_data(data, classes)
    names = name_map(class_name, list(dataset), "--class-name")
    libs = name_map(prompt_class, list(dataset), "--prompt-class")
    if plain and names:  # a plain folder's one class takes the given name everywhere
        dataset = {names[c]: [replace(s, class_name=names[c]) for s in v] for c, v in dataset.items()}
        libs = {names.get(c, c): v for c, v in libs.items()}
        names = {}
    seed_list = tuple(dict.fromkeys(_parse_ints(seeds, "--seeds", minimum=0))) if seeds else (seed,)
    pools = {}
    if shots != "0":
        pools = reference_pools(data, normals, list(dataset), plain)
        need = None if shots == "all" else int(shots)
        short = {c: (len(p), where) for c, (p, where) in pools.items() if len(p) < (need or 1)}
        if short and len(short) == len(pools):
            fail("; ".join(f"class {c!r} has {n} normal images ({where})" for c, (n, where) in short.items())
                 + f" but --shots {shots} asks for {need or 'at least one'}")
        for c, (n, where) in short.items():
            warnings.append(f"class {c!r} skipped: {n} normal images ({where}), --shots {shots}")
            dataset.pop(c)
    detector = build_detector(method, model, pretrained, checkpoint, weights, seed, device, scales, cache_dir,
                              batch_size, prompts, llm, anomalib_compat, text, tile, aligner,
                              few_shot_scorer, fusion, learned, contextual, preset)
    for cls, lib in libs.items():
        detector.set_prompt_class(names.get(cls, cls), lib)
    if backend not in BACKENDS:
        fail(f"--backend must be one of {', '.join(BACKENDS.names())}, got {backend!r}")
    if exported is not None and not exported.is_dir():
        fail(f"{exported}: --exported folder not found")
    if backend != "torch" and shots != "0":
        fail(f"--backend {backend} runs the exported zero-shot model; few-shot (--shots/--normals) needs --backend torch")
    if backend != "torch" and exported is None:
        say(f"--backend {backend}: the {precision} export in the cache (written on first use: minutes on a CPU)")
    try:
        detector.use_backend(backend, exported, precision)
    except ValueError as exc:
        fail(str(exc))
    scorer_note = f", {few_shot_scorer} scorer, {fusion} fusion" if shots != "0" else ""
    say(f"alfa-ad {__version__}: {method} ({aligner} aligner{scorer_note}), {shots}-shot on {detector.backbone.device}, {detector.weights_label}")
    if workers is not None and workers < 1:
        fail("--workers must be at least 1")
    if vlm_explain < 0 or (vlm_explain and not vlm_model):
        fail("--vlm-explain N needs N >= 0 and --vlm-model NAME")
    if vlm_fuse is not None and not (vlm_explain and 0.0 <= vlm_fuse <= 1.0):
        fail("--vlm-fuse W needs --vlm-explain and W in [0, 1]")
    if rules is not None and not rules.is_file():
        fail(f"{rules}: --rules file not found")
    if overlay_scale not in ("class", "image"):
        fail(f"--overlay-scale must be class or image, got {overlay_scale!r}")
    if resume and len(seed_list) > 1:
        fail("--resume continues one run; with --seeds, resume each seed_<s> folder with --seed s")
    if resume:
        if not (out / ".resume" / "state.json").is_file():
            fail(f"{out}: nothing to resume (no checkpoint of an interrupted run there); run without --resume")
        say(f"resuming the run in {out}")
    elif previous_outputs(out):
        say(f"{out} holds an earlier run's outputs: they are replaced")
        clear_previous(out)
    reports = []
    with run_engine:  # a Ray instance it starts serves every seed, and is shut down here
        for s in seed_list:
            options = RunOptions(data=str(data), shots=shots, seed=s, normals=str(normals) if normals else None,
                                 coreset=coreset if shots != "0" else None, explain=explain, class_names=names,
                                 prompt_classes=libs, seeds=list(seed_list) if len(seed_list) > 1 else None,
                                 engine=run_engine.name)
            if calibrate is not None:
                options.calibrate, options.fpr = str(calibrate), fpr
            elif shots == "all" or int(shots) >= 2:
                options.calibrate, options.fpr = "leave-one-out", fpr
            prompt_counts = {c: detector.prompts(names.get(c, c)).sources for c in dataset}
            record = build_record(detector, options, list(dataset), prompt_counts)
            record["backend"] = detector.backend.describe() if detector.backend else {"backend": "torch"}
            prepare = few_shot_prepare(pools, options, calibrate) if (shots != "0" or calibrate is not None) else None
            target = out if len(seed_list) == 1 else out / f"seed_{s}"
            if len(seed_list) > 1:
                say(f"--- seed {s} -> {target}")
            detector.clear_normals()
            reports.append(run_with_progress(detector, dataset, target, record, options, overlays=overlays,
                                             prepare=prepare, warnings=list(warnings), resume=resume, workers=workers,
                                             overlay_scale=overlay_scale, engine=run_engine,
                                             vlm=dict(n=vlm_explain, model=vlm_model, base_url=vlm_base_url,
                                                      fuse=vlm_fuse, rules=rules) if vlm_explain else None))
    if getattr(run_engine, "startup_seconds", None) is not None:
        say(f"{run_engine.name}: started in {run_engine.startup_seconds:.1f} s")
    if not any(r.rows for r in reports):
        raise typer.Exit(1)
    if len(seed_list) > 1:
        rows = write_seed_summary(out, {**reports[0].config, "seed": None}, seed_list,
                                  aggregate_seeds([r.metrics for r in reports]))
        _print_table(rows, f"mean ± std over seeds {','.join(map(str, seed_list))} - {detector.weights_label}")
        say(f"seed summary in {out}/metrics_seeds.{{json,csv,md}}")
        write_html_report(out)
