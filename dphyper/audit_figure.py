"""The canary audit as a picture (issue 38): what every paper that teaches the audit draws.

Two histograms of the attack's score on the measured half of the trials, with the canary in the data and
without it; the threshold the selection half chose (right of it the attack says "the canary was there");
and, in the title, the measured lower bound on ε with its confidence, the claimed ε, and the largest ε these
trials could show at all. A mechanism that keeps its promise gives two overlapping histograms; a broken one
pulls them apart.
"""

from __future__ import annotations

import plotly.graph_objects as go

VERDICT_WORDS = {
    "consistent": "consistent with the claim",
    "violated": "the claim is VIOLATED: the mechanism leaks more than it says",
    "inconclusive": "inconclusive: these trials cannot detect a leak at the claimed ε",
}


def audit_figure(r: dict) -> go.Figure:
    """A plotly figure of one ``audit.run_audit(..., with_scores=True)`` result."""
    scores = r.get("scores")
    if not scores:
        raise ValueError("the audit result has no scores: run it with with_scores=True")
    fig = go.Figure()
    both = scores["member"] + scores["non_member"]
    lo, hi = (min(both), max(both)) if both else (0.0, 1.0)
    bins = dict(start=lo, end=hi + (hi - lo) / 1000 + 1e-12, size=max((hi - lo) / 40, 1e-12))
    fig.add_trace(go.Histogram(x=scores["non_member"], name=f"without the canary ({len(scores['non_member'])})",
                               xbins=bins, opacity=0.6, marker_color="#4C78A8"))
    fig.add_trace(go.Histogram(x=scores["member"], name=f"with the canary ({len(scores['member'])})",
                               xbins=bins, opacity=0.6, marker_color="#E45756"))
    fig.add_vline(x=r["threshold"], line_dash="dash", line_color="black",
                  annotation_text="threshold: right = 'the canary was there'", annotation_position="top")
    fig.update_layout(
        barmode="overlay", height=380, margin=dict(l=50, r=20, t=80, b=50),
        title=dict(text=(f"measured ε ≥ {r['epsilon_lower_bound']:.2f} ({r['confidence']:.0%} confidence) · "
                         f"claimed ε = {r['epsilon_claimed']:g} · these trials can show at most "
                         f"ε ≈ {r['detectable_max']:.2f}<br><b>{VERDICT_WORDS[r['verdict']]}</b>"),
                   font=dict(size=14)),
        xaxis_title="the attack's score (one per trial)", yaxis_title="trials",
        legend=dict(orientation="h", yanchor="bottom", y=-0.35, x=0))
    return fig
