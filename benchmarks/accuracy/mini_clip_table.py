"""The mini-CLIP table: methods, aligners, prompt sources, eq. (4) placement, scales and
few-shot scorers measured with the mini-CLIP on generated held-out benchmarks, with
paired bootstrap intervals.

    python benchmarks/accuracy/mini_clip_table.py --out runs/mini_table                 # the table in docs/mini_clip.md
    python benchmarks/accuracy/mini_clip_table.py --quick --out runs/mini_table_quick   # one small benchmark, a minute
    python benchmarks/accuracy/mini_clip_table.py --out runs/other --data-seeds 41,42 --n-good 8 --n-defect 3

For every generator seed it renders a benchmark under ``OUT/data/seed_<s>`` (MVTec layout,
evaluation-stream scenes, tools/mini_clip/mvtec.py; reused when its spec matches), scores
it once per row with ``alfa_ad.runner.run_dataset`` (the code path of ``alfa-ad run``;
outputs under ``OUT/runs/``), and writes ``OUT/table.csv`` and ``OUT/table.md``.  Metrics
are means over every (seed, class) group, in percent.  For every row the table gives the
paired bootstrap 95% interval of its difference to WinCLIP and to the default (the same
images resampled per image within each group, ``--replicates`` draws;
alfa_ad/evaluation/bootstrap.py).  ``ms / image`` is the time in ``Detector.predict``.

The row named ``DEFAULT`` is built exactly as ``alfa-ad run --weights mini`` builds its
detector (no option given); the ``ran`` column of every row is read back from the built
detector (method, aligner, eq. 4 placement, scales, text projection, prompt sources,
shots), not from the row's name.

The mini-CLIP is trained here on synthetic scenes and is not a real CLIP: these figures
compare methods on one small learned model; they say nothing about accuracy with real
CLIP weights.
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

REPO = Path(__file__).resolve().parents[2]
for p in (REPO, Path(__file__).resolve().parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from _mini_methods import BASELINES  # noqa: E402

from alfa_ad.detector import Detector  # noqa: E402
from alfa_ad.evaluation.bootstrap import GroupStats, group_metrics, paired_differences  # noqa: E402
from alfa_ad.io.datasets import discover, train_images  # noqa: E402
from alfa_ad.io.images import load_mask  # noqa: E402
from alfa_ad.model import load_backbone  # noqa: E402
from alfa_ad.outputs.record import RunOptions, build_record  # noqa: E402
from alfa_ad.prompting.library import LLMPromptSource, load_library, shipped_libraries  # noqa: E402
from alfa_ad.runner import run_dataset  # noqa: E402
from tools.mini_clip.mvtec import write_benchmark  # noqa: E402
from tools.mini_clip.vocab import OBJECTS  # noqa: E402

DEFAULT, WINCLIP = "ALFA default (alfa-ad run --weights mini)", "WinCLIP (--method winclip)"
# One row each: name, method (alfa | winclip | patchknn | musc | class_token | patch_tokens), detector (keyword
# arguments of Detector: DetectorConfig fields and method options), shots (0), classes ("all" |
# "llm": the classes with LLM prompts in the shipped libraries).
OLD = {"contextual": "all", "scales": (2, 3), "sigma": 4.0, "global_in_map": False, "llm_prompts": True}
CONFIGS: list[dict] = [
    {"name": DEFAULT, "method": "alfa", "detector": {}},
    {"name": WINCLIP, "method": "winclip", "detector": {}},
    {"name": "paper preset (--preset paper)", "method": "alfa", "detector": {"preset": "paper"}},
    {"name": "class token only (no map)", "method": "class_token", "detector": {}},
    {"name": "raw patch tokens vs text", "method": "patch_tokens", "detector": {}},
    # the path from alfa-ad 0.1's default to today's, one choice at a time
    {"name": "0.1 default: eq. 4 all, scales 2,3, sigma 4, LLM", "method": "alfa", "detector": OLD},
    {"name": "0.1 + eq. 4 off", "method": "alfa", "detector": {**OLD, "contextual": "off"}},
    {"name": "0.1 + eq. 4 off + scales 2,3,4", "method": "alfa",
     "detector": {**OLD, "contextual": "off", "scales": (2, 3, 4)}},
    {"name": "0.1 + eq. 4 off + scales 2,3,4 + image score in map", "method": "alfa",
     "detector": {**OLD, "contextual": "off", "scales": (2, 3, 4), "global_in_map": True}},
    {"name": "0.1 + eq. 4 off + scales 2,3,4 + image score in map + sigma 1/8 patch (= previous default + --llm)",
     "method": "alfa", "detector": {"llm_prompts": True, "scales": (2, 3, 4)}},
    {"name": "0.1 + ... + sigma 1/8 patch + scales 2,3,4,5 every 1,2,3,3 patches (= default + --llm)",
     "method": "alfa", "detector": {"llm_prompts": True}},
    # one change at a time from the default
    {"name": "--contextual global", "method": "alfa", "detector": {"contextual": "global"}},
    {"name": "--contextual soft", "method": "alfa", "detector": {"contextual": "soft"}},
    {"name": "--contextual all", "method": "alfa", "detector": {"contextual": "all"}},
    {"name": "--scales 2,3", "method": "alfa", "detector": {"scales": (2, 3)}},
    {"name": "--scales 2,3,4,5 (every window at stride 1)", "method": "alfa", "detector": {"scales": (2, 3, 4, 5)}},
    {"name": "--scales 1,2,3", "method": "alfa", "detector": {"scales": (1, 2, 3)}},
    {"name": "--scales 2,3,4 --window-strides 1,2,2", "method": "alfa",
     "detector": {"scales": (2, 3, 4), "window_strides": (1, 2, 2)}},
    {"name": "--scales 2,3,4,5 --window-strides 2", "method": "alfa",
     "detector": {"scales": (2, 3, 4, 5), "window_strides": (2,)}},
    {"name": "previous default: --scales 2,3,4 (stride 1)", "method": "alfa", "detector": {"scales": (2, 3, 4)}},
    {"name": "image score not in the map (global_in_map=False)", "method": "alfa",
     "detector": {"global_in_map": False}},
    {"name": "sigma 4 px (0.1)", "method": "alfa", "detector": {"sigma": 4.0}},
    {"name": "sigma 0 (no smoothing)", "method": "alfa", "detector": {"sigma": 0.0}},
    {"name": "--aligner value", "method": "alfa", "detector": {"aligner": "value"}},
    {"name": "--aligner dense", "method": "alfa", "detector": {"aligner": "dense"}},
    {"name": "text projection rank1", "method": "alfa", "detector": {"text_projection": "rank1"}},
    # prompt sources on the classes that have LLM prompts
    {"name": "default, LLM classes", "method": "alfa", "detector": {}, "classes": "llm"},
    {"name": "--llm, LLM classes", "method": "alfa", "detector": {"llm_prompts": True}, "classes": "llm"},
    # few-shot
    {"name": "ALFA 1-shot", "method": "alfa", "detector": {}, "shots": 1},
    {"name": "ALFA 4-shot", "method": "alfa", "detector": {}, "shots": 4},
    {"name": "memory bank only 4-shot (--no-text)", "method": "alfa", "detector": {"use_text": False}, "shots": 4},
    {"name": "WinCLIP+ 1-shot", "method": "winclip", "detector": {}, "shots": 1},
    {"name": "WinCLIP+ 4-shot", "method": "winclip", "detector": {}, "shots": 4},
    {"name": "patchknn 1-shot (--method patchknn)", "method": "patchknn", "detector": {}, "shots": 1},
    {"name": "patchknn 4-shot (--method patchknn)", "method": "patchknn", "detector": {}, "shots": 4},
    {"name": "patchknn 4-shot, rotations", "method": "patchknn",
     "detector": {"rotations": True}, "shots": 4},
    {"name": "patchknn 4-shot, layer 2 of 0-3 (chosen on --quick)", "method": "patchknn", "detector": {"layer": 2},
     "shots": 4},
    # anomaly region refinement (CLIP-ADA), on for every zero-shot method
    {"name": "ALFA default --refine", "method": "alfa", "detector": {"refine": True}},
    {"name": "WinCLIP --refine", "method": "winclip", "detector": {"refine": True}},
    {"name": "musc zero-shot --refine", "method": "musc", "detector": {"refine": True}},
    {"name": "musc zero-shot (--method musc)", "method": "musc", "detector": {}},
    {"name": "musc zero-shot, no image re-scoring (rescore_ks=())", "method": "musc", "detector": {"rescore_ks": ()}},
    {"name": "musc zero-shot, degree 1 only (no neighbourhood)", "method": "musc", "detector": {"degrees": (1,)}},
]
BENCH_SIZE = 128  # rendered size of the benchmark images (the model sees 64 px)
FULL = {"classes": OBJECTS, "n_train": 4, "n_good": 11, "n_defect": 2, "seeds": "1,2,3"}  # 3 x 200 test images
QUICK = {"classes": ("metal_nut", "capsule", "washer"), "n_train": 4, "n_good": 6, "n_defect": 2, "seeds": "0"}
COLUMNS = ("name", "ran", "image_auroc", "pixel_auroc", "pro", "d_winclip_image_auroc", "d_winclip_pixel_auroc",
           "d_winclip_pro", "d_default_image_auroc", "d_default_pixel_auroc", "d_default_pro", "image_aupr",
           "pixel_f1_max", "ms_per_image", "n_images", "groups", "note")


def prepare_data(root: Path, spec: dict, seed: int) -> Path:
    """The benchmark of generator ``seed`` under ``root`` (regenerated unless its spec matches)."""
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


def make_detector(backbone, cfg: dict) -> Detector:
    """The detector of one row: ``Detector(backbone, **cfg["detector"])`` (what ``alfa-ad run``
    builds from the same options); the table's baselines swap in their method."""
    method = cfg["method"]
    base = "alfa" if method in BASELINES else method
    det = Detector(backbone, method=base, cache_dir=None, **cfg["detector"])
    if method in BASELINES:
        det.method = BASELINES[method](backbone, tuple(det.config.scales))
    return det


