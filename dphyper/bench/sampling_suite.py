"""`python -m dphyper bench --suite sampling`: fewer sampling steps at equal quality (issue 39).

Every setting samples the same 512 initial noises (one seed) through the same adapters, so two settings'
images are paired one by one and their FID / KID difference gets a paired bootstrap interval
(``evidence.paired_difference``): a tie when the 95 % interval holds 0. The adapters are trained once per
public set (train split, never a benchmark set) at one epsilon and kept in an ignored cache, so a rerun only
samples the settings it has not stored. Cells (metrics, intervals, timings) go to ``bench/sampling.json``;
the features behind them stay in the cache, so adding a setting later re-uses every stored one.

The speed part times the base UNet alone, 64 samples after a warm-up, for every setting and for what PyTorch
offers on the CPU (channels-last, bf16 autocast, ``torch.compile``).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ..config import REPO_DIR

PATH = REPO_DIR / "bench" / "sampling.json"
CACHE = REPO_DIR / "bench" / "cache" / "sampling"
SETTINGS = ("ddim-25", "dpm-8", "dpm-10", "dpm-15", "unipc-8", "unipc-10", "ddim-25-bf16")
REFERENCE = "ddim-25"  # what every method sampled with before this suite
# The flagship and two rivals of different kinds (noisy gradients; a one-shot fit), on both public sets' sizes.
from ..methods import FLAGSHIP  # noqa: E402
from ..methods.dpsgd import DPSGD  # noqa: E402
from ..methods.slicing import SLICING  # noqa: E402

ADAPTERS = {"public-coats-100": ("base", FLAGSHIP, DPSGD.name, SLICING.name), "public-mixed-1000": ("base", FLAGSHIP)}
EPSILON = 4.0  # where every adapter moves the model (DP-SGD's and slicing's do little at eps = 1)
SAMPLES = 512
SEED = 0
SPEED_SAMPLES = 64


def parse(setting: str) -> tuple[str, int]:
    """'dpm-10' -> ('dpm', 10), checked against the samplers ``diffusion.sample`` knows ('-bf16' at the end:
    see ``options``)."""
    from ..diffusion import SAMPLERS

    name, _, steps = setting.removesuffix("-bf16").partition("-")
    if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"sampling setting {setting!r}: write SAMPLER-STEPS[-bf16] with a sampler of "
                         f"{', '.join(SAMPLERS)}")
    return name, int(steps)


def options(setting: str) -> dict:
    """``diffusion.sample``'s keyword arguments for a setting: 'ddim-25-bf16' -> bfloat16 autocast."""
    name, steps = parse(setting)
    return {"sampler": name, "steps": steps, "bf16": setting.endswith("-bf16")}


def _load() -> dict:
    return json.loads(PATH.read_text()) if PATH.exists() else {"cells": {}, "pairs": {}, "speed": {}}


def _save(res: dict) -> None:
    tmp = PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, sort_keys=True))
    tmp.replace(PATH)  # never half-written


def _adapter_fn(method: str, data: dict, models, ident: str):
    """``model_fn`` of the method's adapter on this set (trained once, then read from the cache)."""
    from ..lora import lora_model_fn
    from ..methods import get_method
    from ..adapters import FORMATS
    from ..methods.base import MethodResult, adapter_params
    from ..privacy import DEFAULT_DELTA

    if method == "base":
        return None
    path = CACHE / f"{data['info']['name']}-{method}-{ident}.pt"
    saved = torch.load(path) if path.exists() else None
    if saved is None or saved["format"] not in FORMATS:  # a format renamed since (issue 33): train it again
        m = get_method(method)
        cfg = m.config_cls(epsilon=EPSILON, delta=DEFAULT_DELTA, samples=0, steps=25, seed=SEED)
        r = m.train(data["private"], cfg, models)
        saved = {"adapter": r.adapter, "format": r.adapter_format}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(saved, path)
    result = MethodResult(adapter=saved["adapter"], report={}, events=(), adapter_format=saved["format"])
    return lora_model_fn(models.unet, adapter_params(result, models.unet))


