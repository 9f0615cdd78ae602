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
DELTA = DEFAULT_DELTA  # every private method in the benchmark
SET_SEED = 2026
CURVES_PATH = ASSETS_DIR / "curves" / "privacy_utility.json"


@dataclass(frozen=True)
class BenchSet:
    """A private set's definition; the images come from ``build_set``."""

    name: str
    kind: str  # single-class | mixed | knn | least-seen
    n: int
    classes: tuple[int, ...] = ()  # empty for knn and least-seen (decided at build time)
    split: str = "test"


BENCH_SETS = (
    BenchSet("sneakers-100", "single-class", 100, (7,)),
    BenchSet("bags-1000", "single-class", 1000, (8,)),
    BenchSet("mixed-100", "mixed", 100, tuple(range(10))),
    BenchSet("mixed-1000", "mixed", 1000, tuple(range(10))),
    BenchSet("knn-1000", "knn", 1000),
    BenchSet("least-seen-100", "least-seen", 100),
)
# The full run covers every kind and both sizes with four sets (the 2-core CPU's budget); the
# other two are there for ``--sets``.
FULL_SETS = ("sneakers-100", "least-seen-100", "mixed-1000", "knn-1000")
QUICK_SETS = ("sneakers-100", "least-seen-100", "knn-1000")
# DP-SGD's hyperparameters are tuned on these public (train-split) sets only.
SWEEP_SETS = (
    BenchSet("public-coats-100", "single-class", 100, (4,), split="train"),
    BenchSet("public-mixed-1000", "mixed", 1000, tuple(range(10)), split="train"),
)


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
        note = f"{2 * s.n} nearest test images (phi space) of test image {anchor}, split at random; labels " + \
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
            "info": {"name": s.name, "kind": s.kind, "n": s.n, "split": s.split,
                     "classes": [CLASS_NAMES[c] for c in classes], "n_reference": int(len(ref_images)),
                     "reference_from": ref_source, "seed": seed, "note": note}}


def class_agreement(pred: torch.Tensor, reference_hist: torch.Tensor) -> float:
    """1 - TV distance between the predicted-class histogram and the reference label histogram."""
    hist = torch.bincount(pred, minlength=len(reference_hist)).float() / max(len(pred), 1)
    return float(1 - 0.5 * (hist - reference_hist).abs().sum())


# ---------------------------------------------------------------- one cell


class Models:
    """Public models loaded once for a whole benchmark."""

    def __init__(self) -> None:
        from .evaluator import load_evaluator
        from .pipeline import HypernetPipeline

        self.pipe = HypernetPipeline()
        self.evaluator = load_evaluator()


def run_cell(method: str, epsilon: float, data: dict, models: Models, *, samples: int, steps: int, seed: int,
             dpsgd_overrides: dict | None = None) -> dict:
    """Train/generate one method at one epsilon on one set and score its samples."""
    from .diffusion import sample
    from .dpsgd import DPSGDConfig, train_dpsgd
    from .evaluator import classify, fid_kid

    t0 = time.perf_counter()
    extra: dict = {}
    if method == "base":
        x = sample(models.pipe.unet, samples, steps=steps, seed=seed)
        to_lora = 0.0
    elif method == "hypernet":
        r = models.pipe.run(data["private"], epsilon=epsilon, delta=DELTA, samples=samples, steps=steps, seed=seed)
        x, s = r.samples, r.timings
        to_lora = s["embed"] + s["privatise"] + s["generate_lora"]
        extra = {"noise_multiplier": r.report["noise_multiplier"], "noisy_count": r.report["noisy_count"]}
    elif method in ("dpsgd", "nonprivate"):
        cfg = DPSGDConfig(epsilon=epsilon if method == "dpsgd" else math.inf, delta=DELTA, samples=samples,
                          steps=steps, seed=seed, **(dpsgd_overrides or {}))
        r = train_dpsgd(data["private"], cfg)
        x = r.samples
        to_lora = r.timings["train"]
        extra = {k: r.report[k] for k in ("noise_multiplier", "steps", "sample_rate", "epsilon_spent", "lr",
                                          "batch_size", "max_grad_norm", "accountant")}
        extra["epochs"] = cfg.epochs
        extra["final_loss"] = float(np.mean(r.losses[-10:])) if r.losses else None
        extra["seconds_per_step"] = to_lora / max(r.report["steps"], 1)
    else:
        raise ValueError(f"unknown method {method!r}")
    pred = classify(x, models.evaluator)
    metrics = fid_kid(x, data["reference"])
    return {"method": method, "epsilon": "inf" if math.isinf(epsilon) else epsilon, "samples": int(len(x)),
            "sampling_seed": seed, "sampling_steps": steps, "n_reference": int(len(data["reference"])),
            "fid": metrics["fid"], "kid": metrics["kid_mean"], "agreement": class_agreement(pred, data["reference_hist"]),
            "seconds_to_lora": to_lora, "seconds_cell": time.perf_counter() - t0, **extra}


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _save(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


# ---------------------------------------------------------------- DP-SGD sweep (public sets only)


# Stage 1: learning rate at a small clip norm (with Adam, a C far below the per-sample gradient
# norms only sets the clipping regime, not the signal-to-noise ratio), plus one large C.
SWEEP_STAGE1 = [{"lr": lr, "max_grad_norm": 0.01, "epochs": 10.0, "batch_size": 64}
                for lr in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)] + \
               [{"lr": 1e-3, "max_grad_norm": 1.0, "epochs": 10.0, "batch_size": 64}]
