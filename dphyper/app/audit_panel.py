"""The audit tab: a canary audit of any registered method, as a picture."""

from __future__ import annotations


from .common import UserError, public_error


# ---------------------------------------------------------------- audit panel

AUDIT_TEXT = """
**Does the guarantee hold in practice?** The audit runs a mechanism thousands of times on
*public* data, half of the time with one extra "canary" record, and lets an attacker guess
from the output alone whether the canary was there. Its hit rates give a **lower bound on ε**
that holds with 95 % confidence: a correct mechanism can never be caught above its claimed ε.
Pick "simulate a bug" to see the audit catch clipping switched off, noise divided by 10, or
(PDA-DPMD) private images fed in as the "public" batch.
The same audit from a terminal: `python -m dphyper audit --method METHOD --epsilon E` (the result names the exact command).
"""


def run_audit_panel(method: str, epsilon: float, broken: str, trials: float):
    from ..audit import AuditConfig, run_audit
    from ..methods import METHODS

    m = METHODS.get(method)
    cap = m.audit.max_app_trials if m is not None and m.audit is not None else None
    asked = int(trials)
    trials = asked if cap is None else min(asked, cap)
    try:
        r = run_audit(AuditConfig(method=method, epsilon=float(epsilon), trials=trials, broken=broken), with_scores=True)
    except ValueError as exc:
        raise UserError(public_error(exc)) from None
    from ..audit_figure import audit_figure

    fig = audit_figure(r)
    r = {k: v for k, v in r.items() if k != "scores"}  # the JSON view: the verdict, not thousands of scores
    verdict = {"consistent": "✅ consistent with the claim",
               "violated": "❌ the claim is **violated**: the mechanism leaks more than it says",
               "inconclusive": "⚠️ **inconclusive**: this many trials cannot detect a leak at the claimed ε "
                               "(more trials, or a smaller claimed ε)"}[r["verdict"]]
    text = (f"Measured lower bound **ε ≥ {r['epsilon_lower_bound']:.2f}** (95 % confidence) against the claimed "
            f"ε = {r['epsilon_claimed']:g} → {verdict}.  \nA perfect attack on these {r['trials_measured']} "
            f"held-out trials would show ε ≥ {r['detectable_max']:.2f}: no claim above that can be tested here.  \nAttack on {r['trials_measured']} held-out trials: "
            f"true-positive rate {r['tpr']:.3f}, false-positive rate {r['fpr']:.4f}; {r['seconds']:.0f} s.")
    capped = f" (capped from {asked}: each {m.label} trial is a training run)" if trials < asked else ""
    broken_arg = "" if broken == "none" else f" --broken {broken}"
    text += (f"  \n{r['trials']} trials{capped}: half choose the attack's threshold, the other {r['trials_measured']} "
             f"measure it. The same audit: `python -m dphyper audit --method {method} --epsilon {float(epsilon):g} "
             f"--trials {r['trials']}{broken_arg}`")
    return text, fig, r


# Methods and the base model side by side in one row: 7 columns fit a 1,280 px projector without wrapping
# (a wrapped column would stretch to the full width and blow its thumbnails up).


def _trials_label(methods) -> str:
    """The audit's trial slider label, naming the methods whose app audit is capped (a trial is a training run)."""
    caps: dict[int, list[str]] = {}
    for m in methods.values():
        if m.audit is not None and m.audit.max_app_trials is not None:
            caps.setdefault(m.audit.max_app_trials, []).append(m.label)
    said = "; ".join(f"{' and '.join(labels)}: capped at {cap}" for cap, labels in caps.items())
    return f"Trials ({said})" if said else "Trials"
