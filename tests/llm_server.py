"""A tiny OpenAI-protocol chat-completions server for tests (stdlib only, 127.0.0.1).

Behaviour is scriptable: every ``POST /v1/chat/completions`` takes the first
matching *rule* (a substring of the request body -> action, used for every such
request), else pops the next action from the *queue*, else uses ``default``.

Actions (plain tuples, built with the helpers below)::

    good(content=None)       200 chat.completion; content None -> a numbered list made
                              up from the request (see :func:`fake_reply`)
    status(code, retry_after=None, body=None)   an error status (429, 500, 503, ...)
    delay(seconds, then=good())                 sleep, then answer ``then``
    empty()                  200 chat.completion whose content is ""
    malformed()              200 with a body that is not JSON

Connection refused: point the client at :func:`unused_port`.

The server counts requests and records each request's body (parsed JSON) and headers.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Action = tuple


def good(content: str | None = None) -> Action:
    return ("good", content)


def status(code: int, retry_after: str | float | None = None, body: str | None = None) -> Action:
    return ("status", code, retry_after, body)


def delay(seconds: float, then: Action | None = None) -> Action:
    return ("delay", seconds, then if then is not None else good())


def empty() -> Action:
    return ("empty",)


def malformed() -> Action:
    return ("malformed",)


def unused_port() -> int:
    """A localhost TCP port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DETAILS = {
    "abnormal": ["a crack near the edge", "a deep scratch across the middle", "a dark stain on one side",
                 "a missing corner piece", "a dent in the upper part", "a burn mark near the centre",
                 "a bent and twisted outline", "a hole punched through it", "frayed threads at the border",
                 "a chipped rim", "a blue contamination spot", "a split along its length"],
    "normal": ["a smooth and uniform surface", "even colour all over", "straight clean edges",
               "a symmetric outline", "a consistent texture", "intact corners", "a glossy clean finish",
               "regular spacing of its parts", "a flat even top", "no marks at all", "sharp well-defined borders",
               "a uniform matte surface"],
}


def _started_head(text: str) -> str | None:
    m = re.search(r"\n2\. ([^\n]*)$", text)
    return m.group(1).strip() if m else None


def list_reply(head: str, body: dict, continuation: bool, n: int = 6) -> str:
    """A numbered list continuing ``2. {head}``; which details depends on the seed and temperature."""
    text = json.dumps(body.get("messages") or body.get("prompt") or "")
    side = "abnormal" if ("defect or abnormality" in text or "breaks this rule" in text) else "normal"
    pool = DETAILS[side]
    start = (int(body.get("seed") or 0) * 5 + int(10 * float(body.get("temperature") or 0))) % len(pool)
    details = [pool[(start + i) % len(pool)] for i in range(n)]
    lines = [f"{i}. {head} {d}." for i, d in enumerate(details, 2)]
    if continuation:                      # /completions: the text after "2. {head}"
        lines[0] = lines[0][len(f"2. {head}"):]
    return "\n".join(lines)


VERDICT = {"anomalous": True, "defect_type": "red spot", "location": "upper right",
           "reason": "A red patch that the normal references do not have.", "confidence": 0.8}


def is_vision(body: dict) -> bool:
    return any(isinstance(m.get("content"), list) for m in body.get("messages", []))


