"""Command line: ``python -m dphyper <command> --help``.

Every option comes from a config dataclass, so its help text lives next to its default.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .config import EXAMPLES_DIR, add_dataclass_args, dataclass_from_args


@dataclass
class SampleConfig:
    """`python -m dphyper sample`: PNG samples from the base model (no private data)."""

    out: Path = field(default=Path("samples"), metadata={"help": "output folder: samples/*.png and grid.png, as `run` writes"})
    samples: int = field(default=16, metadata={"help": "number of images to write"})
    steps: int = field(default=25, metadata={"help": "DDIM sampling steps"})
    seed: int = field(default=0, metadata={"help": "seed of the sampling noise"})
    grid: bool = field(default=True, metadata={"help": "also write grid.png"})


@dataclass
class EvaluateConfig:
    """`python -m dphyper evaluate`: FID/KID (evaluator features) and a class histogram."""

    samples: Path = field(default=Path("samples"), metadata={"help": "folder of generated images"})
    reference: Path = field(default=Path("reference"), metadata={"help": "folder of reference images"})
    kid_subset_size: int = field(default=0, metadata={"help": "KID subset size (0 = min(1000, n))"})


@dataclass
class ExamplesConfig:
    """`python -m dphyper examples`: write assets/examples/<set>/*.png from the test split."""

    out: Path = field(default=EXAMPLES_DIR, metadata={"help": "folder to write the sets into"})


def _cmd_sample(cfg: SampleConfig) -> dict:
    import time

    from .data import make_grid, save_pngs
    from .diffusion import load_unet, sample

    t0 = time.time()
    unet = load_unet()
    x = sample(unet, cfg.samples, steps=cfg.steps, seed=cfg.seed)
    paths = save_pngs(x, Path(cfg.out) / "samples")  # the same layout as every `run`
    if cfg.grid:
        make_grid(x).save(Path(cfg.out) / "grid.png")
    return {"written": len(paths), "out": str(cfg.out), "seconds": round(time.time() - t0, 2)}


def _cmd_evaluate(cfg: EvaluateConfig) -> dict:
    from .data import load_folder
    from .evaluator import evaluate

    samples = load_folder(cfg.samples)
    reference = load_folder(cfg.reference)
    return evaluate(samples.images, reference.images, kid_subset_size=cfg.kid_subset_size or None)


def build_parser() -> argparse.ArgumentParser:
    from .audit import AuditConfig
    from .bench import BenchConfig
    from .diffusion import BaseTrainConfig
    from .dpsgd import DPSGDConfig
    from .encoder import EncoderTrainConfig
    from .evaluator import EvaluatorTrainConfig
    from .methods import METHODS
    from .public_map import PublicMapConfig
    from .reach import PublicBankConfig
    from .theory import TheoryConfig
    from .train_hypernet import HypernetTrainConfig

    parser = argparse.ArgumentParser(prog="python -m dphyper", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parent, name: str, cls: type, helptext: str) -> None:
        p = parent.add_parser(name, help=helptext, description=cls.__doc__)
        add_dataclass_args(p, cls)
        p.set_defaults(config_cls=cls)

    train = sub.add_parser("train", help="train a public-data model of the default profile")
    tsub = train.add_subparsers(dest="what", required=True, metavar="MODEL")
    add(tsub, "base", BaseTrainConfig, "the base diffusion UNet (DDPM on public Fashion-MNIST)")
    add(tsub, "encoder", EncoderTrainConfig, "the dataset encoder phi (open_clip, public data)")
    add(tsub, "evaluator", EvaluatorTrainConfig, "the evaluator classifier behind FID/KID")
    add(tsub, "hypernet", HypernetTrainConfig, "the hypernetwork H (noise-aware, public sets only)")
    add(tsub, "public-map", PublicMapConfig, "the app's public embedding map (noise view), a small asset")
    add(tsub, "public-bank", PublicBankConfig, "the public embeddings behind the hypernetwork's reach check, a small asset")
    run = sub.add_parser("run", help="a private method on a folder: " + ", ".join(METHODS),
                         description="Run one private method on a folder of images. Every method writes the same "
                                     "outputs: lora.safetensors, samples/*.png, grid.png, report.json.")
    rsub = run.add_subparsers(dest="method", required=True, metavar="METHOD")
    for m in METHODS.values():
        add(rsub, m.name, m.config_cls, f"{m.label}: noise {m.noise}")
    add(sub, "generate", METHODS["hypernet"].config_cls, "alias of `run hypernet`")
    add(sub, "dpsgd", DPSGDConfig, "alias of `run dpsgd`")
    add(sub, "sample", SampleConfig, "write PNG samples from the base model")
    add(sub, "evaluate", EvaluateConfig, "FID/KID and class histogram of a folder of samples")
    add(sub, "bench", BenchConfig, "measure the models and the private path; writes docs/BENCHMARKS.md")
    add(sub, "audit", AuditConfig, "empirical privacy audit: a lower bound on epsilon from a canary membership test")
    add(sub, "theory", TheoryConfig, "teaching: one-shot vs DP-SGD risk in the synthetic setting (JSON rows)")
    add(sub, "examples", ExamplesConfig, "(re)write the bundled example sets from the Fashion-MNIST test split")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(message)s")
    from .data import DataError

    try:
        cfg = dataclass_from_args(ns.config_cls, ns)
    except ValueError as exc:  # a config's own checks (e.g. epsilon NaN or <= 0)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if ns.command == "train":
            if ns.what == "base":
                from .diffusion import train_base as run
            elif ns.what == "encoder":
                from .encoder import train_encoder as run
            elif ns.what == "hypernet":
                from .train_hypernet import train_hypernet as run
            elif ns.what == "public-map":
                from .public_map import build as run
            elif ns.what == "public-bank":
                from .reach import build as run
            else:
                from .evaluator import train_evaluator as run
            result = run(cfg)
        elif ns.command in ("run", "generate", "dpsgd"):
            from .methods import get_method
            from .methods.base import run_cli

            name = {"generate": "hypernet", "dpsgd": "dpsgd"}.get(ns.command) or ns.method
            result = run_cli(get_method(name), cfg)
        elif ns.command == "bench":
            from .bench import run_bench

            result = run_bench(cfg)
        elif ns.command == "audit":
            from .audit import run_audit

            result = run_audit(cfg)
        elif ns.command == "theory":
            from .theory import rows

            result = rows(cfg)
        elif ns.command == "examples":
            from .examples import write_examples

            result = write_examples(cfg.out)
        elif ns.command == "sample":
            result = _cmd_sample(cfg)
        else:
            result = _cmd_evaluate(cfg)
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
