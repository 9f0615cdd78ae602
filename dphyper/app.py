"""The Gradio UI. ``app.py`` at the top level only builds and launches it.

Privacy in the app:
* public models, the benchmark curves and the public embedding map are loaded once per
  process (they hold no private data);
* everything about an upload lives in the session (``gr.State``): the decoded images, the
  ledger (one ``LedgerBook`` per tab, mutated in place: releases counted per image), the
  user's runs. Nothing private is kept at module level or logged;
* the shared public models are read-only while serving: sampling with a LoRA runs on a
  per-call copy of the UNet (``lora.lora_model_fn``); the audit's broken variants are
  arguments of its own code path, never patches of ``dphyper.privacy``;
* when a tab closes (``demo.unload``) or a session is idle for ``SESSION_TTL_S``, the
  server forgets the whole session, including every component's last value (thumbnails,
  file names, the exact-mean plot), not only the ``gr.State`` values;
* uploaded files are decoded once and deleted from the server right away; the
  thumbnails are an inline data URI, never a file; the app's own ``GRADIO_TEMP_DIR`` is
  emptied at start, ``delete_cache`` sweeps what Gradio keeps (DP outputs only: each
  run's folder holds the LoRA, samples and report) and the session sweeper deletes the empty
  temp files Gradio's upload parser leaves behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import fields, replace
from pathlib import Path

import gradio as gr

from .adapters import FORMATS
from .plots import style as method_style
from .config import EXAMPLES_DIR, REPO_DIR
from .ledger import LedgerBook, drop_duplicates, total_text
from .private_blocks import PrivateTimingBlocks
from .models import shared_models  # the process's public models (base UNet, encoder, H, evaluator)


def UserError(message: str) -> gr.Error:  # noqa: N802 - used like the exception class it returns
    """A message for the person at the page only: Gradio prints a gr.Error's traceback and message to the
    server log by default, and these messages can name private files or the folder's size."""
    return gr.Error(message, print_exception=False)

TEMP_DIR = Path(os.environ.get("DPHYPER_TEMP_DIR", REPO_DIR / ".gradio_tmp"))
MAX_FILE_MB = 10
MAX_IMAGES = 2000
SESSION_TTL_S = 3600  # decoded images are dropped from a session idle this long


def hosted_mode() -> str:
    """``DPHYPER_HOSTED``: "" (default, run by the data owner), "warn" (a public server: uploads come
    with a prominent warning) or "examples" (a public server: uploads off, example sets only)."""
    mode = os.environ.get("DPHYPER_HOSTED", "").strip().lower()
    if mode in ("", "0", "off", "false"):
        return ""
    if mode in ("1", "on", "true", "warn"):
        return "warn"
    if mode in ("examples", "no-uploads"):
        return "examples"
    raise ValueError(f"DPHYPER_HOSTED must be empty, warn or examples, got {mode!r}")


HOSTED_WARNING = (
    "⚠️ **This is a hosted demo.** Differential privacy protects the people in your images from what the "
    "*outputs* reveal (LoRA, samples, report), not from this server: whoever runs it can see what you "
    "upload. Use the example sets here, and for truly private images run dphyper on your own machine "
    "(two commands, see the README).")

_lock = threading.RLock()  # re-entrant: the PCA map loads the encoder under it
_models: dict[str, object] = {}

from .gpu import CHUNK_SECONDS, gpu  # noqa: E402  (spaces.GPU on ZeroGPU, a no-op elsewhere)


def _evaluator():
    return shared_models().evaluator


def example_names() -> list[str]:
    return sorted(p.name for p in EXAMPLES_DIR.iterdir() if p.is_dir()) if EXAMPLES_DIR.exists() else []


# ---------------------------------------------------------------- data in


