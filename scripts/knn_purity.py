"""How pure are the public sets H trains on? (issue 18, part 2, fifth measurement)

For each class c of the Fashion-MNIST train split, 40 k-NN sets in phi space (the training sampler's
`_knn`: the n nearest train images of a random train image of class c) and the share of each set that
is of class c. Public data and public labels only. Prints one row per n.

    python scripts/knn_purity.py [--embeddings runs/X/public_embeddings.pt]

The embeddings file is the cache that `python -m dphyper train hypernet` writes into its work dir
(phi of the 60,000 train images); without it they are computed (about 2 CPU-minutes).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dphyper.data import CLASS_NAMES, load_fashion_mnist
from dphyper.train_hypernet import public_embeddings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embeddings", type=Path, default=None)
    ap.add_argument("--sets", type=int, default=40)
    args = ap.parse_args()
    x, y = load_fashion_mnist("train")
    emb = public_embeddings(x, args.embeddings)
    g = torch.Generator().manual_seed(0)
    print("n | " + " | ".join(c for c in CLASS_NAMES))
    for n in (50, 200, 1000):
        row = []
        for c in range(len(CLASS_NAMES)):
            idx = torch.nonzero(y == c).flatten()
            anchors = idx[torch.randint(0, len(idx), (args.sets,), generator=g)]
            nearest = torch.topk(emb[anchors] @ emb.T, n, dim=1).indices
            row.append((y[nearest] == c).float().mean().item())
        print(f"{n} | " + " | ".join(f"{r:.2f}" for r in row))


if __name__ == "__main__":
    main()
