"""How much of the backbone trains: all of it, none (linear probe), its last N blocks, or LoRA adapters.

PIGEON fine-tunes StreetCLIP with all but the last layer frozen; OSV-5M's best model is a CLIP ViT-L/14
with its last block unfrozen: :func:`unfreeze_last_n_blocks` does both, for ViT blocks (timm ``blocks``,
transformers encoder layers) and CNN stages (timm ``stages`` / ``blocks`` / ``layer1..4``). The final
norm and any projection after the blocks train with them. :func:`add_lora` puts LoRA adapters (peft)
on a ViT's attention projections (query/key/value and output) and freezes the rest of the backbone;
``save_pretrained`` merges them into the weights (:func:`merge_lora_state_dict`), so a saved model is a
plain geohf model that loads without peft.
"""

from __future__ import annotations

import inspect
import re

import torch
from torch import nn

from ..errors import UserError

# Linear layers of attention that LoRA adapts: a module path ending in one of these
LORA_TARGETS = re.compile(
    r"(^|\.)(attn\.(qkv|proj|q|k|v)"  # timm ViT / Swin / EVA
    r"|self_attn\.(q_proj|k_proj|v_proj|out_proj)"  # transformers CLIP, SigLIP
    r"|attention\.(q_proj|k_proj|v_proj|o_proj|out_proj)"  # transformers DINOv2
    r"|attention\.attention\.(query|key|value)|attention\.output\.dense)$"  # transformers ViT
)


def backbone_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks in order: ViT blocks / encoder layers, or a CNN's stages."""
    if inspect.ismethod(getattr(backbone, "blocks", None)):  # a transformers tower
        return list(backbone.blocks())
    for attr in ("blocks", "stages", "layers"):
        found = getattr(backbone, attr, None)
        if isinstance(found, (nn.Sequential, nn.ModuleList)) and len(found):
            return list(found)
    resnet = [getattr(backbone, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(layer, nn.Module) for layer in resnet):
        return resnet
    raise UserError(
        f"cannot find the blocks of {type(backbone).__name__} to unfreeze (looked for blocks, stages, layers, "
        "layer1..4, encoder layers); use --freeze_backbone or full fine-tuning"
    )


def unfreeze_last_n_blocks(backbone: nn.Module, n: int, name: str = "the backbone") -> int:
    """Freeze the backbone but its last ``n`` blocks and what follows them (final norm, projection);
    returns the depth. Raises :class:`UserError` unless ``1 <= n <= depth``."""
    blocks = backbone_blocks(backbone)
    depth = len(blocks)
    if not 1 <= n <= depth:
        raise UserError(
            f"--unfreeze_last_n_blocks {n}: {name} has {depth} blocks; pass 1 to {depth} "
            "(or --freeze_backbone for none)"
        )
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    trained = {id(p) for block in blocks[-n:] for p in block.parameters()}
    params = list(backbone.parameters())
    last = max(i for i, p in enumerate(params) if id(p) in in_blocks)
    trained |= {id(p) for p in params[last + 1 :]}
    for p in params:
        p.requires_grad_(id(p) in trained)
    return depth


def lora_target_names(backbone: nn.Module) -> list[str]:
    """The attention projections (``nn.Linear``) of a ViT backbone that LoRA adapts."""
    return [name for name, m in backbone.named_modules() if isinstance(m, nn.Linear) and LORA_TARGETS.search(name)]


def add_lora(backbone: nn.Module, r: int, alpha: float | None = None, dropout: float = 0.0, name: str = "") -> int:
    """LoRA adapters (peft) of rank ``r`` on the attention projections; the rest of the backbone is frozen.
    ``alpha`` defaults to ``2 r``. Returns the number of adapted layers."""
    if r < 1:
        raise UserError(f"--lora_r {r}: the LoRA rank must be at least 1")
    targets = lora_target_names(backbone)
    if not targets:
        raise UserError(
            f"--lora_r: {name or type(backbone).__name__} has no attention projections for LoRA (it adapts ViT "
            "towers); use --unfreeze_last_n_blocks for a CNN"
        )
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise UserError("--lora_r needs peft: pip install 'geohf[peft]'") from err
    for p in backbone.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=r, lora_alpha=2 * r if alpha is None else alpha, lora_dropout=dropout, target_modules=targets)
    inject_adapter_in_model(config, backbone)
    for pname, p in backbone.named_parameters():
        p.requires_grad_("lora_" in pname)
    return len(targets)


def has_lora(module: nn.Module) -> bool:
    return any(hasattr(m, "lora_A") and hasattr(m, "base_layer") for m in module.modules())


@torch.no_grad()
def merge_lora_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``module``'s state dict with every LoRA layer folded into its base layer (``W + scale · B A``), under
    the plain layer's keys; the model itself keeps its adapters (a checkpoint mid-training changes nothing)."""
    out = dict(state)
    for name, layer in module.named_modules():
        if not (hasattr(layer, "lora_A") and hasattr(layer, "base_layer")):
            continue
        prefix = f"{name}." if name else ""
        for key in [k for k in out if k.startswith(prefix) and k[len(prefix) :].startswith("lora_")]:
            del out[key]
        for pname in ("weight", "bias"):
            value = out.pop(f"{prefix}base_layer.{pname}", None)
            if value is not None:
                out[f"{prefix}{pname}"] = value
        weight = out[f"{prefix}weight"]
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
        out[f"{prefix}weight"] = weight
    return out


def enable_gradient_checkpointing(backbone: nn.Module, kwargs: dict | None = None) -> None:
    """Recompute the backbone's activations in the backward (transformers' or timm's own mechanism)."""
    model = getattr(backbone, "model", None)
    if model is not None and hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or {"use_reentrant": False})
    elif hasattr(backbone, "set_grad_checkpointing"):
        backbone.set_grad_checkpointing(True)
    else:
        raise UserError(f"--gradient_checkpointing: {type(backbone).__name__} has no checkpointing to turn on")


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; LoRA's adapters count as trainable, their frozen base as total."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
