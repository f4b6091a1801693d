"""`diffq worker`: load the model (checksum verified) and serve its queue.

The HTTP port (probes and metrics) opens first, so a slow model load shows as live but not
ready rather than as a dead container.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from diffq import heap
from diffq.exits import PROBE_PORT_EXIT
from diffq.logs import setup_logging
from diffq.store import RedisStore
from model_store.manifest import ComponentSpec
from model_store.store import ModelStore, StoredModel
from workers.batching import best_rows, tick_rows
from workers.buckets import default_buckets, resolve_mode, worker_buckets
from workers.calibration import measure_curve, sizes_for
from workers.config import WorkerSettings
from workers.engine import Component, Engine, EngineOptions, choose_variant, planned_device
from workers.http import ProbeLimits, ProbePortError, WorkerHealth, start_http
from workers.metrics import WorkerMetrics
from workers.pipeline import TEXT_ENCODER, VAE_DECODER, Decoder, TextEncoder, load_tokenizer
from workers.worker import Worker, install_signal_handlers

log = logging.getLogger("diffq.worker")


EngineWrap = Callable[[Engine], Engine]
# A pipeline stage's component, by stage name (workers.pipeline.TEXT_ENCODER, VAE_DECODER), replaced.
ComponentWrap = Callable[[str, Component], Component]


def build_worker(
    settings: WorkerSettings,
    health: WorkerHealth | None = None,
    wrap_engine: EngineWrap | None = None,
    wrap_component: ComponentWrap | None = None,
) -> Worker:
    """The worker for ``settings``: its model loaded and verified, its tick measured.
    ``wrap_engine`` and ``wrap_component`` replace the loaded denoiser and pipeline stages
    before anything uses them (the benchmarks' simulated devices; the real worker never
    passes them)."""
    store_root = ModelStore(settings.model_store)
    stored = store_root.get(settings.model) if settings.model else store_root.models()[0]
    metrics = WorkerMetrics(stored.manifest.name, health.registry if health else None)
    device = planned_device(settings.providers)
    variant = choose_variant(settings.model_variant, device, stored.manifest.variant_names)
    options = EngineOptions(
        providers=settings.providers,
        intra_op_threads=settings.intra_op_threads,
        spinning=settings.ort_spinning,
        io_binding=settings.io_binding,
        cuda_graph=settings.cuda_graph,
        pad_to_buckets=settings.pad_to_buckets,
        # Unset max_batch_rows: powers of two up to the largest size the calibration
        # measures (its sizes then fall on buckets); the tick decides the final set below.
        buckets=default_buckets(settings.max_batch_rows or max(sizes_for(device))),
        cudnn_conv_algo_search=settings.cudnn_conv_algo_search,
    )
    engine = Engine(stored.verify_all(variant), stored.manifest, options)
    if wrap_engine is not None:
        engine = wrap_engine(engine)
    encoder, decoder = load_stages(stored, options, wrap_component)
    log.info(
        "model loaded",
        extra={
            "model": stored.manifest.ref,
            "variant": variant,
            "providers": engine.providers,
            "io_binding": engine.io_binding,
            "cuda_graph": engine.cuda_graph,
            "padded": engine.padded,
            "seconds": round(engine.load_seconds, 3),
        },
    )
    if settings.max_batch_rows == 0:  # measure this hardware: the knee, and the best
        curve = measure_curve(
            engine.run, stored.manifest.sample_shape(), engine.example_condition, sizes_for(engine.device)
        )
        sizes = {"max_batch_rows": tick_rows(curve)}
        if settings.backlog_batch_rows == 0:
            sizes["backlog_batch_rows"] = best_rows(curve)
        settings = settings.model_copy(update=sizes)
        log.info(
            "tick sizes from the engine curve",
            extra={
                "rows": settings.max_batch_rows,
                "backlog_rows": settings.backlog_batch_rows,
                "curve": {size: round(rate) for size, rate in curve.items()},
            },
        )
    adaptive = settings.backlog_batch_rows > settings.max_batch_rows
    if adaptive and resolve_mode(settings.batch_buckets, engine.device) == "fixed":
        # One padded shape for every call (the seed contract on GPUs): no second size.
        log.info("fixed buckets: adaptive batching off", extra={"rows": settings.max_batch_rows})
        settings = settings.model_copy(update={"backlog_batch_rows": 0})
        adaptive = False
    largest = settings.backlog_batch_rows if adaptive else settings.max_batch_rows
    engine.use_buckets(worker_buckets(settings.batch_buckets, largest, engine.device))
    warm = engine.warm_up()
    if engine.padded:
        log.info("batch buckets warmed", extra={"buckets": list(engine.buckets), "seconds": round(warm, 3)})
    metrics.batch_sizes(settings.max_batch_rows, largest)
    store = RedisStore(
        settings.redis_url, settings.key_prefix, settings.result_ttl_seconds, settings.redis_timeout_seconds
    )
    worker = Worker(settings, store, engine, metrics=metrics, encoder=encoder, decoder=decoder)
    if settings.worker_id:
        worker.worker_id = settings.worker_id
    return worker


def load_stages(
    stored: StoredModel, options: EngineOptions, wrap: ComponentWrap | None = None
) -> tuple[TextEncoder | None, Decoder]:
    """The text encoder (text models) and the decoder (the VAE's for latent models), from
    files ``StoredModel.verify_all`` has checked; ``wrap`` replaces each component."""
    m = stored.manifest

    def load(stage: str, spec: ComponentSpec) -> Component:
        component = Component(stored.file_path(spec.file), spec, options)
        return component if wrap is None else wrap(stage, component)

    encoder = None
    if m.text_encoder is not None and m.tokenizer is not None:
        tokenizer = load_tokenizer(stored.file_path(m.tokenizer.file), m.tokenizer)
        encoder = TextEncoder(tokenizer, load(TEXT_ENCODER, m.text_encoder))
    decoder = Decoder()
    if m.vae_decoder is not None:
        decoder = Decoder(m.latent, load(VAE_DECODER, m.vae_decoder))
    return encoder, decoder


def run_worker(
    settings: WorkerSettings,
    burst: bool = False,
    wrap_engine: EngineWrap | None = None,
    wrap_component: ComponentWrap | None = None,
) -> None:
    setup_logging(settings.log_level)
    health = WorkerHealth(stall_seconds=settings.stall_seconds)
    try:
        server = start_http(settings.host, settings.worker_port, health, ProbeLimits.from_settings(settings))
    except ProbePortError as e:  # one line, not a traceback; `serve` knows the status and backs off
        log.error(str(e), extra={"port": settings.worker_port})
        sys.exit(PROBE_PORT_EXIT)
    try:
        worker = build_worker(settings, health, wrap_engine, wrap_component)
        health.last_tick = lambda: worker.last_tick
        health.redis_ok = lambda: worker.connected and worker.store.ping()  # not ready mid-outage
        health.stopping = worker.stop.is_set
        health.loaded = True
        heap.settle()
        install_signal_handlers(worker)
        worker.run(burst=burst)
    finally:
        server.shutdown()
