"""Tests for alfa_ad.io: image/mask loading, atomic writes and overlays.

All inputs are generated in ``tmp_path`` (or in memory); nothing else is read.
"""

from __future__ import annotations

import os
import pickle
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from alfa_ad.io import atomic
from alfa_ad.io.atomic import atomic_save_image, atomic_write_bytes, atomic_write_text
from alfa_ad.io.images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    InputError,
    iter_image_files,
    load_image,
    load_mask,
)
from alfa_ad.io.overlay import MAX_OVERLAY_SIDE, colorize, render_overlay

SIZE = (6, 4)  # (width, height)


def _palette(*colours: tuple[int, int, int]) -> list[int]:
    flat = [value for colour in colours for value in colour]
    return flat + [0] * (768 - len(flat))


def _assert_rgb(image: Image.Image, expected: tuple[int, int, int], size=SIZE, tol: int = 0):
    assert image.mode == "RGB"
    assert image.size == size
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    assert np.abs(pixels - np.array(expected)).max() <= tol, pixels[:2]


def _assert_one_line_error(excinfo: pytest.ExceptionInfo, name: str, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message
    assert name in message
    for fragment in fragments:
        assert fragment in message


# ------------------------------------------------------------------ PIL modes

# mode, fill value, expected RGB, tolerance
MODE_CASES = [
    ("1", 1, (255, 255, 255), 0),
    ("L", 100, (100, 100, 100), 0),
    ("LA", (100, 0), (100, 100, 100), 0),
    ("La", (100, 255), (100, 100, 100), 0),
    ("RGB", (10, 20, 30), (10, 20, 30), 0),
    ("RGBA", (10, 20, 30, 0), (10, 20, 30), 0),  # alpha dropped, not composited
    ("RGBa", (10, 20, 30, 255), (10, 20, 30), 0),
    ("CMYK", (0, 0, 0, 0), (255, 255, 255), 0),
    ("CMYK", (0, 0, 0, 255), (0, 0, 0), 0),
    ("YCbCr", (100, 128, 128), (100, 100, 100), 1),
    ("I;16", 65535, (255, 255, 255), 0),
    ("I;16", 257 * 100, (100, 100, 100), 0),
    ("I;16B", 65535, (255, 255, 255), 0),
    ("I;16L", 257 * 7, (7, 7, 7), 0),
    ("I", 65535, (255, 255, 255), 0),
    ("I", 257 * 40, (40, 40, 40), 0),
    ("I", 2**31 - 1, (255, 255, 255), 0),
    ("F", 0.5, (128, 128, 128), 0),
    ("F", 1.0, (255, 255, 255), 0),
    ("F", 200.0, (200, 200, 200), 0),
    ("F", 300.0, (255, 255, 255), 0),
]


@pytest.mark.parametrize(("mode", "fill", "expected", "tol"), MODE_CASES)
def test_in_memory_modes_convert_to_rgb(mode, fill, expected, tol):
    source = Image.new(mode, SIZE, fill)
    _assert_rgb(load_image(source), expected, tol=tol)
    assert source.mode == mode  # caller's image untouched


def test_palette_modes_use_palette_colours_and_drop_alpha():
    p_image = Image.new("P", SIZE, 1)
    p_image.putpalette(_palette((0, 0, 0), (10, 20, 30)))
    p_image.info["transparency"] = 1  # index 1 fully transparent: colour must survive
    _assert_rgb(load_image(p_image), (10, 20, 30))
    # Per-index alpha bytes: Pillow warns on a direct P -> RGB conversion.
    p_image.info["transparency"] = b"\xff\x00" + b"\xff" * 254
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_rgb(load_image(p_image), (10, 20, 30))

    pa_image = Image.new("PA", SIZE, (1, 0))
    pa_image.putpalette(_palette((0, 0, 0), (40, 50, 60)))
    _assert_rgb(load_image(pa_image), (40, 50, 60))


def test_palette_with_transparency_loads_without_warning(tmp_path):
    path = tmp_path / "p.png"
    image = Image.new("P", SIZE, 1)
    image.putpalette(_palette((0, 0, 0), (10, 20, 30)))
    image.save(path, transparency=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_rgb(load_image(path), (10, 20, 30))


# mode, fill, file suffix, expected RGB, tolerance
FILE_CASES = [
    ("1", 1, ".png", (255, 255, 255), 0),
    ("L", 100, ".png", (100, 100, 100), 0),
    ("LA", (100, 0), ".png", (100, 100, 100), 0),
    ("RGB", (10, 20, 30), ".png", (10, 20, 30), 0),
    ("RGB", (10, 20, 30), ".bmp", (10, 20, 30), 0),
    ("RGB", (200, 100, 50), ".jpg", (200, 100, 50), 4),
    ("RGB", (10, 20, 30), ".webp", (10, 20, 30), 4),
    ("RGBA", (10, 20, 30, 0), ".png", (10, 20, 30), 0),
    ("CMYK", (0, 0, 0, 0), ".tiff", (255, 255, 255), 0),
    ("CMYK", (0, 0, 0, 0), ".jpg", (255, 255, 255), 2),
    ("YCbCr", (100, 128, 128), ".tif", (100, 100, 100), 1),
    ("I;16", 65535, ".png", (255, 255, 255), 0),
    ("I;16", 257 * 100, ".png", (100, 100, 100), 0),
    ("I;16B", 65535, ".tiff", (255, 255, 255), 0),
    ("I", 257 * 40, ".tiff", (40, 40, 40), 0),
    ("F", 0.5, ".tiff", (128, 128, 128), 0),
    ("F", 200.0, ".tiff", (200, 200, 200), 0),
]


@pytest.mark.parametrize(("mode", "fill", "suffix", "expected", "tol"), FILE_CASES)
def test_file_modes_round_trip_to_rgb(tmp_path, mode, fill, suffix, expected, tol):
    path = tmp_path / f"image{suffix}"
    Image.new(mode, SIZE, fill).save(path)
    _assert_rgb(load_image(path), expected, tol=tol)
    _assert_rgb(load_image(str(path)), expected, tol=tol)


def test_16bit_png_is_scaled_by_range_not_min_max(tmp_path):
    values = np.array([[0, 257 * 10, 257 * 20, 65535]], dtype=np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(values).save(path)
    loaded = np.asarray(load_image(path))
    assert loaded[0, :, 0].tolist() == [0, 10, 20, 255]
    assert (loaded[..., 0] == loaded[..., 1]).all() and (loaded[..., 1] == loaded[..., 2]).all()


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:10] = (255, 0, 0)  # top half red
    pixels[10:] = (0, 0, 255)  # bottom half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)

    loaded = load_image(path)
    assert loaded.size == (20, 40)
    array = np.asarray(loaded).astype(int)
    # After a clockwise rotation the former top (red) is on the right.
    assert array[20, 18, 0] > 200 and array[20, 18, 2] < 60
    assert array[20, 1, 2] > 200 and array[20, 1, 0] < 60


def test_one_by_one_image_loads(tmp_path):
    path = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(path)
    _assert_rgb(load_image(path), (1, 2, 3), size=(1, 1))


def test_pil_rgb_input_returns_independent_copy():
    source = Image.new("RGB", SIZE, (5, 5, 5))
    loaded = load_image(source)
    assert loaded is not source
    loaded.putpixel((0, 0), (9, 9, 9))
    assert source.getpixel((0, 0)) == (5, 5, 5)


def test_loaded_file_is_closed_and_fully_decoded(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", SIZE, (1, 2, 3)).save(path)
    loaded = load_image(path)
    path.unlink()  # data must already be in memory
    _assert_rgb(loaded, (1, 2, 3))


# ------------------------------------------------------------------ bad files


def _write_noise(path: Path, size=(64, 64)) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_files_raise_one_line_error(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    _write_noise(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    _assert_one_line_error(excinfo, path.name, "truncated or corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_file_with_image_suffix_raises(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is\nnot an image\n")
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    _assert_one_line_error(excinfo, "notes.png", "not an image file")


def test_missing_path_raises(tmp_path):
    path = tmp_path / "missing.png"
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    _assert_one_line_error(excinfo, "missing.png", "file not found")


def test_directory_raises(tmp_path):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(folder)
    _assert_one_line_error(excinfo, "folder.png", "is a directory")


def test_unreadable_file_raises(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    Image.new("RGB", SIZE).save(path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)  # chmod does not stop root
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    _assert_one_line_error(excinfo, "locked.png", "permission denied")


def test_over_limit_image_raises_with_size(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(path)
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path, max_pixels=1_000_000)
    _assert_one_line_error(excinfo, "big.png", "too large", "3000x3000", "9000000", "1000000")
    assert load_image(path, max_pixels=9_000_000).size == (3000, 3000)


def test_pillow_decompression_bomb_is_reported(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 > 2x limit: Pillow raises
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    _assert_one_line_error(excinfo, "bomb.png", "too large")


def test_pillow_bomb_warning_is_not_raised_below_our_limit(tmp_path, monkeypatch):
    path = tmp_path / "warn.png"
    Image.new("L", (40, 40)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600: warning level only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).size == (40, 40)


def test_zero_sized_images_raise():
    with pytest.raises(ImageLoadError, match="empty image"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ImageLoadError, match="empty image"):
        load_image(np.zeros((0, 5), dtype=np.uint8))


def test_unsupported_source_type_raises():
    with pytest.raises(ImageLoadError, match="unsupported image source"):
        load_image(12345)  # type: ignore[arg-type]


def test_error_message_is_one_line_and_picklable():
    error = ImageLoadError("/x/a\nb.png", "bad\r\n  data\nhere")
    assert str(error) == "/x/a b.png: bad data here"
    assert isinstance(error, ValueError) and isinstance(error, InputError)
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is ImageLoadError and str(clone) == str(error)
    assert str(ImageLoadError("only a message")) == "only a message"


# ------------------------------------------------------------------ numpy input

# array, expected RGB
ARRAY_CASES = [
    pytest.param(np.full((4, 6), 7, np.uint8), (7, 7, 7), id="uint8-HxW"),
    pytest.param(np.full((4, 6, 1), 7, np.uint8), (7, 7, 7), id="uint8-HxWx1"),
    pytest.param(np.full((4, 6, 3), (1, 2, 3), np.uint8), (1, 2, 3), id="uint8-HxWx3"),
    pytest.param(np.full((4, 6, 4), (1, 2, 3, 0), np.uint8), (1, 2, 3), id="uint8-HxWx4"),
    pytest.param(np.full((4, 6), 65535, np.uint16), (255, 255, 255), id="uint16-max"),
    pytest.param(np.full((4, 6, 3), 257 * 10, np.uint16), (10, 10, 10), id="uint16-HxWx3"),
    pytest.param(np.full((4, 6), 65535, ">u2"), (255, 255, 255), id="uint16-big-endian"),
    pytest.param(np.ones((4, 6), bool), (255, 255, 255), id="bool"),
    pytest.param(np.full((4, 6), 0.5, np.float32), (128, 128, 128), id="float32-unit"),
    pytest.param(np.full((4, 6, 3), 1.0, np.float64), (255, 255, 255), id="float64-one"),
    pytest.param(np.full((4, 6), 200.0), (200, 200, 200), id="float-255-range"),
    pytest.param(np.full((4, 6), 300.0), (255, 255, 255), id="float-clipped"),
    pytest.param(np.full((4, 6), np.nan), (0, 0, 0), id="float-nan"),
    pytest.param(np.full((4, 6), 42, np.int64), (42, 42, 42), id="int64"),
]


@pytest.mark.parametrize(("array", "expected"), ARRAY_CASES)
def test_numpy_inputs(array, expected):
    _assert_rgb(load_image(array), expected)


def test_numpy_float_range_rules():
    unit = load_image(np.array([[0.0, 0.25, 1.0]]))
    assert np.asarray(unit)[0, :, 0].tolist() == [0, 64, 255]
    wide = load_image(np.array([[-5.0, 2.0, 300.0]]))
    assert np.asarray(wide)[0, :, 0].tolist() == [0, 2, 255]


@pytest.mark.parametrize("shape", [(4,), (4, 6, 2), (4, 6, 5), (2, 4, 6, 3)])
def test_numpy_bad_shapes_raise(shape):
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(np.zeros(shape, np.uint8))
    _assert_one_line_error(excinfo, "numpy array", str(shape))


def test_numpy_bad_dtype_raises():
    with pytest.raises(ImageLoadError, match="complex"):
        load_image(np.zeros((4, 6), np.complex64))


def test_numpy_over_limit_raises():
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(np.zeros((100, 100), np.uint8), max_pixels=9999)


# ------------------------------------------------------------------ masks


def _square_mask() -> np.ndarray:
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:5, 3:7] = True
    return mask


def test_load_mask_8bit_png(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(_square_mask().astype(np.uint8) * 255).save(path)
    mask = load_mask(path)
    assert mask.dtype == bool and mask.shape == (8, 10)
    assert (mask == _square_mask()).all()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda m: Image.fromarray(m), id="mode-1"),
        pytest.param(lambda m: Image.fromarray(m.astype(np.uint16) * 65535), id="16-bit"),
        pytest.param(lambda m: Image.fromarray(m.astype(np.uint8)), id="label-0-1"),
        pytest.param(
            lambda m: Image.fromarray(
                np.dstack([m * 255, m * 0, m * 0, np.full(m.shape, 255)]).astype(np.uint8)
            ),
            id="rgba-red",
        ),
    ],
)
def test_load_mask_other_encodings(tmp_path, make):
    path = tmp_path / "mask.png"
    make(_square_mask()).save(path)
    assert (load_mask(path) == _square_mask()).all()


def test_load_mask_palette_uses_indices(tmp_path):
    path = tmp_path / "mask.png"
    image = Image.new("P", (10, 8), 0)
    image.paste(2, (3, 2, 7, 5))  # same region as _square_mask()
    # Index 0 is white and index 2 black: a luminance threshold would invert the mask.
    image.putpalette(_palette((255, 255, 255), (0, 0, 0), (0, 0, 0)))
    image.save(path)
    assert (load_mask(path) == _square_mask()).all()


def test_load_mask_bad_file_raises(tmp_path):
    path = tmp_path / "mask.png"
    path.write_bytes(b"\x89PNG broken")
    with pytest.raises(ImageLoadError) as excinfo:
        load_mask(path)
    _assert_one_line_error(excinfo, "mask.png")
    with pytest.raises(ImageLoadError, match="file not found"):
        load_mask(tmp_path / "nope.png")


# ------------------------------------------------------------------ folders


def test_iter_image_files(tmp_path):
    for name in ["b.png", "A.JPG", "c.TiFf", ".hidden.png", "notes.txt", "d.webp", "e.bmp"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    names = [path.name for path in iter_image_files(tmp_path)]
    assert names == ["A.JPG", "b.png", "c.TiFf", "d.webp", "e.bmp"]
    assert all(isinstance(path, Path) for path in iter_image_files(str(tmp_path)))
    assert ".webp" in IMAGE_EXTENSIONS


def test_iter_image_files_errors(tmp_path):
    with pytest.raises(InputError) as excinfo:
        iter_image_files(tmp_path / "absent")
    _assert_one_line_error(excinfo, "absent", "folder not found")
    file = tmp_path / "file.png"
    file.write_bytes(b"")
    with pytest.raises(InputError, match="not a folder"):
        iter_image_files(file)


# ------------------------------------------------------------------ atomic writes


def _leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name != keep)


def test_atomic_write_bytes_and_text(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.bin"
    assert atomic_write_bytes(target, b"\x00\x01") == target
    assert target.read_bytes() == b"\x00\x01"
    atomic_write_text(target, "héllo\nwörld")
    assert target.read_bytes() == "héllo\nwörld".encode("utf-8")
    assert _leftovers(target.parent, "out.bin") == []


def test_atomic_write_keeps_old_content_when_replace_fails(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path, "out.txt") == []


def test_atomic_save_image_keeps_old_file_when_save_fails(tmp_path):
    target = tmp_path / "out.png"
    atomic_save_image(target, Image.new("RGB", SIZE, (1, 2, 3)))
    before = target.read_bytes()

    class ExplodingImage:
        def save(self, handle, format=None, **params):
            handle.write(b"partial")
            raise RuntimeError("encoder crashed")

    with pytest.raises(RuntimeError, match="encoder crashed"):
        atomic_save_image(target, ExplodingImage())  # type: ignore[arg-type]
    assert target.read_bytes() == before
    assert _leftovers(tmp_path, "out.png") == []
    _assert_rgb(load_image(target), (1, 2, 3))


def test_atomic_save_image_formats(tmp_path):
    jpeg = tmp_path / "out.jpg"
    atomic_save_image(jpeg, Image.new("RGB", SIZE, (200, 100, 50)), format="JPEG", quality=95)
    with Image.open(jpeg) as image:
        assert image.format == "JPEG"
    _assert_rgb(load_image(jpeg), (200, 100, 50), tol=4)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_write_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    fresh = tmp_path / "fresh.txt"
    atomic_write_text(fresh, "x")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask

    private = tmp_path / "private.txt"
    private.write_text("old")
    private.chmod(0o600)
    atomic_write_text(private, "new")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text() == "new"


# ------------------------------------------------------------------ overlay


def test_colorize_endpoints():
    colours = colorize(np.array([[0.0, 0.5, 1.0]])).astype(int)
    assert colours.shape == (1, 3, 3)
    low, mid, high = colours[0]
    assert low[2] > 100 and low[2] > low[0] and low[2] > low[1]  # blue-ish
    assert high[0] > 100 and high[0] > high[1] and high[0] > high[2]  # red-ish
    assert mid[1] > mid[0] and mid[1] > mid[2]  # green-ish
    assert colorize(np.zeros((2, 2))).dtype == np.uint8


def test_colorize_range_clipping_and_nan():
    reference = colorize(np.array([[0.0, 0.5, 1.0]]))
    scaled = colorize(np.array([[10.0, 15.0, 20.0]]), vmin=10.0, vmax=20.0)
    assert (scaled == reference).all()
    clipped = colorize(np.array([[-3.0, np.nan, 7.0]]))
    assert (clipped[0, 0] == reference[0, 0]).all()
    assert (clipped[0, 1] == reference[0, 0]).all()
    assert (clipped[0, 2] == reference[0, 2]).all()


def test_colorize_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        colorize(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="vmax"):
        colorize(np.zeros((2, 2)), vmin=1.0, vmax=1.0)


def test_render_overlay_small_is_side_by_side():
    image = Image.new("RGB", (30, 20), (128, 128, 128))
    scores = np.linspace(0, 1, 30 * 20).reshape(20, 30)
    out = render_overlay(image, scores)
    assert out.mode == "RGB" and out.size == (60, 20)
    array = np.asarray(out)
    assert (array[:, :30] == 128).all()  # left panel is the original
    assert not (array[:, 30:] == 128).all()  # right panel is tinted

    untinted = np.asarray(render_overlay(image, scores, alpha=0.0))
    assert (untinted[:, 30:] == untinted[:, :30]).all()


def test_render_overlay_downscales_large_inputs():
    image = Image.new("RGB", (3000, 1000), (50, 60, 70))
    scores = np.zeros((1000, 3000), dtype=np.float32)
    mask = np.zeros((1000, 3000), dtype=bool)
    mask[400:600, 1000:1500] = True
    out = render_overlay(image, scores, mask=mask, banner="big")
    assert out.size == (2 * MAX_OVERLAY_SIDE, 341)
    assert max(out.width // 2, out.height) <= 1024


def test_render_overlay_draws_mask_contour():
    image = Image.new("RGB", (20, 20), (0, 0, 0))
    scores = np.zeros((20, 20))
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 5:15] = True
    right = np.asarray(render_overlay(image, scores, alpha=1.0, mask=mask))[:, 20:]
    white = (right == 255).all(axis=2)
    assert white[5, 5:15].all() and white[14, 5:15].all() and white[5:15, 5].all()
    assert not white[7:13, 7:13].any()  # interior untouched
    assert not white[:5].any() and not white[16:].any()  # outside untouched


def test_render_overlay_banner_is_visible():
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    scores = np.zeros((100, 200))
    plain = np.asarray(render_overlay(image, scores, alpha=0.0))
    banner = "random weights - scores are not meaningful"
    marked = np.asarray(render_overlay(image, scores, alpha=0.0, banner=banner))
    top = marked[:12]
    assert (top == 0).all(axis=2).any()  # black box
    assert (top > 200).all(axis=2).any()  # white (antialiased) text
    assert not (plain[:12] == 0).all(axis=2).any()
    assert (marked[-10:] == plain[-10:]).all()  # only the top strip changes


def test_render_overlay_rejects_mismatched_shapes():
    image = Image.new("RGB", (10, 8))
    with pytest.raises(ValueError, match="anomaly_map"):
        render_overlay(image, np.zeros((10, 8)))
    with pytest.raises(ValueError, match="mask"):
        render_overlay(image, np.zeros((8, 10)), mask=np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="alpha"):
        render_overlay(image, np.zeros((8, 10)), alpha=1.5)
