"""The one contract every private method follows, and the steps every method shares.

In: private images (n, 1, 32, 32) in [-1, 1], the method's config dataclass (a
``PrivateRunConfig``), the public models, and optionally ``progress(dict)`` and a
``cancel`` event. Out: a ``MethodResult``:

* ``adapter``: the weights the method learned for the base UNet, in one of two formats
  (``adapter_format``): ``lora``, LoRA tensors keyed by UNet parameter names, saved as peft
  keys in lora.safetensors (``lora.save_lora``) and loaded back with ``lora.load_lora_into``;
  or ``sparse``, rows of the base UNet's own tensors (NAME.rows, NAME.delta), saved in
  sparse_delta.safetensors and loaded back with ``sparse.load_sparse_delta_into``
  (``load_adapter_into`` reads either); or ``images``, a synthetic image set (``images``) that the
  samples are drawn from instead of the UNet (``adapters.FORMATS``);
* ``report``: DP outputs and public settings only (written as report.json);
* ``events``: what the run did to the private data, as immutable ``PrivacyEvent``s that a
  ledger composes;
* ``owner``: an owner-only view (e.g. the exact mean; ``noise_check``: a ``NoiseCheck``); never written, never
  logged;
* ``timings``: seconds per stage; never written (they can depend on the true n);
* ``losses``: training losses on private batches (not DP): never written or shown.

``run_method`` is the one place that samples with a method's adapter, so "seconds to an
adapter" and the samples mean the same thing for every method.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable

import torch

from ..adapters import FORMATS
from ..errors import Cancelled
from ..privacy import PrivacyEvent

if TYPE_CHECKING:
    import numpy as np

Progress = Callable[[dict], None]


@dataclass
class MethodResult:
    adapter: dict[str, torch.Tensor]
    report: dict
    events: tuple[PrivacyEvent, ...]
    samples: torch.Tensor = field(default_factory=lambda: torch.empty(0, 1, 32, 32))
    owner: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    adapter_format: str = "lora"  # "lora", "sparse-delta" or "images" (ADAPTER_FILES)
    # Owner-only, for a method that releases a noisy mean in the public map's embedding space (the app's
    # "what the noise did" figure); None for the others. Never written, never shown to anyone but the owner.
    noise_view: "NoiseView | None" = None


@dataclass(frozen=True)
class NoiseView:
    exact: torch.Tensor  # the clipped exact mean embedding (NOT private)
    released: torch.Tensor  # the released noisy mean


@dataclass(frozen=True)
class NoiseCheck:
    """Owner-only, for a method whose one access is a Gaussian release: the released vector, the exact vector it
    perturbs, and the noise std per coordinate the method claims for their difference. The contract test
    measures the difference against the claim (a method whose noise is smaller than it says fails); never
    written, never shown to anyone but the owner."""

    released: torch.Tensor
    exact: torch.Tensor
    claimed_std: float


def sum_count_noise_check(rel, exact_mean: torch.Tensor, n: int) -> NoiseCheck:
    """The NoiseCheck of a ``privacy.release_mean`` sum-and-count release (count scale 1), in sum space: the noisy
    [sum, count] against the exact [clipped sum, n]; their difference is exactly the drawn noise."""
    noisy_sum = rel.mean.double().reshape(-1) * max(rel.noisy_count, 1.0)
    released = torch.cat([noisy_sum, torch.tensor([rel.noisy_count], dtype=torch.float64)])
    exact = torch.cat([exact_mean.double().reshape(-1) * n, torch.tensor([float(n)], dtype=torch.float64)])
    return NoiseCheck(released, exact, rel.event.noise_multiplier * rel.event.sensitivity)


class _AdapterFiles(Mapping):
    """The adapter file of each format, in the common output layout: a live view of ``adapters.FORMATS``, so a
    format registered later (a new method's own) has its file here too."""

    def __getitem__(self, name: str) -> str:
        return FORMATS[name].file

    def __iter__(self):
        return iter(FORMATS)

    def __len__(self) -> int:
        return len(FORMATS)


ADAPTER_FILES = _AdapterFiles()


def adapter_params(result: MethodResult, unet) -> dict[str, torch.Tensor]:
    """The tensors ``torch.func.functional_call`` swaps into ``unet`` to run it with the result's adapter."""
    return FORMATS[result.adapter_format].params(unet, result.adapter)


def save_adapter(result: MethodResult, out: Path, metadata: dict[str, str]) -> Path:
    path = Path(out) / ADAPTER_FILES[result.adapter_format]
    FORMATS[result.adapter_format].save(result.adapter, path, metadata=metadata)
    return path


def load_adapter_into(unet, path: Path):
    """Load any adapter file into a base UNet (in place): the documented way. The format is read from the file's
    keys, so a renamed download loads too."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    fmt = next((f for name, f in FORMATS.items() if name != "lora" and f.recognise(keys)), FORMATS["lora"])
    return fmt.load_into(unet, path)


# Config fields that do not change what a run releases: the cell key or the call holds them (epsilon, delta,
# samples, steps, seed), or they only say where and how often to write (images, out, chunk_seconds).
RUN_FIELDS = ("images", "epsilon", "delta", "samples", "steps", "seed", "out", "chunk_seconds")


def shipped_defaults(config_cls: type, exclude: tuple[str, ...] = ()) -> dict:
    """Every shipped default of a method's config that its result depends on, for its ``identity``: a stored
    benchmark cell is reused only while none of them has changed (a hand-picked list misses the one that
    is changed later). ``exclude``: fields another part of the identity holds (a per-size ``tuned`` table)."""
    from dataclasses import fields

    d = config_cls()
    kept = d.settings() if hasattr(d, "settings") else {f.name: getattr(d, f.name) for f in fields(d)}
    return {k: v for k, v in kept.items() if k not in RUN_FIELDS + tuple(exclude)}


# Every audit can simulate these bugs (tests check that each is caught); a method may add its own.
BROKEN_VARIANTS = ("none", "no-clip", "weak-noise")


@dataclass(frozen=True)
class Audit:
    """How ``python -m dphyper audit --method NAME`` tests a method; ``dphyper.audit`` does the statistics.

    ``scores(cfg, member)`` runs the method's release once per trial (``dphyper.audit.AuditConfig``:
    epsilon, delta, n, seed, broken), with the canary where ``member`` is True, as shipped when
    ``cfg.broken == "none"``, otherwise deliberately wrong as an explicit argument of its own code path
    (never a patch of a shared module: a server shares it with every session). It returns one score
    per trial, or one column per candidate statistic (the audit picks one on the selection half).
    """

    scores: Callable[..., "np.ndarray"]
    variants: tuple[str, ...] = BROKEN_VARIANTS  # "none" first, then the bugs it can simulate
    trials: int = 20000  # the CLI's default number of trials
    max_app_trials: int | None = None  # the app's cap (a training method's trial is a training run)

    def __post_init__(self) -> None:
        if not self.variants or self.variants[0] != "none":
            raise ValueError("an audit's variants start with 'none' (the shipped mechanism)")
        if self.trials < 2 or (self.max_app_trials is not None and self.max_app_trials < 2):
            raise ValueError("trials and max_app_trials must be >= 2 (max_app_trials None = no cap)")


@dataclass(frozen=True)
class StepsBudget:
    """The usual step budget: k > 0 sets one integer field of the config (``max_steps`` of a training run,
    ``fit_steps`` of a free fit)."""

    field: str

    def __call__(self, k: int) -> dict:
        return {self.field: int(k)}


@dataclass(frozen=True)
class Method:
    """A registry entry: the name the CLI, app, benchmark and audit use, and how to run it."""

    name: str
    label: str
    config_cls: type
    train: Callable[..., MethodResult]  # (images, cfg, models, progress=, cancel=) -> MethodResult without samples
    one_shot: bool  # seconds (one release) or a training run (progress, cancel)
    noise: str  # where the noise goes, in a few words (the app's caption, the README table)
    # What a stored benchmark cell of this method depends on (shipped defaults, checkpoint hashes):
    # a cell is reused only while this is unchanged.
    identity: Callable[[], dict] = lambda: {}
    # The public sweep's staged grid ({"stage1": [hp, ...], "stage2": n -> [changes, ...]}), or None
    # when the method has nothing to tune at run time.
    sweep: dict | None = None
    # Example-gradient evaluations of one run with settings hp on n images (the unit of
    # sweep.COMPUTE_CAP); None = the DP-SGD formula (epochs, batch and public batch).
    cost: Callable[[dict, int], int] | None = None
    # How long a click takes, for the app's button ("" = "seconds" for one-shot, "minutes on CPU" otherwise).
    duration: str = ""
    # Post-processing of a kept release: (release, cfg, models, progress=, cancel=) -> MethodResult with no
    # events (slicing's fit); None when a method has nothing to re-run without spending privacy. The kept release
    # is its run's ``owner["release"]``, an object with the ``event`` it was recorded under.
    refit: Callable[..., MethodResult] | None = None
    # What its adapter is: a key of ``adapters.FORMATS`` ("lora", "sparse-delta", "images"); ADAPTER_FILES.
    adapter_format: str = "lora"
    # True for a method that keeps n private and so ships one setting for every set size, chosen by the
    # sweep's ``sweep.one_default`` (stage 3 then runs every set's best on every set); False for one with
    # a per-size ``tuned`` table in its identity (DP-SGD and its relatives, where n is public).
    one_default: bool = False
    # Its canary audit (``python -m dphyper audit``); every registered method has one (a test checks).
    audit: Audit | None = None
    # The app's plan line: (n, epsilon, delta, max_steps) -> what its button will do, in words ("" = none);
    # epsilon is inf for a run without privacy, max_steps 0 for the tuned schedule. Methods whose words
    # are the same share one line.
    plan: Callable[[int, float, float, int], str] | None = None
    # Config overrides for the smallest run the method accepts (a few images, seconds on a CPU): what the
    # registry-wide tests (the contract, the CLI) run, so a new method is covered without editing them.
    smallest: dict = field(default_factory=dict)
    # Other names of ``python -m dphyper run NAME`` (e.g. "pe"); the CLI lists them beside the method.
    aliases: tuple[str, ...] = ()
    # For the page's teaching text: how it relates to the flagship, in one or two sentences ("" = nothing to add).
    relation: str = ""
    # What the page's step budget k > 0 sets in its config (a shorter run), e.g. ``StepsBudget("max_steps")``,
    # and what k counts, in words (the slider's label); None: the method has no step budget (one-shot).
    budget: Callable[[int], dict] | None = None
    budget_unit: str = ""
    # Config fields a re-fit draws anew (None: a new OS-seeded draw), e.g. the free fit's seed ("fit_seed").
    refit_fresh: tuple[str, ...] = ()
    # Its line in the comparison's figures: (label, colour); None = its label and what it makes, a palette colour.
    plot_style: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if (self.budget is None) != (not self.budget_unit):
            raise ValueError(f"{self.name}: a step budget and its unit (budget_unit) come together")
        if self.budget is not None and set(self.budget(1)) & set(self.refit_fresh):
            raise ValueError(f"{self.name}: a field is either the step budget's or drawn anew at a re-fit, not both")


def budget_value(method: Method, cfg) -> int | None:
    """What the step budget counts in this config (its first field), None for a method without one."""
    return getattr(cfg, next(iter(method.budget(1)))) if method.budget is not None else None


def refit_config(method: Method, cfg, samples: int, k: int):
    """The config of a re-fit of a kept release: the page's number of samples, step budget k (0 = the
    method's default length, not the kept run's) and a new draw of every field in ``refit_fresh``."""
    steps: dict = {}
    if method.budget is not None:
        default = method.config_cls()
        steps = method.budget(int(k)) if k else {f: getattr(default, f) for f in method.budget(1)}
    return replace(cfg, samples=int(samples), **{f: None for f in method.refit_fresh}, **steps)


def run_method(method: Method, images: torch.Tensor, cfg, models, *, progress: Progress | None = None,
               cancel: threading.Event | None = None) -> MethodResult:
    """Run one method on private images and sample with its adapter (post-processing)."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError("images must be a non-empty (n, 1, 32, 32) tensor")
    t = time.perf_counter()
    result = method.train(images, cfg, models, progress=progress, cancel=cancel)
    result.timings["to_adapter"] = time.perf_counter() - t
    return sample_into(method, result, cfg, models, cancel=cancel)


