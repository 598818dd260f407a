"""Driving a local server for tests and benchmarks: start ``alfa-ad serve`` in a subprocess,
read its memory, and make malformed uploads.  Local only (127.0.0.1)."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ServerProcess:
    """``alfa-ad serve ARGS --port P`` in a subprocess of this Python, from this checkout."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root = Path(__file__).resolve().parents[2]
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
                   "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(log, "wb") if log is not None else subprocess.DEVNULL
        cmd = [sys.executable, "-c", "from alfa_ad.cli import app; app()", "serve", *map(str, args),
               "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=environ, stdout=self._log, stderr=subprocess.STDOUT, cwd=root)

    def wait_ready(self, timeout: float = 180.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode} before it was ready")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready within {timeout:.0f} s")

    @property
    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ThreadedServer:
    """An app served by uvicorn in a thread of this process (tests): ``with ThreadedServer(app) as s: s.url``."""

    def __init__(self, app, port: int | None = None) -> None:
        import threading

        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def png_bytes(image: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` grey pixels (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def zero_png(width: int, height: int) -> bytes:
    """A real, fully decodable all-black PNG: compresses ~1000x (a small decompression bomb)."""
    return png_bytes(Image.new("L", (width, height)))


def bad_images(seed: int = 0) -> list[tuple[str, bytes]]:
    """Uploads no image loader should accept: ``[(what, bytes)]``."""
    rng = np.random.default_rng(seed)
    good = png_bytes(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    gif = png_bytes(Image.new("RGB", (32, 32)), "GIF")
    return [
        ("random bytes", rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()),
        ("text", b"this is not an image\n" * 20),
        ("empty", b""),
        ("truncated png", good[: len(good) // 2]),
        ("png signature only", good[:8]),
        ("corrupt png body", good[:60] + bytes(200) + good[260:]),
        ("header bomb 100000x100000", png_header_bomb()),
        ("gif (format not accepted)", gif),
        ("html", b"<html><body>hello</body></html>"),
        ("zip", b"PK\x03\x04" + bytes(100)),
    ]
