"""``alfa-ad serve``: the HTTP scoring service (needs the ``serve`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from .common import WEIGHTS_HELP, app, fail, say
from .run_support import check_device

_SERVE_HELP = 'needs the serve extra: pip install "alfa-ad[serve]"'


def merged_record(config: Optional[Path], cli: dict[str, Any]) -> dict[str, Any]:
    """The config file's record, with every CLI option that was given on top."""
    from ..serve.config import load_config_file

    record = load_config_file(config) if config is not None else {}
    given = {k: v for k, v in cli.items() if v is not None}
    if "class_name" in given or "classes" in given:
        record.pop("class_name", None)
        record.pop("classes", None)
    if ("scales" in given or "preset" in given) and "window_strides" not in given:
        record.pop("window_strides", None)  # the file's strides belong to the file's scales
    return {**record, **given}


@app.command()
def serve(
    config: Optional[Path] = typer.Option(None, "--config", help="JSON or YAML file of Detector and service options."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (default 8000)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="mvtec, visa, or a comma list of classes to serve."),
    class_name: Optional[str] = typer.Option(None, "--class-name", help="One class to serve (default object)."),
    method: Optional[str] = typer.Option(None, "--method", help="alfa, winclip, patchknn (--shots k) or musc (a pool: --normals or --data) (default alfa)."),
    shots: Optional[str] = typer.Option(None, "--shots", help="Normal references per class: 0, k, or all (default 0)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampling references (and random weights)."),
    data: Optional[Path] = typer.Option(None, "--data", help="MVTec-layout root: references from <class>/train/good."),
    normals: Optional[Path] = typer.Option(None, "--normals", help="Folder of normal references (or DIR/<class>)."),
    coreset: Optional[int] = typer.Option(None, "--coreset", help="Most memory-bank features per layer (default 4096)."),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="Folder of extra normal images for thresholds."),
    fpr: Optional[float] = typer.Option(None, "--fpr", help="Target false-positive rate of the thresholds (default 0.01)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt library JSON (default: the shipped ones)."),
    llm: Optional[bool] = typer.Option(None, "--llm/--no-llm", help="ALFA: add the LLM-generated prompts (default "
                                       "off; --prompts implies it)."),
    contextual: Optional[str] = typer.Option(None, "--contextual", help="ALFA: where eq. 4 applies: off (default), "
                                             "global, all or soft (as for run)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A named configuration (paper; as for run)."),
    text: Optional[bool] = typer.Option(None, "--text/--no-text", help="ALFA few-shot: --no-text scores with the memory bank alone."),
    model: Optional[str] = typer.Option(None, "--model", help="open_clip model name."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="open_clip pretrained tag."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Local weights file for --model."),
    weights: Optional[str] = typer.Option(None, "--weights", help=WEIGHTS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)."),
    scales: Optional[str] = typer.Option(None, "--scales", help="Window sizes in patches (default: ALFA 2,3,4,5; WinCLIP 2,3)."),
    window_strides: Optional[str] = typer.Option(None, "--window-strides", help="Windows every so many patches, one "
                                                 "per scale or one for all (as for run)."),
    tile: Optional[str] = typer.Option(None, "--tile", help="auto, none or a tile side in pixels (as for run; each tile "
                                       "is one more forward pass; --max-tiles bounds them per request)."),
    anomalib_compat: Optional[bool] = typer.Option(None, "--anomalib-compat", help="WinCLIP exactly as anomalib 2.x."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Disk cache (default $ALFA_AD_CACHE or ./cache)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice; 1 on a busy machine)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Largest micro-batch (default 8)."),
    max_wait_ms: Optional[float] = typer.Option(None, "--max-wait-ms", help="Longest wait for a batch to fill (default 10)."),
    queue_size: Optional[int] = typer.Option(None, "--queue-size", help="Waiting requests beyond which 503 (default 64)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds a request may wait for its result (default 30)."),
    max_body_mb: Optional[float] = typer.Option(None, "--max-body-mb", help="Largest request body in MB (default 20)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Largest image, width x height (default 40e6)."),
    max_tiles: Optional[int] = typer.Option(None, "--max-tiles", help="Most model passes (tiles) per image; more: 413 (default 16)."),
    map_size: Optional[int] = typer.Option(None, "--map-size", help="Longest side of returned map PNGs (default 256)."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding a bearer token required on /v1 and /metrics."),
    access_log: Optional[str] = typer.Option(None, "--access-log", help="JSON-lines log: - (stderr), off, or a file (default -)."),
) -> None:
    """Serve POST /v1/detect (and /healthz, /readyz, /v1/classes, /metrics, /docs) over HTTP."""
    try:
        import uvicorn  # noqa: F401  (the serve extra, checked before anything loads)

        from ..serve.app import create_app  # noqa: F401
    except ImportError as exc:
        fail(f"alfa-ad serve {_SERVE_HELP} ({exc})")
    cli = {"host": host, "port": port, "classes": classes, "class_name": class_name, "method": method,
           "shots": shots, "seed": seed, "data": data, "normals": normals, "coreset": coreset,
           "calibrate": calibrate, "fpr": fpr, "prompts": prompts, "llm_prompts": llm, "use_text": text,
           "contextual": contextual, "preset": preset,
           "model": model, "pretrained": pretrained, "checkpoint": checkpoint, "weights": weights,
           "device": device, "scales": scales, "window_strides": window_strides, "tile": tile,
           "anomalib_compat": anomalib_compat,
           "cache_dir": cache_dir, "max_batch": max_batch, "max_wait_ms": max_wait_ms, "queue_size": queue_size,
           "timeout_s": timeout, "max_body_mb": max_body_mb, "max_pixels": max_pixels, "max_tiles": max_tiles,
           "map_size": map_size,
           "token_file": token_file, "access_log": access_log, "threads": threads}
    serve_until_stopped(*service_settings(config, cli))


def service_settings(config: Optional[Path], cli: dict[str, Any]):
    """``(Detector options, ServiceOptions, token)`` from the config file and the CLI options,
    checked before any model loads; one-line errors."""
    from ..serve.config import LOOPBACK_HOSTS, ConfigError, read_token, split_record

    try:
        detector_record, options = split_record(merged_record(config, cli))
        options.check_folders()
        check_device(detector_record.get("device"))
        token = read_token(options.token_file) if options.token_file is not None else None
    except ConfigError as exc:
        fail(str(exc))
    if options.host not in LOOPBACK_HOSTS and token is None:
        say(f"warning: binding {options.host} without --token-file: anyone who can reach it can use the service")
    return detector_record, options, token


def serve_until_stopped(detector_record: dict[str, Any], options, token: Optional[str]) -> None:
    """Start uvicorn at once and load the model in the background (``/readyz`` says when it is
    ready); a failed load stops the server and is the command's one-line error."""
    import uvicorn

    from ..serve.app import create_app
    from ..serve.metrics import json_logger
    from ..serve.scoring import ScoringService

    try:
        logger = json_logger("alfa_ad.serve", options.access_log)
    except OSError as exc:
        fail(f"{options.access_log}: cannot open access log ({exc.strerror or exc})")
    server: Optional[uvicorn.Server] = None
    load_error: list[str] = []

    def stop(message: str) -> None:
        load_error.append(message)
        if server is not None:
            server.should_exit = True

    def load() -> ScoringService:
        return ScoringService.build(detector_record, options, log=say)

    application = create_app(load, options, token=token, logger=logger, on_load_error=stop)
    server = uvicorn.Server(uvicorn.Config(application, host=options.host, port=options.port, access_log=False,
                                           log_level="warning", timeout_graceful_shutdown=10, server_header=False))
    say(f"alfa-ad serve: http://{options.host}:{options.port} (docs at /docs; loading the model, /readyz says when ready)")
    server.run()
    if load_error:
        fail(load_error[0])
    if not server.started:
        raise typer.Exit(1)
