"""Choose between hypernetwork checkpoints on public data only (issue 18, part 2).

A checkpoint choice is a tuning decision, so it is made like every other one in dphyper: on public
(train-split) sets, never on the benchmark's or the example sets' test images. For the checkpoint
that ``DPHYPER_ASSETS`` points at (default: ``assets/``), this script runs the hypernetwork's
private path at epsilon = inf (H fed the exact clipped mean: deterministic, no privacy draw; the
noise is not what limits H at epsilon >= 1, see docs/BENCHMARKS.md) on eleven public sets of 200
train images: one per class and a uniform mix. It writes the class agreement of 128 samples per set
(25 DDIM steps, sampling seed 0, ``lora_scale`` 2 unless ``--lora-scale``; the mix scores 1 - total
variation to the uniform histogram) into
``bench/hypernet_select.json`` under ``--label``.

    python scripts/hypernet_select.py --label shipped
    DPHYPER_ASSETS=/path/to/assets_copy python scripts/hypernet_select.py --label averaged
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from dphyper.config import ASSETS_DIR, REPO_DIR
from dphyper.data import CLASS_NAMES, load_fashion_mnist
from dphyper.evaluator import class_agreement, classify, load_evaluator
from dphyper.methods.base import run_method
from dphyper.methods.hypernet import HYPERNET, HypernetConfig
from dphyper.models import shared_models

OUT = REPO_DIR / "bench" / "hypernet_select.json"


def public_sets(n: int = 200, seed: int = 1234) -> dict[str, tuple[torch.Tensor, tuple[int, ...]]]:
    x, y = load_fashion_mnist("train")
    g = torch.Generator().manual_seed(seed)
    sets = {}
    for c, name in enumerate(CLASS_NAMES):
        idx = torch.nonzero(y == c).flatten()
        sets[name] = (x[idx[torch.randperm(len(idx), generator=g)[:n]]], (c,))
    sets["mixed"] = (x[torch.randperm(len(x), generator=g)[:n]], tuple(range(10)))
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", required=True, help="name of this checkpoint in the results file")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--lora-scale", type=float, default=2.0,
                    help="H's LoRA strength (the checkpoint choice of 2026-12-01 used 2, the default then)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    models, ev = shared_models(), load_evaluator()
    t0, row = time.time(), {"assets": str(ASSETS_DIR), "lora_scale": a.lora_scale, "sets": {}}
    for name, (images, classes) in public_sets().items():
        cfg = HypernetConfig(epsilon=math.inf, samples=a.samples, steps=a.steps, seed=0, lora_scale=a.lora_scale)
        r = run_method(HYPERNET, images, cfg, models)
        row["sets"][name] = class_agreement(classify(r.samples, ev), classes)
        print(f"{a.label} {name}: {row['sets'][name]:.3f}", flush=True)
    single = [v for k, v in row["sets"].items() if k != "mixed"]
    row["mean_single_class"] = sum(single) / len(single)
    row["min_single_class"] = min(single)
    row["seconds"] = round(time.time() - t0, 1)
    res = json.loads(OUT.read_text()) if OUT.exists() else {}
    res[a.label] = row
    OUT.write_text(json.dumps(res, indent=1))
    print(f"{a.label}: mean single-class agreement {row['mean_single_class']:.3f}, min {row['min_single_class']:.3f}, "
          f"mix {row['sets']['mixed']:.3f} ({row['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
