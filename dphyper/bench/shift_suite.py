"""Where the flagship should lose (issue 41): every method on private sets the public data does not cover.

``python -m dphyper bench --suite shift`` runs the comparison's cells on the shifted sets (default: the three
fully shifted sets at n = 100, ε 1 / 8 / 64; ``--sets`` takes any of ``shifted_sets.all_names()``), through the
same executor and into the same ``bench/results.json`` as every other comparison cell, then writes:

- BENCHMARKS' ``shift`` section: FID per set, method and ε (mean ± 95 % half-width where a cell has runs), the
  crossovers (where a method measured below the hypernetwork, and whether the intervals are apart), the reach
  check's verdicts on the hypernetwork's runs, and the compute the cells took;
- ``docs/shift.png``: FID against ε per shifted set, and FID against the shifted share where mixtures exist;
- ``assets/curves/shift.json``: the same curves plus each set's public clean mean embedding, for the note a run
  gets when its set is outside the public data's reach (``shift_report.advice``);
- the README's generated sentence (between its ``shift`` markers).

``--report-only`` computes no cell (it does compute the public sets' mean embeddings once, for the asset).
"""

from __future__ import annotations

import json
import math
from collections import Counter

from ..config import REPO_DIR
from ..markdown_sections import write_section
from .common import BenchConfig, _epsilons, _executor

DEFAULT_SETS = ("shift-rot90-100", "shift-invert-100", "shift-glyphs-100")
FIGURE = REPO_DIR / "docs" / "shift.png"


def bench_shift(cfg: BenchConfig) -> dict:
    from ..compare import CompareSettings, run_compare, summarise
    from ..methods import FLAGSHIP, METHODS
    from ..plots import curves
    from ..shift_report import EPSILONS, SHIFT_CURVES, crossovers, readme_block
    from ..shifted_sets import all_names

    sets = tuple(s for s in cfg.sets.split(",") if s) or DEFAULT_SETS
    bad = [s for s in sets if s not in all_names()]
    if bad:
        raise ValueError(f"--sets: {bad} are not shifted sets; choose from {all_names()}")
    names = tuple(m for m in cfg.methods.split(",") if m) or None
    st = CompareSettings(samples=cfg.compare_samples, steps=cfg.steps, seed=cfg.seed, repeats=cfg.repeats,
                         sets=sets, epsilons=_epsilons(cfg.epsilons) or EPSILONS, methods=names).resolved()
    path = st.out / "results.json"
    if not cfg.report_only:
        with _executor(cfg) as ex:
            run_compare(st, log=lambda m: print(m, flush=True), executor=ex)
    res = json.loads(path.read_text())
    # Every shifted set with stored cells is reported, not only this invocation's.
    stored = tuple(s for s in all_names() if any(c["set"] == s for c in res["cells"].values()))
    summ = summarise(res, stored, st.samples, st.steps)
    curv = curves(summ, res["sets"], {"samples": st.samples, "steps": st.steps, "sampling_seed": st.seed})
    from ..encoder import load_encoder

    encoder = load_encoder()  # once for every set
    for s in stored:
        curv["sets"][s]["release_mean"] = _clean_mean(s, encoder)
        # the reach check's verdicts on the flagship's runs (what a user of that set was told)
        curv["sets"][s]["reach"] = dict(sorted(Counter(
            (c.get("reach") or {}).get("verdict", "not recorded") for c in res["cells"].values()
            if c["set"] == s and c["method"] == FLAGSHIP and c["samples"] == st.samples).items()))
    SHIFT_CURVES.parent.mkdir(parents=True, exist_ok=True)
    SHIFT_CURVES.write_text(json.dumps(curv, indent=1))
    labels = {k: m.label for k, m in METHODS.items()}
    _figure(curv, labels)
    write_section(cfg.doc, "shift", _text(curv, res, stored, st, labels, FLAGSHIP))
    from ..readme_table import README

    write_section(README, "shift", readme_block(curv, labels, FLAGSHIP))
    return {"sets": list(stored), "crossovers": [r for r in crossovers(curv, FLAGSHIP) if r["below"]]}


