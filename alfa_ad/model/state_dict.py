"""Reading a weights file's state dict safely: safetensors (no pickle at all) or a torch
file with ``weights_only=True``, memory-mapped where the format allows."""

from __future__ import annotations

from pathlib import Path

import torch


def read_state_dict(path: Path) -> dict:
    """The state dict of a weights file, memory-mapped: ``.safetensors`` (no pickle at all),
    else a torch file read with ``weights_only=True, mmap=True`` (a zip-format file; older
    files are read whole)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError("no state dict in the file")
    if next(iter(state)).startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