def sample_into(method: Method, result: MethodResult, cfg, models, *,
                cancel: threading.Event | None = None) -> MethodResult:
    """Sample with a result's adapter (post-processing) and complete its report."""
    from ..diffusion import sample
    from ..lora import lora_model_fn

    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{method.label} cancelled; nothing was released.")
    # Sampling is post-processing and independent of the data: its seed is drawn when none is given
    # and reported, so anyone can re-create these samples from the adapter.
    seed = cfg.seed if cfg.seed is not None else secrets.randbits(31)
    t = time.perf_counter()
    fmt = FORMATS[result.adapter_format]
    if cfg.samples and fmt.draw is not None:  # an artifact that is itself a set of images: draw from it
        result.samples = fmt.draw(result.adapter, cfg.samples, seed)
    elif cfg.samples:
        result.samples = sample(models.unet, cfg.samples, steps=cfg.steps, seed=seed,
                                model_fn=lora_model_fn(models.unet, adapter_params(result, models.unet)))
    result.timings["sample"] = time.perf_counter() - t
    result.report.update({"method": method.name, "samples": int(result.samples.shape[0]),
                          "sampling_steps": cfg.steps, "sampling_seed": seed})
    return result


def write_outputs(result: MethodResult, out: Path) -> dict:
    """The same layout for every method: the adapter file (lora.safetensors or sparse_delta.safetensors),
    samples/*.png, grid.png, report.json."""
    from ..data import make_grid, save_pngs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    eps = result.report.get("epsilon")
    save_adapter(result, out, metadata={"method": str(result.report.get("method")), "epsilon": str(eps),
                                        "delta": str(result.report.get("delta"))})
    if len(result.samples):
        save_pngs(result.samples, out / "samples")
        make_grid(result.samples).save(out / "grid.png")
    (out / "report.json").write_text(json.dumps(result.report, indent=1))
    return result.report


