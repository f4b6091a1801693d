# syntax=docker/dockerfile:1
# A CPU worker: onnxruntime, no web stack. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t diffq-worker .
# For NVIDIA GPUs use docker/worker-cuda.Dockerfile. Runs as uid 10001 with nothing to write,
# so a read-only root filesystem works. On SIGTERM the worker stops taking jobs and finishes
# the batch it holds: give it a stop timeout longer than one job (docker-compose.yml: 120 s).

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
# `set --` resolves the wheel's file name before the extra is appended (see gateway.Dockerfile).
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && set -- /wheels/diffq-*.whl \
 && /opt/venv/bin/pip install "$1[worker]"

# --- runtime: the venv on a clean slim image; no compilers, no build tools, no source tree ---
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    DIFFQ_HOST=0.0.0.0 \
    DIFFQ_WORKER_PORT=9200
RUN groupadd --system --gid 10001 diffq \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin diffq
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
# /livez, /readyz and /metrics; the worker takes jobs from Redis and serves nothing else.
EXPOSE 9200
# The port opens before the model loads; /livez fails when the worker loop stalls.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DIFFQ_WORKER_PORT', '9200') + '/livez', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["diffq"]
CMD ["worker"]
