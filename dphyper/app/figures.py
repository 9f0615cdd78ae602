"""Epsilon in plain words and the measured privacy-utility curves (with their bands), as Plotly figures."""

from __future__ import annotations

import json
import math

from ..plots import style as method_style
from .common import _lock, _models


# ---------------------------------------------------------------- epsilon and the curves


def privacy_summary(log_eps: float, no_privacy: bool, delta: float, n: int | None = None) -> str:
    from ..privacy import calibrate_gaussian

    if no_privacy:
        return ("**No privacy** (ε = ∞): the exact data are used; what a run outputs can reveal anything about any "
                "one of your images. A non-private reference only.")
    eps = 10 ** log_eps
    n = int(n) if n else 200
    d = 64
    s = calibrate_gaussian(epsilon=eps, delta=delta)
    std_mean = s * math.sqrt(2) / n  # sensitivity sqrt(1 + 1): embedding norm <= 1 plus the count
    nsr = std_mean * math.sqrt(d)  # expected noise norm on the mean / the largest possible signal norm (1)
    from ..quality_target import plain_epsilon

    warn = " ⚠️ δ is not below 1/n: the guarantee is weak." if delta >= 1 / n else ""
    return (plain_epsilon(eps, delta) + "  \n" +
            f"**ε = {eps:.3g}**, δ = {delta:g} (the chance that the guarantee fails outright; keep it well "
            f"below 1/n = {1 / n:.2g}).{warn}  \n"
            f"Noise multiplier σ/Δ = **{s:.3f}**. With n = {n}, the released mean embedding gets noise of std "
            f"{std_mean:.4f} per coordinate: noise-to-signal ratio ≈ **{nsr:.2f}** (noise norm over the largest "
            f"possible embedding norm, 1).")


def _curves() -> dict:
    with _lock:
        if "curves" not in _models:
            from ..compare import CURVES_PATH

            _models["curves"] = json.loads(CURVES_PATH.read_text()) if CURVES_PATH.exists() else {"sets": {}}
        return _models["curves"]


def curve_sets() -> list[str]:
    return list(_curves()["sets"])


def default_curve_set(n: int | None) -> str | None:
    """The benchmark set whose size is closest to the user's n (on a log scale)."""
    sets = curve_sets()
    if not sets:
        return None
    infos = _curves()["sets"]
    return min(sets, key=lambda s: abs(math.log((infos[s]["info"].get("n") or 1) / max(n or 200, 1))))


LABELS = {"nonprivate": "non-private LoRA", "base": "base model"}  # the references; methods: their registry label


def quality_for(bench_set: str | None, target: float) -> str:
    """The smallest measured ε per method that reaches a class agreement on a benchmark set (public curves)."""
    from ..methods import METHODS
    from ..quality_target import quality_answer

    if not bench_set or bench_set not in _curves()["sets"]:
        return ""
    labels = {name: _label(name) for name in [*METHODS, *LABELS]}
    return quality_answer(_curves(), bench_set, float(target), labels)


def _label(meth: str) -> str:
    """Short plot labels; a registered method defaults to its registry label (no edit needed here)."""
    from ..methods import METHODS

    return LABELS.get(meth) or (METHODS[meth].label if meth in METHODS else meth)


def _colour(meth: str) -> str:
    return method_style(meth)[1]


def _band(eps: list, mean: list, half: list, colour: str, group: str) -> list:
    """The benchmark's 95 % interval over runs as a shaded band (cells with one run have none: a gap)."""
    import plotly.graph_objects as go

    upper = [m + h if h is not None else None for m, h in zip(mean, half)]
    lower = [m - h if h is not None else None for m, h in zip(mean, half)]
    edge = dict(mode="lines", line={"width": 0}, legendgroup=group, showlegend=False, hoverinfo="skip")
    return [go.Scatter(x=eps, y=upper, **edge),
            go.Scatter(x=eps, y=lower, fill="tonexty", fillcolor=_fade(colour), name="95 % interval", **edge)]


def _fade(colour: str, alpha: float = 0.18) -> str:
    c = colour.lstrip("#")
    return f"rgba({int(c[0:2], 16)}, {int(c[2:4], 16)}, {int(c[4:6], 16)}, {alpha})"


def utility_figure(log_eps: float, no_privacy: bool, bench_set: str | None, runs: list | None = None):
    """FID and class agreement vs epsilon from the benchmark, the chosen epsilon, the user's runs."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("FID vs ε (lower is better)",
                                                        "class agreement vs ε (higher is better)"))
    entry = _curves()["sets"].get(bench_set or "")
    xs = [0.1, 16]
    if entry:
        for meth, m in entry["methods"].items():
            for col, key in ((1, "fid"), (2, "agreement")):
                if m["epsilon"] and m.get(key + "_half"):
                    fig.add_traces(_band(m["epsilon"], m[key], m[key + "_half"], _colour(meth), meth),
                                   rows=1, cols=col)
                if m["epsilon"]:
                    fig.add_trace(go.Scatter(x=m["epsilon"], y=m[key], mode="lines+markers", name=_label(meth),
                                             legendgroup=meth, showlegend=col == 1,
                                             line={"color": _colour(meth)}), row=1, col=col)
                if "flat" in m:
                    name = _label(meth) + ("" if meth == "base" else " (ε = ∞)")
                    fig.add_trace(go.Scatter(x=xs, y=[m["flat"][key]] * 2, mode="lines", name=name,
                                             legendgroup=meth + "flat", showlegend=col == 1,
                                             line={"color": _colour(meth), "dash": "dash"}), row=1, col=col)
    for meth in dict.fromkeys(r["method"] for r in (runs or [])):
        mine = [r for r in (runs or []) if r["method"] == meth and r.get("agreement") is not None]
        if mine:
            fig.add_trace(go.Scatter(x=[min(max(r["epsilon"], 0.1), 16) for r in mine], y=[r["agreement"] for r in mine],
                                     mode="markers", name=f"your {_label(meth)} runs",
                                     marker={"color": _colour(meth), "size": 13, "symbol": "star",
                                             "line": {"width": 1, "color": "black"}},
                                     hovertext=[r["label"] for r in mine]), row=1, col=2)
    if not no_privacy:
        eps = 10 ** log_eps
        for col in (1, 2):
            fig.add_vline(x=eps, line={"color": "black", "width": 2, "dash": "dot"}, row=1, col=col,
                          exclude_empty_subplots=False)
    fig.update_xaxes(type="log", title_text="ε (log scale)", range=[-1, math.log10(16)])
    title = f"Measured on benchmark set “{bench_set}” ({entry['info'].get('kind')}, n = {entry['info'].get('n')})" \
        if entry else "No benchmark curves found (run `python -m dphyper bench`)"
    if not no_privacy:
        title += f" · dotted line: your ε = {10 ** log_eps:.3g}"
    fig.update_layout(height=380, margin={"l": 40, "r": 10, "t": 70, "b": 40}, title=title,
                      legend={"orientation": "h", "y": -0.25})
    return fig
