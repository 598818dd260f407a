"""Shared fixtures for the alfa_ad test suite.

* ``planted_backbone``: the hand-constructed planted-alignment CLIP (tiny, CPU, fast);
  its "anomaly" cue is the redness ``R - (G + B) / 2`` of each 16x16 patch.
* ``shared_data``: ``../shared/data`` (real images), skipped when absent.
* ``spot_image``: a grey texture with a red rectangle at a known place, and its mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

RED = (220, 30, 30)


@pytest.fixture(scope="session", autouse=True)
def _isolated_text_cache(tmp_path_factory):
    """Keep the default disk cache (``$ALFA_AD_CACHE`` or ./cache) out of the working directory.

    Session-scoped so that it is in place before any module- or class-scoped fixture
    (a module fixture that runs the CLI would otherwise write ``./cache``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALFA_AD_CACHE", str(tmp_path_factory.getbasetemp() / "default-cache"))
        yield


@pytest.fixture(scope="session")
def planted_backbone():
    from alfa_ad.model import load_backbone

    return load_backbone(weights="planted", device="cpu")


@pytest.fixture
def shared_data() -> Path:
    path = Path(__file__).parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data not present: real-image tests skipped")
    return path


def perturbed_planted(**options):
    """A Detector on the planted model's architecture whose image-tower weights are nudged
    with seeded noise (5% of each tensor's mean magnitude): exports and backends then see
    weights without the planted model's exact zeros and ones."""
    import torch

    from alfa_ad import Detector

    d = Detector(weights="planted", device="cpu", cache_dir=None, tile="none", batch_size=4, **options)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in d.backbone.clip.visual.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    return d


def grey_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(H, W, 3)`` uint8 neutral-grey texture (no redness: R == G == B up to noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 125 + 15 * np.sin(xx / 7.0) * np.cos(yy / 9.0) + rng.normal(0, 4, (height, width))
    grey = np.clip(base, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def spot_image(
    height: int = 200,
    width: int = 320,
    box: tuple[int, int, int, int] | None = None,
    seed: int = 0,
    colour: tuple[int, int, int] = RED,
) -> tuple[np.ndarray, np.ndarray]:
    """Grey texture with a red rectangle; returns ``(image (H, W, 3) uint8, mask (H, W) bool)``.

    ``box`` is ``(top, left, bottom, right)`` in pixels (exclusive end).  The default
    puts the spot in the upper-right corner region of a 200x320 image: rows 30-70,
    columns 220-290, i.e. an asymmetric place, so a transposed (x <-> y) or flipped
    map cannot land on it.
    """
    img = grey_texture(height, width, seed)
    top, left, bottom, right = box if box is not None else (30, 220, 70, 290)
    img[top:bottom, left:right] = colour
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return img, mask


@pytest.fixture
def make_spot_image():
    """The :func:`spot_image` helper as a fixture."""
    return spot_image


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (steadier timing-free results on a shared CPU), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
