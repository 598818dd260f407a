"""Load test of ``alfa-ad serve``: N concurrent clients for a fixed time, valid and invalid images.

    python benchmarks/serve/http_throughput.py                              # ViT-B-16-plus-240, random weights, 16 clients, 60 s
    python benchmarks/serve/http_throughput.py --weights planted --duration 20
    python benchmarks/serve/http_throughput.py --images DIR --class-name bottle --max-batch 8 --max-wait-ms 20

Starts the server in a subprocess on 127.0.0.1, waits for /readyz, then runs
``--clients`` client loops (one asyncio httpx client, so the clients themselves cost
little CPU) for ``--duration`` seconds; each request is an invalid upload with
probability ``--invalid`` (random bytes, truncated PNG, decompression bomb, text, ...),
else a valid image.  Prints throughput, p50/p95/p99 latency of valid requests, counts by
status, the server's RSS before and after, the batch sizes the server formed (from
/metrics), and then, with the server stopped, the batched model throughput in this
process (``Detector.predict`` on batches of ``--max-batch`` images, same weights and
threads) for comparison.  It also checks that the server's score for the first image
equals the in-process one.

Valid images default to ``../shared/data/mvtec_ad_mini/grid/test`` (class ``grid``)
when present, else synthetic parts.  Weights are random or planted: speed does not depend
on the weight values, scores are meaningless.  The clients share the machine with the
server: on a small CPU they take some of its time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT, Path(__file__).resolve().parent):  # alfa_ad from this checkout; loadtest.py beside this file
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from alfa_ad.io.images import IMAGE_EXTENSIONS, load_image, load_image_bytes  # noqa: E402
from loadtest import ServerProcess, bad_images, png_bytes, zero_png  # noqa: E402


def valid_images(folder: Path | None, limit: int) -> tuple[list[tuple[str, bytes]], str | None]:
    default = ROOT.parent / "shared" / "data" / "mvtec_ad_mini" / "grid" / "test"
    source = folder or (default if default.is_dir() else None)
    if source is not None:
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())[:limit]
        if not files:
            raise SystemExit(f"{source}: no images")
        return [(str(p), p.read_bytes()) for p in files], ("grid" if folder is None else None)
    rng = np.random.default_rng(0)
    out = []
    for i in range(limit):
        img = np.clip(125 + rng.normal(0, 8, (512, 512, 3)), 0, 255).astype(np.uint8)
        if i % 2:
            img[100 + 10 * i: 160 + 10 * i, 200:260] = (220, 30, 30)
        out.append((f"synthetic-{i}", png_bytes(img)))
    return out, None


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def drive(url: str, clients: int, duration: float, valid, invalid, p_invalid: float, class_name: str,
                timeout: float) -> tuple[list[tuple[str, int, float]], float]:
    import httpx

    records: list[tuple[str, int, float]] = []  # (kind, status, seconds)
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        every = round(1 / p_invalid) if p_invalid > 0 else 0

        async def loop(k: int) -> None:
            n = 0
            while n == 0 or time.perf_counter() < deadline:  # at least one request per client
                bad = every > 0 and (n + k) % every == every - 1  # every `every`-th request, staggered over clients
                pool = invalid if bad else valid
                name, data = pool[(n * clients + k) % len(pool)]
                n += 1
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/detect", files={"image": (Path(name).name or "x", data)},
                                          data={"class_name": class_name})
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = f"client error {type(exc).__name__}"
                records.append(("invalid" if bad else "valid", status, time.perf_counter() - t))

        start = time.perf_counter()
        await asyncio.gather(*(loop(k) for k in range(clients)))
    return records, time.perf_counter() - start


def scrape(url: str) -> dict[str, float]:
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(("alfa_ad_batch_size_sum", "alfa_ad_batch_size_count", "alfa_ad_batch_duration_seconds_sum")):
            name, value = line.split()
            out[name] = float(value)
    return out


def model_throughput(args, images, class_name: str) -> dict[str, float]:
    import torch

    from alfa_ad import Detector

    if args.threads:
        torch.set_num_threads(args.threads)
    det = Detector(model=args.model, weights=args.weights, device=args.device, batch_size=args.max_batch)
    pil = [load_image(im) for im in images]
    out = {}
    for size in sorted({1, args.max_batch}):
        batch = (pil * ((size // len(pil)) + 1))[:size]
        det.predict(batch, class_name)  # warm-up (text embeddings too)
        times = []
        for _ in range(args.model_repeats):
            t = time.perf_counter()
            det.predict(batch, class_name)
            times.append(time.perf_counter() - t)
        out[size] = size / statistics.median(times)
    out["first_score"] = det.predict([pil[0]], class_name)[0].score
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="random", choices=("random", "planted"))
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--invalid", type=float, default=0.1, help="Fraction of invalid uploads.")
    ap.add_argument("--images", type=Path, help="Folder of valid images (default: ../shared/data grid, else synthetic).")
    ap.add_argument("--n-images", type=int, default=16)
    ap.add_argument("--class-name", help="Class to score as (default: grid for the shared data, else object).")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=20.0)
    ap.add_argument("--queue-size", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=120.0, help="Server per-request timeout (s).")
    ap.add_argument("--threads", type=int, help="torch threads in the server and the in-process comparison.")
    ap.add_argument("--model-repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, help="Also write the figures as JSON here.")
    args = ap.parse_args()

    valid, default_class = valid_images(args.images, args.n_images)
    class_name = args.class_name or default_class or "object"
    invalid = bad_images() + [("bomb 12000x12000 zeros", zero_png(12000, 12000))]
    cache = tempfile.mkdtemp(prefix="serve-load-cache-")
    server_args = ["--weights", args.weights, "--model", args.model, "--device", args.device, "--class-name", class_name,
                   "--max-batch", args.max_batch, "--max-wait-ms", args.max_wait_ms, "--queue-size", args.queue_size,
                   "--timeout", args.timeout, "--access-log", "off"]
    if args.threads:
        server_args += ["--threads", args.threads]
    print(f"alfa-ad serve load test: {args.model}, {args.weights} weights, device {args.device}, class {class_name!r}; "
          f"{args.clients} clients for {args.duration:g} s, {args.invalid:.0%} invalid uploads; "
          f"{len(valid)} valid images ({valid[0][0]} ...); max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms, "
          f"queue {args.queue_size}; CPU cores visible: {os.cpu_count()}")
    env = {"ALFA_AD_CACHE": os.environ.get("ALFA_AD_CACHE", cache)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    t0 = time.perf_counter()
    with ServerProcess(server_args, env=env, log=Path(cache) / "server.log") as server:
        try:
            server.wait_ready(timeout=900)
        except Exception:
            print((Path(cache) / "server.log").read_text()[-3000:])
            raise
        print(f"server ready after {time.perf_counter() - t0:.1f} s")
        import httpx

        first = httpx.post(server.url + "/v1/detect", files={"image": ("a", valid[0][1])},
                           data={"class_name": class_name}, timeout=args.timeout + 30).json()
        warm = asyncio.run(drive(server.url, args.clients, 0.0, valid, invalid, 0.0, class_name, args.timeout + 30))
        print(f"warm-up: one request per client ({len(warm[0])}) in {warm[1]:.1f} s")
        rss_before = server.rss
        records, elapsed = asyncio.run(drive(server.url, args.clients, args.duration, valid, invalid, args.invalid,
                                             class_name, args.timeout + 30))
        rss_after = server.rss
        metrics = scrape(server.url)
        healthy = httpx.get(server.url + "/healthz").status_code == 200
    ok = [s for kind, status, s in records if kind == "valid" and status == 200]
    by_status = Counter((kind, status) for kind, status, _ in records)
    n5xx = sum(n for (kind, status), n in by_status.items() if isinstance(status, int) and status >= 500 and status != 503)
    mean_batch = metrics.get("alfa_ad_batch_size_sum", 0) / max(metrics.get("alfa_ad_batch_size_count", 0), 1)
    print(f"\n{len(records)} requests in {elapsed:.1f} s; valid answered 200: {len(ok)} -> "
          f"{len(ok) / elapsed:.2f} images/s")
    print(f"latency of valid 200s: p50 {percentile(ok, 50) * 1000:.0f} ms, p95 {percentile(ok, 95) * 1000:.0f} ms, "
          f"p99 {percentile(ok, 99) * 1000:.0f} ms, max {max(ok, default=float('nan')) * 1000:.0f} ms")
    bad_lat = [s for kind, status, s in records if kind == "invalid"]
    print(f"latency of invalid uploads: p50 {percentile(bad_lat, 50) * 1000:.0f} ms, "
          f"p99 {percentile(bad_lat, 99) * 1000:.0f} ms")
    print("by status: " + ", ".join(f"{kind} {status}: {n}" for (kind, status), n in sorted(by_status.items(), key=str)))
    print(f"5xx other than 503: {n5xx}; server healthy after: {healthy}")
    print(f"server batches: {int(metrics.get('alfa_ad_batch_size_count', 0))} (from the first request on), "
          f"mean size {mean_batch:.2f}")
    print(f"server RSS: {rss_before / 2**20:.0f} MiB before, {rss_after / 2**20:.0f} MiB after "
          f"({(rss_after - rss_before) / rss_before:+.1%})")
    print("\nin-process model throughput (Detector.predict, server stopped):")
    model = model_throughput(args, [load_image_bytes(data) for _, data in valid], class_name)
    for size in sorted(k for k in model if isinstance(k, int)):
        print(f"  batch {size:3d}: {model[size]:.2f} images/s")
    best = max(model[k] for k in model if isinstance(k, int))
    print(f"served / batched model throughput: {len(ok) / elapsed / best:.0%}")
    diff = abs(first["score"] - model["first_score"])
    print(f"first image: server score {first['score']:.7f}, in-process {model['first_score']:.7f}, |diff| {diff:.2e}")
    if args.out:
        args.out.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()}, "elapsed_s": elapsed, "valid_ok": len(ok),
            "throughput": len(ok) / elapsed, "p50": percentile(ok, 50), "p95": percentile(ok, 95),
            "p99": percentile(ok, 99), "by_status": {f"{k} {s}": n for (k, s), n in by_status.items()},
            "n5xx_not_503": n5xx, "rss_before": rss_before, "rss_after": rss_after, "mean_batch": mean_batch,
            "model_throughput": {str(k): v for k, v in model.items()}, "first_score_diff": diff}, indent=2))


if __name__ == "__main__":
    main()
