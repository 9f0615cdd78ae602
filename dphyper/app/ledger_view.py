"""The ledger's view and each run's caption: what was spent, in words."""

from __future__ import annotations

import math

from ..adapters import FORMATS
from ..ledger import LedgerBook
from ..ledger import total_text


# ---------------------------------------------------------------- ledger and runs


def _ledger_method(method: str, e) -> str:
    """A ledger row's method in words: the registry's label and what its event did."""
    from ..methods import METHODS
    from ..privacy import MECHANISMS

    label = METHODS[method].label if method in METHODS else method
    # its words come from the module that makes such events (the book refuses an unregistered one on record)
    return f"{label} ({MECHANISMS[e.mechanism].words(e)})"

LEDGER_RULES = (
    "Releases are counted **per image**: a run counts against every image it used, whatever the folder, "
    "file names, order or other images (identical pixels after decoding = the same image). The total is "
    "for the most-used image of the current data, composed by an accountant, not a plain sum. The ledger "
    "lives in this browser tab's session on the server: a page reload starts a new, empty ledger, but the "
    "people in your images have still spent what earlier runs spent. DP-SGD and PDA-DPMD, as in Opacus, treat "
    "n as public (their sampling rate and steps follow from n); the one-shot methods (hypernetwork, quadratic "
    "EM, DP-MERF) release n with noise inside their one release; Private Evolution's vote totals are noisy counts; slicing hides n by padding its release to a public "
    "number of rows; DP sparse keeps n inside its noisy row scores, then treats n as public in its DP-SGD phase "
    "(its report's sample rate and steps reveal about n / batch), and records two rows per run (its selection, "
    "its DP-SGD steps) whose ε alone compose to the run's ε. The total "
    "is an (ε, δ) bound under add/remove-one with those schedules fixed.")


def _ledger_markdown(book: LedgerBook | None, fingerprints: frozenset | None) -> str:
    if book is None or not fingerprints:
        return "No release on this data yet."
    view = book.view(fingerprints)
    if not view.rows:
        return "No release on this data yet.  \n" + LEDGER_RULES
    rows = ["| # | method | images used | ε (this row alone) | δ | noise σ/Δ | accountant |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(view.rows, 1):
        e = r.event
        method = _ledger_method(r.method, e)
        used = f"all {r.of}" if r.shared == r.of else f"{r.shared} of {r.of}"
        rows.append(f"| {i} | {method} | {used} | {e.epsilon:.3g} | {e.delta:g} | {e.noise_multiplier:.3f} | "
                    f"{e.accountant} |")
    how = ("a run without privacy is in these rows, so nothing bounds what they reveal together"
           if math.isinf(view.epsilon) else
           "composed by the accountant, which is less than the rows' plain sum")
    rows += ["", f"**Total spent on these images: {total_text(view)}** — composed by {view.how}. Every run on the "
             f"same images is another look at them, so spending accumulates ({how}); rerunning until you like the "
             "result spends privacy each time.", "", LEDGER_RULES]
    return "\n".join(rows)


def _caption(method: str, report: dict, seconds: float, adapter_format: str = "lora") -> str:
    eps = report.get("epsilon_spent", report["epsilon"])
    eps_text = "∞ (no privacy)" if eps == "inf" else f"{float(eps):.3g}"
    if report.get("refit"):  # post-processing of an earlier release
        return (f"**{method}** — {seconds:.1f} s to {FORMATS[adapter_format].words} and samples; no ε spent (re-uses the release that "
                f"cost ε {eps_text}, δ {report['delta']:g}) · {report.get('note', '')}")
    text = f"**{method}** — {seconds:.1f} s to {FORMATS[adapter_format].words} and samples; ε spent {eps_text}, δ {report['delta']:g}"
    if report.get("epsilon_selection") not in (None, "inf") and report.get("mask") == "private":
        text += (f" (its selection's ε {float(report['epsilon_selection']):.3g} and its DP-SGD's ε "
                 f"{float(report['epsilon_dpsgd_alone']):.3g} alone compose to that) · "
                 f"{report['groups']} of {report['groups_total']} rows trained")
    if report.get("note"):  # a method's plain-language remark on this release (DP outputs only)
        note = report["note"]
        text += f" · **{note}**" if note.startswith("⚠") else f" · {note}"  # a warning must not be missed
    return text
