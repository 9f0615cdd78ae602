"""The privacy-utility comparison of every method and its tables."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from ..config import REPO_DIR
from ..markdown_sections import write_section
from .common import BenchConfig, _epsilons, _executor, _stored_machine, machine


def bench_compare(cfg: BenchConfig) -> dict:
    """Hypernetwork vs DP-SGD vs non-private LoRA vs base model, at every epsilon (issue 4)."""
    from ..compare import CURVES_PATH, DELTA, CompareSettings, run_compare, summarise
    from .targets import step_cost, targets
    from ..plots import curves, plot_html, plot_png

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
    from ..compare import FULL_SETS
    from ..methods import METHODS

    full = not cfg.quick and set(st.methods) == set(METHODS) and set(FULL_SETS) <= set(st.sets)
    if full:  # the app's curves and the README figure come from the full run of every method only
        CURVES_PATH.parent.mkdir(parents=True, exist_ok=True)
        CURVES_PATH.write_text(json.dumps(curv, indent=1))
        plot_png(curv, REPO_DIR / "docs" / "privacy_utility.png")
        from ..readme_table import write_readme_table

        write_readme_table()  # the README's results table, from the same cells (a test checks they agree)
    write_section(cfg.doc, "compare" if full else "compare-quick" if cfg.quick else "compare-partial",
                  compare_table(curv, summ, tg, res, st))
    from .evidence_suite import text as evidence_text

    write_section(cfg.doc, "evidence", evidence_text(res, st.steps))  # the runs under issue 34's protocol
    res["targets"] = tg
    from ..compare import _merge_cell

    _merge_cell(out / "results.json", res)  # other comparison processes may be writing cells too
    return {"targets": tg, "settings": settings}


def _work_per_run(cells: list[dict], sets: dict) -> list[str]:
    """For a method that reports its model calls (Private Evolution: the base model's sampler and variations are
    its whole cost): calls and seconds per run at each n, and its FID by n, from the stored cells."""
    from ..methods import METHODS

    out = []
    for name, m in METHODS.items():
        mine = [c for c in cells if c["method"] == name and c.get("model_calls")]
        if not mine:
            continue
        by_n: dict[int, list[dict]] = {}
        for c in mine:
            by_n.setdefault(sets[c["set"]]["n"], []).append(c)
        def fids(cs: list[dict]) -> str:  # each (set, epsilon): its runs' FIDs, so the spread shows
            groups: dict[tuple, list[float]] = {}
            for c in cs:
                groups.setdefault((c["set"], float(c["epsilon"])), []).append(c["fid"])
            return ", ".join(f"{s} ε={e:g}: " + " / ".join(f"{f:.0f}" for f in v) for (s, e), v in sorted(groups.items()))

        out += ["", f"**{m.label}: work per run** (UNet evaluations, from its report): " + "; ".join(
            f"n = {n}: {sorted({c['model_calls'] for c in cs})[0]:,} calls, median "
            f"{float(np.median([c['seconds_to_lora'] for c in cs])):.0f} s to its output, FID of each run: "
            + fids(cs) for n, cs in sorted(by_n.items())) + ". Its calls do not grow with n (only the embedding "
            "of the private images does): what n changes is how well the votes concentrate."]
    return out


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
    from ..compare import DELTA, table_cells

    from ..dpsgd import TUNED
    from ..floor import FloorConfig

    eps = list(st.epsilons)
    stored = table_cells(res, st.sets, st.samples, st.steps)
    tuned = TUNED
    fl = FloorConfig()
    title = "quick run, `python -m dphyper bench --quick`" if st.quick else "`python -m dphyper bench`"
    rows = [f"## Privacy-utility comparison ({title})", "",
            f"Machine: {curv['settings']['machine']}. Compute time of the cells in this table (sum of their wall times): "
            f"{sum(c['seconds_cell'] for c in stored) / 60:.1f} min"
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
    from ..bench_sets import BENCH_SETS

    role = {s.name: s.role for s in BENCH_SETS}  # issue 35: development sets steered designs; test sets did not
    for name, info in res["sets"].items():
        if name in st.sets:
            rows.append(f"- `{name}` ({role.get(name, 'development')} set): {info['kind']}, n = {info['n']}, "
                        f"classes {', '.join(info['classes']) or '–'}; "
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
    rows += _work_per_run(stored, res["sets"])
    fig = "bench/compare.png" if st.quick else "docs/privacy_utility.png"
    rows += ["", f"Figures: `bench/compare.html` (plotly), `{fig}`; all cells in `bench/results.json`"
             + ("" if st.quick else "; the app's curves in `assets/curves/privacy_utility.json`") + "."]
    return "\n".join(rows)
