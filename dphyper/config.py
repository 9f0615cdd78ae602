"""Paths of the default profile, device choice, and dataclass -> argparse glue.

Configs are dataclasses whose fields carry ``metadata={"help": ...}``; the CLI is derived
from them so that every option is documented in exactly one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
ASSETS_DIR = Path(os.environ.get("DPHYPER_ASSETS", REPO_DIR / "assets"))

# The default offline profile: 32x32 grayscale, Fashion-MNIST padded from 28x28.
IMAGE_SIZE = 32
CONTENT_SIZE = 28  # images are fitted into 28x28 and padded, exactly like the public data
CHANNELS = 1

BASE_UNET_DIR = ASSETS_DIR / "base_unet"
BASE_UNET_WEIGHTS = BASE_UNET_DIR / "diffusion_pytorch_model.safetensors"  # (what identities hash)
ENCODER_PATH = ASSETS_DIR / "encoder" / "encoder.safetensors"
EVALUATOR_PATH = ASSETS_DIR / "evaluator" / "evaluator.safetensors"
EXAMPLES_DIR = ASSETS_DIR / "examples"


def get_device(prefer: str | None = None) -> torch.device:
    """The one place that chooses the device: CUDA when available, CPU otherwise.

    ``DPHYPER_DEVICE`` (or ``prefer``) overrides, e.g. ``cpu`` to force the CPU.
    """
    import torch  # here, not at the top: the CLI's --help reads this module without loading torch

    name = prefer or os.environ.get("DPHYPER_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def help_of(field: dataclasses.Field) -> str:
    return field.metadata.get("help", "")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, defaults: dict | None = None) -> None:
    """Add one ``--option`` per dataclass field, with its help text and default (``defaults`` overrides a
    field's default for this parser, e.g. each method's own output folder)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        typ = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if defaults and f.name in defaults:
            default = defaults[f.name]
        flag = "--" + f.name.replace("_", "-")
        helptext = f"{help_of(f)} (default: {default})"
        origin = typing.get_origin(typ)
        args = typing.get_args(typ)
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=helptext)
            continue
        if origin in (typing.Union, types.UnionType):  # Optional[X]
            inner = [a for a in args if a is not type(None)][0]
            typ = inner
        if typing.get_origin(typ) is tuple:
            parser.add_argument(flag, type=typing.get_args(typ)[0], nargs="+", default=default, help=helptext)
        elif typ is Path:
            parser.add_argument(flag, type=Path, default=default, help=helptext)
        else:
            parser.add_argument(flag, type=typ, default=default, help=helptext)


def dataclass_from_args(cls: type, ns: argparse.Namespace):
    values = {}
    for f in dataclasses.fields(cls):
        if f.init and hasattr(ns, f.name):
            v = getattr(ns, f.name)
            if isinstance(v, list):
                v = tuple(v)
            values[f.name] = v
    return cls(**values)
