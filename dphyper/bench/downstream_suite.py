"""`python -m dphyper bench --suite downstream`: train on synthetic, test on real (DPImageBench's utility).

Each cell is one method at one epsilon, one repeat: the method runs once on each of the ten class folders
(``dphyper.downstream``), a fresh classifier trains on the 10 x S labelled samples, and its accuracy on the
held-out test images is stored in ``bench/downstream.json`` under the method's identity (``compare.method_id``),
so a changed default recomputes only its own cells. A folder's samples are cached under ``bench/cache`` while a
cell runs, so a stopped run resumes at the next folder. One process writes the file at a time (merged cell by
cell, never half-written).
"""

from __future__ import annotations

import math
import time

import torch

from ..config import REPO_DIR

PATH = REPO_DIR / "bench" / "downstream.json"
CACHE = REPO_DIR / "bench" / "cache" / "downstream"
EPSILONS = (1.0, 8.0)
N_PER_CLASS = 100
SAMPLES_PER_CLASS = 100
CLASSIFIER_EPOCHS = 30
# DPImageBench's Fashion-MNIST accuracies (%), at epsilon = 1 / 10, for context (their n = 60,000).
DPIMAGEBENCH = {"DP-LoRA": (63.5, 83.8), "DPDM": (76.4, 85.6), "DP-MERF": (62.2, 62.2)}


def _key(method: str, eps: float, n: int, samples: int, rep: int) -> str:
    return f"{method}|{eps:g}|n{n}|S{samples}|rep{rep}"


def run_cell(method: str, eps: float, rep: int, *, n: int, samples: int, steps: int, log=print) -> dict:
    from ..compare import DELTA, method_id
    from ..downstream import accuracy, build_task, labelled_union, synthetic_for_folder, train_classifier
    from ..models import shared_models

    task = build_task(n)
    mid = "real" if method == "real" else method_id(method, None, n)
    models = shared_models() if method != "real" else None
    parts, seconds = [], 0.0
    for c, folder in enumerate(task.folders):
        path = CACHE / f"{method}-{mid}-{eps:g}-n{n}-S{samples}-r{rep}-c{c}.pt"
        if path.exists():
            saved = torch.load(path)
        else:
            x, s = synthetic_for_folder(method, folder, eps, DELTA, samples, steps, seed=1000 * rep + c, models=models)
            saved = {"samples": x, "seconds": s}
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(saved, path)
            log(f"  {method} eps={eps:g} rep{rep} class {c}: {len(x)} samples ({s:.0f} s)")
        parts.append(saved["samples"])
        seconds += saved["seconds"]
    x, y = labelled_union(parts)
    t = time.perf_counter()
    model = train_classifier(x, y, seed=rep, epochs=CLASSIFIER_EPOCHS)
    acc = accuracy(model, task.test_x, task.test_y)
    return {"method": method, "epsilon": eps, "n": n, "samples": samples, "repeat": rep, "method_id": mid,
            "seconds_methods": seconds, "seconds_classifier": time.perf_counter() - t, **acc}


def bench_downstream(cfg) -> dict:
    from ..compare import _load, _merge_cell
    from ..markdown_sections import write_section
    from ..methods import METHODS
    from .common import _epsilons, machine

    res = _load(PATH) or {"cells": {}}
    if not cfg.report_only:
        methods = [m for m in cfg.methods.split(",") if m] or ["real", *METHODS]
        unknown = [m for m in methods if m != "real" and m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}: 'real' or one of {', '.join(METHODS)}")
        epsilons = _epsilons(cfg.epsilons) if cfg.epsilons else EPSILONS
        for rep in range(max(cfg.repeats, 1)):
            for eps in epsilons:
                for m in methods:
                    key = _key(m, eps, N_PER_CLASS, SAMPLES_PER_CLASS, rep)
                    if m == "real" and eps != epsilons[0]:
                        continue  # no privacy: one cell serves every epsilon
                    if key in res["cells"] and _fresh(res["cells"][key]):
                        continue
                    print(f"downstream {key} ...", flush=True)
                    cell = run_cell(m, eps, rep, n=N_PER_CLASS, samples=SAMPLES_PER_CLASS, steps=cfg.steps)
                    res["machine"] = machine()
                    res = _merge_cell(PATH, res, key, cell)
                    print(f"downstream {key}: accuracy {cell['accuracy']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]",
                          flush=True)
    write_section(cfg.doc, "downstream", report(res))
    return {"suite": "downstream", "stored": len(res.get("cells", {})), "file": "bench/downstream.json"}