def _clean_mean(name: str, encoder) -> list[float]:
    """The shifted set's clipped mean embedding, without noise: public data (the test split, drawn glyphs)."""
    from ..encoder import embed
    from ..privacy import clip_embeddings
    from ..shifted_sets import build_shifted

    x = build_shifted(name)["private"]
    emb = clip_embeddings(embed(x, encoder), max_norm=1.0)
    return [round(float(v), 5) for v in emb.mean(0)]


def _text(curv: dict, res: dict, stored, st, labels: dict, flagship: str) -> str:
    from ..shift_report import _label, crossovers, summary_line
    from ..shifted_sets import parse

    cells = [c for c in res["cells"].values() if c["set"] in stored and c["samples"] == st.samples]
    minutes = sum(c["seconds_cell"] for c in cells) / 60
    eps = sorted({e for s in stored for m in curv["sets"][s]["methods"].values() for e in m["epsilon"]})
    rows = ["## Shifted private data: where the flagship should lose (`python -m dphyper bench --suite shift`)", "",
            "Private sets the public data does not cover, built by `dphyper/shifted_sets.py` from the test split "
            "(turned by 90°, black and white swapped) and from typed glyphs (Pillow's font, as the reach check "
            "draws them); `mixX-…` sets are X % shifted, the rest unshifted test images. Each set's reference is "
            f"built the same way from disjoint images. Each cell: {st.samples} samples, {st.steps} DDIM steps, the "
            "method's shipped defaults (tuned on unshifted public sets: nothing was tuned here). "
            f"Compute of the {len(cells)} stored runs: {minutes:.0f} CPU-min on the benchmark machine "
            "(2 CPU cores; a cell uses both).", "",
            "FID (mean ± 95 % half-width over runs where a cell has more than one; `·k` = k runs):", "",
            "| set | method | " + " | ".join(f"ε = {e:g}" for e in eps) + " | ε = ∞ / – |",
            "|---|---|" + "---|" * (len(eps) + 1)]
    for s in stored:
        for meth, m in curv["sets"][s]["methods"].items():
            row = []
            for e in eps:
                if e not in m["epsilon"]:
                    row.append("")
                    continue
                i = m["epsilon"].index(e)
                half = (m.get("fid_half") or [None] * len(m["epsilon"]))[i]
                row.append(f"{m['fid'][i]:.1f}" + (f" ± {half:.1f}" if half is not None else "")
                           + f" ·{m['runs'][i]}")
            flat = f"{m['flat']['fid']:.1f}" if "flat" in m else ""
            rows.append(f"| {s} | {_label(meth, labels)} | "
                        + " | ".join(row) + f" | {flat} |")
    rows += ["", summary_line(curv, labels, flagship)]
    rows += ["", f"**Crossovers** (a method's FID below the {labels[flagship].lower()}'s at the same set and ε; "
             "'apart' when its 95 % interval lies wholly below the flagship's, which needs two runs of each):", ""]
    found = [r for r in crossovers(curv, flagship) if r["below"]]
    rows += [] if found else ["- none: no method measured below it on any stored cell."]
    for r in found:
        rows.append(f"- {r['set']}, ε = {r['epsilon']:g} ({labels[flagship]} {r['flagship']:.1f}): " + "; ".join(
            f"{_label(b['method'], labels)} {b['fid']:.1f}" + (" — apart" if b["apart"] else "") for b in r["below"]))
    reach = Counter((c["set"], (c.get("reach") or {}).get("verdict", "not recorded")) for c in cells
                    if c["method"] == flagship)
    rows += ["", "The reach check's verdict on the hypernetwork's runs (its release alone): " + "; ".join(
        f"{s}: " + ", ".join(f"{v} × {k}" for (t, v), k in sorted(reach.items()) if t == s)
        for s in stored if any(t == s for t, _ in reach)) + "."]
    rows += ["", plan_text(res, st.samples)]
    mixes = sorted({(parse(s)[0], parse(s)[2]) for s in stored if parse(s)[1] < 1})
    rows += ["", "Figure: `docs/shift.png` (FID against ε per set" + (", and against the shifted share for "
             + ", ".join(f"{k} at n = {n}" for k, n in mixes) if mixes else "; mixtures not run yet") + ")."]
    return "\n".join(rows)


