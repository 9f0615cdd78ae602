"""What can the LoRA itself hold on the example sets? (issue 18: is the agreement target within reach?)

Trains the non-private floor (``dphyper.floor.train_floor``: the same LoRA, Adam, no clipping or
noise, stopped by held-out denoising loss, best weights kept) on a bundled example set, with the
set's held-out test images as the held-out loss's images, then scores it exactly like
``bench --suite hypernet`` scores the hypernetwork: 256 samples, 25 DDIM steps, sampling seed 0,
class agreement by the evaluator and FID/KID against the held-out images. Writes
``bench/floor_agreement.json`` (one entry per set, merged).

    python scripts/floor_agreement.py dresses sneakers
    python scripts/floor_agreement.py dresses --fixed-steps 600   # no early stop: 600 Adam steps, key "dresses@600"
"""
from __future__ import annotations

import json
import time

from dphyper.config import ASSETS_DIR, REPO_DIR
from dphyper.data import load_folder
from dphyper.diffusion import sample
from dphyper.evaluator import class_agreement, classify, fid_kid, load_evaluator
from dphyper.examples import BY_NAME, heldout_images
from dphyper.floor import FloorConfig, train_floor
from dphyper.lora import lora_model_fn
from dphyper.models import shared_models

OUT = REPO_DIR / "bench" / "floor_agreement.json"


def main(names: list[str], fixed_steps: int = 0) -> None:
    models, ev = shared_models(), load_evaluator()
    res = json.loads(OUT.read_text()) if OUT.exists() else {}
    for name in names:
        t0 = time.perf_counter()
        private, held = load_folder(ASSETS_DIR / "examples" / name).images, heldout_images(name)
        fcfg = FloorConfig(max_steps=fixed_steps, patience=10**9, min_delta=-1.0) if fixed_steps else FloorConfig()
        fl = train_floor(private, held, fcfg, device=models.device, log=print)
        x = sample(models.unet, 256, steps=25, seed=0, model_fn=lora_model_fn(models.unet, fl["lora"]))
        cell = {"agreement": class_agreement(classify(x, ev), BY_NAME[name].classes), **fid_kid(x, held),
                "best_step": fl["best_step"], "steps": fl["steps"], "stopped": fl["stopped"],
                "seconds": round(time.perf_counter() - t0, 1)}
        res[f"{name}@{fixed_steps}" if fixed_steps else name] = cell
        OUT.write_text(json.dumps(res, indent=1))
        print(name, json.dumps(cell), flush=True)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="*", default=["dresses", "sneakers"])
    ap.add_argument("--fixed-steps", type=int, default=0, help="train this many steps, keeping the last weights")
    a = ap.parse_args()
    main(a.sets, a.fixed_steps)
