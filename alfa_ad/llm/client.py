"""The OpenAI-protocol chat client shared by prompt generation and the VLM: bounded
retries with backoff, Retry-After, one-line errors without secrets, cache keys."""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from ..io.paths import default_cache_dir

__all__ = ["LLMError", "LLMConfig", "LLMClient", "open_reply_cache"]

class LLMError(RuntimeError):
    """Generation failed; the message is one line naming the class and the cause."""


@dataclass
class LLMConfig:
    """How to reach the LLM.  ``api_key`` never appears in repr, logs, caches or files.

    ``base_url`` None -> ``$OPENAI_BASE_URL`` or OpenAI's default; ``api_key`` None ->
    ``$OPENAI_API_KEY`` or the placeholder ``"not-needed"`` (fine for local servers).
    ``max_retries`` is the number of retries after the first try.
    """

    model: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    temperature: float = 0.0
    max_tokens: int = 1024
    timeout: float = 60.0
    max_retries: int = 4
    backoff: float = 1.0
    backoff_max: float = 30.0
    retry_after_cap: float = 60.0
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.model or not str(self.model).strip():
            raise ValueError("LLMConfig.model must be a non-empty model name")
        if self.max_retries < 0:
            raise ValueError("LLMConfig.max_retries must be >= 0")
        if self.timeout <= 0:
            raise ValueError("LLMConfig.timeout must be > 0 seconds")
        if self.max_tokens <= 0:
            raise ValueError("LLMConfig.max_tokens must be > 0")

    def resolved_api_key(self) -> str:
        return self.api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"

    def sampling(self) -> dict[str, Any]:
        """Sampling parameters sent with each request (None values are not sent)."""
        params = {"temperature": self.temperature, "max_tokens": self.max_tokens,
                  "top_p": self.top_p, "seed": self.seed}
        return {k: v for k, v in params.items() if v is not None}


