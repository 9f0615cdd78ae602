"""Seed a resumable hypernetwork training state from a trained H (issue 18: "H trained longer").

    python -m dphyper train hypernet --no-anchor --max-steps 3635 --out runs/h3635/h.safetensors   # the first run
    python -m dphyper train hypernet --max-steps 3635 --out runs/h3635/hypernet.safetensors   # + anchor (radius 0.1)
    python scripts/hypernet_continue.py runs/hlong runs/h3635/hypernet.safetensors
    python -m dphyper train hypernet --no-anchor --work-dir runs/hlong --out runs/hlong/h.safetensors --max-steps 4535
    cp -r runs/hlong runs/hlong-anchor   # adding the anchor writes it into the state: do it on a copy
    python -m dphyper train hypernet --work-dir runs/hlong-anchor --out ASSETS_COPY/hypernet/hypernet.safetensors --max-steps 4535
    DPHYPER_ASSETS=ASSETS_COPY python -m dphyper bench --suite hypernet --doc /tmp/h.md   # then restore bench/hypernet.json, docs/samples.png

(and the same for 5,435 steps). The shipped H of 2026-12-01 is the average of the 3,635-, 4,535- and
5,435-step snapshots with the first one's A (``scripts/hypernet_average.py ... --keep lora_a``), chosen
on public sets by ``scripts/hypernet_select.py``. The source file (second argument, default the shipped
H) needs its ``.json`` beside it (steps, history). The 3,635-step H was trained without the anchor, which
was added afterwards with no further steps, so the state holds the weights without it. AdamW starts
with fresh moments (the file has no optimiser state) and the public-set draws with a new seed.
docs/BENCHMARKS.md, "H trained longer" and "checkpoint averaging", has the numbers.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from dphyper.diffusion import load_unet
from dphyper.hypernet import HYPERNET_PATH, HyperNetwork, lora_shapes_of
from dphyper.lora import add_lora


def main(work: Path, source: Path = HYPERNET_PATH) -> None:
    work.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(source))
    weights.pop("anchor")
    h = HyperNetwork(lora_shapes_of(add_lora(load_unet(device=torch.device("cpu")))), embed_dim=64, hidden=256)
    h.load_state_dict(weights)
    opt = torch.optim.AdamW(h.parameters(), lr=1e-3, weight_decay=1e-4)
    meta = json.loads(Path(source).with_suffix(".json").read_text())
    torch.save({"model": h.state_dict(), "opt": opt.state_dict(), "gen": torch.Generator().manual_seed(1000).get_state(),
                "step": meta["summary"]["steps"], "history": meta["history"], "seconds": meta["summary"]["train_seconds"],
                "anchor_from": None, "config": {}}, work / "state.pt")
    print(f"seeded {work / 'state.pt'} at step {meta['summary']['steps']}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/hlong"), Path(sys.argv[2]) if len(sys.argv) > 2 else HYPERNET_PATH)
