"""A guided path for a class (issue 38): the flagship on one bundled example set, from no privacy down to a
small ε, one step at a time, one variable at a time, with a sentence per step; it ends at the audit.

Only ε changes between steps. The sampling seed is fixed, so two steps' pictures start from the same noise
and differ by what the privacy noise did; the privacy noise itself is fresh on every run (it is never
seeded), so pressing a step again shows another draw at the same ε. The set is a bundled example (public
Fashion-MNIST test images), not a visitor's folder: no ledger row, nothing private in or out.
"""

from __future__ import annotations

import math
import time

EXAMPLE = "sneakers"
SAMPLES = 16
SEED = 0
DISPLAY_SCALE = 3
STEPS: tuple[tuple[float, str], ...] = (
    (math.inf, "**No privacy.** The hypernetwork reads the exact mean embedding of the 200 sneakers and turns it "
               "into a LoRA in one pass: the samples are sneakers. This is the picture privacy will cost us."),
    (8.0, "**ε = 8.** One Gaussian draw is added to that mean before anything else sees it. At this ε the noise is "
          "small next to the signal of 200 images: the samples barely change."),
    (2.0, "**ε = 2.** Four times less budget, a noise four times larger. Same seed, same images: what changes "
          "between this picture and the last is only the noise draw."),
    (1.0, "**ε = 1.** The usual research default. Press the step again: a new noise draw gives a new LoRA at the "
          "same ε — this run-to-run spread is what the benchmark's intervals measure."),
    (0.5, "**ε = 0.5.** The noise now rivals the signal of 200 images; the hypernetwork was trained on noisy "
          "releases like this one and falls back towards the base model when the signal is weak."),
    (0.25, "**ε = 0.25.** Mostly noise: expect samples close to the base model's mix of every class. More images "
           "(a larger n) would buy the signal back at the same ε — the noise on the mean shrinks like 1/n."),
)
AUDIT_SENTENCE = ("**Last step: check the claim.** The *Privacy audit* tab runs this very mechanism thousands of "
                  "times with and without one extra 'canary' image and shows how well the best attack tells the two "
                  "apart; the largest ε that attack proves must stay below the ε we claimed.")


def step_text(k: int, report: dict | None = None, seconds: float | None = None) -> str:
    """The sentence of step ``k`` (0-based; ``len(STEPS)`` is the audit), with the run's facts when given."""
    from .quality_target import plain_epsilon

    if k >= len(STEPS):
        return AUDIT_SENTENCE
    eps, sentence = STEPS[k]
    parts = [f"Step {k + 1} of {len(STEPS) + 1}. {sentence}", plain_epsilon(eps, 1e-5)]
    if report:
        noise = report.get("noise_std_of_mean")
        facts = []
        if noise is not None and math.isfinite(eps):
            facts.append(f"noise on the mean embedding: σ = {noise:.3g} per coordinate")
        if report.get("noisy_count") is not None and math.isfinite(eps):
            facts.append(f"the noisy count read {report['noisy_count']:g} (true: 200)")
        if seconds is not None:
            facts.append(f"this step took {seconds:.1f} s")
        if facts:
            parts.append("; ".join(facts) + ".")
    return "\n\n".join(parts)


def run_step(k: int, models=None) -> tuple[object, str]:
    """Run the flagship at step ``k``'s ε on the example set: (the samples as a grid image, the step's text)."""
    from .config import EXAMPLES_DIR
    from .data import load_folder, make_grid
    from .methods import FLAGSHIP, get_method, run_method
    from .models import shared_models

    if not 0 <= k < len(STEPS):
        raise ValueError(f"step {k}: the lecture has steps 0..{len(STEPS) - 1} before the audit")
    eps = STEPS[k][0]
    images = load_folder(EXAMPLES_DIR / EXAMPLE).images
    m = get_method(FLAGSHIP)
    t0 = time.perf_counter()
    r = run_method(m, images, m.config_cls(epsilon=eps, samples=SAMPLES, seed=SEED), models or shared_models())
    grid = make_grid(r.samples)
    # 32-pixel images on a projector: enlarged, with hard pixel edges (no blur)
    grid = grid.resize((grid.width * DISPLAY_SCALE, grid.height * DISPLAY_SCALE), resample=0)
    return grid, step_text(k, r.report, time.perf_counter() - t0)


def build_tab() -> None:
    import gradio as gr

    gr.Markdown("### A lecture in seven steps\nOne example set (200 sneakers, public images), one method (the "
                "hypernetwork), one variable (ε), one fixed sampling seed. Press **Next step**; each step takes a "
                "few seconds on a laptop CPU.")
    step = gr.State(-1)
    with gr.Row():
        back = gr.Button("◀ Previous step")
        again = gr.Button("Run this step again (a new noise draw)")
        nxt = gr.Button("Next step ▶", variant="primary")
    with gr.Row():
        picture = gr.Image(label="16 samples (same seed at every step)", type="pil", height=460)
        text = gr.Markdown("Press **Next step** to start with no privacy.")

    def show(k: int):
        k = max(0, min(k, len(STEPS)))
        if k == len(STEPS):
            return k, gr.update(), step_text(k)
        grid, words = run_step(k)
        return k, grid, words

    private = dict(api_visibility="private")
    nxt.click(lambda k: show(k + 1), step, [step, picture, text], **private)
    back.click(lambda k: show(k - 1), step, [step, picture, text], **private)
    again.click(lambda k: show(max(k, 0)), step, [step, picture, text], **private)
