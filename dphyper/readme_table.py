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
    """FID (class agreement) at ``epsilon`` per full-grid set and method, as stored: the mean over the cell's runs,
    ± the 95 % half-width where it has several; then each method's wins / ties / losses against the flagship."""
    from .compare import CompareSettings, summarise, table_cells
    from .evidence import group_runs
    from .methods import FLAGSHIP, METHODS

    res = json.loads(Path(results_path).read_text())
    st = CompareSettings().resolved()
    summ = summarise(res, st.sets, st.samples, st.steps)
    runs_of = group_runs(table_cells(res, st.sets, st.samples, st.steps))
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
            half = cell.get("fid_half")
            row.append(f"{cell['fid']:.1f}" + (f"±{half:.1f}" if half is not None else "") + f" ({cell['agreement']:.2f})")
        table.append(row)
    # A method with no stored cell at all gets no empty column: the sentence under the table names it.
    empty = [j for j, (name, _) in enumerate(cols) if name not in dict(REFERENCES)
             and all(row[j + 1] == "–" for row in table)]
    keep = [j for j in range(len(cols)) if j not in empty]
    lines = ["| set | " + " | ".join(cols[j][1] for j in keep) + " |", "|---" * (len(keep) + 1) + "|"]
    lines += ["| " + " | ".join([row[0], *(row[j + 1] for j in keep)]) + " |" for row in table]
    flag_label = dict(cols)[FLAGSHIP]
    versus, untested = [], []
    for j, (name, label) in enumerate(cols):
        if name in dict(REFERENCES) or name == FLAGSHIP or j in empty:
            continue
        parts = []
        for eps in VERSUS_EPSILONS:
            verdicts = {s: _versus(*(runs_of.get((s, m, _key(summ.get(s, {}).get(m, {}), eps))) for m in (name, FLAGSHIP)))
                        for s in st.sets}
            tested = {s: v for s, v in verdicts.items() if v is not None}
            if not tested:
                parts.append("–")
                continue
            n = {k: sum(v == k for v in tested.values()) for k in ("win", "tie", "loss")}
            wins = [s for s, v in tested.items() if v == "win"]
            parts.append(f"{n['win']}/{n['tie']}/{n['loss']} of {len(tested)}" + (f" ({', '.join(wins)})" if wins else ""))
        if set(parts) == {"–"}:
            untested.append(label)
        else:
            versus.append(f"{label} " + " · ".join(parts))
    lines += ["", f"Against the {flag_label.lower()}, wins/ties/losses over the sets at ε = "
              + " · ".join(f"{e:g}" for e in VERSUS_EPSILONS) + " (a win or loss needs the paired 95 % interval of the "
              "FID difference to exclude 0; a set counts once both cells have 2 or more paired runs): "
              + ("; ".join(versus) if versus else "none yet") + "."
              + (f" Not yet repeated enough to count: {', '.join(untested)}." if untested else "")]
    if empty:
        lines += ["", "No stored cells yet: " + ", ".join(cols[j][1] for j in empty) + "."]
    n_runs = ", ".join(str(r) for r in sorted(runs)) or "0"
    head = (f"FID at ε = {epsilon:g} (± 95 % interval where a cell has several runs; class agreement), {st.samples} "
            f"samples per run, runs per cell: {n_runs} (generated from `bench/results.json` by "
            "`python -m dphyper bench --report-only`):")
    return head + "\n\n" + "\n".join(lines)


def _key(by_eps: dict, epsilon: float) -> str | None:
    """The epsilon key of a method's cells at ``epsilon`` (the stored cells' own string; 'base' is no epsilon)."""
    return next((k for k in by_eps if k != "base" and math.isclose(float(k), epsilon)), None)


def _versus(mine: list[dict], flag: list[dict]) -> str | None:
    """'win' / 'tie' / 'loss' of a method against the flagship by the paired FID rule; None under 2 paired runs."""
    from .evidence import paired_runs

    if not mine or not flag:
        return None
    p = paired_runs(mine, flag, "fid")
    return None if p is None else p["verdict"]


def _at(by_eps: dict, epsilon: float) -> dict | None:
    key = _key(by_eps, epsilon)
    return None if key is None else by_eps[key]


def readme_block(text: str, name: str = "results") -> str:
    """The README's text between ``<!-- name:start -->`` and ``<!-- name:end -->`` (stripped)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"README has no {name} markers")
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def write_readme_table(readme: Path = README) -> None:
    from .markdown_sections import write_section

    write_section(readme, "results", results_table())
