"""Where the flagship should lose, read back from the stored cells (issue 41).

The shifted sets (``shifted_sets``: turned, inverted, typed glyphs, and mixtures) are private data the public
data does not cover. Their comparison cells sit in ``bench/results.json`` beside the others; this module turns
them into what a user reads: per set and ε, which method measured lowest and whether its interval lies below
the hypernetwork's (a *crossover*), the README's sentence, and the note a hypernetwork run gets when the reach
check says its set is outside the public data.

Nothing here is measured and nothing private is read: the curves asset (``assets/curves/shift.json``) holds
public benchmark numbers and, per shifted set, the noise-free clipped mean embedding of that public set. The
run-time note compares a run's *released* (noisy) mean and count to those: post-processing of a DP output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .config import REPO_DIR

SHIFT_CURVES = REPO_DIR / "assets" / "curves" / "shift.json"
EPSILONS = (1.0, 8.0, 64.0)  # the grid (infinity: the hypernetwork's noise-free reference)
BASE = "base"  # "no adaptation" is a choice a user can make too: the base model competes like a method


def _entry(curv: dict, s: str, meth: str, epsilon: float) -> tuple[float, float | None, int] | None:
    """(mean FID, 95 % half-width or None, runs) of a method's cell; the base model has one cell at every ε."""
    m = curv["sets"][s]["methods"].get(meth)
    if not m:
        return None
    if meth == BASE:
        flat = m.get("flat")
        return (flat["fid"], None, 1) if flat else None
    if epsilon not in m["epsilon"]:
        return None
    i = m["epsilon"].index(epsilon)
    half = (m.get("fid_half") or [None] * len(m["epsilon"]))[i]
    return m["fid"][i], half, (m.get("runs") or [1] * len(m["epsilon"]))[i]


def crossovers(curv: dict, flagship: str, epsilons=EPSILONS) -> list[dict]:
    """Per shifted set and ε with a flagship cell: the flagship's FID and every method measured below it.

    ``apart`` is the evidence rule's test on independent runs: the other method's interval lies wholly below
    the flagship's (both cells need two runs or more); otherwise a lower mean is reported as just that.
    """
    out = []
    for s in curv["sets"]:
        for e in epsilons:
            flag = _entry(curv, s, flagship, e)
            if flag is None:
                continue
            below = []
            for meth in curv["sets"][s]["methods"]:
                other = _entry(curv, s, meth, e) if meth != flagship else None
                if other is None or other[0] >= flag[0]:
                    continue
                apart = (other[1] is not None and flag[1] is not None and other[0] + other[1] < flag[0] - flag[1])
                below.append({"method": meth, "fid": other[0], "half": other[1], "runs": other[2], "apart": apart})
            below.sort(key=lambda r: r["fid"])
            out.append({"set": s, "epsilon": e, "flagship": flag[0], "flagship_half": flag[1],
                        "flagship_runs": flag[2], "below": below})
    return out


def _label(meth: str, labels: dict[str, str]) -> str:
    return "the base model (no adaptation)" if meth == BASE else labels.get(meth, meth)


def summary_line(curv: dict, labels: dict[str, str], flagship: str) -> str:
    """One generated sentence: in how many (shifted set, ε) cells each method measured below the flagship."""
    rows = crossovers(curv, flagship)
    if not rows:
        return "The shifted sets have no stored cells yet."
    counts: dict[str, list[str]] = {}
    for r in rows:
        for b in r["below"]:
            counts.setdefault(b["method"], []).append(f"{r['set']} ε {r['epsilon']:g}"
                                                      + (" (intervals apart)" if b["apart"] else ""))
    sets = sorted({r["set"] for r in rows})
    head = (f"On {len(sets)} shifted sets ({', '.join(sets)}) at ε = "
            + ", ".join(f"{e:g}" for e in sorted({r['epsilon'] for r in rows})) + f" ({len(rows)} cells), ")
    if not counts:
        return head + f"no method's FID was below the {labels[flagship].lower()}'s."
    return head + "FID below the " + labels[flagship].lower() + "'s: " + "; ".join(
        f"{_label(m, labels)} in {len(v)}" for m, v in sorted(counts.items(), key=lambda kv: -len(kv[1]))) + "."


