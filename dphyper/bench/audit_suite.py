"""The canary audit of every mechanism and its broken variants."""

from __future__ import annotations



from ..markdown_sections import write_section
from .common import BenchConfig, machine


def bench_audit(cfg: BenchConfig) -> dict:
    """R5: the audit of both shipped mechanisms and of the deliberately broken variants."""
    from ..audit import AuditConfig, run_audit

    rows = ["## Empirical privacy audit (`python -m dphyper bench --suite audit`)", "",
            f"Machine: {machine()}. `python -m dphyper audit --method M --epsilon 1 --broken B` (defaults: n = 100, "
            "20,000 trials for the one-shot release, 1,000 for DP-SGD; threshold picked on one half of the trials, "
            "rates measured on the other; 95 % Clopper-Pearson). Pass = lower bound ≤ claim for the shipped "
            "mechanism, > claim for a broken one.", "",
            "| method | variant | ε claimed | ε lower bound | TPR | FPR | trials measured | seconds | pass |",
            "|---|---|---|---|---|---|---|---|---|"]
    res = []
    from ..audit import audit_variants
    from ..methods import METHODS

    for method in METHODS:
        for broken in audit_variants()[method]:
            r = run_audit(AuditConfig(method=method, epsilon=1.0, broken=broken))
            res.append(r)
            rows.append(f"| {method} | {'shipped' if broken == 'none' else broken} | {r['epsilon_claimed']:g} | "
                        f"{r['epsilon_lower_bound']:.2f} | {r['tpr']:.3f} | {r['fpr']:.4f} | {r['trials_measured']} | "
                        f"{r['seconds']:.0f} | {'yes' if r['passed'] else '**NO**'} |")
            print(rows[-1], flush=True)
    write_section(cfg.doc, "audit", "\n".join(rows))
    return {"machine": machine(), "audits": res}
