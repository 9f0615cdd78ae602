"""The canary audit of every mechanism and its broken variants."""

from __future__ import annotations

import json

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
    from ..audit import audit_variants
    from ..config import REPO_DIR
    from ..methods import METHODS

    # --methods re-runs those methods' audits only; every other method's rows come from bench/audit.json
    wanted = [m for m in cfg.methods.split(",") if m] or list(METHODS)
    stored = REPO_DIR / "bench" / "audit.json"
    old = json.loads(stored.read_text()).get("audits", []) if stored.exists() and cfg.methods else []
    fresh = {}
    for method in wanted:
        for broken in audit_variants()[method]:
            fresh[(method, broken)] = run_audit(AuditConfig(method=method, epsilon=1.0, broken=broken))
            print(f"{method} {broken}: {fresh[(method, broken)]['epsilon_lower_bound']:.2f}", flush=True)
    kept = {(r["method"], r["broken"]): r for r in old if r["method"] in METHODS and r["method"] not in wanted}
    res = [kept.get((m, b)) or fresh.get((m, b)) for m in METHODS for b in audit_variants()[m]]
    res = [r for r in res if r is not None]
    for r in res:
        rows.append(f"| {r['method']} | {'shipped' if r['broken'] == 'none' else r['broken']} | {r['epsilon_claimed']:g} | "
                    f"{r['epsilon_lower_bound']:.2f} | {r['tpr']:.3f} | {r['fpr']:.4f} | {r['trials_measured']} | "
                    f"{r['seconds']:.0f} | {'yes' if r['passed'] else '**NO**'} |")
    write_section(cfg.doc, "audit", "\n".join(rows))
    return {"machine": machine(), "audits": res}
