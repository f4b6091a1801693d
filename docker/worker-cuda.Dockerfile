# syntax=docker/dockerfile:1
# A GPU worker: onnxruntime-gpu with the CUDA execution provider. Build from the repository root:
#   docker build -f docker/worker-cuda.Dockerfile -t diffq-worker-cuda .
# and run with the NVIDIA container toolkit (`docker run --gpus all ...`, or the `gpu` profile of
# docker-compose.yml). The worker picks CUDA when it is there (DIFFQ_PROVIDERS overrides).
# The PyPI onnxruntime-gpu wheels are built against CUDA 12 and cuDNN 9, hence this base image;
# its Python is Ubuntu 22.04's python3.11.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

# --- wheel: the project as a wheel (pure Python, so it can be built on any image) ---
FROM ${PYTHON_IMAGE} AS wheel
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
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- build: the venv, made with the same python3.11 the runtime stage has ---
FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /wheels /wheels
# onnxruntime-gpu>=1.20: earlier PyPI wheels may target cuDNN 8 or CUDA 11, not this image.
# `set --` resolves the wheel's file name before the extra is appended (see gateway.Dockerfile).
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && set -- /wheels/diffq-*.whl \
 && /opt/venv/bin/pip install "$1[worker-gpu]" "onnxruntime-gpu>=1.20"

# --- runtime: CUDA + cuDNN runtime libraries, python3.11 and the venv; no compilers ---
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 diffq \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin diffq
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    DIFFQ_HOST=0.0.0.0 \
    DIFFQ_WORKER_PORT=9200
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 9200
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DIFFQ_WORKER_PORT', '9200') + '/livez', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["diffq"]
CMD ["worker"]
