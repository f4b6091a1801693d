"""Webhooks' pure parts: signatures a receiver verifies with the `standardwebhooks` package,
the address rule against server-side request forgery, and the retry schedule."""

from __future__ import annotations

import json
import random
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhooks.addresses import RefusedReceiver, check_url, checked_addresses, refusal
from webhooks.backoff import DELAYS_SECONDS, MAX_ATTEMPTS, retry_delay
from webhooks.signing import headers, new_secret, secret_key


def test_a_delivery_verifies_with_standardwebhooks_under_either_secret_of_a_rotation() -> None:
    old, new = new_secret(), new_secret()
    body = json.dumps({"id": "j" * 32, "status": "succeeded"}).encode()
    sent = headers([secret_key(new), secret_key(old)], "msg_1", int(time.time()), body)
    for secret in (old, new):
        assert Webhook(secret).verify(body, sent) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, sent)  # a secret it was not signed with
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body + b" ", sent)  # a body changed on the way
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body, {**sent, "webhook-id": "msg_2"})


@pytest.mark.parametrize("secret", ["", "whsec_", "sk_abc", "whsec_not base64!", "whsec_" + "QUJD"])
def test_malformed_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        secret_key(secret)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1%eth0",
        "fc00::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "ff02::1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


def test_a_host_passes_only_if_every_address_it_resolves_to_does() -> None:
    table = {"public.example": ["93.184.216.34"], "mixed.example": ["93.184.216.34", "10.0.0.5"], "none": []}

    def resolve(host: str, port: int) -> list[str]:
        return table[host]

    assert checked_addresses("public.example", 443, resolve) == ["93.184.216.34"]
    with pytest.raises(RefusedReceiver, match=r"10\.0\.0\.5"):
        checked_addresses("mixed.example", 443, resolve)
    assert checked_addresses("mixed.example", 443, resolve, allow_private=True) == [
        "93.184.216.34",
        "10.0.0.5",
    ]
    with pytest.raises(RefusedReceiver, match="no address"):
        checked_addresses("none", 443, resolve, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x.example/",
        "http:///path",
        "https://user:pw@x.example/",
        "https://x.example:99999/",
        "https://x.example/a b",
        "file:///etc/passwd",
        "https://x.example/" + "a" * 2048,
    ],
)
def test_urls_the_service_never_calls_are_refused(url: str) -> None:
    with pytest.raises(RefusedReceiver):
        check_url(url)


def test_the_retry_schedule_backs_off_with_jitter_then_gives_up() -> None:
    rng = random.Random(1)
    delays = [retry_delay(n, rng) for n in range(1, MAX_ATTEMPTS)]
    for got, base in zip(delays, DELAYS_SECONDS, strict=True):
        assert got is not None and 0.8 * base <= got <= 1.2 * base
    assert retry_delay(MAX_ATTEMPTS, rng) is None
    assert 24 * 3600 < sum(DELAYS_SECONDS) < 30 * 3600  # retried for about a day
    assert len({round(retry_delay(1, rng) or 0, 6) for _ in range(20)}) > 1  # jittered
