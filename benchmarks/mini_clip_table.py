"""The mini-CLIP table: methods, aligners, prompt sources, contextual scoring and
few-shot scorers measured with the mini-CLIP on a generated held-out benchmark.

    python benchmarks/mini_clip_table.py --quick --out runs/mini_table_quick
    python benchmarks/mini_clip_table.py --out runs/mini_table          # the table in docs/mini_clip.md

Generates the benchmark under ``OUT/data`` (MVTec layout, evaluation-stream
scenes, tools/mini_clip/mvtec.py; reused when its manifest matches), scores it
once per configuration with ``alfa_ad.runner.run_dataset`` (the code path of
``alfa-ad run``; per-configuration outputs under ``OUT/runs/``), and writes
``OUT/table.csv`` and ``OUT/table.md``: one row per configuration, metrics as
fractions (mean over classes), ``ms_per_image`` = time in ``Detector.predict``
per image on this machine's CPU.

The mini-CLIP is trained here on synthetic scenes and is not a real CLIP: these
figures compare methods on one learned model; they say nothing about accuracy
with real CLIP weights.

Configurations are the list ``CONFIGS``; to measure another aligner add a row
with ``"aligner": "<name>"``: it is passed to the ALFA method as
``aligner=<name>`` when the method takes that option, and the row is reported
as skipped otherwise.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, Path(__file__).resolve().parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from _mini_methods import BASELINES, contextual, supports_option  # noqa: E402

from alfa_ad.detector import Detector, shipped_libraries  # noqa: E402
from alfa_ad.evaluation.metrics import image_auroc  # noqa: E402
from alfa_ad.io.datasets import discover, train_images  # noqa: E402
from alfa_ad.model import load_backbone  # noqa: E402
from alfa_ad.outputs.record import RunOptions, build_record  # noqa: E402
from alfa_ad.outputs.tables import mean_over  # noqa: E402
from alfa_ad.prompting import AlfaTemplateSource  # noqa: E402
from alfa_ad.prompting.library import LLMPromptSource, load_library  # noqa: E402
from alfa_ad.registry import DEFAULT_ALIGNER  # noqa: E402
from alfa_ad.runner import run_dataset  # noqa: E402
from tools.mini_clip.mvtec import write_benchmark  # noqa: E402
from tools.mini_clip.vocab import HELD_OUT, OBJECTS  # noqa: E402

# ALFA's aligner (``aligner_impl``: masked (default), value or dense windows) and how the text
# meets its window embeddings: carried into the local space by the rank-one transfer
# ("rank1"), or compared as they are ("none")
RANK1, NO_PROJ = "windows + rank-1 text transfer", "windows, text as is"
ALIGNERS = {RANK1: "rank1", NO_PROJ: "none"}

# One row each.  Keys: name, method (alfa | winclip | class_token | patch_tokens), aligner,
# shots (0), llm (False: templates only), contextual (True), text (True; False = memory bank only),
# classes ("all" | "llm": the classes that have LLM prompts in the shipped libraries).
CONFIGS: list[dict] = [
    {"name": "class token only (global, no map)", "method": "class_token", "aligner": "none"},
    {"name": "raw patch tokens vs text", "method": "patch_tokens", "aligner": "none"},
    {"name": "ALFA", "method": "alfa", "aligner": RANK1},
    {"name": "ALFA, aligner without text transfer", "method": "alfa", "aligner": NO_PROJ},
    {"name": "ALFA, value aligner", "method": "alfa", "aligner": RANK1, "aligner_impl": "value"},
    {"name": "ALFA, dense aligner", "method": "alfa", "aligner": RANK1, "aligner_impl": "dense"},
    {"name": "ALFA, contextual scoring off", "method": "alfa", "aligner": RANK1, "contextual": False},
    {"name": "WinCLIP", "method": "winclip", "aligner": "winclip windows"},
    {"name": "ALFA, templates (LLM classes)", "method": "alfa", "aligner": RANK1, "classes": "llm"},
    {"name": "ALFA, templates + LLM (LLM classes)", "method": "alfa", "aligner": RANK1, "classes": "llm",
     "llm": True},
    {"name": "ALFA 1-shot", "method": "alfa", "aligner": RANK1, "shots": 1},
    {"name": "ALFA 4-shot", "method": "alfa", "aligner": RANK1, "shots": 4},
    {"name": "memory bank only 4-shot", "method": "alfa", "aligner": "none", "shots": 4, "text": False},
    {"name": "WinCLIP+ 1-shot", "method": "winclip", "aligner": "winclip windows", "shots": 1},
    {"name": "WinCLIP+ 4-shot", "method": "winclip", "aligner": "winclip windows", "shots": 4},
]
BENCH_SIZE = 128  # rendered size of the benchmark images (the model sees 64 px)
FULL = {"classes": OBJECTS, "n_train": 4, "n_good": 6, "n_defect": 1}  # sized for a loaded 2-core CPU
QUICK = {"classes": ("metal_nut", "capsule", "washer"), "n_train": 4, "n_good": 6, "n_defect": 2}
COLUMNS = ("name", "method", "aligner", "prompts", "contextual", "shots", "classes", "image_auroc", "pixel_auroc",
           "pro", "image_auroc_unseen_combos", "image_aupr", "image_f1_max", "pixel_f1_max", "ms_per_image",
           "n_images", "note")


def prepare_data(root: Path, spec: dict, seed: int) -> Path:
    """The benchmark under ``root`` (regenerated unless its manifest matches ``spec``)."""
    want = {"seed": seed, "classes": list(spec["classes"]), "n_train": spec["n_train"], "n_good": spec["n_good"],
            "n_defect": spec["n_defect"]}
    stamp = root / "benchmark_spec.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return root
    if root.exists():
        if not (root / "manifest.json").is_file():
            raise SystemExit(f"error: {root} exists and is not a generated benchmark; choose another --out")
        shutil.rmtree(root)
    write_benchmark(root, classes=spec["classes"], seed=seed, n_train=spec["n_train"], n_good=spec["n_good"],
                    n_defect=spec["n_defect"], size=BENCH_SIZE)
    stamp.write_text(json.dumps(want))
    return root


def llm_classes(classes) -> list[str]:
    sources = [LLMPromptSource(load_library(f)) for f in shipped_libraries()]
    return [c for c in classes if any(s.has_class(c) for s in sources)]


def make_detector(backbone, cfg: dict) -> tuple[Detector | None, str]:
    """The detector of one configuration, or ``(None, why not)``."""
    method = cfg["method"]
    options: dict = {}
    if method == "alfa":
        if cfg["aligner"] in ALIGNERS:
            options["text_projection"] = ALIGNERS[cfg["aligner"]]
            options["aligner"] = cfg.get("aligner_impl", DEFAULT_ALIGNER)
        if not cfg.get("text", True):
            options["use_text"] = False
        if not cfg.get("contextual", True) and supports_option("alfa", "contextual"):
            options["contextual"] = False
    base = "alfa" if method in BASELINES else method
    det = Detector(backbone, method=base, llm_prompts=bool(cfg.get("llm")), cache_dir=None, batch_size=16, **options)
    if method in BASELINES:
        det.method = BASELINES[method](backbone)
    if method != "winclip" and not cfg.get("llm"):
        det.sources = [AlfaTemplateSource()]
    return det, ""


def unseen_combo_auroc(rows: list[dict]) -> float | None:
    """Mean over classes of the image AUROC of good images vs defects held out of training."""
    values = []
    for cls in dict.fromkeys(r["class"] for r in rows):
        sub = [r for r in rows if r["class"] == cls and (r["defect_type"] == "good" or (cls, r["defect_type"]) in HELD_OUT)]
        if any(r["label"] == 1 for r in sub) and any(r["label"] == 0 for r in sub):
            values.append(image_auroc([r["label"] for r in sub], [r["score"] for r in sub]))
    return float(np.mean(values)) if values else None


def run_config(backbone, cfg: dict, data: Path, out: Path, classes: list[str], seeds) -> dict:
    aligner = f"{cfg.get('aligner_impl', DEFAULT_ALIGNER)} {cfg['aligner']}" if cfg["aligner"] in ALIGNERS \
        else cfg["aligner"]
    row = {"name": cfg["name"], "method": cfg["method"], "aligner": aligner,
           "prompts": "templates + LLM" if cfg.get("llm") else ("WinCLIP ensemble" if cfg["method"] == "winclip"
                                                                 else "ALFA templates"),
           "contextual": "" if cfg["method"] == "winclip" else ("on" if cfg.get("contextual", True) else "off"),
           **({"prompts": "none (no text)", "contextual": ""} if not cfg.get("text", True) else {}),
           "shots": cfg.get("shots", 0), "classes": ",".join(classes)}
    det, why = make_detector(backbone, cfg)
    if det is None:
        return {**row, "note": why}
    dataset, _ = discover(data, classes)
    shots = cfg.get("shots", 0)
    spent = [0.0, 0]
    predict = det.predict

    def timed(images, class_name="object", explain=0):
        t = time.perf_counter()
        res = predict(images, class_name, explain)
        spent[0] += time.perf_counter() - t
        spent[1] += len(res)
        return res

    det.predict = timed
    per_seed, unseen = [], []
    for seed in (seeds if shots else seeds[:1]):
        def prepare(detector, class_name, prompt_name=None, seed=seed):
            if not shots:
                return {}
            refs = sorted(random.Random(seed).sample(train_images(data, class_name), shots))
            detector.fit_normals(refs, seed=seed)
            return {"references": [str(r) for r in refs]}

        det.clear_normals()
        slug = "".join(c if c.isalnum() else "_" for c in cfg["name"]).strip("_")
        options = RunOptions(data=str(data), shots=str(shots), seed=seed)
        record = {**build_record(det, options, classes, {}), "benchmark": "mini_clip_table", "configuration": cfg}
        with contextual(cfg.get("contextual", True) or supports_option("alfa", "contextual")):
            report = run_dataset(det, dataset, out / "runs" / f"{slug}_seed{seed}", record, options, overlays=False,
                                 prepare=prepare if shots else None, workers=1)
        if report.errors:
            return {**row, "note": "; ".join(report.errors[:2])}
        per_seed.append(report.mean_metrics())
        unseen.append(unseen_combo_auroc(report.rows))
    metrics = mean_over(per_seed)
    if cfg["method"] == "class_token":  # no map: pixel metrics do not apply
        metrics.update({"pixel_auroc": None, "pro": None, "pixel_f1_max": None})
    vals = [u for u in unseen if u is not None]
    note = f"mean over reference seeds {','.join(map(str, seeds))}" if shots and len(seeds) > 1 else ""
    return {**row, **{k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "pro", "image_aupr", "image_f1_max",
                                                  "pixel_f1_max")},
            "image_auroc_unseen_combos": float(np.mean(vals)) if vals else None,
            "ms_per_image": 1000 * spent[0] / max(spent[1], 1), "n_images": spent[1] // len(per_seed), "note": note}


def _fmt(v, pct: bool) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{100 * v:.1f}" if pct else f"{v:.4f}"
    return str(v)


def write_tables(out: Path, rows: list[dict], header: str) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.1f}" if k == "ms_per_image" and r.get(k) is not None else _fmt(r.get(k), False))
                    for k in COLUMNS})
    (out / "table.csv").write_text(buf.getvalue())
    cols = ("name", "aligner", "prompts", "contextual", "shots", "image_auroc", "pixel_auroc", "pro",
            "image_auroc_unseen_combos", "ms_per_image", "note")
    titles = ("configuration", "aligner", "prompts", "contextual", "shots", "img AUROC", "px AUROC", "PRO",
              "img AUROC unseen combos", "ms / image", "note")
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for r in rows:
        cells = [f"{r[c]:.0f}" if c == "ms_per_image" and r.get(c) is not None
                 else _fmt(r.get(c), c in ("image_auroc", "pixel_auroc", "pro", "image_auroc_unseen_combos"))
                 for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "table.md").write_text(header + "\n\n" + "\n".join(lines) + "\n")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="3 classes, few images: a minute on a CPU")
    ap.add_argument("--seed", type=int, default=0, help="benchmark seed (evaluation stream)")
    ap.add_argument("--seeds", default="0", help="reference-sampling seeds of the few-shot rows (mean)")
    ap.add_argument("--only", default=None, help="configuration names separated by \";\" (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--weights", default=None, help="mini-CLIP weights file (default: the shipped one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args.out / "data", spec, args.seed)
    if args.weights:
        backbone = load_backbone("alfa-mini-clip", checkpoint=args.weights, device="cpu")
    else:
        backbone = load_backbone(weights="mini", device="cpu")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    configs = CONFIGS
    if args.only:
        names = [n.strip() for n in args.only.split(";") if n.strip()]
        configs = [c for c in CONFIGS if c["name"] in names]
        missing = sorted(set(names) - {c["name"] for c in configs})
        if missing:
            raise SystemExit(f"error: unknown configuration {', '.join(missing)}")
    all_classes, with_llm = list(spec["classes"]), llm_classes(spec["classes"])
    rows = []
    for cfg in configs:
        classes = with_llm if cfg.get("classes") == "llm" else all_classes
        t = time.perf_counter()
        rows.append(run_config(backbone, cfg, data, args.out, classes, seeds) if classes
                    else {**cfg, "note": "skipped: no class has LLM prompts"})
        r = rows[-1]
        print(f"{cfg['name']:40s} img {_fmt(r.get('image_auroc'), True):>5s}  px {_fmt(r.get('pixel_auroc'), True):>5s}"
              f"  PRO {_fmt(r.get('pro'), True):>5s}  ({time.perf_counter() - t:.0f} s) {r.get('note', '')}", flush=True)
    header = (f"# mini-CLIP table ({'quick' if args.quick else 'full'})\n\nWeights: {backbone.weights.label}. "
              f"Not a real CLIP: these figures compare methods on a small CLIP trained here on synthetic scenes and "
              f"say nothing about accuracy with real CLIP weights.\n\nBenchmark: {len(all_classes)} classes "
              f"({', '.join(all_classes)}), per class {spec['n_good']} good and {spec['n_defect']} x 7 defect test "
              f"images, {spec['n_train']} train/good; seed {args.seed}; held-out seeds (evaluation stream). "
              f"LLM prompts exist for: {', '.join(with_llm) or 'none'}. Values in percent (mean over classes); "
              f"ms / image: Detector.predict on this CPU ({args.threads} torch thread(s), shared machine).")
    write_tables(args.out, rows, header)
    print(f"wrote {args.out / 'table.csv'} and {args.out / 'table.md'}")
    return rows


if __name__ == "__main__":
    main()