def lowest_table(curv: dict, labels: dict[str, str], flagship: str) -> str:
    """Per shifted set (share shifted, n) and ε: which method measured the lowest FID, against the flagship's.

    The README's "when another method wins" table and the app's, generated from the stored curves; a cell says
    "apart" only when the evidence rule does (``crossovers``), else the lower mean is just that.
    """
    from .shifted_sets import parse

    rows = crossovers(curv, flagship)
    if not rows:
        return ""
    eps = sorted({r["epsilon"] for r in rows})
    flag = labels[flagship].lower()
    out = ["| set (shifted share, n) | " + " | ".join(f"ε = {e:g}" for e in eps) + " |",
           "|---|" + "---|" * len(eps)]
    for s in sorted({r["set"] for r in rows}, key=lambda k: (parse(k)[0], parse(k)[2], parse(k)[1])):
        _, share, n = parse(s)
        cells = []
        for e in eps:
            r = next((r for r in rows if r["set"] == s and r["epsilon"] == e), None)
            if r is None:
                cells.append("")
            elif not r["below"]:
                cells.append(f"{flag} {r['flagship']:.0f}")
            else:
                b = r["below"][0]
                name = "base model" if b["method"] == BASE else labels.get(b["method"], b["method"])
                cells.append(f"**{name}** {b['fid']:.0f} vs {r['flagship']:.0f}"
                             + (" (apart)" if b["apart"] else ""))
        out.append(f"| {s} ({100 * share:.0f} %, {n}) | " + " | ".join(cells) + " |")
    return "\n".join(out)


def reach_line(curv: dict, flagship: str) -> str:
    """Where the reach check said 'within' on most of the flagship's runs although the base model alone measured
    below the flagship at every stored ε (a miss a user would not see); '' when there is none. Every verdict is in
    BENCHMARKS' shifted-data section."""
    misses = []
    for s, v in curv["sets"].items():
        r = v.get("reach") or {}
        rows = [x for x in crossovers(curv, flagship) if x["set"] == s]
        if rows and r.get("within", 0) > sum(r.values()) / 2 and all(
                any(b["method"] == BASE for b in x["below"]) for x in rows):
            misses.append(s)
    if not misses:
        return ""
    names = misses[0] if len(misses) == 1 else ", ".join(misses[:-1]) + " and " + misses[-1]
    return (f"On {names} the reach check said 'within' on most runs, yet the base model alone measured below the "
            "hypernetwork at every ε: the check reads the released mean only.")


def readme_block(curv: dict, labels: dict[str, str], flagship: str) -> str:
    """The README's generated shifted-data block (the app shows the same): which method measured lowest per set
    and ε ("A vs B": A's FID against the flagship's), and where the reach check missed."""
    table = lowest_table(curv, labels, flagship)
    if not table:
        return summary_line(curv, labels, flagship)
    reach = reach_line(curv, flagship)
    return (f"Lowest FID per set and ε (bold: below the {labels[flagship].lower()}'s FID, which follows):\n\n" + table + (f"\n\n{reach}" if reach else ""))


def load(path: Path = SHIFT_CURVES) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def advice(release_mean, noisy_count: float, epsilon: float, labels: dict[str, str], flagship: str,
           curv: dict | None = None) -> str:
    """For a run whose set the reach check calls outside: what measured best on the nearest shifted set.

    Nearest: the shifted sets of the stored size closest to the *noisy* count (log scale), and of those the one
    whose clean public mean embedding is closest to the *released* mean; then the measured ε closest to the
    run's (log scale). Inputs are DP outputs and public numbers only. '' when no shifted cell is stored.
    """
    import torch

    curv = curv if curv is not None else load()
    if not curv or not curv.get("sets"):
        return ""
    cand = [s for s, v in curv["sets"].items() if v.get("release_mean") and flagship in v["methods"]]
    if not cand:
        return ""
    n = max(float(noisy_count), 1.0)
    gap = {s: abs(math.log(curv["sets"][s]["info"]["n"] / n)) for s in cand}
    cand = [s for s in cand if gap[s] == min(gap.values())]
    mean = torch.as_tensor(release_mean, dtype=torch.float32).flatten()
    s = min(cand, key=lambda k: float((torch.tensor(curv["sets"][k]["release_mean"]) - mean).norm()))
    measured = curv["sets"][s]["methods"][flagship]["epsilon"]
    if not measured:
        return ""
    e = min(measured, key=lambda x: abs(math.log(x / epsilon)))
    row = next(r for r in crossovers(curv, flagship, (e,)) if r["set"] == s)
    runs = "one run per cell" if row["flagship_runs"] == 1 else f"{row['flagship_runs']} runs"
    where = f"On the benchmark's nearest shifted set (`{s}`, measured at ε = {e:g}, {runs}; BENCHMARKS, shifted data)"
    if not row["below"]:
        return f"{where} the {labels[flagship].lower()} still measured best (FID {row['flagship']:.0f})."
    best = row["below"][0]
    return (f"{where} {_label(best['method'], labels)} measured lowest: FID {best['fid']:.0f} against the "
            f"{labels[flagship].lower()}'s {row['flagship']:.0f}"
            + (" (intervals apart)." if best["apart"] else " (a lower mean, not yet an interval apart)."))
