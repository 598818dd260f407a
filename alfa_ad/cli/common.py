"""What every command shares: the Typer app, the console, one-line errors, tables."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

WEIGHTS_HELP = ("pretrained, random (smoke test), planted (test model), mini (mini-CLIP trained here, "
                "not a real CLIP) or mini-v2 (its 15 x 15-grid successor, once shipped).")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Training-free visual anomaly detection (ALFA, WinCLIP).")
console = Console(stderr=True)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def say(message: str) -> None:
    console.print(message, soft_wrap=True, highlight=False, markup=False)


def parse_ints(text: str, what: str, minimum: int = 1) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        fail(f"{what} must be comma-separated integers, got {text!r}")
    if not values or min(values) < minimum:
        fail(f"{what} must be integers >= {minimum}, got {text!r}")
    return values


def print_table(rows: list[list[str]], title: str) -> None:
    table = Table(title=escape(title))
    for i, head in enumerate(rows[0]):  # class names wrap instead of being cut with an ellipsis
        table.add_column(head, justify="left" if i == 0 else "right", overflow="fold" if i == 0 else "ellipsis",
                         no_wrap=i != 0)
    for r in rows[1:]:
        table.add_row(*[escape(c) for c in r])
    Console().print(table)


