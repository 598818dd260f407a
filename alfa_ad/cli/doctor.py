"""``alfa-ad doctor``: one screen on whether this machine can run alfa-ad, and why not."""

from __future__ import annotations

import os
import platform
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..model.names import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import app, console


def _version(module: str) -> str:
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"missing ({type(exc).__name__})"


def _llm_status(base_url: Optional[str], timeout: float) -> tuple[str, bool | None]:
    """Whether an OpenAI-compatible endpoint answers ``GET {base}/models`` (no key is sent or shown)."""
    import urllib.error
    import urllib.request

    url = base_url or os.environ.get("OPENAI_BASE_URL")
    if not url:
        return "not configured (--base-url or $OPENAI_BASE_URL; OpenAI itself needs $OPENAI_API_KEY)", None
    probe = url.rstrip("/") + "/models"
    try:
        with urllib.request.urlopen(probe, timeout=timeout) as resp:  # noqa: S310 - user-given endpoint
            return f"{url} answers (HTTP {resp.status})", True
    except urllib.error.HTTPError as exc:
        return f"{url} answers (HTTP {exc.code})", True
    except Exception as exc:  # noqa: BLE001
        return f"{url} does not answer ({type(exc).__name__})", False


@app.command()
def doctor(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Model whose weights to check."),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, "--pretrained", help="Pretrained tag to check."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="LLM endpoint to check (default $OPENAI_BASE_URL)."),
    timeout: float = typer.Option(3.0, "--timeout", help="Seconds for each network probe."),
) -> None:
    """Versions, device, threads, caches, default weights and LLM endpoint; exit 1 when a default run cannot work."""
    import torch

    from ..io.paths import default_cache_dir
    from ..model.weights import cache_folders, folder_size, hub_reachable, locate, offline, pretrained_ref

    table = Table(title="alfa-ad doctor", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("status")
    rows = [("python", platform.python_version())]
    rows += [(name, _version(mod)) for name, mod in (("alfa-ad", "alfa_ad"), ("torch", "torch"),
                                                     ("open_clip", "open_clip"), ("numpy", "numpy"),
                                                     ("pillow", "PIL"), ("scipy", "scipy"), ("scikit-learn", "sklearn"))]
    if torch.cuda.is_available():
        rows.append(("device", f"cuda ({torch.cuda.get_device_name(0)}), float16"))
    else:
        rows.append(("device", "cpu (no CUDA), float32"))
    rows.append(("threads", f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"))
    cache = default_cache_dir()
    rows.append(("alfa-ad cache", f"{cache.resolve()} ({folder_size(cache) / 2**20:,.1f} MB)"))
    for name, path in cache_folders().items():
        rows.append((name, f"{path} ({folder_size(path) / 2**20:,.1f} MB)"))
    ok = True
    try:
        ref = pretrained_ref(model, pretrained)
        path = locate(ref)
    except ValueError as exc:
        ref, path, ok = None, None, False
        rows.append(("weights", f"[red]{escape(str(exc))}[/]"))
    if ref is not None:
        if path is not None:
            rows.append(("weights", f"[green]{model}/{pretrained} cached[/] at {escape(str(path))}"))
        elif offline():
            ok = False
            rows.append(("weights", f"[red]{model}/{pretrained} not cached and HF_HUB_OFFLINE is set[/]: "
                                    "use `alfa-ad weights download` elsewhere and --checkpoint here"))
        elif hub_reachable(timeout):
            rows.append(("weights", f"{model}/{pretrained} not cached; the hub is reachable, the first run downloads them"))
        else:
            ok = False
            rows.append(("weights", f"[red]{model}/{pretrained} not cached and the hub cannot be reached[/]: "
                                    "use `alfa-ad weights download` elsewhere and --checkpoint here, or --weights random"))
    llm, _ = _llm_status(base_url, timeout)
    rows.append(("LLM endpoint", escape(llm)))
    for what, status in rows:
        table.add_row(what, status)
    console.print(table)
    console.print("[green]ready: `alfa-ad run` can use the default weights[/]" if ok else
                  "[red]not ready: the default weights cannot be loaded (see 'weights' above)[/]")
    if not ok:
        raise typer.Exit(1)
