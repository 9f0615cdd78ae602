"""The public sweep's tables and the FID noise band."""

from __future__ import annotations

import json

import numpy as np

from ..config import REPO_DIR
from ..markdown_sections import write_section
from .common import BenchConfig, _executor, machine


def bench_sweep(cfg: BenchConfig) -> dict:
    """The public sweep of every tunable method (resumable; ``--max-cells`` bounds one call)."""
    from ..compare import KNN_SWEEP_SETS, SWEEP_SETS
    from ..sweep import run_sweep
    from ..methods import METHODS

    names = tuple(m for m in cfg.methods.split(",") if m) or tuple(n for n, m in METHODS.items() if m.sweep)
    wanted = [x for x in cfg.sets.split(",") if x]
    known = SWEEP_SETS + KNN_SWEEP_SETS
    bad = [x for x in wanted if x not in {s.name for s in known}]
    if bad:
        raise ValueError(f"--sets: {bad} are not sweep sets; choose from {[s.name for s in known]}")
    sets = tuple(s for s in known if s.name in wanted) if wanted else SWEEP_SETS
    if cfg.plan:
        from ..sweep import pending_text, sweep_pending

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
    from ..compare import KNN_SWEEP_SETS, SWEEP_SETS, build_set, run_cell
    from ..models import shared_models

    res = fid_noise_results()
    for s in SWEEP_SETS + KNN_SWEEP_SETS:
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
    from ..sweep import load_fid_noise

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
    from ..dpsgd import TUNED_KEYS
    from ..sweep import fresh_sweep_cells, rank_sweep

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
                dpsgd_like = all(set(TUNED_KEYS) <= set(c["hp"]) for c in ranked)
                rows += (["| lr | C | epochs | batch | other | cost | FID | agreement | seconds |",
                          "|---|---|---|---|---|---|---|---|---|"]
                         if dpsgd_like else ["| settings | cost | FID | agreement | seconds |", "|---|---|---|---|---|"])
                for c in ranked:
                    hp = c["hp"]
                    tail = f"{c['cost']:,} | {c['fid']:.1f} | {c['agreement']:.3f} | {c['seconds_to_lora']:.0f} |"
                    if dpsgd_like:
                        other = ", ".join(f"{k} {v}" for k, v in sorted(hp.items()) if k not in TUNED_KEYS)
                        rows.append(f"| {hp['lr']:g} | {hp['max_grad_norm']:g} | {hp['epochs']:g} | "
                                    f"{hp['batch_size']} | {other} | " + tail)
                    else:  # another method's own settings (qem, slicing)
                        rows.append("| " + ", ".join(f"{k} {v}" for k, v in sorted(hp.items())) + " | " + tail)
                rows.append("")
    from ..sweep import ONE_DEFAULT_EPSILONS, one_default
    from ..methods import METHODS

    rows += ["", configurations_line(cells)]

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


def configurations_line(cells: dict) -> str:
    """Issue 35's protocol check: settings tried per method and set (within ±20 % of each other once a family of
    sets is complete), from the fresh cells."""
    count: dict[str, dict[str, int]] = {}
    for c in cells.values():
        count.setdefault(c["method"], {}).setdefault(c["set"], set()).add(json.dumps(c["hp"], sort_keys=True))
    return "Settings tried per method and set (issue 35: the same number per method, within ±20 %): " + "; ".join(
        f"{m} " + ", ".join(f"{s} {len(v)}" for s, v in sorted(by.items())) for m, by in sorted(count.items())) + "."


def _summary(cfg: BenchConfig, res: dict) -> dict:
    file = {"sweep": "sweep.json", "dpsgd-sweep": "sweep.json",
            "fid-noise": "fid_noise.json"}[cfg.suite]
    cells = res.get("cells", res.get("sets", {}))
    out = {"suite": cfg.suite, "stored": len(cells), "file": f"bench/{file}", "doc": str(cfg.doc)}
    if "last_run" in res:
        out["seconds"] = round(res["last_run"].get("seconds", 0.0), 1)
    return out
