"""ε chosen from the quality one needs (issue 38), and ε in one plain sentence.

The answer reads the committed benchmark curves (``assets/curves/privacy_utility.json``: public settings and
measured cells only, the same for every visitor). For a benchmark set and a target class agreement it gives, per
method, the smallest measured ε from which that method reaches the target at every larger measured ε too (a
single lucky cell below a failing one does not count), or says that none does.
"""

from __future__ import annotations

import math


def plain_epsilon(epsilon: float, delta: float) -> str:
    """One sentence of what ε means, for the slider (the odds form of (ε, δ)-DP)."""
    if not math.isfinite(epsilon):
        return "**No privacy**: what the run outputs can reveal anything about any one of your images."
    factor = math.exp(epsilon)
    times = f"{factor:.3g}" if factor < 100 else f"{factor:,.0f}" if factor < 1e9 else f"{factor:.1e}"
    return (f"In plain words: at ε = {epsilon:.3g}, anyone who sees what a run outputs can become at most "
            f"**{times}× more confident** (in odds) about whether any one of your images was used, "
            f"except with probability δ = {delta:g}.")


def epsilon_for_quality(curves: dict, bench_set: str, target: float, metric: str = "agreement") -> dict[str, float | None]:
    """Method -> the smallest measured ε from which every measured ε reaches ``target`` (None: none does).
    ``metric`` is a higher-is-better column of the curves (class agreement). A cell with repeated runs reaches
    the target only when its 95 % interval does (mean - half-width ≥ target); a one-run cell, by its value."""
    methods = curves.get("sets", {}).get(bench_set, {}).get("methods", {})
    out: dict[str, float | None] = {}
    for name, m in methods.items():
        eps, vals = m.get("epsilon") or [], m.get(metric) or []
        if not eps:  # a reference with one flat value (the base model, the non-private floor)
            continue
        halves = m.get(metric + "_half") or [None] * len(eps)
        vals = [v - h if h is not None and math.isfinite(h) else v for v, h in zip(vals, halves)]
        pairs = sorted(zip(eps, vals))
        best = None
        for e, v in reversed(pairs):  # from the largest ε down, while the target holds
            if v < target:
                break
            best = e
        out[name] = best
    return out


def quality_answer(curves: dict, bench_set: str | None, target: float, labels: dict[str, str]) -> str:
    """The page's answer, in words."""
    if not bench_set:
        return ""
    found = epsilon_for_quality(curves, bench_set, target)
    flat = {name: m["flat"]["agreement"] for name, m in curves["sets"][bench_set]["methods"].items()
            if m.get("flat") and not m.get("epsilon")}
    methods = curves["sets"][bench_set]["methods"].values()
    runs = sorted({r for m in methods for r in (m.get("runs") or [])}) or [curves.get("settings", {}).get("repeats", 1)]
    grid = sorted({e for m in methods for e in (m.get("epsilon") or [])})
    span = f"measured ε from {grid[0]:g} to {grid[-1]:g}" if grid else "no measured ε"
    many = runs[-1] > 1
    lines = [f"**Class agreement ≥ {target:.2f} on `{bench_set}`** ({span}; runs per cell: "
             + (f"{runs[0]}" if runs[0] == runs[-1] else f"{runs[0]}–{runs[-1]}")
             + ("; a cell with several runs counts only when its 95 % interval reaches the target" if many else "")
             + "; a one-run cell is one noisy draw and can move this answer):"]
    for name, e in sorted(found.items(), key=lambda kv: (kv[1] is None, kv[1] or 0)):
        lines.append(f"- {labels.get(name, name)}: " + (f"ε ≥ **{e:g}**" if e is not None else "no measured ε reaches it"))
    for name, v in flat.items():
        lines.append(f"- {labels.get(name, name)}: {v:.2f} " + ("(reaches it)" if v >= target else "(does not)"))
    return "  \n".join(lines)


def below_flagship(curves: dict, labels: dict[str, str], flagship: str) -> list[str]:
    """Where another method's measured FID is below the flagship's at the same ε on a benchmark set (the stored
    curves, one line per method), e.g. "Private Evolution: sneakers-100 at ε 8 (41 vs 63)"; [] when nowhere."""
    out: dict[str, list[str]] = {}
    for set_name, s in curves.get("sets", {}).items():
        ms = s.get("methods", {})
        if flagship not in ms:
            continue
        mine = dict(zip(ms[flagship]["epsilon"], ms[flagship]["fid"]))
        for meth, m in ms.items():
            if meth in (flagship, "base", "nonprivate"):
                continue
            for eps, fid in zip(m["epsilon"], m["fid"]):
                if eps in mine and fid < mine[eps]:
                    out.setdefault(meth, []).append(f"{set_name} at ε {eps:g} ({fid:.0f} vs {mine[eps]:.0f})")
    return [f"{labels.get(meth, meth)}: " + ", ".join(where) for meth, where in out.items()]
