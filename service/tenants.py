"""What each API key may ask of the queue: its share of the workers and whether it may use
``high`` priority. Parsed once from the settings; pure."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from diffq.jobs import ANONYMOUS

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_WEIGHT = 1000.0


@dataclass(frozen=True)
class Tenants:
    weights: dict[str, float] = field(default_factory=dict)  # key name -> share; absent: 1
    high: frozenset[str] = frozenset()  # key names granted `high` priority
    open_access: bool = False  # auth off: the one caller (`anonymous`) may use everything

    @classmethod
    def parse(cls, weights: str, high: str, open_access: bool = False) -> Tenants:
        """``weights``: ``name=share`` entries, comma-separated (shares in (0, 1000]);
        ``high``: key names, comma-separated."""
        parsed: dict[str, float] = {}
        for raw in filter(None, (part.strip() for part in weights.split(","))):
            name, sep, value = raw.partition("=")
            name = name.strip()
            if not sep or not _NAME.match(name):
                raise ValueError(f"key weight entry {raw[:40]!r} must be name=share")
            try:
                share = float(value)
            except ValueError:
                raise ValueError(f"key weight of {name!r} must be a number, not {value[:20]!r}") from None
            if not (math.isfinite(share) and 0 < share <= MAX_WEIGHT):
                raise ValueError(f"key weight of {name!r} must be within (0, {MAX_WEIGHT:g}]")
            if name in parsed:
                raise ValueError(f"key {name!r} has two weights")
            parsed[name] = share
        names = frozenset(filter(None, (part.strip() for part in high.split(","))))
        for name in names:
            if not _NAME.match(name):
                raise ValueError(f"high-priority key name {name[:40]!r} is not a key name")
        return cls(parsed, names, open_access)

    def weight(self, owner: str) -> float:
        return self.weights.get(owner, 1.0)

    def may_use_high(self, owner: str) -> bool:
        return owner in self.high or (self.open_access and owner == ANONYMOUS)

    def unknown(self, known: set[str]) -> list[str]:
        """Names given a weight or a grant that are not among ``known`` key names."""
        return sorted((set(self.weights) | self.high) - known)
