"""`diffq gateway`: run the HTTP gateway under uvicorn."""

from __future__ import annotations

import uvicorn

from diffq.logs import setup_logging
from service.app import create_app
from service.config import GatewaySettings


def run_gateway(settings: GatewaySettings) -> None:
    setup_logging(settings.log_level)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
