"""The reach check on public and drawn sets."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..markdown_sections import write_section
from .common import BenchConfig, machine


def bench_reach(cfg: BenchConfig) -> dict:
    """How often the reach check says within / outside / cannot tell, on public test-split sets and on
    sets the project draws itself, per epsilon and n (the evidence behind its thresholds)."""
    from ..data import load_fashion_mnist
    from ..encoder import embed
    from ..models import shared_models
    from ..privacy import release_mean
    from ..reach import DETECTABLE, NOISE_FACTOR, OOD_KINDS, TAU0, load_bank, reach_check, synthetic_set

    enc, bank = shared_models().encoder, load_bank()
    x, y = load_fashion_mnist("test")
    g = torch.Generator().manual_seed(cfg.seed)
    te = embed(x, enc)
    groups: dict[str, list[tuple[int, torch.Tensor]]] = {"public: one class": [], "public: k-NN": [],
                                                         "public: uniform mix": []}
    # 2,000 of one class (more than the bank holds of a class): train images outside the bank's sample.
    xtr, ytr = load_fashion_mnist("train")
    held = torch.ones(len(xtr), dtype=torch.bool)
    held[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))[:len(bank.E)]] = False
    for c in (1, 5, 8):
        groups["public: one class"].append((2000, embed(xtr[held & (ytr == c)][:2000], enc)))
    for n in (100, 1000):
        for c in range(10):
            groups["public: one class"].append((n, te[y == c][:n]))
        for _ in range(5):
            anchor = int(torch.randint(0, len(te), (1,), generator=g))
            groups["public: k-NN"].append((n, te[torch.topk(te @ te[anchor], n).indices]))
            groups["public: uniform mix"].append((n, te[torch.randperm(len(te), generator=g)[:n]]))
        for kind in OOD_KINDS:
            groups.setdefault(f"drawn: {kind}", []).append((n, embed(synthetic_set(kind, n, seed=cfg.seed), enc)))
    epsilons, draws = (0.5, 1.0, 2.0, 3.0, 4.0, 8.0, math.inf), 3
    cells: dict = {}
    t0 = time.perf_counter()
    checks = 0
    for name, sets in groups.items():
        for n, emb in sets:
            for eps in epsilons:
                key = f"{name}|n={n}|eps={eps:g}"
                counts = cells.setdefault(key, {"within": 0, "outside": 0, "cannot tell": 0, "distance": []})
                for _ in range(1 if math.isinf(eps) else draws):
                    r = reach_check(release_mean(emb, epsilon=eps, generator=g), bank)
                    counts[r["verdict"]] += 1
                    counts["distance"].append(r["distance"])
                    checks += 1
    seconds = (time.perf_counter() - t0) / checks
    res = {"machine": machine(), "cells": cells, "seconds_per_check": seconds,
           "thresholds": {"tau0": TAU0, "noise_factor": NOISE_FACTOR, "detectable": DETECTABLE}}
    head = "| sets | n | " + " | ".join("ε = ∞" if math.isinf(e) else f"ε = {e:g}" for e in epsilons) + " |"
    rows = ["## Reach check: is the private set within reach of the public data? (`python -m dphyper bench --suite reach`)",
            "", f"Machine: {res['machine']}. The hypernetwork's release only (post-processing, no ε): D = distance of the "
            "noisy mean to the means of n̂ public images (10,000-image public bank); *outside* when D > τ0 + c·d·s² "
            f"(τ0 = {TAU0}, c = {NOISE_FACTOR}), *cannot tell* when that bound exceeds {DETECTABLE} or n̂ < 50. Public sets: "
            "test split (never the bank's train images); 10 single-class sets, 5 k-NN and 5 uniform mixtures per n; "
            "at n = 2,000, three single classes of train images outside the bank. Drawn "
            "sets: `reach.synthetic_set` (typed digits and letters, pixel noise, blurred blobs, solid shapes; "
            f"inverted = test images with black and white swapped). Each cell: verdicts over the sets × {draws} noise "
            "draws (1 at ε = ∞), written **within / outside / cannot tell**, then the median D. "
            f"{seconds:.2f} s per check.", "", head, "|---|---|" + "---|" * len(epsilons)]
    for name, sets in groups.items():
        for n in sorted({k for k, _ in sets}):
            row = f"| {name} | {n} |"
            for eps in epsilons:
                c = cells[f"{name}|n={n}|eps={eps:g}"]
                row += f" {c['within']} / {c['outside']} / {c['cannot tell']} (D {float(np.median(c['distance'])):.3f}) |"
            rows.append(row)
    write_section(cfg.doc, "reach", "\n".join(rows))
    return res
