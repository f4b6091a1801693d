"""The HTTP gateway: validates, queues and reports jobs. Waits on a worker only when a client
asks to (``Prefer: wait=N``).

The app is assembled here: the state built once, the routes (``service/routes.py``), the
error handlers (``service/errors.py``) and the middleware.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from diffq import __version__
from diffq.store import RedisStore
from model_store.store import ModelStore
from service.body_limit import BodySizeLimit
from service.config import GatewaySettings
from service.contract import exact_bounds
from service.errors import install_error_handlers
from service.limits import DRAIN
from service.metrics import RequestMetrics
from service.routes import openai_router, router, submit_router
from service.state import State


def create_app(settings: GatewaySettings, store: RedisStore | None = None) -> FastAPI:
    """The gateway for ``settings``, on ``store`` (by default one on ``settings.redis_url``;
    no connection is made until the first request)."""
    # Every model in the store, each at its newest version: the one its workers load.
    model_store = ModelStore(settings.model_store)
    names = dict.fromkeys(m.manifest.name for m in model_store.models())
    models = {name: model_store.get(name).manifest for name in names}
    if not models:
        raise ValueError(f"no models found in {settings.model_store}")
    store = store or RedisStore(
        settings.redis_url, settings.key_prefix, settings.result_ttl_seconds, settings.redis_timeout_seconds
    )
    state = State(settings, store, models)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        state.waiters.start()  # the one subscription that wakes this process's waiting requests
        try:
            # uvicorn hands this to each connection's protocol: at shutdown it drains the waits.
            yield {DRAIN: state.waiters.drain}
        finally:
            await state.waiters.close()

    app = FastAPI(
        title="diffq",
        version=__version__,
        description="Submit diffusion generation jobs, poll them, fetch the images.",
        lifespan=lifespan,
    )
    app.state.diffq = state
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:  # the committed document's form, bounds exact
        if app.openapi_schema is None:
            app.openapi_schema = exact_bounds(fastapi_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # outermost: sees 413s too
    install_error_handlers(app)
    app.include_router(submit_router)  # first: the document lists POST /v1/jobs first, as it did
    app.include_router(router)
    app.include_router(openai_router)
    return app