_PATH_RE = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[\\/](?:[^\\/\s'\"<>|:]+[\\/])+([^\\/\s'\"<>|:]*)")


def public_error(exc: BaseException) -> str:
    """An exception's message for the page: absolute paths cut to their last part, no traceback."""
    text = _PATH_RE.sub(lambda m: m.group(1) or "…", str(exc))
    return text[:300]


def _delete_uploads(paths: list[Path]) -> None:
    """Uploaded files are decoded once; then they leave the server's disk."""
    for p in paths:
        try:
            if TEMP_DIR.resolve() in p.resolve().parents:
                p.unlink(missing_ok=True)
                if p.parent != TEMP_DIR and not any(p.parent.iterdir()):
                    p.parent.rmdir()
        except OSError:
            pass


def load_data(example: str | None, files: list | None = None, folder: list | None = None):
    """Decode the chosen data into the session; returns (data, overview markdown, thumbnails)."""

    from .data import DataError, load_folder, load_images

    uploaded = [Path(getattr(f, "name", f)) for f in (files or []) + (folder or [])]
    if uploaded and hosted_mode() == "examples":  # the API too, not only the hidden components
        _delete_uploads(uploaded)
        raise UserError("Uploads are switched off on this hosted demo: choose an example set.")
    if len(uploaded) > MAX_IMAGES:  # refuse before decoding anything
        _delete_uploads(uploaded)
        raise UserError(f"{len(uploaded)} files is over the limit of {MAX_IMAGES} images per upload: "
                       "nothing was decoded and the files were deleted.")
    try:
        if uploaded:
            loaded = load_images(uploaded, max_images=MAX_IMAGES)
            source = f"your upload ({len(uploaded)} file{'s' * (len(uploaded) != 1)})"
        elif example:
            loaded = load_folder(EXAMPLES_DIR / example)
            source = f"example set “{example}”"
        else:
            raise DataError("Choose an example set or upload images first.")
    except DataError as exc:
        raise UserError(public_error(exc)) from None
    finally:
        _delete_uploads(uploaded)
    # "The same data" for the ledger is per image (dphyper.ledger): order, names and other images don't matter.
    # An image counts once: identical copies are dropped before any release can use them twice.
    images, fingerprints, dupes = drop_duplicates(loaded.images)
    data = {"images": images, "fingerprints": fingerprints, "n": len(images), "source": source}
    lines = [f"**{len(images)} images** from {source}."]
    if dupes:
        lines.append(f"{dupes} identical duplicate image{'s' * (dupes != 1)} dropped: each image counts once.")
    if uploaded:
        lines.append("The uploaded files were decoded and deleted from the server; the images stay in this "
                     "browser session only.")
    if loaded.rejected:
        lines.append(f"Skipped {len(loaded.rejected)} file(s):")
        lines += [f"- `{name}`: {why}" for name, why in loaded.rejected[:20]]
        if len(loaded.rejected) > 20:
            lines.append(f"- … and {len(loaded.rejected) - 20} more")
    return data, "\n".join(lines), thumbnails_html(images[:24])


def thumbnails_html(images) -> str:
    """Private thumbnails as an inline data URI: they go to the owner's page and never to disk."""
    import base64
    import io

    from PIL import Image

    from .data import make_grid

    grid = make_grid(images, ncol=12)
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    return (f'<img alt="your images (first {len(images)})" src="data:image/png;base64,{b64}" '
            'style="image-rendering: pixelated; max-width: 100%;">')


def _after_load(data: dict, log_eps: float, no_privacy: bool, delta: float, max_steps: int) -> tuple:
    """What depends on n: the privacy summary, the DP-SGD plan, the benchmark set shown."""
    return (privacy_summary(log_eps, no_privacy, delta, data["n"]),
            methods_plan(data, log_eps, no_privacy, delta, max_steps), gr.update(value=default_curve_set(data["n"])))


# Loads run in order within a session (an upload right after the page opens must not be overwritten by the initial
# example load) but never wait for another session's load: a server-wide slot made a visitor's wait the rest of
# another visitor's decoding and plan, which grow with that visitor's n (issue 37).
_LOAD_LOCKS: dict[str, threading.Lock] = {}
_LOAD_LOCKS_GUARD = threading.Lock()


def _load_lock(request: gr.Request | None) -> threading.Lock:
    key = getattr(request, "session_hash", None) or "no-session"
    with _LOAD_LOCKS_GUARD:
        return _LOAD_LOCKS.setdefault(key, threading.Lock())


def load_example(example: str | None, log_eps: float = 0.0, no_privacy: bool = False, delta: float = 1e-5,
                 max_steps: int = 0, request: gr.Request = None):
    with _load_lock(request):
        data, overview, thumbs = load_data(example)
        return data, overview, thumbs, *_after_load(data, log_eps, no_privacy, delta, max_steps)


def load_upload(files: list | None, folder: list | None, log_eps: float = 0.0, no_privacy: bool = False,
                delta: float = 1e-5, max_steps: int = 0, request: gr.Request = None):
    """Upload handler: loads the files and clears the upload boxes (the files are gone)."""
    if not files and not folder:
        return (gr.skip(),) * 9
    with _load_lock(request):
        data, overview, thumbs = load_data(None, files, folder)
        return (data, overview, thumbs, *_after_load(data, log_eps, no_privacy, delta, max_steps), None, None,
                gr.update(value=None))


# ---------------------------------------------------------------- epsilon and the curves


def privacy_summary(log_eps: float, no_privacy: bool, delta: float, n: int | None = None) -> str:
    from .privacy import calibrate_gaussian

    if no_privacy:
        return ("**No privacy** (ε = ∞): the exact data are used; what a run outputs can reveal anything about any "
                "one of your images. A non-private reference only.")
    eps = 10 ** log_eps
    n = int(n) if n else 200
    d = 64
    s = calibrate_gaussian(epsilon=eps, delta=delta)
    std_mean = s * math.sqrt(2) / n  # sensitivity sqrt(1 + 1): embedding norm <= 1 plus the count
    nsr = std_mean * math.sqrt(d)  # expected noise norm on the mean / the largest possible signal norm (1)
    from .quality_target import plain_epsilon

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
            from .compare import CURVES_PATH

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


LABELS = {"hypernet": "hypernetwork", "nonprivate": "non-private LoRA", "base": "base model"}


def quality_for(bench_set: str | None, target: float) -> str:
    """The smallest measured ε per method that reaches a class agreement on a benchmark set (public curves)."""
    from .methods import METHODS
    from .quality_target import quality_answer

    if not bench_set or bench_set not in _curves()["sets"]:
        return ""
    labels = {name: _label(name) for name in [*METHODS, *LABELS]}
    return quality_answer(_curves(), bench_set, float(target), labels)


def _label(meth: str) -> str:
    """Short plot labels; a registered method defaults to its registry label (no edit needed here)."""
    from .methods import METHODS

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


# ---------------------------------------------------------------- ledger and runs


def _ledger_method(method: str, e) -> str:
    """A ledger row's method in words: the registry's label and what its event did."""
    from .methods import METHODS

    label = METHODS[method].label if method in METHODS else method
    if e.mechanism == "gaussian_sum_count":
        return f"{label} (one Gaussian release)"
    if e.mechanism == "gaussian_sliced_rows":
        return f"{label} (one Gaussian release of padded slices)"
    if e.mechanism == "gaussian_row_scores":
        return f"{label} (selection: one Gaussian release of row scores)"
    if e.mechanism == "dpsgd_poisson_gaussian":
        return f"{label} ({e.steps} steps, q = {e.sample_rate:.3g})"
    return f"{label} ({e.mechanism.replace('_', ' ')})"

LEDGER_RULES = (
    "Releases are counted **per image**: a run counts against every image it used, whatever the folder, "
    "file names, order or other images (identical pixels after decoding = the same image). The total is "
    "for the most-used image of the current data, composed by an accountant, not a plain sum. The ledger "
    "lives in this browser tab's session on the server: a page reload starts a new, empty ledger, but the "
    "people in your images have still spent what earlier runs spent. DP-SGD and PDA-DPMD, as in Opacus, treat "
    "n as public (their sampling rate and steps follow from n); the one-shot methods (hypernetwork, quadratic "
    "EM) release n with noise inside their one release; slicing hides n by padding its release to a public "
    "number of rows; DP sparse keeps n inside its noisy row scores, then treats n as public in its DP-SGD phase "
    "(its report's sample rate and steps reveal about n / batch), and records two rows per run (its selection, "
    "its DP-SGD steps) whose ε alone compose to the run's ε. The total "
    "is an (ε, δ) bound under add/remove-one with those schedules fixed.")


def _ledger_markdown(book: LedgerBook | None, fingerprints: frozenset | None) -> str:
    if book is None or not fingerprints:
        return "No release on this data yet."
    view = book.view(fingerprints)
    if not view.rows:
        return "No release on this data yet.  \n" + LEDGER_RULES
    rows = ["| # | method | images used | ε (this row alone) | δ | noise σ/Δ | accountant |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(view.rows, 1):
        e = r.event
        method = _ledger_method(r.method, e)
        used = f"all {r.of}" if r.shared == r.of else f"{r.shared} of {r.of}"
        rows.append(f"| {i} | {method} | {used} | {e.epsilon:.3g} | {e.delta:g} | {e.noise_multiplier:.3f} | "
                    f"{e.accountant} |")
    how = ("a run without privacy is in these rows, so nothing bounds what they reveal together"
           if math.isinf(view.epsilon) else
           "composed by the accountant, which is less than the rows' plain sum")
    rows += ["", f"**Total spent on these images: {total_text(view)}** — composed by {view.how}. Every run on the "
             f"same images is another look at them, so spending accumulates ({how}); rerunning until you like the "
             "result spends privacy each time.", "", LEDGER_RULES]
    return "\n".join(rows)


def _run_dir() -> Path:
    _sweep_old_runs()
    TEMP_DIR.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=TEMP_DIR))


def _sweep_old_runs(max_age_s: float = 600.0) -> None:
    """Delete run folders (DP outputs already copied into Gradio's cache) older than max_age_s."""
    for d in TEMP_DIR.glob("run-*"):
        try:
            if time.time() - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def _sweep_upload_leftovers(max_age_s: float = 120.0) -> int:
    """Delete loose files at the top of the upload cache untouched for ``max_age_s`` seconds; returns how many.

    Gradio's multipart parser leaves one empty ``tmp*`` file there per file uploaded through its API client
    (measured with gradio 5: three uploads, three zero-byte files, never deleted while the server runs): no
    pixels or names, but they pile up and say when and how many files each upload held. Gradio keeps nothing
    else loose there (uploads live in per-hash folders, runs in ``run-*``), and a file being written is
    younger than the age limit."""
    gone = 0
    for f in TEMP_DIR.glob("*"):
        try:
            if f.is_file() and not f.is_symlink() and time.time() - f.stat().st_mtime > max_age_s:
                f.unlink()
                gone += 1
        except OSError:
            pass
    return gone


