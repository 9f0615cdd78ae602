"""Private sets the public data does not cover (issue 41): where the flagship should lose.

Every set is built from data already on the machine, deterministically, and named by what it is:

- ``shift-rot90-N``: N test-split images (every class, drawn at random) turned by 90 degrees;
- ``shift-invert-N``: the same with black and white swapped;
- ``shift-glyphs-N``: typed digits and letters (``reach.synthetic_set``: Pillow's built-in font, random size,
  place and tilt), half of each;
- ``mixX-SHIFT-N``: X % of the set shifted as above, the rest unshifted test images, X in {25, 50};
  ``mix0`` is the unshifted mix itself.

Each set's reference (for FID, KID and precision/recall) is built the same way from images disjoint from the
private ones: the other half of the test split for the Fashion-MNIST part, other seeds for the glyphs. The
public models never saw any of it: the test split trains nothing, and the glyphs and turned or inverted
garments are not in the train split's population at all.
"""

from __future__ import annotations

import numpy as np
import torch

SHIFTS = ("rot90", "invert", "glyphs")
SHARES = (0.0, 0.25, 0.5, 1.0)
SIZES = (100, 1000)
SEED = 4101


def set_name(shift: str, share: float, n: int) -> str:
    if shift not in SHIFTS or share not in SHARES:
        raise ValueError(f"shift {shift!r} / share {share}: choose from {SHIFTS} and {SHARES}")
    if share == 1.0:
        return f"shift-{shift}-{n}"
    return f"mix{round(100 * share)}-{shift}-{n}"


def parse(name: str) -> tuple[str, float, int]:
    """'mix25-rot90-1000' -> ('rot90', 0.25, 1000); 'shift-glyphs-100' -> ('glyphs', 1.0, 100)."""
    head, shift, n = name.split("-")
    share = 1.0 if head == "shift" else int(head.removeprefix("mix")) / 100
    if set_name(shift, share, int(n)) != name:
        raise ValueError(f"not a shifted set's name: {name!r}")
    return shift, share, int(n)


def _shifted(shift: str, x: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` shifted images: from the garments ``x`` (rot90, invert) or drawn (glyphs)."""
    if shift == "rot90":
        return torch.rot90(x[:count], k=1, dims=(2, 3))
    if shift == "invert":
        return -x[:count]
    from .reach import synthetic_set

    half = count // 2
    return torch.cat([synthetic_set("digits", half, seed=seed), synthetic_set("letters", count - half, seed=seed + 1)])


def build_shifted(name: str, max_reference: int = 1000) -> dict:
    """The private images and their reference, in ``compare.build_set``'s format."""
    from .data import load_fashion_mnist

    shift, share, n = parse(name)
    x, _ = load_fashion_mnist("test")
    rng = np.random.default_rng(SEED + n + round(100 * share) + SHIFTS.index(shift))
    order = torch.as_tensor(rng.permutation(len(x)))
    half = len(x) // 2
    private_pool, reference_pool = x[order[:half]], x[order[half:]]  # disjoint garments
    m = min(max_reference, len(reference_pool))

    def build(pool: torch.Tensor, count: int, seed: int) -> torch.Tensor:
        k = round(share * count)
        parts = [_shifted(shift, pool, k, seed), pool[k:count]] if k else [pool[:count]]
        return torch.cat([p for p in parts if len(p)])

    private = build(private_pool, n, SEED + 7)
    reference = build(reference_pool, m, SEED + 1_000_007)  # other glyph seeds than the private ones
    return {"private": private, "reference": reference,
            "reference_hist": torch.full((10,), 0.1),  # class agreement: the balanced garments' histogram
            "info": {"name": name, "kind": "shifted", "n": n, "split": "test", "classes": [],
                     "n_reference": int(len(reference)), "reference_from": "test",
                     "seed": SEED, "note": f"{round(100 * share)} % {shift}, the rest unshifted test images"}}


def all_names(sizes=SIZES) -> list[str]:
    return [set_name(s, share, n) for n in sizes for s in SHIFTS for share in SHARES if share > 0]