# Stage 2: around the best of stage 1, fewer epochs and a bigger expected batch. (More than
# 10 epochs was not tried: on the 2-core CPU every benchmark cell would double in cost.)
SWEEP_STAGE2 = ({"epochs": 5.0, "batch_size": 64}, {"epochs": 10.0, "batch_size": 256})


def _sweep_key(set_name: str, hp: dict) -> str:
    return f"{set_name}|lr={hp['lr']:g}|C={hp['max_grad_norm']:g}|ep={hp['epochs']:g}|B={hp['batch_size']}"


def _rank_configs(cells: dict, sets: list[str]) -> list[tuple[float, dict]]:
    """Mean over sets of FID / best FID on that set (lower is better), per configuration."""
    by_hp: dict[str, dict] = {}
    for key, c in cells.items():
        s, hp = key.split("|", 1)
        if s in sets:
            by_hp.setdefault(hp, {"hp": c["hp"], "fid": {}})["fid"][s] = c["fid"]
    best = {s: min(v["fid"][s] for v in by_hp.values() if s in v["fid"]) for s in sets}
    scored = [(float(np.mean([v["fid"][s] / best[s] for s in sets])), v["hp"]) for v in by_hp.values()
              if all(s in v["fid"] for s in sets)]
    return sorted(scored, key=lambda t: t[0])


def sweep_dpsgd(out: Path, *, samples: int = 128, steps: int = 25, seed: int = 0, epsilon: float = 1.0,
                sets: tuple[BenchSet, ...] = SWEEP_SETS, stage1: list[dict] | None = None,
                stage2: bool = True, log=print) -> dict:
    """Stage 1 over the learning rate (and C), stage 2 over epochs and batch; public sets only."""
    path = out / "dpsgd_sweep.json"
    res = _load(path)
    res.setdefault("cells", {})
    res.update({"epsilon": epsilon, "delta": DELTA, "samples": samples, "steps": steps, "seed": seed})
    models = Models()
    built = {s.name: build_set(s, out) for s in sets}
    res["sets"] = {k: v["info"] for k, v in built.items()}
    names = list(built)

    def run(hps: list[dict]) -> None:
        for hp in hps:
            for name in names:
                key = _sweep_key(name, hp)
                if key in res["cells"]:
                    continue
                cell = run_cell("dpsgd", epsilon, built[name], models, samples=samples, steps=steps, seed=seed,
                                dpsgd_overrides=hp)
                cell["hp"] = hp
                res["cells"][key] = cell
                _save(path, res)
                log(f"sweep {key}: FID {cell['fid']:.1f} agreement {cell['agreement']:.3f} "
                    f"({cell['seconds_to_lora']:.0f} s)")

    run(stage1 if stage1 is not None else SWEEP_STAGE1)
    if stage2:
        best = _rank_configs(res["cells"], names)[0][1]
        run([{**best, **change} for change in SWEEP_STAGE2])
    ranking = _rank_configs(res["cells"], names)
    res["ranking"] = [{"score": s, **hp} for s, hp in ranking]
    res["best"] = ranking[0][1] if ranking else None
    _save(path, res)
    return res


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
    dpsgd_overrides: dict = field(default_factory=dict)  # tests only: e.g. {"max_steps": 2}
    out: Path = field(default_factory=lambda: REPO_DIR / "bench")

    def resolved(self) -> "CompareSettings":
        s = CompareSettings(**asdict(self))
        if not s.sets:
            s.sets = QUICK_SETS if s.quick else FULL_SETS
        if not s.epsilons:
            s.epsilons = QUICK_EPSILONS if s.quick else EPSILONS
        if self.quick and self.samples == 128:
            s.samples = 64
        return s