def _display_url(url: str) -> str:
    """``url`` without credentials or query string (safe to print and to store)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")
    except ValueError:
        return "<invalid url>"


def parse_retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


class LLMClient:
    """An ``openai.OpenAI`` chat client with our own bounded retries and backoff."""

    def __init__(self, config: LLMConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        import openai

        self.config = config
        self._openai = openai
        self._sleep = sleep
        self._secrets = [s for s in {config.resolved_api_key(), config.api_key,
                                     os.environ.get("OPENAI_API_KEY")} if s and len(s) >= 4]
        kwargs: dict[str, Any] = {"api_key": config.resolved_api_key(),
                                  "timeout": config.timeout, "max_retries": 0}
        if config.base_url is not None:
            kwargs["base_url"] = config.base_url
        self._client = openai.OpenAI(**kwargs)
        self.base_url = _display_url(str(self._client.base_url))
        self.model = config.model

    def __repr__(self) -> str:
        return f"LLMClient(model={self.model!r}, base_url={self.base_url!r})"

    def scrub(self, text: str) -> str:
        """One line, no secrets, bounded length."""
        text = str(text)
        for s in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(s, "***")
        text = " ".join(text.split())
        return text if len(text) <= 400 else text[:397] + "..."

    def cache_key(self, messages: Any, sampling: dict[str, Any] | None = None, *, kind: str = "chat") -> str:
        """Hash of everything that shapes the reply (URL, model, messages or prompt, sampling) -- not the key.

        ``kind`` separates request kinds ("chat", "completion", "vlm") that could share a payload.
        """
        payload = {"v": 1, "base_url": self.base_url, "model": self.model,
                   "messages": messages, "sampling": self.sampling(sampling)}
        if kind != "chat":
            payload["kind"] = kind
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        prefix = "llm-reply:" if kind == "chat" else f"llm-{kind}:"
        return prefix + hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def sampling(self, override: dict[str, Any] | None = None) -> dict[str, Any]:
        """The config's sampling parameters with ``override`` applied (None values dropped)."""
        params = self.config.sampling()
        for k, v in (override or {}).items():
            if v is None:
                params.pop(k, None)
            else:
                params[k] = v
        return params

    def _backoff(self, attempt: int) -> float:
        base = self.config.backoff * (2 ** (attempt - 1))
        return min(self.config.backoff_max, base) * (1.0 + 0.1 * random.random())

    def _connection_cause(self, exc: BaseException) -> str:
        root = _root_cause(exc)
        text = str(root) or type(root).__name__
        if isinstance(root, ConnectionRefusedError) or "refused" in text.lower():
            return f"connection refused at {self.base_url}"
        return f"connection failed at {self.base_url} ({type(root).__name__}: {text})"

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        label: str,
        validate: Callable[[str], bool] | None = None,
        sampling: dict[str, Any] | None = None,
        invalid: str = "reply had no usable description lines",
    ) -> tuple[str, str]:
        """Ask; return ``(content, served_model)``.  Raise :class:`LLMError` ("{label}: cause").

        Retried (``1 + max_retries`` tries, exponential backoff, Retry-After honoured
        up to ``retry_after_cap``): timeouts, connection errors, HTTP 408/409/429/5xx,
        malformed bodies, empty content, and content that ``validate`` rejects
        (reported as ``invalid``).  Other HTTP errors (400, 401, 403, 404, ...) fail at once.
        ``sampling`` overrides the config's sampling parameters for this request.
        """
        params = self.sampling(sampling)

        def create() -> Any:
            return self._client.chat.completions.create(model=self.model, messages=messages, **params)

        return self._ask(create, self._extract, label=label, validate=validate, invalid=invalid)

    def complete(
        self,
        prompt: str,
        *,
        label: str,
        validate: Callable[[str], bool] | None = None,
        sampling: dict[str, Any] | None = None,
        stop: list[str] | None = None,
    ) -> tuple[str, str]:
        """Like :meth:`chat` on the legacy ``/completions`` endpoint (raw prompt text continued)."""
        params = self.sampling(sampling)
        if stop:
            params["stop"] = stop

        def create() -> Any:
            return self._client.completions.create(model=self.model, prompt=prompt, **params)

        return self._ask(create, self._extract_text, label=label, validate=validate,
                         invalid="reply had no usable description lines")

    def _ask(self, create: Callable[[], Any], extract: Callable[[Any], tuple[str, str, str | None]], *,
             label: str, validate: Callable[[str], bool] | None, invalid: str) -> tuple[str, str]:
        oa = self._openai
        tries = 1 + self.config.max_retries
        cause = "no request made"
        for attempt in range(1, tries + 1):
            wait: float | None = None
            try:
                resp = create()
            except oa.APITimeoutError:
                cause = f"request timed out after {self.config.timeout:g} s at {self.base_url}"
            except oa.APIConnectionError as e:
                cause = self._connection_cause(e)
            except oa.APIStatusError as e:
                code = e.status_code
                if code == 429:
                    cause = "server returned HTTP 429 (rate limited)"
                    ra = parse_retry_after(getattr(e.response, "headers", None))
                    if ra is not None:
                        wait = min(ra, self.config.retry_after_cap)
                elif code >= 500 or code in (408, 409):
                    cause = f"server returned HTTP {code}"
                else:
                    detail = getattr(e, "message", "") or str(e)
                    hint = {401: " (authentication failed: check the API key)",
                            404: f" (unknown model {self.model!r} or wrong base URL {self.base_url})"}
                    raise LLMError(self.scrub(
                        f"{label}: server returned HTTP {code}{hint.get(code, '')}: {detail}"
                    )) from None
            except (oa.APIResponseValidationError, ValueError, TypeError, KeyError) as e:
                cause = f"malformed reply from {self.base_url} ({type(e).__name__})"
            else:
                content, served, problem = extract(resp)
                if problem is not None:
                    cause = problem
                elif not content.strip():
                    cause = "empty reply"
                elif validate is not None and not validate(content):
                    cause = invalid
                else:
                    return content, served
            if attempt < tries:
                self._sleep(self._backoff(attempt) if wait is None else wait)
        raise LLMError(self.scrub(f"{label}: {cause} after {tries} tr{'y' if tries == 1 else 'ies'}"))

    def _extract_text(self, resp: Any) -> tuple[str, str, str | None]:
        try:
            text = resp.choices[0].text
            served = getattr(resp, "model", None) or self.model
        except (AttributeError, IndexError, TypeError, KeyError):
            return "", self.model, f"malformed reply from {self.base_url} (no choices[0].text)"
        if text is None:
            return "", str(served), None
        if not isinstance(text, str):
            return "", str(served), f"malformed reply from {self.base_url} (text is not text)"
        return text, str(served), None

    def _extract(self, resp: Any) -> tuple[str, str, str | None]:
        try:
            choice = resp.choices[0]
            content = choice.message.content
            served = getattr(resp, "model", None) or self.model
        except (AttributeError, IndexError, TypeError, KeyError):
            return "", self.model, f"malformed reply from {self.base_url} (no choices[0].message)"
        if content is None:
            return "", str(served), None
        if not isinstance(content, str):
            return "", str(served), f"malformed reply from {self.base_url} (content is not text)"
        return content, str(served), None


def open_reply_cache(cache_dir: str | os.PathLike[str] | None = None, name: str = "llm-replies"):
    """The process-safe reply cache ``<cache_dir>/<name>`` (a ``diskcache.Cache``)."""
    import diskcache

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return diskcache.Cache(str(root / name))
