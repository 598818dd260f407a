"""``alfa-ad generate-prompts``: LLM prompt libraries."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..prompting.library import LibraryError
from .common import app, console, fail, say


@app.command("generate-prompts")
def generate_prompts(
    classes: str = typer.Option(..., "--classes", help="mvtec, visa, or a comma list of class names."),
    model: str = typer.Option("gpt-4o-mini", "--model", help="LLM model name on the server."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (default $OPENAI_BASE_URL or OpenAI)."),
    out: Path = typer.Option(Path("prompts/generated.json"), "--out", help="Prompt library file to write or complete."),
    refresh: bool = typer.Option(False, "--refresh", help="Ask again even when replies are cached or classes done."),
    temperature: float = typer.Option(0.0, "--temperature"),
    max_tokens: int = typer.Option(1024, "--max-tokens"),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per request."),
    retries: int = typer.Option(4, "--retries", help="Retries after the first try, with backoff."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Disk cache (default $ALFA_AD_CACHE or ./cache)."),
) -> None:
    """Ask an LLM (OpenAI protocol) for normal/abnormal descriptions of each class; write a prompt library.

    The API key comes from $OPENAI_API_KEY and is never logged, cached or written.
    """
    from ..prompting.llm import LLMConfig, LLMError, generate_library, resolve_classes

    try:
        names = resolve_classes(classes)
        config = LLMConfig(model=model, base_url=base_url, temperature=temperature, max_tokens=max_tokens,
                           timeout=timeout, max_retries=retries)
    except ValueError as exc:
        fail(str(exc))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("generating", total=len(names))

        def on_progress(ev) -> None:
            if ev.status in ("done", "skipped", "failed"):
                progress.update(task, advance=1, description=f"{ev.status} {escape(ev.class_name)}")
            if ev.status == "failed":
                progress.console.print(f"[yellow]failed:[/] {escape(ev.detail)}", soft_wrap=True, highlight=False)

        try:
            library, errors = generate_library(names, config, out, cache_dir=cache_dir, refresh=refresh,
                                               on_progress=on_progress)
        except (LLMError, LibraryError, ValueError, OSError) as exc:
            fail(str(exc))
    done = [c for c in names if c in library.get("classes", {})]
    for c in done:
        entry = library["classes"][c]
        say(f"{c}: {len(entry['normal'])} normal, {len(entry['abnormal'])} abnormal, "
            f"{len(entry.get('descriptors', []))} descriptors")
    if out.is_file():
        say(f"{len(done)} of {len(names)} classes in {out}; {len(errors)} failed")
    else:
        say(f"no library written to {out}: all {len(names)} classes failed")
    if errors:
        raise typer.Exit(1)


