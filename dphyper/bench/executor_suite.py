"""`python -m dphyper bench --suite executor`: the same comparison cells serially, on the local pool and on a
local Ray instance (issue 39), with wall times.

Each executor starts cold (its worker processes import the package and load the public models), so the
times include what a real run pays. Serial is one worker process with every core's threads; the pool and
Ray run one cell per core with one thread each. The cells are the comparison's own (``compare.compare_cell``)
on ``sneakers-100``; the base model's cell is deterministic, so its FID must agree across executors.
"""

from __future__ import annotations

import json
import math
import os
import time

from ..config import REPO_DIR

PATH = REPO_DIR / "bench" / "executor.json"
from ..methods import FLAGSHIP  # noqa: E402
from ..methods.qem import QEM  # noqa: E402

CELLS = (("base", math.nan), *((FLAGSHIP, e) for e in (0.25, 1.0, 4.0, 8.0, math.inf)), (QEM.name, 1.0), (QEM.name, 4.0))
SET = "sneakers-100"
SAMPLES, STEPS, SEED = 128, 25, 0


def _tasks():
    from ..compare import BENCH_SETS, _cell_key, compare_cell
    from ..executor import Task

    s = next(b for b in BENCH_SETS if b.name == SET)
    return [Task(_cell_key(SET, m, e, 0, SAMPLES, STEPS), compare_cell,
                 (m, s, e, str(REPO_DIR / "bench"), SAMPLES, STEPS, SEED, None)) for m, e in CELLS]


def time_executor(executor) -> dict:
    from ..executor import drive

    out: dict = {}
    tasks = _tasks()
    t0 = time.perf_counter()
    try:
        drive(executor, lambda: (t for t in tasks if t.key not in out), lambda t, r: out.__setitem__(t.key, r[0]))
    finally:
        executor.close()
    wall = time.perf_counter() - t0
    base = next(c for k, c in out.items() if "|base|" in k)
    return {"executor": executor.name, "slots": executor.slots, "cells": len(out), "wall_seconds": wall,
            "cell_seconds": sum(c["seconds_cell"] for c in out.values()), "base_fid": base["fid"]}


def bench_executor(cfg) -> dict:
    from .common import machine as machine_line

    machine = machine_line()
    from ..executor import LocalPool, RayExecutor
    from ..markdown_sections import write_section

    cores = os.cpu_count() or 1
    runs = [time_executor(LocalPool(1)), time_executor(LocalPool(cores))]
    try:
        runs.append(time_executor(RayExecutor("local")))
    except ImportError as e:
        runs.append({"executor": "ray", "error": str(e)})
    res = {"machine": machine, "cores": cores, "set": SET, "samples": SAMPLES, "steps": STEPS,
           "cells": [m if math.isnan(e) else f"{m} ε={e:g}" for m, e in CELLS], "runs": runs}
    PATH.write_text(json.dumps(res, indent=1))
    write_section(cfg.doc, "executor", text(res))
    return res


def text(res: dict) -> str:
    serial = res["runs"][0]["wall_seconds"]
    rows = ["## Cells as tasks: serial, local pool, Ray (`python -m dphyper bench --suite executor`)", "",
            f"Machine: {res['machine']}. The same {len(res['cells'])} comparison cells on `{res['set']}` "
            f"({res['samples']} samples, {res['steps']} steps): " + ", ".join(c.replace(" eps=nan", "").replace("eps=", "ε=") for c in res["cells"]) + ". Each executor starts "
            "cold (workers import the package and load the models). Serial: one worker with every core's threads; "
            "pool and Ray: one cell per core, one thread each. The base model's cell is deterministic: the same FID "
            "from every executor says a cell does not depend on where it ran.", "",
            "| executor | cells at a time | wall time | speed-up | sum of cell times | base model's FID |", "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        if "error" in r:
            rows.append(f"| {r['executor']} | – | not run: {r['error']} | | | |")
            continue
        name = "serial (one process)" if r["slots"] == 1 else r["executor"]
        rows.append(f"| {name} | {r['slots']} | {r['wall_seconds']:.0f} s | {serial / r['wall_seconds']:.2f}× | "
                    f"{r['cell_seconds']:.0f} s | {r['base_fid']:.2f} |")
    return "\n".join(rows)