def _owner_agreement(samples, images) -> float:
    """Class agreement of samples with the owner's own images (evaluator labels): owner-only view."""
    import torch

    from .compare import class_agreement
    from .evaluator import classify

    ev = _evaluator()
    ref = torch.bincount(classify(images, ev), minlength=10).float()
    return class_agreement(classify(samples, ev), ref / ref.sum())


WEIGHTS_WORDS = {name: f.words for name, f in FORMATS.items()}  # by adapter format


def _caption(method: str, report: dict, seconds: float, adapter_format: str = "lora") -> str:
    eps = report.get("epsilon_spent", report["epsilon"])
    eps_text = "∞ (no privacy)" if eps == "inf" else f"{float(eps):.3g}"
    if report.get("refit"):  # post-processing of an earlier release
        return (f"**{method}** — {seconds:.1f} s to {WEIGHTS_WORDS[adapter_format]} and samples; no ε spent (re-uses the release that "
                f"cost ε {eps_text}, δ {report['delta']:g}) · {report.get('note', '')}")
    text = f"**{method}** — {seconds:.1f} s to {WEIGHTS_WORDS[adapter_format]} and samples; ε spent {eps_text}, δ {report['delta']:g}"
    if report.get("epsilon_selection") not in (None, "inf") and report.get("mask") == "private":
        text += (f" (its selection's ε {float(report['epsilon_selection']):.3g} and its DP-SGD's ε "
                 f"{float(report['epsilon_dpsgd_alone']):.3g} alone compose to that) · "
                 f"{report['groups']} of {report['groups_total']} rows trained")
    if report.get("note"):  # a method's plain-language remark on this release (DP outputs only)
        note = report["note"]
        text += f" · **{note}**" if note.startswith("⚠") else f" · {note}"  # a warning must not be missed
    return text


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


def _require(data: dict | None) -> dict:

    if not data or "images" not in data:
        raise UserError("Choose an example set or upload images first.")
    return data


# A Stop and a finishing run race: the page's message must match the ledger (issue 37). One lock per session
# orders them: a run records its events only if no Stop came first, and a Stop that comes after the record says
# so. A session's run states live with its data (one entry per method: its latest run).
_RUN_LOCK = threading.Lock()  # guards the creation of a session's own lock only


def _session_lock(data: dict) -> threading.Lock:
    with _RUN_LOCK:
        return data.setdefault("run_lock", threading.Lock())


def _start_run(data: dict, name: str) -> str:
    """A token for one run of ``name`` in this session (each run its own: a Stop marks every unrecorded run of the
    method, and a run records only if its own token was not stopped)."""
    token = uuid.uuid4().hex
    with _session_lock(data):
        states = data.setdefault("run_states", {}).setdefault(name, {})
        for old in [t for t, st in states.items() if st["recorded"] or st["stopped"]]:
            del states[old]  # settled runs: nothing left to decide for them
        states[token] = {"stopped": False, "recorded": False}
        data.setdefault("latest_run", {})[name] = token
    return token


def _stop_outputs(message: str) -> tuple:
    """The column after Stop: the message, and no samples of an earlier run under it (they would read as the
    cancelled run's); a Stop after a finished run changes nothing."""
    if not message:
        return gr.skip(), gr.skip()
    return message, ([] if "nothing was released" in message else gr.skip())


def stop_message(name: str, data: dict | None) -> str:
    """What the page says when Stop is pressed on ``name``'s column, true to this session's ledger: every run of
    the method that has not recorded its events is stopped (it will record and show nothing); if the latest run
    recorded before Stop came, its ε is in the ledger and the message says so; "" when the latest run had already
    finished (its own caption stays)."""
    from .methods import get_method

    label = get_method(name).label
    if not data:
        return f"**{label}** cancelled: nothing was released and no privacy was spent."
    with _session_lock(data):
        states = data.get("run_states", {}).get(name, {})
        for st in states.values():
            if not st["recorded"]:
                st["stopped"] = True  # a run that finishes after this line records nothing and shows nothing
        latest = states.get(data.get("latest_run", {}).get(name))
        if latest is not None and latest.get("done"):
            return ""  # nothing was running: the finished run's own caption stays
        if latest is not None and latest["recorded"]:
            return (f"**{label}**: Stop came after this run's release was recorded, so its ε is counted in the ledger "
                    "below (counting it is the safe side); its outputs may not be shown.")
    return f"**{label}** cancelled: nothing was released and no privacy was spent."


# ---------------------------------------------------------------- one runner for every registered method


def _run(name: str, images, cfg, progress=None, cancel=None):
    from .memory import release_memory
    from .methods import get_method, run_method

    try:
        return run_method(get_method(name), images, cfg, shared_models(), progress=progress, cancel=cancel)
    finally:
        release_memory()  # a run's freed buffers go back to the system, not into the next visitor's peak


# A one-shot method's GPU part (ZeroGPU may run it in another process): no session state in or out.
_release = gpu(_run)
_train_one_call = gpu(duration=600)(_run)


def _train(name: str, images, cfg, progress, cancel):
    """A training method: in short GPU chunks driven from here when chunking is on (ZeroGPU), else one call."""
    if CHUNK_SECONDS and "chunk_seconds" in {f.name for f in fields(cfg)}:
        return _run(name, images, replace(cfg, chunk_seconds=CHUNK_SECONDS), progress, cancel)
    return _train_one_call(name, images, cfg, progress, cancel)


def _finish(method, result, data: dict, epsilon: float, seconds: float, book: LedgerBook, runs: list,
            log_eps: float, no_privacy: bool, bench_set: str | None, release_tag: str | None = None,
            refit: bool = False, token: str | None = None, keep=None) -> tuple:
    """Record the release in this session's ledger, write the DP outputs, build the column's outputs.

    ``release_tag`` names a release kept for free re-fits; a re-fit's point on the utility plot
    replaces that release's earlier point (one ε spent, one point) instead of adding a star.

    ``book`` and ``runs`` are this session's own objects, updated in place (never copied and
    returned): a run that finishes later cannot overwrite another run's ledger row.
    """
    from .data import to_uint8_images
    from .methods import ADAPTER_FILES, write_outputs

    token = token or _start_run(data, method.name)
    with _session_lock(data):
        state = data["run_states"][method.name].get(token, {"stopped": True, "recorded": False})
        if state["stopped"]:  # Stop came first and told the page "nothing was released": keep it true
            from .errors import Cancelled

            raise UserError(f"{method.label} cancelled: nothing was released and no privacy was spent.") \
                from Cancelled()
        for event in result.events:
            book.record(data["fingerprints"], event, method.name)
        state["recorded"] = True
        if keep is not None:  # a release kept for free re-fits: only once it is in the ledger (never a stopped one)
            data.setdefault("releases", {})[method.name] = keep
    out = _run_dir()
    write_outputs(result, out)
    agreement = _owner_agreement(result.samples, data["images"])
    _plot_point(runs, method, epsilon, agreement, release_tag, refit)
    caption = _caption(method.label, result.report, seconds, result.adapter_format)
    if result.report.get("steps"):
        caption += f" · {result.report['steps']} steps"
    noise_fig = gr.skip()
    if "clean_mean" in result.owner:  # a method that releases a mean embedding: show what the noise did
        noise_fig = noise_figure(result.owner["clean_mean"], result.owner["release"].mean, epsilon)
    with _session_lock(data):
        state["done"] = True  # its outputs go to the page now: a later Stop leaves them and their caption alone
    return (list(to_uint8_images(result.samples)), caption,
            [str(out / ADAPTER_FILES[result.adapter_format]), str(out / "grid.png"), str(out / "report.json")],
            result.report,
            _ledger_markdown(book, data["fingerprints"]), book, runs,
            utility_figure(log_eps, no_privacy, bench_set, runs), noise_fig)


