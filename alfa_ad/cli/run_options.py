"""The options of ``alfa-ad run``: each ``--option`` declared once here (its default and help
text), and :class:`RunArgs`, the values one invocation was given, which the steps of
:mod:`.run` read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from ..model.names import DEFAULT_MODEL, DEFAULT_PRETRAINED
from ..registry import ALIGNERS, BACKENDS, DEFAULT_ALIGNER, DEFAULT_FEW_SHOT_SCORER, ENGINES, FEW_SHOT_SCORERS
from .common import WEIGHTS_HELP

DATA = typer.Option(..., "--data", help="MVTec-layout root, VisA root, one class folder, a folder of "
                    "images, or one image file.")
OUT = typer.Option(Path("runs/latest"), "--out", help="Output folder (an earlier run's outputs in it are "
                   "replaced).")
SHOTS = typer.Option(None, "--shots", help="Normal reference images per class: 0 (zero-shot), k, or "
                     "all (default: all when --normals is given, else 0).")
SEED = typer.Option(0, "--seed", help="Seed for sampling references (and random weights).")
SEEDS = typer.Option(None, "--seeds", help="Comma list of seeds for few-shot: one run each, mean ± std.")
NORMALS = typer.Option(None, "--normals", help="Folder of normal references (or DIR/<class>); "
                       "implies few-shot.")
CORESET = typer.Option(4096, "--coreset", help="Most memory-bank features per layer (greedy k-center).")
CALIBRATE = typer.Option(None, "--calibrate", help="Folder of extra normal images for thresholds.")
FPR = typer.Option(0.01, "--fpr", help="Target false-positive rate of the thresholds.")
CLASSES = typer.Option(None, "--classes", help="mvtec, visa, or a comma list of classes.")
CLASS_NAME = typer.Option(None, "--class-name", help="Object name in the prompts (default: the "
                          "folder name, or 'object'); NAME, or folder=name,folder2=name2.")
PROMPT_CLASS = typer.Option(None, "--prompt-class", help="Prompt-library class to use for the "
                            "data (e.g. hazelnut for a folder hazelnut_toy); NAME or folder=name.")
METHOD = typer.Option("alfa", "--method", help="alfa or winclip.")
ALIGNER = typer.Option(DEFAULT_ALIGNER, "--aligner", help="Local embeddings (docs/method.md section 4): "
                       + ALIGNERS.help() + ".")
PROMPTS = typer.Option(None, "--prompts", help="Prompt library JSON (default: the shipped ones).")
LLM = typer.Option(False, "--llm/--no-llm", help="ALFA: add the shipped LLM-generated prompts to the "
                   "template prompts (off by default, docs/mini_clip.md; --prompts FILE implies it).")
CONTEXTUAL = typer.Option(None, "--contextual", help="ALFA: where eq. 4's per-image prompt "
                          "selection applies: off (default), global (image-level score only), "
                          "all (image score and every window, the paper's reading), soft "
                          "(image score, prompts weighted by S_c).")
PRESET = typer.Option(None, "--preset", help="A named configuration: paper (ALFA as the paper "
                      "writes it: eq. 4 everywhere, scales 2,3, rank-1 text projection, LLM "
                      "prompts, sigma 4); it sets those options, recorded in every output.")
FEW_SHOT_SCORER = typer.Option(DEFAULT_FEW_SHOT_SCORER, "--few-shot-scorer", help="How queries meet the "
                               "references (docs/method.md section 7): " + FEW_SHOT_SCORERS.help() + ".")
FUSION = typer.Option("raw", "--fusion", help="Few-shot fusion of the zero-shot and few-shot parts: raw "
                      "(plain mean, as alfa-ad 0.1) or normalized (each part weighted by 1 / its leave-one-out "
                      "spread over the references; raw with one reference).")
LEARNED = typer.Option(None, "--learned", help="Learned prompt embeddings (alfa-ad learn-prompts) "
                       "or a plain normal/abnormal embedding file: one more prompt source.")
TEXT = typer.Option(True, "--text/--no-text", help="ALFA few-shot: --no-text scores with the memory bank alone.")
EXPLAIN = typer.Option(0, "--explain", help="Write the top-N LLM descriptions per image.")
MODEL = typer.Option(None, "--model", help=f"open_clip model name (default {DEFAULT_MODEL}, or the "
                     "one a --checkpoint's manifest names).")
PRETRAINED = typer.Option(DEFAULT_PRETRAINED, "--pretrained", help="open_clip pretrained tag.")
CHECKPOINT = typer.Option(None, "--checkpoint", help="Local weights file (safetensors or torch).")
WEIGHTS = typer.Option("pretrained", "--weights", help=WEIGHTS_HELP)
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present).")
SCALES = typer.Option(None, "--scales", help="Window sizes in patches (default: ALFA 2,3,4,5; "
                      "WinCLIP 2,3).")
WINDOW_STRIDES = typer.Option(None, "--window-strides", help="Windows every so many patches, one per "
                              "scale or one for all (default: ALFA 1,2,3,3 with its default scales; 1 with "
                              "--scales).")
TILE = typer.Option("auto", "--tile", help="auto, none or a tile side in pixels: score large or elongated "
                    "images in overlapping square tiles (auto: when squashing would distort by > 2:1 or "
                    "shrink by > 4.5x; docs/method.md).")
ANOMALIB_COMPAT = typer.Option(False, "--anomalib-compat", help="WinCLIP exactly as anomalib 2.x computes it.")
BATCH_SIZE = typer.Option("8", "--batch-size", help="Images (or tiles) per model batch, or auto: the "
                          "largest that fits the device's free memory, probed once (CUDA; 8 on the CPU).")
CACHE_DIR = typer.Option(None, "--cache-dir", help="Disk cache (default $ALFA_AD_CACHE or ./cache).")
OVERLAYS = typer.Option(True, "--overlays/--no-overlays", help="Write heat-map overlays.")
RESUME = typer.Option(False, "--resume", help="Continue an interrupted run in --out: images already "
                      "scored are skipped, metrics come out as if it had not stopped.")
WORKERS = typer.Option(None, "--workers", help="local engine: threads decoding images ahead of "
                       "the model (default: min(4, CPUs)); ray engine: scoring actors (default: "
                       "one per GPU share, else CPUs - 1).")
ENGINE = typer.Option("local", "--engine", help=f"Where images are decoded and scored: {ENGINES.help()}.")
GPUS_PER_WORKER = typer.Option(None, "--gpus-per-worker", help="ray engine: GPUs per scoring "
                               "actor (e.g. 1, or 0.5 for two actors per GPU; default 0: CPU).")
RAY_ADDRESS = typer.Option(None, "--ray-address", help="ray engine: a cluster to join (auto, "
                           "ray://head:10001); default: start a local Ray instance.")
OVERLAY_SCALE = typer.Option("class", "--overlay-scale",
                             help="class: one colour scale per class; image: each map's own range.")
VLM_EXPLAIN = typer.Option(0, "--vlm-explain", help="Ask a vision-language model for a verdict on the N "
                           "highest-scoring images (OpenAI protocol; see alfa-ad explain).")
VLM_MODEL = typer.Option(None, "--vlm-model", help="Vision model name for --vlm-explain.")
VLM_BASE_URL = typer.Option(None, "--vlm-base-url", help="Its endpoint (default $OPENAI_BASE_URL).")
VLM_FUSE = typer.Option(None, "--vlm-fuse", help="Weight w in [0, 1]: scores.json's score of an "
                        "explained image becomes (1-w) score + w p_VLM (docs/method.md 1c).")
RULES = typer.Option(None, "--rules", help="Normality rules (text or YAML) for --vlm-explain.")
BACKEND = typer.Option("torch", "--backend", help="What runs the model: " + BACKENDS.help() + ".")
EXPORTED = typer.Option(None, "--exported", help="Export folder (alfa-ad export) for --backend "
                        "onnxruntime/openvino (default: exported into the cache on first use).")
REFINE = typer.Option(False, "--refine/--no-refine", help="Anomaly region refinement (CLIP-ADA): move each "
                      "patch's score towards patches with similar features at several blocks, deepest first.")
REFINE_LAYERS = typer.Option(None, "--refine-layers", help="Blocks --refine reads, deepest first, 0-based "
                             "(default: the last, 3/4 and 1/2 of the depth, e.g. 11,8,5 for 12 blocks).")
PRECISION = typer.Option("fp32", "--precision", help="fp32 or int8, for the export made on first use.")


@dataclass(frozen=True)
class RunArgs:
    """The options of one ``alfa-ad run`` as given (the command's parameters, by name)."""

    data: Path
    out: Path
    shots: Optional[str]
    seed: int
    seeds: Optional[str]
    normals: Optional[Path]
    coreset: Optional[int]
    calibrate: Optional[Path]
    fpr: float
    classes: Optional[str]
    class_name: Optional[str]
    prompt_class: Optional[str]
    method: str
    aligner: str
    prompts: Optional[Path]
    llm: bool
    contextual: Optional[str]
    preset: Optional[str]
    few_shot_scorer: str
    fusion: str
    learned: Optional[Path]
    text: bool
    explain: int
    model: Optional[str]
    pretrained: str
    checkpoint: Optional[Path]
    weights: str
    device: Optional[str]
    scales: Optional[str]
    window_strides: Optional[str]
    tile: str
    anomalib_compat: bool
    batch_size: str
    cache_dir: Optional[Path]
    overlays: bool
    resume: bool
    workers: Optional[int]
    engine: str
    gpus_per_worker: Optional[float]
    ray_address: Optional[str]
    overlay_scale: str
    vlm_explain: int
    vlm_model: Optional[str]
    vlm_base_url: Optional[str]
    vlm_fuse: Optional[float]
    rules: Optional[Path]
    backend: str
    exported: Optional[Path]
    precision: str
    refine: bool = False
    refine_layers: Optional[str] = None
