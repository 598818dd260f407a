"""The shots / reference-pool front end shared by ``alfa-ad run``, ``learn-prompts`` and the
service (alfa_ad/references.py), on hand-checked cases; and the field-naming errors of
``DetectorConfig`` that the CLI and the service phrase their own way."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from alfa_ad.config import ConfigFieldError, DetectorConfig
from alfa_ad.io.images import InputError
from alfa_ad.registry import METHODS
from alfa_ad.references import (Pool, ShotsError, calibrates_by_leave_one_out, choose_references, find_pool,
                                parse_shots, pool_shortfall)


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:03d}.png" for i in range(n)]
    for p in paths:
        Image.new("RGB", (8, 8), (128, 128, 128)).save(p)
    return paths


# ------------------------------------------------------------------ parse_shots
@pytest.mark.parametrize("value, expected", [
    ("all", "all"), ("0", 0), ("00", 0), ("007", 7), ("3", 3), (3, 3), (0, 0), (" 2 ", 2),
])
def test_parse_shots_reads_all_or_a_count(value, expected):
    assert parse_shots(value) == expected


@pytest.mark.parametrize("value", ["three", "-1", "2.5", "", "ALL", "1e3", "²", "+2", None])
def test_parse_shots_names_the_bad_value_on_one_line(value):
    with pytest.raises(ShotsError) as err:
        parse_shots(value)
    assert str(err.value) == f"--shots must be a number or 'all', got {value!r}"
    assert err.value.problem == f"must be a number or 'all', got {value!r}"
    assert isinstance(err.value, ValueError)


def test_parse_shots_minimum_and_option_name():
    assert parse_shots("1", minimum=1) == 1 and parse_shots("all", minimum=1) == "all"
    with pytest.raises(ShotsError, match=r"^--shots must be a number of at least 1 or 'all', got '0'$"):
        parse_shots("0", minimum=1)
    with pytest.raises(ShotsError, match=r"^shots must be a number or 'all', got 'x'$"):
        parse_shots("x", name="shots")


def test_leave_one_out_needs_two_references():
    assert [calibrates_by_leave_one_out(k) for k in (0, 1, 2, 5, "all")] == [False, False, True, True, True]


# ------------------------------------------------------------------ find_pool
def test_pool_from_a_normals_folder_or_its_class_subfolder(tmp_path):
    flat = _images(tmp_path / "flat", 3)
    assert find_pool("bottle", normals=tmp_path / "flat") == Pool(tuple(flat), str(tmp_path / "flat"))
    _images(tmp_path / "per_class", 1)  # the folder's own images are not the class's
    sub = _images(tmp_path / "per_class" / "bottle", 2)
    pool = find_pool("bottle", normals=tmp_path / "per_class")
    assert pool.images == tuple(sub) and pool.where == str(tmp_path / "per_class" / "bottle")
    images, where = pool  # unpacks like the (images, where) pair few_shot_prepare reads
    assert images == tuple(sub)


def test_pool_from_the_train_split(tmp_path):
    good = _images(tmp_path / "mvtec" / "bottle" / "train" / "good", 4)
    pool = find_pool("bottle", data=tmp_path / "mvtec")
    assert pool == Pool(tuple(good), "the train split of bottle")
    named = find_pool("bottle", data=tmp_path / "mvtec", name_data=True)
    assert named.where == f"the train split of bottle in {tmp_path / 'mvtec'}"
    # normals win over the data's train split
    other = _images(tmp_path / "refs", 1)
    assert find_pool("bottle", normals=tmp_path / "refs", data=tmp_path / "mvtec").images == tuple(other)


def test_pool_errors_are_one_line(tmp_path):
    with pytest.raises(InputError) as err:
        find_pool("cable", data=tmp_path)
    assert "no normal training images for class 'cable'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError):
        find_pool("cable", normals=tmp_path / "missing")
    with pytest.raises(ValueError, match="class 'cable': normal references need a normals folder or data"):
        find_pool("cable")


# ------------------------------------------------------------------ pool_shortfall
def test_too_small_pool_message_names_class_place_count_and_ask():
    pool = Pool((Path("a.png"), Path("b.png"), Path("c.png")), "the train split of bottle")
    assert pool_shortfall("bottle", pool, 5) == ("class 'bottle' has 3 normal images (the train split of bottle) "
                                                 "but --shots 5 asks for 5")
    assert pool_shortfall("bottle", pool, 3) is None and pool_shortfall("bottle", pool, "all") is None
    assert pool_shortfall("bottle", pool, 0) is None
    empty = Pool((), "/refs/bottle")
    assert pool_shortfall("bottle", empty, "all") == ("class 'bottle' has 0 normal images (/refs/bottle) "
                                                      "but --shots all asks for at least one")
    assert pool_shortfall("bottle", empty, 0) is None


# ------------------------------------------------------------------ choose_references
def test_choose_references_draws_like_a_seeded_sample():
    pool = tuple(Path(f"{i:02d}.png") for i in range(10))
    assert choose_references(pool, "all", 3) == list(pool)
    drawn = choose_references(pool, 4, 3)
    assert drawn == sorted(random.Random(3).sample(list(pool), 4)) and len(set(drawn)) == 4
    assert choose_references(pool, "4", 3) == drawn  # RunOptions keep shots as text
    assert choose_references(pool, 4, 4) != drawn


# ------------------------------------------------------------------ DetectorConfig errors by field
@pytest.mark.parametrize("kwargs, field, problem, message", [
    ({"method": "x"}, "method", f"must be one of {', '.join(METHODS.names())}, got 'x'",
     f"unknown method 'x'; choose from {', '.join(METHODS.names())}"),
    ({"few_shot_scorer": "n"}, "few_shot_scorer", "must be one of bank, residual, got 'n'",
     "unknown few-shot scorer 'n'; choose from bank, residual"),
    ({"fusion": "q"}, "fusion", "must be normalized or raw, got 'q'", "fusion must be normalized or raw, got 'q'"),
    ({"batch_size": "0"}, "batch_size", "must be an integer >= 1 or auto, got '0'",
     "batch_size must be an integer >= 1 or auto, got '0'"),
    ({"contextual": "z"}, "contextual", "must be one of global, all, soft, off, got 'z'",
     "contextual must be one of global, all, soft, off, got 'z'"),
    ({"preset": "p"}, "preset", "must be one of paper, got 'p'", "unknown preset 'p'; choose from paper"),
])
def test_config_errors_name_their_field(kwargs, field, problem, message):
    with pytest.raises(ConfigFieldError) as err:
        DetectorConfig(**kwargs)
    assert (err.value.field, err.value.problem, str(err.value)) == (field, problem, message)