def plan_text(res: dict, samples: int) -> str:
    """The issue's whole grid in CPU-hours, priced by the stored comparison cells' median minutes per method and n
    (every set of that size costs about the same): each shifted set at ε 1 / 8 / 64 for every method, 3 runs
    where a run costs under 5 minutes and 2 above (the issue's rule), less what is stored."""
    import numpy as np

    from ..methods import METHODS
    from ..shifted_sets import all_names, parse

    minutes: dict[tuple[str, int], list[float]] = {}
    for c in res["cells"].values():
        n = res["sets"].get(c["set"], {}).get("n")
        if c["samples"] == samples and n and c["method"] in METHODS:
            minutes.setdefault((c["method"], n), []).append(c["seconds_cell"] / 60)
    have = {(c["set"], c["method"], float(c["epsilon"]), c["repeat"]) for c in res["cells"].values()
            if c["samples"] == samples and c["epsilon"] not in (None, "inf")}
    total, left, unpriced = 0.0, 0.0, set()
    for name in all_names():
        n = parse(name)[2]
        for m in METHODS:
            if (m, n) not in minutes:
                unpriced.add(f"{m} at n = {n}")
                continue
            per = float(np.median(minutes[(m, n)]))
            for e in (1.0, 8.0, 64.0):
                for r in range(3 if per < 5 else 2):
                    total += per
                    left += 0 if (name, m, e, r) in have else per
    return (f"**Plan** (every shifted set, {len(all_names())} of them, × every method × ε 1 / 8 / 64; 3 runs per cell, 2 "
            f"where a run takes over 5 min), priced by the stored cells' median minutes per method and n: "
            f"{total / 60:.0f} hours of this 2-core machine (a cell uses both cores), {left / 60:.0f} of them not run yet"
            + (f" (not priced, no stored cell: {', '.join(sorted(unpriced))})" if unpriced else "")
            + ". A GPU machine, when one is lent, takes the n = 1,000 training cells.")


def _figure(curv: dict, labels: dict) -> None:
    """FID against ε per shifted set; below, FID against the shifted share (0 = none) per kind and n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plots import legend_below, style
    from ..shifted_sets import parse

    sets = list(curv["sets"])
    shares = {}
    for s in sets:
        kind, x, n = parse(s)
        shares.setdefault((kind, n), {})[x] = s
    share_panels = [k for k, v in shares.items() if len(v) > 1]
    cols = max(1, min(3, len(sets)))
    rows = math.ceil(len(sets) / cols) + math.ceil(len(share_panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, s in zip(flat, sets):
        for meth, m in curv["sets"][s]["methods"].items():
            label, colour = style(meth)
            if m["epsilon"]:
                halves = [h if h is not None else 0.0 for h in (m.get("fid_half") or [None] * len(m["epsilon"]))]
                ax.errorbar(m["epsilon"], m["fid"], yerr=halves, fmt="o-", color=colour, label=label, ms=4,
                            capsize=2)  # the 95 % interval over runs, where a cell has several
            elif "flat" in m:
                ax.axhline(m["flat"]["fid"], color=colour, ls="--", label=label)
        eps = sorted({e for m in curv["sets"][s]["methods"].values() for e in m["epsilon"]}) or [1.0]
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(eps)
        ax.set_xticklabels([f"{e:g}" for e in eps])
        ax.set(title=s, xlabel="ε", ylabel="FID")
    start = math.ceil(len(sets) / cols) * cols
    for ax, key in zip(flat[start:], share_panels):
        by_x = shares[key]
        meths = {m for s in by_x.values() for m in curv["sets"][s]["methods"]}
        for meth in sorted(meths):
            pts = []
            for x, s in sorted(by_x.items()):
                m = curv["sets"][s]["methods"].get(meth, {})
                if 8.0 in m.get("epsilon", []):
                    pts.append((100 * x, m["fid"][m["epsilon"].index(8.0)]))
                elif not m.get("epsilon") and "flat" in m:  # the base model: one cell per set, at every ε
                    pts.append((100 * x, m["flat"]["fid"]))
            if len(pts) > 1:
                ax.plot(*zip(*pts), "o--" if meth == "base" else "o-", color=style(meth)[1], label=style(meth)[0],
                        ms=4)
        ax.set(title=f"{key[0]}, n = {key[1]}, ε = 8", xlabel="% shifted", ylabel="FID")
    for ax in flat[len(sets):start] + flat[start + len(share_panels):]:  # the grid's empty places
        ax.axis("off")
    legend_below(fig, flat, 0.07)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=80)
    plt.close(fig)