def epsilon_for_report(epsilon: float) -> float | str:
    return epsilon if math.isfinite(epsilon) else "inf"


def gaussian_release_report(name: str, rel, epsilon: float, detail: str = "") -> dict:
    """The report of a method whose one access to the data is a ``privacy.release_mean`` sum-and-count
    release (hypernet, qem): the event's DP facts, the noisy count and the noise level of the mean."""
    ev = rel.event
    report = {
        "method": name,
        "private": ev.private,
        "epsilon": epsilon_for_report(ev.epsilon),
        "delta": ev.delta,
        "noise_multiplier": ev.noise_multiplier,
        "sensitivity": ev.sensitivity,
        "mechanism": f"{ev.mechanism} ({detail})" if detail else ev.mechanism,
        "accountant": ev.accountant,
        "noisy_count": round(rel.noisy_count, 2),
        "noise_std_of_mean": rel.noise_std_mean,
    }
    if not math.isfinite(epsilon):
        report["warning"] = "epsilon = inf: NO privacy (non-private reference)"
    return report


def output_names() -> tuple[str, ...]:
    """What a run writes into its folder (and what ``--overwrite`` removes before a new run): nothing else is
    touched. Read at each call, so the adapter file of a format registered later is one of them."""
    return ("samples", "grid.png", "report.json", *ADAPTER_FILES.values())


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) a folder that holds an earlier run's outputs: a run never leaves
    another run's samples beside its own report."""
    import shutil

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    old = [name for name in output_names() if (out / name).exists()]
    if not old:
        return
    if not overwrite:
        raise FileExistsError(f"{out} holds an earlier run's outputs ({', '.join(old)}): pass --overwrite to replace "
                              "them, or choose another --out")
    for name in old:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


