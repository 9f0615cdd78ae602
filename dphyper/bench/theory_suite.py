"""The teaching setting's simulated curves."""

from __future__ import annotations

import math
import time


from ..markdown_sections import write_section
from .common import BenchConfig, machine


def bench_theory(cfg: BenchConfig) -> dict:
    from . import theory_tab
    from ..theory import NOISY_SGD, ONE_SHOT, PARAM_EM, oneshot_closed_form, oneshot_simulate, qem_simulate

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
            rows.append(f"| {d} | " + " | ".join(f"{r[NOISY_SGD]['mean'] / r[ONE_SHOT]['mean']:.1f}×" for r in cells) + " |")
        if all(PARAM_EM in r for r in stored):
            rows += ["", "Quadratic EM (parameter space, James–Stein shrunk) / one-shot risk ratio at n = 1000:", "",
                     "| d | " + " | ".join(f"ε = {r['epsilon']:g}" for r in stored if r["n"] == 1000 and r["d"] == ds[0])
                     + " |", "|---|" + "---|" * len([r for r in stored if r["n"] == 1000 and r["d"] == ds[0]])]
            for d in ds:
                cells = [r for r in stored if r["n"] == 1000 and r["d"] == d]
                rows.append(f"| {d} | " + " | ".join(f"{r[PARAM_EM]['mean'] / r[ONE_SHOT]['mean']:.2f}×" for r in cells)
                            + " |")
    write_section(cfg.doc, "theory", "\n".join(rows))
    return res
