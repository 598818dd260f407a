"""Service configuration: one flat record (a ``--config`` JSON/YAML file and/or CLI options)
split into Detector options and service options.

A record's keys are :class:`~alfa_ad.detector.Detector` keyword arguments (``method``,
``weights``, ``model``, ``scales``, ...; method options such as ``use_text`` too) plus the
service options of :class:`ServiceOptions` (classes, references, calibration, batching,
limits, binding).  :func:`build_detector` is the one place that turns the Detector part
into a Detector (``Detector.from_config`` of its :class:`~alfa_ad.config.DetectorConfig`).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import ConfigFieldError, DetectorConfig
from ..detector import Detector
from ..references import ShotsError, parse_shots
from ..registry import METHODS
from ..scoring.tiling import parse_tile

CONFIG_FIELDS = tuple(DetectorConfig.__dataclass_fields__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ConfigError(ValueError):
    """An unusable configuration; ``str()`` is one line naming the culprit."""


class ServiceOptions(BaseModel):
    """What the service adds to a Detector: classes, references, thresholds, batching, limits."""

    model_config = ConfigDict(extra="forbid")

    classes: list[str] = Field(default_factory=lambda: ["object"], description="Class names served ('mvtec', 'visa' or a list).")
    shots: str = Field("0", description="Normal references per class: 0 (zero-shot), k, or all.")
    data: Optional[Path] = Field(None, description="MVTec-layout root: references from <data>/<class>/train/good.")
    normals: Union[Path, dict[str, Path], None] = Field(None, description="Folder of references (or DIR/<class>), or {class: folder}; musc: its pool.")
    coreset: Optional[int] = Field(4096, ge=1, description="Most memory-bank features per layer.")
    calibrate: Union[Path, dict[str, Path], None] = Field(None, description="Folder of extra normal images for thresholds (or {class: folder}).")
    fpr: float = Field(0.01, gt=0, lt=1, description="Target false-positive rate of the thresholds.")
    max_batch: int = Field(8, ge=1, le=256, description="Largest micro-batch.")
    max_wait_ms: float = Field(10.0, ge=0, le=10_000, description="Longest a request waits for a batch to fill.")
    queue_size: int = Field(64, ge=1, le=100_000, description="Requests waiting for the model beyond which 503 is answered.")
    timeout_s: float = Field(30.0, gt=0, description="Longest a request waits for its result (queue and model).")
    max_body_mb: float = Field(20.0, gt=0, description="Largest request body in MB.")
    max_pixels: int = Field(40_000_000, ge=1, description="Largest decoded image (width x height).")
    max_tiles: int = Field(16, ge=1, le=4096, description="Most model passes (tiles) one image may cost; more: 413.")
    map_size: int = Field(256, ge=8, le=4096, description="Longest side of the returned anomaly-map PNG.")
    decode_workers: int = Field(2, ge=1, le=64, description="Threads decoding images and encoding responses.")
    threads: Optional[int] = Field(None, ge=1, le=1024, description="torch intra-op threads (default: torch's choice).")
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535)
    token_file: Optional[Path] = Field(None, description="File holding the bearer token (none: no auth).")
    access_log: str = Field("-", description="JSON-lines log: '-' stderr, 'off', or a file path.")

    @field_validator("classes", mode="before")
    @classmethod
    def _classes(cls, value: Any) -> list[str]:
        from ..llm.generate import resolve_classes

        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        return resolve_classes(str(value))

    @field_validator("shots", mode="before")
    @classmethod
    def _shots(cls, value: Any) -> str:
        try:
            return str(parse_shots(value))
        except ShotsError as exc:
            raise ValueError(exc.problem) from None

    @property
    def per_class(self) -> bool:
        """One fitted state (memory bank, thresholds) per class."""
        return self.shots != "0" or self.calibrate is not None

    def check_folders(self) -> None:
        """ConfigError naming the first ``data``/``normals``/``calibrate`` folder that does not exist."""
        for which in ("data", "normals", "calibrate"):
            value = getattr(self, which)
            for folder in (value.values() if isinstance(value, dict) else [value]):
                if folder is not None and not Path(folder).is_dir():
                    raise ConfigError(f"{folder}: --{which} folder not found")

    def folder_for(self, which: str, class_name: str) -> Optional[Path]:
        value = getattr(self, which)
        if isinstance(value, dict):
            return value.get(class_name)
        return value


SERVICE_KEYS = frozenset(ServiceOptions.model_fields)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON (``.json``) or YAML (anything else) file holding one mapping."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config ({exc.strerror or exc})") from exc
    try:
        if file.suffix.lower() == ".json":
            record = json.loads(text)
        else:
            import yaml

            record = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - json / yaml syntax errors, reported on one line
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{file}: not valid {'JSON' if file.suffix.lower() == '.json' else 'YAML'} ({first})") from exc
    if record is None:
        return {}
    if not isinstance(record, dict):
        raise ConfigError(f"{file}: expected a mapping of options, got {type(record).__name__}")
    return {str(k).replace("-", "_"): v for k, v in record.items()}


def split_record(record: dict[str, Any]) -> tuple[dict[str, Any], ServiceOptions]:
    """``(Detector options, ServiceOptions)`` from one flat record; ConfigError on bad values."""
    record = dict(record)
    if "class_name" in record:
        if "classes" in record:
            raise ConfigError("give either classes or class_name, not both")
        record["classes"] = [record.pop("class_name")]
    service = {k: v for k, v in record.items() if k in SERVICE_KEYS}
    detector = {k: v for k, v in record.items() if k not in SERVICE_KEYS}
    try:
        options = ServiceOptions.model_validate(service)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "options"
        raise ConfigError(f"{where}: {err['msg']} (got {err.get('input')!r})") from None
    check_pool(detector_kwargs(detector).get("method", "alfa"), options)  # validate now, before any model loads
    return detector, options


def check_pool(method: str, options: ServiceOptions) -> None:
    """A mutual method (musc) scores each upload against a fixed pool of its class's images:
    ``normals`` (DIR, DIR/<class> or {class: DIR}) or ``data`` (<class>/train/good) names it,
    ``shots`` stays 0 and there is no calibration (ConfigError, one line)."""
    if not METHODS.declares(method, "mutual"):
        return
    if options.normals is None and options.data is None:
        raise ConfigError(f"method: {method} scores each upload against a pool of unlabeled images of its class; "
                          "name it with normals: DIR (or DIR/<class>, or {class: DIR}) or data: an MVTec root "
                          "(<class>/train/good)")
    if options.shots != "0":
        raise ConfigError(f"shots: {method} takes no normal references; its pool is the normals/data images "
                          f"(at most group - 1 of them, drawn with seed beyond); use shots 0, got {options.shots}")
    if options.calibrate is not None:
        raise ConfigError(f"calibrate: {method} is served without thresholds (Detector.calibrate refuses it)")


def read_token(path: str | Path) -> str:
    """The bearer token: the file's one non-empty line (never logged or echoed)."""
    file = Path(path)
    try:
        token = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read token file ({exc.strerror or exc})") from None
    if not token or len(token.splitlines()) != 1:
        raise ConfigError(f"{file}: token file must hold one non-empty line")
    return token


