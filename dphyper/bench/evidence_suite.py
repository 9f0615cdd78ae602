"""The comparison under the evidence rules (issue 34), as BENCHMARKS' `evidence` section, generated from
``bench/results.json``: every cell's runs as mean ± 95 % half-width, the flagship against each method as a
paired difference (runs share sampling seeds) with its win / tie / loss, and the counts."""

from __future__ import annotations

import math

EVIDENCE_SAMPLES = 512  # DESIGN.md section 5: the 128-d feature covariance is full rank
EVIDENCE_SETS = ("sneakers-100", "least-seen-100", "knn-1000")
EVIDENCE_EPSILONS = (0.25, 1.0, 8.0)
MIN_RUNS = {"flagship": 5, "other": 3}


def _pm(stat: dict | None, metric: str, scale: float = 1.0, digits: int = 1) -> str:
    s = (stat or {}).get(metric)
    if s is None:
        return "–"
    if math.isnan(s["half_width"]):
        return f"{scale * s['mean']:.{digits}f}"
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['half_width']:.{digits}f}"


def evidence_cells(res: dict, steps: int = 25) -> list[dict]:
    from ..compare import table_cells

    return table_cells(res, EVIDENCE_SETS, EVIDENCE_SAMPLES, steps)


def evidence_summary(res: dict, steps: int = 25) -> dict:
    """Per set, method and epsilon: run statistics and the flagship's paired verdicts (FID and KID)."""
    from ..evidence import group_runs, paired_runs, run_statistics
    from ..methods import FLAGSHIP

    groups = group_runs(evidence_cells(res, steps))
    out: dict = {}
    for (s, m, e), runs in sorted(groups.items()):
        row = {"stats": run_statistics(runs)}
        flag = groups.get((s, FLAGSHIP, e))
        if m != FLAGSHIP and flag:
            row["flagship_vs"] = {k: paired_runs(flag, runs, k) for k in ("fid", "kid")}
        out.setdefault(s, {}).setdefault(m, {})[e] = row
    return out


def counts(summary: dict) -> dict:
    """The flagship's FID verdicts against every method, over every paired cell: {method: {win, tie, loss}}."""
    tally: dict = {}
    for methods in summary.values():
        for m, by_eps in methods.items():
            for row in by_eps.values():
                v = (row.get("flagship_vs") or {}).get("fid")
                if v:
                    tally.setdefault(m, {"win": 0, "tie": 0, "loss": 0})[v["verdict"]] += 1
    return tally


def plan_hours(res: dict, sets=EVIDENCE_SETS, epsilons=EVIDENCE_EPSILONS, steps: int = 25) -> dict:
    """What the evidence grid costs, estimated from the stored single-run cells at 128 samples of the same set,
    method and ε: the time to the adapter plus four times the rest (sampling and scoring 512 samples, not 128),
    times the runs the rules ask for. Hours of the machine the cells ran on (both cores); the runs already
    stored under the protocol are subtracted."""
    from ..methods import FLAGSHIP

    done = evidence_summary(res, steps)
    total = left = 0.0
    for c in res.get("cells", {}).values():
        if c.get("set") not in sets or c.get("samples") != 128 or c.get("method") in ("base", "nonprivate"):
            continue
        if c.get("epsilon") not in epsilons:
            continue
        one = c.get("seconds_to_lora", 0.0) + 4 * (c["seconds_cell"] - c.get("seconds_to_lora", 0.0))
        need = MIN_RUNS["flagship"] if c["method"] == FLAGSHIP else MIN_RUNS["other"]
        have = done.get(c["set"], {}).get(c["method"], {}).get(str(c["epsilon"]), {}).get("stats", {}).get("runs", 0)
        total += need * one
        left += max(need - have, 0) * one
    return {"total_hours": total / 3600, "left_hours": left / 3600}


def text(res: dict, steps: int = 25) -> str:
    from ..methods import FLAGSHIP

    summary = evidence_summary(res, steps)
    runs = sum(r["stats"]["runs"] for ms in summary.values() for bys in ms.values() for r in bys.values())
    rows = ["## The comparison under the evidence rules (`python -m dphyper bench --sets "
            + ",".join(EVIDENCE_SETS) + " --epsilons " + ",".join(f"{e:g}" for e in EVIDENCE_EPSILONS)
            + f" --repeats 5 --compare-samples {EVIDENCE_SAMPLES}`)", "",
            f"Generated from `bench/results.json` ({runs} run{'s' if runs != 1 else ''} stored so far). A cell is R independent runs (fresh "
            "privacy noise and training randomness; run r samples with seed r for every method, so differences "
            f"are paired); {EVIDENCE_SAMPLES} samples per run. Cells print mean ± the Student-t 95 % half-width "
            f"over runs (one run: the value alone). *vs {FLAGSHIP}*: the paired FID difference ({FLAGSHIP} − "
            "method) over shared seeds with its 95 % interval; **win** for " + FLAGSHIP + " when the interval lies "
            "below 0, **loss** above, else tie (DESIGN.md §5). Target: ≥ "
            f"{MIN_RUNS['flagship']} runs for {FLAGSHIP}, ≥ {MIN_RUNS['other']} for the others."]
    cost = plan_hours(res, steps=steps)
    rows += ["", f"Plan: ≥ {MIN_RUNS['flagship']} / {MIN_RUNS['other']} runs on " + ", ".join(EVIDENCE_SETS)
             + " at ε = " + ", ".join(f"{e:g}" for e in EVIDENCE_EPSILONS)
             + f" costs about {cost['total_hours']:.0f} machine-hours here (2 CPU cores; estimated from the "
             "stored 128-sample cells: their time to the adapter plus four times their sampling and scoring); "
             f"about {cost['left_hours']:.0f} h of it is still to run. Cells resume from `bench/results.json`, run "
             "on one worker per core (`--workers`) or a Ray cluster (`--ray`)."]
    if not summary:
        return "\n".join(rows + ["", "No run under this protocol is stored yet."])
    for s, methods in summary.items():
        rows += ["", f"**{s}**", "",
                 "| method | ε | runs | FID | KID | precision | recall | vs " + FLAGSHIP + " (FID) |",
                 "|---|---|---|---|---|---|---|---|"]
        for m, by_eps in methods.items():
            for e, row in sorted(by_eps.items(), key=lambda kv: (kv[0] == "base", float(kv[0]) if kv[0] not in ("base",) else 0)):
                st = row["stats"]
                vs = (row.get("flagship_vs") or {}).get("fid")
                cmp = "–" if not vs else f"{vs['diff']:+.1f} [{vs['low']:+.1f}, {vs['high']:+.1f}] {vs['verdict']}"
                rows.append(f"| {m} | {e} | {st['runs']} | {_pm(st, 'fid')} | {_pm(st, 'kid', 1, 2)} | "
                            f"{_pm(st, 'precision', 1, 2)} | {_pm(st, 'recall', 1, 2)} | {cmp} |")
    tally = counts(summary)
    if tally:
        rows += ["", f"{FLAGSHIP} against each method, over every cell with ≥ 2 paired runs (FID): " + "; ".join(
            f"{m} {t['win']} win / {t['tie']} tie / {t['loss']} loss" for m, t in tally.items()) + "."]
    return "\n".join(rows)
