"""Command line: one module per command, all registered on one Typer ``app``.

A new command lives in its own module here and is imported below.
"""

from __future__ import annotations

from . import demo, doctor, explain, prompts, report, run, serve, weights  # noqa: F401  (each registers its commands)
from .common import app, console, fail, say

__all__ = ["app", "console", "fail", "say", "main"]


def main() -> None:  # pragma: no cover
    app()