def _plot_point(runs: list, method, epsilon: float, agreement: float, release_tag: str | None, refit: bool) -> None:
    """This session's point of a finished run on the utility plot; a free re-fit replaces its release's point."""
    if refit:
        runs[:] = [r for r in runs if r.get("release") != release_tag]
    runs.append({"method": method.name, "epsilon": epsilon if math.isfinite(epsilon) else 16.0,
                 "agreement": agreement, "release": release_tag,
                 "label": f"{method.label}{' (re-fit)' if refit else ''} ε = {epsilon:.3g}, agreement {agreement:.2f}"})


def _config(method, epsilon: float, delta: float, n_samples: int, max_steps: int = 0):
    kw = {"epsilon": epsilon, "delta": delta, "samples": int(n_samples)}
    names = {f.name for f in fields(method.config_cls)}
    if "max_steps" in names:
        kw["max_steps"] = int(max_steps or 0)
    elif "fit_steps" in names and max_steps:  # slicing: the budget of its (free) fit
        kw["fit_steps"] = int(max_steps)
    try:
        return method.config_cls(**kw)
    except ValueError as exc:
        raise UserError(public_error(exc)) from None


def one_shot_runner(name: str):
    """The click handler of a one-shot method (seconds): inputs data, ε, δ, samples, ledger, runs, curve set."""
    from .methods import get_method

    method = get_method(name)

    def run(data: dict | None, log_eps: float, no_privacy: bool, delta: float, n_samples: int,
            book: LedgerBook, runs: list, bench_set: str | None):
        data = _require(data)
        epsilon = _epsilon(log_eps, no_privacy)
        cfg = _config(method, epsilon, delta, n_samples)
        token = _start_run(data, name)
        t0 = time.perf_counter()
        try:
            result = _release(name, data["images"], cfg)
        except ValueError as exc:
            raise UserError(f"{method.label} failed: {public_error(exc)}") from None
        return _finish(method, result, data, epsilon, time.perf_counter() - t0, book, runs, log_eps, no_privacy,
                       bench_set, token=token)

    run.__name__ = f"run_{name.replace('-', '_')}"
    return run


def _drive(method, job, progress, preparing: str):
    """Run ``job(progress_cb, cancel)`` in a worker thread; yield status lines while it runs, then return
    its result. Cancel (or closing the page) sets the event and the worker stops before releasing."""
    from .errors import Cancelled

    state: dict = {"p": None, "result": None, "error": None}
    cancel = threading.Event()

    def work() -> None:
        try:
            state["result"] = job(lambda p: state.__setitem__("p", p), cancel)
        except Exception as exc:  # noqa: BLE001 - reported to the page below, never a traceback
            state["error"] = exc

    worker = threading.Thread(target=work, daemon=True, name=f"{method.name}-worker")
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.5)
            p = state["p"]
            if p is not None and p.get("desc"):  # a method's own words (slicing's stages and free fit)
                status = p["desc"] + (f" · ETA {p['eta_seconds']:.0f} s" if p.get("eta_seconds") is not None else "…")
            elif p is not None:
                spent = "∞ (no privacy)" if math.isinf(p["epsilon_spent"]) else f"{p['epsilon_spent']:.3g}"
                status = (f"{method.label} step {p['step']} / {p['total']} · ε spent so far {spent} · "
                          f"ETA {p['eta_seconds']:.0f} s")
            else:
                status = preparing
            if p is not None and progress is not None:
                progress((p["step"], p["total"]), desc=status)
            yield status
    finally:
        cancel.set()  # the page was closed or Cancel was pressed: stop the worker (no-op when done)
    if isinstance(state["error"], Cancelled):
        raise UserError(f"{method.label} cancelled: nothing was released and no privacy was spent.")
    if state["error"] is not None:
        raise UserError(f"{method.label} failed: {type(state['error']).__name__}: {public_error(state['error'])}")
    return state["result"]


def training_runner(name: str):
    """The click handler of a training method: a worker thread behind a generator, so the page shows
    progress and Cancel (or closing the page) stops the worker before anything is released."""
    from .methods import get_method

    method = get_method(name)

    def run(data: dict | None, log_eps: float, no_privacy: bool, delta: float, n_samples: int, max_steps: int,
            book: LedgerBook, runs: list, bench_set: str | None, progress=gr.Progress()):
        data = _require(data)
        epsilon = _epsilon(log_eps, no_privacy)
        cfg = _config(method, epsilon, delta, n_samples, max_steps)
        token = _start_run(data, name)
        t0 = time.perf_counter()
        driver = _drive(method, lambda cb, cancel: _train(name, data["images"], cfg, cb, cancel), progress,
                        f"{method.label}: preparing (calibrating the noise with the accountant)…")
        result = yield from _relay(driver)
        tag, keep = None, None
        if method.refit is not None:  # keep the DP release (and its settings) for a free re-fit in this session
            tag = uuid.uuid4().hex[:12]
            keep = (result.owner["release"], cfg, tag)
        yield _finish(method, result, data, epsilon, time.perf_counter() - t0, book, runs, log_eps,
                      no_privacy, bench_set, release_tag=tag, token=token, keep=keep)

    run.__name__ = f"run_{name.replace('-', '_')}"
    return run


def _relay(driver):
    """A driver's status lines as the column's 9 outputs (status in the caption); returns its result.
    Closing this generator (the page closed, Cancel) closes the driver, which cancels its worker."""
    try:
        while True:
            try:
                status = next(driver)
            except StopIteration as stop:
                return stop.value
            yield (gr.skip(), status, *(gr.skip(),) * 7)
    finally:
        driver.close()