def _parameters(fn) -> set[str]:
    return {n for n, p in inspect.signature(fn).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}


def detector_kwargs(record: dict[str, Any]) -> dict[str, Any]:
    """Validate Detector options (:class:`~alfa_ad.config.DetectorConfig` fields, the method's
    own options, ``cache_dir``) and return them as flat Detector keyword arguments."""
    kwargs = {k.replace("-", "_"): v for k, v in record.items() if v is not None}
    method = kwargs.get("method", "alfa")
    if method not in METHODS:
        raise ConfigError(f"method: must be one of {', '.join(METHODS.names())}, got {method!r}")
    known = set(CONFIG_FIELDS) | _parameters(METHODS.get(method).__init__) | {"cache_dir"}
    known -= {"backbone", "options"}  # method options are given flat, not as an "options" mapping
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for method {method}; Detector and {method} options: "
                          f"{', '.join(sorted(known))}; service options: {', '.join(sorted(SERVICE_KEYS))}")
    for key in ("scales", "window_strides"):
        if key in kwargs:
            given = kwargs[key]
            given = [given] if isinstance(given, int) and not isinstance(given, bool) else given
            try:
                if isinstance(given, bool) or any(isinstance(v, (bool, float)) for v in given):
                    raise TypeError
                values = [int(v) for v in (given.split(",") if isinstance(given, str) else given) if str(v).strip()]
            except (TypeError, ValueError):
                raise ConfigError(f"{key}: must be integers, e.g. 2,3; got {kwargs[key]!r}") from None
            if not values or min(values) < 1:
                raise ConfigError(f"{key}: must be integers >= 1, got {kwargs[key]!r}")
            kwargs[key] = tuple(values)
    if kwargs.get("window_strides") and METHODS.declares(method, "patches_only"):
        raise ConfigError(f"window_strides: {method} scores patches, not windows")
    if "batch_size" in kwargs and (not isinstance(kwargs["batch_size"], int) or kwargs["batch_size"] < 1):
        raise ConfigError(f"batch_size: must be an integer >= 1, got {kwargs['batch_size']!r}")
    for key in ("prompts", "checkpoint"):
        if key in kwargs:
            if not Path(kwargs[key]).is_file():
                raise ConfigError(f"{kwargs[key]}: {key} file not found")
            kwargs[key] = str(kwargs[key])
    try:
        detector_config(kwargs)
        parse_tile(kwargs.get("tile", "auto"))
    except ConfigFieldError as exc:
        raise ConfigError(f"{exc.field}: {exc.problem}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(" ".join(str(exc).split())) from None
    return kwargs


def detector_config(kwargs: dict[str, Any]) -> DetectorConfig:
    """The :class:`DetectorConfig` of validated Detector keyword arguments (method options in ``options``)."""
    fields = {k: v for k, v in kwargs.items() if k in CONFIG_FIELDS}
    options = {k: v for k, v in kwargs.items() if k not in CONFIG_FIELDS and k != "cache_dir"}
    return DetectorConfig(**fields, options=options)


def build_detector(record: dict[str, Any], backbone=None) -> Detector:
    """The Detector for a record's Detector options (``Detector.from_config``); ``backbone``
    shares an already loaded model."""
    kwargs = detector_kwargs(record)
    extra = {"cache_dir": kwargs["cache_dir"]} if "cache_dir" in kwargs else {}
    return Detector.from_config(detector_config(kwargs), backbone=backbone, **extra)
