"""The freeze (issue 35): ``python -m dphyper bench --suite freeze`` records that every default is chosen.

It writes ``bench/freeze.json``: the commit, and every method's identity (its shipped defaults and checkpoints,
``compare.method_id``) at each set size. From then on the test sets (``bench_sets.TEST_SETS``) may run, and a
test fails when a method's identity moves away from the frozen one without a disclosed change (an entry in the
file's ``changes``: the method, the commit and why); its test cells are then recomputed by the next benchmark
run, since a stored cell is only reused under its own identity. A second freeze is refused: edit ``changes``.
"""

from __future__ import annotations

import json
import subprocess
import time

from ..config import REPO_DIR
from .common import BenchConfig


def frozen_ids() -> dict[str, dict[str, str]]:
    """Every registered method's identity at each set size, as the stored cells record it."""
    from ..bench_sets import BENCH_SETS
    from ..compare import method_id
    from ..methods import METHODS

    sizes = sorted({s.n for s in BENCH_SETS})
    return {m: {str(n): method_id(m, None, n) for n in sizes} for m in ("base", *METHODS, "nonprivate")}


def bench_freeze(cfg: BenchConfig) -> dict:
    from ..bench_sets import FREEZE_PATH, TEST_SETS

    if FREEZE_PATH.exists():
        raise ValueError(f"bench/{FREEZE_PATH.name} exists: the defaults were frozen at "
                         f"{json.loads(FREEZE_PATH.read_text())['commit'][:12]}; disclose a later change in its "
                         "'changes' list instead of freezing again")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True,
                            check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                           capture_output=True, text=True, check=True).stdout.strip()
    if dirty:
        raise ValueError("commit first: a freeze names the commit whose defaults it freezes")
    record = {"commit": commit, "date": time.strftime("%Y-%m-%d"), "method_ids": frozen_ids(),
              "test_sets": [s.name for s in TEST_SETS], "changes": []}
    FREEZE_PATH.write_text(json.dumps(record, indent=1) + "\n")
    return record
