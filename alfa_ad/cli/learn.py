"""``alfa-ad learn-prompts``: learn prompt context vectors per class from normal images only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..io.images import InputError
from ..model.names import DEFAULT_MODEL, DEFAULT_PRETRAINED
from ..references import Shots, ShotsError, choose_references, parse_shots, pool_shortfall
from .common import WEIGHTS_HELP, app, console, fail, say
from .run_support import check_device, discover_data, name_map, reference_pools


def _relative(path: Path, bases: list[Path]) -> str:
    """``path`` relative to the first base that contains it (the file's image names do not
    depend on where the data sits), else its file name."""
    for base in bases:
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return path.name


@app.command("learn-prompts")
def learn_prompts_cmd(
    data: Path = typer.Option(..., "--data", help="MVTec-layout root, VisA root or one class folder (its train "
                              "split gives the normal images; test images are never read)."),
    out: Path = typer.Option(..., "--out", help="File to write (safetensors, whatever the extension)."),
    shots: str = typer.Option(..., "--shots", help="Normal images per class: k or all, drawn exactly as "
                              "'alfa-ad run --shots k --seed s' draws its references."),
    seed: int = typer.Option(0, "--seed", help="Seed for the references, the synthetic defects and the initialisation."),
    classes: Optional[str] = typer.Option(None, "--classes", help="mvtec, visa, or a comma list of classes."),
    class_name: Optional[str] = typer.Option(None, "--class-name", help="Object name in the prompts, as for "
                                             "'alfa-ad run' (NAME, or folder=name,folder2=name2)."),
    normals: Optional[Path] = typer.Option(None, "--normals", help="Folder of normal images (or DIR/<class>) "
                                           "instead of the train split."),
    epochs: int = typer.Option(100, "--epochs", help="Training epochs (one full-batch step each)."),
    lr: float = typer.Option(0.002, "--lr", help="Learning rate (SGD, momentum 0.9, cosine decay)."),
    synthetic: int = typer.Option(16, "--synthetic", help="Synthetic defects per class made on the normal images "
                                  "(cut-paste and noise patches; 0: none)."),
    patience: int = typer.Option(0, "--patience", help="0: fixed schedule; N: stop after N epochs without a better "
                                 "validation loss (validation: mirrored normal images and fresh synthetic defects)."),
    objective: str = typer.Option("promptad", "--objective", help="promptad: contrastive and margin losses "
                                  "(PromptAD); clip-ada: self-supervised focal + dice losses on the synthetic "
                                  "defects' windows with a linear visual adapter folded into the prompts (CLIP-ADA)."),
    model: Optional[str] = typer.Option(None, "--model", help=f"open_clip model name (default {DEFAULT_MODEL})."),
    pretrained: str = typer.Option(DEFAULT_PRETRAINED, "--pretrained", help="open_clip pretrained tag."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Local weights file (safetensors or torch)."),
    weights: str = typer.Option("pretrained", "--weights", help=WEIGHTS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice; 1 on a "
                                          "busy machine: the steps are small and threads then mostly wait)."),
) -> None:
    """Learn normal and abnormal prompt context vectors (PromptAD-style) on the frozen model from
    k normal images per class; write the learned embeddings for 'alfa-ad run --learned FILE'."""
    from ..learning import LearnConfig
    from ..model.factory import load_backbone
    from ..model.weights import WeightsUnavailableError

    try:
        k = parse_shots(shots, minimum=1)
    except ShotsError as exc:
        fail(str(exc))
    if out.is_dir():
        fail(f"{out}: --out must be a file name, and a folder has that name")
    if normals is not None and not normals.is_dir():
        fail(f"{normals}: --normals folder not found")
    if lr <= 0:
        fail(f"--lr must be positive, got {lr}")
    try:
        config = LearnConfig(epochs=epochs, lr=lr, synthetic=synthetic, patience=patience, objective=objective)
    except ValueError as exc:
        fail(str(exc))
    check_device(device)
    if threads is not None:
        if threads < 1:
            fail(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    chosen, image_names = choose_shots(data, normals, classes, class_name, k, seed)
    try:
        backbone = load_backbone(model, pretrained, checkpoint=checkpoint, weights=weights, seed=seed, device=device)
    except (WeightsUnavailableError, ValueError) as exc:
        fail(str(exc))
    say(f"alfa-ad learn-prompts: {len(chosen)} class(es), {k} shot(s), seed {seed}, "
        f"{config.epochs} epochs on {backbone.device}, {backbone.weights.label}")
    t0 = time.perf_counter()
    learned = learn_with_progress(backbone, chosen, config, seed, k, image_names)
    out.parent.mkdir(parents=True, exist_ok=True)
    learned.save(out)
    for cls, info in learned.meta["classes"].items():
        say(f"{cls}: {len(info['images'])} normal image(s), {info['features']['windows_abnormal']} synthetic-defect "
            f"windows; {info['normal']} normal and {info['abnormal']} abnormal prompts; loss {info['first_loss']:.4f} "
            f"-> {info['final_loss']:.4f} in {info['epochs_run']} epochs")
    say(f"wrote {out} in {time.perf_counter() - t0:.1f} s ({backbone.weights.label}); "
        f"use it with: alfa-ad run --learned {out} ...")


def choose_shots(data: Path, normals: Optional[Path], classes: Optional[str], class_name: Optional[str], shots: Shots,
                 seed: int) -> tuple[dict[str, list[Path]], dict[str, list[str]]]:
    """Per class (by its prompt name), the normal images drawn as ``alfa-ad run --shots k --seed s``
    draws them, and their names in the file; a class with too few is skipped, none left an error."""
    dataset, _, plain = discover_data(data, classes)
    names = name_map(class_name, list(dataset), "--class-name")
    pools = reference_pools(data, normals, list(dataset), plain)
    chosen: dict[str, list[Path]] = {}
    image_names: dict[str, list[str]] = {}
    bases = [b for b in (normals, data if data.is_dir() else data.parent) if b is not None]
    for cls, pool in pools.items():
        short = pool_shortfall(cls, pool, shots)
        if short:
            say(f"{short}; the class is skipped")
            continue
        key = names.get(cls, cls)
        chosen[key] = choose_references(pool.images, shots, seed)
        image_names[key] = [_relative(p, bases) for p in chosen[key]]
    if not chosen:
        fail(f"no class has enough normal images for --shots {shots}")
    return chosen, image_names


def learn_with_progress(backbone, chosen: dict[str, list[Path]], config, seed: int, shots: Shots,
                        image_names: dict[str, list[str]]):
    """:func:`alfa_ad.learning.learn_prompts` with a progress bar per class; its errors one line."""
    from ..learning import learn_prompts

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=console) as progress:
        tasks = {c: progress.add_task(f"learning {escape(c)}", total=config.epochs, loss="-") for c in chosen}

        def on_epoch(cls: str, epoch: int, total: int, loss: float) -> None:
            progress.update(tasks[cls], completed=epoch, loss=f"{loss:.4f}")

        try:
            return learn_prompts(backbone, chosen, config, seed=seed, k=str(shots), image_names=image_names,
                                 on_epoch=on_epoch)
        except (InputError, ValueError) as exc:
            fail(str(exc))
