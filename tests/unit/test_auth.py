"""API keys: parsed from name:sha256 entries, identified by hash, refused when malformed; the
gateway refuses to start with auth on and no keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.auth import ApiKeys, hash_key, new_key
from service.config import GatewaySettings


def test_identify_by_hash_only() -> None:
    a, b = new_key(), new_key()
    assert a != b and len(a) > 40
    keys = ApiKeys.parse(f"alice:{hash_key(a)}, bob:{hash_key(b)}")
    assert keys.identify(a) == "alice" and keys.identify(b) == "bob"
    assert keys.identify(a + "x") is None and keys.identify("") is None
    assert hash_key(a) not in repr(keys)  # digests are kept as bytes, the key nowhere


@pytest.mark.parametrize(
    "spec",
    ["alice", "alice:abc", f"alice:{'A' * 64}", f"bad name:{'a' * 64}", f"x:{'a' * 64},x:{'b' * 64}"],
)
def test_malformed_entries_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        ApiKeys.parse(spec)


def test_auth_on_needs_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFQ_AUTH", raising=False)
    monkeypatch.delenv("DIFFQ_API_KEYS", raising=False)
    with pytest.raises(ValidationError, match="DIFFQ_API_KEYS"):
        GatewaySettings()
    assert GatewaySettings(auth="off").auth == "off"
    on = GatewaySettings(api_keys=f"ops:{hash_key('k')}")
    assert on.auth == "required" and on.keys.identify("k") == "ops"
