"""What the noise did: the exact and the released mean embedding on the public map (owner only)."""

from __future__ import annotations

import math

from .common import _lock, _models


# ---------------------------------------------------------------- what the noise did


def _public_map():
    """2-D principal axes of public (train-split) embeddings: fixed axes for the noise view, read from
    the shipped asset (``dphyper.public_map``), so the app starts without the dataset installed."""
    with _lock:
        if "pca" not in _models:
            from ..public_map import load

            _models["pca"] = load()
        return _models["pca"]


def noise_figure(clean_mean, noisy_mean, epsilon: float):
    import plotly.graph_objects as go

    from ..data import CLASS_NAMES

    pm = _public_map()
    fig = go.Figure()
    pts, labels = pm["points"].numpy(), pm["labels"].numpy()
    for c, name in enumerate(CLASS_NAMES):
        sel = labels == c
        fig.add_trace(go.Scatter(x=pts[sel, 0], y=pts[sel, 1], mode="markers", name=name,
                                   marker={"size": 4, "opacity": 0.35}))

    def proj(v):
        return ((v.double() - pm["centre"]) @ pm["axes"]).tolist()

    if clean_mean is not None:
        cx, cy = proj(clean_mean)
        fig.add_trace(go.Scatter(x=[cx], y=[cy], mode="markers", name="your exact mean (only you see this)",
                                 marker={"size": 18, "symbol": "star", "color": "black"}))
    nx, ny = proj(noisy_mean)
    label = "released noisy mean" + ("" if math.isfinite(epsilon) else " (no noise)")
    fig.add_trace(go.Scatter(x=[nx], y=[ny], mode="markers", name=label,
                             marker={"size": 16, "symbol": "x", "color": "#d62728", "line": {"width": 2}}))
    if clean_mean is not None:
        fig.add_annotation(x=nx, y=ny, ax=cx, ay=cy, xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=2, arrowcolor="#d62728")
    fig.update_layout(height=380, title="What the noise did (2-D map of the embedding space)<br><sup>64 dimensions "
                                        "flattened to 2: points that look close here can be far apart; the reach "
                                        "check measures in all 64</sup>",
                      margin={"l": 30, "r": 10, "t": 50, "b": 30})
    return fig
