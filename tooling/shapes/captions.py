"""Captions from templates (synonyms, varied order, optional attributes) and their parser.

A caption states a subset of an image's attributes; whatever it leaves out was drawn at random,
so the model learns that an unstated attribute may be anything. ``parse`` reads back exactly
the attributes a caption states (tests hold captions to it; eval uses it to know what a prompt
asked for).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import numpy as np

from tooling.shapes.attributes import ATTRIBUTE_NAMES, Attributes

SHAPE_WORDS = {"circle": ("circle", "disc", "disk"), "square": ("square", "box"), "triangle": ("triangle",)}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
COLOR_WORDS = {
    "red": ("red",),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow",),
    "purple": ("purple",),
    "orange": ("orange",),
    "white": ("white",),
    "black": ("black",),
    "gray": ("gray", "grey"),
}
GENERIC_NOUNS = ("shape", "object")
POSITION_PHRASES = {
    "left": ("on the left", "at the left", "to the left", "left"),
    "right": ("on the right", "at the right", "to the right", "right"),
    "top": ("at the top", "on top", "top"),
    "bottom": ("at the bottom", "on the bottom", "bottom"),
    "center": ("in the center", "in the middle", "at the center", "centered"),
}
POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"} | {
    "center": "center",
    "middle": "center",
    "centered": "center",
}
BACKGROUND_TEMPLATES = ("{} background", "on {}", "on a {} background", "against {}", "with a {} background")
# How often a caption states each attribute (the shape noun is almost always there).
STATE_PROBABILITY = {"shape": 0.9, "color": 0.85, "background": 0.6, "position": 0.65, "size": 0.6}


def caption_words() -> list[str]:
    """Every word a caption can contain, for the tokenizer's vocabulary."""
    phrases = [
        *(w for ws in SHAPE_WORDS.values() for w in ws),
        *(w for ws in SIZE_WORDS.values() for w in ws),
        *(w for ws in COLOR_WORDS.values() for w in ws),
        *GENERIC_NOUNS,
        *(p for ps in POSITION_PHRASES.values() for p in ps),
        *(t.format("") for t in BACKGROUND_TEMPLATES),
        "a an",
    ]
    return sorted({w for p in phrases for w in p.split()})


def choose_stated(rng: np.random.Generator, always: Collection[str] = ()) -> frozenset[str]:
    """The attributes a caption states: each with its probability, ``always`` ones for sure."""
    return frozenset(n for n in ATTRIBUTE_NAMES if n in always or rng.random() < STATE_PROBABILITY[n])


def caption(attrs: Attributes, stated: Collection[str], rng: np.random.Generator) -> str:
    """A caption of ``attrs`` stating exactly the attributes in ``stated``."""

    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    adjectives = []
    if "size" in stated:
        adjectives.append(pick(SIZE_WORDS[attrs.size]))
    if "color" in stated:
        adjectives.append(pick(COLOR_WORDS[attrs.color]))
    if len(adjectives) == 2 and rng.random() < 0.25:
        adjectives.reverse()
    noun = pick(SHAPE_WORDS[attrs.shape]) if "shape" in stated else pick(GENERIC_NOUNS)
    words = [*adjectives, noun]
    roll = rng.random()
    if roll < 0.4:
        words.insert(0, "an" if words[0][0] in "aeiou" else "a")
    elif roll < 0.5:
        words.insert(0, "a")  # as people write it, whatever the next word
    phrases = [" ".join(words)]
    extras = []
    if "position" in stated:
        extras.append(pick(POSITION_PHRASES[attrs.position]))
    if "background" in stated:
        extras.append(pick(BACKGROUND_TEMPLATES).format(pick(COLOR_WORDS[attrs.background])))
    rng.shuffle(extras)
    if extras and rng.random() < 0.2:  # a phrase first: "on the left, a red circle"
        phrases.insert(0, extras.pop(0))
    phrases.extend(extras)
    joiners = [", " if rng.random() < 0.4 else " " for _ in phrases[1:]]
    out = phrases[0]
    for joiner, phrase in zip(joiners, phrases[1:], strict=True):
        out += joiner + phrase
    return out


def _word_table(table: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    return {w: value for value, ws in table.items() for w in ws}


_SHAPES, _SIZES, _COLORS = _word_table(SHAPE_WORDS), _word_table(SIZE_WORDS), _word_table(COLOR_WORDS)


def parse(text: str) -> dict[str, str]:
    """The attributes a caption states, by name (missing names were not stated).

    A color word is the background when "background" follows it or "on"/"against" (or "on a",
    "with a") precedes it; otherwise it is the shape's color.
    """
    words = re.findall(r"[a-z]+", text.lower())
    out: dict[str, str] = {}
    for i, w in enumerate(words):
        before = words[max(0, i - 2) : i]
        if w in _SHAPES:
            out["shape"] = _SHAPES[w]
        elif w in _SIZES:
            out["size"] = _SIZES[w]
        elif w in POSITION_WORDS:
            out["position"] = POSITION_WORDS[w]
        elif w in _COLORS:
            is_background = (
                words[i + 1 : i + 2] == ["background"]
                or before[-1:] in (["on"], ["against"])
                or before in (["on", "a"], ["with", "a"], ["against", "a"])
            )
            out["background" if is_background else "color"] = _COLORS[w]
    return out