def text_parts(body: dict) -> str:
    """All text of a chat request, string contents and the text parts of list contents."""
    out = []
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list):
            out += [p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text"]
    return "\n".join(out)


def image_urls(body: dict) -> list[str]:
    return [p["image_url"]["url"] for m in body.get("messages", []) if isinstance(m.get("content"), list)
            for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url"]


def fake_reply(body: dict) -> str:
    """A plausible answer to whichever ALFA query ``body`` carries (chat, completion or vision)."""
    if is_vision(body):
        return json.dumps(VERDICT)
    if "prompt" in body:
        head = _started_head(str(body["prompt"]))
        return list_reply(head, body, continuation=True) if head else "1. Some text about an object."
    user = " ".join(m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"
                    and isinstance(m.get("content"), str))
    head = _started_head(user)
    if head:
        return list_reply(head, body, continuation=False)
    m = re.search(r"beginning with: (An abnormal|A normal) image of ([^.\"]+?)[.\"]", user)
    if m:
        head = f"{m.group(1)} image of {m.group(2)}"
        if m.group(1) == "A normal":
            tails = ["with a smooth and uniform surface.", "with intact edges and even colour.",
                     "showing no scratches or cracks."]
        else:
            tails = ["with a visible crack on the surface.", "showing a dent or deformation.",
                     "with discoloured or stained areas."]
        return "\n".join(f"{i}. {head} {t}" for i, t in enumerate(tails, 1))
    if "useful descriptions for distinguishing" in user:
        return "cracks or scratches\n- discoloration\n- missing parts\n- irregular shape"
    m = re.search(r"How to identify an abnormal (.+?) in an image\?", user)
    cls = m.group(1) if m else "object"
    return (f"Here are some ways to identify an abnormal {cls}:\n"
            f"1. Look for cracks or holes in the {cls}.\n"
            f"2. Check whether the {cls} has an irregular shape.\n"
            f"3. Look for stains or discoloration on the {cls}.")


def completion_json(content: str, model: str = "fake-model") -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


def text_completion_json(text: str, model: str = "fake-model") -> dict:
    return {
        "id": "cmpl-test",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "text": text, "logprobs": None}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


class FakeLLMServer:
    """Run with ``with FakeLLMServer() as srv:``; ``srv.base_url`` ends in ``/v1``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: list[Action] = []
        self.rules: list[tuple[str, Action]] = []
        self.default: Action = good()
        self.requests: list[dict[str, Any]] = []   # {"path", "headers", "body", "raw"}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep pytest output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                action = outer._record_and_pick(self.path, dict(self.headers.items()), body, raw)
                if self.path.rstrip("/") not in ("/v1/chat/completions", "/v1/completions"):
                    self._send(404, {"error": {"message": "not found"}})
                    return
                self.legacy = self.path.rstrip("/") == "/v1/completions"
                try:
                    self._act(action, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _act(self, action: Action, body: dict) -> None:
                kind = action[0]
                if kind == "delay":
                    time.sleep(action[1])
                    self._act(action[2], body)
                elif kind == "good":
                    content = action[1] if action[1] is not None else fake_reply(body)
                    make = text_completion_json if self.legacy else completion_json
                    self._send(200, make(content, body.get("model", "fake-model")))
                elif kind == "empty":
                    make = text_completion_json if self.legacy else completion_json
                    self._send(200, make("", body.get("model", "fake-model")))
                elif kind == "malformed":
                    self._send_raw(200, b'{"id": "chatcmpl-x", "choices": [ {"mess', "application/json")
                elif kind == "status":
                    _, code, retry_after, text = action
                    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
                    payload = text if text is not None else json.dumps(
                        {"error": {"message": f"fake error {code}", "type": "server_error"}})
                    self._send_raw(code, payload.encode(), "application/json", headers)
                else:  # pragma: no cover - a typo in a test
                    raise ValueError(f"unknown action {action!r}")

            def _send(self, code: int, obj: dict) -> None:
                self._send_raw(code, json.dumps(obj).encode(), "application/json")

            def _send_raw(self, code: int, data: bytes, ctype: str, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # -- scripting ---------------------------------------------------------
    def _record_and_pick(self, path: str, headers: dict, body: dict, raw: bytes) -> Action:
        with self.lock:
            self.requests.append({"path": path, "headers": headers, "body": body, "raw": raw})
            text = raw.decode("utf-8", "replace")
            for needle, action in self.rules:
                if needle in text:
                    return action
            if self.queue:
                return self.queue.pop(0)
            return self.default

    def script(self, *actions: Action) -> None:
        with self.lock:
            self.queue.extend(actions)

    def rule(self, needle: str, action: Action) -> None:
        """Answer every request whose raw body contains ``needle`` with ``action``."""
        with self.lock:
            self.rules.append((needle, action))

    def reset(self) -> None:
        """Forget rules, queue and recorded requests; default back to good()."""
        with self.lock:
            self.queue.clear()
            self.rules.clear()
            self.requests.clear()
            self.default = good()

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def user_messages(self) -> list[str]:
        with self.lock:
            return [" ".join(m.get("content", "") if isinstance(m.get("content"), str) else
                             " ".join(p.get("text", "") for p in m["content"] if isinstance(p, dict))
                             for m in r["body"].get("messages", []) if m.get("role") == "user")
                    for r in self.requests]

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> "FakeLLMServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def child_generate(base_url: str, cache_dir: str, classes: list[str], barrier: Any, api_key: str) -> None:
    """Run in a spawned process: generate ``classes`` into the reply cache at ``cache_dir``."""
    from alfa_ad.llm.generate import GenerationSettings, LLMClient, LLMConfig, generate_class_prompts, open_reply_cache

    client = LLMClient(LLMConfig("fake-model", base_url=base_url, api_key=api_key,
                                 timeout=5.0, max_retries=2, backoff=0.01))
    cache = open_reply_cache(cache_dir)
    try:
        barrier.wait(timeout=60)
        for name in classes:
            generate_class_prompts(client, name, cache=cache, settings=GenerationSettings(target=6, max_rounds=2))
    finally:
        cache.close()
