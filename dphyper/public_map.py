"""The public map of the app's noise view, shipped as a small asset (no dataset needed at start).

2-D principal axes of the encoder embeddings of 1,000 public images (a seeded sample of the
Fashion-MNIST **train** split), their coordinates and labels. Built by
``python -m dphyper train public-map`` (seconds) and stored in ``assets/public_map/`` with
the hash of the encoder it was made with; a test rebuilds it and compares. Nothing private
is in it: the user's exact and released means are projected onto these public axes in the
owner's session only.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ASSETS_DIR, ENCODER_PATH

PUBLIC_MAP_PATH = ASSETS_DIR / "public_map" / "public_map.json"


@dataclass
class PublicMapConfig:
    """`python -m dphyper train public-map`: the noise view's public map (1,000 train-split embeddings)."""

    out: Path = field(default=PUBLIC_MAP_PATH, metadata={"help": "JSON file to write"})
    points: int = field(default=1000, metadata={"help": "public images on the map"})
    seed: int = field(default=0, metadata={"help": "seed of the public sample"})


def encoder_hash(path: Path = ENCODER_PATH) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def compute(points: int = 1000, seed: int = 0) -> dict:
    """Embed the public sample and find its two principal axes (exact SVD: deterministic)."""
    from .data import load_fashion_mnist_uint8, uint8_to_tensor
    from .encoder import embed
    from .models import shared_models

    images, labels = load_fashion_mnist_uint8("train")
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:points].numpy()
    emb = embed(uint8_to_tensor(images[idx]), shared_models().encoder).double().cpu()
    centre = emb.mean(0)
    _, _, vh = torch.linalg.svd(emb - centre, full_matrices=False)
    axes = vh[:2].T.clone()  # (d, 2)
    for k in range(2):  # a fixed sign per axis: its largest-magnitude entry is positive
        if axes[axes[:, k].abs().argmax(), k] < 0:
            axes[:, k] = -axes[:, k]
    return {"centre": centre, "axes": axes, "points": ((emb - centre) @ axes).float(),
            "labels": torch.as_tensor(labels[idx]).long()}


def build(cfg: PublicMapConfig = PublicMapConfig()) -> dict:
    t0 = time.perf_counter()
    m = compute(cfg.points, cfg.seed)
    doc = {"encoder": encoder_hash(), "points_from": f"Fashion-MNIST train, {cfg.points} images, seed {cfg.seed}",
           "command": "python -m dphyper train public-map",
           "centre": m["centre"].tolist(), "axes": m["axes"].tolist(),
           "points": [[round(float(a), 5), round(float(b), 5)] for a, b in m["points"].tolist()],
           "labels": m["labels"].tolist()}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc))
    return {"out": str(out), "points": cfg.points, "bytes": out.stat().st_size, "encoder": doc["encoder"],
            "seconds": round(time.perf_counter() - t0, 2)}


def load(path: Path = PUBLIC_MAP_PATH) -> dict:
    """The shipped map as tensors; a clear error when it is missing or was made with another encoder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No public map at {path.name}: run `python -m dphyper train public-map`.")
    doc = json.loads(path.read_text())
    if doc["encoder"] != encoder_hash():
        raise ValueError("The public map was built with another encoder: run `python -m dphyper train public-map`.")
    return {"centre": torch.tensor(doc["centre"], dtype=torch.float64),
            "axes": torch.tensor(doc["axes"], dtype=torch.float64),
            "points": torch.tensor(doc["points"], dtype=torch.float32),
            "labels": torch.tensor(doc["labels"], dtype=torch.long)}
