"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A delivery carries ``webhook-id`` (the message id, the same for every retry of it),
``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``: ``v1,`` then
the base64 HMAC-SHA256 of ``<id>.<timestamp>.<body>`` under the secret, one per secret,
space-separated. A secret is ``whsec_`` and the base64 of its key bytes. While a key's secret
is rotated both are given, and a receiver holding either one verifies the delivery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence

PREFIX = "whsec_"
KEY_BYTES = (24, 64)  # the spec's advice for a secret's key length, in bytes


def new_secret() -> str:
    """A fresh secret (32 random bytes), as ``diffq`` prints it for an operator to share."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret; ``ValueError`` for anything else."""
    if not secret.startswith(PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ and base64") from None
    if not KEY_BYTES[0] <= len(key) <= KEY_BYTES[1]:
        raise ValueError(f"a webhook secret's key is {KEY_BYTES[0]} to {KEY_BYTES[1]} bytes, not {len(key)}")
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of a delivery."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a delivery of ``body``, signed with every key (newest first)."""
    if not keys:
        raise ValueError("a delivery is signed with at least one secret")
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(k, message_id, timestamp, body) for k in keys),
    }