def refit_runner(name: str):
    """Re-fit a method's last release in this session: post-processing of a DP output, no ledger entry."""
    from .methods import get_method
    from .methods.base import sample_into

    method = get_method(name)

    def refit(data: dict | None, n_samples: int, max_steps: int, book: LedgerBook, runs: list,
              bench_set: str | None, progress=gr.Progress()):
        data = _require(data)
        kept = data.get("releases", {}).get(name)
        if kept is None:
            raise UserError(f"Run {method.label} on these images first: a re-fit re-uses its release.")
        rel, cfg, tag = kept
        # The step budget means what it means for a run: 0 is the method's default length.
        default_steps = next(f.default for f in fields(method.config_cls) if f.name == "fit_steps")
        cfg = replace(cfg, samples=int(n_samples), fit_seed=None, fit_steps=int(max_steps) or default_steps)
        models = shared_models()
        token = _start_run(data, name)
        t0 = time.perf_counter()

        def job(cb, cancel):
            from .memory import release_memory

            try:
                return sample_into(method, method.refit(rel, cfg, models, progress=cb, cancel=cancel), cfg, models,
                                   cancel=cancel)
            finally:
                release_memory()

        driver = _drive(method, job, progress, f"{method.label}: re-fitting the kept release (no ε)…")
        result = yield from _relay(driver)
        result.report["refit"] = "a re-fit of the session's earlier release: no privacy cost, no ledger entry"
        result.report["note"] = (f"{result.report.get('note', '')} · re-fit: the same weights (a deterministic "
                                 f"function of the release), {cfg.fit_steps} fit steps, a new LoRA seed")
        epsilon = rel.event.epsilon
        log_eps = math.log10(epsilon) if math.isfinite(epsilon) else 0.0
        yield _finish(method, result, data, epsilon, time.perf_counter() - t0, book, runs, log_eps,
                      not math.isfinite(epsilon), bench_set, release_tag=tag, refit=True, token=token)

    refit.__name__ = f"refit_{name.replace('-', '_')}"
    return refit


# ---------------------------------------------------------------- "run it again": the spread of the privacy noise

RERUN_MAX = 8


def rerun_methods() -> list[str]:
    """The methods a class can re-run in seconds: one-shot ones (one Gaussian release each)."""
    from .methods import METHODS

    return [name for name, m in METHODS.items() if m.one_shot]


def rerun_cost(log_eps: float, no_privacy: bool, delta: float, k: int) -> str:
    """What k re-runs will spend, said before the click: k Gaussian releases of multiplier s compose exactly to one
    of multiplier s / sqrt(k) (Gaussian DP), the way the ledger composes them."""
    from .privacy import analytic_gaussian_epsilon, calibrate_gaussian

    k = int(k)
    if no_privacy:
        return f"{k} re-runs without privacy (a reference): nothing is protected, the ledger records them as ε = ∞."
    eps = _epsilon(log_eps, no_privacy)
    s = calibrate_gaussian(epsilon=eps, delta=delta)
    total = analytic_gaussian_epsilon(noise_multiplier=s / math.sqrt(k), delta=delta)
    return (f"Each re-run is a **new release** of your images: {k} runs at ε = {eps:.3g} spend **ε = {total:.3g}** "
            f"together (δ = {delta:g}), and the ledger below will count all of them.")


def rerun(name: str, k: int, data: dict | None, log_eps: float, no_privacy: bool, delta: float, book: LedgerBook,
          runs: list, bench_set: str | None):
    """Run one one-shot method k times at the current ε: each run's first samples in a strip, its class agreement
    as a dot on the curve, and the spread in words. Every run is recorded in the ledger."""
    from .methods import get_method

    data = _require(data)
    if name not in rerun_methods():
        raise UserError(f"Re-runs are for the one-shot methods ({', '.join(rerun_methods())}).")
    method, k = get_method(name), max(2, min(int(k), RERUN_MAX))
    epsilon = _epsilon(log_eps, no_privacy)
    run_once = one_shot_runner(name)  # each re-run is exactly the column's run: its own token, record and point
    strip, agreements, ledger = [], [], None
    for i in range(k):
        # 16 samples for the agreement; the strip shows 4
        gallery, _, _, _, ledger, *_ = run_once(data, log_eps, no_privacy, delta, 16, book, runs, bench_set)
        agreements.append(runs[-1]["agreement"])
        strip += [(img, f"run {i + 1}") for img in gallery[:4]]
    mean = sum(agreements) / k
    sd = math.sqrt(sum((a - mean) ** 2 for a in agreements) / (k - 1))
    text = (f"**{k} runs of {method.label} at ε = {epsilon:.3g}**, the same images, new privacy noise each time: "
            f"class agreement with your images {mean:.2f} ± {sd:.2f} (sd; from {min(agreements):.2f} to "
            f"{max(agreements):.2f}). That spread is the privacy noise: one run is one draw. Each run is a star on "
            "the curve above (only you see these).")
    return strip, text, ledger, book, runs, utility_figure(log_eps, no_privacy, bench_set, runs)


def runner(name: str):
    from .methods import get_method

    return one_shot_runner(name) if get_method(name).one_shot else training_runner(name)


# The stable API names of the first two methods, also importable (tests, notebooks).
run_hypernet = one_shot_runner("hypernet")
run_dpsgd = training_runner("dpsgd")


def methods_plan(data: dict | None, log_eps: float, no_privacy: bool, delta: float, max_steps: int) -> str:
    """What each method with a plan (``Method.plan``) will do for this n and epsilon, in words (computed,
    nothing private shown); methods whose plans read the same share one line."""
    from .methods import METHODS

    if not data:
        return ""
    from .dpsgd import sigma_memo

    epsilon = math.inf if no_privacy else 10 ** log_eps
    lines: dict[str, list[str]] = {}
    # This session's own memo of noise-multiplier searches (it lives with its data and goes with it): never one
    # shared by the server, whose speed would tell a visitor which folder sizes others loaded (issue 37).
    with sigma_memo(data.setdefault("sigma_memo", {})):
        for m in METHODS.values():
            text = m.plan(data["n"], epsilon, delta, int(max_steps or 0)) if m.plan else ""
            if text:
                lines.setdefault(text, []).append(m.label)
    return "  \n".join(f"{' and '.join(labels)} plan: {text}" for text, labels in lines.items())


@gpu
def run_base(n_samples: int, seed: int):
    from .data import to_uint8_images
    from .diffusion import sample

    x = sample(shared_models().unet, int(n_samples), seed=int(seed))
    return list(to_uint8_images(x))


def run_base_compare(n_samples: int):
    t0 = time.perf_counter()
    imgs = run_base(n_samples, 0)
    return imgs, f"**Base model** (no fine-tuning, public only) — {time.perf_counter() - t0:.1f} s; ε spent 0"


# ---------------------------------------------------------------- what the noise did


def _public_map():
    """2-D principal axes of public (train-split) embeddings: fixed axes for the noise view, read from
    the shipped asset (``dphyper.public_map``), so the app starts without the dataset installed."""
    with _lock:
        if "pca" not in _models:
            from .public_map import load

            _models["pca"] = load()
        return _models["pca"]


def noise_figure(clean_mean, noisy_mean, epsilon: float):
    import plotly.graph_objects as go

    from .data import CLASS_NAMES

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


# ---------------------------------------------------------------- audit panel

AUDIT_TEXT = """
**Does the guarantee hold in practice?** The audit runs a mechanism thousands of times on
*public* data, half of the time with one extra "canary" record, and lets an attacker guess
from the output alone whether the canary was there. Its hit rates give a **lower bound on ε**
that holds with 95 % confidence: a correct mechanism can never be caught above its claimed ε.
Pick "simulate a bug" to see the audit catch clipping switched off, noise divided by 10, or
(PDA-DPMD) private images fed in as the "public" batch.
The same audit from a terminal: `python -m dphyper audit --method METHOD --epsilon E` (the result names the exact command).
"""


