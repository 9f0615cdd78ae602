"""The privacy-utility benchmark: hypernetwork vs DP-SGD vs non-private LoRA vs base model.

``python -m dphyper bench [--quick]`` (suite ``compare``) runs every method at every
epsilon on private sets drawn from the Fashion-MNIST **test** split (no model of dphyper
trains on it) and scores the samples with the evaluator against held-out images of the
same definition: FID, KID and class agreement (1 - total-variation distance between the
samples' predicted-class histogram and the reference's true-label histogram).

``python -m dphyper bench --suite dpsgd-sweep`` chooses DP-SGD's hyperparameters on
**public** sets from the train split (never on a benchmark or user set) and prints the
winner; the winner is what ``DPSGDConfig`` ships as defaults.

Both are resumable: every finished cell is stored in ``bench/*.json`` and a rerun with the
same settings skips it, so a long run can be split into chunks.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import ASSETS_DIR, REPO_DIR
from .privacy import DEFAULT_DELTA

EPSILONS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
QUICK_EPSILONS = (0.25, 1.0, 4.0)
# The seed paper's range runs to 2^10: ``--epsilons`` may ask for these too (issues 34 and 41), beyond the grid the
# tables and the app's curves are drawn on.
WIDE_EPSILONS = (16.0, 64.0, 1024.0)
DELTA = DEFAULT_DELTA  # every private method in the benchmark
SET_SEED = 2026
CURVES_PATH = ASSETS_DIR / "curves" / "privacy_utility.json"


# The sets (development, public tuning, shifted, fresh test) live in ``bench_sets``; re-exported here.
from .bench_sets import (BENCH_SETS, FREEZE_PATH, FULL_SETS, KNN_SWEEP_SETS, QUICK_SETS, SWEEP_FAMILIES,  # noqa: E402,F401
                         SWEEP_SETS, TEST_SETS, BenchSet, check_frozen)


# ---------------------------------------------------------------- sets


def _split_embeddings(split: str, cache_dir: Path) -> torch.Tensor:
    """phi of every image of a split, cached like the hypernetwork's public embeddings."""
    from .data import load_fashion_mnist
    from .train_hypernet import public_embeddings

    return public_embeddings(load_fashion_mnist(split)[0], cache_dir / f"{split}_embeddings.pt")


def training_exposure(cache_dir: Path, draws: int = 3000, seed: int = 1) -> dict:
    """How often each class dominated a public set drawn by the hypernetwork's training sampler.

    Replays ``PublicSetSampler`` (same configuration as the shipped training) on the train
    split's embeddings and counts, per class, the sets in which it is the majority class and
    its share of all images. The class that dominates the fewest sets is the one whose
    single-class sets H saw least.
    """
    from .data import load_fashion_mnist_uint8
    from .train_hypernet import HypernetTrainConfig, PublicSetSampler

    emb = _split_embeddings("train", cache_dir)
    _, labels = load_fashion_mnist_uint8("train")
    y = torch.as_tensor(labels).long()
    sampler = PublicSetSampler(emb, HypernetTrainConfig(), torch.Generator().manual_seed(seed))
    share, majority = torch.zeros(10), torch.zeros(10)
    for _ in range(draws):
        h = torch.bincount(y[sampler.draw()], minlength=10).float()
        share += h / h.sum()
        majority[h.argmax()] += 1
    return {"draws": draws, "seed": seed, "majority_sets": majority.int().tolist(),
            "image_share": (share / draws).round(decimals=4).tolist(),
            "least_seen_class": int(majority.argmin())}