def what_ran(det: Detector, method: str, shots: int) -> str:
    """The row's configuration read back from the built detector."""
    c = det.config
    if method in BASELINES:
        return f"{method} (eq. 4 {c.contextual}), prompts {'+'.join(dict.fromkeys(s.name for s in det.sources))}"
    parts = [c.method, f"aligner {c.aligner}", f"scales {','.join(map(str, c.scales))}"]
    if c.method == "patchknn":  # no aligner, no windows: its layer and options
        m = det.method
        parts = [c.method, f"layer {m.layer}", f"masking {m.masking}", f"rotations {'on' if m.rotations else 'off'}",
                 f"top {m.top_percent:g}%", f"sigma {m.blur.sigma:g} px"]
    if c.method == "musc":  # no prompts, no aligner: the images of a class score each other
        m = det.method
        parts = [c.method, f"layers {','.join(map(str, m.layers))}", f"degrees {','.join(map(str, m.degrees))}",
                 f"interval {m.interval[0]:g}-{m.interval[1]:g}",
                 f"re-scoring k {','.join(map(str, m.rescore_ks)) or 'off'}", f"groups of <= {m.group_size}",
                 f"sigma {m.blur.sigma:g} px"]
    if c.method == "alfa":
        head = det.method.head
        if any(t != 1 for t in head.strides):
            parts[-1] += f" (window strides {','.join(map(str, head.strides))})"
        parts += [f"eq. 4 {c.contextual}", f"text projection {det.method.text_projection}",
                  f"sigma {head.blur.sigma:g} px", "image score in map" if head.global_in_map else "windows-only map"]
        if not det.method.use_text:
            parts.append("no text")
    if c.method in ("patchknn", "musc"):  # the detector encodes a class's prompts; these methods read none
        parts.append("no prompts read")
    else:
        parts.append("prompts " + "+".join(dict.fromkeys(s.name for s in det.sources)))
    if c.preset:
        parts.append(f"preset {c.preset}")
    if det.refiner is not None:
        r = det.refiner
        parts.append(f"refine blocks {','.join(map(str, r.layers))} (tau {r.temperature:g}, alpha {r.alpha:g})")
    parts.append(f"{shots}-shot" + (f" ({c.few_shot_scorer} scorer, {c.fusion} fusion)" if shots else ""))
    return ", ".join(parts)


