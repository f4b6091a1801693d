"""diffq: a job service for diffusion models (gateway, Redis Streams queue, ONNX workers)."""

__version__ = "0.1.0"
