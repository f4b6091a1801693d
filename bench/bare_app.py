"""The gateway benchmark's baseline: the least a submission endpoint can do.

One FastAPI route that takes a JSON object and does one Redis write (``XADD``), served by
uvicorn like the gateway (an async route on redis-py's asyncio client, as the gateway's
submission, no access log). Configured by ``BENCH_REDIS_URL`` and ``BENCH_STREAM``; run by
``bench.stack.BenchStack.start_bare_app``.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import redis.asyncio
from fastapi import Body, FastAPI


def create_app() -> FastAPI:
    url = os.environ["BENCH_REDIS_URL"]
    stream = os.environ["BENCH_STREAM"]
    app = FastAPI()
    clients: list[redis.asyncio.Redis] = []  # made on the first request, in the server's loop

    @app.post("/v1/jobs", status_code=202)
    async def submit(body: dict[str, Any] = Body(...)) -> dict[str, str]:  # noqa: B008
        if not clients:
            clients.append(redis.asyncio.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0))
        job_id = uuid.uuid4().hex
        await clients[0].xadd(stream, {"id": job_id, "body": json.dumps(body)})
        return {"id": job_id, "status": "queued"}

    @app.get("/livez")
    def livez() -> dict[str, str]:
        return {"status": "ok"}

    return app
