"""Ship the weights of a training evaluation: the ``.partial.safetensors`` file that
``train.py`` writes at each ``--eval-every`` step, re-saved with the training facts in its
metadata (as ``train.py`` writes them for a finished run) and its sha256 printed.

    python -m tools.mini_clip.ship --weights runs/mini_v2/mini_clip_v2.partial.safetensors \\
        --checkpoint runs/mini_v2/checkpoint.pt --log runs/mini_v2/train.log \\
        --out alfa_ad/model/shipped/mini_clip_v2.safetensors

The step is the one recorded in the partial file; the monitor figures are that step's
``monitor step N:`` line of the training log; seed, planned steps, options and the runs so
far come from the checkpoint (read with ``weights_only=True``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def monitor_at(log: Path, step: int) -> dict[str, float]:
    """The ``monitor step <step>:`` figures of a training log (one-line error if absent)."""
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"monitor step {step}:"):
            pairs = re.findall(r"(\w+) ([0-9.]+)", line.split(":", 1)[1])
            return {k: float(v) for k, v in pairs}
    sys.exit(f"error: {log}: no 'monitor step {step}:' line")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="a .partial.safetensors of train.py")
    ap.add_argument("--checkpoint", type=Path, required=True, help="the run's checkpoint.pt (facts of the run)")
    ap.add_argument("--log", type=Path, required=True, help="the run's --log file")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    with safe_open(str(args.weights), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        step = int((f.metadata() or {}).get("step", -1))
    if step < 0:
        sys.exit(f"error: {args.weights}: no step in its metadata (not a train.py partial file)")
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    options = dict(ckpt["options"])
    meta = {"config": str(ckpt.get("config_name", "")), "config_json": options.pop("config"),
            "seed": str(options["seed"]), "steps": str(options["steps"]), "stopped_after": str(step),
            "options": json.dumps(options, sort_keys=True), "runs": json.dumps(ckpt.get("runs", [])),
            "pool_sha256": str(ckpt.get("pool_sha256", "")),
            "monitor": json.dumps(monitor_at(args.log, step)), "torch": torch.__version__,
            "note": f"mini-CLIP trained on synthetic scenes - not a real CLIP; the weights of step {step} "
                    f"of a {options['steps']}-step schedule"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=meta)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: step {step} of {options['steps']}, {args.out.stat().st_size:,} bytes, sha256 {digest}")
    print(f"monitor: {meta['monitor']}")


if __name__ == "__main__":
    main()
