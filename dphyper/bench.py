"""Benchmarks that print numbers and write them to docs/BENCHMARKS.md (`python -m dphyper bench`).

Suites:
* ``models``: the public side: evaluator accuracy, base-model FID with its floor (test vs
  train) and ceiling (noise vs test), sampling time, training times of every checkpoint;
* ``p1``: embed + privatise + generate LoRA for n = 1000 (the P1 target);
* ``hypernet``: the private path's utility at epsilon = inf and 1 on every example set (class agreement of samples, FID/KID
  against the held-out test images of the same definition), next to the base model.

Each suite rewrites its own section of the file between markers, so suites can be rerun
separately. Results also go to ``bench/<suite>.json``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .markdown_sections import write_section  # noqa: F401  (suites and older callers)
from .config import ASSETS_DIR, REPO_DIR

DOC = REPO_DIR / "docs" / "BENCHMARKS.md"


@dataclass
class BenchConfig:
    """`python -m dphyper bench`: measure and record numbers in docs/BENCHMARKS.md."""

    suite: str = field(default="compare", metadata={"help": "which suite: compare (every method, the default), "
                                                   "sweep, fid-noise, app, audit, models, hypernet, p1, reach, sampling, executor, p4, sparse or theory"})
    methods: str = field(default="", metadata={"help": "compare/sweep/audit: comma-separated method names (default: "
                                                "all registered; 'floor' = compare only the base model and the "
                                                "non-private floor)"})
    max_cells: int = field(default=0, metadata={"help": "sweep: stop after this many new cells (0 = no limit); rerun to continue"})
    report_only: bool = field(default=False, metadata={"help": "compare/sweep: compute nothing, rewrite the tables from the stored cells"})
    plan: bool = field(default=False, metadata={"help": "sweep: compute nothing, list the cells still to run (cost, "
                                                 "estimated time, which worker holds one)"})
    quick: bool = field(default=False, metadata={"help": "compare: 3 sets x 3 epsilons x 64 samples (<= 30 min on 2 CPU cores)"})
    compare_samples: int = field(default=128, metadata={"help": "compare: generated images per cell (64 with --quick)"})
    sets: str = field(default="", metadata={"help": "compare: comma-separated set names (default: the full or quick list)"})
    repeats: int = field(default=1, metadata={"help": "compare: repeats of each private cell (new privacy noise and sampling seed)"})
    epsilons: str = field(default="", metadata={"help": "compare: comma-separated epsilons to run, in this order (default: "
                                                  "the full or quick grid); the tables still show every stored cell"})
    samples: int = field(default=1000, metadata={"help": "generated images per FID (models suite)"})
    set_samples: int = field(default=256, metadata={"help": "generated images per example set (hypernet suite)"})
    steps: int = field(default=25, metadata={"help": "DDIM steps for every sample"})
    seed: int = field(default=0, metadata={"help": "seed of the sampling noise and of image subsets"})
    doc: Path = field(default=DOC, metadata={"help": "markdown file to update"})
    workers: int = field(default=0, metadata={"help": "compare/sweep: local worker processes, one cell each at a "
                                              "time (0 = one per core; 1 = in this process)"})
    ray: str = field(default="", metadata={"help": "compare/sweep: run the cells as Ray tasks on this cluster "
                                           "('auto' = the cluster this machine is in, 'local' = a new instance "
                                           "here, or ray://HOST:PORT); cells wanting a GPU ask Ray for one"})


def machine() -> str:
    cores = torch.get_num_threads()
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {platform.processor() or ''} {cores} CPU threads, {dev}, torch {torch.__version__}"


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def bench_models(cfg: BenchConfig) -> dict:
    from .data import load_fashion_mnist
    from .diffusion import load_unet, sample
    from .evaluator import class_histogram, classify, fid_kid, load_evaluator

    g = torch.Generator().manual_seed(cfg.seed)
    xt, yt = load_fashion_mnist("test")
    xtr, _ = load_fashion_mnist("train")
    ev = load_evaluator()
    res: dict = {"machine": machine()}
    res["evaluator_test_accuracy"] = float((classify(xt, ev) == yt).float().mean())
    ref = xt[torch.randperm(len(xt), generator=g)[: cfg.samples]]
    unet = load_unet()
    sample(unet, 2, steps=2, seed=0)  # warm-up
    t0 = time.perf_counter()
    sample(unet, 16, steps=cfg.steps, seed=cfg.seed)
    res["sample_16_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = sample(unet, cfg.samples, steps=cfg.steps, seed=cfg.seed)
    res["sample_n_seconds"] = time.perf_counter() - t0
    res["base_vs_test"] = fid_kid(gen, ref)
    res["train_vs_test_floor"] = fid_kid(xtr[torch.randperm(len(xtr), generator=g)[: cfg.samples]], ref)
    res["noise_vs_test_ceiling"] = fid_kid(torch.rand(cfg.samples, 1, 32, 32, generator=g) * 2 - 1, ref)
    res["base_class_histogram"] = class_histogram(gen, ev)
    res["n"] = cfg.samples
    res["steps"] = cfg.steps
    res["training"] = {
        "base": _json(ASSETS_DIR / "base_unet" / "training.json").get("summary", {}),
        "encoder": _json(ASSETS_DIR / "encoder" / "encoder.json"),
        "evaluator": _json(ASSETS_DIR / "evaluator" / "evaluator.json"),
        "hypernet": _json(ASSETS_DIR / "hypernet" / "hypernet.json").get("summary", {}),
    }
    t = res["training"]
    rows = [
        "## Public models (`python -m dphyper bench --suite models`)",
        "",
        f"Machine: {res['machine']}. Seeds: {cfg.seed}. DDIM steps: {cfg.steps}.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| evaluator accuracy, Fashion-MNIST test (10,000) | {res['evaluator_test_accuracy']:.4f} |",
        f"| FID base samples vs test ({cfg.samples} vs {cfg.samples}) | {res['base_vs_test']['fid']:.2f} |",
        f"| KID base vs test | {res['base_vs_test']['kid_mean']:.4f} ± {res['base_vs_test']['kid_std']:.4f} |",
        f"| FID train vs test (floor) | {res['train_vs_test_floor']['fid']:.2f} |",
        f"| FID uniform noise vs test (ceiling) | {res['noise_vs_test_ceiling']['fid']:.2f} |",
        f"| time to sample 16 images ({cfg.steps} DDIM steps) | {res['sample_16_seconds']:.2f} s |",
        f"| time to sample {cfg.samples} images | {res['sample_n_seconds']:.1f} s |",
        "",
        f"Base-sample class histogram (evaluator): {res['base_class_histogram']}",
        "",
        "Training (2-core CPU, shared with other jobs while they ran; resumable chunks):",
        "",
        "| checkpoint | command | steps / epochs | seconds | result |",
        "|---|---|---|---|---|",
        f"| base UNet | `python -m dphyper train base` | {t['base'].get('steps')} steps × 64 | "
        f"{t['base'].get('train_seconds')} | final loss {t['base'].get('final_loss')} |",
        f"| encoder φ | `python -m dphyper train encoder --epochs 1` | {t['encoder'].get('epochs')} epochs | "
        f"{t['encoder'].get('train_seconds')} | zero-shot test accuracy {t['encoder'].get('test_zero_shot_accuracy')} |",
        f"| evaluator | `python -m dphyper train evaluator --epochs 3` | {t['evaluator'].get('epochs')} epochs | "
        f"{t['evaluator'].get('train_seconds')} | test accuracy {t['evaluator'].get('test_accuracy')} |",
        f"| hypernetwork | {_hypernet_command(t['hypernet'])} | {t['hypernet'].get('steps')} steps | "
        f"{t['hypernet'].get('train_seconds')} | final loss {t['hypernet'].get('final_loss')} |",
    ]
    write_section(cfg.doc, "models", "\n".join(rows))
    return res


def _hypernet_command(summary: dict) -> str:
    """How the shipped H was trained: anchored from the start, or resumed with the anchor on, or (issue 18)
    the average of snapshots of one run."""
    a, steps, r = summary.get("anchor_from_step"), summary.get("steps"), summary.get("anchor_radius")
    if summary.get("averaged_steps"):
        snaps = summary["averaged_steps"]
        kept = summary.get("kept_from_first")
        return (f"`python -m dphyper train hypernet --no-anchor --max-steps {snaps[0]}`, continued to "
                f"{', '.join(str(t) for t in snaps[1:])} steps (`scripts/hypernet_continue.py`), the anchor added to each "
                f"snapshot (radius {r}), then `scripts/hypernet_average.py` over the {len(snaps)} snapshots"
                + (f" (`--keep {kept}`: the first snapshot's {kept})" if kept else "")
                + "; chosen on public sets (`scripts/hypernet_select.py`)")
    if a and a == steps:
        return (f"`python -m dphyper train hypernet --no-anchor --max-steps {a}`, then the same command without "
                f"`--no-anchor` (adds the anchor, radius {r}, no further steps)")
    if a:
        return (f"`python -m dphyper train hypernet --no-anchor --max-steps {a}`, then the same command "
                f"with the anchor (default, radius {r}) and `--max-steps {steps}`")
    return "`python -m dphyper train hypernet`" + ("" if a == 0 else " (before the anchor existed)")


def bench_hypernet(cfg: BenchConfig) -> dict:
    from PIL import Image

    from .data import load_fashion_mnist, load_folder, make_grid
    from .diffusion import sample
    from .evaluator import class_agreement as agreement, classify, fid_kid, load_evaluator
    from .examples import EXAMPLE_SETS, heldout_images
    from .pipeline import HypernetPipeline

    pipe = HypernetPipeline()
    ev = load_evaluator()
    res: dict = {"machine": machine(), "sets": {}}
    xt, _ = load_fashion_mnist("test")
    t0 = time.perf_counter()
    pipe.run(xt[:200], epsilon=1.0, samples=16, steps=cfg.steps)
    res["n200_to_16_samples_seconds"] = time.perf_counter() - t0

    base = sample(pipe.unet, cfg.set_samples, steps=cfg.steps, seed=cfg.seed)
    base_pred = classify(base, ev)
    rows = [
        "## Hypernetwork private path (`python -m dphyper bench --suite hypernet`)",
        "",
        f"Machine: {res['machine']}. {cfg.set_samples} samples per cell, {cfg.steps} DDIM steps, sampling seed "
        f"{cfg.seed}; privacy noise is OS-seeded (one draw per cell).",
        "",
        "- P1 (embed + privatise + generate LoRA, n = 1,000): see the `p1` section below.",
        f"- 200 images → 16 samples (embed, release, LoRA, {cfg.steps}-step sampling): "
        f"{res['n200_to_16_samples_seconds']:.2f} s",
        "",
        "Class agreement = share of samples the evaluator puts in the set's classes (for `mixed`, "
        "1 − total-variation distance between the sample and uniform class histograms). FID/KID "
        "against the set's held-out test images (same definition, disjoint from the set).",
        "",
        "| set | n held-out | method | ε | class agreement | FID | KID |",
        "|---|---|---|---|---|---|---|",
    ]

    figure_rows = [base[:10]]
    for s in EXAMPLE_SETS:
        private = load_folder(ASSETS_DIR / "examples" / s.name).images
        held = heldout_images(s.name)
        cell = {"base": {"agreement": agreement(base_pred, s.classes), **fid_kid(base, held)}}
        rows.append(f"| {s.name} | {len(held)} | base model | – | {cell['base']['agreement']:.3f} | "
                    f"{cell['base']['fid']:.2f} | {cell['base']['kid_mean']:.4f} |")
        for eps in (math.inf, 1.0):
            r = pipe.run(private, epsilon=eps, samples=cfg.set_samples, steps=cfg.steps, seed=cfg.seed)
            pred = classify(r.samples, ev)
            key = "inf" if math.isinf(eps) else str(eps)
            cell[key] = {"agreement": agreement(pred, s.classes), **fid_kid(r.samples, held),
                         "noisy_count": r.release.noisy_count}
            if eps == 1.0:
                figure_rows.append(r.samples[:10])
            rows.append(f"| {s.name} | {len(held)} | hypernet | {'∞' if math.isinf(eps) else eps} | "
                        f"{cell[key]['agreement']:.3f} | {cell[key]['fid']:.2f} | {cell[key]['kid_mean']:.4f} |")
        res["sets"][s.name] = cell
        print(s.name, json.dumps(cell), flush=True)
    # The README figure: base model, then the epsilon = 1 LoRA of each example set, a row each.
    make_grid(torch.cat(figure_rows), ncol=10).resize((10 * 34 * 2 + 4, len(figure_rows) * 34 * 2 + 4),
                                                      Image.Resampling.NEAREST).save(REPO_DIR / "docs" / "samples.png")
    rows += ["", "`docs/samples.png`: first row the base model, then one row per set above (ε = 1), "
             "same sampling seed."]
    write_section(cfg.doc, "hypernet", "\n".join(rows))
    return res


def bench_p1(cfg: BenchConfig) -> dict:
    """P1: embed + privatise + generate LoRA for n = 1,000 images (sampling excluded)."""
    from .data import load_fashion_mnist
    from .pipeline import HypernetPipeline

    pipe = HypernetPipeline()
    xt, _ = load_fashion_mnist("test")
    x1000 = xt[:1000]
    pipe.run(x1000[:64], epsilon=1.0, samples=0)  # warm-up
    times, stages = [], []
    for _ in range(7):
        r = pipe.run(x1000, epsilon=1.0, samples=0)
        s = {k: round(v, 4) for k, v in r.timings.items()}
        times.append(s["embed"] + s["privatise"] + s["generate_lora"])
        stages.append(s)
    order = sorted(range(len(times)), key=times.__getitem__)
    med = order[len(order) // 2]
    res = {"machine": machine(), "p1_seconds_median": times[med], "p1_seconds_all": times, "stages": stages[med]}
    rows = ["## P1: private path to a LoRA (`python -m dphyper bench --suite p1`)", "",
            f"Machine: {res['machine']}. n = 1,000 Fashion-MNIST test images as the private folder, ε = 1.", "",
            f"- embed + privatise + generate LoRA: **{times[med]:.3f} s** (median of 7; min {min(times):.3f}, "
            f"max {max(times):.3f})",
            f"- stages of the median run: embed {stages[med]['embed']:.3f} s, privatise {stages[med]['privatise']:.4f} s, "
            f"generate LoRA {stages[med]['generate_lora']:.4f} s (sampling excluded)"]
    write_section(cfg.doc, "p1", "\n".join(rows))
    return res


def bench_sparse(cfg: BenchConfig) -> dict:
    """DP sparse fine-tuning's cost and what its private selection carries: the seconds of the selection's
    per-example gradients, of one masked DP-SGD step and the process's peak memory; and, on public sets,
    how many of the rows the exact (noise-free) scores would choose the noisy release still chooses, per
    epsilon of the whole run (the default split), against a random mask of the same size."""
    import resource

    from .compare import SWEEP_SETS, build_set
    from .methods.sparse import (SparseConfig, example_scores, group_count, layers_of,
                                 release_scores, resolve, top_groups)
    from .diffusion import load_unet
    from .privacy import calibrate_gaussian

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
        out = subprocess.run([sys.executable, "-c", f"from dphyper.bench import sparse_step_probe; sparse_step_probe({pb})"],
                             capture_output=True, text=True, check=True, cwd=REPO_DIR, env={**os.environ, "PYTHONPATH": str(REPO_DIR)})
        res["dpsgd_steps"][str(pb)] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"masked DP-SGD, physical batch {pb}: {res['dpsgd_steps'][str(pb)]}", flush=True)
    from .dpsgd import physical_batch
    from .methods.sparse import PHYSICAL

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
    from .methods.sparse import group_count, masks_from_groups

    return masks_from_groups(layers, torch.randperm(group_count(layers), generator=torch.Generator().manual_seed(0))[:k])


def sparse_step_probe(physical: int) -> None:
    """Masked DP-SGD steps of DP sparse fine-tuning at its default batch on public-coats-100 with physical
    batches of ``physical`` images; prints seconds per step and this process's peak RSS as JSON."""
    import resource

    from . import dpsgd
    from .compare import SWEEP_SETS, build_set
    from .diffusion import load_unet
    from .methods.sparse import SparseConfig, layers_of, resolve

    dpsgd.PHYSICAL_BATCH["cpu"] = dpsgd.PHYSICAL_BATCH["cuda"] = physical
    dpsgd.DRAW_PIECE["cpu"] = dpsgd.DRAW_PIECE["cuda"] = max(physical, 16)  # a cost probe: no cell's draws
    d = resolve(SparseConfig(), 100)
    layers = layers_of(load_unet(device=torch.device("cpu")))
    mask = _random_sparse_mask(layers, d.groups)
    del layers
    images = build_set(SWEEP_SETS[0], REPO_DIR / "bench")["private"]
    q, planned, _ = dpsgd.schedule(len(images), d)
    state = dpsgd.TrainState(cfg=d, q=q, planned=planned, total_steps=6, sigma=1.0, mask=mask)
    state = dpsgd.advance_dpsgd(images, state, max_steps=1)  # warm-up
    t = time.perf_counter()
    dpsgd.advance_dpsgd(images, state, max_steps=5)
    print(json.dumps({"seconds_per_step": round((time.perf_counter() - t) / 5, 3),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def bench_reach(cfg: BenchConfig) -> dict:
    """How often the reach check says within / outside / cannot tell, on public test-split sets and on
    sets the project draws itself, per epsilon and n (the evidence behind its thresholds)."""
    from .data import load_fashion_mnist
    from .encoder import embed
    from .models import shared_models
    from .privacy import release_mean
    from .reach import DETECTABLE, NOISE_FACTOR, OOD_KINDS, TAU0, load_bank, reach_check, synthetic_set

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


def bench_theory(cfg: BenchConfig) -> dict:
    from . import theory_tab
    from .theory import oneshot_closed_form, oneshot_simulate, qem_simulate

    reps = 3000
    res: dict = {"machine": machine(), "cells": []}
    rows = [
        "## Teaching setting (`python -m dphyper bench --suite theory`)",
        "",
        f"F4: one-shot simulated excess risk ({reps} private datasets per cell, seed {cfg.seed}; the map "
        "fitted on 2,000 public datasets) vs the closed form.",
        "",
        "| ε | n | d | closed form | simulated mean ± s.e. | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for eps, n, d in [(0.25, 100, 10), (1.0, 1000, 10), (4.0, 200, 50), (8.0, 1000, 5), (0.1, 50, 20)]:
        sim = oneshot_simulate(eps, n, d, reps=reps, seed=cfg.seed)
        cf = oneshot_closed_form(eps, n, d)
        se = float(sim.std() / math.sqrt(reps))
        res["cells"].append({"epsilon": eps, "n": n, "d": d, "closed_form": cf, "sim": float(sim.mean()), "se": se})
        rows.append(f"| {eps} | {n} | {d} | {cf:.4e} | {sim.mean():.4e} ± {se:.1e} | {sim.mean() / cf:.4f} |")
    rows += ["", "The parameter-space line (quadratic EM): its plain Newton step (no shrinkage) simulated vs its closed "
             "form (the one-shot formula with λ = 1), and the shipped James–Stein-shrunk step:", "",
             "| ε | n | d | Newton closed form | Newton simulated ± s.e. | ratio | shrunk (simulated) | shrunk / one-shot |",
             "|---|---|---|---|---|---|---|---|"]
    for eps, n, d in [(0.25, 100, 10), (1.0, 1000, 10), (4.0, 200, 50), (8.0, 1000, 5), (0.1, 50, 20)]:
        plain = qem_simulate(eps, n, d, reps=reps, seed=cfg.seed, shrink=False)
        shrunk = qem_simulate(eps, n, d, reps=reps, seed=cfg.seed)
        cf = oneshot_closed_form(eps, n, d, lam=1.0)
        se = float(plain.std() / math.sqrt(reps))
        res["cells"].append({"epsilon": eps, "n": n, "d": d, "newton_closed_form": cf, "newton_sim": float(plain.mean()),
                             "newton_se": se, "qem_sim": float(shrunk.mean())})
        rows.append(f"| {eps} | {n} | {d} | {cf:.4e} | {plain.mean():.4e} ± {se:.1e} | {plain.mean() / cf:.4f} | "
                    f"{shrunk.mean():.4e} | {shrunk.mean() / oneshot_closed_form(eps, n, d):.2f} |")
    ns, ds = theory_tab.grid_values()
    if ns:
        theory_tab.warm_cache()  # what the tab does once when it is built
        t0 = time.perf_counter()
        for i, n in enumerate(ns):
            theory_tab.figure(-1.0 + 0.3 * i, n, ds[-1])
            theory_tab.reading(-1.0 + 0.3 * i, n, ds[-1])
        res["redraw_seconds"] = (time.perf_counter() - t0) / len(ns)
        rows += ["", f"Tab redraw after a slider change (figure + reading, server side): "
                 f"{res['redraw_seconds'] * 1000:.0f} ms (mean of {len(ns)})."]
        stored = theory_tab.load_curves()
        rows += ["", "Stored simulation curves (`assets/curves/theory.json`), DP-SGD / one-shot risk ratio at n = 1000:",
                 "", "| d | " + " | ".join(f"ε = {r['epsilon']:g}" for r in stored if r["n"] == 1000 and r["d"] == ds[0]) + " |",
                 "|---|" + "---|" * len([r for r in stored if r["n"] == 1000 and r["d"] == ds[0]])]
        for d in ds:
            cells = [r for r in stored if r["n"] == 1000 and r["d"] == d]
            rows.append(f"| {d} | " + " | ".join(f"{r['dpsgd']['mean'] / r['hypernet']['mean']:.1f}×" for r in cells) + " |")
        if all("qem" in r for r in stored):
            rows += ["", "Quadratic EM (parameter space, James–Stein shrunk) / one-shot risk ratio at n = 1000:", "",
                     "| d | " + " | ".join(f"ε = {r['epsilon']:g}" for r in stored if r["n"] == 1000 and r["d"] == ds[0])
                     + " |", "|---|" + "---|" * len([r for r in stored if r["n"] == 1000 and r["d"] == ds[0]])]
            for d in ds:
                cells = [r for r in stored if r["n"] == 1000 and r["d"] == d]
                rows.append(f"| {d} | " + " | ".join(f"{r['qem']['mean'] / r['hypernet']['mean']:.2f}×" for r in cells)
                            + " |")
    write_section(cfg.doc, "theory", "\n".join(rows))
    return res


def _epsilons(text: str) -> tuple[float, ...]:
    """``--epsilons 1,4``: finite, positive budgets of the comparison grid (a subset runs first)."""
    from .compare import EPSILONS

    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            e = float(part)
        except ValueError:
            raise ValueError(f"--epsilons: {part!r} is not a number") from None
        if e not in EPSILONS:
            raise ValueError(f"--epsilons: {part} is not on the comparison grid {', '.join(f'{x:g}' for x in EPSILONS)} "
                             "(ε = ∞ runs with every one-shot method)")
        out.append(e)
    return tuple(out)


def _stored_machine() -> str:
    """The machine named by the committed curves (where the stored cells were computed), else this one."""
    from .compare import CURVES_PATH

    try:
        return json.loads(CURVES_PATH.read_text())["settings"]["machine"]
    except (OSError, KeyError, ValueError):
        return machine()


@contextmanager
def _executor(cfg: BenchConfig):
    """Where the cells run (``executor.make_executor``); nothing starts for a report or a plan."""
    from .executor import Serial, make_executor

    ex = Serial() if cfg.report_only or cfg.plan else make_executor(cfg.workers, cfg.ray)
    if not isinstance(ex, Serial) or cfg.workers == 1:
        print(f"cells run on: {ex.name} ({ex.slots} at a time)", file=sys.stderr, flush=True)
    try:
        yield ex
    finally:
        ex.close()


def bench_compare(cfg: BenchConfig) -> dict:
    """Hypernetwork vs DP-SGD vs non-private LoRA vs base model, at every epsilon (issue 4)."""
    from .compare import CURVES_PATH, DELTA, CompareSettings, run_compare, step_cost, summarise, targets
    from .plots import curves, plot_html, plot_png

    names = tuple(m for m in cfg.methods.split(",") if m)
    st = CompareSettings(quick=cfg.quick, samples=cfg.compare_samples, steps=cfg.steps, seed=cfg.seed,
                         repeats=cfg.repeats, sets=tuple(s for s in cfg.sets.split(",") if s),
                         epsilons=_epsilons(cfg.epsilons), methods=() if names == ("floor",) else (names or None),
                         report_only=cfg.report_only).resolved()
    with _executor(cfg) as ex:
        res = run_compare(st, log=lambda m: print(m, flush=True), executor=ex)
    if cfg.epsilons:  # ran a subset of the grid: the tables still cover the whole grid (stored cells)
        st = replace(st, epsilons=replace(st, epsilons=()).resolved().epsilons)
    summ = summarise(res, st.sets, st.samples, st.steps)
    tg = targets(summ, res["sets"], st.epsilons)
    tg["P4"] = step_cost(res)
    settings = {"quick": st.quick, "samples": st.samples, "steps": st.steps, "sampling_seed": st.seed,
                "repeats": st.repeats, "delta": DELTA, "methods": list(st.methods),
                # The machine the cells ran on: a --report-only run computes nothing, so it keeps the stored one.
                "machine": _stored_machine() if cfg.report_only else machine(),
                "seconds": round(res["last_run"]["seconds"], 1)}
    curv = curves(summ, res["sets"], settings)
    out = REPO_DIR / "bench"
    plot_html(curv, out / "compare.html")
    plot_png(curv, out / "compare.png")
    from .compare import FULL_SETS
    from .methods import METHODS

    full = not cfg.quick and set(st.methods) == set(METHODS) and set(FULL_SETS) <= set(st.sets)
    if full:  # the app's curves and the README figure come from the full run of every method only
        CURVES_PATH.parent.mkdir(parents=True, exist_ok=True)
        CURVES_PATH.write_text(json.dumps(curv, indent=1))
        plot_png(curv, REPO_DIR / "docs" / "privacy_utility.png")
        from .readme_table import write_readme_table

        write_readme_table()  # the README's results table, from the same cells (a test checks they agree)
    write_section(cfg.doc, "compare" if full else "compare-quick" if cfg.quick else "compare-partial",
                  compare_table(curv, summ, tg, res, st))
    from .evidence_table import text as evidence_text

    write_section(cfg.doc, "evidence", evidence_text(res, st.steps))  # the runs under issue 34's protocol
    res["targets"] = tg
    from .compare import _merge_cell

    _merge_cell(out / "results.json", res)  # other comparison processes may be writing cells too
    return {"targets": tg, "settings": settings}


def _fid_cell(r: dict) -> str:
    """'FID (agreement)', or 'mean±sd (agreement)' over repeats."""
    fid = f"{r['fid']:.1f}" if r["repeats"] == 1 else f"{r['fid']:.1f}±{r['fid_std']:.1f}"
    return f"{fid} ({r['agreement']:.2f})"


def _repeats_text(summ: dict, sets) -> str:
    counts = {(s, meth): max(r["repeats"] for r in rows.values()) for s in sets
              for meth, rows in summ.get(s, {}).items() if meth != "base"}
    extra = [f"{s} {meth} × {k}" for (s, meth), k in counts.items() if k > 1]
    return ("repeated cells (mean ± sd over repeats): " + ", ".join(extra)) if extra else "one repeat per cell"


def compare_table(curv: dict, summ: dict, tg: dict, res: dict, st) -> str:
    from .compare import DELTA, table_cells

    from .dpsgd import TUNED
    from .floor import FloorConfig

    eps = list(st.epsilons)
    tuned = TUNED
    fl = FloorConfig()
    title = "quick run, `python -m dphyper bench --quick`" if st.quick else "`python -m dphyper bench`"
    rows = [f"## Privacy-utility comparison ({title})", "",
            f"Machine: {curv['settings']['machine']}. Compute time of the cells in this table (sum of their wall times): "
            f"{sum(c['seconds_cell'] for c in table_cells(res, st.sets, st.samples, st.steps)) / 60:.1f} min"
            f"; this invocation (stored cells are reused): {res['last_run']['seconds'] / 60:.1f} min. "
            f"δ = {DELTA:g} for every private method. Each cell: {st.samples} samples, {st.steps} DDIM steps, "
            f"sampling seed {st.seed} + repeat, new privacy noise each time (OS-seeded); {_repeats_text(summ, st.sets)}. "
            "DP-SGD (Opacus, Poisson sampling, PRV accountant, hooks) with the "
            "public-set sweep's defaults per size: " + "; ".join(
                f"{'n ≤ ' + str(r['n_max']) if r['n_max'] else 'larger n'}: lr {r['lr']:g}, C {r['max_grad_norm']:g}, "
                f"{r['epochs']:g} epochs, batch {r['batch_size']}" for r in tuned)
            + ". PDA-DPMD: the same DP-SGD, each update mixed with a public-batch gradient (weight cos(πt/2T) on the "
            "private part), with its own sweep's defaults (the sweep section lists every method's per-size "
            "defaults). Non-private floor (`nonprivate`): the same LoRA trained without clipping or noise, Adam lr "
            f"{fl.lr:g}, batch {fl.batch_size}, until the held-out denoising loss (first {fl.heldout} reference images, "
            f"fixed draws) has not improved by {100 * fl.min_delta:g} % for {fl.patience} evaluations "
            f"{fl.eval_every} steps apart (best weights kept; at most {fl.max_steps} steps).", "",
            "Sets (private images from the Fashion-MNIST test split; reference = held-out images of the same "
            "definition):", ""]
    for name, info in res["sets"].items():
        if name in st.sets:
            rows.append(f"- `{name}`: {info['kind']}, n = {info['n']}, classes {', '.join(info['classes']) or '–'}; "
                        f"{info['n_reference']} reference images from the {info['reference_from']} split. {info['note']}")
    rows += ["", "FID (class agreement in brackets; lower FID and higher agreement are better):", "",
             "| set | method | " + " | ".join(f"ε = {e:g}" for e in eps) + " | ε = ∞ / – |",
             "|---|---|" + "---|" * (len(eps) + 1)]
    for name in st.sets:
        for meth in ("base", *st.methods, "nonprivate"):
            m = summ.get(name, {}).get(meth, {})
            if not m:
                continue
            cells = [_fid_cell(m[str(e)]) if str(e) in m else "" for e in eps]
            flat = m.get("inf") or m.get("base")
            rows.append(f"| {name} | {meth} | " + " | ".join(cells) + " | " + (_fid_cell(flat) if flat else "") + " |")
    f1 = tg["F1"]
    if f1:
        below = sum(r["below"] for r in f1)
        small = [r for r in f1 if r["ratio_ok"] is not None]
        rows += ["", f"**F1** (hypernet FID < DP-SGD FID): {below} of {len(f1)} (set, ε) cells. "
                 f"FID ratio hypernet / DP-SGD ≤ 0.5 at ε ≤ 1: {sum(r['ratio_ok'] for r in small)} of {len(small)}. "
                 "Ratios: " + ", ".join(f"{r['set']} ε={r['epsilon']:g}: {r['ratio']:.2f}" for r in f1) + "."]
    if tg["F2"]:
        rows += ["", "**F2** (n = 1000, hypernet FID at ε = 1 vs ε = ∞): " + ", ".join(
            f"{r['set']}: {r['fid_eps1']:.1f} vs {r['fid_inf']:.1f} ({100 * r['relative']:+.1f} %)" for r in tg["F2"])
            + "."]
    if tg["P2"]:
        p2 = [r["ratio"] for r in tg["P2"]]
        rows += ["", f"**P2** (n = 1000, wall time to a LoRA, DP-SGD / hypernet, same ε): median "
                 f"{float(np.median(p2)):.0f}× (range {min(p2):.0f}–{max(p2):.0f}×, {len(p2)} cells)."]
    if tg["P4"]:
        p4 = [r["ratio"] for r in tg["P4"]]
        rows += ["", f"**P4** (seconds per DP-SGD step / per non-private step, same set, same batch size): median "
                 f"{float(np.median(p4)):.2f}× (range {min(p4):.2f}–{max(p4):.2f}, {len(p4)} runs; Opacus "
                 "grad-sample mode `hooks`)."]
    fig = "bench/compare.png" if st.quick else "docs/privacy_utility.png"
    rows += ["", f"Figures: `bench/compare.html` (plotly), `{fig}`; all cells in `bench/results.json`"
             + ("" if st.quick else "; the app's curves in `assets/curves/privacy_utility.json`") + "."]
    return "\n".join(rows)


APP_RSS_SIZES = (64, 200)
APP_STEP_BUDGET = 20


def _vm_hwm_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


def _peak_rss_per_method(url: str, pid: int, files: list[Path]) -> dict:
    """Method -> {n: MB}: each registered method's run through the app's API on n uploaded images, the process's
    peak RSS reset before each run, so each number is that run's own peak (on top of the loaded app)."""
    from gradio_client import Client, handle_file

    from .methods import METHODS

    out: dict = {name: {} for name in METHODS}
    for n in APP_RSS_SIZES:
        client = Client(url, verbose=False)
        client.predict([handle_file(str(p)) for p in files[:n]], None, api_name="/load_upload")
        for name, m in METHODS.items():
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            args = [0.0, False, 1e-5, 16] + ([] if m.one_shot else [APP_STEP_BUDGET]) + [None]
            client.predict(*args, api_name=f"/run_{name.replace('-', '_')}")
            out[name][str(n)] = _vm_hwm_kb(pid) / 1024
    return out


def bench_app(cfg: BenchConfig) -> dict:
    """P3 (200 uploaded images -> 16 samples), plot redraw after a slider change, P5 (peak RSS)."""
    import os
    import socket
    import subprocess
    import sys
    import tempfile

    from gradio_client import Client

    from .config import EXAMPLES_DIR

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="dphyper-bench-app-"))
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "DPHYPER_TEMP_DIR": str(tmp / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, str(REPO_DIR / "app.py")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        t0 = time.perf_counter()
        client = None
        while time.perf_counter() - t0 < 300:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(1)
        if client is None:
            raise RuntimeError("the app did not start within 300 s")
        startup = time.perf_counter() - t0
        files = sorted(p for s in ("sneakers", "trousers") for p in (EXAMPLES_DIR / s).glob("*.png"))[:200]
        p3 = _p3_in_browser(f"http://127.0.0.1:{port}/", files)
        redraw = []
        for i in range(10):
            t = time.perf_counter()
            client.predict(-1 + 0.2 * i, False, None, api_name="/utility_figure")
            redraw.append(time.perf_counter() - t)
        hwm = _vm_hwm_kb(proc.pid)
        per_method = _peak_rss_per_method(f"http://127.0.0.1:{port}/", proc.pid, files)
    finally:
        proc.terminate()
        proc.wait(30)
    copy_ms = _lora_copy_ms()
    res = {"machine": machine(), "startup_seconds": startup, "p3": p3, "lora_copy_ms": copy_ms,
           "p3_median_seconds": float(np.median([r["total"] for r in p3])),
           "p3_command": "Chromium (Playwright): choose 200 PNG files, wait for the count, click, wait for the caption",
           "redraw_median_ms": 1000 * float(np.median(redraw)), "redraw_max_ms": 1000 * max(redraw),
           "peak_rss_mb": hwm / 1024, "peak_rss_per_method_mb": per_method}
    rows = ["## The app (`python -m dphyper bench --suite app`)", "",
            f"Machine: {res['machine']}. `python app.py` in a subprocess. P3 in real Chromium (Debian's, via "
            "Playwright; a new page each time): choose 200 PNG files in the upload box, wait for '200 images from "
            "your upload', "
            "click the hypernetwork button, wait for its caption (release, LoRA, 16 samples with 25 DDIM steps, "
            "gallery shown). The redraw is timed over HTTP with `gradio_client`.", "",
            f"- start-up until the API answers (models loaded and warmed): {startup:.1f} s",
            f"- **P3**: 200 uploaded PNGs → 16 hypernetwork samples back: **{res['p3_median_seconds']:.2f} s** "
            f"(median of {len(p3)}; runs {', '.join(format(r['total'], '.2f') for r in p3)} s; upload + decode "
            f"{np.median([r['upload_and_decode'] for r in p3]):.2f} s of it, until the count shows). Target ≤ 10 s.",
            f"- cost of the concurrency fix (issue 12): every LoRA sampling call works on its own copy of the "
            f"base UNet instead of swapping parameters in the shared one: **{copy_ms:.1f} ms** per call "
            f"(median of 20, in-process), {100 * copy_ms / 1000 / res['p3_median_seconds']:.2f} % of P3.",
            f"- slider change → new privacy-utility figure (HTTP round trip): **{res['redraw_median_ms']:.0f} ms** "
            f"median, {res['redraw_max_ms']:.0f} ms max of 10. Target ≤ 300 ms.",
            f"- **P5**: peak RSS of the app process (VmHWM) over start-up and the runs: "
            f"**{res['peak_rss_mb']:.0f} MB**. Target ≤ 1,536 MB.",
            "- **Peak RSS of each method's run** in the same app process (issue 37): VmHWM reset before each run "
            "(`/proc/PID/clear_refs` 5), the folder uploaded through the API, ε = 1, 16 samples, the training "
            f"methods with a step budget of {APP_STEP_BUDGET} (memory follows the physical batch, not the number of "
            "steps). Target ≤ 1,536 MB:", "",
            "| method | " + " | ".join(f"n = {n}" for n in APP_RSS_SIZES) + " |",
            "|---" * (len(APP_RSS_SIZES) + 1) + "|"]
    for name, by_n in per_method.items():
        rows.append(f"| {name} | " + " | ".join(f"{by_n[str(n)]:.0f} MB" for n in APP_RSS_SIZES) + " |")
    write_section(cfg.doc, "app", "\n".join(rows))
    return res


def _lora_copy_ms(repeats: int = 20) -> float:
    """Milliseconds to build one ``lora_model_fn`` (a private copy of the shipped UNet)."""
    from .diffusion import load_unet
    from .lora import add_lora, lora_model_fn

    unet = add_lora(load_unet(device=torch.device("cpu")))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        lora_model_fn(unet, {})
        times.append(1000 * (time.perf_counter() - t))
    return float(np.median(times))


def _p3_in_browser(url: str, files: list[Path], repeats: int = 3) -> list[dict]:
    import shutil

    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("text=from example set", timeout=120000)  # the page's first load is done
            page.get_by_text("…or upload your own").click()
            t = time.perf_counter()
            page.locator("input[type=file][multiple]:not([webkitdirectory])").set_input_files([str(f) for f in files])
            page.wait_for_selector("text=from your upload", timeout=120000)  # not the example's count
            t_upload = time.perf_counter() - t
            page.get_by_role("button", name="Hypernetwork (seconds)").click()
            page.wait_for_selector("text=to a LoRA and samples", timeout=120000)
            total = time.perf_counter() - t
            n_img = page.locator("img[src*='gradio_api/file'], img[src*='/file=']").count()
            out.append({"total": total, "upload_and_decode": t_upload, "images": n_img})
            page.close()
        browser.close()
    return out


def bench_audit(cfg: BenchConfig) -> dict:
    """R5: the audit of both shipped mechanisms and of the deliberately broken variants."""
    from .audit import AuditConfig, run_audit

    rows = ["## Empirical privacy audit (`python -m dphyper bench --suite audit`)", "",
            f"Machine: {machine()}. `python -m dphyper audit --method M --epsilon 1 --broken B` (defaults: n = 100, "
            "20,000 trials for the one-shot release, 1,000 for DP-SGD; threshold picked on one half of the trials, "
            "rates measured on the other; 95 % Clopper-Pearson). Pass = lower bound ≤ claim for the shipped "
            "mechanism, > claim for a broken one.", "",
            "| method | variant | ε claimed | ε lower bound | TPR | FPR | trials measured | seconds | pass |",
            "|---|---|---|---|---|---|---|---|---|"]
    res = []
    from .audit import audit_variants
    from .methods import METHODS

    for method in METHODS:
        for broken in audit_variants()[method]:
            r = run_audit(AuditConfig(method=method, epsilon=1.0, broken=broken))
            res.append(r)
            rows.append(f"| {method} | {'shipped' if broken == 'none' else broken} | {r['epsilon_claimed']:g} | "
                        f"{r['epsilon_lower_bound']:.2f} | {r['tpr']:.3f} | {r['fpr']:.4f} | {r['trials_measured']} | "
                        f"{r['seconds']:.0f} | {'yes' if r['passed'] else '**NO**'} |")
            print(rows[-1], flush=True)
    write_section(cfg.doc, "audit", "\n".join(rows))
    return {"machine": machine(), "audits": res}


def bench_sweep(cfg: BenchConfig) -> dict:
    """The public sweep of every tunable method (resumable; ``--max-cells`` bounds one call)."""
    from .compare import SWEEP_SETS
    from .sweep import run_sweep
    from .methods import METHODS

    names = tuple(m for m in cfg.methods.split(",") if m) or tuple(n for n, m in METHODS.items() if m.sweep)
    wanted = [x for x in cfg.sets.split(",") if x]
    sets = tuple(s for s in SWEEP_SETS if not wanted or s.name in wanted)
    if cfg.plan:
        from .sweep import pending_text, sweep_pending

        rows = sweep_pending(REPO_DIR / "bench", names, sets)
        print(pending_text(rows), flush=True)
        return {"pending": rows}
    if cfg.report_only:
        res = json.loads((REPO_DIR / "bench" / "sweep.json").read_text())
    else:
        with _executor(cfg) as ex:
            res = run_sweep(names, REPO_DIR / "bench", sets=sets, steps=cfg.steps, seed=cfg.seed,
                            max_cells=cfg.max_cells, log=lambda m: print(m, flush=True), executor=ex)
    write_section(cfg.doc, "sweep", sweep_table(res))
    return res


FID_NOISE_PATH = REPO_DIR / "bench" / "fid_noise.json"


def bench_fid_noise(cfg: BenchConfig) -> dict:
    """How much a cell's FID moves with the sampling seed alone: the base model on every sweep set, 5 seeds,
    the sweep's protocol (128 samples, 25 DDIM steps). Differences between single cells smaller than this
    spread are not evidence; the sweep's successive halving uses it (``sweep.noise_bands``). Resumable:
    a set already in ``bench/fid_noise.json`` is kept."""
    from .compare import SWEEP_SETS, build_set, run_cell
    from .models import shared_models

    res = fid_noise_results()
    for s in SWEEP_SETS:
        if s.name in res["sets"]:
            continue
        data = build_set(s, REPO_DIR / "bench")
        cells = [run_cell("base", 1.0, data, shared_models(), samples=128, steps=cfg.steps, seed=k) for k in range(5)]
        fids = [c["fid"] for c in cells]
        res["sets"][s.name] = {"machine": machine(), "samples": 128, "steps": cfg.steps, "fids": fids,
                               "agreements": [c["agreement"] for c in cells], "mean": float(np.mean(fids)),
                               "sd": float(np.std(fids, ddof=1))}
        FID_NOISE_PATH.write_text(json.dumps(res, indent=1))
        print(f"fid-noise {s.name}: mean {res['sets'][s.name]['mean']:.1f} sd {res['sets'][s.name]['sd']:.2f}",
              flush=True)
    write_section(cfg.doc, "fid-noise", fid_noise_text(res))
    return res


def fid_noise_results() -> dict:
    from .sweep import load_fid_noise

    return load_fid_noise(FID_NOISE_PATH.parent)


def fid_noise_text(res: dict) -> str:
    parts = []
    for name, r in res["sets"].items():
        parts.append(f"on `{name}`, FID {', '.join(f'{f:.1f}' for f in r['fids'])} (mean {r['mean']:.1f}, sd "
                     f"{r['sd']:.1f}, so ±{2 * r['sd']:.1f} at 2 sd; agreement {min(r['agreements']):.3f}–"
                     f"{max(r['agreements']):.3f})")
    first = next(iter(res["sets"].values()), {"samples": 128, "steps": 25})
    return ("**How much of a FID difference is noise** (`python -m dphyper bench --suite fid-noise`): the base "
            f"model under the sweep's protocol ({first['samples']} samples, {first['steps']} DDIM steps) with 5 "
            f"sampling seeds gives, {'; '.join(parts)}. The sampling seed alone moves a cell's FID that much, "
            "before any privacy noise or training seed: single-cell differences smaller than 2 sd rank nothing, "
            "and a sweep's winner by less is a tie.")


def sweep_table(res: dict) -> str:
    """Per method, set and epsilon: every configuration tried, best FID first."""
    from .sweep import fresh_sweep_cells, rank_sweep

    rows = ["## Public sweep of every tunable method (`python -m dphyper bench --suite sweep`)", "",
            f"Machine: {machine()}. Public sets from the **train** split only (never a benchmark or user set): "
            + "; ".join(f"`{k}` ({v['n']} images, reference {v['n_reference']} other train images)"
                        for k, v in res.get("sets", {}).items())
            + f". δ = {res['delta']:g}; each cell {res['samples']} samples, {res['steps']} DDIM steps, sampling seed "
            f"{res['seed']}. **Compute cap, the same for every run of every method: {res['compute_cap']:,} UNet "
            "example-gradient evaluations** (private and public examples together; 2,560 DP-SGD epochs at "
            "n = 100, 256 at n = 1,000). Stage 1: learning rate × length at ε = 1 (batch 64, C = 0.01), by successive "
            "halving where the set's FID noise is measured (below): every rate's shortest run first, then the "
            "longer runs only of the rates whose short run is within 2 sd of a two-cell difference (2√2 × the sd below) "
            "of the best short run (cells run before "
            "the rule stay in the tables); stage 2 around stage 1's best: full batch, C = 1, a longer run; stage 3: "
            "the three best at ε = 4; for a method with one default for every set and ε (it keeps n private: the "
            "hypernetwork, the quadratic EM, slicing), every set's three best on every set at ε = 4 and 0.25, "
            "scored together by `sweep.one_default` (an ε counts once its column is complete). "
            "Cost = example-gradient evaluations of the run.", ""]
    if FID_NOISE_PATH.exists():
        rows += [fid_noise_text(fid_noise_results()), ""]
    cells = fresh_sweep_cells(res)
    stale = len(res.get("cells", {})) - len(cells)
    if stale:
        rows += [f"({stale} stored cells are stale — run with settings or checkpoints that are no longer today's — "
                 "and are left out; the next sweep recomputes them.)", ""]
    for method in sorted({c["method"] for c in cells.values()}):
        for s in res.get("sets", {}):
            for eps in res.get("one_default_epsilons", res.get("epsilons", [])):
                ranked = rank_sweep(cells, method, s, eps)
                if not ranked:
                    continue
                rows += [f"**{method}**, `{s}`, ε = {eps:g}:", ""]
                dpsgd_like = all({"lr", "max_grad_norm", "epochs", "batch_size"} <= set(c["hp"]) for c in ranked)
                rows += (["| lr | C | epochs | batch | cost | FID | agreement | seconds |", "|---|---|---|---|---|---|---|---|"]
                         if dpsgd_like else ["| settings | cost | FID | agreement | seconds |", "|---|---|---|---|---|"])
                for c in ranked:
                    hp = c["hp"]
                    tail = f"{c['cost']:,} | {c['fid']:.1f} | {c['agreement']:.3f} | {c['seconds_to_lora']:.0f} |"
                    if dpsgd_like:
                        rows.append(f"| {hp['lr']:g} | {hp['max_grad_norm']:g} | {hp['epochs']:g} | "
                                    f"{hp['batch_size']} | " + tail)
                    else:  # another method's own settings (qem, slicing)
                        rows.append("| " + ", ".join(f"{k} {v}" for k, v in sorted(hp.items())) + " | " + tail)
                rows.append("")
    from .sweep import ONE_DEFAULT_EPSILONS, one_default
    from .methods import METHODS

    for m in METHODS.values():
        if m.one_default:  # one setting for every size (it keeps n private): the sweep rule's pick
            pick = one_default(cells, m.name)
            if pick:
                rows += ["", f"Shipped {m.label} default (one for every set and ε, `sweep.one_default` over ε = "
                         + ", ".join(f"{e:g}" for e in ONE_DEFAULT_EPSILONS) + " where complete): "
                         + ", ".join(f"{k} {v}" for k, v in sorted(pick[0].items()))
                         + f" (mean FID / best FID {pick[1]:.3f})."]
            continue
        table = m.identity().get("tuned")
        if not table:
            continue
        rows += ["", f"Shipped {m.label} defaults per size: " + "; ".join(
            f"{'n ≤ ' + str(r['n_max']) if r['n_max'] else 'larger n'}: lr {r['lr']:g}, C {r['max_grad_norm']:g}, "
            f"{r['epochs']:g} epochs, batch {r['batch_size']} "
            + (f"(from `{r['tuned_on']}`)" if r["tuned_on"] else "(not swept yet)") for r in table) + "."]
    return "\n".join(rows)


def _summary(cfg: BenchConfig, res: dict) -> dict:
    file = {"sweep": "sweep.json", "dpsgd-sweep": "sweep.json",
            "fid-noise": "fid_noise.json"}[cfg.suite]
    cells = res.get("cells", res.get("sets", {}))
    out = {"suite": cfg.suite, "stored": len(cells), "file": f"bench/{file}", "doc": str(cfg.doc)}
    if "last_run" in res:
        out["seconds"] = round(res["last_run"].get("seconds", 0.0), 1)
    return out


def _bench_sampling(cfg: BenchConfig) -> dict:
    from .sampler_bench import bench_sampling

    return bench_sampling(cfg, machine())


def _bench_executor(cfg: BenchConfig) -> dict:
    from .executor_bench import bench_executor

    return bench_executor(cfg, machine())


def _bench_p4(cfg: BenchConfig) -> dict:
    from .p4_bench import bench_p4

    return bench_p4(cfg, machine())


def run_bench(cfg: BenchConfig) -> dict:
    fn = {"models": bench_models, "hypernet": bench_hypernet, "theory": bench_theory, "p1": bench_p1,
          "sweep": bench_sweep, "dpsgd-sweep": bench_sweep, "compare": bench_compare, "app": bench_app,
          "audit": bench_audit, "reach": bench_reach, "fid-noise": bench_fid_noise, "sparse": bench_sparse,
          "sampling": _bench_sampling, "executor": _bench_executor, "p4": _bench_p4}.get(cfg.suite)
    if fn is None:
        raise ValueError(f"unknown suite {cfg.suite!r}: choose compare, sweep, fid-noise, app, audit, models, hypernet, p1, "
                         "reach, sampling, executor, p4, sparse or theory")
    res = fn(cfg)
    if cfg.suite in ("compare", "sampling", "executor", "p4"):
        return res  # a summary (the cells are in bench/results.json, bench/sampling.json)
    if cfg.suite in ("sweep", "dpsgd-sweep", "fid-noise"):
        # These write their own resumable files under bench/ (thousands of lines): the command prints
        # what it did, not the whole file.
        return _summary(cfg, res)
    out = REPO_DIR / "bench" / f"{cfg.suite}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    return res
