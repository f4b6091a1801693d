"""API keys: configured by their SHA-256, presented as bearer tokens, compared in constant time.

The server never holds a key itself, only its hash, so a leaked config or environment does not
leak keys. Every configured hash is compared (no early exit), so timing does not tell how many
keys exist or which one nearly matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9_.-]{1,64}):(?P<hash>[0-9a-f]{64})$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return "dq_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKeys:
    entries: tuple[tuple[bytes, str], ...] = ()  # (sha256 digest, name)

    @classmethod
    def parse(cls, spec: str) -> ApiKeys:
        """``name:sha256hex`` entries separated by commas (``diffq keygen`` prints one)."""
        entries = []
        names = set()
        for raw in filter(None, (part.strip() for part in spec.split(","))):
            m = _ENTRY.match(raw)
            if m is None:
                raise ValueError(
                    f"API key entry {raw[:12]!r}... must be name:sha256hex (64 lowercase hex digits)"
                )
            if m["name"] in names:
                raise ValueError(f"API key name {m['name']!r} appears twice")
            names.add(m["name"])
            entries.append((bytes.fromhex(m["hash"]), m["name"]))
        return cls(tuple(entries))

    def identify(self, key: str) -> str | None:
        """The name of the key, or None."""
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for known, name in self.entries:
            if hmac.compare_digest(known, digest):
                found = name
        return found
