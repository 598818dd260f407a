"""A vision-language model's second opinion: the request, the JSON verdict, the cache.

Following seed 001 ("Customizing Visual-Language Foundation Models for
Multi-modal Anomaly Detection and Reasoning"), the request carries a task
description, the class context, the normality rules, the image, our heat-map
overlay as an expert visual prompt, the LLM descriptors kept for the image and
up to k normal reference images.  Images travel as ``data:image/png;base64``
URIs in OpenAI-protocol ``image_url`` parts, which OpenAI, vLLM, Ollama and
llama.cpp's server (with a vision model) accept.

The reply must be one JSON object (:class:`Verdict`); a reply that is not is
retried like a failed request (same client, same backoff and one-line errors as
generate-prompts).  Valid replies are cached in ``<cache_dir>/vlm-replies``
under a hash of server URL, model, the full messages (so the images and the
prompt) and sampling -- never the API key.
"""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..io.images import load_image
from .classes import class_context, query_name
from .client import LLMClient, open_reply_cache

__all__ = ["Verdict", "TASK_DESCRIPTION", "image_data_uri", "build_vlm_messages", "parse_verdict", "ask_verdict",
           "open_vlm_cache", "MAX_SIDE"]

MAX_SIDE = 768   # longest side of an image sent to the VLM, in pixels

TASK_DESCRIPTION = (
    "You are an expert visual inspector for industrial anomaly detection. You are shown a photo of an object "
    "and must decide whether it is normal or anomalous (has a defect, is damaged, incomplete, contaminated, "
    "misplaced, or breaks a normality rule). An automatic detector has already looked at it: its heat map "
    "marks the regions it finds most anomalous in red, and it may be wrong. Normal reference photos of the "
    "same kind of object show what a good one looks like."
)


class Verdict(BaseModel):
    """The JSON object the VLM must answer with."""

    model_config = ConfigDict(extra="ignore")

    anomalous: bool = Field(description="true if the object in the inspected image is anomalous")
    defect_type: str | None = Field(None, description="short name of the defect, or null when normal")
    location: str | None = Field(None, description="where the defect is in the image, or null when normal")
    reason: str = Field(description="one or two sentences of visual evidence")
    confidence: float = Field(ge=0.0, le=1.0, description="confidence in the verdict, from 0 to 1")

    @field_validator("reason")
    @classmethod
    def _reason_not_empty(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("reason must not be empty")
        return value


_SCHEMA_HINT = ('{"anomalous": true or false, "defect_type": "short name or null", '
                '"location": "where in the image, or null", "reason": "one or two sentences", '
                '"confidence": number from 0 to 1}')
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def image_data_uri(image: Any, max_side: int = MAX_SIDE) -> str:
    """``data:image/png;base64,...`` of an image (path, PIL or array), longer side at most ``max_side``."""
    im = load_image(image)
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_part(uri: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": uri}}


def build_vlm_messages(
    image: Any,
    class_name: str,
    *,
    overlay: Any = None,
    normals: Sequence[Any] = (),
    rules: Sequence[str] = (),
    descriptors: Sequence[str] = (),
    score: float | None = None,
    context: str | None = None,
    max_side: int = MAX_SIDE,
) -> list[dict[str, Any]]:
    """The chat messages of one VLM request (system: task and answer format; user: text and images)."""
    name = query_name(class_name)
    ctx = class_context(class_name) if context is None else context
    lines = [f"Object class: {name}."]
    if ctx:
        lines.append(f"Class context: the images show {ctx}.")
    if rules:
        lines.append("Normality rules (a normal object satisfies all of them):")
        lines += [f"- {r}" for r in rules]
    if score is not None:
        lines.append(f"Detector anomaly score: {float(score):.3f} (0 = normal, 1 = anomalous).")
    if descriptors:
        lines.append("Descriptions of possible anomalies that best match this image, according to the detector:")
        lines += [f"- {d}" for d in descriptors]
    content: list[dict[str, Any]] = [{"type": "text", "text": "\n".join(lines)},
                                     {"type": "text", "text": "Image to inspect:"},
                                     _image_part(image_data_uri(image, max_side))]
    if overlay is not None:
        content += [{"type": "text", "text": "Detector heat map (left: the image; right: the heat map over it, "
                                             "red = most anomalous):"},
                    _image_part(image_data_uri(overlay, max_side))]
    for i, ref in enumerate(normals, 1):
        content += [{"type": "text", "text": f"Normal reference {i} of {len(normals)}:"},
                    _image_part(image_data_uri(ref, max_side))]
    content.append({"type": "text", "text": f"Is the inspected {name} anomalous? Answer with only one JSON object, "
                                            f"no other text: {_SCHEMA_HINT}"})
    system = f"{TASK_DESCRIPTION} Answer with only one JSON object of this form: {_SCHEMA_HINT}"
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


def parse_verdict(text: str | None) -> Verdict | None:
    """The :class:`Verdict` in a reply (a bare object or one in a ```json fence), or None."""
    if not isinstance(text, str):
        return None
    m = _FENCE.search(text)
    body = m.group(1) if m else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(body[start:end + 1])
        return Verdict.model_validate(data)
    except (ValueError, ValidationError):
        return None


def open_vlm_cache(cache_dir: Any = None):
    """The reply cache ``<cache_dir>/vlm-replies`` (diskcache)."""
    return open_reply_cache(cache_dir, name="vlm-replies")


def _stats(messages: list[dict[str, Any]]) -> dict[str, int]:
    parts = [p for m in messages if isinstance(m.get("content"), list) for p in m["content"]]
    return {"images": sum(p.get("type") == "image_url" for p in parts)}


def ask_verdict(
    client: LLMClient,
    messages: list[dict[str, Any]],
    *,
    cache: Any = None,
    refresh: bool = False,
    label: str = "VLM",
) -> dict[str, Any]:
    """Send ``messages`` (or take the cached reply); return a JSON-ready record with the verdict.

    Raises :class:`~alfa_ad.llm.client.LLMError` (one line) when no valid verdict comes back
    within the client's retries.
    """
    key = client.cache_key(messages, kind="vlm")
    hit = None
    if cache is not None and not refresh:
        hit = cache.get(key)
        if not (isinstance(hit, dict) and parse_verdict(hit.get("content")) is not None):
            hit = None
    cached = hit is not None
    if hit is None:
        content, served = client.chat(messages, label=label, validate=lambda c: parse_verdict(c) is not None,
                                      invalid="reply was not a valid JSON verdict")
        hit = {"content": content, "served_model": served,
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if cache is not None:
            cache.set(key, hit)
    verdict = parse_verdict(hit["content"])
    assert verdict is not None
    return {"verdict": verdict.model_dump(), "raw_reply": hit["content"], "model": client.model,
            "served_model": hit.get("served_model"), "base_url": client.base_url, "date": hit.get("date"),
            "from_cache": cached, **_stats(messages)}


def heat_overlay(image: Any, anomaly_map: np.ndarray) -> Image.Image:
    """Our overlay (image | heat map over it), colours spanning the map's range, for the VLM."""
    from ..io.overlay import render_overlay

    im = load_image(image)
    lo, hi = float(np.min(anomaly_map)), float(np.max(anomaly_map))
    return render_overlay(im, anomaly_map, vmin=lo, vmax=max(hi, lo + 1e-6))
