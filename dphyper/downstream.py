"""DPImageBench's utility measure: a classifier trained on synthetic images only, tested on real ones.

The labelled task (issue 34): the ten Fashion-MNIST classes of the **test** split, ``n`` private images per
class, one private folder per class. A method runs once per folder at the same (epsilon, delta); its samples
are labelled with their folder's class; a fresh classifier (the evaluator's architecture, newly initialised,
never the evaluator's weights) is trained on the union of the ten synthetic sets and tested on every test image
that is in no private folder. The folders are disjoint, so each image is in exactly one run: by parallel
composition every image's privacy loss is that one run's (epsilon, delta), the same guarantee as one run.

References beside the methods: ``real`` trains the same classifier on the private images themselves (no
privacy: the ceiling of this protocol at this n); a classifier that guesses scores 10 %.

Differences from DPImageBench's Fashion-MNIST figures (their n = 60,000 private training images, their
classifiers, a conditional generator per method): here n is 100 per class, the generators are an unconditional
base model adapted once per class, and the classifier is small. Their numbers are context, not a comparison.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CLASSES = 10
SELECT_SEED = 2026  # which test images are private (public, fixed: every method sees the same folders)


@dataclass(frozen=True)
class Task:
    folders: tuple[torch.Tensor, ...]  # class c's private images, (n, 1, 32, 32) in [-1, 1]
    test_x: torch.Tensor  # every test image in no folder
    test_y: torch.Tensor


def build_task(n: int, seed: int = SELECT_SEED) -> Task:
    """``n`` test-split images per class as ten disjoint private folders; the rest of the split is the test set."""
    from .data import load_fashion_mnist

    x, y = load_fashion_mnist("test")
    per_class = int(torch.bincount(y, minlength=CLASSES).min())
    if not (1 <= n < per_class):
        raise ValueError(f"n per class must be in [1, {per_class - 1}] (the test split has {per_class} per class "
                         f"and the rest is the test set), got {n}")
    g = torch.Generator().manual_seed(seed)
    private = torch.zeros(len(y), dtype=torch.bool)
    folders = []
    for c in range(CLASSES):
        idx = torch.nonzero(y == c).flatten()
        pick = idx[torch.randperm(len(idx), generator=g)[:n]]
        private[pick] = True
        folders.append(x[pick].clone())
    return Task(tuple(folders), x[~private].clone(), y[~private].clone())


def train_classifier(x: torch.Tensor, y: torch.Tensor, *, seed: int, epochs: int = 30, batch_size: int = 64,
                     lr: float = 2e-3) -> torch.nn.Module:
    """A newly initialised evaluator-architecture classifier trained on (x, y) alone (flip and shift
    augmentation, AdamW with a one-cycle schedule); seeded, so a run is reproducible from its images."""
    from .evaluator import Evaluator, _augment

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Evaluator()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, math.ceil(len(x) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            if len(idx) < 2:  # BatchNorm needs two images
                continue
            loss = F.cross_entropy(model(_augment(x[idx], gen)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Test accuracy with its binomial 95 % interval over the test images (Wilson), and per class."""
    from .evaluator import classify

    pred = classify(x, model)
    correct = (pred == y).float()
    k, m = float(correct.sum()), len(y)
    p, z = k / m, 1.959963984540054
    centre = (p + z * z / (2 * m)) / (1 + z * z / m)
    half = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / (1 + z * z / m)
    per_class = [float(correct[y == c].mean()) for c in range(CLASSES)]
    return {"accuracy": p, "low": centre - half, "high": centre + half, "per_class": per_class,
            "test_images": m}


def synthetic_for_folder(method: str, images: torch.Tensor, epsilon: float, delta: float, samples: int,
                         steps: int, seed: int, models) -> tuple[torch.Tensor, float]:
    """A method's samples from one private folder (a full private run: fresh privacy noise), and its seconds."""
    from .methods import get_method, run_method

    t = time.perf_counter()
    if method == "real":  # the ceiling: the private images themselves, no privacy
        return images.clone(), 0.0
    m = get_method(method)
    cfg = m.config_cls(epsilon=epsilon, delta=delta, samples=samples, steps=steps, seed=seed)
    r = run_method(m, images, cfg, models)
    return r.samples.detach().cpu(), time.perf_counter() - t


def labelled_union(parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.cat(parts)
    y = torch.cat([torch.full((len(p),), c, dtype=torch.long) for c, p in enumerate(parts)])
    return x, y


def summarise(runs: list[dict]) -> dict:
    """Mean accuracy over independent runs with its Student-t 95 % half-width (NaN for one run)."""
    from .evidence import mean_interval

    mi = mean_interval([r["accuracy"] for r in runs])
    return {"mean": mi["mean"], "half_width": mi["half_width"], "runs": mi["runs"],
            "low_one_run": runs[0]["low"] if len(runs) == 1 else math.nan,
            "high_one_run": runs[0]["high"] if len(runs) == 1 else math.nan}
