"""The same ``alfa-ad run`` on the local engine and on ``--engine ray``: scores, errors and
metrics compared, and the wall time of each.

    python benchmarks/agreement/compare_engines.py                                   # hazelnut_toy, random weights
    python benchmarks/agreement/compare_engines.py --data ../shared/data/mpdd --extra "--weights planted"

Each run is a fresh ``alfa-ad`` process (model load included); the Ray run starts its own
local instance and prints how long that took ("ray: started in ... s").  Exit 1 when a
score differs by more than ``--tolerance`` or the rows, errors or decisions differ.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path("../shared/data/hazelnut_toy")  # from the repository root (as in the issue)


def run(data: Path, out: Path, extra: list[str]) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "alfa_ad", "run", "--data", str(data), "--out", str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--extra", default="--weights random", help="options for both runs")
    ap.add_argument("--ray-extra", default="", help="options for the Ray run only (e.g. --workers 1)")
    ap.add_argument("--tolerance", type=float, default=1e-5)
    args = ap.parse_args()
    extra = shlex.split(args.extra)
    with tempfile.TemporaryDirectory() as tmp:
        local, remote = Path(tmp) / "local", Path(tmp) / "ray"
        wall_local, _ = run(args.data, local, extra)
        wall_ray, log = run(args.data, remote, [*extra, "--engine", "ray", *shlex.split(args.ray_extra)])
        a, b = (json.loads((p / "scores.json").read_text()) for p in (local, remote))
        ra, rb = a["images"], b["images"]
        same_rows = [r["path"] for r in ra] == [r["path"] for r in rb]
        diffs = [abs(x[k] - y[k]) for x, y in zip(ra, rb) for k in ("score", "global_score", "map_max")]
        same_other = all({k: v for k, v in x.items() if k not in ("score", "global_score", "map_max")} ==
                         {k: v for k, v in y.items() if k not in ("score", "global_score", "map_max")}
                         for x, y in zip(ra, rb))
        ma, mb = (json.loads((p / "metrics.json").read_text()) if (p / "metrics.json").is_file() else {}
                  for p in (local, remote))
        metric_diff = max((abs((v or 0) - (mb["metrics"][c][k] or 0)) for c, m in ma.get("metrics", {}).items()
                           for k, v in m.items()), default=0.0)
        startup = re.search(r"ray: started in ([\d.]+) s", log)
        seconds = [json.loads((p / "metrics.json").read_text())["seconds"] if (p / "metrics.json").is_file()
                   else None for p in (local, remote)]
    print(f"data: {args.data}  options: {args.extra}")
    print(f"images: {len(ra)} local, {len(rb)} ray; same paths in the same order: {same_rows}")
    print(f"max |difference| of score, global_score, map_max: {max(diffs, default=0.0):.3g}")
    print(f"other row fields identical: {same_other}; errors identical: {a['errors'] == b['errors']}")
    print(f"max |difference| of a metric: {metric_diff:.3g}")
    print(f"wall time of the whole process: local {wall_local:.1f} s, ray {wall_ray:.1f} s "
          f"(Ray start-up {startup.group(1) if startup else '?'} s); scoring loop: local {seconds[0]} s, "
          f"ray {seconds[1]} s")
    ok = same_rows and len(ra) == len(rb) and same_other and a["errors"] == b["errors"] and \
        max(diffs, default=0.0) <= args.tolerance
    print("SAME" if ok else "DIFFERENT")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
