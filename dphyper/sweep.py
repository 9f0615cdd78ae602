"""The public sweep of every tunable method under one protocol (``python -m dphyper bench --suite sweep``).

Public sets only (``compare.SWEEP_SETS``, train split). Stages: learning rate x length at the first epsilon
(with successive halving inside the base model's FID noise band), then batch / clip / a longer run around
stage 1's best, then the three best at every other epsilon; one compute cap for every run of every method.
Cells are tasks on an executor (``executor.drive``); only the driver writes ``bench/sweep.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from . import compare
from .compare import DELTA, SWEEP_FAMILIES, SWEEP_SETS, BenchSet, _load, _merge_cell

# ---------------------------------------------------------------- public sweep (every method, one protocol)

# One compute cap for every run of every method: UNet example-gradient evaluations (forward +
# backward of one image), private and public together. 256,000 is 2,560 epochs of DP-SGD at
# n = 100 and 256 at n = 1,000 (PDA-DPMD's public batch of 64 per step counts too: 100 of its
# epochs at n = 1,000 cost 202,000); about 1.5 hours of the 2-core CPU, minutes of a GPU.
COMPUTE_CAP = 256_000
SWEEP_EPSILONS = (1.0, 4.0)
# A method with one default for every set and epsilon (``Method.one_default``) applies it at every epsilon the
# app offers, down to the low end where the release is mostly noise. Twice a setting chosen at epsilon 1 and
# 4 alone failed there (the hypernetwork's fixed LoRA strength; the quadratic EM without shrinkage: test-split
# cells, docs/BENCHMARKS.md), so stage 3 of such a method runs at epsilon = 0.25 too and its rule scores it.
ONE_DEFAULT_EPSILONS = SWEEP_EPSILONS + (0.25,)


def run_cost(hp: dict, n: int, method: str | None = None) -> int:
    """Example-gradient evaluations of a run with these settings (the unit of COMPUTE_CAP)."""
    if method is not None:
        from .methods import get_method

        own = get_method(method).cost
        if own is not None:
            return own(hp, n)
    batch = min(hp.get("batch_size", 64), n)
    q = 1.0 / math.ceil(n / batch)
    steps = math.ceil(hp.get("epochs", 10.0) / q)
    # augmentation multiplicity: k forward/backward passes per private example
    return int(steps * (n * q * hp.get("multiplicity", 1) + hp.get("public_batch_size", 0)))


def hp_key(hp: dict) -> str:
    return ",".join(f"{k}={hp[k]:g}" if isinstance(hp[k], float) else f"{k}={hp[k]}" for k in sorted(hp))


def _sweep_key(method: str, set_name: str, eps: float, hp: dict) -> str:
    return f"{method}|{set_name}|eps={eps:g}|{hp_key(hp)}"


def sweep_stamp(method: str, hp: dict, *, samples: int = 128, steps: int = 25, seed: int = 0) -> str:
    """What a sweep cell depends on beyond its key: every setting of the run (today's defaults with the
    cell's ``hp`` on top) and the method's shipped checkpoints. A cell whose stamp differs from today's
    (a default changed, a checkpoint was rebuilt) is stale: not ranked, recomputed by the next sweep."""
    from .methods import get_method

    m = get_method(method)
    cfg = m.config_cls(epsilon=1.0, delta=DELTA, samples=samples, steps=steps, seed=seed, **hp)
    run = {k: v for k, v in cfg.settings().items() if k != "epsilon"}  # epsilon is in the key
    assets = {k: v for k, v in m.identity().items() if k not in ("defaults", "tuned")}  # tuned: the sweep's output
    assets["base_unet"] = compare.base_unet_id()  # through the module: one name to patch, one place to read
    blob = json.dumps({"run": run, "assets": assets}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def fresh_sweep_cells(res: dict) -> dict:
    """The stored sweep cells that are still today's (their stamp matches); the rest are stale."""
    memo: dict = {}

    def ok(c: dict) -> bool:
        k = (c["method"], hp_key(c["hp"]))
        if k not in memo:
            memo[k] = sweep_stamp(c["method"], c["hp"], samples=res.get("samples", 128), steps=res.get("steps", 25),
                                  seed=res.get("seed", 0))
        return c.get("stamp") == memo[k]

    return {key: c for key, c in res.get("cells", {}).items() if ok(c)}


def rank_sweep(cells: dict, method: str, set_name: str, eps: float) -> list[dict]:
    """The sweep's cells of one method, set and epsilon, best FID first (pass fresh cells only)."""
    rows = [c for c in cells.values() if c["method"] == method and c["set"] == set_name and c["epsilon"] == eps]
    return sorted(rows, key=lambda c: c["fid"])


def one_default(cells: dict, method: str, sets: tuple[str, ...] = tuple(s.name for s in SWEEP_SETS),
                epsilons: tuple[float, ...] = ONE_DEFAULT_EPSILONS) -> tuple[dict, float] | None:
    """One default for both size regimes, for a method that keeps n private (it cannot pick its settings by
    n): of the settings run on every public set at every sweep epsilon, the one whose FID is closest to each
    (set, epsilon)'s best, on average (mean of FID / best FID). A setting's strength can depend on epsilon
    (the hypernetwork's ``lora_scale`` is applied by the release's signal share), so the default must serve
    every epsilon of the sweep, not only the first. An epsilon counts once its stage 3 is complete there
    (each set's three best at the first epsilon run on every set at it), so the default does not depend on
    which cells happened to finish first and a new epsilon changes nothing until its column is complete;
    with no other epsilon complete, the settings run on every set at the first epsilon compete there alone.
    Returns (settings, score), or None."""
    by_hp: dict[str, dict[tuple[str, float], dict]] = {}
    for c in cells.values():
        if c["method"] == method and c["epsilon"] in epsilons and c["set"] in sets:
            by_hp.setdefault(hp_key(c["hp"]), {})[(c["set"], c["epsilon"])] = c
    tops = {hp_key(c["hp"]) for s in sets for c in rank_sweep(cells, method, s, epsilons[0])[:3]}
    cols = [epsilons[0]] + [e for e in epsilons[1:]
                            if tops and all((s, e) in by_hp.get(k, {}) for k in tops for s in sets)]
    every = [(s, e) for s in sets for e in cols]
    for pairs in ([every] if len(cols) > 1 else []) + [[(s, epsilons[0]) for s in sets]]:
        best = {p: min((row[p]["fid"] for row in by_hp.values() if p in row), default=None) for p in pairs}
        scored = [(sum(row[p]["fid"] / best[p] for p in pairs) / len(pairs), k) for k, row in by_hp.items()
                  if all(p in row for p in pairs)]
        if scored:
            score, key = min(scored)
            return dict(next(iter(by_hp[key].values()))["hp"]), score
    return None


def sweep_plan(method: str, n: int, done: dict, set_name: str, band: float | None = None) -> list[tuple[float, dict]]:
    """Staged grid (public sets only): stage 1 learning rate x length at epsilon 1; stage 2 batch, clip
    and a longer run around stage 1's best; stage 3 the three best at every other epsilon.

    ``band`` (FID; 2 sd of a difference of two cells on that set, from ``noise_bands``) turns on successive
    halving in stage 1, the same rule for every method: the longer runs of a learning rate are planned only
    once every shortest run is done, and only for the rates whose shortest run is within ``band`` of the
    best shortest run. A rate clearly worse after the short run is not trained ten times longer. Cells
    already run stay in the tables whatever the rule says."""
    from .methods import get_method

    grid = get_method(method).sweep
    if not grid:
        return []
    best = rank_sweep(done, method, set_name, SWEEP_EPSILONS[0])
    stage1 = [hp for hp in grid["stage1"] if run_cost(hp, n, method) <= COMPUTE_CAP]
    plan = [(SWEEP_EPSILONS[0], hp) for hp in _halved_stage1(stage1, best, band)]
    if best:
        b = best[0]["hp"]
        plan += [(SWEEP_EPSILONS[0], {**b, **ch}) for ch in grid["stage2"](n)]
        top = [c["hp"] for c in best[:3]]
        one = get_method(method).one_default
        epsilons = ONE_DEFAULT_EPSILONS if one else SWEEP_EPSILONS
        plan += [(e, hp) for e in epsilons[1:] for hp in top]
        if one:
            # one default for every set (``one_default``): the other sets' three best too, at every epsilon
            # (a stage-2 variant of another set's best may not have run here at all), so that the candidates
            # are compared on every (set, epsilon)
            plan += [(e, c["hp"]) for s in family(set_name) if s.name != set_name
                     for c in rank_sweep(done, method, s.name, SWEEP_EPSILONS[0])[:3] for e in epsilons]
    seen, out = set(), []
    for e, hp in plan:
        k = (e, hp_key(hp))
        if k not in seen and run_cost(hp, n, method) <= COMPUTE_CAP:
            seen.add(k)
            out.append((e, hp))
    return out


def family(set_name: str) -> tuple[BenchSet, ...]:
    """The sweep sets ``set_name`` is chosen with (``compare.SWEEP_FAMILIES``)."""
    return next((f for f in SWEEP_FAMILIES if any(s.name == set_name for s in f)), SWEEP_SETS)


def _halved_stage1(stage1: list[dict], ranked: list[dict], band: float | None) -> list[dict]:
    """Stage 1 under successive halving (see ``sweep_plan``): every run at the shortest length, and a longer
    run only where its shortest sibling is done and within ``band`` of the best shortest run. ``ranked``:
    this method's cells on this set at the first epsilon (``rank_sweep``)."""
    lengths = sorted({hp["epochs"] for hp in stage1 if "epochs" in hp})
    if band is None or len(lengths) < 2:
        return list(stage1)
    shortest = [hp for hp in stage1 if hp.get("epochs") == lengths[0]]
    fid = {hp_key(c["hp"]): c["fid"] for c in ranked}
    short_fids = [fid.get(hp_key(hp)) for hp in shortest]
    if any(f is None for f in short_fids):
        return shortest
    best = min(short_fids)
    def short_fid(hp: dict) -> float:  # a longer run without a shortest sibling in the grid is always planned
        return fid.get(hp_key({**hp, "epochs": lengths[0]}), best) if "epochs" in hp else best

    return [hp for hp in stage1 if hp.get("epochs") == lengths[0] or short_fid(hp) <= best + band]


def load_fid_noise(out: Path) -> dict:
    """``out/fid_noise.json`` (``bench --suite fid-noise``) as {"sets": {set name: measurement}}; the
    first version of the file held one set."""
    path = Path(out) / "fid_noise.json"
    if not path.exists():
        return {"sets": {}}
    res = json.loads(path.read_text())
    return res if "sets" in res else {"sets": {res.pop("set"): res}}


def noise_bands(out: Path) -> dict[str, float]:
    """Per sweep set, 2 sd of the difference of two cells' FIDs (2·√2 × the base model's sd over sampling
    seeds); a set not measured has no band (no halving)."""
    return {name: 2 * math.sqrt(2) * r["sd"] for name, r in load_fid_noise(out)["sets"].items()}


def _todo(method: str, s: BenchSet, fresh: dict, bands: dict[str, float]) -> list[tuple[float, dict]]:
    """The (epsilon, settings) of ``method`` on sweep set ``s`` that today's plan wants and no fresh cell holds,
    in the plan's order: what a sweep worker runs next (``run_sweep``) and what ``--plan`` lists."""
    return [(e, hp) for e, hp in sweep_plan(method, s.n, fresh, s.name, bands.get(s.name))
            if _sweep_key(method, s.name, e, hp) not in fresh]


def run_sweep(methods: tuple[str, ...], out: Path, *, sets: tuple[BenchSet, ...] = (), samples: int = 128,
              steps: int = 25, seed: int = 0, log=print, max_cells: int = 0, executor=None) -> dict:
    """The public sweep of every tunable method: resumable cells in ``out/sweep.json``.

    The driver re-plans after every finished cell (stage 2 follows stage 1's best) and keeps ``executor``'s
    slots full (``executor.drive``; default: this process), so the run can stop at any point and continue
    later; ``max_cells`` bounds one invocation.
    """
    from .executor import Serial, Task, drive

    path = Path(out) / "sweep.json"
    state = {"res": _load(path)}
    res = state["res"]
    res.setdefault("cells", {})
    res.update({"delta": DELTA, "samples": samples, "steps": steps, "seed": seed, "compute_cap": COMPUTE_CAP,
                "epsilons": list(SWEEP_EPSILONS), "one_default_epsilons": list(ONE_DEFAULT_EPSILONS)})
    res.setdefault("sets", {})
    bands = noise_bands(Path(out))

    def plan():
        fresh = fresh_sweep_cells(state["res"])
        for s in sets or SWEEP_SETS:
            for method in methods:
                for eps, hp in _todo(method, s, fresh, bands):
                    # the comparison's own cell task, with the sweep's settings as its overrides
                    yield Task(_sweep_key(method, s.name, eps, hp), compare.compare_cell,
                               (method, s, eps, str(out), samples, steps, seed, hp), gpu=True)

    def done(task, result):
        cell, info = result
        method, s, eps = task.args[:3]
        hp = task.args[7]
        state["res"]["sets"][s.name] = info
        cell.update({"set": s.name, "hp": hp, "cost": run_cost(hp, s.n, method), "epsilon": eps,
                     "stamp": sweep_stamp(method, hp, samples=samples, steps=steps, seed=seed)})
        state["res"] = _merge_cell(path, state["res"], task.key, cell, s.name)
        log(f"sweep {method} {s.name} eps={eps:g} {hp_key(hp)}: FID {cell['fid']:.1f} "
            f"agreement {cell['agreement']:.3f} ({cell['seconds_to_lora']:.0f} s)")

    if not drive(executor or Serial(), plan, done, limit=max_cells):
        return state["res"]
    return _load(path)


ESTIMATE_MIN_COST = 10_000  # cells cheaper than this are mostly sampling and scoring: no time estimate from them


def sweep_pending(out: Path, methods: tuple[str, ...], sets: tuple[BenchSet, ...] = ()) -> list[dict]:
    """The cells the sweep would run next, without running any (``bench --suite sweep --plan``): per set and
    method, today's plan minus the fresh stored cells, each with its cost, the pid of a live worker holding
    and an estimate of its seconds from this method's stored cells (median seconds per example-gradient
    evaluation of its cells that cost at least ``ESTIMATE_MIN_COST``: the fixed sampling and scoring cost
    dominates cheaper ones). Only what the stored cells plan now: a later stage is planned once the cells
    before it are done."""
    path = Path(out) / "sweep.json"
    fresh = fresh_sweep_cells(_load(path))
    bands = noise_bands(Path(out))
    rate = {}
    for method in methods:
        rates = [c["seconds_to_lora"] / c["cost"] for c in fresh.values()
                 if c["method"] == method and c.get("cost", 0) >= ESTIMATE_MIN_COST and c.get("seconds_to_lora")]
        rate[method] = float(np.median(rates)) if rates else None
    rows = []
    for s in sets or SWEEP_SETS:
        for method in methods:
            for eps, hp in _todo(method, s, fresh, bands):
                key, cost = _sweep_key(method, s.name, eps, hp), run_cost(hp, s.n, method)
                rows.append({"key": key, "set": s.name, "method": method, "epsilon": eps, "hp": hp, "cost": cost,
                             "est_seconds": None if rate[method] is None else rate[method] * cost})
    return rows


def pending_text(rows: list[dict]) -> str:
    """``sweep_pending``'s rows as the lines ``bench --suite sweep --plan`` prints."""
    if not rows:
        return "no sweep cell is pending: every planned cell is stored and fresh"
    lines = []
    for r in rows:
        est = "no estimate" if r["est_seconds"] is None else f"~{r['est_seconds'] / 60:.0f} min on one thread here"
        lines.append(f"{r['key']}: {r['cost']:,} example gradients, {est}")
    total = sum(r["cost"] for r in rows)
    known = [r["est_seconds"] for r in rows if r["est_seconds"] is not None]
    lines.append(f"{len(rows)} cells, {total:,} example gradients" +
                 (f", ~{sum(known) / 3600:.1f} h on one thread here" if known else "") +
                 " (later stages are planned as these finish)")
    return "\n".join(lines)
