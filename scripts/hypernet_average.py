"""Average hypernetwork checkpoints tensor by tensor (issue 18, part 2: "checkpoint averaging").

The snapshots of one training run (the shipped H at 3,635 steps and its continuations by
``scripts/hypernet_continue.py``) disagree per class; a uniform average of their weights (as in
stochastic weight averaging, Izmailov et al. 2018) may be steadier than any one of them. H's weights
are public (trained on public sets only), so averaging them costs no privacy. The anchor (the public
mean embedding) and its radius must be the same in every input.

    python scripts/hypernet_average.py assets/hypernet/hypernet.safetensors \\
        /work/bg/hlong/assets_4535/hypernet/hypernet.safetensors \\
        /work/bg/hlong/assets_5435/hypernet/hypernet.safetensors --out /tmp/havg/hypernet.safetensors [--keep lora_a]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def average(paths: list[Path], keep: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The mean of every tensor, except those whose name starts with a prefix in ``keep``: those are
    taken from the first checkpoint (e.g. ``lora_a``, H's shared public A, which the quadratic EM and
    the slicing mechanism also use)."""
    if len(paths) < 2:
        raise ValueError("give at least two checkpoints to average")
    tensors = [load_file(str(p)) for p in paths]
    metas = []
    for p in paths:
        with safe_open(str(p), "pt") as fh:
            metas.append(fh.metadata() or {})
    keys = set(tensors[0])
    for p, t, m in zip(paths, tensors, metas):
        if set(t) != keys or any(t[k].shape != tensors[0][k].shape for k in keys):
            raise ValueError(f"{p} does not have the same tensors as {paths[0]}")
        for field in ("embed_dim", "hidden", "anchor_radius"):
            if m.get(field) != metas[0].get(field):
                raise ValueError(f"{p}: {field} {m.get(field)} differs from {metas[0].get(field)}")
    # the same public mean, recomputed per run: equal up to float rounding
    if "anchor" in keys and any(not torch.allclose(t["anchor"], tensors[0]["anchor"], atol=1e-6) for t in tensors):
        raise ValueError("the checkpoints have different anchors")
    out = {k: (tensors[0][k].float() if k.startswith(keep) else torch.stack([t[k].float() for t in tensors]).mean(0))
           .contiguous() for k in sorted(keys)}
    meta = {**metas[0], "averaged_from": ", ".join(str(p) for p in paths),
            **({"kept_from_first": ", ".join(keep)} if keep else {})}
    return out, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--keep", action="append", default=[],
                    help="tensor-name prefix taken from the first checkpoint, not averaged (repeatable)")
    a = ap.parse_args()
    out, meta = average(a.checkpoints, tuple(a.keep))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(a.out), metadata=meta)
    print(f"wrote {a.out}: mean of {len(a.checkpoints)} checkpoints")


if __name__ == "__main__":
    main()
