"""Writing the exported graph: ONNX (``torch.onnx.export``, TorchScript exporter, opset
18), optionally quantized to int8 by ONNX Runtime, and OpenVINO IR converted from it."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..registry import trait
from .graphs import GRAPHS, check_exportable, export_spec, identity
from .manifest import MANIFEST, Manifest, load_manifest

EXPORT_FORMATS = ("onnx", "openvino")
PRECISIONS = ("fp32", "int8")
OPSET = 18


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from .._version import __version__

    out = {"alfa-ad": __version__, "torch": torch.__version__}
    for pkg in ("onnx", "onnxruntime", "openvino", "open_clip_torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"{module} is not installed; pip install 'alfa-ad[{extra}]'") from None


def write_onnx(detector, path: Path, opset: int = OPSET) -> None:
    """The fp32 graph of the detector's method (:mod:`.graphs`), batch and the prompt or
    bank sizes dynamic."""
    _require("onnx", "export")
    spec = export_spec(detector)
    graph = spec.module
    if detector.backbone.device.type != "cpu" or detector.backbone.dtype != torch.float32:
        graph = copy.deepcopy(graph).float().cpu()  # alfa: the head holds the model (patchknn refuses earlier)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python scalars (sizes fixed by the model)
        # nn.MultiheadAttention's fused fast path (aten::_native_multi_head_attention) has no ONNX
        # symbolic; the plain path computes the same
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            names = GRAPHS[detector.config.method]
            torch.onnx.export(graph, spec.example, str(path), dynamo=False, opset_version=opset,
                              input_names=list(names.inputs), output_names=list(names.outputs),
                              dynamic_axes=spec.dynamic_axes)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)


def encoder_linear_nodes(path: Path) -> list[str]:
    """MatMul/Gemm nodes of the transformer blocks (attention projections and MLPs; the
    attention products q k^T and a v have no constant weight and are left out by the
    quantizer).  The scoring head stays fp32: its harmonic means and the contextual
    interval test of eq. (4) amplify int8 rounding (measured: up to 0.17 on the score)."""
    onnx = _require("onnx", "export")
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node  # open_clip's resblocks, timm's blocks
            if n.op_type in ("MatMul", "Gemm") and ("/resblocks." in n.name or "/blocks." in n.name)]


def quantize_int8(src: Path, dst: Path) -> dict:
    """ONNX Runtime dynamic quantization of the image encoder's linear layers: int8 weights
    (per channel), activations quantized at run time (no calibration data needed)."""
    quantization = _require("onnxruntime.quantization", "onnx")
    nodes = encoder_linear_nodes(src)
    quantization.quantize_dynamic(str(src), str(dst), weight_type=quantization.QuantType.QInt8, per_channel=True,
                                  op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=nodes)
    return {"method": "onnxruntime dynamic", "weights": "int8 per channel",
            "nodes": "transformer blocks' MatMul/Gemm with constant weights (scoring head fp32)",
            "activations": "uint8, dynamic per tensor"}


def write_openvino(onnx_path: Path, xml: Path) -> None:
    ov = _require("openvino", "openvino")
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml), compress_to_fp16=False)  # keep fp32 weights


def save_texts(detector, classes: Sequence[str], folder: Path) -> dict[str, dict]:
    """The classes' unit prompt embeddings (``texts.npz``) and their prompts for the manifest
    (a method that reads no prompt stores neither: its graph takes none)."""
    arrays, facts = {}, {}
    if trait(detector.method, "text_free"):
        return facts
    for i, name in enumerate(classes):
        normal, abnormal = detector.class_text(name)
        arrays[f"{i}_normal"] = normal.float().cpu().numpy()
        arrays[f"{i}_abnormal"] = abnormal.float().cpu().numpy()
        ps = detector.prompts(name)
        facts[name] = {"index": i, "normal": list(ps.normal), "abnormal": list(ps.abnormal),
                       "sources": ps.sources}
    if arrays:
        np.savez(folder / "texts.npz", **arrays)
    return facts


def export_detector(detector, out: Path, fmt: str = "onnx", precision: str = "fp32",
                    classes: Sequence[str] = (), opset: int = OPSET, traced: Path | None = None) -> Manifest:
    """Write ``detector``'s per-image model to ``out`` (a folder) with ``manifest.json``.

    ``traced``: an fp32 ONNX file of this detector already written by :func:`write_onnx`
    with ``opset`` (several formats and precisions from one trace)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    check_exportable(detector)
    if fmt == "openvino":
        _require("openvino", "openvino")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a half-written folder never looks complete
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        if traced is not None:
            shutil.copyfile(traced, onnx_path)
        else:
            write_onnx(detector, onnx_path, opset)
        quant = None
        if precision == "int8":
            quant = quantize_int8(onnx_path, Path(tmp) / "model.int8.onnx")
            onnx_path = Path(tmp) / "model.int8.onnx"
        if fmt == "onnx":
            file = "model.int8.onnx" if precision == "int8" else "model.onnx"
            shutil.move(onnx_path, out / file)
        else:
            file = "model.int8.xml" if precision == "int8" else "model.xml"
            write_openvino(onnx_path, out / file)
    entry = GRAPHS[detector.config.method]
    manifest = Manifest(format=fmt, precision=precision, file=file, identity=identity(detector), opset=opset,
                        versions=versions(), quantization=quant, classes=save_texts(detector, classes, out),
                        inputs=entry.inputs, outputs=entry.outputs, weights_label=detector.weights_label)
    manifest.write(out)
    return manifest


def cache_key(detector, fmt: str, precision: str, opset: int = OPSET) -> str:
    text = json.dumps([identity(detector), fmt, precision, opset, versions()], sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def cached_export(detector, cache_dir: Path, fmt: str, precision: str = "fp32") -> Path:
    """The export folder for ``detector`` under ``cache_dir/exports``, written on first use."""
    folder = Path(cache_dir) / "exports" / f"{fmt}-{precision}-{cache_key(detector, fmt, precision)}"
    try:
        load_manifest(folder)
        return folder
    except ValueError:
        export_detector(detector, folder, fmt, precision)
        return folder
