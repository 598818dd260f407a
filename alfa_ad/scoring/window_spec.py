"""Window scales and strides as data, importable without torch (the CLI and
:class:`~alfa_ad.config.DetectorConfig` check them before any model loads)."""

from __future__ import annotations

from typing import Sequence

# ALFA's default windows, chosen on the mini-CLIP tables (docs/mini_clip.md, docs/mini_clip_v2.md):
# 2, 3, 4 and 5 patches, every 1, 2, 3 and 3 patches (the wider scales localize better; their
# strides keep the masked aligner's cost at WinCLIP's 2,3 at stride 1 on a 15 x 15 grid)
ALFA_SCALES = (2, 3, 4, 5)
ALFA_STRIDES = (1, 2, 3, 3)


def parse_strides(strides: Sequence[int] | int | None, scales: Sequence[int]) -> tuple[int, ...]:
    """One window stride per scale: None (all 1), one value for every scale, or one per scale;
    ``ValueError`` (one line) for a wrong count, a stride below 1 or one longer than its window
    (the patches between windows would be left uncovered)."""
    if strides is None:
        return (1,) * len(scales)
    if isinstance(strides, int):
        strides = (strides,)
    strides = tuple(int(t) for t in strides)
    if len(strides) == 1:
        strides *= len(scales)
    if len(strides) != len(scales) or min(strides, default=0) < 1:
        raise ValueError(f"window strides {','.join(map(str, strides))}: give one stride >= 1 per scale "
                         f"({','.join(map(str, scales))}) or one for all")
    for s, t in zip(scales, strides):
        if t > s:
            raise ValueError(f"window stride {t} is longer than its window ({s} patches): the patches between "
                             "windows would be left uncovered")
    return strides


def default_window_geometry(grid: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """ALFA's default scales and strides, less the scales larger than the patch grid (a small
    grid keeps the windows that fit; none fitting is the window geometry's error)."""
    fits = [(s, t) for s, t in zip(ALFA_SCALES, ALFA_STRIDES) if s <= min(grid)] or [(ALFA_SCALES[0], 1)]
    return tuple(s for s, _ in fits), tuple(t for _, t in fits)
