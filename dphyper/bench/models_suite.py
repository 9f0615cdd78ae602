"""The public models, the hypernetwork's private path on the example sets, and P1."""

from __future__ import annotations

import json
import math
import time

import torch

from ..config import ASSETS_DIR, REPO_DIR
from ..hypernet import HYPERNET_PATH
from ..markdown_sections import write_section
from .common import BenchConfig, _json, machine


def bench_models(cfg: BenchConfig) -> dict:
    from ..data import load_fashion_mnist
    from ..diffusion import load_unet, sample
    from ..evaluator import class_histogram, classify, fid_kid, load_evaluator

    g = torch.Generator().manual_seed(cfg.seed)
    xt, yt = load_fashion_mnist("test")
    xtr, _ = load_fashion_mnist("train")
    ev = load_evaluator()
    res: dict = {"machine": machine()}
    res["evaluator_test_accuracy"] = float((classify(xt, ev) == yt).float().mean())
    ref = xt[torch.randperm(len(xt), generator=g)[: cfg.samples]]
    unet = load_unet()
    sample(unet, 2, steps=2, seed=0)  # warm-up
    t0 = time.perf_counter()
    sample(unet, 16, steps=cfg.steps, seed=cfg.seed)
    res["sample_16_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = sample(unet, cfg.samples, steps=cfg.steps, seed=cfg.seed)
    res["sample_n_seconds"] = time.perf_counter() - t0
    res["base_vs_test"] = fid_kid(gen, ref)
    res["train_vs_test_floor"] = fid_kid(xtr[torch.randperm(len(xtr), generator=g)[: cfg.samples]], ref)
    res["noise_vs_test_ceiling"] = fid_kid(torch.rand(cfg.samples, 1, 32, 32, generator=g) * 2 - 1, ref)
    res["base_class_histogram"] = class_histogram(gen, ev)
    res["n"] = cfg.samples
    res["steps"] = cfg.steps
    res["training"] = {
        "base": _json(ASSETS_DIR / "base_unet" / "training.json").get("summary", {}),
        "encoder": _json(ASSETS_DIR / "encoder" / "encoder.json"),
        "evaluator": _json(ASSETS_DIR / "evaluator" / "evaluator.json"),
        "hypernetwork": _json(HYPERNET_PATH.with_suffix(".json")).get("summary", {}),
    }
    t = res["training"]
    rows = [
        "## Public models (`python -m dphyper bench --suite models`)",
        "",
        f"Machine: {res['machine']}. Seeds: {cfg.seed}. DDIM steps: {cfg.steps}.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| evaluator accuracy, Fashion-MNIST test (10,000) | {res['evaluator_test_accuracy']:.4f} |",
        f"| FID base samples vs test ({cfg.samples} vs {cfg.samples}) | {res['base_vs_test']['fid']:.2f} |",
        f"| KID base vs test | {res['base_vs_test']['kid_mean']:.4f} ± {res['base_vs_test']['kid_std']:.4f} |",
        f"| FID train vs test (floor) | {res['train_vs_test_floor']['fid']:.2f} |",
        f"| FID uniform noise vs test (ceiling) | {res['noise_vs_test_ceiling']['fid']:.2f} |",
        f"| time to sample 16 images ({cfg.steps} DDIM steps) | {res['sample_16_seconds']:.2f} s |",
        f"| time to sample {cfg.samples} images | {res['sample_n_seconds']:.1f} s |",
        "",
        f"Base-sample class histogram (evaluator): {res['base_class_histogram']}",
        "",
        "Training (2-core CPU, shared with other jobs while they ran; resumable chunks):",
        "",
        "| checkpoint | command | steps / epochs | seconds | result |",
        "|---|---|---|---|---|",
        f"| base UNet | `python -m dphyper train base` | {t['base'].get('steps')} steps × 64 | "
        f"{t['base'].get('train_seconds')} | final loss {t['base'].get('final_loss')} |",
        f"| encoder φ | `python -m dphyper train encoder --epochs 1` | {t['encoder'].get('epochs')} epochs | "
        f"{t['encoder'].get('train_seconds')} | zero-shot test accuracy {t['encoder'].get('test_zero_shot_accuracy')} |",
        f"| evaluator | `python -m dphyper train evaluator --epochs 3` | {t['evaluator'].get('epochs')} epochs | "
        f"{t['evaluator'].get('train_seconds')} | test accuracy {t['evaluator'].get('test_accuracy')} |",
        f"| hypernetwork | {_hypernet_command(t['hypernetwork'])} | {t['hypernetwork'].get('steps')} steps | "
        f"{t['hypernetwork'].get('train_seconds')} | final loss {t['hypernetwork'].get('final_loss')} |",
    ]
    write_section(cfg.doc, "models", "\n".join(rows))
    return res


def _hypernet_command(summary: dict) -> str:
    """How the shipped H was trained: anchored from the start, or resumed with the anchor on, or (issue 18)
    the average of snapshots of one run."""
    a, steps, r = summary.get("anchor_from_step"), summary.get("steps"), summary.get("anchor_radius")
    if summary.get("averaged_steps"):
        snaps = summary["averaged_steps"]
        kept = summary.get("kept_from_first")
        return (f"`python -m dphyper train hypernet --no-anchor --max-steps {snaps[0]}`, continued to "
                f"{', '.join(str(t) for t in snaps[1:])} steps (`scripts/hypernet_continue.py`), the anchor added to each "
                f"snapshot (radius {r}), then `scripts/hypernet_average.py` over the {len(snaps)} snapshots"
                + (f" (`--keep {kept}`: the first snapshot's {kept})" if kept else "")
                + "; chosen on public sets (`scripts/hypernet_select.py`)")
    if a and a == steps:
        return (f"`python -m dphyper train hypernet --no-anchor --max-steps {a}`, then the same command without "
                f"`--no-anchor` (adds the anchor, radius {r}, no further steps)")
    if a:
        return (f"`python -m dphyper train hypernet --no-anchor --max-steps {a}`, then the same command "
                f"with the anchor (default, radius {r}) and `--max-steps {steps}`")
    return "`python -m dphyper train hypernet`" + ("" if a == 0 else " (before the anchor existed)")


def bench_hypernet(cfg: BenchConfig) -> dict:
    from PIL import Image

    from ..data import load_fashion_mnist, load_folder, make_grid
    from ..diffusion import sample
    from ..evaluator import class_agreement as agreement, classify, fid_kid, load_evaluator
    from ..examples import EXAMPLE_SETS, heldout_images
    from ..methods.hypernet import HypernetPipeline

    pipe = HypernetPipeline()
    ev = load_evaluator()
    res: dict = {"machine": machine(), "sets": {}}
    xt, _ = load_fashion_mnist("test")
    t0 = time.perf_counter()
    pipe.run(xt[:200], epsilon=1.0, samples=16, steps=cfg.steps)
    res["n200_to_16_samples_seconds"] = time.perf_counter() - t0

    base = sample(pipe.unet, cfg.set_samples, steps=cfg.steps, seed=cfg.seed)
    base_pred = classify(base, ev)
    rows = [
        "## Hypernetwork private path (`python -m dphyper bench --suite hypernet`)",
        "",
        f"Machine: {res['machine']}. {cfg.set_samples} samples per cell, {cfg.steps} DDIM steps, sampling seed "
        f"{cfg.seed}; privacy noise is OS-seeded (one draw per cell).",
        "",
        "- P1 (embed + privatise + generate LoRA, n = 1,000): see the `p1` section below.",
        f"- 200 images → 16 samples (embed, release, LoRA, {cfg.steps}-step sampling): "
        f"{res['n200_to_16_samples_seconds']:.2f} s",
        "",
        "Class agreement = share of samples the evaluator puts in the set's classes (for `mixed`, "
        "1 − total-variation distance between the sample and uniform class histograms). FID/KID "
        "against the set's held-out test images (same definition, disjoint from the set).",
        "",
        "| set | n held-out | method | ε | class agreement | FID | KID |",
        "|---|---|---|---|---|---|---|",
    ]

    figure_rows = [base[:10]]
    for s in EXAMPLE_SETS:
        private = load_folder(ASSETS_DIR / "examples" / s.name).images
        held = heldout_images(s.name)
        cell = {"base": {"agreement": agreement(base_pred, s.classes), **fid_kid(base, held)}}
        rows.append(f"| {s.name} | {len(held)} | base model | – | {cell['base']['agreement']:.3f} | "
                    f"{cell['base']['fid']:.2f} | {cell['base']['kid_mean']:.4f} |")
        for eps in (math.inf, 1.0):
            r = pipe.run(private, epsilon=eps, samples=cfg.set_samples, steps=cfg.steps, seed=cfg.seed)
            pred = classify(r.samples, ev)
            key = "inf" if math.isinf(eps) else str(eps)
            cell[key] = {"agreement": agreement(pred, s.classes), **fid_kid(r.samples, held),
                         "noisy_count": r.release.noisy_count}
            if eps == 1.0:
                figure_rows.append(r.samples[:10])
            rows.append(f"| {s.name} | {len(held)} | hypernet | {'∞' if math.isinf(eps) else eps} | "
                        f"{cell[key]['agreement']:.3f} | {cell[key]['fid']:.2f} | {cell[key]['kid_mean']:.4f} |")
        res["sets"][s.name] = cell
        print(s.name, json.dumps(cell), flush=True)
    # The README figure: base model, then the epsilon = 1 LoRA of each example set, a row each.
    make_grid(torch.cat(figure_rows), ncol=10).resize((10 * 34 * 2 + 4, len(figure_rows) * 34 * 2 + 4),
                                                      Image.Resampling.NEAREST).save(REPO_DIR / "docs" / "samples.png")
    rows += ["", "`docs/samples.png`: first row the base model, then one row per set above (ε = 1), "
             "same sampling seed."]
    write_section(cfg.doc, "hypernet", "\n".join(rows))  # the suite's own section of BENCHMARKS
    return res


def bench_p1(cfg: BenchConfig) -> dict:
    """P1: embed + privatise + generate LoRA for n = 1,000 images (sampling excluded)."""
    from ..data import load_fashion_mnist
    from ..methods.hypernet import HypernetPipeline

    pipe = HypernetPipeline()
    xt, _ = load_fashion_mnist("test")
    x1000 = xt[:1000]
    pipe.run(x1000[:64], epsilon=1.0, samples=0)  # warm-up
    times, stages = [], []
    for _ in range(7):
        r = pipe.run(x1000, epsilon=1.0, samples=0)
        s = {k: round(v, 4) for k, v in r.timings.items()}
        times.append(s["embed"] + s["privatise"] + s["generate_lora"])
        stages.append(s)
    order = sorted(range(len(times)), key=times.__getitem__)
    med = order[len(order) // 2]
    res = {"machine": machine(), "p1_seconds_median": times[med], "p1_seconds_all": times, "stages": stages[med]}
    rows = ["## P1: private path to a LoRA (`python -m dphyper bench --suite p1`)", "",
            f"Machine: {res['machine']}. n = 1,000 Fashion-MNIST test images as the private folder, ε = 1.", "",
            f"- embed + privatise + generate LoRA: **{times[med]:.3f} s** (median of 7; min {min(times):.3f}, "
            f"max {max(times):.3f})",
            f"- stages of the median run: embed {stages[med]['embed']:.3f} s, privatise {stages[med]['privatise']:.4f} s, "
            f"generate LoRA {stages[med]['generate_lora']:.4f} s (sampling excluded)"]
    write_section(cfg.doc, "p1", "\n".join(rows))
    return res