class Tap:
    """An engine that hands every scored image to ``sink`` on its way to the run's files."""

    def __init__(self, inner, sink) -> None:
        self.inner, self.sink, self.name = inner, sink, inner.name

    def describe(self) -> dict:
        return self.inner.describe()

    def run(self, detector, jobs, explain=0):
        for job, stream in self.inner.run(detector, jobs, explain):
            yield job, self._tap(stream)

    def _tap(self, stream):
        for item in stream:
            if item.error is None:
                self.sink(item)
            yield item


def run_config(backbone, cfg: dict, datasets: dict[int, Path], out: Path, classes: list[str],
               n_bins: int) -> tuple[dict, dict[str, GroupStats]]:
    """One row over every benchmark: its table row and its per-(seed, class) bootstrap stats."""
    from alfa_ad.engines.local import LocalEngine

    det = make_detector(backbone, cfg)
    shots = cfg.get("shots", 0)
    row = {"name": cfg["name"], "ran": what_ran(det, cfg["method"], shots), "classes": ",".join(classes)}
    spent = [0.0, 0]
    predict = det.predict

    def timed(images, class_name="object", explain=0):
        t = time.perf_counter()
        res = predict(images, class_name, explain)
        spent[0] += time.perf_counter() - t
        spent[1] += len(res)
        return res

    det.predict = timed
    images: dict[str, list] = {}

    def sink(item) -> None:
        s, r = item.sample, item.result
        mask = None
        if s.label == 0:
            mask = np.zeros(r.anomaly_map.shape, dtype=bool)
        elif s.mask_path is not None:
            mask = load_mask(s.mask_path)
        images.setdefault(f"{seed}/{s.class_name}", []).append(
            (str(s.path), s.label, r.score, mask, r.anomaly_map.astype(np.float16)))

    groups: dict[str, GroupStats] = {}
    per_seed, errors = [], []
    for seed, data in datasets.items():
        dataset, _ = discover(data, classes)

        def prepare(detector, class_name, prompt_name=None, seed=seed):
            refs = sorted(random.Random(seed).sample(train_images(data, class_name), shots))
            detector.fit_normals(refs, seed=seed)
            return {"references": [str(r) for r in refs]}

        det.clear_normals()
        slug = "".join(c if c.isalnum() else "_" for c in cfg["name"]).strip("_")
        options = RunOptions(data=str(data), shots=str(shots), seed=seed)
        record = {**build_record(det, options, classes, {}), "benchmark": "mini_clip_table", "configuration": cfg}
        report = run_dataset(det, dataset, out / "runs" / f"{slug}_seed{seed}", record, options, overlays=False,
                             prepare=prepare if shots else None, workers=1, engine=Tap(LocalEngine(1), sink))
        errors += report.errors
        per_seed.append(report.metrics)
        for name, items in sorted(images.items()):
            items.sort(key=lambda t: t[0])
            k, lab, sc, masks, maps = zip(*items)
            groups[name] = GroupStats.build(k, lab, sc, masks, [m.astype(np.float32) for m in maps], n_bins)
        images.clear()
    if errors:
        row["note"] = "; ".join(errors[:2])
    exact = [m for metrics in per_seed for m in metrics.values()]  # one entry per (seed, class): alfa-ad run's metrics
    for key in ("image_auroc", "pixel_auroc", "pro", "image_aupr", "pixel_f1_max"):
        vals = [m.get(key) for m in exact if m.get(key) is not None]
        row[key] = float(np.mean(vals)) if vals else None
    if cfg["method"] == "class_token":  # no map: pixel metrics do not apply
        row.update({"pixel_auroc": None, "pro": None, "pixel_f1_max": None})
    row.update(ms_per_image=1000 * spent[0] / max(spent[1], 1), n_images=spent[1], groups=len(groups))
    return row, groups


