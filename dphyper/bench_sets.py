"""The benchmark's private sets, by role (issue 35).

- *Development* sets (``BENCH_SETS``' first six and the shifted sets): where designs were chosen and compared;
  their cells steered decisions, so their numbers are optimistic for the flagship by construction.
- *Public tuning* sets (``SWEEP_SETS``, ``KNN_SWEEP_SETS``, train split): every method's defaults come from them.
- *Test* sets (``TEST_SETS``): drawn from the test split with a seed of their own by the same recipes, after the
  development sets, and never run before the defaults are frozen (``check_frozen``: ``bench/freeze.json``,
  written by ``python -m dphyper bench --freeze``). Every stored result says its set's role.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .config import REPO_DIR
from .shifted_sets import all_names as _shifted_names

FREEZE_PATH = REPO_DIR / "bench" / "freeze.json"
TEST_SEED = 20261207  # the fresh test sets' own draw (class choices here; images by name in ``compare.build_set``)


@dataclass(frozen=True)
class BenchSet:
    """A private set's definition; the images come from ``build_set``."""

    name: str
    kind: str  # single-class | mixed | knn | least-seen
    n: int
    classes: tuple[int, ...] = ()  # empty for knn and least-seen (decided at build time)
    split: str = "test"
    role: str = "development"  # development | public | test (module docstring)


BENCH_SETS = (
    BenchSet("sneakers-100", "single-class", 100, (7,)),
    BenchSet("bags-1000", "single-class", 1000, (8,)),
    BenchSet("mixed-100", "mixed", 100, tuple(range(10))),
    BenchSet("mixed-1000", "mixed", 1000, tuple(range(10))),
    BenchSet("knn-1000", "knn", 1000),
    BenchSet("least-seen-100", "least-seen", 100),
)
# Private data the public data does not cover (issue 41; ``shifted_sets``): turned, inverted, glyphs, and mixtures.
BENCH_SETS += tuple(BenchSet(name, "shifted", int(name.rsplit("-", 1)[1])) for name in _shifted_names())
# The full run covers every kind and both sizes with four sets (the 2-core CPU's budget); the
# other two are there for ``--sets``.
FULL_SETS = ("sneakers-100", "least-seen-100", "mixed-1000", "knn-1000")
QUICK_SETS = ("sneakers-100", "least-seen-100", "knn-1000")
# DP-SGD's hyperparameters are tuned on these public (train-split) sets only.
SWEEP_SETS = (
    BenchSet("public-coats-100", "single-class", 100, (4,), split="train", role="public"),
    BenchSet("public-mixed-1000", "mixed", 1000, tuple(range(10)), split="train", role="public"),
)
# Issue 35: public sets that discriminate. On the uniform mix (the base model's own population) standing still
# wins, so the sweep there picked near no-ops; these are phi-k-NN neighbourhoods of the train split at both sizes
# (knn-1000's recipe, another split and anchor), where a method that moves the model towards the private set
# shows it. A family of its own: ``bench --suite sweep --sets public-knn-100,public-knn-1000``.
KNN_SWEEP_SETS = (
    BenchSet("public-knn-100", "knn", 100, split="train", role="public"),
    BenchSet("public-knn-1000", "knn", 1000, split="train", role="public"),
)
SWEEP_FAMILIES = (SWEEP_SETS, KNN_SWEEP_SETS)  # a method's one default is chosen within one family


def _fresh_classes() -> tuple[int, tuple[int, int]]:
    """The fresh sets' classes, drawn once with ``TEST_SEED`` among those no development or public single-class
    set uses (sneakers 7, bags 8, coats 4): one class at n = 100 and a pair for the two-class mix."""
    rng = np.random.default_rng(TEST_SEED)
    free = [c for c in range(10) if c not in (4, 7, 8)]
    single = int(rng.choice(free))
    pair = sorted(int(c) for c in rng.choice([c for c in free if c != single], 2, replace=False))
    return single, (pair[0], pair[1])


_SINGLE, _PAIR = _fresh_classes()
# The headline once the defaults are frozen: the four recipes, new images (their names seed build_set).
TEST_SETS = (
    BenchSet("test-class-100", "single-class", 100, (_SINGLE,), role="test"),
    BenchSet("test-least-seen-100", "least-seen", 100, role="test"),
    BenchSet("test-knn-1000", "knn", 1000, role="test"),
    BenchSet("test-pair-1000", "mixed", 1000, _PAIR, role="test"),
)
BENCH_SETS += TEST_SETS


def check_frozen(sets) -> None:
    """Refuse to run a test set before the freeze: its numbers must not steer any default."""
    test = [s.name for s in sets if s.role == "test"]
    if test and not FREEZE_PATH.exists():
        raise ValueError(f"{', '.join(test)}: test sets run only after the defaults are frozen "
                         "(`python -m dphyper bench --freeze`, once every method is tuned on the public sets)")
    if test:
        json.loads(FREEZE_PATH.read_text())["commit"]  # a freeze record names its commit
