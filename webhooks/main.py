"""`diffq webhooks run`: the delivering process, with its probes and metrics on one port."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from diffq.exits import PROBE_PORT_EXIT
from diffq.logs import setup_logging
from diffq.store import RedisStore
from webhooks.config import WebhookSettings
from webhooks.deliverer import Deliverer
from webhooks.metrics import WebhookMetrics
from workers.http import ProbePortError, WorkerHealth, start_http

log = logging.getLogger("diffq.webhooks")


def run_deliverer(settings: WebhookSettings) -> None:
    setup_logging(settings.log_level)
    health = WorkerHealth(stall_seconds=max(30.0, settings.lease_seconds))
    try:
        server = start_http(
            settings.host,
            settings.webhook_port,
            health,
            process="webhook deliverer",
            setting="DIFFQ_WEBHOOK_PORT",
        )
    except ProbePortError as e:
        log.error(str(e), extra={"port": settings.webhook_port})
        sys.exit(PROBE_PORT_EXIT)
    try:
        asyncio.run(_run(settings, health))
    finally:
        server.shutdown()


async def _run(settings: WebhookSettings, health: WorkerHealth) -> None:
    store = RedisStore(
        settings.redis_url, settings.key_prefix, settings.result_ttl_seconds, settings.redis_timeout_seconds
    )
    metrics = WebhookMetrics(health.registry)
    deliverer = Deliverer(settings, store, metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, deliverer.stop.set)
    health.last_tick = lambda: deliverer.last_tick
    health.redis_ok = lambda: deliverer.connected
    health.stopping = deliverer.stop.is_set
    health.loaded = True
    log.info("webhook deliverer started", extra={"deliverer": deliverer.name, "port": settings.webhook_port})
    try:
        await deliverer.run()
    finally:
        store.close()
    log.info("webhook deliverer stopped", extra={"deliverer": deliverer.name})