def add_differences(row: dict, groups, reference, prefix: str, replicates: int, method: str) -> None:
    if reference is None or groups is reference:
        return
    diffs = paired_differences(groups, reference, replicates)
    for metric, d in diffs.items():
        if method == "class_token" and metric != "image_auroc":
            continue
        row[f"{prefix}_{metric}"] = d


def _fmt(v, pct: bool = True) -> str:
    if v is None or v == "":
        return ""
    if hasattr(v, "format"):
        return v.format() if not isinstance(v, str) else v
    if isinstance(v, float):
        return f"{100 * v:.1f}" if pct else f"{v:.4f}"
    return str(v)


def write_tables(out: Path, rows: list[dict], header: str) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        cells = {}
        for k in COLUMNS:
            v = r.get(k)
            if hasattr(v, "low"):
                cells[k] = f"{v.value:.4f} [{v.low:.4f}, {v.high:.4f}]"
            elif k == "ms_per_image" and v is not None:
                cells[k] = f"{v:.1f}"
            else:
                cells[k] = _fmt(v, False)
        w.writerow(cells)
    (out / "table.csv").write_text(buf.getvalue())
    cols = ("name", "image_auroc", "pixel_auroc", "pro", "d_winclip_image_auroc", "d_winclip_pixel_auroc",
            "d_winclip_pro", "d_default_image_auroc", "d_default_pixel_auroc", "d_default_pro", "ms_per_image", "ran")
    titles = ("row", "img AUROC", "px AUROC", "PRO", "Δ img vs WinCLIP [95%]", "Δ px vs WinCLIP [95%]",
              "Δ PRO vs WinCLIP [95%]", "Δ img vs default [95%]", "Δ px vs default [95%]", "Δ PRO vs default [95%]",
              "ms / image", "what ran")
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for r in rows:
        cells = [f"{r[c]:.1f}" if c == "ms_per_image" and r.get(c) is not None else _fmt(r.get(c)) for c in cols]
        if r.get("note"):
            cells[-1] += f" ({r['note']})"
        lines.append("| " + " | ".join(cells) + " |")
    (out / "table.md").write_text(header + "\n\n" + "\n".join(lines) + "\n")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="one benchmark of 3 classes, few images: a minute")
    ap.add_argument("--data-seeds", default=None, help="generator seeds, comma-separated (default 1,2,3; quick 0)")
    ap.add_argument("--classes", default=None, help="comma list of object kinds (default: all 8; quick: 3)")
    ap.add_argument("--n-good", type=int, default=None, help="good test images per class")
    ap.add_argument("--n-defect", type=int, default=None, help="test images per class and defect type (7 types)")
    ap.add_argument("--only", default=None, help="row names separated by \";\" (default: all)")
    ap.add_argument("--replicates", type=int, default=1000, help="bootstrap draws")
    ap.add_argument("--bins", type=int, default=1024, help="map-value bins per group for the bootstrap")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--weights", default=None, help="mini, mini-v2 or a v1 weights file (default: mini)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = dict(QUICK if args.quick else FULL)
    if args.classes:
        spec["classes"] = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    for key in ("n_good", "n_defect"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    seeds = [int(s) for s in (args.data_seeds or spec["seeds"]).split(",") if s.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    datasets = {s: prepare_data(args.out / "data" / f"seed_{s}", spec, s) for s in seeds}
    backbone = load_backbone(weights=args.weights or "mini", device="cpu") if args.weights in (None, "mini", "mini-v2") \
        else load_backbone("alfa-mini-clip", checkpoint=args.weights, device="cpu")
    configs = CONFIGS
    if args.only:
        names = [n.strip() for n in args.only.split(";") if n.strip()]
        missing = sorted(set(names) - {c["name"] for c in CONFIGS})
        if missing:
            raise SystemExit(f"error: unknown row {', '.join(missing)}")
        keep = set(names) | {DEFAULT, WINCLIP}  # the references of every interval
        configs = [c for c in CONFIGS if c["name"] in keep]
    all_classes, with_llm = list(spec["classes"]), llm_classes(spec["classes"])
    results: list[tuple[dict, dict, dict]] = []
    for cfg in configs:
        classes = with_llm if cfg.get("classes") == "llm" else all_classes
        if not classes:
            results.append(({"name": cfg["name"], "note": "skipped: no class has LLM prompts"}, {}, cfg))
            continue
        t = time.perf_counter()
        row, groups = run_config(backbone, cfg, datasets, args.out, classes, args.bins)
        results.append((row, groups, cfg))
        print(f"{cfg['name']:44s} img {_fmt(row.get('image_auroc')):>5s}  px {_fmt(row.get('pixel_auroc')):>5s}"
              f"  PRO {_fmt(row.get('pro')):>5s}  ({time.perf_counter() - t:.0f} s) {row.get('note', '')}", flush=True)
    refs = {r["name"]: g for r, g, _ in results}
    for row, groups, cfg in results:
        if not groups:
            continue
        for prefix, name in (("d_winclip", WINCLIP), ("d_default", DEFAULT)):
            ref = refs.get(name)
            if ref is not None and set(ref) != set(groups):  # a subset of classes: compare on those groups
                ref = {k: v for k, v in ref.items() if k in groups}
            add_differences(row, groups, ref, prefix, args.replicates, cfg["method"])
        row["binned"] = group_metrics(groups)
    rows = [r for r, _, _ in results]
    n_test = sum(len(v) for data in datasets.values() for v in discover(data, all_classes)[0].values())
    header = (f"# mini-CLIP table ({'quick' if args.quick else 'full'})\n\nWeights: {backbone.weights.label}. "
              f"Not a real CLIP: these figures compare methods on a small CLIP trained here on synthetic scenes and "
              f"say nothing about accuracy with real CLIP weights.\n\nBenchmarks: generator seeds "
              f"{', '.join(map(str, seeds))}; {len(all_classes)} classes ({', '.join(all_classes)}); per class "
              f"{spec['n_good']} good and {spec['n_defect']} x 7 defect test images, {spec['n_train']} train/good; "
              f"{n_test} test images in all. LLM prompts exist for: {', '.join(with_llm) or 'none'}. Values in "
              f"percent, mean over (seed, class) groups; Δ: row minus reference with the paired bootstrap 95% "
              f"interval ({args.replicates} draws, images resampled within each group by label). ms / image: "
              f"Detector.predict on this CPU ({args.threads} torch thread(s)).")
    write_tables(args.out, rows, header)
    print(f"wrote {args.out / 'table.csv'} and {args.out / 'table.md'}")
    return rows


if __name__ == "__main__":
    main()
