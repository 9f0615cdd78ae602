"""The private path as one call: folder or tensors -> DP release -> LoRA -> samples.

``HypernetPipeline`` loads the public models once (the app keeps one per process: it
holds no private data) and ``run`` handles one private dataset. What it returns is DP
output only (LoRA, samples, noisy count/mean) plus public settings; the true count and the
file names never leave this function, and the exact (clipped) mean only with
``owner_view=True``, for the data owner's own view in the app (never in a report).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import get_device
from .data import load_folder, make_grid, save_pngs
from .diffusion import load_unet, sample
from .encoder import embed, load_encoder
from .hypernet import load_hypernet
from .lora import add_lora, lora_model_fn, save_lora
from .privacy import DEFAULT_DELTA, ReleasedMean, clipped_mean, release_mean


@dataclass
class PrivateRunConfig:
    """Options every private run shares (hypernetwork and DP-SGD): data, budget, sampling, output."""

    images: Path = field(default=Path("private"), metadata={"help": "folder of private images"})
    epsilon: float = field(default=1.0, metadata={"help": "privacy budget of the run ('inf' = no privacy)"})
    delta: float = field(default=DEFAULT_DELTA, metadata={"help": "delta of the run; keep it below 1/n"})
    samples: int = field(default=16, metadata={"help": "number of images to sample with the LoRA"})
    steps: int = field(default=25, metadata={"help": "DDIM sampling steps"})
    seed: int | None = field(default=None, metadata={"help": "seed of the *sampling* noise only (never the privacy noise)"})
    out: Path = field(default=Path("out"), metadata={"help": "output folder (lora.safetensors, samples/, grid.png, report.json)"})


@dataclass
class GenerateConfig(PrivateRunConfig):
    """`python -m dphyper generate`: a DP LoRA from a private folder with the hypernetwork."""


@dataclass
class GenerateResult:
    lora: dict[str, torch.Tensor]  # unbatched LoRA tensors, UNet parameter names
    samples: torch.Tensor  # (K, 1, 32, 32) in [-1, 1]
    release: ReleasedMean | None  # None for DP-SGD (its event is in the report)
    report: dict
    rejected: list[tuple[str, str]] = field(default_factory=list)
    # Only with ``owner_view=True``: the clipped exact mean (NOT private). For the data owner's own
    # "what the noise did" plot in their session; never written to a report or a download.
    owner_clean_mean: torch.Tensor | None = None


class HypernetPipeline:
    """Public models, loaded once: base UNet + LoRA slots, encoder phi, hypernetwork H."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or get_device()
        self.unet = add_lora(load_unet(device=self.device))
        self.unet.requires_grad_(False)
        self.encoder = load_encoder(device=self.device)
        self.hyper = load_hypernet(self.unet, device=self.device)

    def run(self, images: torch.Tensor | Path, *, epsilon: float, delta: float = DEFAULT_DELTA,
            samples: int = 16, steps: int = 25, seed: int | None = None, owner_view: bool = False) -> GenerateResult:
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        rejected: list[tuple[str, str]] = []
        if not isinstance(images, torch.Tensor):
            loaded = load_folder(Path(images))
            images, rejected = loaded.images, loaded.rejected
        seconds["load"] = time.perf_counter() - t

        t = time.perf_counter()
        emb = embed(images, self.encoder)
        seconds["embed"] = time.perf_counter() - t

        t = time.perf_counter()
        rel = release_mean(emb, epsilon=epsilon, delta=delta)  # OS-seeded noise, always
        clean = clipped_mean(emb) if owner_view else None
        del emb  # private; nothing below sees it
        seconds["privatise"] = time.perf_counter() - t

        t = time.perf_counter()
        lora = self.hyper.generate(rel.mean.to(self.device), rel.noise_std_mean)
        seconds["generate_lora"] = time.perf_counter() - t

        t = time.perf_counter()
        x = sample(self.unet, samples, steps=steps, seed=seed, model_fn=lora_model_fn(self.unet, lora)) if samples else \
            torch.empty(0, 1, 32, 32)
        seconds["sample"] = time.perf_counter() - t

        ev = rel.event
        report = {
            "method": "hypernet",
            "private": ev.private,
            "epsilon": ev.epsilon if math.isfinite(ev.epsilon) else "inf",
            "delta": ev.delta,
            "noise_multiplier": ev.noise_multiplier,
            "sensitivity": ev.sensitivity,
            "mechanism": ev.mechanism,
            "accountant": ev.accountant,
            "noisy_count": round(rel.noisy_count, 2),
            "noise_std_of_mean": rel.noise_std_mean,
            "samples": int(x.shape[0]),
            "sampling_steps": steps,
            "seconds": {k: round(v, 4) for k, v in seconds.items()},
        }
        if not ev.private:
            report["warning"] = "epsilon = inf: NO privacy (non-private reference)"
        return GenerateResult(lora=lora, samples=x, release=rel, report=report, rejected=rejected,
                              owner_clean_mean=clean)


def write_outputs(result: GenerateResult, out: Path) -> dict:
    """lora.safetensors, samples/*.png, grid.png and report.json under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_lora(result.lora, out / "lora.safetensors",
              metadata={"method": result.report["method"], "epsilon": str(result.report["epsilon"]),
                        "delta": str(result.report["delta"])})
    if len(result.samples):
        save_pngs(result.samples, out / "samples")
        make_grid(result.samples).save(out / "grid.png")
    (out / "report.json").write_text(json.dumps(result.report, indent=1))
    return result.report


def generate(cfg: GenerateConfig) -> dict:
    result = HypernetPipeline().run(cfg.images, epsilon=cfg.epsilon, delta=cfg.delta, samples=cfg.samples,
                                    steps=cfg.steps, seed=cfg.seed)
    report = write_outputs(result, cfg.out)
    # The data owner's own terminal learns which files were skipped; the report does not.
    for name, why in result.rejected:
        print(f"skipped {name}: {why}", file=sys.stderr)
    return report
