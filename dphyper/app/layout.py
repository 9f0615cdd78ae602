"""The page: ``build_demo`` (every component and event) and the public API it exposes."""

from __future__ import annotations

import gradio as gr

from ..adapters import FORMATS
from ..ledger import LedgerBook
from ..private_blocks import PrivateTimingBlocks
from .audit_panel import AUDIT_TEXT, _trials_label, run_audit_panel
from .budget import methods_plan
import dphyper.app.common as common  # the module: tests replace TEMP_DIR and MAX_IMAGES there
from .common import HOSTED_WARNING, MAX_FILE_MB, example_names, hosted_mode
from .data_in import load_example, load_upload
from .figures import curve_sets, privacy_summary, quality_for, utility_figure
from .spread import RERUN_MAX, rerun, rerun_cost, rerun_methods, run_base, run_base_compare, runner
from .runs import _stop_outputs, refit_runner, stop_message
from .session import _start_sweeper, forget_session


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

**Where another method wins, measured.** {where}
The hypernetwork can only produce what its public training taught it (Fashion-MNIST here): data unlike the
public data is where a method that learns from each example should catch up. {shift}

**What is protected.** The LoRA, the samples and the report are DP outputs. Not covered: the
server that receives your upload, and the "only you see this" views (thumbnails, exact
mean, agreement with your own images), which are computed from your raw images and shown
in your session only.
"""


# Events a client should not call (page plumbing): hidden from the API page and from gradio_client. The public
# API is what public_api() lists (a test pins it): load data, a plan, run / re-fit each method, audit, sample.
INTERNAL = dict(api_name=False)  # Gradio: name "false", visibility "private"


def where_others_win() -> str:
    """The benchmark's own answer (one run per cell): where a method's FID is below the hypernetwork's."""
    from ..methods import FLAGSHIP, METHODS
    from ..quality_target import below_flagship
    from .figures import _curves

    lines = below_flagship(_curves(), {k: m.label for k, m in METHODS.items()}, FLAGSHIP)
    if not lines:
        return f"On the benchmark's sets no method's FID is below the {METHODS[FLAGSHIP].label.lower()}'s at any ε."
    return (f"On the benchmark's sets (a cell's mean FID over its runs, most cells one run, against the "
            f"{METHODS[FLAGSHIP].label.lower()}'s): "
            + "; ".join(lines) + ". A gap smaller than the sampling spread of one run (an sd of 7–9 FID) is not "
            "evidence either way.")


def shifted_data_line() -> str:
    """The shifted-data benchmark's generated sentence (the README's too), from its stored curves."""
    from ..methods import FLAGSHIP, METHODS
    from ..shift_report import load, readme_block

    curv = load()
    if not curv:
        return "The shifted-data benchmark that measures it has not run yet."
    return "(`bench --suite shift`) " + readme_block(curv, {k: m.label for k, m in METHODS.items()}, FLAGSHIP)


def public_api() -> list[str]:
    """The app's public endpoint names, derived from the registry (stable: clients and the README use them)."""
    from ..methods import METHODS

    names = ["load_example", "load_upload", "plan", "utility_figure", "sample_base", "audit", "rerun"]
    for name, m in METHODS.items():
        names.append(f"run_{name.replace('-', '_')}")
        if m.refit is not None:
            names.append(f"refit_{name.replace('-', '_')}")
    return names


def build_demo():
    from ..audit import audit_variants
    from ..methods import FLAGSHIP, METHODS

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
                    gr.Markdown(f"**…or upload your own** (≤ {MAX_FILE_MB} MB per file, ≤ {common.MAX_IMAGES} images, ≤ 40 M "
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
                units: dict[str, list[str]] = {}
                for m in METHODS.values():
                    if m.budget is not None:
                        units.setdefault(m.budget_unit, []).append(m.label)
                max_steps = gr.Slider(0, 1000, value=0, step=10, label="Step budget of the training methods "
                                      "(0 = the tuned schedule; " + "; ".join(
                                          f"{', '.join(labels)}: {unit}" for unit, labels in units.items()) + ")",
                                      scale=1)
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
                        with gr.Accordion(f"{FORMATS[m.adapter_format].noun.strip('()')}, grid and report.json",
                                          open=False):
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
            gr.Markdown(EXPLAIN.format(where=where_others_win(), shift=shifted_data_line()))
        with gr.Tab("Base model (public only)"):
            base_n = gr.Slider(4, 64, value=16, step=4, label="Samples")
            base_seed = gr.Number(0, precision=0, label="Seed")
            base_go = gr.Button("Sample the base model")
            base_gallery = gr.Gallery(columns=8, height=320)
            base_go.click(run_base, [base_n, base_seed], base_gallery, concurrency_limit=2, api_name="sample_base")
        with gr.Tab("Privacy audit"):
            gr.Markdown(AUDIT_TEXT)
            with gr.Row():
                a_method = gr.Radio([(METHODS[m].label, m) for m in variants], value=FLAGSHIP,
                                    label="Mechanism")
                a_eps = gr.Slider(0.25, 8, value=1.0, step=0.25, label="ε claimed")
                a_broken = gr.Dropdown(list(variants[FLAGSHIP]), value="none",
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
            from ..theory_tab import build_tab

            build_tab()
        with gr.Tab("Lecture: ε step by step"):
            from ..lecture import build_tab as build_lecture

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
