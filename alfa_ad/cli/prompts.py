"""``alfa-ad generate-prompts``: LLM prompt libraries."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..prompting.library import LibraryError
from .common import app, console, fail, say


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        fail(f"{what} must be comma-separated numbers, got {text!r}")
    if not values:
        fail(f"{what} needs at least one value")
    return values


class _ClipText:
    """CLIP text embeddings (open_clip backbone) for near-duplicate removal."""

    def __init__(self, weights: str) -> None:
        from ..model import WeightsUnavailableError, load_backbone

        if weights not in ("pretrained", "planted"):
            fail(f"--embed-dedupe must be pretrained or planted, got {weights!r}")
        try:
            self.backbone = load_backbone(weights=weights, device="cpu")
        except WeightsUnavailableError as exc:
            fail(f"--embed-dedupe: {exc}")
        self.label = self.backbone.weights.label

    def __call__(self, texts):
        return self.backbone.encode_text(list(texts)).float().numpy()


def _clip_embedder(weights: str) -> _ClipText:
    return _ClipText(weights)


@app.command("generate-prompts")
def generate_prompts(
    classes: str = typer.Option(..., "--classes", help="mvtec, visa, or a comma list of class names."),
    model: str = typer.Option("gpt-4o-mini", "--model", help="LLM model name on the server."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint (default $OPENAI_BASE_URL or OpenAI)."),
    out: Path = typer.Option(Path("prompts/generated.json"), "--out", help="Prompt library file to write or complete."),
    rules: Optional[Path] = typer.Option(None, "--rules", help="Normality rules (plain text or YAML per class): "
                                         "conditions in the queries, and prompts that follow / break each rule."),
    refresh: bool = typer.Option(False, "--refresh", help="Ask again even when replies are cached or classes done."),
    target: int = typer.Option(80, "--target", help="Stop asking for a side once it has this many prompts."),
    max_rounds: int = typer.Option(8, "--max-rounds", help="Requests per side at most (paraphrase, starter, "
                                   "temperature and seed change every round)."),
    temperatures: str = typer.Option("0.7,0.9,1.0", "--temperatures", help="Sampling temperatures, used in turn."),
    top_p: float = typer.Option(0.95, "--top-p"),
    n_items: int = typer.Option(20, "--n-items", help="List length asked for per request."),
    max_per_side: int = typer.Option(120, "--max-per-side", help="Prompts kept per side at most."),
    style: str = typer.Option("chat", "--style", help="chat: the started list ends the user message (any server); "
                              "chatml: it opens the assistant turn, sent to /completions as a ChatML prompt "
                              "(Qwen and other ChatML models on llama.cpp, vLLM)."),
    max_tokens: int = typer.Option(1024, "--max-tokens"),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per request."),
    retries: int = typer.Option(4, "--retries", help="Retries after the first try, with backoff."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Disk cache (default $ALFA_AD_CACHE or ./cache)."),
    embed_dedupe: Optional[str] = typer.Option(None, "--embed-dedupe", help="Also drop prompts whose CLIP text "
                                               "embedding has cosine >= 0.95 with a kept one, with these weights: "
                                               "pretrained (the default open_clip model; needs its weights), "
                                               "or planted (test model)."),
) -> None:
    """Ask an LLM (OpenAI protocol) for normal/abnormal descriptions of each class; write a prompt library.

    Every raw reply and every filter decision is stored in the library.  The API key
    comes from $OPENAI_API_KEY and is never logged, cached or written.
    """
    from ..llm.generate import GenerationSettings, LLMConfig, LLMError, generate_library, resolve_classes
    from ..llm.rules import RulesError, load_rules

    try:
        names = resolve_classes(classes)
        config = LLMConfig(model=model, base_url=base_url, max_tokens=max_tokens, timeout=timeout,
                           max_retries=retries)
        settings = GenerationSettings(target=target, max_rounds=max_rounds,
                                      temperatures=_floats(temperatures, "--temperatures"), top_p=top_p,
                                      n_items=n_items, max_per_side=max_per_side, style=style)
        rule_set = load_rules(rules) if rules is not None else None
    except (ValueError, RulesError) as exc:
        fail(str(exc))
    embed = None
    if embed_dedupe is not None:
        embed = _clip_embedder(embed_dedupe)
        settings = GenerationSettings(**{**settings.__dict__, "embedding": embed.label})
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
                                               on_progress=on_progress, settings=settings, rules=rule_set,
                                               embed=embed)
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
