"""`diffq worker`: load the model (checksum verified) and serve its queue."""

from __future__ import annotations

import logging

from diffq.logs import setup_logging
from diffq.store import RedisStore
from model_store.store import ModelStore
from workers.config import WorkerSettings
from workers.engine import Engine, EngineOptions
from workers.worker import Worker, install_signal_handlers

log = logging.getLogger("diffq.worker")


def build_worker(settings: WorkerSettings) -> Worker:
    store_root = ModelStore(settings.model_store)
    stored = store_root.get(settings.model) if settings.model else store_root.models()[0]
    engine = Engine(
        stored.verify(),
        stored.manifest,
        EngineOptions(providers=settings.providers, intra_op_threads=settings.intra_op_threads),
    )
    log.info(
        "model loaded",
        extra={
            "model": stored.manifest.ref,
            "providers": engine.providers,
            "seconds": round(engine.load_seconds, 3),
        },
    )
    store = RedisStore(
        settings.redis_url, settings.key_prefix, settings.result_ttl_seconds, settings.redis_timeout_seconds
    )
    worker = Worker(settings, store, engine)
    if settings.worker_id:
        worker.worker_id = settings.worker_id
    return worker


def run_worker(settings: WorkerSettings, burst: bool = False) -> None:
    setup_logging(settings.log_level)
    worker = build_worker(settings)
    install_signal_handlers(worker)
    worker.run(burst=burst)
