"""The attribute classifier that scores the shapes model: trained on the renderer only (torch).

One small CNN with five heads (shape, color, background, position, size). It never sees a
model sample: it learns from fresh renders of every combination (held-out pairs included),
with mild noise, blur and color shifts so a decoder's soft edges and slightly-off colors read
as what they are meant to be.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tooling.shapes.attributes import ATTRIBUTE_NAMES, VOCABULARIES, Attributes
from tooling.shapes.dataset import draw_any_images
from tooling.shapes.render import to_unit


class AttributeClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({n: nn.Linear(128, len(VOCABULARIES[n])) for n in ATTRIBUTE_NAMES})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return {n: head(features) for n, head in self.heads.items()}


def _labels(attrs: list[Attributes]) -> dict[str, torch.Tensor]:
    return {n: torch.tensor([a.index(n) for a in attrs]) for n in ATTRIBUTE_NAMES}


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = len(x)
    blur = nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    mix = torch.rand(n, 1, 1, 1, generator=g) * 0.6
    x = (1 - mix) * x + mix * blur
    x = x + 0.08 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)  # a per-image color shift
    return x + 0.04 * torch.randn(x.shape, generator=g)


def train_classifier(path: Path, steps: int = 1500, batch: int = 128, seed: int = 0) -> AttributeClassifier:
    """Train on fresh renders (or load the copy cached at ``path``)."""
    model = AttributeClassifier()
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu"))
        return model.eval()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in tqdm(range(steps), desc="attribute classifier", unit="step"):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * (0.05 + 0.95 * (1 - step / steps))
        attrs, images = draw_any_images(rng, batch)
        logits = model(_augment(torch.from_numpy(to_unit(images)), g))
        labels = _labels(attrs)
        loss = sum(nn.functional.cross_entropy(logits[n], labels[n]) for n in ATTRIBUTE_NAMES)
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


@torch.no_grad()
def predict(model: AttributeClassifier, images: np.ndarray) -> list[dict[str, str]]:
    """Each image's attributes as the classifier reads them; ``images`` uint8 [N, H, W, 3]."""
    out: list[dict[str, str]] = []
    for i in range(0, len(images), 500):
        logits = model(torch.from_numpy(to_unit(images[i : i + 500])))
        best = {n: logits[n].argmax(1).tolist() for n in ATTRIBUTE_NAMES}
        out.extend(
            {n: VOCABULARIES[n][best[n][k]] for n in ATTRIBUTE_NAMES} for k in range(len(best["shape"]))
        )
    return out


def render_accuracy(model: AttributeClassifier, n: int = 3000, seed: int = 12345) -> dict[str, float]:
    """Per-attribute accuracy on fresh, unaugmented renders (a seed training never used)."""
    attrs, images = draw_any_images(np.random.default_rng(seed), n)
    got = predict(model, images)
    acc = {name: float(np.mean([g[name] == a.as_dict()[name] for g, a in zip(got, attrs, strict=True)]))
           for name in ATTRIBUTE_NAMES}  # fmt: skip
    acc["all"] = float(np.mean([g == a.as_dict() for g, a in zip(got, attrs, strict=True)]))
    return acc


if __name__ == "__main__":
    torch.set_num_threads(1)
    clf = train_classifier(Path("var/eval-text/attribute-classifier.pt"))
    print(json.dumps(render_accuracy(clf)))
