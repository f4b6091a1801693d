"""Which secrets sign a key's webhooks: ``DIFFQ_WEBHOOK_SECRETS``, parsed once.

``name=whsec_...`` entries, comma-separated, one per API key name (``anonymous`` when auth is
off); ``*`` is the secret of every key without its own. During a rotation an entry lists the
new secret and the old, ``|``-separated, newest first: each delivery carries a signature under
each, and a receiver that holds either one verifies it. A key with no secret may not ask for
webhooks (its submission is refused), so no delivery ever goes out unsigned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from webhooks.signing import secret_key

_NAME = re.compile(r"^(\*|[A-Za-z0-9_.-]{1,64})$")
MAX_PER_KEY = 4  # secrets one key may sign with at once (a rotation needs two)


@dataclass(frozen=True)
class WebhookSecrets:
    keys: dict[str, tuple[bytes, ...]] = field(default_factory=dict)  # key name (or *) -> key bytes

    @classmethod
    def parse(cls, spec: str) -> WebhookSecrets:
        """``ValueError`` names the entry at fault (by its key name, never a secret)."""
        keys: dict[str, tuple[bytes, ...]] = {}
        for n, raw in enumerate(filter(None, (part.strip() for part in spec.split(","))), 1):
            name, sep, secrets = raw.partition("=")
            name = name.strip()
            if not sep or not _NAME.match(name):
                raise ValueError(f"webhook secret entry {n} must be NAME=whsec_... (NAME a key name or *)")
            if name in keys:
                raise ValueError(f"webhook secrets for {name!r} appear twice")
            listed = [s.strip() for s in secrets.split("|")]
            if not 1 <= len(listed) <= MAX_PER_KEY:
                raise ValueError(f"{name!r} has 1 to {MAX_PER_KEY} webhook secrets, not {len(listed)}")
            try:
                keys[name] = tuple(secret_key(s) for s in listed)
            except ValueError as e:
                raise ValueError(f"webhook secret of {name!r}: {e}") from None
        return cls(keys)

    def for_owner(self, owner: str) -> tuple[bytes, ...]:
        """The keys that sign ``owner``'s deliveries, newest first; empty: it has none."""
        return self.keys.get(owner) or self.keys.get("*", ())
