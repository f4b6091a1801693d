"""Which webhook receivers may be called: no server-side request forgery.

A webhook URL is the client's, and the service calls it from inside the operator's network,
so by default it may not reach loopback, private, link-local (where cloud metadata services
live, 169.254.169.254), shared (100.64.0.0/10), multicast, reserved or unspecified addresses,
in IPv4 or IPv6, nor IPv4 ones hidden in IPv6 (mapped, or NAT64). The check is on the
addresses the host resolves to, at every attempt, and every address must pass (a name that
resolves to a public and a private address is refused); the caller then connects to one of
the checked addresses, not to the name again, so a second lookup cannot change the answer.
Redirects are not followed. ``allow_private`` (an operator's setting; tests with receivers
on loopback) lifts the address rule, never the URL's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from urllib.parse import SplitResult, urlsplit

MAX_URL_CHARS = 2048
NAT64 = ipaddress.ip_network("64:ff9b::/96")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Sequence[str]]  # host, port -> its addresses (getaddrinfo's)


class RefusedReceiver(ValueError):
    """A webhook URL, or the addresses its host resolves to, that the service will not call."""


def check_url(url: str) -> SplitResult:
    """A webhook URL's parts, if it is one the service may call at all: http or https, a host,
    no user or password, at most ``MAX_URL_CHARS``. A literal address is checked by
    ``refusal`` too, at delivery."""
    if len(url) > MAX_URL_CHARS:
        raise RefusedReceiver(f"a webhook URL is at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError as e:
        raise RefusedReceiver(f"not a URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedReceiver("a webhook URL is http:// or https://")
    if not parts.hostname:
        raise RefusedReceiver("a webhook URL names a host")
    if parts.username is not None or parts.password is not None:
        raise RefusedReceiver("a webhook URL carries no user or password")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise RefusedReceiver("a webhook URL has no spaces or control characters")
    return parts


def refusal(address: str) -> str | None:
    """Why ``address`` may not be called (a few words), or None for a public address."""
    ip: IpAddress = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone names no host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    for reason, hit in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local (cloud metadata)", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not a public address", not ip.is_global),
    ):
        if hit:
            return reason
    return None


def checked_addresses(host: str, port: int, resolve: Resolve, allow_private: bool = False) -> list[str]:
    """The addresses of ``host`` to connect to: all of them public (or ``allow_private``);
    ``RefusedReceiver`` names the first that is not, or a host that resolves to none."""
    addresses = list(dict.fromkeys(resolve(host, port)))
    if not addresses:
        raise RefusedReceiver(f"{host} resolves to no address")
    if not allow_private:
        for address in addresses:
            if (why := refusal(address)) is not None:
                raise RefusedReceiver(f"{host} resolves to {address}, a {why} address")
    return addresses
