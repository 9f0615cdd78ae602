"""The private path as one call: folder or tensors -> DP release -> LoRA -> samples.

``HypernetPipeline`` loads the public models once (the app keeps one per process: it
holds no private data) and ``run`` handles one private dataset. What it returns is DP
output only (LoRA, samples, noisy count/mean) plus public settings; the true count and the
file names never leave this function, stage timings (which grow with the true n) stay out
of the report, and the exact (clipped) mean only with
``owner_view=True``, for the data owner's own view in the app (never in a report).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import load_folder
from .privacy import DEFAULT_DELTA, ReleasedMean
from .run_config import PrivateRunConfig  # noqa: F401  (its old home; re-exported)


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
    # Seconds per stage: for the caller (logs, the owner's caption, benchmarks), never in report.json.
    # They are not DP outputs: embedding time grows with the true n, loading time with every file.
    timings: dict[str, float] = field(default_factory=dict)


class HypernetPipeline:
    """The hypernetwork method on public models loaded once (``models.PublicModels``)."""

    def __init__(self, device: torch.device | None = None) -> None:
        from .models import shared_models

        self.models = shared_models(device)  # one set of public models per process and device
        self.device = self.models.device
        self.unet, self.encoder, self.hyper = self.models.unet, self.models.encoder, self.models.hypernet

    def run(self, images: torch.Tensor | Path, *, epsilon: float, delta: float = DEFAULT_DELTA,
            samples: int = 16, steps: int = 25, seed: int | None = None, owner_view: bool = False) -> GenerateResult:
        from .methods.base import run_method
        from .methods.hypernet import HYPERNET, HypernetConfig

        t = time.perf_counter()
        rejected: list[tuple[str, str]] = []
        if not isinstance(images, torch.Tensor):
            loaded = load_folder(Path(images))
            images, rejected = loaded.images, loaded.rejected
        load_seconds = time.perf_counter() - t
        cfg = HypernetConfig(epsilon=epsilon, delta=delta, samples=samples, steps=steps, seed=seed)
        r = run_method(HYPERNET, images, cfg, self.models)
        return GenerateResult(lora=r.adapter, samples=r.samples, release=r.owner["release"], report=r.report,
                              rejected=rejected, owner_clean_mean=r.noise_view.exact if owner_view else None,
                              timings={"load": load_seconds, **r.timings})
