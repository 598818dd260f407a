"""Captions: many templates naming the object, its colour, the background, the
photo style and the defect when there is one.

Like web captions, they use the ordinary words for an object's state - specific
("scratched", "with a hole") and generic ("damaged", "defective", "flawless",
"without defect") - so these words are part of the model's vocabulary.  The
exact prompt sentences of ALFA and WinCLIP are not templates here.
"""

from __future__ import annotations

import numpy as np

from .scenes import Scene
from .vocab import BACKGROUNDS, TEXTURE_WORDS, TEXTURES, readable

DEFECT_WORDS = {  # adjectives, phrases after the noun
    "scratch": (("scratched",), ("with a scratch", "with scratches", "with a scratch on its surface")),
    "hole": (("holed", "punctured", "perforated"), ("with a hole", "with a hole in it", "with a puncture")),
    "stain": (("stained",), ("with a stain", "with a dark stain", "with a stain on it")),
    "crack": (("cracked",), ("with a crack", "with cracks", "with a cracked surface")),
    "missing": (("chipped",), ("with a missing piece", "with a piece missing", "with a chipped edge")),
    "bent": (("bent", "deformed"), ("with a bent edge", "with a bent corner", "with a deformation")),
    "contamination": (("contaminated", "dirty"),
                      ("with contamination", "with specks of dirt", "with debris on it", "with foreign particles")),
    # texture defects (surfaces.py)
    "thread": (("frayed",), ("with a loose thread", "with a stray thread", "with a stray fibre", "with a thread on it")),
    "colour": (("discoloured", "discolored", "faded"),
               ("with a discoloured patch", "with a colour defect", "with a discoloration", "with a faded spot")),
}
GENERIC_BAD = (("damaged", "defective", "broken", "abnormal", "faulty", "flawed", "anomalous"),
               ("with a defect", "with damage", "with a flaw", "with defects"))
GOOD = (("flawless", "perfect", "intact", "normal", "good", "clean", "unblemished", "undamaged", "pristine"),
        ("without defect", "without damage", "without defects", "with no defects", "without any damage",
         "in perfect condition", "without flaw"))
# how often a caption states the part's condition, and how (inspection captions mostly say it):
# (intact: no state word below, adjective below, else a phrase; defect: specific words only,
# generic words only, else both).  The first training stage used (0.4, 0.75, 0.5, 0.25).
STATE_MIX = (0.2, 0.6, 0.3, 0.25)
STYLE_PREFIX = {
    "": ("a photo of", "an image of", "a picture of", "a photograph of", "an industrial image of",
         "a high-resolution photo of", "a high-resolution image of", "a photo showing", "there is"),
    "bright": ("a bright photo of", "a brightly lit image of", "a bright image of"),
    "dark": ("a dark photo of", "a dim photo of", "a dark image of"),
    "close-up": ("a close-up photo of", "a close-up image of", "a cropped photo of"),
}
BACKGROUND_PHRASES = ("on a {} background", "on a {} surface", "against a {} background", "lying on a {} surface")
SUFFIXES = ("for visual inspection", "for anomaly detection", "for quality control")
STATE_SENTENCES_BAD = ("it is {}.", "the part is {}.", "this one is {}.")
STATE_SENTENCES_GOOD = ("it is {}.", "the part looks {}.", "no defects.", "nothing is wrong with it.")


def _pick(rng: np.random.Generator, options) -> str:
    return str(options[int(rng.integers(len(options)))])


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _state(scene: Scene, rng, mix=STATE_MIX) -> tuple[list[str], list[str], str]:
    """Adjectives, a phrase after the noun, and a one-word state (for other templates)."""
    if scene.defect is None:
        roll = rng.random()
        if roll < mix[0]:
            return [], [], ""
        if roll < mix[1]:
            word = _pick(rng, GOOD[0])
            return [word], [], word
        return [], [_pick(rng, GOOD[1])], _pick(rng, GOOD[0])
    adj, post = DEFECT_WORDS[scene.defect]
    roll = rng.random()
    if roll < mix[2]:  # specific only
        if rng.random() < 0.5:
            word = _pick(rng, adj)
            return [word], [], word
        return [], [_pick(rng, post)], _pick(rng, adj)
    if roll < mix[2] + mix[3]:  # generic only
        if rng.random() < 0.6:
            word = _pick(rng, GENERIC_BAD[0])
            return [word], [], word
        return [], [_pick(rng, GENERIC_BAD[1])], _pick(rng, GENERIC_BAD[0])
    return [_pick(rng, GENERIC_BAD[0])], [_pick(rng, post)], _pick(rng, adj)  # both


