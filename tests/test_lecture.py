"""The lecture path (issue 38): one variable per step, a sentence per step, the audit at the end."""

import math

import pytest

from dphyper import lecture
from dphyper.config import EXAMPLES_DIR


def test_the_path_lowers_epsilon_one_step_at_a_time_and_ends_at_the_audit():
    eps = [e for e, _ in lecture.STEPS]
    assert math.isinf(eps[0]) and eps[1:] == sorted(eps[1:], reverse=True) and len(set(eps)) == len(eps)
    texts = [lecture.step_text(k) for k in range(len(lecture.STEPS) + 1)]
    assert all(f"Step {k + 1} of {len(lecture.STEPS) + 1}" in t for k, t in enumerate(texts[:-1]))
    assert "No privacy" in texts[0] and "Privacy audit" in texts[-1]
    assert "2.72× more confident" in lecture.step_text(3)  # eps = 1, in plain words
    with pytest.raises(ValueError, match="steps 0"):
        lecture.run_step(len(lecture.STEPS))


@pytest.mark.skipif(not (EXAMPLES_DIR / lecture.EXAMPLE).exists(), reason="no bundled example sets")
def test_a_step_shows_the_samples_and_what_the_noise_was():
    grid, text = lecture.run_step(3)  # eps = 1
    assert grid.size[0] > 100 and grid.size[1] > 100
    assert "σ = " in text and "noisy count" in text and "this step took" in text
    _, free = lecture.run_step(0)
    assert "σ = " not in free  # no noise without privacy
