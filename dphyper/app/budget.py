"""The page's budget: epsilon from the slider (or none), and the plan line of what each method's button will do."""

from __future__ import annotations

import math

from .common import UserError


def _epsilon(log_eps: float, no_privacy: bool) -> float:
    """ε from the slider; NaN or a value off the scale is an error, never "no privacy"."""
    if no_privacy:
        return math.inf
    try:
        log_eps = float(log_eps)
    except (TypeError, ValueError):
        raise UserError("ε must be a number.") from None
    if not (-3.0 <= log_eps <= 3.0):  # NaN fails this too
        raise UserError(f"log10 ε must be between −3 and 3, got {log_eps}.")
    return 10 ** log_eps


def methods_plan(data: dict | None, log_eps: float, no_privacy: bool, delta: float, max_steps: int) -> str:
    """What each method with a plan (``Method.plan``) will do for this n and epsilon, in words (computed,
    nothing private shown); methods whose plans read the same share one line."""
    from ..methods import METHODS

    if not data:
        return ""
    from ..dpsgd import sigma_memo

    epsilon = _epsilon(log_eps, no_privacy)  # validated, as for a run
    lines: dict[str, list[str]] = {}
    # This session's own memo of noise-multiplier searches (it lives with its data and goes with it): never one
    # shared by the server, whose speed would tell a visitor which folder sizes others loaded (issue 37).
    with sigma_memo(data.setdefault("sigma_memo", {})):
        for m in METHODS.values():
            text = m.plan(data["n"], epsilon, delta, int(max_steps or 0)) if m.plan else ""
            if text:
                lines.setdefault(text, []).append(m.label)
    return "  \n".join(f"{' and '.join(labels)} plan: {text}" for text, labels in lines.items())
