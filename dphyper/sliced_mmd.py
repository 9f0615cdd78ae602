"""Slicing's divergence between a release of noisy projected rows and a weighted mixture of public rows: a
smoothed sliced MMD with Gaussian kernels, every expectation in closed form (``dphyper.methods.slicing`` has
the derivation). Public and release-only inputs: post-processing."""

from __future__ import annotations

import math

import torch


def directions(k: int, count: int, seed: int) -> torch.Tensor:
    """U (k, L): public random unit directions in the release's k-dim space (count 0: the k axes)."""
    if count == 0:
        return torch.eye(k, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 1)
    u = torch.randn(k, count, generator=g, dtype=torch.float64)
    return u / u.norm(dim=0, keepdim=True)


def _gauss(diff: torch.Tensor, h2: float, var: float) -> torch.Tensor:
    """E k_h(a, b) for a - b = diff + N(0, var): h / sqrt(h^2 + var) exp(-diff^2 / (2 (h^2 + var))).

    Overwrites ``diff`` (callers pass a fresh difference): one (C, C) float64 temporary instead of five."""
    v = h2 + var
    return diff.square_().mul_(-1 / (2 * v)).exp_().mul_(math.sqrt(h2 / v))


def divergence_terms(released: torch.Tensor, candidates: torch.Tensor, sigma: float, cfg,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """K (C, C), c (C,), the constant term and h^2 of the smoothed sliced MMD^2(release, q_w) = w^T K w - 2 w^T c + const.

    ``candidates`` (C, k) are the mixture's component centres (row 0 the padding rows' 0).
    ``cfg``: the settings of the divergence (directions, projection_seed, smooth, bandwidth).
    """
    U = directions(released.shape[1], cfg.directions, cfg.projection_seed + seed)
    r, m = released @ U, candidates @ U  # (N, L), (C, L)
    var = sigma ** 2 if cfg.smooth else 0.0
    spread2 = float(m[1:].var(0).mean()) if len(m) > 2 else 0.0
    h2 = cfg.bandwidth ** 2 * (spread2 + sigma ** 2) if (spread2 + sigma ** 2) > 0 else cfg.bandwidth ** 2
    L = r.shape[1]
    K = torch.zeros(len(m), len(m), dtype=torch.float64)
    c = torch.zeros(len(m), dtype=torch.float64)
    const = 0.0
    # One direction at a time, in place: the (C, C) float64 temporary is 34 MB at C = 2,049 (a chunk of 8
    # directions with out-of-place temporaries peaked 0.8 GB above the app; issue 37).
    for j in range(L):
        K += _gauss(m[:, None, j] - m[None, :, j], h2, 2 * var)
        c += _gauss(r[:, None, j] - m[None, :, j], h2, var).mean(0)
        const += float(_gauss(r[:, None, j] - r[None, :, j], h2, 0.0).mean())
    return K / L, c / L, const / L, h2


def mmd2(K: torch.Tensor, c: torch.Tensor, const: float, w: torch.Tensor) -> float:
    return float(w @ K @ w - 2 * w @ c + const)