def run_audit_panel(method: str, epsilon: float, broken: str, trials: float):
    from .audit import AuditConfig, run_audit
    from .methods import METHODS

    m = METHODS.get(method)
    cap = m.audit.max_app_trials if m is not None and m.audit is not None else None
    asked = int(trials)
    trials = asked if cap is None else min(asked, cap)
    try:
        r = run_audit(AuditConfig(method=method, epsilon=float(epsilon), trials=trials, broken=broken), with_scores=True)
    except ValueError as exc:
        raise UserError(public_error(exc)) from None
    from .audit_figure import audit_figure

    fig = audit_figure(r)
    r = {k: v for k, v in r.items() if k != "scores"}  # the JSON view: the verdict, not thousands of scores
    verdict = {"consistent": "✅ consistent with the claim",
               "violated": "❌ the claim is **violated**: the mechanism leaks more than it says",
               "inconclusive": "⚠️ **inconclusive**: this many trials cannot detect a leak at the claimed ε "
                               "(more trials, or a smaller claimed ε)"}[r["verdict"]]
    text = (f"Measured lower bound **ε ≥ {r['epsilon_lower_bound']:.2f}** (95 % confidence) against the claimed "
            f"ε = {r['epsilon_claimed']:g} → {verdict}.  \nA perfect attack on these {r['trials_measured']} "
            f"held-out trials would show ε ≥ {r['detectable_max']:.2f}: no claim above that can be tested here.  \nAttack on {r['trials_measured']} held-out trials: "
            f"true-positive rate {r['tpr']:.3f}, false-positive rate {r['fpr']:.4f}; {r['seconds']:.0f} s.")
    capped = f" (capped from {asked}: each {m.label} trial is a training run)" if trials < asked else ""
    broken_arg = "" if broken == "none" else f" --broken {broken}"
    text += (f"  \n{r['trials']} trials{capped}: half choose the attack's threshold, the other {r['trials_measured']} "
             f"measure it. The same audit: `python -m dphyper audit --method {method} --epsilon {float(epsilon):g} "
             f"--trials {r['trials']}{broken_arg}`")
    return text, fig, r


# Methods and the base model side by side in one row: 7 columns fit a 1,280 px projector without wrapping
# (a wrapped column would stretch to the full width and blow its thumbnails up).
COLUMN_MIN_WIDTH = 150
# Gradio's gallery gives every thumbnail at least 100 px, which overflows a narrow column (half the samples
# cut off): in the methods' galleries thumbnails shrink with their column instead.
CSS = """
.method-gallery .grid-container {
  grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important;
  grid-template-rows: none !important;
  grid-auto-rows: auto !important;
}
.method-gallery .grid-container > * { aspect-ratio: 1 / 1; }
"""


def gallery_columns(shown: int) -> int:
    """Thumbnails per row in each method's gallery when ``shown`` methods (and the base model) sit side by
    side: a 16-sample grid must fit its column without a horizontal scroll (thumbnails stay >= ~85 px)."""
    return 4 if shown <= 2 else 3 if shown == 3 else 2


def _trials_label(methods) -> str:
    """The audit's trial slider label, naming the methods whose app audit is capped (a trial is a training run)."""
    caps: dict[int, list[str]] = {}
    for m in methods.values():
        if m.audit is not None and m.audit.max_app_trials is not None:
            caps.setdefault(m.audit.max_app_trials, []).append(m.label)
    said = "; ".join(f"{' and '.join(labels)}: capped at {cap}" for cap, labels in caps.items())
    return f"Trials ({said})" if said else "Trials"


# ---------------------------------------------------------------- layout

EXPLAIN = """
**What ε and δ mean.** A run is (ε, δ)-differentially private: whichever single image is added
to or removed from your folder, the probability of any output changes by at most a factor
e^ε, except with probability δ. Small ε = strong privacy = more noise. δ should be far below
1/n so that it cannot stand for "leak one image outright".

**Why one-shot noise helps.** DP-SGD adds noise to a high-dimensional gradient at every
training step, and pays for every step. The hypernetwork adds noise **once**, to a
64-number summary of your folder (the clipped mean embedding plus the count), then turns
that noisy summary into LoRA weights in one forward pass.

**When DP-SGD may still win.** The hypernetwork can only produce what its public training
taught it (Fashion-MNIST here). For data unlike the public data, or with a large n and a
large ε, DP-SGD's per-example learning can catch up or win. The plot shows where, measured.

**What is protected.** The LoRA, the samples and the report are DP outputs. Not covered: the
server that receives your upload, and the "only you see this" views (thumbnails, exact
mean, agreement with your own images), which are computed from your raw images and shown
in your session only.
"""


# Events a client should not call (page plumbing): hidden from the API page and from gradio_client. The public
# API is what public_api() lists (a test pins it): load data, a plan, run / re-fit each method, audit, sample.
INTERNAL = dict(api_name=False)  # Gradio: name "false", visibility "private"


def public_api() -> list[str]:
    """The app's public endpoint names, derived from the registry (stable: clients and the README use them)."""
    from .methods import METHODS

    names = ["load_example", "load_upload", "plan", "utility_figure", "sample_base", "audit", "rerun"]
    for name, m in METHODS.items():
        names.append(f"run_{name.replace('-', '_')}")
        if m.refit is not None:
            names.append(f"refit_{name.replace('-', '_')}")
    return names