def build_set(s: BenchSet, cache_dir: Path, seed: int = SET_SEED, max_reference: int = 1000) -> dict:
    """Private images and their held-out reference (same definition, disjoint), as tensors."""
    from .data import CLASS_NAMES, load_fashion_mnist_uint8, uint8_to_tensor

    if s.kind == "shifted":
        from .shifted_sets import build_shifted

        return build_shifted(s.name, max_reference)
    images, labels = load_fashion_mnist_uint8(s.split)
    rng = np.random.default_rng(seed + sum(ord(c) for c in s.name))
    classes = s.classes
    note = ""
    if s.kind == "least-seen":
        expo = training_exposure(cache_dir)
        classes = (expo["least_seen_class"],)
        note = (f"class {CLASS_NAMES[classes[0]]}: majority of {min(expo['majority_sets'])} of {expo['draws']} "
                f"replayed training sets (others {sorted(expo['majority_sets'])[1]}..{max(expo['majority_sets'])})")
    ref_source = s.split
    if s.kind == "knn":
        emb = _split_embeddings(s.split, cache_dir)
        anchor = int(rng.integers(len(emb)))
        near = torch.topk(emb @ emb[anchor], 2 * s.n).indices.numpy()
        perm = rng.permutation(near)
        chosen, held = np.sort(perm[: s.n]), perm[s.n:]
        ref_images, ref_labels = images[held], labels[held]
        hist = np.bincount(labels[near], minlength=10)
        note = f"{2 * s.n} nearest {s.split} images (phi space) of {s.split} image {anchor}, split at random; labels " + \
            ", ".join(f"{CLASS_NAMES[c]} {hist[c]}" for c in np.argsort(-hist) if hist[c])
    else:
        per_class = [s.n // len(classes) + (1 if i < s.n % len(classes) else 0) for i in range(len(classes))]
        chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
                                         for c, k in zip(classes, per_class)]))
        held = rng.permutation(np.setdiff1d(np.flatnonzero(np.isin(labels, classes)), chosen))
        ref_images, ref_labels = images[held], labels[held]
        if len(held) < 500:  # e.g. 1,000 test images of one class are all private: use public ones
            timg, tlab = load_fashion_mnist_uint8("train")
            pool = rng.permutation(np.flatnonzero(np.isin(tlab, classes)))
            ref_images, ref_labels = timg[pool], tlab[pool]
            ref_source = "train"
    ref_images, ref_labels = ref_images[:max_reference], ref_labels[:max_reference]
    ref_hist = np.bincount(ref_labels, minlength=10) / len(ref_labels)
    return {"private": uint8_to_tensor(images[chosen]), "reference": uint8_to_tensor(ref_images),
            "reference_hist": torch.tensor(ref_hist, dtype=torch.float32),
            "info": {"name": s.name, "kind": s.kind, "n": s.n, "split": s.split, "role": s.role,
                     "classes": [CLASS_NAMES[c] for c in classes], "n_reference": int(len(ref_images)),
                     "reference_from": ref_source, "seed": seed, "note": note}}


def class_agreement(pred: torch.Tensor, reference_hist: torch.Tensor) -> float:
    """1 - TV distance between the predicted-class histogram and the reference label histogram."""
    hist = torch.bincount(pred, minlength=len(reference_hist)).float() / max(len(pred), 1)
    return float(1 - 0.5 * (hist - reference_hist).abs().sum())


# ---------------------------------------------------------------- one cell