def _with_state_sentence(base: str, scene: Scene, rng, word: str) -> str:
    """``base`` followed by a sentence stating the condition (intact, or ``word``)."""
    if scene.defect is None:
        return f"{base} {_pick(rng, STATE_SENTENCES_GOOD).format(_pick(rng, GOOD[0]))}"
    return f"{base} {_pick(rng, STATE_SENTENCES_BAD).format(word)}"


def _finish(text: str, rng) -> str:
    """A one-sentence caption, sometimes with a suffix, and its full stop."""
    if rng.random() < 0.1:
        text += " " + _pick(rng, SUFFIXES)
    return text + "."


TEXTURE_NOUNS = ("", "", " texture", " surface", " pattern", " material", " sample")
TEXTURE_PREFIX = ("a close-up of", "a macro photo of", "a texture image of", "a surface image of")


def texture_caption(scene: Scene, rng: np.random.Generator, mix=STATE_MIX) -> str:
    """A caption of a texture scene: the material (its class name most often), colour, condition."""
    adjs, posts, word = _state(scene, rng, mix)
    names = TEXTURE_WORDS[scene.kind]
    noun = (names[0] if rng.random() < 0.6 else _pick(rng, names[1:])) + _pick(rng, TEXTURE_NOUNS)
    colour = scene.colour if rng.random() < 0.7 else ""
    obj = " ".join(adjs + ([colour] if colour else []) + [noun] + posts)
    obj = f"{_article(obj)} {obj}" if rng.random() < 0.7 else f"the {obj}" if rng.random() < 0.5 else obj
    form = rng.random()
    if form < 0.35:
        text = f"{_pick(rng, STYLE_PREFIX[scene.style])} {obj}"
    elif form < 0.5:
        text = f"{_pick(rng, TEXTURE_PREFIX)} {obj}"
    elif form < 0.7:
        text = obj
    elif form < 0.85:  # tag list
        tags = [names[0]] + ([colour] if colour else []) + ([word] if word else []) + [_pick(rng, ("texture", "surface"))]
        rng.shuffle(tags)
        return ", ".join(tags)
    else:  # state in a second sentence
        base = f"{_pick(rng, STYLE_PREFIX[scene.style])} {_article(colour or names[0])} {colour + ' ' if colour else ''}{names[0]} surface."
        return _with_state_sentence(base, scene, rng, word)
    return _finish(text, rng)


def caption(scene: Scene, rng: np.random.Generator, mix=STATE_MIX) -> str:
    """One caption of ``scene`` drawn from the templates (``mix``: see :data:`STATE_MIX`)."""
    if scene.kind in TEXTURES:
        return texture_caption(scene, rng, mix)
    adjs, posts, word = _state(scene, rng, mix)
    size = "small" if scene.r < 0.31 else "large" if scene.r > 0.35 else ""
    colour = scene.colour if rng.random() < 0.85 else ""
    kind = readable(scene.kind)
    words = adjs + ([size] if size and rng.random() < 0.3 else []) + ([colour] if colour else []) + [kind] + posts
    obj = " ".join(words)
    obj = f"{_article(obj)} {obj}" if rng.random() < 0.85 else f"the {obj}"
    bg = _pick(rng, BACKGROUND_PHRASES).format(_pick(rng, BACKGROUNDS[scene.background]))
    form = rng.random()
    if form < 0.4:
        text = f"{_pick(rng, STYLE_PREFIX[scene.style])} {obj} {bg}"
    elif form < 0.55:
        text = f"{obj} {bg}"
    elif form < 0.75:
        text = f"{_pick(rng, STYLE_PREFIX[scene.style])} {obj}"
    elif form < 0.87:  # tag list
        tags = [kind] + ([colour] if colour else []) + ([word] if word else []) + [f"{scene.background} background"]
        rng.shuffle(tags)
        return ", ".join(tags)
    else:  # state in a second sentence
        base = f"{_pick(rng, STYLE_PREFIX[scene.style])} {_article(colour or kind)} {colour + ' ' if colour else ''}{kind} {bg}."
        return _with_state_sentence(base, scene, rng, word)
    return _finish(text, rng)
