"""One runner for every registered method: run, cancel, re-fit, and the outputs of a finished run."""

from __future__ import annotations

from dataclasses import fields
from dataclasses import replace
from pathlib import Path
import gradio as gr
import math
import shutil
import tempfile
import threading
import time
import uuid

from ..gpu import CHUNK_SECONDS
from ..gpu import gpu
from ..ledger import LedgerBook
from ..models import shared_models
from .budget import _epsilon
import dphyper.app.common as common  # the module: tests replace TEMP_DIR and MAX_IMAGES there
from .common import UserError, _evaluator, public_error
from .figures import utility_figure
from .ledger_view import _caption, _ledger_markdown
from .noise_view import noise_figure


def _run_dir() -> Path:
    _sweep_old_runs()
    common.TEMP_DIR.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=common.TEMP_DIR))


def _sweep_old_runs(max_age_s: float = 600.0) -> None:
    """Delete run folders (DP outputs already copied into Gradio's cache) older than max_age_s."""
    for d in common.TEMP_DIR.glob("run-*"):
        try:
            if time.time() - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def _owner_agreement(samples, images) -> float:
    """Class agreement of samples with the owner's own images (evaluator labels): owner-only view."""
    import torch

    from ..compare import class_agreement
    from ..evaluator import classify

    ev = _evaluator()
    ref = torch.bincount(classify(images, ev), minlength=10).float()
    return class_agreement(classify(samples, ev), ref / ref.sum())




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
    from ..methods import get_method

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
    from ..memory import release_memory
    from ..methods import get_method, run_method

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
    from ..data import to_uint8_images
    from ..methods import ADAPTER_FILES, write_outputs

    token = token or _start_run(data, method.name)
    with _session_lock(data):
        state = data["run_states"][method.name].get(token, {"stopped": True, "recorded": False})
        if state["stopped"]:  # Stop came first and told the page "nothing was released": keep it true
            from ..errors import Cancelled

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
    if result.noise_view is not None:  # a method that releases a mean embedding: show what the noise did
        noise_fig = noise_figure(result.noise_view.exact, result.noise_view.released, epsilon)
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
    if method.budget is not None and max_steps:  # 0 = the method's tuned schedule
        kw.update(method.budget(int(max_steps)))
    try:
        return method.config_cls(**kw)
    except ValueError as exc:
        raise UserError(public_error(exc)) from None


def one_shot_runner(name: str):
    """The click handler of a one-shot method (seconds): inputs data, ε, δ, samples, ledger, runs, curve set."""
    from ..methods import get_method

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


def _drive(method, job, progress, preparing: str, on_release=None):
    """Run ``job(progress_cb, cancel)`` in a worker thread; yield status lines while it runs, then return
    its result. Cancel (or closing the page) sets the event and the worker stops before releasing. A run that
    failed after its release hands the release's events to ``on_release`` (the ledger) before the error."""
    from ..errors import Cancelled, FailedAfterRelease

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
    if isinstance(state["error"], FailedAfterRelease) and on_release is not None:
        on_release(state["error"].events)
        raise UserError(f"{method.label} failed after its release ({public_error(state['error'])}): nothing was "
                        "shown, but the release was made, so its ε is counted in the ledger.")
    if state["error"] is not None:
        raise UserError(f"{method.label} failed: {type(state['error']).__name__}: {public_error(state['error'])}")
    return state["result"]


def training_runner(name: str):
    """The click handler of a training method: a worker thread behind a generator, so the page shows
    progress and Cancel (or closing the page) stops the worker before anything is released."""
    from ..methods import get_method

    method = get_method(name)

    def run(data: dict | None, log_eps: float, no_privacy: bool, delta: float, n_samples: int, max_steps: int,
            book: LedgerBook, runs: list, bench_set: str | None, progress=gr.Progress()):
        data = _require(data)
        epsilon = _epsilon(log_eps, no_privacy)
        cfg = _config(method, epsilon, delta, n_samples, max_steps)
        token = _start_run(data, name)
        t0 = time.perf_counter()
        def counted(events) -> None:
            for e in events:
                book.record(data["fingerprints"], e, method.name)

        driver = _drive(method, lambda cb, cancel: _train(name, data["images"], cfg, cb, cancel), progress,
                        f"{method.label}: preparing (calibrating the noise with the accountant)…", on_release=counted)
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
    from ..methods import get_method
    from ..methods.base import budget_value, refit_config, sample_into

    method = get_method(name)

    def refit(data: dict | None, n_samples: int, max_steps: int, book: LedgerBook, runs: list,
              bench_set: str | None, progress=gr.Progress()):
        data = _require(data)
        kept = data.get("releases", {}).get(name)
        if kept is None:
            raise UserError(f"Run {method.label} on these images first: a re-fit re-uses its release.")
        rel, cfg, tag = kept
        # The step budget means what it means for a run: 0 is the method's default length.
        cfg = refit_config(method, cfg, n_samples, max_steps)
        models = shared_models()
        token = _start_run(data, name)
        t0 = time.perf_counter()

        def job(cb, cancel):
            from ..memory import release_memory

            try:
                return sample_into(method, method.refit(rel, cfg, models, progress=cb, cancel=cancel), cfg, models,
                                   cancel=cancel)
            finally:
                release_memory()

        driver = _drive(method, job, progress, f"{method.label}: re-fitting the kept release (no ε)…")
        result = yield from _relay(driver)
        result.report["refit"] = "a re-fit of the session's earlier release: no privacy cost, no ledger entry"
        fresh = f", a new {' and '.join(f.replace('_', ' ') for f in method.refit_fresh)}" if method.refit_fresh else ""
        result.report["note"] = (f"{result.report.get('note', '')} · this re-fit: the same release (what the fit "
                                 f"does with it is a function of the release), {budget_value(method, cfg)} "
                                 f"{method.budget_unit}{fresh}")
        epsilon = rel.event.epsilon
        log_eps = math.log10(epsilon) if math.isfinite(epsilon) else 0.0
        yield _finish(method, result, data, epsilon, time.perf_counter() - t0, book, runs, log_eps,
                      not math.isfinite(epsilon), bench_set, release_tag=tag, refit=True, token=token)

    refit.__name__ = f"refit_{name.replace('-', '_')}"
    return refit