def method_id(name: str, overrides: dict | None = None, n: int | None = None) -> str:
    """What a stored cell of this method depends on: its shipped defaults/checkpoints and the overrides.

    A method with per-size defaults (a ``tuned`` table: DP-SGD, PDA-DPMD, DP sparse) depends, for a set of n
    images, only on the row that applies to n: re-tuning the n = 1,000 regime leaves the n = 100 cells valid."""
    from .dpsgd import tuned_defaults
    from .floor import floor_id
    from .methods import get_method

    ident = {"floor": floor_id()} if name == "nonprivate" else {} if name == "base" else get_method(name).identity()
    if n is not None and "tuned" in ident:
        ident = {**ident, "tuned": tuned_defaults(n, tuple(ident["tuned"]))}
    ident = {**ident, "base_unet": base_unet_id()}  # every method adapts (and samples from) the base UNet
    blob = json.dumps({"id": ident, "overrides": overrides or {}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


REPORT_EXTRAS = ("noise_multiplier", "noisy_count", "steps", "sample_rate", "epsilon_spent", "lr", "batch_size",
                 "max_grad_norm", "accountant", "epochs", "public_batch_size", "shrinkage", "step_norm", "model_calls")


def _progress_log(msg: str) -> None:
    """Long cells report progress on stderr (public settings and public-set losses only)."""
    import sys

    print(msg, file=sys.stderr, flush=True)


def run_cell(method: str, epsilon: float, data: dict, models, *, samples: int, steps: int, seed: int,
             overrides: dict | None = None) -> dict:
    """Run one method (any registered one, 'nonprivate' = the converged floor, or 'base') and score it."""
    from .diffusion import sample
    from .evaluator import classify, fid_kid
    from .lora import lora_model_fn
    from .methods import get_method, run_method

    t0 = time.perf_counter()
    extra: dict = {}
    if method == "base":
        x = sample(models.unet, samples, steps=steps, seed=seed)
        to_lora = 0.0
    elif method == "nonprivate":
        from .floor import FloorConfig, train_floor

        fl = train_floor(data["private"], data["reference"], FloorConfig(**(overrides or {})), device=models.device,
                         log=_progress_log)
        x = sample(models.unet, samples, steps=steps, seed=seed, model_fn=lora_model_fn(models.unet, fl["lora"]))
        to_lora = fl["seconds"]
        extra = {k: fl[k] for k in ("best_step", "steps", "epochs", "stopped", "best_loss", "base_loss",
                                    "seconds_per_step", "batch_size")}
        extra["loss_curve"] = fl["curve"]
    else:
        m = get_method(method)
        cfg = m.config_cls(epsilon=epsilon, delta=DELTA, samples=samples, steps=steps, seed=seed, **(overrides or {}))
        r = run_method(m, data["private"], cfg, models)
        x = r.samples
        to_lora = r.timings["to_adapter"]
        extra = {k: r.report[k] for k in REPORT_EXTRAS if k in r.report}
        if isinstance(r.report.get("reach"), dict):  # the reach check's verdict on this run's release (issue 41)
            extra["reach"] = {k: r.report["reach"].get(k) for k in ("verdict", "distance", "bound")}
        if r.losses:
            extra["final_loss"] = float(np.mean(r.losses[-10:]))
        if r.report.get("steps"):
            extra["seconds_per_step"] = to_lora / r.report["steps"]
    pred = classify(x, models.evaluator)
    metrics = fid_kid(x, data["reference"])
    return {"method": method, "epsilon": "inf" if math.isinf(epsilon) else epsilon, "samples": int(len(x)),
            "sampling_seed": seed, "sampling_steps": steps, "n_reference": int(len(data["reference"])),
            "fid": metrics["fid"], "kid": metrics["kid_mean"], "agreement": class_agreement(pred, data["reference_hist"]),
            **{k: metrics[k] for k in ("precision", "recall") if k in metrics},
            "seconds_to_lora": to_lora, "seconds_cell": time.perf_counter() - t0, **extra}


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _save(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def _models_are_on_disk(models) -> None:
    """A cell is stamped with the hashes of the checkpoint files on disk (``sweep_stamp``, ``method_ids``):
    refuse to store one computed with models loaded from files that have changed since (a checkpoint
    replaced while a long benchmark ran would otherwise be credited with cells it did not make)."""
    changed = models.changed_files()
    if changed:
        raise RuntimeError(f"checkpoint file(s) changed on disk since this process loaded them: {', '.join(changed)}; "
                           "the cell is not stored. Restart the benchmark to run it with the new files.")


def _merge_cell(path: Path, res: dict, key: str | None = None, cell: dict | None = None,
                set_name: str | None = None) -> dict:
    """Add one new cell (``key``, ``cell``) to the file, with ``res``'s other fields (settings, method ids,
    sets), keeping the cells the file holds: the cells written are the file's plus the new one, never
    ``res["cells"]`` (one the file no longer has was removed or re-keyed by hand and must not come back).
    One driver writes a results file (``executor.drive``: its workers return cells, only the driver merges),
    and every write replaces the file whole (``_save``), so it is never half-written."""
    disk = _load(path)
    new = {key: cell} if key is not None else {}
    sets = {**res.get("sets", {}), **disk.get("sets", {})}
    if set_name is not None:
        sets[set_name] = res["sets"][set_name]
    merged = {**res, "cells": {**disk.get("cells", {}), **new}, "sets": sets}
    _save(path, merged)
    return merged


_SETS: dict = {}  # per process: (name, out, builder) -> the set's tensors, so a worker builds each set once


def _set_data(s: BenchSet, out: str) -> dict:
    key = (s, out, build_set)  # build_set itself: a patched builder (tests) is a different set
    if key not in _SETS:
        _SETS.clear()  # one set at a time per worker: the 1,000-image sets hold their references too
        _SETS[key] = build_set(s, Path(out))
    return _SETS[key]


def compare_cell(method: str, s: BenchSet, eps: float, out: str, samples: int, steps: int, seed: int,
                 overrides: dict | None) -> tuple[dict, dict]:
    """One comparison cell as a task (any process): the cell and its set's public description."""
    from .models import shared_models

    models = shared_models()
    data = _set_data(s, out)
    cell = run_cell(method, math.inf if math.isnan(eps) else eps, data, models, samples=samples, steps=steps,
                    seed=seed, overrides=overrides)
    _models_are_on_disk(models)  # the files as they are now, checked right after the cell
    return cell, data["info"]


# ---------------------------------------------------------------- the comparison


@dataclass
class CompareSettings:
    quick: bool = False
    samples: int = 128
    steps: int = 25
    seed: int = 0
    repeats: int = 1
    sets: tuple[str, ...] = ()
    epsilons: tuple[float, ...] = ()
    methods: tuple[str, ...] | None = None  # registered methods to run (None: all; (): only base and floor)
    overrides: dict = field(default_factory=dict)  # method -> config overrides (tests: {"dpsgd": {"max_steps": 2}})
    report_only: bool = False  # compute no cell: tables from what is stored
    out: Path = field(default_factory=lambda: REPO_DIR / "bench")

    def resolved(self) -> "CompareSettings":
        from .methods import METHODS

        s = CompareSettings(**asdict(self))
        if not s.sets:
            s.sets = QUICK_SETS if s.quick else FULL_SETS
        if not s.epsilons:
            s.epsilons = QUICK_EPSILONS if s.quick else EPSILONS
        if s.methods is None:
            s.methods = tuple(METHODS)
        if self.quick and self.samples == 128:
            s.samples = 64
        return s


# Checkpoint identities live below the methods (methods import them; this module imports the methods).
from .checkpoints import _digests, _files_digest, base_unet_id, encoder_id, hypernet_a_id, hypernet_id  # noqa: E402,F401


def _still_valid(cell: dict, res: dict) -> bool:
    """A stored cell is reused only if its method's defaults, checkpoints and overrides are today's (the base
    model's cells too: they depend on the base UNet's file)."""
    n = res.get("sets", {}).get(cell["set"], {}).get("n")
    want = res.get("method_ids", {}).get(cell["method"], {}).get(str(n))  # per set size (see method_id)
    return cell.get("method_id") is not None and cell.get("method_id") == want


def _cell_key(set_name: str, method: str, eps: float, rep: int, samples: int, steps: int) -> str:
    e = "inf" if math.isinf(eps) else f"{eps:g}"
    return f"{set_name}|{method}|{e}|rep{rep}|k{samples}|s{steps}"


def run_compare(settings: CompareSettings, log=print, executor=None) -> dict:
    """Every pending cell of the settings' grid as a task on ``executor`` (default: this process); the
    driver merges each finished cell into ``out/results.json``."""
    from .executor import Serial, Task, drive
    from .methods import get_method

    st = settings.resolved()
    by_name = {s.name: s for s in BENCH_SETS}
    unknown = [n for n in st.sets if n not in by_name]
    if unknown:
        raise ValueError(f"unknown benchmark set(s) {unknown}; choose from {list(by_name)}")
    if not st.report_only:
        check_frozen([by_name[n] for n in st.sets])  # a test set runs only after the freeze (bench_sets)
    for m in st.methods:
        get_method(m)  # a clear error for an unknown name
    path = Path(st.out) / "results.json"
    state = {"res": _load(path)}
    res = state["res"]
    res.setdefault("cells", {})
    res.setdefault("sets", {})
    from .methods import METHODS

    res["methods"] = list(st.methods)
    # Every method's id, not only this run's: another run's cells stay valid in the file and the tables.
    sizes = sorted({s.n for s in BENCH_SETS})  # run_compare accepts benchmark sets only
    res["method_ids"] = {m: {str(n): method_id(m, st.overrides.get(m), n) for n in sizes}
                         for m in ("base", *METHODS, "nonprivate")}
    t_start = time.perf_counter()
    # Run-major: every cell's first run before any second run, so a run stopped part-way (the grid takes
    # CPU-days at 5 runs) leaves whole runs of the grid, not five runs of its first set.
    plan = [(name, "base", math.nan, 0) for name in st.sets]
    for rep in range(st.repeats):
        for name in st.sets:
            for m in st.methods:
                # One-shot methods are cheap enough to show their no-noise point too.
                for eps in (*st.epsilons, math.inf) if get_method(m).one_shot else st.epsilons:
                    plan.append((name, m, eps, rep))
    plan += [(name, "nonprivate", math.inf, 0) for name in st.sets]  # the converged floor (deterministic)
    tasks = []
    for name, method, eps, rep in plan:
        key = _cell_key(name, method, eps, rep, st.samples, st.steps)
        if (key in res["cells"] and _still_valid(res["cells"][key], res)) or st.report_only:
            continue
        tasks.append(Task(key, compare_cell, (method, by_name[name], eps, str(st.out), st.samples, st.steps,
                                              st.seed + rep, st.overrides.get(method)), gpu=method != "base"))
    finished: set[str] = set()

    def done(task, result):
        cell, info = result
        method, s, eps = task.args[:3]
        res = state["res"]
        res["sets"][s.name] = info
        # The ids of the files as they are now, not as they were when this run started.
        res["method_ids"] = {m: {n: method_id(m, st.overrides.get(m), int(n)) for n in ids}
                             for m, ids in res["method_ids"].items()}
        mid = res["method_ids"][method][str(s.n)] if method in res["method_ids"] else None
        cell.update({"set": s.name, "repeat": task.args[6] - st.seed, "method_id": mid})
        if method == "base":
            cell["epsilon"] = None
        state["res"] = _merge_cell(path, res, task.key, cell, s.name)
        finished.add(task.key)
        log(f"{task.key}: FID {cell['fid']:.1f} agreement {cell['agreement']:.3f} ({cell['seconds_cell']:.0f} s)")

    drive(executor or Serial(), lambda: (t for t in tasks if t.key not in finished), done)
    res = state["res"]
    if st.report_only:  # computed nothing: the stored file stays as it is (a clean checkout stays clean)
        res.setdefault("last_run", {"settings": {}, "seconds": 0.0})
        return res
    res["last_run"] = {"settings": {k: _portable(v) for k, v in asdict(st).items()},
                       "seconds": time.perf_counter() - t_start}
    return _merge_cell(path, res)


def _portable(v):
    """A setting as committed: paths relative to the repository (never one machine's absolute folder)."""
    if isinstance(v, Path):
        try:
            return str(v.resolve().relative_to(REPO_DIR))
        except ValueError:
            return str(v)
    return v


def table_cells(res: dict, sets: tuple[str, ...], samples: int, steps: int) -> list[dict]:
    """The stored cells a table of these sets and settings is made of (stale cells left out)."""
    return [c for c in res["cells"].values() if c["set"] in sets and c["samples"] == samples
            and c["sampling_steps"] == steps and _still_valid(c, res)]


def summarise(res: dict, sets: tuple[str, ...], samples: int, steps: int) -> dict:
    """Per set and method: epsilon -> mean FID / KID / agreement over repeats (and their count)."""
    from .evidence import mean_interval

    out: dict = {}
    for c in table_cells(res, sets, samples, steps):
        m = out.setdefault(c["set"], {}).setdefault(c["method"], {})
        e = "base" if c["epsilon"] is None else str(c["epsilon"])
        m.setdefault(e, []).append(c)
    summary: dict = {}
    for s, methods in out.items():
        for meth, by_eps in methods.items():
            rows = {}
            for e, cells in by_eps.items():
                rows[e] = {k: float(np.mean([c[k] for c in cells])) for k in ("fid", "kid", "agreement",
                                                                                 "seconds_to_lora")}
                rows[e]["fid_std"] = float(np.std([c["fid"] for c in cells])) if len(cells) > 1 else None
                rows[e]["repeats"] = len(cells)
                for k in ("fid", "agreement"):  # the 95 % half-width over runs (DESIGN.md section 5); None for one
                    rows[e][k + "_half"] = mean_interval([c[k] for c in cells])["half_width"] if len(cells) > 1 else None
            summary.setdefault(s, {})[meth] = rows
    return summary
