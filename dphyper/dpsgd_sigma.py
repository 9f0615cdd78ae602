"""DP-SGD's noise multiplier: Opacus' own search for sigma, and a per-caller memo of its answers.

Kept apart from the engine (``dpsgd.py``, which re-exports both) so that the plan line and the theory tab can ask
for sigma without the training loop's imports.
"""

from __future__ import annotations

import contextlib
import contextvars


def dpsgd_noise_multiplier(*, epsilon: float, delta: float, sample_rate: float, steps: int,
                           accountant: str = "prv") -> float:
    """sigma for `steps` Poisson-sampled Gaussian steps at (epsilon, delta): Opacus' own search (4-8 s on 2 cores).

    No process-wide cache (issue 37): the rate 1 / ceil(n / B) and the steps are functions of a session's
    private n, so a shared memo would answer a second visitor at once exactly when an earlier visitor had loaded a
    folder of that size, and the page's timing would tell. A caller that asks again for its *own* settings (one
    session's plan line) opens its own memo with ``sigma_memo(d)``; a hit returns the float a fresh search gives
    (the search is deterministic), so nothing about the answer changes, only its speed, and only for its owner.
    """
    key = (float(epsilon), float(delta), float(sample_rate), int(steps), str(accountant))
    memo = _SIGMA_MEMO.get()
    if memo is not None and key in memo:
        return memo[key]
    from opacus.accountants.utils import get_noise_multiplier

    sigma = float(get_noise_multiplier(target_epsilon=key[0], target_delta=key[1], sample_rate=key[2], steps=key[3],
                                       accountant=key[4]))
    if memo is not None:
        if len(memo) >= 256:  # one session's memo stays small
            memo.clear()
        memo[key] = sigma
    return sigma


# The memo of the caller's own context (a ContextVar: each Gradio handler runs in its own copy, so a memo set by
# one session's handler is never seen by another's); None = no memo.
_SIGMA_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("dphyper_sigma_memo", default=None)


@contextlib.contextmanager
def sigma_memo(memo: dict):
    """Within this block, ``dpsgd_noise_multiplier`` remembers its answers in ``memo`` (the caller's own dict)."""
    token = _SIGMA_MEMO.set(memo)
    try:
        yield memo
    finally:
        _SIGMA_MEMO.reset(token)
