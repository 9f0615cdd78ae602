"""The comparison's figures: each method's plot style, the compact curves the app draws, and the
privacy-utility figure as HTML (plotly) and PNG (matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path

METHOD_STYLE = {  # label, colour of the references (a method's own is ``Method.plot_style``)
    "nonprivate": ("non-private LoRA, converged (ε = ∞)", "#2ca02c"),
    "base": ("base model (no fine-tuning)", "#7f7f7f"),
    "hypernet_inf": ("hypernetwork, no noise (ε = ∞)", "#9ecae1"),
}
PALETTE = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def style(meth: str) -> tuple[str, str]:
    """(label, colour) of a method in plots: its own, or the registry's label and a palette colour,
    so that a newly registered method needs no edit here."""
    if meth in METHOD_STYLE:
        return METHOD_STYLE[meth]
    from .adapters import FORMATS
    from .methods import METHODS

    names = list(METHODS)
    m = METHODS.get(meth)
    if m is not None and m.plot_style is not None:
        return m.plot_style
    # What it makes: a LoRA for most methods; DP sparse changes chosen rows of the base UNet, PE an image set.
    label = meth if m is None else f"{m.label} {FORMATS[m.adapter_format].noun}"
    return label, PALETTE[(names.index(meth) if meth in names else 0) % len(PALETTE)]


def curves(summary: dict, sets_info: dict, settings: dict) -> dict:
    """The compact form the app draws: per set and method, epsilon -> FID / agreement."""
    out = {"settings": settings, "sets": {}}
    for s, m in summary.items():
        entry = {"info": sets_info.get(s, {}), "methods": {}}
        for meth, rows in m.items():
            finite = sorted((float(e), r) for e, r in rows.items() if e not in ("inf", "base"))
            entry["methods"][meth] = {
                "epsilon": [e for e, _ in finite], "fid": [r["fid"] for _, r in finite],
                "agreement": [r["agreement"] for _, r in finite],
                "seconds_to_lora": [r["seconds_to_lora"] for _, r in finite],
                "runs": [r["repeats"] for _, r in finite],
            }
            for k in ("fid", "agreement"):  # interval bands, once some cell has repeated runs
                halves = [r.get(k + "_half") for _, r in finite]
                if any(h is not None for h in halves):
                    entry["methods"][meth][k + "_half"] = halves
            for flat in ("inf", "base"):
                if flat in rows:
                    entry["methods"][meth]["flat"] = {"fid": rows[flat]["fid"], "agreement": rows[flat]["agreement"],
                                                      "seconds_to_lora": rows[flat]["seconds_to_lora"]}
        out["sets"][s] = entry
    return out


def _lines(entry: dict) -> list[tuple[str, str, list[float], list[float], bool]]:
    """(key, colour, x, y, dashed) per method; flat references become horizontal lines."""
    out = []
    for meth, m in entry["methods"].items():
        if m["epsilon"]:
            out.append((meth, style(meth)[1], m["epsilon"], m["fid"], False))
    from .methods import FLAGSHIP

    for meth, key in ((FLAGSHIP, "hypernet_inf"), ("nonprivate", "nonprivate"), ("base", "base")):
        m = entry["methods"].get(meth)
        if m and "flat" in m:
            out.append((key, METHOD_STYLE[key][1], [], [m["flat"]["fid"]], True))
    return out


def plot_html(curv: dict, path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(curv["sets"])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names)
    eps = sorted({e for s in curv["sets"].values() for m in s["methods"].values() for e in m["epsilon"]}) or [1.0]
    for i, name in enumerate(names):
        r, c = i // cols + 1, i % cols + 1
        for key, colour, x, y, dashed in _lines(curv["sets"][name]):
            xs = x if x else [eps[0], eps[-1]]
            ys = y if x else y * 2
            fig.add_trace(go.Scatter(x=xs, y=ys, name=style(key)[0], legendgroup=key, showlegend=i == 0,
                                     mode="lines" if dashed else "lines+markers",
                                     line={"color": colour, "dash": "dash" if dashed else "solid"}), row=r, col=c)
        fig.update_xaxes(type="log", title_text="ε", row=r, col=c)
        fig.update_yaxes(title_text="FID (lower is better)", row=r, col=c)
    fig.update_layout(height=360 * rows, width=1200, title="FID vs ε per private set (evaluator features)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True)


def plot_png(curv: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curv["sets"])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    eps = sorted({e for s in curv["sets"].values() for m in s["methods"].values() for e in m["epsilon"]}) or [1.0]
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        for key, colour, x, y, dashed in _lines(curv["sets"][name]):
            if x:
                ax.plot(x, y, "o-", color=colour, label=style(key)[0], ms=4)
            else:
                ax.hlines(y[0], eps[0], eps[-1], colors=colour, linestyles="dashed", label=style(key)[0])
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(eps)
        ax.set_xticklabels([f"{e:g}" for e in eps])
        ax.set_title(name)
        ax.set_xlabel("ε")
        ax.set_ylabel("FID")
    spare = list(axes.flat[len(names):])
    for ax in spare:
        ax.axis("off")
    if spare:  # an empty panel holds the legend, so no label is cut at the figure's edge
        seen = legend_handles(axes.flat)
        spare[0].legend(list(seen.values()), list(seen), loc="center", fontsize=9, frameon=False)
        fig.tight_layout()
    else:
        legend_below(fig, axes.flat, 0.06)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def legend_handles(axes) -> dict:
    """Every labelled line of any panel, once (a method may have cells on some panels only): label -> handle."""
    seen: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    return seen


def legend_below(fig, axes, row_height: float) -> None:
    """One legend under the panels, four labels a row, with the layout leaving it room."""
    seen = legend_handles(axes)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(4, len(seen)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, row_height * math.ceil(len(seen) / 4), 1, 1))
