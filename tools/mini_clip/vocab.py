"""What a scene can contain: object kinds, colours, backgrounds, defects, and the
object-defect combinations that never appear in training."""

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


def readable(kind: str) -> str:
    return kind.replace("_", " ")


def allowed_defects(kind: str, training: bool) -> tuple[str, ...]:
    """Defects a scene of ``kind`` may have (training excludes the held-out combinations)."""
    return tuple(d for d in DEFECTS if not (training and (kind, d) in HELD_OUT))
