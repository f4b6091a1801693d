"""A small MNIST classifier for measuring sample quality (eval tooling only, torch).

Its softmax gives label agreement (is the sample the digit we asked for?) and its penultimate
layer gives the feature space for the Frechet distance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tooling.training.data import load_mnist

FEATURES = 128


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, FEATURES), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURES, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


def train_classifier(path: Path, epochs: int = 2, seed: int = 0) -> Classifier:
    """Train on MNIST train (or load the cached copy at ``path``)."""
    model = Classifier()
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu"))
        return model.eval()
    torch.manual_seed(seed)
    x, y = load_mnist("train")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(xt)))
        for i in tqdm(range(0, len(xt), 128), desc="classifier", unit="batch"):
            idx = order[i : i + 128]
            loss = nn.functional.cross_entropy(model(xt[idx])[1], yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


@torch.no_grad()
def features_and_labels(model: Classifier, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features [N, 128] and predicted labels [N] for images in [-1, 1]."""
    feats, preds = [], []
    for i in range(0, len(images), 500):
        f, logits = model(torch.from_numpy(np.ascontiguousarray(images[i : i + 500], dtype=np.float32)))
        feats.append(f.numpy().astype(np.float64))
        preds.append(logits.argmax(1).numpy())
    return np.concatenate(feats), np.concatenate(preds)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))
