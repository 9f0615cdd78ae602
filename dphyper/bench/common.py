"""What every suite shares: the command's settings, the machine line, small helpers."""

from __future__ import annotations

import json
import platform
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import REPO_DIR

DOC = REPO_DIR / "docs" / "BENCHMARKS.md"


@dataclass
class BenchConfig:
    """`python -m dphyper bench`: measure and record numbers in docs/BENCHMARKS.md."""

    suite: str = field(default="compare", metadata={"help": "which suite: compare (every method, the default), "
                                                   "sweep, fid-noise, app, audit, models, hypernet, p1, reach, sampling, executor, p4, sparse, theory, "
                                                   "same-release, downstream, shift, freeze or ablation (compare, shift, same-release: --sets, --epsilons, --repeats, "
                                                   "--compare-samples; downstream: --methods ('real' = the private images), --epsilons, "
                                                   "--repeats, --report-only)"})
    methods: str = field(default="", metadata={"help": "compare/sweep/audit/downstream: comma-separated method names (default: "
                                                "all registered; 'floor' = compare only the base model and the "
                                                "non-private floor)"})
    max_cells: int = field(default=0, metadata={"help": "sweep: stop after this many new cells (0 = no limit); rerun to continue"})
    report_only: bool = field(default=False, metadata={"help": "compare/sweep: compute nothing, rewrite the tables from the stored cells"})
    plan: bool = field(default=False, metadata={"help": "sweep: compute nothing, list the cells still to run (cost, "
                                                 "estimated time, which worker holds one)"})
    quick: bool = field(default=False, metadata={"help": "compare: 3 sets x 3 epsilons x 64 samples (<= 30 min on 2 CPU cores)"})
    compare_samples: int = field(default=128, metadata={"help": "compare: generated images per cell (64 with --quick)"})
    sets: str = field(default="", metadata={"help": "compare: comma-separated set names (default: the full or quick list)"})
    repeats: int = field(default=1, metadata={"help": "compare: repeats of each private cell (new privacy noise and sampling seed)"})
    epsilons: str = field(default="", metadata={"help": "compare: comma-separated epsilons to run, in this order (default: "
                                                  "the full or quick grid); the tables still show every stored cell"})
    train_steps: int = field(default=1000, metadata={"help": "ablation: training steps of every H variant (the same "
                                                     "budget for each; 5435 = the shipped recipe's)"})
    train_minutes: float = field(default=0.0, metadata={"help": "ablation: stop training after about this many minutes "
                                                        "in this call, keeping the state; rerun to continue (0 = no "
                                                        "limit)"})
    samples: int = field(default=1000, metadata={"help": "generated images per FID (models suite)"})
    set_samples: int = field(default=256, metadata={"help": "generated images per example set (hypernet suite)"})
    steps: int = field(default=25, metadata={"help": "DDIM steps for every sample"})
    seed: int = field(default=0, metadata={"help": "seed of the sampling noise and of image subsets"})
    doc: Path = field(default=DOC, metadata={"help": "markdown file to update"})
    workers: int = field(default=0, metadata={"help": "compare/sweep: local worker processes, one cell each at a "
                                              "time (0 = one per core; 1 = in this process)"})
    ray: str = field(default="", metadata={"help": "compare/sweep: run the cells as Ray tasks on this cluster "
                                           "('auto' = the cluster this machine is in, 'local' = a new instance "
                                           "here, or ray://HOST:PORT); cells wanting a GPU ask Ray for one"})


def machine() -> str:
    cores = torch.get_num_threads()
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {platform.processor() or ''} {cores} CPU threads, {dev}, torch {torch.__version__}"


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _epsilons(text: str) -> tuple[float, ...]:
    """``--epsilons 1,4``: finite, positive budgets of the comparison grid (a subset runs first)."""
    from ..compare import EPSILONS, WIDE_EPSILONS

    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            e = float(part)
        except ValueError:
            raise ValueError(f"--epsilons: {part!r} is not a number") from None
        if e not in EPSILONS + WIDE_EPSILONS:
            raise ValueError(f"--epsilons: {part} is not on the comparison grid "
                             f"{', '.join(f'{x:g}' for x in EPSILONS + WIDE_EPSILONS)} (ε = ∞ runs with every "
                             "one-shot method)")
        out.append(e)
    return tuple(out)


def _stored_machine() -> str:
    """The machine named by the committed curves (where the stored cells were computed), else this one."""
    from ..compare import CURVES_PATH

    try:
        return json.loads(CURVES_PATH.read_text())["settings"]["machine"]
    except (OSError, KeyError, ValueError):
        return machine()


@contextmanager
def _executor(cfg: BenchConfig):
    """Where the cells run (``executor.make_executor``); nothing starts for a report or a plan."""
    from ..executor import Serial, make_executor

    ex = Serial() if cfg.report_only or cfg.plan else make_executor(cfg.workers, cfg.ray)
    if not isinstance(ex, Serial) or cfg.workers == 1:
        print(f"cells run on: {ex.name} ({ex.slots} at a time)", file=sys.stderr, flush=True)
    try:
        yield ex
    finally:
        ex.close()
