"""``alfa-ad weights list|download``: weights you can see, fetch and carry."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..model.names import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .common import app, console, fail, say

weights_app = typer.Typer(no_args_is_help=True, help="List, download and carry CLIP weights (air-gapped use).")
app.add_typer(weights_app, name="weights")


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def supported_pretrained(show_all: bool) -> list[tuple[str, str]]:
    """(model, tag) pairs of open_clip ViT models with a class token (what the backbone supports)."""
    import open_clip

    pairs = [(m, t) for m, t in open_clip.list_pretrained() if m.startswith("ViT-") and "SigLIP" not in m]
    return pairs if show_all else [p for p in pairs if p[0] == DEFAULT_MODEL]


@weights_app.command("list")
def list_weights(
    show_all: bool = typer.Option(False, "--all", help="Every open_clip ViT model and tag, not only the default model's."),
    folder: Optional[Path] = typer.Option(None, "--dir", help="Also list weights written by `weights download` here."),
) -> None:
    """Known models and tags, which are cached on this machine (file, size, SHA-256)."""
    from ..io.paths import default_cache_dir
    from ..model.weights import locate, pretrained_ref, read_manifest, sha256_file

    table = Table(title="pretrained weights (open_clip names)")
    for head in ("model", "pretrained", "cached", "size", "sha256", "file"):
        table.add_column(head)
    for model, tag in supported_pretrained(show_all):
        path = locate(pretrained_ref(model, tag))
        if path is None:
            table.add_row(model, tag, "no", "", "", "")
        else:
            table.add_row(model, tag, "yes", _mb(path.stat().st_size),
                          sha256_file(path, default_cache_dir())[:16], escape(str(path)))
    console.print(table)
    if folder is not None:
        if not folder.is_dir():
            fail(f"{folder}: --dir folder not found")
        files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.pt")) + sorted(folder.glob("*.bin"))
        carried = Table(title=f"weight files in {escape(str(folder))}")
        for head in ("file", "model", "pretrained", "size", "sha256"):
            carried.add_column(head)
        for f in files:
            man = read_manifest(f) or {}
            carried.add_row(escape(f.name), man.get("model", "?"), man.get("pretrained", "?"), _mb(f.stat().st_size),
                            sha256_file(f, default_cache_dir())[:16])
        console.print(carried)
    say("Use one offline with: alfa-ad run --checkpoint FILE (the model is read from FILE's manifest).")


@weights_app.command("download")
def download(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="open_clip model name."),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, "--pretrained", help="open_clip pretrained tag."),
    to: Path = typer.Option(..., "--to", help="Folder to write <model>__<tag>.safetensors and its manifest into."),
) -> None:
    """Fetch weights on a connected machine and write a portable safetensors file + manifest."""
    import open_clip

    from ..model.weights import WeightsUnavailableError, export_safetensors, fetch, pretrained_ref

    if model not in open_clip.list_models():
        fail(f"unknown open_clip model {model!r}; see `alfa-ad weights list --all`")
    if to.exists() and not to.is_dir():
        fail(f"{to}: --to must be a folder")
    try:
        ref = pretrained_ref(model, pretrained)
        source = fetch(ref, quiet=False)
        target = export_safetensors(source, model, pretrained, to, ref)
    except (WeightsUnavailableError, ValueError, OSError) as exc:
        fail(str(exc))
    say(f"wrote {target} ({_mb(target.stat().st_size)}) and {target.name}.json; "
        f"carry both, then: alfa-ad run --checkpoint {target} ...")
