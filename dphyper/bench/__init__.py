"""Benchmarks that print numbers and write them to docs/BENCHMARKS.md (`python -m dphyper bench`).

One file per suite, one table from suite name to its function (``SUITES``); what the suites share (the
command's settings, the machine line, where cells run) is in ``common.py``. Each suite rewrites its own
section of the document between markers, so suites can be rerun separately; results go to ``bench/*.json``.
"""

from __future__ import annotations

import importlib
import json

from ..config import REPO_DIR
from .common import DOC, BenchConfig, machine

# suite -> (module in this package, function, what the command prints: the result, a summary, or the result
# after writing it to bench/<suite>.json)
SUITES: dict[str, tuple[str, str, str]] = {
    "compare": ("compare_suite", "bench_compare", "result"),
    "sweep": ("sweep_suite", "bench_sweep", "summary"),
    "dpsgd-sweep": ("sweep_suite", "bench_sweep", "summary"),  # the sweep's older name
    "fid-noise": ("sweep_suite", "bench_fid_noise", "summary"),
    "app": ("app_suite", "bench_app", "file"),
    "audit": ("audit_suite", "bench_audit", "file"),
    "models": ("models_suite", "bench_models", "file"),
    "hypernet": ("models_suite", "bench_hypernet", "file"),  # suite names: the CLI's and BENCHMARKS' sections
    "p1": ("models_suite", "bench_p1", "file"),
    "reach": ("reach_suite", "bench_reach", "file"),
    "sampling": ("sampling_suite", "bench_sampling", "result"),
    "executor": ("executor_suite", "bench_executor", "result"),
    "p4": ("p4_suite", "bench_p4", "result"),
    "sparse": ("sparse_suite", "bench_sparse", "file"),  # (a suite name, as above)
    "theory": ("theory_suite", "bench_theory", "file"),
    "same-release": ("same_release_suite", "bench_same_release", "result"),
    "downstream": ("downstream_suite", "bench_downstream", "result"),
    "shift": ("shift_suite", "bench_shift", "result"),
    "freeze": ("freeze_suite", "bench_freeze", "result"),
    "ablation": ("ablation_suite", "bench_ablation", "result"),
}


def run_bench(cfg: BenchConfig) -> dict:
    if cfg.suite not in SUITES:
        raise ValueError(f"unknown suite {cfg.suite!r}: choose {', '.join(s for s in SUITES if s != 'dpsgd-sweep')}")
    module, name, prints = SUITES[cfg.suite]
    res = getattr(importlib.import_module(f"{__name__}.{module}"), name)(cfg)
    if prints == "result":
        return res  # its own summary (the cells are in bench/results.json, bench/sampling.json, ...)
    if prints == "summary":
        from .sweep_suite import _summary

        # These write their own resumable files under bench/ (thousands of lines): the command prints
        # what it did, not the whole file.
        return _summary(cfg, res)
    out = REPO_DIR / "bench" / f"{cfg.suite}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    return res


__all__ = ["DOC", "SUITES", "BenchConfig", "machine", "run_bench"]
