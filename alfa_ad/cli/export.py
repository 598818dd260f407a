"""``alfa-ad export``: write the per-image model as ONNX or OpenVINO IR with a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..model.names import DEFAULT_MODEL, DEFAULT_PRETRAINED
from ..registry import ALIGNERS, DEFAULT_ALIGNER
from .common import WEIGHTS_HELP, app, fail, say
from .run_support import build_detector


@app.command()
def export(
    out: Path = typer.Option(..., "--out", help="Folder to write the model file, manifest.json and texts.npz to."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (ONNX Runtime) or openvino (OpenVINO IR)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, or int8 (dynamic quantization of every "
                                  "MatMul/Gemm weight; agreement in docs/scaling.md)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma list of class names whose prompt "
                                          "embeddings are stored beside the model (texts.npz)."),
    method: str = typer.Option("alfa", "--method", help="alfa (zero-shot: prompt embeddings are inputs) or "
                               "patchknn (few-shot: the memory bank is an input)."),
    aligner: str = typer.Option(DEFAULT_ALIGNER, "--aligner", help=ALIGNERS.help() + "."),
    model: Optional[str] = typer.Option(None, "--model", help=f"open_clip model name (default {DEFAULT_MODEL})."),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, "--pretrained", help="open_clip pretrained tag."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Local weights file (safetensors or torch)."),
    weights: str = typer.Option("pretrained", "--weights", help=WEIGHTS_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of random weights."),
    scales: Optional[str] = typer.Option(None, "--scales", help="Window sizes in patches (default 2,3,4,5)."),
    window_strides: Optional[str] = typer.Option(None, "--window-strides", help="Windows every so many patches, one "
                                                 "per scale or one for all (default 1,2,3,3; 1 with --scales)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt library JSON (default: the shipped ones)."),
    llm: bool = typer.Option(False, "--llm/--no-llm", help="Add the LLM-generated prompts for --classes (--prompts implies it)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Disk cache (default $ALFA_AD_CACHE or ./cache)."),
    check_data: Optional[Path] = typer.Option(None, "--check-data", help="Folder of images (a class's normal images, "
                                              "say) to compare the export with the torch model on; default: "
                                              "generated demo images."),
    check_images: int = typer.Option(8, "--check-images", help="How many images to compare on (0: no check)."),
) -> None:
    """Export a method's per-image model: ALFA's image encoder + scoring head (prompt embeddings are
    inputs), or patchknn's image encoder + nearest-bank-patch scoring (the memory bank is an input)."""
    from ..export import EXPORT_FORMATS, PRECISIONS, export_detector
    from ..export.graphs import GRAPHS

    if fmt not in EXPORT_FORMATS:
        fail(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if precision not in PRECISIONS:
        fail(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if out.exists() and not out.is_dir():
        fail(f"{out}: --out must be a folder, and a file has that name")
    if check_images < 0:
        fail("--check-images must be 0 or more")
    if method not in GRAPHS:
        fail(f"--method {method} cannot be exported; exportable: {', '.join(GRAPHS)} (musc's images score each "
             "other: there is no per-image graph)")
    if method != "alfa" and (classes or scales or window_strides or prompts or llm):
        fail(f"--method {method} reads no prompt and no window: --classes, --scales, --window-strides, --prompts "
             "and --llm do not apply")
    names = [" ".join(c.split()) for c in classes.split(",") if c.strip()] if classes else []
    detector = build_detector(method, model, pretrained, checkpoint, weights, seed, "cpu", scales, cache_dir, 1,
                              prompts, llm, aligner=aligner, window_strides=window_strides)
    what = f"ALFA ({aligner} aligner" if method == "alfa" else f"{method} (memory bank as input"
    say(f"exporting {what}, {detector.weights_label}) as {fmt} {precision} to {out}")
    try:
        manifest = export_detector(detector, out, fmt, precision, names)
    except ValueError as exc:
        fail(str(exc))
    size = (out / manifest.file).stat().st_size
    say(f"wrote {out / manifest.file} ({size / 2**20:.1f} MB), {out / 'manifest.json'}"
        + (f", prompt embeddings of {', '.join(names)} in {out / 'texts.npz'}" if names else ""))
    if check_images:
        _check(detector, out, manifest, check_data, check_images, names[0] if names else "object")


def _check(detector, out: Path, manifest, data: Optional[Path], count: int, class_name: str) -> None:
    """Compare the export with the torch model and record the agreement in the manifest."""
    from ..backends import create_backend
    from ..backends.agreement import check_images, measure_agreement
    from ..registry import BACKENDS

    backend_name = next(n for n in BACKENDS.names() if getattr(BACKENDS.get(n), "format", None) == manifest.format)
    try:
        images, source = check_images(data, count)
        backend = create_backend(backend_name, detector, out)
        agreement = measure_agreement(detector, backend, images, source, class_name)
    except ValueError as exc:  # unreadable check images included (io.images.InputError)
        fail(f"the export was written but could not be checked: {str(exc).splitlines()[0]}")
    manifest.agreement = agreement.as_dict()
    manifest.write(out)
    say(f"{manifest.precision} {backend_name} vs torch fp32: {agreement.describe()}")
