"""The store's connections: a blocking client for workers and the gateway's threads, and an
asyncio client for the gateway's event loop, with the settings every part shares."""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio

from diffq.store.keys import Keys

try:  # redis-py 7.1 and later
    from redis.maint_notifications import MaintNotificationsConfig

    # On RESP3, redis-py 8 turns maintenance notifications on ("auto"), and with them on its
    # pools skip the check that a connection taken from the pool is still open: after a
    # Valkey restart the first command on every pooled connection failed (503s for nothing).
    # One Valkey sends no such notifications: off, the pool reconnects a closed connection.
    CLIENT_OPTIONS: dict[str, Any] = {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}
except ImportError:  # older redis-py: no notifications, the pool checks connections itself
    CLIENT_OPTIONS = {}

try:  # with hiredis, the blocking client packs commands in C; redis-py's asyncio client does not
    from redis.connection import HiredisRespSerializer
    from redis.utils import HIREDIS_AVAILABLE
except ImportError:  # another redis-py layout: its own packing
    HIREDIS_AVAILABLE = False


def _packed_in_c(connection_class: type) -> type:
    """``connection_class`` packing commands with hiredis, as the blocking client does: the
    submission script's 44 arguments in redis-py's pure-Python packer were 8% of a submission's
    time in the gateway (py-spy)."""
    if not HIREDIS_AVAILABLE:
        return connection_class
    serializer = HiredisRespSerializer()

    def pack_command(self: Any, *args: Any) -> list[bytes]:
        return serializer.pack(*args)

    return type(connection_class.__name__, (connection_class,), {"pack_command": pack_command})


# Connections of the event loop's client (submissions and reads of async routes; waiting takes none).
_ASYNC_POOL_SIZE = 100


class Connection:
    """What every side of the store shares: the clients, the key layout, the record TTL."""

    def __init__(
        self, url: str, prefix: str = "diffq", ttl_seconds: int = 3600, timeout: float = 2.0
    ) -> None:
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.ttl = int(ttl_seconds)  # how long a terminal job's record and images are kept
        # Typed as Any: redis-py's stubs type replies as unions of every RESP type.
        self._r: Any = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=10,
            **CLIENT_OPTIONS,
        )
        self._url, self._timeout = url, timeout
        self._aio: Any = None  # the asyncio client, made on first use in its event loop
        self._aio_loop: asyncio.AbstractEventLoop | None = None

    def _async(self) -> Any:
        """This event loop's asyncio client (one per loop: an asyncio connection belongs to the
        loop that opened it)."""
        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio_loop is not loop:
            # A burst of requests past the pool's size waits (up to the Redis timeout) for a
            # connection to come back, rather than failing at once with "Too many connections"
            # as the default pool does: a burst is not an outage.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self._url,
                max_connections=_ASYNC_POOL_SIZE,
                timeout=self._timeout,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                **CLIENT_OPTIONS,
            )
            pool.connection_class = _packed_in_c(pool.connection_class)  # the URL's kind (TCP, TLS, unix)
            self._aio = redis.asyncio.Redis(connection_pool=pool)
            self._aio_loop = loop
        return self._aio

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._r.close()
