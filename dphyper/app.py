"""The Gradio UI. ``app.py`` at the top level only builds and launches it.

Privacy in the app:
* public models are loaded once per process (they hold no private data);
* everything about an upload lives in the session (``gr.State``): the ledger of releases
  per dataset, the last result. Nothing private is kept at module level or logged;
* uploads go to the app's own ``GRADIO_TEMP_DIR`` (cleaned at start) and are deleted by
  ``delete_cache``; the run's own outputs go to a per-run temporary folder that only
  holds DP outputs (LoRA, samples, report).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path

from .config import EXAMPLES_DIR, REPO_DIR

TEMP_DIR = Path(os.environ.get("DPHYPER_TEMP_DIR", REPO_DIR / ".gradio_tmp"))
MAX_FILE_MB = 10
MAX_IMAGES = 2000

_lock = threading.Lock()
_models: dict[str, object] = {}


def _pipeline():
    with _lock:
        if "pipe" not in _models:
            from .pipeline import HypernetPipeline

            _models["pipe"] = HypernetPipeline()
        return _models["pipe"]


def example_names() -> list[str]:
    return sorted(p.name for p in EXAMPLES_DIR.iterdir() if p.is_dir()) if EXAMPLES_DIR.exists() else []


def privacy_summary(log_eps: float, no_privacy: bool, delta: float) -> str:
    from .privacy import calibrate_gaussian

    if no_privacy:
        return "**No privacy** (ε = ∞): the exact mean embedding is used. A non-private reference only."
    eps = 10 ** log_eps
    s = calibrate_gaussian(epsilon=eps, delta=delta)
    return (f"**ε = {eps:.3g}**, δ = {delta:g} (the chance the guarantee fails outright; keep it below 1/n). "
            f"Noise multiplier σ/Δ = **{s:.3f}**: the released sum of n embeddings of norm ≤ 1 gets Gaussian "
            f"noise of std {s * math.sqrt(2):.2f} per coordinate, so for n = 200 the mean moves by about "
            f"{s * math.sqrt(2) / 200 * 8:.3f} (norm) — for n = 1000 by {s * math.sqrt(2) / 1000 * 8:.3f}.")


def _dataset_key(images) -> str:
    # Identifies "the same folder" for the ledger; kept in session state only, never shown.
    return hashlib.sha256(images.numpy().tobytes()).hexdigest()


def _ledger_markdown(ledgers: dict, key: str | None) -> str:
    from .privacy import PrivacyLedger

    if not key or key not in ledgers:
        return "No release on this dataset yet."
    ledger: PrivacyLedger = ledgers[key]
    rows = ["| # | method | ε | δ | σ/Δ |", "|---|---|---|---|---|"]
    for i, e in enumerate(ledger.events, 1):
        rows.append(f"| {i} | {e.mechanism} | {e.epsilon:.3g} | {e.delta:g} | {e.noise_multiplier:.3f} |")
    eps, delta = ledger.total()
    rows.append("")
    rows.append(f"**Total spent on this dataset: ε = {eps:.3g}, δ = {delta:g}** (Gaussian releases compose "
                "exactly; every new run on the same data costs more privacy).")
    return "\n".join(rows)


def run_hypernet(example: str | None, files: list | None, log_eps: float, no_privacy: bool, delta: float,
                 n_samples: int, ledgers: dict | None):
    """One private run; returns (gallery, report, downloads, ledger markdown, rejected, state)."""
    import gradio as gr

    from .data import DataError, load_folder, load_images
    from .pipeline import write_outputs
    from .privacy import PrivacyLedger

    ledgers = dict(ledgers or {})
    try:
        if files:
            loaded = load_images([Path(getattr(f, "name", f)) for f in files], max_images=MAX_IMAGES)
        elif example:
            loaded = load_folder(EXAMPLES_DIR / example)
        else:
            raise DataError("Choose an example set or upload images first.")
    except DataError as exc:
        raise gr.Error(str(exc)) from None
    epsilon = math.inf if no_privacy else 10 ** log_eps
    result = _pipeline().run(loaded.images, epsilon=epsilon, delta=delta, samples=int(n_samples))
    key = _dataset_key(loaded.images)
    ledger = ledgers.setdefault(key, PrivacyLedger())
    ledger.record(result.release.event)
    _sweep_old_runs()
    out = Path(tempfile.mkdtemp(prefix="run-", dir=TEMP_DIR))
    write_outputs(result, out)
    from .data import to_uint8_images

    gallery = list(to_uint8_images(result.samples))
    rejected = "\n".join(f"- {name}: {why}" for name, why in loaded.rejected) or "none"
    info = f"{loaded.n} images used; rejected: {rejected}"
    return (gallery, result.report, [str(out / "lora.safetensors"), str(out / "grid.png"), str(out / "report.json")],
            _ledger_markdown(ledgers, key), info, ledgers)


def _sweep_old_runs(max_age_s: float = 600.0) -> None:
    """Delete run folders (DP outputs already copied into Gradio's cache) older than max_age_s."""
    import time

    for d in TEMP_DIR.glob("run-*"):
        try:
            if time.time() - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def run_base(n_samples: int, seed: int):
    from .data import to_uint8_images
    from .diffusion import sample

    x = sample(_pipeline().unet, int(n_samples), seed=int(seed))
    return list(to_uint8_images(x))


EXPLAIN = """
**What ε means.** A run is (ε, δ)-differentially private: whatever one image is added to or
removed from your folder, the probability of any output changes by at most a factor e^ε
(plus δ). Small ε = strong privacy = more noise.

**Why one-shot noise helps.** DP-SGD adds noise to a high-dimensional gradient at every
training step. The hypernetwork adds noise **once**, to a 64-number summary of your folder
(the clipped mean embedding), then turns that noisy summary into LoRA weights in one
forward pass. Its weakness: it can only produce what public training taught it, so data
unlike the public data (Fashion-MNIST here) is where DP-SGD may win.
"""


def build_demo():
    import gradio as gr

    names = example_names()
    with gr.Blocks(title="dphyper", delete_cache=(60, 120)) as demo:
        gr.Markdown("# dphyper — a differentially private LoRA in one forward pass")
        ledgers = gr.State({})
        with gr.Tab("Private LoRA (hypernetwork)"):
            with gr.Row():
                with gr.Column():
                    example = gr.Dropdown(names, value=names[0] if names else None, label="Example private set")
                    files = gr.File(file_count="multiple", label=f"…or upload images (≤ {MAX_FILE_MB} MB each, "
                                    f"≤ {MAX_IMAGES} images; replaces the example)", file_types=["image"])
                    log_eps = gr.Slider(-1.0, 1.2, value=0.0, step=0.05, label="log10 ε (−1 → ε = 0.1, 1.2 → ε ≈ 16)")
                    no_privacy = gr.Checkbox(False, label="No privacy (ε = ∞, reference only)")
                    delta = gr.Number(1e-5, label="δ", minimum=1e-12, maximum=0.1)
                    summary = gr.Markdown(privacy_summary(0.0, False, 1e-5))
                    n_samples = gr.Slider(4, 64, value=16, step=4, label="Samples")
                    go = gr.Button("Generate with the hypernetwork", variant="primary")
                with gr.Column():
                    gallery = gr.Gallery(label="Samples with the DP LoRA", columns=8, height=320)
                    info = gr.Markdown()
                    downloads = gr.File(label="Downloads (DP outputs only)", file_count="multiple")
                    ledger_md = gr.Markdown("No release yet.", label="Privacy ledger")
                    report = gr.JSON(label="report.json")
            gr.Markdown(EXPLAIN)
        with gr.Tab("Base model (public only)"):
            base_n = gr.Slider(4, 64, value=16, step=4, label="Samples")
            base_seed = gr.Number(0, precision=0, label="Seed")
            base_go = gr.Button("Sample the base model")
            base_gallery = gr.Gallery(columns=8, height=320)
            base_go.click(run_base, [base_n, base_seed], base_gallery, concurrency_limit=2)
        with gr.Tab("Teaching: why one-shot noise helps"):
            from .theory_tab import build_tab

            build_tab()
        for comp in (log_eps, no_privacy, delta):
            comp.change(privacy_summary, [log_eps, no_privacy, delta], summary, queue=False, show_progress="hidden")
        go.click(run_hypernet, [example, files, log_eps, no_privacy, delta, n_samples, ledgers],
                 [gallery, report, downloads, ledger_md, info, ledgers], concurrency_limit=2)
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


def prepare_temp_dir() -> None:
    """The app's own upload cache, emptied at start (a crash must not leave uploads behind)."""
    if TEMP_DIR.exists():
        shutil.rmtree(TEMP_DIR, ignore_errors=True)
    TEMP_DIR.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(TEMP_DIR)


def launch(**kwargs):
    prepare_temp_dir()
    demo = build_demo()
    # Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Gradio reads them).
    return demo.launch(max_file_size=f"{MAX_FILE_MB}mb", **kwargs)


if __name__ == "__main__":  # pragma: no cover
    launch()
