"""What a scene can contain: object kinds, texture classes, colours, backgrounds, defects,
and the class-defect combinations that never appear in training."""

from __future__ import annotations

# object kinds; the first five carry MVTec AD class names, so the shipped LLM prompt
# library (prompts/mvtec.json) has prompts for them (written for the real objects)
OBJECTS = ("metal_nut", "capsule", "pill", "screw", "washer", "gear", "bracket", "plate")

# colour name -> RGB (0-255)
COLOURS = {
    "red": (200, 40, 35), "green": (45, 160, 60), "blue": (40, 80, 200), "yellow": (230, 200, 40),
    "orange": (235, 130, 30), "purple": (130, 60, 170), "white": (235, 235, 230), "grey": (135, 138, 140),
    "pink": (235, 130, 170), "cyan": (50, 190, 200),
}

# background textures and the words captions use for them
BACKGROUNDS = {
    "plain": ("plain", "smooth", "uniform"),
    "striped": ("striped", "stripy"),
    "checkered": ("checkered", "chequered", "checkerboard"),
    "noisy": ("noisy", "speckled"),
    "wooden": ("wooden", "wood-grain"),
    "dotted": ("dotted", "polka-dot"),
}

DEFECTS = ("scratch", "hole", "stain", "crack", "missing", "bent", "contamination")

# never rendered with a defect in training; present in the benchmark (test/<defect>)
HELD_OUT = frozenset({
    ("metal_nut", "contamination"), ("capsule", "crack"), ("pill", "scratch"), ("screw", "stain"),
    ("washer", "bent"), ("gear", "hole"), ("bracket", "missing"), ("plate", "crack"),
})


# texture classes (MVTec AD's texture names): the material fills the frame (surfaces.py)
TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
TEXTURE_WORDS = {  # the class name first: captions use it most often
    "carpet": ("carpet", "woven carpet", "rug", "woven fabric"),
    "grid": ("grid", "wire mesh", "metal grid", "mesh"),
    "leather": ("leather", "grained leather", "hide"),
    "tile": ("tile", "stone tile", "terrazzo tile", "speckled stone"),
    "wood": ("wood", "wooden board", "timber", "wood grain"),
}
# defects of a texture: those of an object that make sense on a flat surface, and two of its own
TEXTURE_DEFECTS = ("scratch", "hole", "stain", "crack", "contamination", "thread", "colour")
ALL_DEFECTS = DEFECTS + tuple(d for d in TEXTURE_DEFECTS if d not in DEFECTS)
TEXTURE_HELD_OUT = frozenset({
    ("carpet", "stain"), ("grid", "crack"), ("leather", "scratch"), ("tile", "thread"), ("wood", "hole"),
})
CLASSES = OBJECTS + TEXTURES


def is_texture(kind: str) -> bool:
    return kind in TEXTURES


def held_out(kind: str, defect: str | None) -> bool:
    """Whether ``kind`` with ``defect`` never occurs in training (objects and textures)."""
    return (kind, defect) in HELD_OUT or (kind, defect) in TEXTURE_HELD_OUT


def defects_of(kind: str) -> tuple[str, ...]:
    if kind in TEXTURES:
        return TEXTURE_DEFECTS
    if kind in OBJECTS:
        return DEFECTS
    raise ValueError(f"unknown class {kind!r}; choose from {', '.join(CLASSES)}")


def readable(kind: str) -> str:
    return kind.replace("_", " ")


def allowed_defects(kind: str, training: bool) -> tuple[str, ...]:
    """Defects a scene of ``kind`` may have (training excludes the held-out combinations)."""
    return tuple(d for d in defects_of(kind) if not (training and held_out(kind, d)))
