"""`python -m dphyper bench --suite p4`: what a DP-SGD step costs against a non-private one (issue 34).

One process, one batch, interleaved: a DP-SGD step (Opacus' per-example gradients in hooks mode, clipping,
Gaussian noise) and a plain step of the same LoRA on the same images and the same loss draws, alternating,
so that machine load falls on both alike. The ratio is taken per pair and summarised by its median and
quartiles. (The comparison cells' seconds per step came from different runs at different times: on a loaded
machine their ratio once read 0.29, a DP-SGD step "3.4x faster" than a plain one.)
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from ..config import REPO_DIR

PATH = REPO_DIR / "bench" / "p4.json"


def _models(images: torch.Tensor, batch: int, device: torch.device):
    """A plain LoRA step function and a DP-SGD one (sigma 1, C 1), each on its own copy of the base UNet."""
    from opacus import PrivacyEngine

    from ..diffusion import load_unet, make_train_scheduler, noised_loss
    from ..dpsgd import make_private
    from ..lora import add_lora

    sched = make_train_scheduler()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=g)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(images),), generator=g)

    def stepper(private: bool):
        unet = add_lora(load_unet(device=device))
        unet.train()
        params = [p for p in unet.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-3)
        model = unet
        if private:
            engine = PrivacyEngine(accountant="prv", secure_mode=False)
            model, opt, _ = make_private(engine, unet, opt, torch.utils.data.TensorDataset(images), batch_size=batch,
                                         max_grad_norm=1.0, sigma=1.0, device=device)

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss = noised_loss(lambda x, tt: model(x, tt).sample, images, noise, t, sched)
            loss.backward()
            opt.step()
            return time.perf_counter() - t0

        return step

    return stepper(True), stepper(False)


def measure(images: torch.Tensor, pairs: int = 12, warmup: int = 2, device: torch.device | None = None) -> dict:
    """Interleaved DP / plain steps on ``images`` (one batch); per-pair ratios."""
    import warnings

    device = device or torch.device("cpu")
    images = images.to(device)
    dp, plain = _models(images, len(images), device)
    ratios, dps, plains = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(warmup + pairs):
            if i % 2 == 0:  # alternate the order too: neither kind always runs second
                a = dp()
                b = plain()
            else:
                b = plain()
                a = dp()
            if i >= warmup:
                ratios.append(a / b)
                dps.append(a)
                plains.append(b)
    q = statistics.quantiles(ratios, n=4)
    return {"batch": len(images), "pairs": pairs, "median_ratio": statistics.median(ratios), "q1": q[0], "q3": q[2],
            "dp_step_seconds": statistics.median(dps), "plain_step_seconds": statistics.median(plains),
            "threads": torch.get_num_threads()}


def bench_p4(cfg) -> dict:
    from .common import machine as machine_line

    machine = machine_line()
    from ..compare import BENCH_SETS, build_set
    from ..markdown_sections import write_section

    s = BENCH_SETS[0]
    batch = 32
    data = build_set(s, REPO_DIR / "bench")
    res = {"machine": machine, "set": s.name, **measure(data["private"][:batch])}
    PATH.write_text(json.dumps(res, indent=1))
    write_section(cfg.doc, "p4", text(res))
    return res


def text(res: dict) -> str:
    return "\n".join([
        "## P4: a DP-SGD step against a plain one, interleaved (`python -m dphyper bench --suite p4`)", "",
        f"Machine: {res['machine']}. One process, the first {res['batch']} images of `{res['set']}` as one batch, "
        "the same loss draws; a DP-SGD step (Opacus hooks: per-example gradients, clipping at 1, noise σ = 1, "
        "Adam) and a plain LoRA step (Adam), alternating and swapping order each pair, "
        f"{res['pairs']} pairs after 2 warm-up pairs, {res['threads']} threads.", "",
        f"**DP-SGD step / plain step: median {res['median_ratio']:.2f}×** (quartiles {res['q1']:.2f}–{res['q3']:.2f}); "
        f"median step {res['dp_step_seconds']:.2f} s against {res['plain_step_seconds']:.2f} s."])
