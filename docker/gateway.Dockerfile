# syntax=docker/dockerfile:1
# The HTTP gateway (FastAPI under uvicorn, no onnxruntime), and the webhook deliverer
# (`diffq webhooks run`) from the same image. Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t diffq-gateway .
# Runs as uid 10001 and writes only under /tmp, so a read-only root filesystem with a tmpfs
# on /tmp works (docker-compose.yml does that).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a wheel of the project (the model is package data), installed into a venv ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY diffq ./diffq
COPY sampling ./sampling
COPY service ./service
COPY workers ./workers
COPY webhooks ./webhooks
COPY model_store ./model_store
# `set --` resolves the wheel's file name first: "diffq-*.whl[gateway]" would be read by the
# shell as a glob with a bracket expression and match nothing.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && set -- /wheels/diffq-*.whl \
 && /opt/venv/bin/pip install "$1[gateway,webhooks]"

# --- runtime: the venv on a clean slim image; no compilers, no build tools, no source tree ---
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    DIFFQ_HOST=0.0.0.0 \
    PORT=8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/diffq-prom
RUN groupadd --system --gid 10001 diffq \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin diffq
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8000
# Liveness only: /readyz fails while Redis is down, which restarting this container cannot fix.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/livez', timeout=2)"]
ENTRYPOINT ["diffq"]
CMD ["gateway"]
