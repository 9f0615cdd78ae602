"""The evaluator: a small Fashion-MNIST classifier whose penultimate features grade samples.

It is deliberately a different network from the encoder phi: a method should not be
graded by the same features it conditions on. Its 128-d penultimate layer is registered
with torch-fidelity as the feature extractor ``dphyper-evaluator`` for FID and KID (the
default Inception weights would need a download); its logits give class histograms and
class agreement.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from safetensors.torch import load_file, save_file
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from .config import EVALUATOR_PATH, IMAGE_SIZE, get_device
from .data import CLASS_NAMES

log = logging.getLogger(__name__)
FEATURE_DIM = 128
EXTRACTOR_NAME = "dphyper-evaluator"


class Evaluator(nn.Module):
    """Conv net on (N, 1, 32, 32) in [-1, 1]; ``features`` is the 128-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(1, 32), *block(32, 32), nn.MaxPool2d(2),  # 16x16
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),  # 8x8
            *block(64, 128), nn.MaxPool2d(2),  # 4x4
            nn.Flatten(), nn.Linear(128 * 16, FEATURE_DIM), nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, len(CLASS_NAMES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def load_evaluator(path: Path | None = None, device: torch.device | None = None) -> Evaluator:
    path = Path(path or EVALUATOR_PATH)
    if not path.exists():
        raise FileNotFoundError(f"No evaluator at {path}: run `python -m dphyper train evaluator` first.")
    model = Evaluator()
    model.load_state_dict(load_file(str(path)))
    return model.requires_grad_(False).eval().to(device or get_device())


@torch.no_grad()
def classify(x: torch.Tensor, model: Evaluator | None = None, batch_size: int = 512) -> torch.Tensor:
    """Predicted class index per image (N,)."""
    model = model or load_evaluator()
    device = next(model.parameters()).device
    return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def class_agreement(pred: torch.Tensor, classes: tuple[int, ...]) -> float:
    """Class agreement of predicted labels with a set's classes: the share in ``classes``; for a set of every
    class (a uniform mix), 1 - the total-variation distance of the label histogram to the uniform one."""
    if len(classes) == len(CLASS_NAMES):
        hist = torch.bincount(pred, minlength=len(CLASS_NAMES)).float() / len(pred)
        return float(1 - 0.5 * (hist - 1 / len(CLASS_NAMES)).abs().sum())
    return float(torch.isin(pred, torch.tensor(classes)).float().mean())


def class_histogram(x: torch.Tensor, model: Evaluator | None = None) -> dict[str, int]:
    pred = classify(x, model)
    counts = torch.bincount(pred, minlength=len(CLASS_NAMES))
    return {name: int(c) for name, c in zip(CLASS_NAMES, counts)}


# ---------------------------------------------------------------- torch-fidelity glue

class EvaluatorFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity adapter: uint8 (N, C, H, W) images -> evaluator features."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.model = Evaluator()
        self.model.load_state_dict(load_file(str(feature_extractor_weights_path or EVALUATOR_PATH)))
        self.model.eval()

    @staticmethod
    def get_provided_features_list():
        return ("penultimate", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)

    def forward(self, x):
        x = x.float().div(127.5).sub(1.0)
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if x.shape[-1] != IMAGE_SIZE or x.shape[-2] != IMAGE_SIZE:
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
        feats = self.model.features(x)
        out = {"penultimate": feats, "logits": self.model.head(feats)}
        return tuple(out[name] for name in self.features_list)


if EXTRACTOR_NAME not in torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(EXTRACTOR_NAME, EvaluatorFeatureExtractor)


class _Uint8Dataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def fid_kid(samples: torch.Tensor, reference: torch.Tensor, kid_subset_size: int | None = None,
            weights: Path | None = None) -> dict[str, float]:
    """FID, KID and precision / recall (Kynkaanniemi et al. 2019, 3 nearest neighbours) between two image
    tensors (N, 1, 32, 32) in [-1, 1], evaluator features, all from torch-fidelity. Precision is the share of
    samples inside the reference's manifold, recall the share of reference images inside the samples': a
    method that collapses to one mode keeps its precision and loses its recall."""
    if len(samples) < 2 or len(reference) < 2:
        raise ValueError("FID needs at least 2 images on each side.")
    subset = kid_subset_size or min(1000, len(samples), len(reference))
    prc = min(len(samples), len(reference)) > PRC_NEIGHBOURS
    m = torch_fidelity.calculate_metrics(
        input1=_Uint8Dataset(samples), input2=_Uint8Dataset(reference),
        fid=True, kid=True, kid_subset_size=subset, kid_subsets=100, prc=prc, prc_neighborhood=PRC_NEIGHBOURS,
        feature_extractor=EXTRACTOR_NAME, feature_extractor_weights_path=str(weights or EVALUATOR_PATH),
        cuda=torch.cuda.is_available(), cache=False, verbose=False, batch_size=256, save_cpu_ram=True,
    )
    out = {"fid": float(m["frechet_inception_distance"]), "kid_mean": float(m["kernel_inception_distance_mean"]),
           "kid_std": float(m["kernel_inception_distance_std"])}
    if prc:
        out.update(precision=float(m["precision"]), recall=float(m["recall"]))
    return out


PRC_NEIGHBOURS = 3  # torch-fidelity's default and the paper's


def evaluate(samples: torch.Tensor, reference: torch.Tensor, kid_subset_size: int | None = None) -> dict:
    """The JSON object printed by ``python -m dphyper evaluate``."""
    out = fid_kid(samples, reference, kid_subset_size)
    model = load_evaluator()
    out.update({"n_samples": len(samples), "n_reference": len(reference),
                "class_histogram": class_histogram(samples, model),
                "reference_class_histogram": class_histogram(reference, model)})
    warning = fid_size_warning(len(samples), len(reference))
    if warning:
        out["warning"] = warning
    return out


# DESIGN.md section 5: at least this many samples per FID on the evaluator's features.
MIN_FID_SAMPLES = 512


def fid_size_warning(n_samples: int, n_reference: int) -> str:
    """What an FID on these sizes can mean, in words ("" when the sizes are adequate)."""
    n = min(n_samples, n_reference)
    if n <= FEATURE_DIM:
        return (f"FID on {n} images is not meaningful: the {FEATURE_DIM}-d feature covariance is singular below "
                f"{FEATURE_DIM + 1} images. Use at least {MIN_FID_SAMPLES} on each side; KID is less biased at small n.")
    if n < MIN_FID_SAMPLES:
        return (f"FID on {n} images is biased upward and noisy: compare it only with FIDs on the same sizes, and "
                f"use at least {MIN_FID_SAMPLES} on each side for a claim.")
    return ""


# ---------------------------------------------------------------- training

@dataclass
class EvaluatorTrainConfig:
    """`python -m dphyper train evaluator`: the evaluator classifier, public train split only."""

    out: Path = field(default=EVALUATOR_PATH, metadata={"help": "safetensors file to write"})
    epochs: int = field(default=4, metadata={"help": "passes over the 60,000 public images"})
    batch_size: int = field(default=128, metadata={"help": "images per step"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW peak learning rate (one-cycle schedule)"})
    limit_images: int = field(default=0, metadata={"help": "use only the first N public images (0 = all; for tests)"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation and data order"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a shift of up to 2 pixels."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def train_evaluator(cfg: EvaluatorTrainConfig) -> dict:
    from .data import load_fashion_mnist

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = load_fashion_mnist("train")
    if cfg.limit_images:
        x, y = x[: cfg.limit_images], y[: cfg.limit_images]
    model = Evaluator()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps_per_epoch = int(np.ceil(len(x) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    t0 = time.time()
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(_augment(x[idx], gen)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        history.append(total / steps_per_epoch)
        log.info("evaluator epoch %d loss %.4f", epoch + 1, history[-1])
    model.eval()
    seconds = time.time() - t0
    result = {"epochs": cfg.epochs, "train_seconds": round(seconds, 1), "loss_history": history}
    try:
        xt, yt = load_fashion_mnist("test")
        result["test_accuracy"] = float((classify(xt, model) == yt).float().mean())
    except Exception as exc:  # the test split is only for reporting
        log.warning("no test accuracy: %s", exc)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return result