def _fresh(cell: dict) -> bool:
    from ..compare import method_id

    return cell["method"] == "real" or cell.get("method_id") == method_id(cell["method"], None, cell["n"])


def report(res: dict) -> str:
    from ..downstream import summarise
    from ..methods import METHODS

    cells = [c for c in res.get("cells", {}).values() if _fresh(c)]
    stale = len(res.get("cells", {})) - len(cells)
    lines = ["## Downstream accuracy: train on synthetic, test on real (`python -m dphyper bench --suite downstream`)",
             "", f"The ten Fashion-MNIST classes of the test split, {N_PER_CLASS} private images per class in ten "
             "disjoint folders. A method runs once per folder at the same (ε, δ = 1e-5) and samples "
             f"{SAMPLES_PER_CLASS} images, labelled with the folder's class; a newly initialised classifier (the "
             f"evaluator's architecture, {CLASSIFIER_EPOCHS} epochs) trains on the 10 × {SAMPLES_PER_CLASS} "
             "synthetic images alone and is tested on every test image in no folder. The folders are disjoint, so "
             "by parallel composition each image's privacy loss is one run's (ε, δ). `real`: the same classifier on "
             "the private images themselves (no privacy, this protocol's ceiling). Chance is 10 %. "
             "Mean over runs ± the Student-t 95 % half-width; with one run, its binomial 95 % interval over the "
             f"test images in brackets. Machine: {res.get('machine', '?')}.", ""]
    if not cells:
        return "\n".join(lines + ["No cells yet."])
    groups: dict[tuple, list] = {}
    for c in cells:
        groups.setdefault((c["method"], c["epsilon"] if c["method"] != "real" else None), []).append(c)
    epsilons = sorted({e for (_, e) in groups if e is not None})
    order = ["real", *METHODS]
    lines += ["| method | " + " | ".join(f"ε = {e:g}" for e in epsilons) + " | seconds of the 10 runs |",
              "|---|" + "---|" * len(epsilons) + "---|"]

    def fmt(runs: list[dict]) -> str:
        s = summarise(runs)
        if s["runs"] > 1:
            return f"{100 * s['mean']:.1f} ± {100 * s['half_width']:.1f} % ({s['runs']} runs)"
        return f"{100 * s['mean']:.1f} % [{100 * s['low_one_run']:.1f}, {100 * s['high_one_run']:.1f}]"

    for m in sorted({m for m, _ in groups}, key=lambda m: order.index(m) if m in order else len(order)):
        label = "real (no privacy)" if m == "real" else METHODS[m].label if m in METHODS else m
        if m == "real":
            runs = groups[(m, None)]
            row = [fmt(runs)] * len(epsilons)
            secs = "–"
        else:
            row = [fmt(groups[(m, e)]) if (m, e) in groups else "" for e in epsilons]
            all_runs = [c for e in epsilons for c in groups.get((m, e), [])]
            secs = f"{sum(c['seconds_methods'] for c in all_runs) / max(len(all_runs), 1):.0f}"
        lines.append(f"| {label} | " + " | ".join(row) + f" | {secs} |")
    lines += ["", "DPImageBench on Fashion-MNIST (their n = 60,000, their classifiers; context, not a comparison): "
              + "; ".join(f"{k} {a:.1f} % / {b:.1f} % at ε = 1 / 10" for k, (a, b) in DPIMAGEBENCH.items()) + "."]
    if stale:
        lines += ["", f"({stale} stored cells were run with defaults or checkpoints that are no longer today's and "
                  "are left out; the next run recomputes them.)"]
    missing = [m for m in METHODS if not any(k[0] == m for k in groups)]
    if missing:
        lines += ["", "Not run yet: " + ", ".join(METHODS[m].label for m in missing) + "."]
    if any(math.isnan(summarise(g)["half_width"]) for k, g in groups.items() if k[0] != "real"):
        lines += ["", "One run per cell so far: the bracket is the test-set interval of that run only; the spread "
                  "over privacy draws is larger (the comparison's repeats show it)."]
    return "\n".join(lines)
