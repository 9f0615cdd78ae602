"""DP sparse fine-tuning: cost per step by physical batch, and the selection."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

from ..config import REPO_DIR
from ..markdown_sections import write_section
from .common import BenchConfig, machine


def bench_sparse(cfg: BenchConfig) -> dict:
    """DP sparse fine-tuning's cost and what its private selection carries: the seconds of the selection's
    per-example gradients, of one masked DP-SGD step and the process's peak memory; and, on public sets,
    how many of the rows the exact (noise-free) scores would choose the noisy release still chooses, per
    epsilon of the whole run (the default split), against a random mask of the same size."""
    import resource

    from ..compare import SWEEP_SETS, build_set
    from ..methods.sparse import (SparseConfig, example_scores, group_count, layers_of,
                                 release_scores, resolve, top_groups)
    from ..diffusion import load_unet
    from ..privacy import calibrate_gaussian

    d = resolve(SparseConfig(), 100)
    k, device = d.groups, torch.device("cpu")
    base = load_unet(device=device)
    layers = layers_of(base)
    G = group_count(layers)
    res: dict = {"machine": machine(), "groups": k, "groups_total": G, "draws": d.draws, "split": d.split, "sets": {}}
    epsilons = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    g = torch.Generator().manual_seed(cfg.seed)
    for s in SWEEP_SETS:
        images = build_set(s, REPO_DIR / "bench")["private"]
        t = time.perf_counter()
        scores = example_scores(images, draws=d.draws, device=device, generator=torch.Generator().manual_seed(cfg.seed))
        secs = time.perf_counter() - t
        exact = set(top_groups(release_scores(scores, epsilon=math.inf, delta=d.delta, noise_multiplier=0.0).scores,
                               k).tolist())
        row = {"n": len(images), "selection_seconds": secs, "seconds_per_image": secs / len(images), "overlap": {}}
        for eps in epsilons:
            s1 = calibrate_gaussian(epsilon=d.split * eps, delta=d.delta)  # the selection's own noise
            kept = [len(exact & set(top_groups(release_scores(scores, epsilon=d.split * eps, delta=d.delta,
                                                              noise_multiplier=s1, generator=g).scores, k).tolist()))
                    for _ in range(20)]
            row["overlap"][str(eps)] = {"sigma_selection": s1, "mean": float(np.mean(kept)) / k,
                                        "min": min(kept) / k, "max": max(kept) / k}
        res["sets"][s.name] = row
        print(f"{s.name}: selection {secs:.0f} s; overlap with the exact top-{k}: " +
              ", ".join(f"eps {e:g} {row['overlap'][str(e)]['mean']:.2f}" for e in epsilons), flush=True)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the selection at n = 1,000
    mask = _random_sparse_mask(layers, k)
    res["trained_weights"] = int(sum(int(m.sum()) * (base.get_parameter(name).numel() // len(m))
                                     for name, m in mask.items()))
    # Masked DP-SGD steps at the default batch (64 of public-coats-100), each physical batch size in a fresh
    # process (peak RSS is per process): memory follows the physical batch, the update does not change.
    res["dpsgd_steps"] = {}
    for pb in (d.batch_size, 32, 16, 8):
        out = subprocess.run([sys.executable, "-c", f"from dphyper.bench.sparse_suite import sparse_step_probe; sparse_step_probe({pb})"],
                             capture_output=True, text=True, check=True, cwd=REPO_DIR, env={**os.environ, "PYTHONPATH": str(REPO_DIR)})
        res["dpsgd_steps"][str(pb)] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"masked DP-SGD, physical batch {pb}: {res['dpsgd_steps'][str(pb)]}", flush=True)
    from ..dpsgd import physical_batch
    from ..methods.sparse import PHYSICAL

    shipped_pb = physical_batch(device, PHYSICAL.get(torch.device(device).type))
    shipped = res["dpsgd_steps"].get(str(shipped_pb), next(iter(res["dpsgd_steps"].values())))
    res["dpsgd_seconds_per_step"] = shipped["seconds_per_step"]
    random_overlap = k / G
    lines = [f"Machine: {res['machine']}. Public sets only (train split). Defaults: {k} of {G} groups, {d.draws} draws "
             f"per image, split {d.split} (the selection's share of ε), DP-SGD batch {d.batch_size}.",
             "",
             "- selection (per-example gradients of the whole UNet, Opacus hooks): " +
             "; ".join(f"{r['selection_seconds']:.0f} s for n = {r['n']} ({r['seconds_per_image']:.2f} s per image)"
                       for r in res["sets"].values()),
             f"- one masked DP-SGD step at batch {d.batch_size} (shipped physical batch {shipped_pb}): "
             f"{res['dpsgd_seconds_per_step']:.2f} s ({res['trained_weights']:,} trained weights in the tensors that "
             f"hold a selected row, masked to those rows)",
             "- peak RSS of a process that runs masked DP-SGD steps, by physical batch (the Poisson batch run in "
             "pieces; same update): " + "; ".join(f"{pb}: {r['peak_rss_mb']:.0f} MB, {r['seconds_per_step']:.2f} s/step"
                                                   for pb, r in res["dpsgd_steps"].items()),
             f"- peak RSS of the selection's process (n = 1,000 included): {res['peak_rss_mb']:.0f} MB",
             "",
             f"**What the private selection carries**: the share of the exact (noise-free) top-{k} rows that the noisy "
             f"release still chooses (mean over 20 noise draws; the ε of the whole run, of which the selection "
             f"spends {d.split:g}). A random mask keeps {random_overlap:.3f}.",
             "",
             "| set | n | " + " | ".join(f"ε = {e:g}" for e in epsilons) + " |",
             "|---|---|" + "---|" * len(epsilons)]
    for name, r in res["sets"].items():
        lines.append(f"| {name} | {r['n']} | " + " | ".join(f"{r['overlap'][str(e)]['mean']:.2f}" for e in epsilons) + " |")
    write_section(cfg.doc, "sparse", "## DP sparse fine-tuning: cost and selection (`python -m dphyper bench --suite sparse`)\n\n"
                  + "\n".join(lines))
    return res


def _random_sparse_mask(layers, k: int) -> dict:
    """The cost measurements' mask: k of the UNet's row groups, drawn with a fixed public seed."""
    from ..methods.sparse import group_count, masks_from_groups

    return masks_from_groups(layers, torch.randperm(group_count(layers), generator=torch.Generator().manual_seed(0))[:k])


def sparse_step_probe(physical: int) -> None:
    """Masked DP-SGD steps of DP sparse fine-tuning at its default batch on public-coats-100 with physical
    batches of ``physical`` images; prints seconds per step and this process's peak RSS as JSON."""
    import resource

    from .. import dpsgd
    from ..compare import SWEEP_SETS, build_set
    from ..diffusion import load_unet
    from ..methods.sparse import SparseConfig, layers_of, resolve

    d = resolve(SparseConfig(), 100)
    layers = layers_of(load_unet(device=torch.device("cpu")))
    mask = _random_sparse_mask(layers, d.groups)
    del layers
    images = build_set(SWEEP_SETS[0], REPO_DIR / "bench")["private"]
    q, planned, _ = dpsgd.schedule(len(images), d)
    state = dpsgd.TrainState(cfg=d, q=q, planned=planned, total_steps=6, sigma=1.0, mask=mask,
                             physical=physical, piece=max(physical, 16))  # a cost probe: no cell's draws
    state = dpsgd.advance_dpsgd(images, state, max_steps=1)  # warm-up
    t = time.perf_counter()
    dpsgd.advance_dpsgd(images, state, max_steps=5)
    print(json.dumps({"seconds_per_step": round((time.perf_counter() - t) / 5, 3),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
