"""Noise-aware training of the hypernetwork on public data only (`python -m dphyper train hypernet`).

Each step draws S public "datasets" that look like what users upload: the k nearest
neighbours (in phi space) of a random public anchor, sometimes the union of two such
neighbourhoods, sometimes a uniform random subset; size n log-uniform in [n_min, n_max].
Each set's embedding is privatised exactly as the private path does
(``privacy.release_mean``) at a random epsilon (log-uniform, or inf), H turns the released
mean into a LoRA, and the frozen base UNet's denoising loss on images of that set is
minimised end to end (``torch.func.functional_call`` under ``torch.func.vmap`` over sets).

Written with Hugging Face accelerate: a single CPU process by default, and
``accelerate launch -m dphyper train hypernet`` runs data-parallel on many GPUs.
Resumable: state is written to ``--work-dir`` and a rerun continues.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .config import ENCODER_PATH
from .diffusion import load_unet, make_train_scheduler
from .hypernet import HYPERNET_PATH, HyperNetwork, lora_shapes_of, save_hypernet
from .lora import add_lora
from .privacy import DEFAULT_DELTA, clipped_mean, release_mean

log = logging.getLogger(__name__)


@dataclass
class HypernetTrainConfig:
    """`python -m dphyper train hypernet`: noise-aware training of H on public sets."""

    out: Path = field(default=HYPERNET_PATH, metadata={"help": "safetensors file to write"})
    work_dir: Path = field(default=Path("runs/hypernet"), metadata={"help": "resumable training state lives here"})
    minutes: float = field(default=60.0, metadata={"help": "wall-clock budget of this call; rerun to continue"})
    max_steps: int = field(default=20000, metadata={"help": "stop for good after this many steps"})
    sets_per_step: int = field(default=8, metadata={"help": "public datasets per step (S)"})
    images_per_set: int = field(default=8, metadata={"help": "images of each set in the denoising loss"})
    n_min: int = field(default=32, metadata={"help": "smallest public set size"})
    n_max: int = field(default=2000, metadata={"help": "largest public set size"})
    epsilon_min: float = field(default=0.1, metadata={"help": "smallest epsilon drawn in training"})
    epsilon_max: float = field(default=16.0, metadata={"help": "largest finite epsilon drawn in training"})
    p_no_privacy: float = field(default=0.2, metadata={"help": "probability of epsilon = inf for a set"})
    delta: float = field(default=DEFAULT_DELTA, metadata={"help": "delta of the simulated releases"})
    hidden: int = field(default=256, metadata={"help": "width of H's hidden layers"})
    encoder: Path = field(default=ENCODER_PATH, metadata={"help": "φ to train H on (the shipped encoder; the "
                                                                  "ablation's other embedding dimensions)"})
    depth: int = field(default=1, metadata={"help": "hidden blocks of H after its input layer (the ablation's sizes)"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    warmup_steps: int = field(default=100, metadata={"help": "linear learning-rate warm-up"})
    limit_images: int = field(default=0, metadata={"help": "use only the first N public images (0 = all; for tests)"})
    save_every: int = field(default=100, metadata={"help": "write resumable state every N steps"})
    seed: int = field(default=0, metadata={"help": "seed for public-set sampling and simulated noise"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    anchor: bool = field(default=True, metadata={"help": "anchor H at the public mean embedding (that mean -> base model)"})
    anchor_radius: float = field(default=0.1, metadata={"help": "how far the anchor reaches (0 = everywhere); chosen on public sets"})
    p_class_sets: float = field(default=0.0, metadata={"help": "share of drawn sets that are one class of the public train "
                                                                "labels (0 = k-NN sets and mixtures only, as shipped)"})
    freeze_a: bool = field(default=False, metadata={"help": "keep H's shared LoRA down-projections A as they start "
                                                            "(continuing a shipped H: the QEM and slicing use its A)"})
    snr_gamma: float = field(default=0.0, metadata={"help": "Min-SNR-gamma loss weight min(SNR, g) / SNR per timestep "
                                                            "(Hang et al. 2023; 0 = the plain noise MSE)"})


def public_embeddings(images: torch.Tensor, cache: Path | None = None, encoder: Path = ENCODER_PATH) -> torch.Tensor:
    """phi of every public image, cached next to the training state."""
    from .encoder import embed, load_encoder

    encoder = Path(encoder)
    key = f"{encoder.resolve()}-{encoder.stat().st_mtime_ns}-{len(images)}" if encoder.exists() else None
    if cache is not None and cache.exists():
        saved = torch.load(cache, weights_only=False)
        if saved.get("key") == key:
            return saved["emb"]
    emb = embed(images, load_encoder(encoder, device=torch.device("cpu")))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "emb": emb}, cache)
    return emb


class PublicSetSampler:
    """Draws public sets that resemble private uploads (k-NN neighbourhoods in phi space)."""

    def __init__(self, emb: torch.Tensor, cfg: HypernetTrainConfig, gen: torch.Generator,
                 labels: torch.Tensor | None = None) -> None:
        self.emb, self.cfg, self.gen = emb, cfg, gen
        self.by_class = None
        if labels is not None and cfg.p_class_sets > 0:  # public labels of the train split
            self.by_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels).tolist()]

    def _size(self) -> int:
        lo, hi = math.log(self.cfg.n_min), math.log(min(self.cfg.n_max, len(self.emb)))
        return int(round(math.exp(lo + (hi - lo) * torch.rand(1, generator=self.gen).item())))

    def _knn(self, n: int) -> torch.Tensor:
        anchor = torch.randint(0, len(self.emb), (1,), generator=self.gen)
        return torch.topk(self.emb @ self.emb[anchor].squeeze(0), n).indices

    def draw(self) -> torch.Tensor:
        # A k-NN set is as pure as its neighbourhood (for pullovers, coats and shirts under half one
        # class: docs/BENCHMARKS.md), so H never sees a folder of one kind of thing unless asked to.
        # With p_class_sets = 0 the draws are exactly the shipped ones (no extra random number).
        if self.by_class is not None and torch.rand(1, generator=self.gen).item() < self.cfg.p_class_sets:
            pool = self.by_class[int(torch.randint(0, len(self.by_class), (1,), generator=self.gen))]
            n = min(self._size(), len(pool))
            return pool[torch.randperm(len(pool), generator=self.gen)[:n]]
        n, kind = self._size(), torch.rand(1, generator=self.gen).item()
        if kind < 0.15:  # uniform mixture of everything
            return torch.randperm(len(self.emb), generator=self.gen)[:n]
        if kind < 0.35:  # two neighbourhoods
            return torch.unique(torch.cat([self._knn(max(n // 2, 1)), self._knn(n - n // 2)]))
        return self._knn(n)

    def epsilon(self) -> float:
        if torch.rand(1, generator=self.gen).item() < self.cfg.p_no_privacy:
            return math.inf
        lo, hi = math.log(self.cfg.epsilon_min), math.log(self.cfg.epsilon_max)
        return math.exp(lo + (hi - lo) * torch.rand(1, generator=self.gen).item())


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weight of the noise MSE at timesteps with cumulative alpha ``alpha_bar``.

    The noise MSE weighs an error in the predicted image by the signal-to-noise ratio
    SNR = a / (1 - a), so the noisy steps, where a sample's class and layout are decided, count
    least. min(SNR, gamma) / SNR leaves every step with SNR <= gamma at 1 and scales the nearly
    clean ones down (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting").
    gamma = 0: weight 1 everywhere (the plain loss).
    """
    if gamma <= 0:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr


def train_hypernet(cfg: HypernetTrainConfig, images: torch.Tensor | None = None) -> dict:
    from accelerate import Accelerator

    from .data import load_fashion_mnist

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    acc = Accelerator()
    device = acc.device
    labels = None
    if images is None:
        images, labels = load_fashion_mnist("train")
    if cfg.limit_images:
        images = images[: cfg.limit_images]
        labels = None if labels is None else labels[: cfg.limit_images]
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    emb = public_embeddings(images, work / "public_embeddings.pt", cfg.encoder)

    unet = add_lora(load_unet(device=device))
    unet.requires_grad_(False)
    hyper = HyperNetwork(lora_shapes_of(unet), embed_dim=emb.shape[1], hidden=cfg.hidden, depth=cfg.depth).to(device)
    if cfg.anchor:
        hyper.set_anchor(clipped_mean(emb), radius=cfg.anchor_radius)  # the public population's mean
    if cfg.freeze_a:
        hyper.lora_a.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in hyper.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=1e-4)
    # Each process draws different sets (seed + rank); the model starts identical everywhere.
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + acc.process_index)
    step, history, seconds = 0, [], 0.0
    anchor_from = 0 if cfg.anchor else None  # the step at which anchoring began (provenance)
    state_path = work / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        # A state saved before anchoring was switched on lacks only the (recomputed) anchor.
        missing, unexpected = hyper.load_state_dict(state["model"], strict=False)
        if unexpected or set(missing) - {"anchor"}:
            raise RuntimeError(f"{state_path} does not match this configuration (missing {missing}, "
                               f"unexpected {unexpected}); use another --work-dir")
        if state["opt"]["state"]:  # a seeded state (scripts/hypernet_continue.py) has fresh moments: nothing to load
            opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, history, seconds = state["step"], state["history"], state["seconds"]
        anchor_from = state.get("anchor_from", anchor_from if "anchor" in state["model"] else None)
        if cfg.anchor and anchor_from is None:
            anchor_from = step
        log.info("resumed hypernet training at step %d", step)
    hyper, opt = acc.prepare(hyper, opt)
    sampler = PublicSetSampler(emb, cfg, gen, labels)
    sched = make_train_scheduler()
    alphas = sched.alphas_cumprod.to(device)

    def set_loss(lora: dict[str, torch.Tensor], x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alphas[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
        pred = torch.func.functional_call(unet, lora, (a * x0 + s * noise, t), strict=False).sample
        err = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        return (err * min_snr_weight(alphas[t], cfg.snr_gamma)).mean()

    batched_loss = torch.func.vmap(set_loss)
    t_start, run_losses = time.time(), []

    def save() -> None:
        if not acc.is_main_process:
            return
        model = acc.unwrap_model(hyper)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "step": step,
                    "history": history, "seconds": seconds + time.time() - t_start, "anchor_from": anchor_from,
                    "config": {k: str(v) for k, v in asdict(cfg).items()}}, work / "state.tmp")
        (work / "state.tmp").replace(state_path)

    while step < cfg.max_steps and time.time() - t_start < cfg.minutes * 60:
        means, stds, xs = [], [], []
        for _ in range(cfg.sets_per_step):
            idx = sampler.draw()
            rel = release_mean(emb[idx], epsilon=sampler.epsilon(), delta=cfg.delta, generator=gen)
            means.append(rel.mean)
            stds.append(rel.noise_std_mean)
            pick = idx[torch.randint(0, len(idx), (cfg.images_per_set,), generator=gen)]
            xs.append(images[pick])
        x0 = torch.stack(xs).to(device)  # (S, b, 1, 32, 32)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, x0.shape[:2], generator=gen).to(device)
        lora = hyper(torch.stack(means).to(device), torch.tensor(stds, device=device))
        loss = batched_loss(lora, x0, noise, t).mean()
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(hyper.parameters(), 1.0)
        opt.step()
        step += 1
        run_losses.append(loss.item())
        if step % 25 == 0:
            history.append((step, sum(run_losses) / len(run_losses)))
            run_losses = []
            log.info("hypernet step %d loss %.4f (%.0f s this call)", step, history[-1][1], time.time() - t_start)
        if step % cfg.save_every == 0:
            save()
    save()
    acc.wait_for_everyone()
    summary = {"steps": step, "final_loss": history[-1][1] if history else None, "anchor_from_step": anchor_from,
               "anchor_radius": cfg.anchor_radius if cfg.anchor else None,
               "train_seconds": round(seconds + time.time() - t_start, 1)}
    if acc.is_main_process:
        save_hypernet(acc.unwrap_model(hyper), cfg.out, extra={"steps": str(step)})
        Path(cfg.out).with_suffix(".json").write_text(json.dumps({"summary": summary, "history": history}, indent=1))
    return summary
