"""What the encoder phi lets the release carry (issue 18, part 1: "what the embedding costs").

H sees a private set only through one release: the noisy mean of phi's (clipped, unit-norm)
embeddings. Independently of H, a better phi is one whose noisy set mean says more about the set.
For each encoder given, on public data only, this script measures:

* ``probe``: test accuracy of a linear classifier (softmax regression) on single-image embeddings,
  trained on the 60,000 train images: how much class information one embedding keeps;
* ``composition``: how well the *released* mean of a set predicts the set's class mix. Sets of n
  train (fit) or test (score) images with Dirichlet(0.3) class proportions; the release is
  ``privacy.release_mean`` at the given epsilon (seeded: public data); a ridge regression from the
  released mean to the class histogram is fitted on 2,000 train sets and scored on 1,000 test sets
  as the mean total-variation distance (0 = exact mix, 1 = disjoint). At epsilon = inf it measures
  the embedding; at finite epsilon, the embedding's signal against the release's noise.
* ``single``: the example sets' question (one class, n = 200): how often the released mean of a
  one-class set of test images lies nearest (cosine) to the mean embedding of its own class among
  the ten train-class means; per class and on average, 100 sets per class.

    python scripts/phi_compare.py --label shipped
    python scripts/phi_compare.py --label phi2 --encoder runs/phi2/encoder.safetensors
    python scripts/phi_compare.py --label pca64 --encoder pca64

``--encoder pca64`` is a training-free reference: the top 64 principal components of the train pixels,
L2-normalised like phi's output (same release, same dimension).

Results go to ``bench/phi_compare.json`` under ``--label`` (with the encoder's training record).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dphyper.config import ENCODER_PATH, REPO_DIR
from dphyper.data import load_fashion_mnist
from dphyper.encoder import embed, load_encoder
from dphyper.privacy import release_mean

OUT = REPO_DIR / "bench" / "phi_compare.json"


def linear_probe(e_train: torch.Tensor, y_train: torch.Tensor, e_test: torch.Tensor, y_test: torch.Tensor,
                 steps: int = 300) -> float:
    torch.manual_seed(0)
    w = torch.zeros(e_train.shape[1] + 1, 10, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    xa = torch.cat([e_train, torch.ones(len(e_train), 1)], 1)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xa @ w, y_train) + 1e-4 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (torch.cat([e_test, torch.ones(len(e_test), 1)], 1) @ w).argmax(1)
    return float((pred == y_test).float().mean())


def draw_sets(e: torch.Tensor, y: torch.Tensor, count: int, n: int, g: torch.Generator):
    """``count`` sets of ``n`` images with Dirichlet(0.3) class proportions: (embeddings, histograms)."""
    by_class = [torch.nonzero(y == c).flatten() for c in range(10)]
    dirichlet = torch.distributions.Dirichlet(torch.full((10,), 0.3))
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    out = []
    for _ in range(count):
        p = dirichlet.sample()
        counts = torch.multinomial(p, n, replacement=True).bincount(minlength=10)
        idx = torch.cat([by_class[c][torch.randint(0, len(by_class[c]), (int(k),), generator=g)]
                         for c, k in enumerate(counts) if k])
        out.append((e[idx], counts.float() / n))
    return out


def composition_error(train_sets, test_sets, epsilon: float, g: torch.Generator) -> float:
    def released(sets):
        return torch.stack([release_mean(s, epsilon=epsilon, generator=g).mean for s, _ in sets])

    xtr, xte = released(train_sets), released(test_sets)
    ytr, yte = torch.stack([h for _, h in train_sets]), torch.stack([h for _, h in test_sets])
    xa = torch.cat([xtr, torch.ones(len(xtr), 1)], 1).double()
    w = torch.linalg.solve(xa.T @ xa + 1e-3 * torch.eye(xa.shape[1], dtype=torch.float64), xa.T @ ytr.double())
    pred = (torch.cat([xte, torch.ones(len(xte), 1)], 1).double() @ w).clamp(min=0)
    pred = pred / pred.sum(1, keepdim=True).clamp(min=1e-9)
    return float(0.5 * (pred - yte.double()).abs().sum(1).mean())


def single_class(etr, ytr, ete, yte, epsilon: float, n: int = 200, per_class: int = 100) -> dict:
    centroids = F.normalize(torch.stack([etr[ytr == c].mean(0) for c in range(10)]), dim=-1)
    g = torch.Generator().manual_seed(11)
    hits = {}
    for c in range(10):
        idx = torch.nonzero(yte == c).flatten()
        right = 0
        for _ in range(per_class):
            m = release_mean(ete[idx[torch.randperm(len(idx), generator=g)[:n]]], epsilon=epsilon, generator=g).mean
            right += int((F.normalize(m, dim=0) @ centroids.T).argmax() == c)
        hits[c] = right / per_class
    return {"mean": sum(hits.values()) / 10, "per_class": hits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", required=True)
    ap.add_argument("--encoder", type=Path, default=ENCODER_PATH)
    ap.add_argument("--epsilons", default="inf,4,1,0.25")
    ap.add_argument("--sizes", default="100,1000")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    if str(a.encoder) == "pca64":
        flat = xtr.flatten(1)
        mu = flat.mean(0)
        _, _, v = torch.pca_lowrank(flat - mu, q=64, center=False, niter=4)
        etr = F.normalize((flat - mu) @ v, dim=-1)
        ete = F.normalize((xte.flatten(1) - mu) @ v, dim=-1)
    else:
        enc = load_encoder(a.encoder, device=torch.device("cpu"))
        etr, ete = embed(xtr, enc), embed(xte, enc)
    row = {"encoder": str(a.encoder), "probe": linear_probe(etr, ytr, ete, yte), "composition": {}}
    record = Path(a.encoder).with_suffix(".json")
    if record.exists():
        r = json.loads(record.read_text())
        row["trained"] = {k: r.get(k) for k in ("epochs", "train_seconds", "test_zero_shot_accuracy")}
    for n in (int(s) for s in a.sizes.split(",")):
        g = torch.Generator().manual_seed(n)
        train_sets, test_sets = draw_sets(etr, ytr, 2000, n, g), draw_sets(ete, yte, 1000, n, g)
        for eps in (float(s) for s in a.epsilons.split(",")):
            row["composition"][f"n={n},eps={eps:g}"] = composition_error(
                train_sets, test_sets, eps, torch.Generator().manual_seed(7))
    row["single"] = {f"eps={eps:g}": single_class(etr, ytr, ete, yte, eps) for eps in (math.inf, 1.0, 0.25)}
    row["seconds"] = round(time.time() - t0, 1)
    res = json.loads(OUT.read_text()) if OUT.exists() else {}
    res[a.label] = row
    OUT.write_text(json.dumps(res, indent=1))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
