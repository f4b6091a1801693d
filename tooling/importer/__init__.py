"""``make import``: a diffusers pipeline folder (or an Optimum ONNX export) as a model-store entry.

One ONNX file per component (denoiser with a per-row timestep, text encoder, VAE decoder), the
tokenizer as a ``tokenizers`` JSON file, the scheduler config as the manifest's schedule, each
checked against the source and hashed into the manifest. torch, diffusers and transformers
are needed here only; workers need onnxruntime and tokenizers.
"""

from tooling.importer.errors import ImportRefused
from tooling.importer.run import ImportOptions, ImportResult, import_pipeline
from tooling.importer.sizes import parse_sizes

__all__ = ["ImportOptions", "ImportRefused", "ImportResult", "import_pipeline", "parse_sizes"]
