"""LoRA on the base UNet with peft, and the glue to drive it with generated weights.

Targets: the attention projections (to_q, to_k, to_v, to_out.0) and every ResNet's
``time_emb_proj``. The latter is the same path through which UNet2DModel injects class
conditioning (a vector added to the timestep embedding of each ResNet), so a rank-4 LoRA
there can steer *what* is generated with few parameters; attention LoRA alone barely can.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from typing import TYPE_CHECKING

from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from diffusers import UNet2DModel
    from peft import LoraConfig

LORA_RANK = 4
TARGET_MODULES = r".*(to_q|to_k|to_v|to_out\.0|time_emb_proj)$"
ADAPTER = "default"


def lora_config(rank: int = LORA_RANK, target_modules: str = TARGET_MODULES) -> LoraConfig:
    from peft import LoraConfig  # peft and diffusers load where used: the CLI's --help answers without them

    return LoraConfig(r=rank, lora_alpha=rank, target_modules=target_modules, init_lora_weights=True)


def add_lora(unet: UNet2DModel, rank: int = LORA_RANK, target_modules: str = TARGET_MODULES) -> UNet2DModel:
    """Inject a (zero-effect) LoRA adapter; base weights are frozen by peft."""
    from peft import inject_adapter_in_model

    return inject_adapter_in_model(lora_config(rank, target_modules), unet, adapter_name=ADAPTER)


def lora_parameter_names(unet: UNet2DModel) -> list[str]:
    """Names of LoRA parameters as they appear in ``unet.named_parameters()``, in order."""
    return [n for n, _ in unet.named_parameters() if ".lora_" in n]


def to_peft_key(param_name: str) -> str:
    """'x.lora_A.default.weight' -> 'x.lora_A.weight' (the key format peft saves)."""
    return param_name.replace(f".{ADAPTER}.", ".")


def lora_model_fn(unet: UNet2DModel, lora: dict[str, torch.Tensor]):
    """``model_fn(x, t)`` running a private copy of ``unet`` with the given LoRA tensors (differentiable).

    ``unet`` is never written. ``torch.func.functional_call`` swaps a module's parameters for
    the duration of each call, so calling it on the server's one shared UNet would let two
    concurrent sessions sample with each other's LoRA and leave one behind in the "base"
    model. Each ``lora_model_fn`` therefore works on its own copy (the default UNet is 4 MB;
    the copy's cost is in docs/BENCHMARKS.md, app suite).
    """
    private = copy.deepcopy(unet)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(private, lora, (x, t), strict=False).sample
    return fn


def save_lora(lora: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write peft-format keys (loadable with ``set_peft_model_state_dict``)."""
    tensors = {to_peft_key(k): v.detach().to(torch.float32).contiguous().cpu() for k, v in lora.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata or {})


def load_lora_into(unet: UNet2DModel, path: Path) -> UNet2DModel:
    """Inject an adapter if needed and load a saved LoRA file into it."""
    if not lora_parameter_names(unet):
        add_lora(unet)
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(unet, load_file(str(path)), adapter_name=ADAPTER)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"LoRA file does not match the UNet: unexpected keys {result.unexpected_keys[:3]}")
    return unet


def peft_state_dict(unet: UNet2DModel) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(unet, adapter_name=ADAPTER)
