"""The dataset encoder phi: a tiny open_clip ViT trained on public Fashion-MNIST only.

Why open_clip: it is the encoder family the larger profile uses (pretrained ViT-B-32), so
both profiles run the same code, and its CLIP objective fits public data that comes with
names. Here the config ``dphyper-ViT-T-4-32`` (32 px, 4x4 patches, 4 layers of width 128,
64-d output) is registered with ``open_clip.add_model_config`` and trained from scratch:

* a CLIP term: each image against the ten public class captions ("a photo of a sneaker"),
  which makes the embedding of a set reflect its mix of garment types;
* an image-image contrastive term (two augmented views, InfoNCE), which keeps variation
  inside a class (shape, texture) that a class label alone would collapse.

Only the vision tower is shipped (``encoder.safetensors``, ~3 MB): phi needs no text at
run time, and the text tower's 49k-token embedding table alone would break the 10 MB
limit. Output embeddings are L2-normalised; the privacy module clips anyway.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .config import ENCODER_PATH, PACKAGE_DIR, get_device
from .data import CLASS_NAMES

log = logging.getLogger(__name__)
MODEL_NAME = "dphyper-ViT-T-4-32"
EMBED_DIM = 64
open_clip.add_model_config(PACKAGE_DIR / "model_configs")


def build_clip() -> nn.Module:
    """A randomly initialised open_clip model of the custom config (no download).

    open_clip logs "no pretrained weights, initialized randomly" on the root logger; that
    is the intent here (our weights are loaded right after), so it is silenced.
    """
    logging.disable(logging.WARNING)
    try:
        return open_clip.create_model(MODEL_NAME, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)


class Encoder(nn.Module):
    """phi: (N, 1, 32, 32) in [-1, 1] -> (N, 64) unit vectors."""

    def __init__(self, visual: nn.Module | None = None) -> None:
        super().__init__()
        self.visual = visual if visual is not None else build_clip().visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The ViT takes RGB; the profile is grayscale, so the channel is repeated.
        return F.normalize(self.visual(x.expand(-1, 3, -1, -1)), dim=-1)


def load_encoder(path: Path | None = None, device: torch.device | None = None) -> Encoder:
    path = Path(path or ENCODER_PATH)
    if not path.exists():
        raise FileNotFoundError(f"No encoder at {path}: run `python -m dphyper train encoder` first.")
    enc = Encoder()
    enc.visual.load_state_dict(load_file(str(path)))
    return enc.requires_grad_(False).eval().to(device or get_device())


@torch.inference_mode()
def embed(x: torch.Tensor, encoder: Encoder | None = None, batch_size: int = 64) -> torch.Tensor:
    """Embeddings (N, 64) of images (N, 1, 32, 32), computed in batches.

    Batches of 64 are the fastest on the 2-core CPU (0.92 s for 1,000 images, against 1.6 s
    at 512: the activations stay in cache); see docs/BENCHMARKS.md.
    """
    encoder = encoder or load_encoder()
    device = next(encoder.parameters()).device
    return torch.cat([encoder(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


# ---------------------------------------------------------------- training

@dataclass
class EncoderTrainConfig:
    """`python -m dphyper train encoder`: phi on the public train split only."""

    out: Path = field(default=ENCODER_PATH, metadata={"help": "safetensors file for the vision tower"})
    epochs: int = field(default=2, metadata={"help": "passes over the 60,000 public images"})
    batch_size: int = field(default=128, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate (one-cycle schedule)"})
    contrastive_weight: float = field(default=0.5, metadata={"help": "weight of the image-image InfoNCE term"})
    limit_images: int = field(default=0, metadata={"help": "use only the first N public images (0 = all; for tests)"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation and data order"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})


def _view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random augmented view: flip, shift up to 3 px, brightness scale, pixel noise."""
    n = x.shape[0]
    x = torch.where((torch.rand(n, generator=gen) < 0.5)[:, None, None, None], x.flip(-1), x)
    dx, dy = torch.randint(-3, 4, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    scale = 0.7 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
    x = (x + 1) * scale - 1
    return (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)


def train_encoder(cfg: EncoderTrainConfig) -> dict:
    from .data import load_fashion_mnist

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = load_fashion_mnist("train")
    if cfg.limit_images:
        x, y = x[: cfg.limit_images], y[: cfg.limit_images]
    clip = build_clip()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    captions = tokenizer([f"a photo of a {name.lower()}" for name in CLASS_NAMES])
    encoder = Encoder(clip.visual)
    params = list(clip.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
    steps_per_epoch = int(np.ceil(len(x) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1)
    t0, history = time.time(), []
    for epoch in range(cfg.epochs):
        clip.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            v1, v2 = encoder(_view(x[idx], gen)), encoder(_view(x[idx], gen))
            text = F.normalize(clip.encode_text(captions), dim=-1)
            scale = clip.logit_scale.exp().clamp(max=100)
            clip_loss = F.cross_entropy(scale * v1 @ text.T, y[idx])
            logits = scale * v1 @ v2.T
            target = torch.arange(len(idx))
            nce = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
            loss = clip_loss + cfg.contrastive_weight * nce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        history.append(total / steps_per_epoch)
        log.info("encoder epoch %d loss %.4f", epoch + 1, history[-1])
    encoder.eval()
    result = {"epochs": cfg.epochs, "train_seconds": round(time.time() - t0, 1), "loss_history": history,
              "embed_dim": EMBED_DIM, "model": MODEL_NAME}
    try:  # zero-shot accuracy on the test split, for the record only
        xt, yt = load_fashion_mnist("test")
        with torch.no_grad():
            text = F.normalize(clip.encode_text(captions), dim=-1)
        result["test_zero_shot_accuracy"] = float(((embed(xt, encoder) @ text.T).argmax(1) == yt).float().mean())
    except Exception as exc:
        log.warning("no test accuracy: %s", exc)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in clip.visual.state_dict().items()}, str(out))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return result
