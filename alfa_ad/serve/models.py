"""Request and response bodies of the HTTP API (pydantic), and result -> response."""

from __future__ import annotations

import base64
import io
from typing import Any, Literal, Optional

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from ..results import DetectionResult, Thresholds


class DetectOptions(BaseModel):
    """Fields of a detect request besides the image (multipart form fields or JSON keys)."""

    model_config = ConfigDict(extra="forbid")

    class_name: Optional[str] = Field(None, description="A served class (see GET /v1/classes); optional when one class is served.")
    return_map: bool = Field(False, description="Return the anomaly map as a small 8-bit PNG (base64).")
    return_prompts: bool = Field(False, description="Return the prompts kept by run-time adaptation.")
    explain: int = Field(0, ge=0, le=50, description="Return the top-N LLM descriptors by similarity.")


class DetectJSON(DetectOptions):
    """``application/json`` body: the image as base64."""

    image: str = Field(..., description="The encoded image file (PNG, JPEG, BMP, TIFF, WebP) as base64.")


class Descriptor(BaseModel):
    text: str
    side: str = Field(..., description="normal or abnormal")
    source: str = Field(..., description="the prompt source, or llm-descriptor")
    similarity: float


class DetectResponse(BaseModel):
    class_name: str
    score: float = Field(..., description="Image anomaly score in [0, 1].")
    global_score: float = Field(..., description="Class-token score.")
    map_max: float
    decision: Optional[Literal["anomalous", "normal"]] = Field(None, description="score > threshold, when calibrated.")
    threshold: Optional[float] = Field(None, description="Image threshold, when calibrated.")
    pixel_threshold: Optional[float] = None
    mask_area: Optional[float] = Field(None, description="Fraction of the image in the defect mask, when calibrated.")
    width: int
    height: int
    tiles: int = Field(1, description="Tiles the image was scored in (1: whole image).")
    anomaly_map_png: Optional[str] = Field(None, description="base64 PNG, 8-bit grey (255 = score 1), longest side <= map_size.")
    kept_prompts: Optional[dict[str, list[str]]] = None
    n_prompts: dict[str, int]
    descriptors: Optional[list[Descriptor]] = None
    method: str
    scores_depend_on_the_pool: Optional[str] = Field(None, description="musc: the score depends on the class's "
                                                     "pool, fixed at start-up (how); None for other methods.")
    weights: str = Field(..., description="Weights label; says 'random weights' or 'planted weights' when they are.")
    weights_source: dict[str, Any]
    version: str
    batch_size: int = Field(..., description="Requests in the micro-batch this one was scored in.")
    queue_ms: float
    model_ms: float


class ClassInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    class_name: str


class ClassesResponse(BaseModel):
    classes: list[ClassInfo]
    config: dict[str, Any] = Field(default_factory=dict, description="Detector configuration, classes, shots, fpr.")
    method: str
    weights: str
    weights_source: dict[str, Any]
    version: str


def map_png(anomaly_map: np.ndarray, max_side: int) -> str:
    """An (H, W) map in [0, 1] as a base64 8-bit PNG whose longest side is at most ``max_side``."""
    h, w = anomaly_map.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    im = Image.fromarray(np.ascontiguousarray(anomaly_map, dtype=np.float32))  # mode F
    if size != (w, h):
        im = im.resize(size, Image.BILINEAR)
    grey = Image.fromarray(np.round(np.clip(np.asarray(im), 0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    grey.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def to_response(result: DetectionResult, class_name: str, options: DetectOptions, thresholds: Thresholds | None,
                weights_source: dict[str, Any], version: str, batch: Any, map_size: int,
                score_note: str | None = None) -> DetectResponse:
    h, w = result.anomaly_map.shape
    return DetectResponse(
        class_name=class_name,
        score=result.score,
        global_score=result.global_score,
        map_max=float(result.anomaly_map.max()) if result.anomaly_map.size else 0.0,
        decision=None if result.decision is None else ("anomalous" if result.decision else "normal"),
        threshold=None if thresholds is None else thresholds.image,
        pixel_threshold=None if thresholds is None else thresholds.pixel,
        mask_area=result.mask_area,
        width=w,
        height=h,
        tiles=result.tiles,
        anomaly_map_png=map_png(result.anomaly_map, map_size) if options.return_map else None,
        kept_prompts=result.kept_prompts if options.return_prompts else None,
        n_prompts=result.n_prompts,
        descriptors=[Descriptor(text=d.text, side=d.side, source=d.source, similarity=d.similarity)
                     for d in result.descriptors[: options.explain]] if options.explain else None,
        method=result.method,
        scores_depend_on_the_pool=score_note,
        weights=result.weights,
        weights_source=weights_source,
        version=version,
        batch_size=batch.size,
        queue_ms=round(batch.queued_s * 1000, 3),
        model_ms=round(batch.model_s * 1000, 3),
    )