def build_demo():
    from .audit import audit_variants
    from .methods import METHODS

    variants = audit_variants()
    names = example_names()
    sets = curve_sets()
    # No duration average of any session reaches another (issue 37): see private_blocks.py.
    with PrivateTimingBlocks(title="dphyper", delete_cache=(60, 120)) as demo:
        gr.Markdown("# dphyper — which private way of adapting a diffusion model works best at your ε?")
        # One book per session, mutated in place under its own lock. Values, not factories: Gradio deep-copies a
        # State's value per session (LedgerBook.__deepcopy__), and a factory would be a public /LedgerBook endpoint.
        ledgers = gr.State(LedgerBook())
        runs = gr.State([])
        data = gr.State(None)  # dropped with the whole session when idle (forget_idle_sessions)
        with gr.Tab("Private LoRA: compare the methods"):
            with gr.Row():
                with gr.Column(scale=1):
                    gr.Markdown("### 1 · Your private images")
                    example = gr.Dropdown(names, value=names[0] if names else None, label="Example private set")
                    hosted = hosted_mode()
                    if hosted:
                        gr.Markdown(HOSTED_WARNING, elem_id="hosted-warning")
                    gr.Markdown(f"**…or upload your own** (≤ {MAX_FILE_MB} MB per file, ≤ {MAX_IMAGES} images, ≤ 40 M "
                                "pixels per image; PNG, JPEG, WebP, GIF (first frame), BMP, TIFF; colour becomes grey):"
                                if hosted != "examples" else "Uploads are switched off on this hosted demo.")
                    with gr.Row(visible=hosted != "examples"):
                        folder = gr.File(file_count="directory", label="a folder", height=120)
                        files = gr.File(file_count="multiple", label="or files", file_types=["image"], height=120)
                    overview = gr.Markdown()
                    gr.Markdown("Your images (only you see these; never written to the server's disk):")
                    thumbs = gr.HTML()
                with gr.Column(scale=1):
                    gr.Markdown("### 2 · Privacy budget")
                    log_eps = gr.Slider(-1.0, 1.2, value=0.0, step=0.05, label="log10 ε (−1 → ε = 0.1, 0 → ε = 1, "
                                        "1.2 → ε ≈ 16)")
                    no_privacy = gr.Checkbox(False, label="No privacy (ε = ∞, a reference only)")
                    delta = gr.Number(1e-5, label="δ", minimum=1e-12, maximum=0.1)
                    summary = gr.Markdown(privacy_summary(0.0, False, 1e-5))
            with gr.Row():
                bench_set = gr.Dropdown(sets, value=sets[0] if sets else None, label="Benchmark curves measured on",
                                        scale=1)
            plot = gr.Plot(utility_figure(0.0, False, sets[0] if sets else None), label="Privacy–utility (measured)")
            with gr.Row():
                target = gr.Slider(0.1, 1.0, value=0.7, step=0.05, scale=1,
                                   label="ε from the quality you need: the class agreement you need on this set")
                target_answer = gr.Markdown(quality_for(sets[0] if sets else None, 0.7))
            gr.Markdown("### 3 · Run and compare")
            with gr.Row():
                chosen = gr.CheckboxGroup([(m.label, m.name) for m in METHODS.values()], value=list(METHODS),
                                          label="Methods side by side", scale=2)
                n_samples = gr.Slider(4, 64, value=16, step=4, label="Samples per method", scale=1)
                fits = [m.label for m in METHODS.values() if "fit_steps" in {f.name for f in fields(m.config_cls)}]
                max_steps = gr.Slider(0, 1000, value=0, step=10, label="Step budget of the training methods "
                                      f"(0 = the tuned schedule; {', '.join(fits)}: steps of the free fit)", scale=1)
            plan = gr.Markdown()
            cols: dict[str, dict] = {}
            with gr.Row(equal_height=False):
                for m in METHODS.values():
                    with gr.Column(min_width=COLUMN_MIN_WIDTH) as col:
                        c = cols[m.name] = {"col": col}
                        gr.Markdown(f"**{m.label}** · noise {m.noise}" + (f"  \n*{m.relation}*" if m.relation else ""))
                        with gr.Row():
                            c["go"] = gr.Button(f"{m.label} ({m.duration or ('seconds' if m.one_shot else 'minutes on CPU')})",
                                                variant="primary" if m.one_shot else "secondary")
                            if not m.one_shot:
                                c["stop"] = gr.Button(f"Cancel {m.label}", variant="stop")
                        if m.refit is not None:
                            c["refit"] = gr.Button(f"Re-fit {m.label} from the same release (free: no ε, "
                                                   "no ledger entry)", size="sm")
                        c["gal"] = gr.Gallery(label=m.label, columns=gallery_columns(len(METHODS)), height="auto",
                                              object_fit="contain", elem_classes=["method-gallery"])
                        c["cap"] = gr.Markdown()
                        with gr.Accordion("weights, grid and report.json", open=False):
                            c["dl"] = gr.File(label=f"{m.label}: downloads", file_count="multiple")
                            c["rep"] = gr.JSON(label=f"{m.label} report.json")
                with gr.Column(min_width=COLUMN_MIN_WIDTH):
                    gr.Markdown("**Base model** · no fine-tuning, public only (filled after each run)")
                    gal_b = gr.Gallery(label="Base model", columns=gallery_columns(len(METHODS)), height="auto",
                                       object_fit="contain", elem_classes=["method-gallery"])
                    cap_b = gr.Markdown()
            with gr.Row():
                with gr.Column():
                    gr.Markdown("### Privacy ledger (these images, this tab)")
                    ledger_md = gr.Markdown("No release yet.")
                with gr.Column():
                    noise_plot = gr.Plot(label="What the noise did (data owner's view)")
                    gr.Markdown("Dots: public images (Fashion-MNIST train split), coloured by class. Star: the exact "
                                "mean embedding of your images (only you see it). Cross: what the hypernetwork "
                                "released. Small ε or small n moves the cross further.")
            gr.Markdown("### 4 · Run it again: see the spread of the privacy noise")
            with gr.Row():
                again_method = gr.Dropdown([(METHODS[m].label, m) for m in rerun_methods()],
                                           value=rerun_methods()[0] if rerun_methods() else None,
                                           label="Method (one-shot: seconds a run)", scale=1)
                again_k = gr.Slider(2, RERUN_MAX, value=5, step=1, label="Runs", scale=1)
                again_go = gr.Button("Run it again", scale=1)
            again_cost = gr.Markdown(rerun_cost(0.0, False, 1e-5, 5))
            again_strip = gr.Gallery(label="Each run's first 4 samples (two runs per row)", columns=8, height="auto",
                                     object_fit="contain")
            again_text = gr.Markdown()
            gr.Markdown(EXPLAIN)
        with gr.Tab("Base model (public only)"):
            base_n = gr.Slider(4, 64, value=16, step=4, label="Samples")
            base_seed = gr.Number(0, precision=0, label="Seed")
            base_go = gr.Button("Sample the base model")
            base_gallery = gr.Gallery(columns=8, height=320)
            base_go.click(run_base, [base_n, base_seed], base_gallery, concurrency_limit=2, api_name="sample_base")
        with gr.Tab("Privacy audit"):
            gr.Markdown(AUDIT_TEXT)
            with gr.Row():
                a_method = gr.Radio([(METHODS[m].label, m) for m in variants], value="hypernet",
                                    label="Mechanism")
                a_eps = gr.Slider(0.25, 8, value=1.0, step=0.25, label="ε claimed")
                a_broken = gr.Dropdown(list(variants["hypernet"]), value="none",
                                       label="Simulate a bug (teaching only)")
                a_trials = gr.Slider(200, 20000, value=4000, step=200, label=_trials_label(METHODS))
            a_go = gr.Button("Run the audit (public data only)")
            a_out = gr.Markdown()
            a_plot = gr.Plot(label="The audit as a picture: the attack's scores with and without the canary")
            with gr.Accordion("The audit's result as JSON", open=False):
                a_json = gr.JSON(label="audit result")
            a_method.change(lambda m: gr.update(choices=list(variants[m]), value="none"), a_method, a_broken,
                            queue=False, show_progress="hidden", **INTERNAL)
            a_go.click(run_audit_panel, [a_method, a_eps, a_broken, a_trials], [a_out, a_plot, a_json], concurrency_limit=1,
                       api_name="audit")
        with gr.Tab("Teaching: why one-shot noise helps"):
            from .theory_tab import build_tab

            build_tab()
        with gr.Tab("Lecture: ε step by step"):
            from .lecture import build_tab as build_lecture

            build_lecture()

        def summary_for(le, npv, de, d):
            return privacy_summary(le, npv, de, (d or {}).get("n"))

        # Loading runs in order within a session (_load_lock), never behind another session's load, and
        # computes what depends on n in the same call.
        settings = [log_eps, no_privacy, delta, max_steps]
        loaded = [data, overview, thumbs, summary, plan, bench_set]
        once = dict(concurrency_limit=None)  # no server-wide slot: in order per session (_load_lock), never queued
        demo.load(load_example, [example, *settings], loaded, **once, **INTERNAL)  # clients: /load_example
        example.input(load_example, [example, *settings], loaded, **once, api_name="load_example")
        # After an upload the example dropdown is cleared: the page must not say "bags" over someone's own images.
        folder.upload(load_upload, [files, folder, *settings], [*loaded, files, folder, example], **once, **INTERNAL)
        files.upload(load_upload, [files, folder, *settings], [*loaded, files, folder, example], **once,
                     api_name="load_upload")
        for comp in (log_eps, no_privacy, delta):
            comp.change(summary_for, [log_eps, no_privacy, delta, data], summary, queue=False,
                        show_progress="hidden", **INTERNAL)
        plan_args = dict(fn=methods_plan, inputs=[data, log_eps, no_privacy, delta, max_steps], outputs=plan,
                         show_progress="hidden")
        # One public name for the plan (the slider's event); the other triggers of the same function are internal.
        log_eps.change(**plan_args, trigger_mode="always_last", api_name="plan")
        plan_args.update(INTERNAL)
        # .change, not .release: typing a value or moving the slider with the arrow keys must update the plan
        # too; always_last runs one accountant search at a time (0.3-0.8 s) and then the latest value.
        max_steps.change(**plan_args, trigger_mode="always_last")
        no_privacy.change(**plan_args)
        delta.blur(**plan_args)
        for i, comp in enumerate((log_eps, no_privacy, bench_set)):  # one public name: /utility_figure
            comp.change(utility_figure, [log_eps, no_privacy, bench_set, runs], plot, queue=False,
                        show_progress="hidden", **({"api_name": "utility_figure"} if i == 0 else INTERNAL))
        for comp in (log_eps, no_privacy, delta, again_k):
            comp.change(rerun_cost, [log_eps, no_privacy, delta, again_k], again_cost, queue=False,
                        show_progress="hidden", **INTERNAL)
        again_go.click(rerun, [again_method, again_k, data, log_eps, no_privacy, delta, ledgers, runs, bench_set],
                       [again_strip, again_text, ledger_md, ledgers, runs, plot], concurrency_limit=2,
                       concurrency_id="rerun", api_name="rerun")
        for comp in (target, bench_set):
            comp.change(quality_for, [bench_set, target], target_answer, queue=False, show_progress="hidden",
                        **INTERNAL)
        for name, c in cols.items():
            method = METHODS[name]
            ins = [data, log_eps, no_privacy, delta, n_samples, *([] if method.one_shot else [max_steps]),
                   ledgers, runs, bench_set]
            outs = [c["gal"], c["cap"], c["dl"], c["rep"], ledger_md, ledgers, runs, plot, noise_plot]
            # API names are stable: /run_hypernet, /run_dpsgd, /run_pda_dpmd, ...
            ev = c["go"].click(runner(name), ins, outs, concurrency_limit=2 if method.one_shot else 1,
                               concurrency_id=f"run-{name}", api_name=f"run_{name.replace('-', '_')}")
            # The base model's column refreshes after a run that finished (not after a cancelled or failed one).
            ev.success(run_base_compare, [n_samples], [gal_b, cap_b], concurrency_limit=2, concurrency_id="base",
                       **INTERNAL)
            cancellable = [ev]
            if "refit" in c:
                again = c["refit"].click(refit_runner(name), [data, n_samples, max_steps, ledgers, runs, bench_set],
                                         outs, concurrency_limit=1, concurrency_id=f"refit-{name}",
                                         api_name=f"refit_{name.replace('-', '_')}")
                # A free re-fit has its own slot: one visitor's re-fit never queues another's first run.
                again.success(run_base_compare, [n_samples], [gal_b, cap_b], concurrency_limit=2, concurrency_id="base",
                              **INTERNAL)
                cancellable.append(again)
            if "stop" in c:
                # Gradio stops the event before the worker's own message can reach the page: say it here.
                # stop_message orders itself with the run's ledger record (one lock per session).
                c["stop"].click(lambda d, name=name: _stop_outputs(stop_message(name, d)), data, [c["cap"], c["gal"]],
                                cancels=cancellable, queue=False, **INTERNAL)
        def show_methods(picked):  # the picked columns, and thumbnails that fit their width
            per_row = gallery_columns(len(picked or []))
            return ([gr.update(visible=n in (picked or [])) for n in cols] +
                    [gr.update(columns=per_row) for _ in range(len(cols) + 1)])  # each method's gallery, then the base's

        chosen.change(show_methods, chosen, [c["col"] for c in cols.values()] + [c["gal"] for c in cols.values()] + [gal_b],
                      queue=False, show_progress="hidden", **INTERNAL)

        def on_unload(request: gr.Request) -> None:  # the tab was closed or reloaded
            forget_session(demo, request.session_hash)

        demo.unload(on_unload)
    demo.queue(default_concurrency_limit=2, max_size=32)
    _start_sweeper(demo)
    return demo


