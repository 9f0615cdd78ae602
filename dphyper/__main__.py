"""Command line: ``python -m dphyper <command> --help``.

Every option comes from a config dataclass, so its help text lives next to its default.
"""

from __future__ import annotations

import argparse
import importlib
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


# Every command's config class and runner as "module:attribute", imported only when that command is used:
# `--help` and a mistyped command answer without loading torch, diffusers or open_clip.
TRAIN = {  # python -m dphyper train MODEL
    "base": (".diffusion:BaseTrainConfig", ".diffusion:train_base",
             "the base diffusion UNet (DDPM on public Fashion-MNIST)"),
    "encoder": (".encoder:EncoderTrainConfig", ".encoder:train_encoder", "the dataset encoder phi (open_clip, public data)"),
    "evaluator": (".evaluator:EvaluatorTrainConfig", ".evaluator:train_evaluator",
                  "the evaluator classifier behind FID/KID"),
    # the checkpoint H (`train hypernet` trains a public model, not a private method)
    "hypernet": (".train_hypernet:HypernetTrainConfig", ".train_hypernet:train_hypernet",
                 "the hypernetwork H (noise-aware, public sets only)"),
    "public-map": (".public_map:PublicMapConfig", ".public_map:build",
                   "the app's public embedding map (noise view), a small asset"),
    "public-bank": (".reach:PublicBankConfig", ".reach:build",
                    "the public embeddings behind the hypernetwork's reach check, a small asset"),
}
COMMANDS = {  # python -m dphyper COMMAND
    "sample": (":SampleConfig", ":_cmd_sample", "write PNG samples from the base model"),
    "evaluate": (":EvaluateConfig", ":_cmd_evaluate", "FID/KID and class histogram of a folder of samples"),
    "bench": (".bench:BenchConfig", ".bench:run_bench", "measure the models and the private path; writes docs/BENCHMARKS.md"),
    "audit": (".audit:AuditConfig", ":_cmd_audit",
              "empirical privacy audit: a lower bound on epsilon from a canary membership test (exit status "
              "0 consistent, 1 violated, 3 inconclusive)"),
    "theory": (".theory:TheoryConfig", ".theory:rows", "teaching: one-shot vs DP-SGD risk in the synthetic setting (JSON rows)"),
    "examples": (":ExamplesConfig", ":_cmd_examples", "(re)write the bundled example sets from the Fashion-MNIST test split"),
}
# Aliases of `run METHOD` kept for older scripts (top-level commands, built without importing the registry so that
# `--help` stays fast); the method names are the registry's (checked by a test).
ALIASES = {"generate": "hypernet", "dpsgd": "dpsgd"}
AUDIT_EXIT = {"consistent": 0, "violated": 1, "inconclusive": 3}  # 2 is argparse's (and our) usage error


def _load(spec: str):
    module, attr = spec.split(":")
    mod = importlib.import_module(module, __package__) if module else sys.modules[__name__]
    return getattr(mod, attr)


def _cmd_examples(cfg: ExamplesConfig) -> dict:
    from .examples import write_examples

    return write_examples(cfg.out)


def _cmd_audit(cfg) -> dict:
    from .audit import run_audit

    return run_audit(cfg)


def _chosen(argv: list[str]) -> list[str]:
    """The command words of ``argv`` (its first two non-option tokens): which configs to import."""
    return [a for a in argv if not a.startswith("-")][:2]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The CLI. Only the chosen command's options are built (its module imported): pass the argv that will be
    parsed; ``None`` builds every command's options (documentation, tests)."""
    words = _chosen(argv) if argv is not None else None

    def wanted(*path: str) -> bool:
        return words is None or words[: len(path)] == list(path)

    parser = argparse.ArgumentParser(prog="python -m dphyper", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parent, name: str, cls_spec: str | type, runner, helptext: str, build: bool, **extra) -> argparse.ArgumentParser:
        if not build:  # listed in the parent's help; its options are built only when it is the chosen command
            return parent.add_parser(name, help=helptext)
        cls = _load(cls_spec) if isinstance(cls_spec, str) else cls_spec
        p = parent.add_parser(name, help=helptext, description=extra.pop("description", None) or cls.__doc__)
        add_dataclass_args(p, cls, defaults=extra.pop("defaults", None))
        p.set_defaults(config_cls=cls, runner=runner, **extra)
        return p

    train = sub.add_parser("train", help="train a public-data model of the default profile")
    tsub = train.add_subparsers(dest="what", required=True, metavar="MODEL")
    for name, (cls_spec, runner, helptext) in TRAIN.items():
        add(tsub, name, cls_spec, runner, helptext, wanted("train", name))
    if wanted("run") or (words is not None and words[:1] and words[0] in ALIASES):
        _add_run(sub, add, words)
    else:
        sub.add_parser("run", help="a private method on a folder (`run --help` lists the methods)")
        for alias, target in ALIASES.items():
            sub.add_parser(alias, help=f"alias of `run {target}`")
    for name, (cls_spec, runner, helptext) in COMMANDS.items():
        add(sub, name, cls_spec, runner, helptext, wanted(name))
    return parser


def _add_run(sub, add, words: list[str] | None) -> None:
    from .methods import METHODS
    from .methods.base import ADAPTER_FILES

    files = " or ".join(sorted(set(ADAPTER_FILES.values())))
    run = sub.add_parser("run", help="a private method on a folder: " + ", ".join(METHODS),
                         description="Run one private method on a folder of images. Every method writes the same "
                                     f"layout into its --out folder (default out-METHOD): its adapter ({files}), "
                                     "samples/*.png, grid.png and report.json.")
    rsub = run.add_subparsers(dest="method", required=True, metavar="METHOD")

    def add_method(parent, name: str, m, helptext: str) -> None:
        adapter = ADAPTER_FILES[m.adapter_format]
        p = add(parent, name, m.config_cls, None, helptext, True, method_name=m.name,  # main() calls run_cli
                description=f"{m.label}: noise {m.noise}. Writes {adapter}, samples/*.png, grid.png and report.json "
                            f"into --out.",
                defaults={"out": Path(f"out-{m.name}")})
        _require(p, "images")
        p.add_argument("--overwrite", action="store_true",
                       help="replace the outputs of an earlier run in --out (without it, such a folder is refused)")

    for m in METHODS.values():
        add_method(rsub, m.name, m, f"{m.label}: noise {m.noise}")
        for alias in m.aliases:
            add_method(rsub, alias, m, f"alias of `run {m.name}`")
    for alias, target in ALIASES.items():
        add_method(sub, alias, METHODS[target], f"alias of `run {target}`")


def _require(p: argparse.ArgumentParser, dest: str) -> None:
    """Make a config field a required option (its dataclass default is for library callers, not the CLI)."""
    for action in p._actions:
        if action.dest == dest:
            action.required, action.default = True, None
            action.help = action.help.rsplit(" (default:", 1)[0] + " (required)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(message)s")
    from .data import DataError

    try:
        cfg = dataclass_from_args(ns.config_cls, ns)
    except ValueError as exc:  # a config's own checks (e.g. epsilon NaN or <= 0)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if getattr(ns, "method_name", None):
            from .methods import get_method
            from .methods.base import run_cli

            result = run_cli(get_method(ns.method_name), cfg, overwrite=ns.overwrite)
        else:
            result = _load(ns.runner)(cfg)
    except (DataError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    if ns.command == "audit":
        return AUDIT_EXIT[result["verdict"]]
    return 0


if __name__ == "__main__":
    sys.exit(main())
