"""Bundled example "private" sets, drawn from the Fashion-MNIST *test* split.

The test split never trains anything (base UNet, encoder, evaluator and hypernetwork all
use the train split), so these sets stand in for private data the models have not seen.
Each set has a definition (which classes); the test images of the same definition that
are *not* in the set are its held-out reference for FID and class agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import EXAMPLES_DIR
from .data import CLASS_NAMES, load_fashion_mnist_uint8, uint8_to_tensor

SET_SIZE = 200
SEED = 2026


@dataclass(frozen=True)
class ExampleSet:
    name: str
    classes: tuple[int, ...]
    description: str


EXAMPLE_SETS = (
    ExampleSet("sneakers", (7,), "200 sneakers"),
    ExampleSet("trousers", (1,), "200 trousers"),
    ExampleSet("bags", (8,), "200 bags"),
    ExampleSet("dresses", (3,), "200 dresses"),
    ExampleSet("mixed", tuple(range(10)), "200 images, 20 of each of the ten classes"),
)
BY_NAME = {s.name: s for s in EXAMPLE_SETS}


def select(classes: tuple[int, ...], n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the test split: (chosen, held_out) for a set of these classes (balanced)."""
    _, labels = load_fashion_mnist_uint8("test")
    rng = np.random.default_rng(seed + sum(10 ** c for c in classes))
    chosen = []
    per_class = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    for c, k in zip(classes, per_class):
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.choice(idx, size=k, replace=False))
    chosen = np.sort(np.concatenate(chosen))
    pool = np.flatnonzero(np.isin(labels, classes))
    return chosen, np.setdiff1d(pool, chosen)


def heldout_images(name: str) -> torch.Tensor:
    """Test images of the set's definition that are not in the bundled set."""
    images, _ = load_fashion_mnist_uint8("test")
    _, held = select(BY_NAME[name].classes, SET_SIZE)
    return uint8_to_tensor(images[held])


def write_examples(out: Path = EXAMPLES_DIR) -> dict[str, int]:
    """Write every example set as PNGs plus a provenance README (``python -m dphyper examples``)."""
    images, labels = load_fashion_mnist_uint8("test")
    out = Path(out)
    written = {}
    for s in EXAMPLE_SETS:
        chosen, _ = select(s.classes, SET_SIZE)
        folder = out / s.name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        for i in chosen:
            Image.fromarray(images[i], mode="L").save(folder / f"test_{i:05d}.png", optimize=True)
        written[s.name] = len(chosen)
    lines = [
        "# Example private sets",
        "",
        "PNG files copied unchanged (28x28, grayscale) from the **test split** of Fashion-MNIST",
        "(Xiao, Rasul and Vollgraf 2017; MIT licence; Debian package `dataset-fashion-mnist`).",
        "File names keep the index in the test split. No model of dphyper is trained on the test",
        "split, so these sets play the role of private data. Regenerate with",
        "`python -m dphyper examples` (deterministic: seed "
        f"{SEED}).",
        "",
        "| set | classes | images |",
        "|---|---|---|",
    ]
    for s in EXAMPLE_SETS:
        lines.append(f"| {s.name} | {', '.join(CLASS_NAMES[c] for c in s.classes)} | {written[s.name]} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return written
