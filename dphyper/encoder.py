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
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .config import ENCODER_PATH, PACKAGE_DIR, get_device
from .data import CLASS_NAMES

log = logging.getLogger(__name__)
MODEL_NAME = "dphyper-ViT-T-4-32"
EMBED_DIM = 64


def _open_clip():
    """open_clip with the custom config registered; imported where used (the CLI's --help answers without it)."""
    import open_clip

    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(PACKAGE_DIR / "model_configs")
    return open_clip


def build_clip(embed_dim: int = EMBED_DIM) -> nn.Module:
    """A randomly initialised open_clip model of the custom config (no download); ``embed_dim`` is φ's output
    dimension (64 shipped; the ablation trains 32 and 128 by the same command).

    open_clip logs "no pretrained weights, initialized randomly" on the root logger; that
    is the intent here (our weights are loaded right after), so it is silenced.
    """
    logging.disable(logging.WARNING)
    try:
        return _open_clip().create_model(MODEL_NAME, pretrained=None, embed_dim=int(embed_dim))
    finally:
        logging.disable(logging.NOTSET)


class Encoder(nn.Module):
    """phi: (N, 1, 32, 32) in [-1, 1] -> (N, d) unit vectors (d = 64 shipped)."""

    def __init__(self, visual: nn.Module | None = None, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.visual = visual if visual is not None else build_clip(embed_dim).visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The ViT takes RGB; the profile is grayscale, so the channel is repeated.
        return F.normalize(self.visual(x.expand(-1, 3, -1, -1)), dim=-1)


def load_encoder(path: Path | None = None, device: torch.device | None = None) -> Encoder:
    path = Path(path or ENCODER_PATH)
    if not path.exists():
        raise FileNotFoundError(f"No encoder at {path}: run `python -m dphyper train encoder` first.")
    tensors = load_file(str(path))
    enc = Encoder(embed_dim=tensors["proj"].shape[1] if "proj" in tensors else EMBED_DIM)  # φ's width, from its file
    enc.visual.load_state_dict(tensors)
    return enc.requires_grad_(False).eval().to(device or get_device())


@torch.inference_mode()
def embed(x: torch.Tensor, encoder: Encoder | None = None, batch_size: int = 64) -> torch.Tensor:
    """Embeddings (N, d) of images (N, 1, 32, 32), computed in batches (d = 64 for the shipped φ).

    Batches of 64 are the fastest on the 2-core CPU (0.92 s for 1,000 images, against 1.6 s
    at 512: the activations stay in cache); see docs/BENCHMARKS.md.
    """
    encoder = encoder or load_encoder()
    device = next(encoder.parameters()).device
    return torch.cat([encoder(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


# ---------------------------------------------------------------- training

@dataclass
class EncoderTrainConfig:
    """`python -m dphyper train encoder`: phi on the public train split only. Resumable: the whole training
    state (both towers, optimiser, schedule, data order, random generator) is kept in ``state`` every
    ``save_every`` steps and when a chunk ends (``max_minutes``, ``chunk_steps``); the same command
    continues where it stopped, to the same weights as an uninterrupted run."""

    out: Path = field(default=ENCODER_PATH, metadata={"help": "safetensors file for the vision tower"})
    epochs: int = field(default=2, metadata={"help": "passes over the 60,000 public images"})
    batch_size: int = field(default=128, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate (one-cycle schedule)"})
    contrastive_weight: float = field(default=0.5, metadata={"help": "weight of the image-image InfoNCE term"})
    limit_images: int = field(default=0, metadata={"help": "use only the first N public images (0 = all; for tests)"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation and data order"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    state: Path = field(default=Path(""), metadata={"help": "resumable training state (default: OUT with suffix .train.pt; not shipped)"})
    max_minutes: float = field(default=0.0, metadata={"help": "stop after about this many minutes, keeping the state; rerun to continue (0 = no limit)"})
    chunk_steps: int = field(default=0, metadata={"help": "stop after this many steps in this invocation, keeping the state (0 = no limit)"})
    save_every: int = field(default=100, metadata={"help": "keep the state every this many steps"})
    embed_dim: int = field(default=EMBED_DIM, metadata={"help": "dimension of φ's embedding (64 shipped; the "
                                                             "ablation's 32 and 128)"})
    eval_images: int = field(default=0, metadata={"help": "zero-shot accuracy on the first N test images (0 = all 10,000)"})


# What must match for a saved state to be continued (the rest only says where and how long to run).
_STATE_KEYS = ("epochs", "batch_size", "lr", "contrastive_weight", "limit_images", "seed", "embed_dim")


def _state_path(cfg: EncoderTrainConfig) -> Path:
    return Path(cfg.state) if str(cfg.state) not in ("", ".") else Path(cfg.out).with_suffix(".train.pt")


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
    clip = build_clip(cfg.embed_dim)
    tokenizer = _open_clip().get_tokenizer(MODEL_NAME)
    captions = tokenizer([f"a photo of a {name.lower()}" for name in CLASS_NAMES])
    encoder = Encoder(clip.visual)
    params = list(clip.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
    steps_per_epoch = int(np.ceil(len(x) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1)
    # (threads too: a resumed run is bit-exact only with the same thread count)
    run = {**{k: str(getattr(cfg, k)) for k in _STATE_KEYS}, "model": MODEL_NAME, "threads": str(cfg.threads)}
    state_path = _state_path(cfg)
    epoch, step, total, history, seconds, perm = 0, 0, 0.0, [], 0.0, None
    if state_path.exists():
        st = torch.load(state_path, weights_only=False)
        if st["run"] != run:
            raise ValueError(f"{state_path} holds a run with other settings ({st['run']}); remove it or pass another "
                             "--state to start a new one")
        clip.load_state_dict(st["clip"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"])
        epoch, step, total, history, seconds, perm = (st[k] for k in ("epoch", "step", "total", "history", "seconds", "perm"))
        log.info("encoder: continuing %s at epoch %d step %d", state_path, epoch + 1, step)

    def keep() -> None:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"run": run, "clip": clip.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "gen": gen.get_state(), "epoch": epoch, "step": step, "total": total, "history": history,
                    "seconds": seconds + time.time() - t0, "perm": perm}, tmp)
        tmp.replace(state_path)  # never a half-written state

    t0, done_now = time.time(), 0
    while epoch < cfg.epochs:
        clip.train()
        if perm is None:
            perm = torch.randperm(len(x), generator=gen)
        while step < steps_per_epoch:
            if (cfg.chunk_steps and done_now >= cfg.chunk_steps) or (cfg.max_minutes and time.time() - t0 > 60 * cfg.max_minutes):
                keep()
                return {"done": False, "epoch": epoch, "step": step, "steps_per_epoch": steps_per_epoch,
                        "state": str(state_path), "train_seconds": round(seconds + time.time() - t0, 1)}
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
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
            step += 1
            done_now += 1
            if cfg.save_every and step % cfg.save_every == 0:
                keep()
        history.append(total / steps_per_epoch)
        log.info("encoder epoch %d loss %.4f", epoch + 1, history[-1])
        epoch, step, total, perm = epoch + 1, 0, 0.0, None
    seconds += time.time() - t0
    encoder.eval()
    result = {"done": True, "epochs": cfg.epochs, "train_seconds": round(seconds, 1), "loss_history": history,
              "embed_dim": cfg.embed_dim, "model": MODEL_NAME}
    try:  # zero-shot accuracy on the test split, for the record only
        xt, yt = load_fashion_mnist("test")
        if cfg.eval_images:
            xt, yt = xt[: cfg.eval_images], yt[: cfg.eval_images]
        with torch.no_grad():
            text = F.normalize(clip.encode_text(captions), dim=-1)
        result["test_zero_shot_accuracy"] = float(((embed(xt, encoder) @ text.T).argmax(1) == yt).float().mean())
    except Exception as exc:
        log.warning("no test accuracy: %s", exc)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in clip.visual.state_dict().items()}, str(out))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    state_path.unlink(missing_ok=True)  # done: a rerun trains anew (with today's code), never reuses old weights
    return result