def hypernet_id() -> str:
    """A short content hash of the shipped hypernetwork file."""
    from .hypernet import HYPERNET_PATH

    return hashlib.sha256(HYPERNET_PATH.read_bytes()).hexdigest()[:12]


def _still_valid(cell: dict, res: dict) -> bool:
    """A stored cell is reused only if it was made with today's DP-SGD defaults and H."""
    if cell["method"] in ("dpsgd", "nonprivate"):
        return cell.get("dpsgd_defaults") == res["dpsgd_defaults"]
    if cell["method"] == "hypernet":
        return cell.get("hypernet_id") == res["hypernet_id"]
    return True


def _cell_key(set_name: str, method: str, eps: float, rep: int, samples: int, steps: int) -> str:
    e = "inf" if math.isinf(eps) else f"{eps:g}"
    return f"{set_name}|{method}|{e}|rep{rep}|k{samples}|s{steps}"


def run_compare(settings: CompareSettings, log=print) -> dict:
    from .dpsgd import DPSGDConfig

    st = settings.resolved()
    by_name = {s.name: s for s in BENCH_SETS}
    unknown = [n for n in st.sets if n not in by_name]
    if unknown:
        raise ValueError(f"unknown benchmark set(s) {unknown}; choose from {list(by_name)}")
    path = Path(st.out) / "results.json"
    res = _load(path)
    res.setdefault("cells", {})
    from .dpsgd import TUNED

    res["dpsgd_defaults"] = {"tuned": [dict(r) for r in TUNED], "accountant": DPSGDConfig().accountant,
                             **st.dpsgd_overrides}
    res.setdefault("sets", {})
    # Hypernetwork cells are only reused while the shipped H is the one that produced them.
    res["hypernet_id"] = hypernet_id()
    models = Models()
    t_start = time.perf_counter()
    plan = []
    for name in st.sets:
        plan.append((name, "base", math.nan, 0))
        for rep in range(st.repeats):
            for eps in (*st.epsilons, math.inf):
                plan.append((name, "hypernet", eps, rep))
            for eps in st.epsilons:
                plan.append((name, "dpsgd", eps, rep))
            plan.append((name, "nonprivate", math.inf, rep))
    built: dict[str, dict] = {}
    for name, method, eps, rep in plan:
        key = _cell_key(name, method, eps, rep, st.samples, st.steps)
        if key in res["cells"] and _still_valid(res["cells"][key], res):
            continue
        if name not in built:
            built[name] = build_set(by_name[name], Path(st.out))
            res["sets"][name] = built[name]["info"]
        cell = run_cell(method, math.inf if math.isnan(eps) else eps, built[name], models, samples=st.samples,
                        steps=st.steps, seed=st.seed + rep, dpsgd_overrides=st.dpsgd_overrides)
        cell.update({"set": name, "repeat": rep})
        if method in ("dpsgd", "nonprivate"):
            cell["dpsgd_defaults"] = res["dpsgd_defaults"]
        if method == "hypernet":
            cell["hypernet_id"] = res["hypernet_id"]
        if method == "base":
            cell["epsilon"] = None
        res["cells"][key] = cell
        _save(path, res)
        log(f"{key}: FID {cell['fid']:.1f} agreement {cell['agreement']:.3f} ({cell['seconds_cell']:.0f} s)")
    res["last_run"] = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(st).items()},
                       "seconds": time.perf_counter() - t_start}
    _save(path, res)
    return res


def table_cells(res: dict, sets: tuple[str, ...], samples: int, steps: int) -> list[dict]:
    """The stored cells a table of these sets and settings is made of (stale cells left out)."""
    return [c for c in res["cells"].values() if c["set"] in sets and c["samples"] == samples
            and c["sampling_steps"] == steps and _still_valid(c, res)]


def summarise(res: dict, sets: tuple[str, ...], samples: int, steps: int) -> dict:
    """Per set and method: epsilon -> mean FID / KID / agreement over repeats (and their count)."""
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
            summary.setdefault(s, {})[meth] = rows
    return summary


