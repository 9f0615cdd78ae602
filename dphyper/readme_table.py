"""The README's results table, generated from the stored benchmark cells (``bench/results.json``).

``python -m dphyper bench --report-only`` writes it between the README's ``results`` markers; a test fails when
the README's table differs from what the stored cells give (issue 34: prose and tables drifted from the data).
Nothing here is measured: it reads the cells the benchmark committed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .config import REPO_DIR

README = REPO_DIR / "README.md"
RESULTS = REPO_DIR / "bench" / "results.json"
EPSILON = 1.0  # the README's table is one epsilon; BENCHMARKS has every epsilon
VERSUS_EPSILONS = (0.25, 1.0, 8.0)  # the lines under it: where each method is below the flagship, at these
REFERENCES = (("base", "base model"), ("nonprivate", "non-private floor"))


def results_table(results_path: Path = RESULTS, epsilon: float = EPSILON) -> str:
    """FID (class agreement) at ``epsilon`` per full-grid set and method, as stored (mean over the cell's runs)."""
    from .compare import CompareSettings, summarise
    from .methods import METHODS

    res = json.loads(Path(results_path).read_text())
    st = CompareSettings().resolved()
    summ = summarise(res, st.sets, st.samples, st.steps)
    cols = [*REFERENCES, *((name, m.label) for name, m in METHODS.items())]
    table: list[list[str]] = []
    runs: set[int] = set()
    for s in st.sets:
        row = [s]
        for name, _ in cols:
            by_eps = summ.get(s, {}).get(name, {})
            # The references have one cell each: the base model (no data) and the floor (epsilon = inf).
            cell = by_eps.get("base") if name == "base" else _at(by_eps, math.inf if name == "nonprivate" else epsilon)
            if cell is None:
                row.append("–")
                continue
            runs.add(cell["repeats"])
            row.append(f"{cell['fid']:.1f} ({cell['agreement']:.2f})")
        table.append(row)
    # A method with no stored cell at all gets no empty column: the sentence under the table names it.
    empty = [j for j, (name, _) in enumerate(cols) if name not in dict(REFERENCES)
             and all(row[j + 1] == "–" for row in table)]
    keep = [j for j in range(len(cols)) if j not in empty]
    lines = ["| set | " + " | ".join(cols[j][1] for j in keep) + " |", "|---" * (len(keep) + 1) + "|"]
    lines += ["| " + " | ".join([row[0], *(row[j + 1] for j in keep)]) + " |" for row in table]
    # Where each method stands against the flagship, counted from the same cells (raw FID; with one run per
    # cell a count, not evidence: BENCHMARKS' evidence section has the intervals).
    from .methods import FLAGSHIP

    flag_label = dict(cols)[FLAGSHIP]
    versus = []
    for name, label in cols:
        if name in dict(REFERENCES) or name == FLAGSHIP:
            continue
        parts = []
        for eps in VERSUS_EPSILONS:
            pairs = [(s, _at(summ.get(s, {}).get(name, {}), eps), _at(summ.get(s, {}).get(FLAGSHIP, {}), eps))
                     for s in st.sets]
            pairs = [(s, a["fid"], b["fid"]) for s, a, b in pairs if a is not None and b is not None]
            below = [s for s, a, b in pairs if a < b]
            parts.append(f"{len(below)} of {len(pairs)}" + (f" ({', '.join(below)})" if below else "")
                         if pairs else "–")
        versus.append(f"{label} " + " · ".join(parts))
    lines += ["", f"Sets where a method's FID is below the {flag_label.lower()}'s, at ε = "
              + " · ".join(f"{e:g}" for e in VERSUS_EPSILONS) + ": " + "; ".join(versus) + "."]
    if empty:
        lines += ["", "No stored cells yet: " + ", ".join(cols[j][1] for j in empty) + "."]
    n_runs = ", ".join(str(r) for r in sorted(runs)) or "0"
    head = (f"FID at ε = {epsilon:g} (class agreement), {st.samples} samples per run, runs per cell: {n_runs} "
            "(generated from `bench/results.json` by `python -m dphyper bench --report-only`):")
    return head + "\n\n" + "\n".join(lines)


def _at(by_eps: dict, epsilon: float) -> dict | None:
    for key, cell in by_eps.items():
        if key != "base" and (float(key) == epsilon or math.isclose(float(key), epsilon)):
            return cell
    return None


def readme_block(text: str, name: str = "results") -> str:
    """The README's text between ``<!-- name:start -->`` and ``<!-- name:end -->`` (stripped)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"README has no {name} markers")
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def write_readme_table(readme: Path = README) -> None:
    from .markdown_sections import write_section

    write_section(readme, "results", results_table())
