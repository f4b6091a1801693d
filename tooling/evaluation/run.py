"""`make eval`: measure sample quality of a stored model and write its quality table.

For each sampler configuration it draws class-conditional samples through the same engine and
samplers the workers use, then reports label agreement (share the classifier reads as the
requested digit) and the Frechet distance to the MNIST test set in the classifier's feature
space, beside the real-vs-real floor (MNIST validation images of the same count).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model_store.manifest import BASE_VARIANT, MANIFEST_NAME, Manifest
from model_store.store import ModelStore, read_manifest
from sampling.denoise import Condition, sample_to_completion, start_row, to_uint8
from sampling.registry import get_plan
from tooling.evaluation.classifier import (
    Classifier,
    features_and_labels,
    frechet_distance,
    train_classifier,
)
from tooling.training.data import load_mnist
from workers.engine import Engine


@dataclass(frozen=True)
class EvalConfig:
    sampler: str
    steps: int
    guidance_scale: float

    @property
    def label(self) -> str:
        return f"{self.sampler} {self.steps} steps, guidance {self.guidance_scale:g}"


DEFAULT_CONFIGS = [
    EvalConfig("ddpm", 1000, 1.0),
    EvalConfig("ddpm", 1000, 1.5),
    EvalConfig("ddpm", 1000, 3.0),
    EvalConfig("dpmpp_2m", 4, 1.0),
    EvalConfig("dpmpp_2m", 4, 3.0),
    EvalConfig("dpmpp_2m", 8, 1.0),
    EvalConfig("dpmpp_2m", 8, 1.5),
    EvalConfig("dpmpp_2m", 8, 2.0),
    EvalConfig("dpmpp_2m", 8, 3.0),
    EvalConfig("dpmpp_2m", 16, 1.0),
    EvalConfig("dpmpp_2m", 16, 3.0),
    EvalConfig("ddim", 8, 3.0),
    EvalConfig("ddim", 16, 3.0),
    EvalConfig("euler_ancestral", 16, 3.0),
    EvalConfig("euler_ancestral", 32, 3.0),
]


def generate(
    engine: Engine, config: EvalConfig, labels: np.ndarray, seed: int, chunk: int = 250
) -> np.ndarray:
    """Samples in [-1, 1] for the given class labels; image i uses seed ``seed + i``."""
    m = engine.manifest
    plan = get_plan(m.schedule.to_config(), config.sampler, config.steps)
    out = []
    for start in range(0, len(labels), chunk):
        rows = [
            start_row(
                plan,
                seed + i,
                Condition.for_class(int(labels[i]), m.unconditional_class),
                config.guidance_scale,
                m.image_shape,
            )
            for i in range(start, min(start + chunk, len(labels)))
        ]
        out.extend(sample_to_completion(rows, engine.run, m.schedule.prediction_type))
    return np.clip(np.stack(out), -1.0, 1.0)


def real_floors(classifier: Classifier, test_feats: np.ndarray, per_class: int, repeats: int = 5) -> dict:
    """FD of real images against the test set at the sample size used for the models.

    Class-balanced subsets of the validation split (like the class-conditional samples), over
    several draws: at a few hundred images FD is dominated by estimation bias, so the spread
    matters as much as the mean.
    """
    x, y = load_mnist("valid")
    rng = np.random.default_rng(0)
    values = []
    for _ in range(repeats):
        idx = np.concatenate(
            [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)]
        )
        feats, _ = features_and_labels(classifier, x[idx])
        values.append(frechet_distance(feats, test_feats))
    return {
        "mean": round(float(np.mean(values)), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def save_grid(images: np.ndarray, rows: int, path: Path) -> None:
    """A rows x cols grid of single-channel images as one PNG (row r = class r)."""
    cols = len(images) // rows
    h, w = images.shape[-2:]
    grid = np.zeros((rows * (h + 2), cols * (w + 2)), dtype=np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = to_uint8(img)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.Resampling.NEAREST).save(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mnist-cfg-unet")
    p.add_argument("--per-class", type=int, default=30, help="samples per class and configuration")
    p.add_argument("--quick", action="store_true", help="fewer configurations (no DDPM-1000)")
    p.add_argument("--cache", type=Path, default=Path("var/eval"))
    p.add_argument("--store", type=Path, default=None, help="model store root; default the shipped one")
    p.add_argument(
        "--variant",
        default="fp32",
        help="model variant to measure (fp32: the base file, whose figures fill the model card; "
        "another variant's go into its manifest entry only)",
    )
    a = p.parse_args(argv)

    stored = (ModelStore(a.store) if a.store else ModelStore()).get(a.model)
    engine = Engine(stored.verify(a.variant), stored.manifest)
    classifier = train_classifier(a.cache / "classifier.pt")
    x_test, y_test = load_mnist("test")
    test_feats, test_pred = features_and_labels(classifier, x_test)
    classifier_acc = float((test_pred == y_test).mean())
    n = a.per_class * 10
    floors = real_floors(classifier, test_feats, a.per_class)
    print(f"classifier test accuracy {classifier_acc:.4f}; real-vs-real FD floor ({n} images) {floors}")

    labels = np.repeat(np.arange(10), a.per_class)
    configs = [c for c in DEFAULT_CONFIGS if not (a.quick and c.sampler == "ddpm")]
    _, sha256 = stored.manifest.variant_file(a.variant)
    cache_path = a.cache / f"results-{sha256[:16]}-{a.per_class}.json"
    cache: dict[str, dict] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    results = []
    for cfg in configs:
        row = cache.get(cfg.label)
        if row is None:  # sampling is deterministic (fixed seeds), so a cached row is exact
            started = time.perf_counter()
            images = generate(engine, cfg, labels, seed=1000)
            feats, pred = features_and_labels(classifier, images)
            row = {
                "sampler": cfg.sampler,
                "steps": cfg.steps,
                "guidance_scale": cfg.guidance_scale,
                "label_agreement": round(float((pred == labels).mean()), 4),
                "frechet_distance": round(frechet_distance(feats, test_feats), 3),
                "seconds": round(time.perf_counter() - started, 1),
            }
            cache[cfg.label] = row
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(cache, indent=1))
        results.append(row)
        print(json.dumps(row), flush=True)

    quality = {
        "samples_per_configuration": n,
        "classifier_test_accuracy": round(classifier_acc, 4),
        "frechet_floor_real_vs_real": floors,
        "results": results,
    }
    manifest_path = stored.directory / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    if a.variant != BASE_VARIANT:
        data["variants"][a.variant]["quality"] = quality
        manifest_path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote the {a.variant} figures into {manifest_path}")
        return
    defaults = stored.manifest.sampling
    grid_cfg = EvalConfig(defaults.default_sampler, defaults.default_steps, defaults.default_guidance_scale)
    save_grid(
        generate(engine, grid_cfg, np.repeat(np.arange(10), 10), seed=7), 10, stored.directory / "samples.png"
    )
    data["quality"] = quality
    manifest_path.write_text(json.dumps(data, indent=2) + "\n")
    card = stored.directory / "README.md"
    card.write_text(render_card(read_manifest(stored.directory).manifest, quality, grid_cfg))
    print(f"wrote {manifest_path} and {card}")


def render_card(m: Manifest, quality: dict, grid_cfg: EvalConfig) -> str:
    """The model card: what the model is, how it was trained, and how well it samples."""
    t, a = m.training, m.architecture
    floor = quality["frechet_floor_real_vs_real"]
    lines = [
        f"# Model card: {m.ref}",
        "",
        f"A class-conditional UNet denoiser for {m.image.height}x{m.image.width} single-channel "
        'images of handwritten digits (MNIST), with a learned "no class" token '
        f"(class {m.null_class}) so one network serves conditional, unconditional and "
        "classifier-free-guided sampling.",
        "",
        "![samples, one row per digit 0-9](samples.png)  ",
        f"*One row per digit, 10 samples each: {grid_cfg.label}.*",
        "",
        "| | |",
        "|---|---|",
        f"| file | `{m.file}` (ONNX opset {m.opset}, weights inside), sha256 `{m.sha256}` |",
        f"| inputs | {', '.join(f'`{i.name}` {i.dtype} {i.shape}' for i in m.inputs)} |",
        f"| output | `{m.outputs[0].name}` {m.outputs[0].dtype} {m.outputs[0].shape} |",
        f"| schedule | {m.schedule.beta_schedule}, T = {m.schedule.num_train_timesteps}, "
        f"predicts `{m.schedule.prediction_type}` |",
        f"| architecture | UNet, base {a.get('base_channels')} channels, multipliers "
        f"{a.get('channel_mults')}, self-attention at the lowest resolution |",
        f"| training | {t.get('data')}; {t.get('steps')} steps of batch {t.get('batch_size')}, "
        f"AdamW lr {t.get('lr')}, EMA {t.get('ema_decay')}, label dropout {t.get('label_dropout')}, "
        f"seed {t.get('seed')}; {t.get('seconds')} s on CPU (torch {t.get('torch')}) |",
        f"| sampling defaults | {m.sampling.default_sampler}, {m.sampling.default_steps} steps, "
        f"guidance {m.sampling.default_guidance_scale:g}; samplers {', '.join(m.sampling.samplers)} |",
        "",
        "Reproduce: `make train && make export && make eval`.",
        "",
        "## Sample quality",
        "",
        "Written by `make eval` (`python -m tooling.evaluation.run`). Class-conditional samples,",
        f"{quality['samples_per_configuration'] // 10} per digit; classifier trained on MNIST train "
        f"(test accuracy {quality['classifier_test_accuracy']:.2%}).",
        "Frechet distance (FD) is measured in that classifier's 128-d feature space against the",
        "10,000 MNIST test images. Real-vs-real floor (class-balanced MNIST validation images, same "
        f"count, 5 draws): mean **{floor['mean']:.3f}** (range {floor['min']:.3f}-{floor['max']:.3f}). "
        "At this sample size FD carries a large estimation bias: compare rows with each other, "
        "and note that a sample set can score below the real-vs-real floor.",
        "Guidance 1 is the plain conditional model (no classifier-free guidance).",
        "",
        "| sampler | steps | guidance | label agreement | FD | FD / DDPM-1000 (same guidance) | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ref_fd = {
        r["guidance_scale"]: r["frechet_distance"] for r in quality["results"] if r["sampler"] == "ddpm"
    }
    for r in quality["results"]:
        base = ref_fd.get(r["guidance_scale"])
        ratio = f"{r['frechet_distance'] / base:.2f}" if base else "n/a"
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {r['guidance_scale']:g} | {r['label_agreement']:.1%} "
            f"| {r['frechet_distance']:.3f} | {ratio} | {r['seconds']} |"
        )
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