def targets(summary: dict, sets_info: dict, epsilons: tuple[float, ...]) -> dict:
    """F1, F2, P2 and P4 as measured (no judgement is hard-coded: each is computed here)."""
    f1_rows, f2_rows, p2_rows, p4_rows = [], [], [], []
    for s, m in summary.items():
        hyp, dp, npv = m.get("hypernet", {}), m.get("dpsgd", {}), m.get("nonprivate", {})
        for e in epsilons:
            k = str(e)
            if k in hyp and k in dp:
                ratio = hyp[k]["fid"] / dp[k]["fid"]
                f1_rows.append({"set": s, "epsilon": e, "hypernet_fid": hyp[k]["fid"], "dpsgd_fid": dp[k]["fid"],
                                "ratio": ratio, "below": ratio < 1, "ratio_ok": ratio <= 0.5 if e <= 1 else None})
                if sets_info.get(s, {}).get("n") == 1000:
                    p2_rows.append({"set": s, "epsilon": e, "ratio": dp[k]["seconds_to_lora"] /
                                    max(hyp[k]["seconds_to_lora"], 1e-9)})
        if sets_info.get(s, {}).get("n") == 1000 and "1.0" in hyp and "inf" in hyp:
            f2_rows.append({"set": s, "fid_eps1": hyp["1.0"]["fid"], "fid_inf": hyp["inf"]["fid"],
                            "relative": hyp["1.0"]["fid"] / hyp["inf"]["fid"] - 1})
    return {"F1": f1_rows, "F2": f2_rows, "P2": p2_rows, "P4": p4_rows}


def step_cost(res: dict) -> list[dict]:
    """P4: seconds per DP-SGD step / per non-private step, same set and batch size."""
    rows = []
    for c in res["cells"].values():
        if c["method"] != "dpsgd":
            continue
        ref = [o for o in res["cells"].values() if o["method"] == "nonprivate" and o["set"] == c["set"]
               and o.get("batch_size") == c.get("batch_size")]
        if ref:
            rows.append({"set": c["set"], "epsilon": c["epsilon"], "ratio": c["seconds_per_step"] /
                         float(np.mean([o["seconds_per_step"] for o in ref]))})
    return rows


def tuned_table() -> list[dict]:
    """The shipped per-size DP-SGD defaults (``dpsgd.TUNED``)."""
    from .dpsgd import TUNED

    return [dict(r) for r in TUNED]


# ---------------------------------------------------------------- outputs

METHOD_STYLE = {  # label, colour
    "hypernet": ("hypernetwork (one-shot)", "#1f77b4"),
    "dpsgd": ("DP-SGD LoRA", "#d62728"),
    "nonprivate": ("non-private LoRA (ε = ∞)", "#2ca02c"),
    "base": ("base model (no fine-tuning)", "#7f7f7f"),
    "hypernet_inf": ("hypernetwork, no noise (ε = ∞)", "#9ecae1"),
}


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
            }
            for flat in ("inf", "base"):
                if flat in rows:
                    entry["methods"][meth]["flat"] = {"fid": rows[flat]["fid"], "agreement": rows[flat]["agreement"],
                                                      "seconds_to_lora": rows[flat]["seconds_to_lora"]}
        out["sets"][s] = entry
    return out


def _lines(entry: dict) -> list[tuple[str, str, list[float], list[float], bool]]:
    """(key, colour, x, y, dashed) per method; flat references become horizontal lines."""
    out = []
    for meth in ("hypernet", "dpsgd"):
        m = entry["methods"].get(meth)
        if m and m["epsilon"]:
            out.append((meth, METHOD_STYLE[meth][1], m["epsilon"], m["fid"], False))
    for meth, key in (("hypernet", "hypernet_inf"), ("nonprivate", "nonprivate"), ("base", "base")):
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
            fig.add_trace(go.Scatter(x=xs, y=ys, name=METHOD_STYLE[key][0], legendgroup=key, showlegend=i == 0,
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
                ax.plot(x, y, "o-", color=colour, label=METHOD_STYLE[key][0], ms=4)
            else:
                ax.hlines(y[0], eps[0], eps[-1], colors=colour, linestyles="dashed", label=METHOD_STYLE[key][0])
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(eps)
        ax.set_xticklabels([f"{e:g}" for e in eps])
        ax.set_title(name)
        ax.set_xlabel("ε")
        ax.set_ylabel("FID")
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
