"""``alfa-ad explain``: a vision-language model's second opinion on one image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..model.names import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import WEIGHTS_HELP, app, fail, say


@app.command("explain")
def explain(
    image: Path = typer.Argument(..., help="The image to explain."),
    vlm_model: str = typer.Option(..., "--vlm-model", help="Vision-language model name on the server "
                                  "(e.g. gpt-4o-mini, a vLLM or Ollama vision model)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint "
                                           "(default $OPENAI_BASE_URL or OpenAI)."),
    class_name: str = typer.Option("object", "--class-name", help="What the image shows (e.g. bottle, metal_nut)."),
    normals: Optional[List[Path]] = typer.Option(None, "--normals", help="Normal reference image or folder "
                                                 "(repeatable): few-shot scoring and references for the VLM."),
    k: int = typer.Option(3, "--k", help="Normal reference images sent to the VLM at most."),
    rules: Optional[Path] = typer.Option(None, "--rules", help="Normality rules (plain text or YAML per class)."),
    descriptors: int = typer.Option(5, "--descriptors", help="LLM descriptors (best-matching) sent to the VLM."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the result as JSON to this file."),
    method: str = typer.Option("alfa", "--method", help="alfa or winclip (our score and heat map)."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt library JSON (default: the shipped ones)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="open_clip model name."),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, "--pretrained", help="open_clip pretrained tag."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Local weights file for --model."),
    weights: str = typer.Option("pretrained", "--weights", help=WEIGHTS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: CUDA when present)."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per VLM request."),
    retries: int = typer.Option(4, "--retries", help="Retries after the first try (errors and malformed verdicts)."),
    refresh: bool = typer.Option(False, "--refresh", help="Ask again even when the verdict is cached."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Disk cache (default $ALFA_AD_CACHE or ./cache)."),
) -> None:
    """Score IMAGE, then ask a vision-language model (OpenAI protocol) for a JSON verdict.

    The request carries a task description, the class context, the normality rules
    (--rules), the image and our heat-map overlay (as data URIs), the best-matching
    LLM descriptors and up to --k normal reference images.  The reply must be a JSON
    object {anomalous, defect_type, location, reason, confidence}; malformed replies
    are retried, valid ones cached (keyed by server, model, images and prompt, never
    by the API key).  The VLM never changes our score.  The API key comes from
    $OPENAI_API_KEY and is never logged, cached or written.
    """
    from ..detector import Detector
    from ..llm.second_opinion import explain_image
    from ..io.atomic import atomic_write_text
    from ..io.images import InputError, iter_image_files
    from ..model.weights import WeightsUnavailableError
    from ..llm.client import LLMConfig, LLMError
    from ..prompting.library import LibraryError
    from ..llm.rules import RulesError, load_rules

    if not image.is_file():
        fail(f"{image}: image not found")
    if k < 0 or descriptors < 0:
        fail("--k and --descriptors must be >= 0")
    refs: list[Path] = []
    try:
        for p in normals or []:
            refs += iter_image_files(p) if p.is_dir() else [p]
        rule_set = load_rules(rules) if rules is not None else None
        config = LLMConfig(model=vlm_model, base_url=base_url, timeout=timeout, max_retries=retries,
                           max_tokens=512)
    except (InputError, RulesError, ValueError) as exc:
        fail(str(exc))
    for p in refs:
        if not p.is_file():
            fail(f"{p}: normal reference not found")
    try:
        det = Detector(method=method, model=model, pretrained=pretrained,
                       checkpoint=str(checkpoint) if checkpoint else None, weights=weights, device=device,
                       prompts=str(prompts) if prompts else None, cache_dir=cache_dir if cache_dir is not None else True)
        if refs:
            det.fit_normals(refs)
        result = explain_image(det, image, class_name, config=config, normals=refs or None, k=k, rules=rule_set,
                               n_descriptors=descriptors, cache_dir=cache_dir, refresh=refresh)
    except (WeightsUnavailableError, LibraryError, InputError, LLMError, ValueError) as exc:
        fail(str(exc))
    text = json.dumps({"image": str(image), **result}, indent=1)
    if out is not None:
        atomic_write_text(out, text + "\n")
    v = result["vlm"]["verdict"]
    say(f"{image}: our score {result['score']:.3f} ({result['weights']}); VLM {result['vlm']['model']}: "
        f"{'anomalous' if v['anomalous'] else 'normal'} (confidence {v['confidence']:.2f})"
        + (f", {v['defect_type']}" if v.get("defect_type") else "")
        + (f" at {v['location']}" if v.get("location") else "") + f": {v['reason']}")
    typer.echo(text)