# ---------------------------------------------------------------- session hygiene


def forget_session(demo: gr.Blocks, session_hash: str) -> None:
    """Drop everything Gradio keeps for one session: State values *and* every component's last
    value (thumbnails, file names in the overview, n, the exact-mean plot), not only ``gr.State``."""
    holder = getattr(demo, "state_holder", None)
    if holder is None or session_hash not in holder.session_data:
        return
    with _LOAD_LOCKS_GUARD:
        _LOAD_LOCKS.pop(session_hash, None)
    holder.delete_state(session_hash)  # runs the State components' delete callbacks
    with holder.lock:
        holder.session_data.pop(session_hash, None)
        holder.time_last_used.pop(session_hash, None)


def forget_idle_sessions(demo: gr.Blocks, max_idle_s: float = SESSION_TTL_S) -> int:
    """Forget every session with no event for ``max_idle_s`` seconds; returns how many went."""
    import datetime

    holder = getattr(demo, "state_holder", None)
    if holder is None:
        return 0
    now = datetime.datetime.now()
    with holder.lock:
        idle = [sid for sid, t in holder.time_last_used.items() if (now - t).total_seconds() >= max_idle_s]
    for sid in idle:
        forget_session(demo, sid)
    return len(idle)


def _start_sweeper(demo: gr.Blocks, every_s: float = 60.0) -> None:
    """A daemon thread that forgets idle sessions (and sweeps the upload cache's leftovers) every minute while
    the demo exists."""
    import weakref

    ref = weakref.ref(demo)

    def loop() -> None:
        while True:
            time.sleep(every_s)
            d = ref()
            if d is None:
                return
            forget_idle_sessions(d)
            _sweep_upload_leftovers()
            del d

    threading.Thread(target=loop, daemon=True, name="dphyper-session-sweeper").start()


def prepare_temp_dir() -> None:
    """The app's own upload cache, emptied at start (a crash must not leave uploads behind)."""
    if TEMP_DIR.exists():
        shutil.rmtree(TEMP_DIR, ignore_errors=True)
    TEMP_DIR.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(TEMP_DIR)


def warm_up() -> None:
    """Load every public model before serving, so the first user does not wait for it."""
    m = shared_models()
    for part in ("unet", "encoder", "hypernet", "evaluator"):
        getattr(m, part)
    _public_map()


def launch(**kwargs):
    from .memory import limit_arenas

    limit_arenas()  # before Gradio starts its worker threads (memory.py: the per-run peaks)
    prepare_temp_dir()
    warm_up()
    demo = build_demo()
    # Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Gradio reads them).
    return demo.launch(max_file_size=f"{MAX_FILE_MB}mb", css=CSS, **kwargs)


if __name__ == "__main__":  # pragma: no cover
    launch()