def _features_path(key: str) -> Path:
    return CACHE / (key.replace("|", "_") + ".features.pt")


def _features(key: str, make) -> torch.Tensor:
    path = _features_path(key)
    if path.exists():
        return torch.load(path)
    feats = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, path)
    return feats


def public_sets() -> dict:
    """The suite's sets (``compare.SWEEP_SETS``: train split), built on first use."""
    from ..compare import SWEEP_SETS, build_set

    sets = {s.name: s for s in SWEEP_SETS}
    return {name: (lambda s=sets[name]: build_set(s, REPO_DIR / "bench")) for name in ADAPTERS}


def run_quality(log=print, *, adapters: dict | None = None, settings: tuple[str, ...] = SETTINGS,
                samples: int = SAMPLES, datasets: dict | None = None, resamples: int = 200) -> dict:
    """Every (set, adapter, setting) cell and every setting's paired difference against ``REFERENCE`` (which
    ``settings`` must hold). ``datasets`` maps a set name to a function that builds it."""
    from ..compare import method_id
    from ..diffusion import sample
    from ..evidence import evaluator_features, fid, kid, paired_difference
    from ..models import shared_models

    if REFERENCE not in settings:
        raise ValueError(f"the settings must include the reference {REFERENCE}")
    adapters = adapters or ADAPTERS
    datasets = datasets or public_sets()
    res = _load()
    models = shared_models()
    for set_name, methods in adapters.items():
        data = datasets[set_name]()
        ref = _features(f"{set_name}|reference|{len(data['reference'])}",
                        lambda: evaluator_features(data["reference"], models.evaluator))
        for method in methods:
            ident = method_id(method, n=len(data["private"])) + f"-e{EPSILON:g}"
            model_fn = None
            feats, fresh = {}, set()
            for setting in settings:
                key = f"{set_name}|{method}|{setting}"
                cell = res["cells"].get(key)
                fkey = f"{key}|{ident}|k{samples}|s{SEED}"
                stored = cell is not None and cell.get("ident") == ident and cell.get("samples") == samples
                if stored and _features_path(fkey).exists():
                    feats[setting] = torch.load(_features_path(fkey))
                    continue
                if model_fn is None and method != "base":
                    model_fn = _adapter_fn(method, data, models, ident)
                opts = options(setting)
                timing = {}

                def make():
                    t0 = time.perf_counter()
                    x = sample(models.unet, samples, seed=SEED, model_fn=model_fn, **opts)
                    timing["seconds"] = time.perf_counter() - t0
                    return evaluator_features(x, models.evaluator)

                feats[setting] = _features(fkey, make)
                fresh.add(setting)
                res["cells"][key] = {"set": set_name, "method": method, "setting": setting, "ident": ident,
                                     "epsilon": EPSILON if method != "base" else None, "samples": samples, "seed": SEED,
                                     "fid": fid(feats[setting], ref), "kid": kid(feats[setting], ref),
                                     "seconds": timing.get("seconds"), "n_reference": len(ref)}
                _save(res)
                log(f"sampling {key}: FID {res['cells'][key]['fid']:.1f}")
            for setting in settings:
                if setting == REFERENCE:
                    continue
                pkey = f"{set_name}|{method}|{setting}"
                pair = res["pairs"].get(pkey)
                if pair is not None and pair.get("ident") == ident and not fresh & {setting, REFERENCE}:
                    continue
                res["pairs"][pkey] = {"ident": ident, "against": REFERENCE, **{
                    metric: paired_difference(feats[setting], feats[REFERENCE], ref, metric=metric,
                                              resamples=resamples if metric == "fid" else max(resamples // 2, 2)).as_dict()
                    for metric in ("fid", "kid")}}
                _save(res)
                p = res["pairs"][pkey]["fid"]
                log(f"paired {pkey} - {REFERENCE}: FID {p['diff']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}] {p['verdict']}")
    return res


def cheapest_tie(res: dict) -> str:
    """The cheapest setting whose FID and KID differences from ``REFERENCE`` are ties (or wins) on every stored
    (set, adapter); ``REFERENCE`` when none is. Cheapest: the most samples per second measured (``run_speed``),
    or, before any speed is stored, the fewest steps."""
    speed = res.get("speed", {}).get("settings", {})
    ok = []
    for setting in SETTINGS:
        if setting == REFERENCE:
            continue
        pairs = [p for k, p in res["pairs"].items() if k.endswith("|" + setting)]
        expected = sum(len(m) for m in ADAPTERS.values())
        if len(pairs) == expected and all(p[m]["verdict"] != "loss" for p in pairs for m in ("fid", "kid")):
            cost = -speed[setting] if setting in speed else parse(setting)[1]
            ok.append((cost, SETTINGS.index(setting), setting))
    return min(ok)[2] if ok else REFERENCE


def _variant(unet, variant: str):
    """A base-UNet ``model_fn`` for one of PyTorch's CPU speed options, and its autocast context."""
    if variant == "channels-last":
        net = unet.to(memory_format=torch.channels_last)
        return (lambda x, t: net(x.contiguous(memory_format=torch.channels_last), t).sample), nullcontext()
    if variant == "compile":
        net = torch.compile(unet)
        return (lambda x, t: net(x, t).sample), nullcontext()
    return (lambda x, t: unet(x, t).sample), nullcontext()


def run_speed(settings=SETTINGS, variants=("plain", "channels-last", "compile"), log=print) -> dict:
    """Samples per second of the base UNet (SPEED_SAMPLES after a warm-up) per setting, and per PyTorch CPU
    option at ``REFERENCE`` and the cheapest tie."""
    import copy

    from ..diffusion import sample
    from ..models import shared_models

    out: dict = {"samples": SPEED_SAMPLES, "threads": torch.get_num_threads(), "settings": {}, "variants": {}}
    unet = shared_models().unet
    for setting in settings:
        opts = options(setting)
        sample(unet, 4, seed=1, **{**opts, "steps": 2})
        t0 = time.perf_counter()
        sample(unet, SPEED_SAMPLES, seed=SEED, **opts)
        out["settings"][setting] = SPEED_SAMPLES / (time.perf_counter() - t0)
        log(f"speed {setting}: {out['settings'][setting]:.2f} samples/s")
    for variant in variants:
        net = copy.deepcopy(unet)
        try:
            fn, ctx = _variant(net, variant)
            with ctx:
                # warm-up at the timed batch shape: torch.compile recompiles for a new shape, and a warm-up at
                # another one put the recompilation inside the timing (1.4 samples/s on 2026-12-07)
                sample(net, SPEED_SAMPLES, steps=2, seed=1, model_fn=fn)
                ref = sample(net, 8, steps=5, seed=1, model_fn=fn)
                t0 = time.perf_counter()
                sample(net, SPEED_SAMPLES, steps=parse(REFERENCE)[1], seed=SEED, model_fn=fn)
                dt = time.perf_counter() - t0
            plain = sample(unet, 8, steps=5, seed=1)
            out["variants"][variant] = {"samples_per_s": SPEED_SAMPLES / dt,
                                        "max_abs_diff_vs_plain": float((ref - plain).abs().max())}
        except Exception as e:  # an option this build of PyTorch cannot run on this CPU is reported, not fatal
            out["variants"][variant] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        log(f"speed {REFERENCE} {variant}: {out['variants'][variant]}")
    return out


def text(res: dict, machine: str) -> str:
    """BENCHMARKS' section, generated from ``bench/sampling.json``."""
    rows = ["## Sampling: fewer steps at equal quality (`python -m dphyper bench --suite sampling`)", "",
            f"Machine: {machine}. {SAMPLES} samples per cell from one seed, so every setting starts from the same "
            f"initial noises and the images are paired; adapters trained once on each public set at ε = {EPSILON:g} "
            "(train split only). Each cell: FID and KID on the evaluator's features against the set's held-out "
            f"reference. Each setting against {REFERENCE}: the paired bootstrap 95 % interval of the difference "
            "(pairs and reference resampled together); a tie when it holds 0, a loss when it lies above 0.", "",
            "| set | adapter | setting | FID | KID | FID − " + REFERENCE + " [95 %] | verdict (FID / KID) |",
            "|---|---|---|---|---|---|---|"]
    for key, cell in res["cells"].items():
        pair = res["pairs"].get(key)
        diff = (f"{pair['fid']['diff']:+.2f} [{pair['fid']['low']:+.2f}, {pair['fid']['high']:+.2f}]" if pair
                else "(reference)")
        ver = f"{pair['fid']['verdict']} / {pair['kid']['verdict']}" if pair else ""
        rows.append(f"| {cell['set']} | {cell['method']} | {cell['setting']} | {cell['fid']:.1f} | "
                    f"{cell['kid']:.2f} | {diff} | {ver} |")
    pick = cheapest_tie(res)
    speed = res.get("speed", {})
    rows += ["", f"**Cheapest setting that ties {REFERENCE} on every set and adapter (FID and KID): `{pick}`.**"]
    summary = []
    for setting in SETTINGS:
        diffs = [(k.split("|")[1], p["fid"]) for k, p in res["pairs"].items() if k.endswith("|" + setting)]
        adapters = [(m, d) for m, d in diffs if m != "base"]
        if not adapters:
            continue
        lo, hi = min(d["diff"] for _, d in adapters), max(d["diff"] for _, d in adapters)
        losses = sum(d["verdict"] == "loss" for _, d in adapters)
        summary.append(f"`{setting}` {lo:+.1f} to {hi:+.1f} FID on the adapters ({losses} of {len(adapters)} "
                       "losses)")
    if summary:
        rows += ["", "Against " + REFERENCE + ", paired: " + "; ".join(summary) + "."]
    wins = [f"{k.split('|')[2]} for {k.split('|')[1]} on {k.split('|')[0]} ({p['fid']['diff']:+.1f} FID)"
            for k, p in res["pairs"].items() if p["fid"]["verdict"] == "win"]
    if wins:
        rows += ["", "Settings better than " + REFERENCE + " (FID interval below 0): " + "; ".join(wins) + ". A "
                 "setting must tie or win for every adapter to be adopted: the methods' strengths (the "
                 "hypernetwork's LoRA scale, DP-SGD's and slicing's training) were tuned under " + REFERENCE + "."]
    if speed.get("settings"):
        base = speed["settings"].get(REFERENCE)
        rows += ["", f"Speed of the base UNet, {speed['samples']} samples after a warm-up, {speed['threads']} threads "
                 "(samples per second): " + ", ".join(
                     f"{s} {v:.1f}" + (f" ({v / base:.2f}×)" if base else "") for s, v in speed["settings"].items())
                 + "."]
    if speed.get("variants"):
        parts = []
        for v, r in speed["variants"].items():
            parts.append(f"{v}: " + (f"{r['samples_per_s']:.1f} samples/s (largest pixel change against plain "
                                     f"{r['max_abs_diff_vs_plain']:.2g})" if "samples_per_s" in r else r["error"]))
        rows += ["", f"PyTorch's CPU options at {REFERENCE}: " + "; ".join(parts) + "."]
    return "\n".join(rows)


def bench_sampling(cfg) -> dict:
    from .common import machine as machine_line

    machine = machine_line()
    from ..markdown_sections import write_section

    res = run_quality()
    res["speed"] = run_speed()
    res["machine"] = machine
    res["cheapest_tie"] = cheapest_tie(res)
    _save(res)
    write_section(cfg.doc, "sampling", text(res, res["machine"]))
    return {"cheapest_tie": res["cheapest_tie"], "speed": res["speed"], "file": str(PATH.relative_to(REPO_DIR))}