class ProgressBar:
    """A terminal bar for a method's ``progress(dict)`` reports: one bar per stage (a new bar when the stage or its
    total changes, or the step goes back), its total from the stage's first report, ε spent where reported."""

    def __init__(self, label: str) -> None:
        self.label, self.bar, self.key = label, None, None

    def __call__(self, p: dict) -> None:
        import sys

        from tqdm import tqdm

        step, total = int(p.get("step", 0)), p.get("total")
        if step == 0 and p.get("desc"):  # a stage that is starting (no steps yet): say what it does
            total = None
        key = (p.get("stage"), total)
        if self.bar is None or key != self.key or step < self.bar.n:
            self.close()
            stage = p.get("stage")
            desc = p["desc"] if total is None and p.get("desc") else f"{self.label}: {stage}" if stage else self.label
            self.bar = tqdm(desc=desc, total=total, unit="step",
                            file=sys.stderr, dynamic_ncols=True)
            self.key = key
        if "epsilon_spent" in p:
            eps = p["epsilon_spent"]
            self.bar.set_postfix_str(f"ε spent {eps:.3g}" if math.isfinite(eps) else "no privacy", refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def stage_seconds(timings: dict[str, float]) -> dict[str, float]:
    """Seconds per stage that add up: the method's own stages, what else it spent before its adapter was ready
    (``other``), sampling, and the total. (``to_adapter`` is cumulative: it is the sum before ``sample``.)"""
    stages = {k: v for k, v in timings.items() if k not in ("to_adapter", "sample", "total")}
    to_adapter = timings.get("to_adapter", sum(stages.values()))
    other = to_adapter - sum(stages.values())
    if other < 0:  # a method's stages overlap (one nested in another): show its cumulative time alone
        stages, other = {"to adapter": to_adapter}, 0.0
    out = dict(stages)
    if other > 1e-3:
        out["other"] = other
    out["sample"] = timings.get("sample", 0.0)
    out["total"] = to_adapter + out["sample"]
    return out


def run_cli(method: Method, cfg, overwrite: bool = False) -> dict:
    """`python -m dphyper run METHOD`: folder -> method -> the common output layout, with a progress bar."""
    import sys

    from ..data import load_folder
    from ..models import shared_models

    prepare_out(cfg.out, overwrite)  # before the run: a refused folder costs no time and no privacy
    loaded = load_folder(cfg.images)
    bar = ProgressBar(method.label)
    try:
        result = run_method(method, loaded.images, cfg, shared_models(), progress=bar)
    finally:
        bar.close()
    report = write_outputs(result, cfg.out)
    # The data owner's own terminal: timings and skipped files, never in report.json.
    print("seconds per stage (not in report.json): " +
          ", ".join(f"{k} {v:.2f}" for k, v in stage_seconds(result.timings).items()), file=sys.stderr)
    for name, why in loaded.rejected:
        print(f"skipped {name}: {why}", file=sys.stderr)
    return report
