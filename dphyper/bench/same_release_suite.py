"""`python -m dphyper bench --suite same-release`: one hypernetwork release, two decoders (issue 36).

For each set and epsilon, the hypernetwork's one release (``release_mean`` of the encoder embeddings) is made
once; the hypernetwork decodes it in one forward pass, and DP-MERF's fit (``features=phi``: public images
weighted to match the released mean embedding, then a LoRA trained on them) decodes the very same release, at
no further privacy cost. Same samples' seeds, same reference, same evaluator: the difference is the decoder
alone, which is what the hypernetwork's amortisation buys (or not), and at what cost in seconds.
Resumable: each (set, epsilon, repeat) is one entry of ``bench/same_release.json``.
"""

from __future__ import annotations

import json
import math
import time

from ..config import REPO_DIR

PATH = REPO_DIR / "bench" / "same_release.json"
SETS = ("sneakers-100", "least-seen-100", "knn-1000")
EPSILONS = (1.0, 8.0)


def _score(x, data, models) -> dict:
    from ..compare import class_agreement
    from ..evaluator import classify, fid_kid

    m = fid_kid(x, data["reference"])
    return {"fid": m["fid"], "kid": m["kid_mean"], "agreement": class_agreement(classify(x, models.evaluator),
                                                                              data["reference_hist"])}


def one_release(set_name: str, eps: float, samples: int, steps: int, seed: int) -> dict:
    from ..compare import BENCH_SETS, DELTA, _set_data
    from ..methods import run_method
    from ..methods.base import sample_into
    from ..methods.dp_merf import DP_MERF, DPMerfConfig, refit
    from ..methods.hypernet import HYPERNET as h
    from ..models import shared_models

    models = shared_models()
    s = next(b for b in BENCH_SETS if b.name == set_name)
    data = _set_data(s, str(REPO_DIR / "bench"))
    hr = run_method(h, data["private"], h.config_cls(epsilon=eps, delta=DELTA, samples=samples, steps=steps, seed=seed),
                    models)
    hyper = {"seconds_to_lora": hr.timings["to_adapter"], **_score(hr.samples, data, models)}
    cfg = DPMerfConfig(features="phi", epsilon=eps, delta=DELTA, samples=samples, steps=steps, seed=seed,
                       fit_seed=seed)
    t = time.perf_counter()
    mr = refit(hr.owner["release"], cfg, models)  # the same release: no event, no private data
    to_lora = time.perf_counter() - t
    assert mr.events == ()
    mr = sample_into(DP_MERF, mr, cfg, models)
    merf = {"seconds_to_lora": to_lora, **_score(mr.samples, data, models),
            "signal_share": mr.report.get("signal_share")}
    return {"set": set_name, "epsilon": eps, "samples": samples, "seed": seed, "amortised": hyper,
            "fit": merf}


def bench_same_release(cfg) -> dict:
    from ..markdown_sections import write_section
    from .common import DOC, _epsilons, machine

    res = json.loads(PATH.read_text()) if PATH.exists() else {"cells": {}}
    sets = tuple(x for x in cfg.sets.split(",") if x) or SETS
    epsilons = _epsilons(cfg.epsilons) if cfg.epsilons else EPSILONS
    samples = cfg.compare_samples
    for rep in range(max(cfg.repeats, 1)):
        for s in sets:
            for eps in epsilons:
                key = f"{s}|{eps:g}|rep{rep}|k{samples}"
                if key in res["cells"]:
                    continue
                res["cells"][key] = one_release(s, eps, samples, cfg.steps, rep)
                res["machine"] = machine()
                PATH.write_text(json.dumps(res, indent=1))
                c = res["cells"][key]
                print(f"{key}: hypernet FID {c['amortised']['fid']:.1f} ({c['amortised']['seconds_to_lora']:.1f} s), "
                      f"DP-MERF on the same release {c['fit']['fid']:.1f} "
                      f"({c['fit']['seconds_to_lora']:.1f} s)", flush=True)
    write_section(DOC, "same-release", report(res))
    return res


def report(res: dict) -> str:
    from ..evidence import mean_interval

    lines = ["## One release, two decoders: the hypernetwork against DP-MERF's fit on the same release "
             "(`python -m dphyper bench --suite same-release`)", "",
             "Each row: the hypernetwork's release made once per run; the hypernetwork decodes it in one forward "
             "pass, DP-MERF's fit (`features=phi`) decodes the same release (no further ε). Same sampling seed, "
             "reference and evaluator, so the difference is the decoder alone. Mean over runs (± the 95 % "
             f"half-width where there are ≥ 2). Machine: {res.get('machine', '?')}.", "",
             "| set | ε | runs | samples | hypernet FID | DP-MERF (same release) FID | hypernet KID | DP-MERF KID | "
             "hypernet agreement | DP-MERF agreement | s to LoRA: hypernet / DP-MERF |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list] = {}
    for c in res.get("cells", {}).values():
        groups.setdefault((c["set"], c["epsilon"], c["samples"]), []).append(c)

    def cellfmt(vals, digits=1):
        mi = mean_interval(vals)
        m, hw = mi["mean"], mi["half_width"]
        return f"{m:.{digits}f}" + (f" ± {hw:.{digits}f}" if len(vals) > 1 and math.isfinite(hw) else "")

    for (s, eps, k), cs in sorted(groups.items()):
        h = [c["amortised"] for c in cs]  # the hypernetwork's decoder
        d = [c["fit"] for c in cs]  # DP-MERF's fit
        lines.append(f"| {s} | {eps:g} | {len(cs)} | {k} | {cellfmt([x['fid'] for x in h])} | "
                     f"{cellfmt([x['fid'] for x in d])} | {cellfmt([x['kid'] for x in h], 4)} | "
                     f"{cellfmt([x['kid'] for x in d], 4)} | {cellfmt([x['agreement'] for x in h], 2)} | "
                     f"{cellfmt([x['agreement'] for x in d], 2)} | "
                     f"{cellfmt([x['seconds_to_lora'] for x in h])} / {cellfmt([x['seconds_to_lora'] for x in d])} |")
    return "\n".join(lines)
