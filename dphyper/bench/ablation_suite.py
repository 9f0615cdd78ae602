"""The seed paper's referee's ablations (issue 41, item 4): H's capacity and φ's embedding dimension,
`python -m dphyper bench --suite ablation`.

Each variant of H (width of its hidden layers, number of hidden blocks) is trained from scratch by the documented
trainer (``train_hypernet``, what `python -m dphyper train hypernet` runs) with one recipe: the trainer's
defaults, the same seed, the same public sets and the same step budget (``--train-steps``); only the ablated
setting differs. The reference size is retrained under the same budget, so every variant is compared with its
equal, not with the shipped H (whose recipe ran 5,435 steps, 1.8 h on the 2-core CPU, then averaged snapshots).
A φ variant first trains its encoder by the shipped encoder's command (`train encoder --epochs 1`) with another
``--embed-dim``, then today's H size on it, under the same budget; it is compared with the same reference (H of
today's size on the shipped 64-d φ). The reach check's public bank is 64-d, so a φ variant's runs record its
verdict as unavailable; their FID does not depend on it.

Training is resumable in chunks (``--train-minutes``; the trainer keeps its whole state in ``runs/ablation/``).
A variant is scored once its training reached the budget: the flagship's own comparison cell (``compare.run_cell``:
release, LoRA, samples, FID against the set's reference) with the variant's H in place of the shipped one, at
ε = 1 and ∞ on the development sets, ``--repeats`` runs each with the sampling seed of the run index, so the
variants' runs pair up and the evidence rule's paired interval says win, tie or loss against the reference.

Cells go to ``bench/ablation.json`` keyed by the variant's recipe (its training settings, the encoder's and the
base UNet's files), so a later session reuses them without the trained files. Nothing private is read: the
development sets are benchmark sets, the privacy noise is the release's own.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

from ..config import REPO_DIR
from ..markdown_sections import write_section
from .common import BenchConfig, _json, machine

# name -> what differs from the trainer's defaults; the first is today's size (the reference).
VARIANTS = {
    "h256x1": {"hidden": 256, "depth": 1},
    "h128x1": {"hidden": 128, "depth": 1},
    "h512x2": {"hidden": 512, "depth": 2},
    "phi32": {"embed_dim": 32},
    "phi128": {"embed_dim": 128},
}
REFERENCE = next(iter(VARIANTS))
ENCODER_RECIPE = {"epochs": 1}  # the shipped φ's command: `python -m dphyper train encoder --epochs 1`
SHIPPED_STEPS = 5435  # assets/hypernet/hypernet.json: the shipped H's training steps
EPSILONS = (1.0, math.inf)
DEV_SETS = ("sneakers-100", "least-seen-100", "knn-1000", "mixed-1000")
WORK = REPO_DIR / "runs" / "ablation"
RESULTS = REPO_DIR / "bench" / "ablation.json"
# Settings that do not change what is trained (where, how long per call, how often saved, threads).
_NOT_RECIPE = {"out", "work_dir", "minutes", "save_every", "threads", "max_steps", "encoder", "state", "max_minutes",
               "chunk_steps", "eval_images"}


def _h_settings(variant: str) -> dict:
    return {k: v for k, v in VARIANTS[variant].items() if k != "embed_dim"}


def _encoder_config(variant: str, minutes: float):
    """A φ variant's encoder: the shipped encoder's command with another embedding dimension (None: the shipped φ)."""
    from ..encoder import EncoderTrainConfig

    if "embed_dim" not in VARIANTS[variant]:
        return None
    return replace(EncoderTrainConfig(), out=WORK / variant / "encoder.safetensors", max_minutes=minutes,
                   embed_dim=VARIANTS[variant]["embed_dim"], **ENCODER_RECIPE)


def _train_config(variant: str, steps: int, minutes: float):
    from ..encoder import ENCODER_PATH
    from ..train_hypernet import HypernetTrainConfig

    enc = _encoder_config(variant, 0.0)
    return replace(HypernetTrainConfig(), out=WORK / variant / "hypernet.safetensors", work_dir=WORK / variant,
                   max_steps=steps, minutes=minutes or 1e9, encoder=enc.out if enc else ENCODER_PATH,
                   **_h_settings(variant))


def recipe_id(variant: str, steps: int) -> str:
    """What a variant's cells depend on: its training settings, the budget and the files it trains against
    (the shipped φ's digest, or a φ variant's own training settings)."""
    from ..checkpoints import base_unet_id, encoder_id

    recipe = lambda cfg: {k: str(v) for k, v in asdict(cfg).items() if k not in _NOT_RECIPE}  # noqa: E731
    enc = _encoder_config(variant, 0.0)
    blob = {"train": recipe(_train_config(variant, steps, 0.0)), "steps": steps,
            "encoder": recipe(enc) if enc else encoder_id(), "base_unet": base_unet_id()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def _trained_steps(variant: str) -> int:
    import torch

    state = WORK / variant / "state.pt"
    return int(torch.load(state, map_location="cpu", weights_only=False)["step"]) if state.exists() else 0


class _WithHypernet:
    """The shared models with one H (and a φ variant's encoder) swapped in: the cell's only difference from a
    flagship comparison cell."""

    def __init__(self, models, hypernet, encoder=None) -> None:
        self._models, self.hypernet = models, hypernet
        if encoder is not None:
            self.encoder = encoder

    def __getattr__(self, name):
        return getattr(self._models, name)


def bench_ablation(cfg: BenchConfig) -> dict:
    from ..compare import _save, _set_data, run_cell
    from ..bench_sets import BENCH_SETS
    from ..encoder import load_encoder
    from ..hypernet import load_hypernet
    from ..methods import FLAGSHIP
    from ..models import shared_models
    from ..train_hypernet import train_hypernet

    steps = cfg.train_steps
    sets = tuple(s for s in cfg.sets.split(",") if s) or DEV_SETS
    by_name = {s.name: s for s in BENCH_SETS}
    bad = [s for s in sets if s not in by_name or by_name[s].role != "development"]
    if bad:
        raise ValueError(f"--sets: {bad} are not development sets; the ablation runs on {DEV_SETS}")
    res = _json(RESULTS) or {"cells": {}, "variants": {}}
    if not cfg.report_only:
        t_call = time.perf_counter()
        for v in VARIANTS:
            left = cfg.train_minutes - (time.perf_counter() - t_call) / 60 if cfg.train_minutes else 0.0
            rid = recipe_id(v, steps)
            if res["variants"].get(v, {}).get("recipe") == rid or (cfg.train_minutes and left <= 0):
                continue  # trained and scored before (cells stored), or this call's training time is spent
            enc = _encoder_config(v, max(left, 0.0))
            if enc is not None and not Path(enc.out).exists():
                from ..encoder import train_encoder

                done = train_encoder(enc)
                print(f"{v}: encoder {'trained' if done['done'] else 'continues next call'} "
                      f"({done['train_seconds']:.0f} s)", flush=True)
                if not done["done"]:
                    continue
                left = cfg.train_minutes - (time.perf_counter() - t_call) / 60 if cfg.train_minutes else 0.0
                if cfg.train_minutes and left <= 0:
                    continue
            if _trained_steps(v) < steps or not (WORK / v / "hypernet.safetensors").exists():
                summary = train_hypernet(_train_config(v, steps, max(left, 0.0)))
                print(f"{v}: step {summary['steps']} of {steps}, loss {summary['final_loss']}", flush=True)
                if summary["steps"] < steps:
                    continue  # resumes on the next call
            summary = json.loads((WORK / v / "hypernet.json").read_text())["summary"]
            hcfg = _train_config(v, steps, 0.0)
            res["variants"][v] = {"recipe": rid, "steps": summary["steps"], "train_seconds": summary["train_seconds"],
                                  "final_loss": summary["final_loss"], "hidden": hcfg.hidden, "depth": hcfg.depth,
                                  "embed_dim": VARIANTS[v].get("embed_dim", 64)}
            if enc is not None:
                trained = json.loads(Path(enc.out).with_suffix(".json").read_text())
                res["variants"][v]["encoder"] = {k: x for k, x in trained.items() if k != "loss_history"}
            _save(RESULTS, res)  # never half-written
        models = shared_models()
        for v, info in res["variants"].items():
            if v not in VARIANTS or info["recipe"] != recipe_id(v, steps) or not (WORK / v).exists():
                continue
            h = None
            for rep in range(cfg.repeats):
                for s in sets:
                    for eps in EPSILONS:
                        key = f"{v}|{info['recipe']}|{s}|{eps}|rep{rep}|k{cfg.compare_samples}"
                        if key in res["cells"]:
                            continue
                        if h is None:
                            h = load_hypernet(models.unet, WORK / v / "hypernet.safetensors", device=models.device)
                            phi_file = _train_config(v, steps, 0.0).encoder
                            phi = load_encoder(phi_file, device=models.device) if "embed_dim" in VARIANTS[v] else None
                        cell = run_cell(FLAGSHIP, eps, _set_data(by_name[s], str(REPO_DIR / "bench")),
                                        _WithHypernet(models, h, phi), samples=cfg.compare_samples, steps=cfg.steps,
                                        seed=cfg.seed + rep)
                        cell.update({"set": s, "variant": v, "recipe": info["recipe"], "repeat": rep})
                        res["cells"][key] = cell
                        _save(RESULTS, res)  # never half-written
                        print(f"{key}: FID {cell['fid']:.1f} ({cell['seconds_cell']:.0f} s)", flush=True)
    write_section(cfg.doc, "ablation", report(res, steps, cfg.compare_samples))
    return {"variants": res["variants"], "cells": len(res["cells"]), "file": str(RESULTS)}


def _runs(res: dict, variant: str, s: str, eps: float, samples: int) -> list[dict]:
    rid = res["variants"].get(variant, {}).get("recipe")
    return [c for c in res["cells"].values() if c["variant"] == variant and c["recipe"] == rid and c["set"] == s
            and c["epsilon"] == ("inf" if math.isinf(eps) else eps) and c["samples"] == samples]


def _shipped_runs(samples: int) -> dict:
    """(set, ε) -> the shipped flagship's FIDs in the comparison's stored cells (``bench/results.json``)."""
    from ..methods import FLAGSHIP

    out: dict = {}
    for c in _json(REPO_DIR / "bench" / "results.json").get("cells", {}).values():
        if c.get("method") == FLAGSHIP and c.get("samples") == samples:
            out.setdefault((c["set"], c["epsilon"]), []).append(c["fid"])
    return out


def _fmt(fids: list[float]) -> str:
    """'mean ± 95 % half-width (runs)'; no half-width for one run."""
    from ..evidence import mean_interval

    iv = mean_interval(fids)
    return f"{iv['mean']:.1f}" + ("" if math.isnan(iv["half_width"]) else f" ± {iv['half_width']:.1f}") + f" ({iv['runs']})"


def report(res: dict, steps: int, samples: int) -> str:
    """BENCHMARKS' ablation section, generated from ``bench/ablation.json``."""
    from ..evidence import paired_runs

    rows = ["## The hypernetwork's capacity, ablated (`python -m dphyper bench --suite ablation`)", "",
            f"Machine: {machine()}. Each H trained from scratch by `train_hypernet` with the trainer's defaults, "
            f"seed 0 and the same budget of {steps} steps ({100 * steps / SHIPPED_STEPS:.0f} % of the shipped recipe's "
            f"{SHIPPED_STEPS:,}; only width and depth, or φ's dimension, differ; today's size, 256 wide with one "
            "hidden block on the shipped 64-d φ, retrained the same way, is the reference). Each cell: the flagship's "
            f"comparison cell with that H, {samples} samples, 25 DDIM steps, sampling seed = run index (paired across "
            "variants), new privacy noise per run. A win or loss needs the paired 95 % interval of the FID "
            "difference to exclude 0.", ""]
    done = {v: i for v, i in res.get("variants", {}).items() if v in VARIANTS}
    if not done:
        return "\n".join(rows + ["No variant has finished its training yet."])
    rows += ["| variant | φ dimension | H: hidden × blocks | parameters of H's trunk | steps | training of H | final "
             "loss |", "|---|---|---|---|---|---|---|"]
    for v, i in done.items():
        d = i.get("embed_dim", 64)
        trunk = (2 * d + 2) * i["hidden"] + i["hidden"] + i["depth"] * (i["hidden"] ** 2 + 3 * i["hidden"])
        if "encoder" in i:
            d = (f"{d} (its φ: {i['encoder']['train_seconds'] / 60:.0f} min, zero-shot "
                 f"{i['encoder'].get('test_zero_shot_accuracy', float('nan')):.3f})")
        loss = "–" if i["final_loss"] is None else f"{i['final_loss']:.4f}"  # logged every 25 steps
        name = f"{v} (reference)" if v == REFERENCE else v
        rows.append(f"| {name} | {d} | {i['hidden']} × {i['depth']} | {trunk:,} | {i['steps']} |"
                    f" {i['train_seconds'] / 60:.1f} min | {loss} |")
    sets = sorted({c["set"] for c in res["cells"].values()})
    shipped = _shipped_runs(samples)
    rows += ["", "FID, mean ± 95 % half-width (runs); against the reference: paired difference and verdict. The last "
             "column is the shipped H (its full recipe) in the comparison's stored cells, for scale:", "",
             "| set | ε | " + " | ".join(done) + " | shipped H |", "|---|---|" + "---|" * (len(done) + 1)]
    for s in sets:
        for eps in EPSILONS:
            ref = _runs(res, REFERENCE, s, eps, samples)
            fids = shipped.get((s, "inf" if math.isinf(eps) else eps), [])
            cells = []
            for v in done:
                runs = _runs(res, v, s, eps, samples)
                if not runs:
                    cells.append("")
                    continue
                text = _fmt([r["fid"] for r in runs])
                d = paired_runs(runs, ref) if v != REFERENCE else None
                if d:
                    text += f"; {d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] {d['verdict']}"
                cells.append(text)
            cells.append(_fmt(fids) if fids else "")
            rows.append(f"| {s} | {'∞' if math.isinf(eps) else f'{eps:g}'} | " + " | ".join(cells) + " |")
    missing = [v for v in VARIANTS if v not in done]
    rows += ["", f"Cost of the shipped recipe instead ({SHIPPED_STEPS:,} steps, 6,320 s for today's H on this machine): "
             "about 1.8 h per variant, plus 0.5 h for each φ variant's encoder (one epoch, as shipped). A GPU machine, "
             f"when one is lent, takes them by the same command with `--train-steps {SHIPPED_STEPS}`."
             + (f" Not trained yet at this budget: {', '.join(missing)}." if missing else "")]
    return "\n".join(rows)
