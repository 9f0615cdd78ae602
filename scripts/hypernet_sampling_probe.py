"""Two post-processing ideas for H's single-class gap, probed on public sets (issue 18, part 2).

Both act after the release, on the released mean and public models only, so neither would cost privacy;
both were measured before anything was built into the method (neither was shipped: docs/BENCHMARKS.md,
"Part 2, fourth measurement"). H is fed the exact clipped mean (epsilon = inf, no privacy draw) of the
public 200-image train sets of ``scripts/hypernet_select.py``; 64 samples, 25 DDIM steps, sampling seed 0,
``lora_scale`` 2 (fixed, as at epsilon = inf the signal share is 1).

* ``guidance``: LoRA guidance at sampling, eps = eps_base + w (eps_LoRA - eps_base), like classifier-free
  guidance with the private set as the condition (w = 1 is the plain LoRA).
* ``feedback``: correct H's input until its samples' mean embedding matches the release:
  m_{k+1} = m_k + gamma (target - mean phi(samples of H(m_k))), m_0 = the released mean. ``--offset``
  aims at the release plus the public gap between the base model's samples and real public images in phi
  space (the mean phi of 256 base-model samples minus that of 2,000 train images), so that a set like the
  public population is already on target.

    python scripts/hypernet_sampling_probe.py guidance --sets Dress --w 1,2,3
    python scripts/hypernet_sampling_probe.py feedback --sets Dress,Pullover --iters 3
    python scripts/hypernet_sampling_probe.py feedback --sets mixed,Dress --iters 2 --offset
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hypernet_select import public_sets  # noqa: E402

from dphyper.diffusion import sample  # noqa: E402
from dphyper.encoder import embed  # noqa: E402
from dphyper.evaluator import class_agreement, classify, load_evaluator  # noqa: E402
from dphyper.lora import lora_model_fn  # noqa: E402
from dphyper.models import shared_models  # noqa: E402
from dphyper.privacy import clipped_mean  # noqa: E402

SCALE = 2.0


def lora_for(models, mean: torch.Tensor) -> dict:
    lora = models.hypernet.generate(mean.to(models.device), 0.0)
    return {k: v * SCALE if ".lora_B." in k else v for k, v in lora.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("guidance", "feedback"))
    ap.add_argument("--sets", default="Dress", help="comma-separated class names of hypernet_select's sets, or mixed")
    ap.add_argument("--w", default="1,2,3", help="guidance weights")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--gamma", type=float, default=1.0)
    ap.add_argument("--offset", action="store_true")
    ap.add_argument("--samples", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(1)
    models, ev = shared_models(), load_evaluator()
    sets = public_sets()
    offset = 0.0
    if a.mode == "feedback" and a.offset:
        from dphyper.data import load_fashion_mnist

        xt, _ = load_fashion_mnist("train")
        g = torch.Generator().manual_seed(99)
        mu_pub = clipped_mean(embed(xt[torch.randperm(len(xt), generator=g)[:2000]], models.encoder))
        offset = clipped_mean(embed(sample(models.unet, 256, steps=25, seed=1), models.encoder)) - mu_pub
        print(f"offset norm {float(offset.norm()):.3f} (public mean norm {float(mu_pub.norm()):.3f})")
    base = lambda x, t: models.unet(x, t).sample  # noqa: E731
    for name in a.sets.split(","):
        images, classes = sets[name]
        m = clipped_mean(embed(images, models.encoder))
        if a.mode == "guidance":
            lf = lora_model_fn(models.unet, lora_for(models, m))
            for w in (float(v) for v in a.w.split(",")):
                fn = lf if w == 1 else (lambda x, t, w=w: (lambda b: b + w * (lf(x, t) - b))(base(x, t)))
                s = sample(models.unet, a.samples, steps=25, seed=0, model_fn=fn)
                print(f"{name} guidance w={w:g}: agreement {class_agreement(classify(s, ev), classes):.3f}", flush=True)
            continue
        target = m + offset
        for k in range(a.iters + 1):
            s = sample(models.unet, a.samples, steps=25, seed=0, model_fn=lora_model_fn(models.unet, lora_for(models, m)))
            e = clipped_mean(embed(s, models.encoder))
            print(f"{name} feedback step {k}: agreement {class_agreement(classify(s, ev), classes):.3f}, "
                  f"gap {float((target - e).norm()):.3f}, |input| {float(m.norm()):.3f}", flush=True)
            m = m + a.gamma * (target - e)


if __name__ == "__main__":
    main()
