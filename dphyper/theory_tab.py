"""The teaching tab: one-shot release vs DP-SGD in the synthetic setting (dphyper.theory).

Simulated points come from ``assets/curves/theory.json`` (written by
``python -m dphyper theory --n 100 1000 10000 --d 5 20 50 > assets/curves/theory.json``)
because DP-SGD's noise multipliers need slow accountant searches; the closed form is
computed live. A slider change only redraws a figure.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

import numpy as np

from .config import ASSETS_DIR

CURVES = ASSETS_DIR / "curves" / "theory.json"
EPS_LINE = np.geomspace(0.1, 16, 25)

TEXT = """
### Why one noisy summary can beat many noisy steps

**Setting.** Each private dataset has a hidden parameter μ (‖μ‖ = 0.5, random direction in
d dimensions, drawn from a *public* prior). Its n examples are x = μ + noise (‖noise‖ = 0.5).
The goal is to estimate μ; the excess risk of an estimate θ is ½‖θ − μ‖².

**One-shot ("hypernetwork").** Release the sum of the examples and their count **once**
with Gaussian noise calibrated to (ε, δ), then apply a map learned on public datasets
(here: the best shrinkage factor λ). Its risk has an exact formula (solid line).

**One-shot in parameter space ("quadratic EM").** The same single release, read as the
gradient of the loss at θ = 0 (here the parameter space *is* the data space), then one
Newton step with the public curvature, shrunk by James–Stein from the release alone: no
public datasets, no prior. Its exact formula without the shrinkage is the dashed line.

**DP-SGD.** Start at θ = 0, take T noisy, clipped gradient steps on Poisson-sampled
batches; the noise per step comes from Opacus' accountant for the same (ε, δ), the same
call the image baseline makes. Step size and T were tuned on public datasets.
"""


@lru_cache(maxsize=1)
def load_curves() -> list[dict]:
    return json.loads(CURVES.read_text()) if CURVES.exists() else []


def grid_values() -> tuple[list[int], list[int]]:
    rows = load_curves()
    return sorted({r["n"] for r in rows}), sorted({r["d"] for r in rows})


def warm_cache() -> None:
    """Compute the closed-form curve of every stored (n, d) once, so slider changes only redraw."""
    from .theory import oneshot_closed_form

    ns, ds = grid_values()
    for n in ns:
        for d in ds:
            for e in EPS_LINE:
                oneshot_closed_form(float(e), n, d)
                oneshot_closed_form(float(e), n, d, lam=1.0)


def figure(log_eps: float, n: int, d: int):
    import plotly.graph_objects as go

    from .theory import NOISY_SGD, ONE_SHOT, PARAM_EM, oneshot_closed_form

    eps_mark = 10 ** log_eps
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=EPS_LINE, y=[oneshot_closed_form(e, n, d) for e in EPS_LINE], mode="lines",
                             name="one-shot, closed form", line=dict(color="#2563eb", width=3)))
    fig.add_trace(go.Scatter(x=EPS_LINE, y=[oneshot_closed_form(e, n, d, lam=1.0) for e in EPS_LINE], mode="lines",
                             name="parameter space, Newton step, closed form",
                             line=dict(color="#16a34a", width=2, dash="dash")))
    pts = [r for r in load_curves() if r["n"] == n and r["d"] == d]
    pts.sort(key=lambda r: r["epsilon"])
    for key, name, color in ((ONE_SHOT, "one-shot, simulated", "#2563eb"),
                             (PARAM_EM, "parameter space (quadratic EM), simulated", "#16a34a"),
                             (NOISY_SGD, "DP-SGD, simulated", "#dc2626")):
        if pts and all(key in r for r in pts):
            fig.add_trace(go.Scatter(
                x=[r["epsilon"] for r in pts], y=[r[key]["mean"] for r in pts], mode="markers+lines" if key == NOISY_SGD else "markers",
                name=name, marker=dict(color=color, size=10,
                                       symbol={ONE_SHOT: "circle", PARAM_EM: "diamond"}.get(key, "square")),
                line=dict(color=color, dash="dot"),
                error_y=dict(type="data", array=[r[key]["std"] for r in pts], visible=True)))
    fig.add_vline(x=eps_mark, line_dash="dash", line_color="gray", annotation_text=f"ε = {eps_mark:.2g}")
    fig.update_layout(xaxis=dict(type="log", title="ε (privacy budget; right = less private)"),
                      yaxis=dict(type="log", title="excess risk ½‖θ − μ‖² (lower is better)"),
                      height=420, margin=dict(l=60, r=20, t=30, b=50), legend=dict(x=0.01, y=0.01))
    return fig


def reading(log_eps: float, n: int, d: int) -> str:
    from .theory import NOISY_SGD, ONE_SHOT, PARAM_EM, oneshot_closed_form

    eps = 10 ** log_eps
    one = oneshot_closed_form(eps, n, d)
    near = [r for r in load_curves() if r["n"] == n and r["d"] == d]
    if not near:
        return f"At ε = {eps:.2g}, n = {n}, d = {d}: one-shot risk {one:.2e} (no DP-SGD simulation stored)."
    r = min(near, key=lambda r: abs(math.log(r["epsilon"]) - math.log(eps)))
    ratio = r[NOISY_SGD]["mean"] / r[ONE_SHOT]["closed_form"]
    who = "one-shot release" if ratio > 1 else "DP-SGD"
    qem = ""
    if PARAM_EM in r:
        q = r[PARAM_EM]["mean"] / r[ONE_SHOT]["closed_form"]
        qem = (f"The parameter-space one-shot (quadratic EM) is at **{q:.2f}×**: the same release, but its "
               "shrinkage comes from the release alone instead of a public prior. ")
    return (f"**Reading the plot.** At ε ≈ {r['epsilon']:g} with n = {n} examples in d = {d} dimensions, "
            f"DP-SGD's risk is **{ratio:.1f}×** the one-shot risk, so the **{who}** is better here. " + qem +
            "Both improve as ε grows (less noise) and as n grows (noise is shared by more examples). "
            "DP-SGD pays for privacy at every step, in every direction of θ; the one-shot method "
            "pays once, and its public prior tells it how much to trust the noisy summary.")


def build_tab() -> None:
    import gradio as gr

    ns, ds = grid_values()
    if not ns:
        gr.Markdown("No simulation curves found: run `python -m dphyper theory ... > assets/curves/theory.json`.")
        return
    warm_cache()
    gr.Markdown(TEXT)
    with gr.Row():
        log_eps = gr.Slider(-1.0, 1.2, value=0.0, step=0.05, label="log10 ε")
        n = gr.Radio(ns, value=1000 if 1000 in ns else ns[0], label="n (examples)")
        d = gr.Radio(ds, value=ds[len(ds) // 2], label="d (dimension)")
    plot = gr.Plot(figure(0.0, n.value, d.value))
    text = gr.Markdown(reading(0.0, n.value, d.value))
    for comp in (log_eps, n, d):
        comp.change(figure, [log_eps, n, d], plot, queue=False, show_progress="hidden", api_visibility="private")
        comp.change(reading, [log_eps, n, d], text, queue=False, show_progress="hidden", api_visibility="private")
