"""The attribute vocabularies, their exact RGB values and geometry, and the held-out pairs.

Everything a renderer, a caption or a classifier agrees on lives in these tables, so the values
a model card quotes are the values drawn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

IMAGE_SIDE = 32

SHAPES = ("circle", "square", "triangle")
# d, the shape's diameter / side / base and height, as a share of the image side.
SIZES = {"small": 0.3, "large": 0.55}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 190),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "white": (245, 245, 245),
}
# The shape's centre as a share of (width, height), before jitter.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
JITTER = 1.5  # pixels, uniform in [-JITTER, JITTER] on each axis

# Color-shape pairs never drawn for training: they measure composition.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("orange", "circle"), ("green", "square")}
)

ATTRIBUTE_NAMES = ("shape", "color", "background", "position", "size")
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "background": tuple(BACKGROUNDS),
    "position": tuple(POSITIONS),
    "size": tuple(SIZES),
}


@dataclass(frozen=True)
class Attributes:
    """What one image shows."""

    shape: str
    color: str
    background: str
    position: str
    size: str

    def __post_init__(self) -> None:
        for name in ATTRIBUTE_NAMES:
            value = getattr(self, name)
            if value not in VOCABULARIES[name]:
                raise ValueError(f"{name} {value!r} is not one of {VOCABULARIES[name]}")
        if COLORS[self.color] == BACKGROUNDS[self.background]:
            raise ValueError(f"a {self.color} shape on a {self.background} background is invisible")

    @property
    def held_out(self) -> bool:
        return (self.color, self.shape) in HELD_OUT

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def index(self, name: str) -> int:
        """The attribute's class index in ``VOCABULARIES[name]`` (the classifier's label)."""
        return VOCABULARIES[name].index(getattr(self, name))


def valid(color: str, background: str) -> bool:
    """Whether a shape of ``color`` can sit on ``background`` (never the same RGB)."""
    return COLORS[color] != BACKGROUNDS[background]
