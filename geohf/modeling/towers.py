"""Vision towers from transformers: CLIP, SigLIP, SigLIP2, DINOv2, and any other transformers vision model.

Only the vision tower is built and stored: a full ``CLIPConfig`` / ``SiglipConfig`` / ``Siglip2Config``
(``geolocal/StreetCLIP``, ``openai/clip-vit-large-patch14-336``, ``google/siglip-base-patch16-224``)
becomes its ``vision_config``, and the weights of the full checkpoint map onto the tower (its text
tower is never built). The pooled embedding is the tower's own:

* CLIP: the post-layernorm CLS token, projected by ``visual_projection`` with ``projection=True``
  (the embedding CLIP matches with text, as PIGEON's StreetCLIP and GeoCLIP use), L2-normalised with
  ``normalize=True`` (the unit vector CLIP's zero-shot logits are cosines of); ``pooling="cls_prenorm"``: the
  CLS token of the last hidden state, before ``post_layernorm`` (the features OSV-5M's baseline and PLONK's
  StreetCLIP embedding read);
* SigLIP / SigLIP2: the attention-pooling head (``pooler_output``);
* DINOv2: the layer-normed CLS token, or ``pooling="cls+mean"`` CLS concatenated with the mean
  patch token (DINOv2's linear-probe embedding, twice as wide);
* other vision models (ViT, ConvNeXt...): ``pooler_output``, else the CLS token / spatial mean.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

# model_type (full or vision-only config) -> family
FAMILIES = {
    "clip": "clip",
    "clip_vision_model": "clip",
    "siglip": "siglip",
    "siglip_vision_model": "siglip",
    "siglip2": "siglip2",
    "siglip2_vision_model": "siglip2",
    "dinov2": "dinov2",
    "dinov2_with_registers": "dinov2",
}
SUPPORTED = "CLIP, SigLIP, SigLIP2, DINOv2, or a transformers vision model (ViT, ConvNeXt, Swin...)"
POOLINGS = ("cls", "cls+mean", "cls_prenorm")
_POOLING_FAMILY = {"cls+mean": "dinov2", "cls_prenorm": "clip"}  # the family each pooling but "cls" applies to
TOWER_OPTIONS = {"hf_config", "projection", "pooling", "normalize"}  # the backbone_kwargs a transformers tower takes
# the model class of each family's tower: (without projection, with projection)
_CLASSES = {
    "clip": ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
    "siglip": ("SiglipVisionModel", None),
    "siglip2": ("Siglip2VisionModel", None),
}
# the family's preprocessing when a checkpoint saves no preprocessor_config.json
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_DEFAULT_PREP = {
    "clip": ("bicubic", 1.0, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "siglip": ("bicubic", 1.0, [0.5] * 3, [0.5] * 3),
    "siglip2": ("bilinear", 1.0, [0.5] * 3, [0.5] * 3),
    "dinov2": ("bicubic", 0.875, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    None: ("bilinear", 1.0, [0.5] * 3, [0.5] * 3),
}
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_DROP_KEYS = ("architectures", "_name_or_path", "transformers_version", "id2label", "label2id")


def family_of(model_type: str) -> str | None:
    """The tower family of a config's ``model_type`` (``None``: another transformers vision model)."""
    return FAMILIES.get(model_type)


def is_vision_model_type(model_type: str) -> bool:
    """Whether geohf can use a transformers model of this type as a backbone."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_MAPPING_NAMES

    return model_type in FAMILIES or model_type in MODEL_FOR_IMAGE_MAPPING_NAMES


def vision_config_dict(config) -> dict:
    """The vision tower's config (a dict with ``model_type``) of a full or vision-only transformers config.

    A ``CLIPConfig`` gives its ``vision_config`` with the top-level ``projection_dim`` (the width of
    ``visual_projection`` in a full CLIP checkpoint); raises :class:`UserError` for a non-vision family.
    """
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    model_type = values.get("model_type", "")
    if not is_vision_model_type(model_type):
        name = type(config).__name__ if hasattr(config, "to_dict") else f"model_type {model_type!r}"
        raise UserError(f"{name} is not a vision model geohf can use as a backbone; supported: {SUPPORTED}")
    if model_type in ("clip", "siglip", "siglip2"):
        vision = dict(values["vision_config"])
        vision["model_type"] = f"{model_type}_vision_model"
        if model_type == "clip" and values.get("projection_dim"):
            vision["projection_dim"] = values["projection_dim"]
        values = vision
    for key in _DROP_KEYS:
        values.pop(key, None)
    return values


def tower_image_size(vision: dict) -> int:
    """The tower's native input side: ``image_size``, or for SigLIP2 ``sqrt(num_patches) × patch_size``."""
    if vision.get("image_size"):
        size = vision["image_size"]
        return int(size[-1] if isinstance(size, (list, tuple)) else size)
    if vision.get("num_patches") and vision.get("patch_size"):
        return math.isqrt(int(vision["num_patches"])) * int(vision["patch_size"])
    return 224


def read_preprocessor_config(name: str) -> dict | None:
    """``preprocessor_config.json`` of a local folder or Hub repository (``None`` when it has none)."""
    local = Path(name, "preprocessor_config.json")
    if Path(name).is_dir():
        return json.loads(local.read_text()) if local.is_file() else None
    from transformers.utils import cached_file

    try:
        path = cached_file(name, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    return json.loads(Path(path).read_text()) if path else None


def _side(value, *keys) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in keys:
            if value.get(key):
                return int(value[key])
    return None


def tower_preprocessing(name: str, vision: dict) -> dict:
    """The tower's eval preprocessing (``image_size, interpolation, crop_pct, image_mean, image_std``), from the
    checkpoint's ``preprocessor_config.json`` (resize, centre crop, resample, mean/std), else the family's.

    geohf resizes the shorter side and centre-crops: a processor that squashes to height × width
    (SigLIP's) is reproduced on square images exactly, on others up to the crop.
    """
    family = family_of(vision.get("model_type", ""))
    interpolation, crop_pct, mean, std = _DEFAULT_PREP[family]
    out = {
        "image_size": tower_image_size(vision),
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "image_mean": list(mean),
        "image_std": list(std),
    }
    proc = read_preprocessor_config(name)
    if not proc:
        return out
    if proc.get("max_num_patches") and proc.get("patch_size"):  # SigLIP2 NaFlex: a square of max_num_patches
        out["image_size"] = math.isqrt(int(proc["max_num_patches"])) * int(proc["patch_size"])
    resize = _side(proc.get("size"), "shortest_edge", "height")
    crop = _side(proc.get("crop_size"), "height", "shortest_edge") if proc.get("do_center_crop") else None
    if crop:
        out["image_size"] = crop
        # rounded down, so the processor's floor(crop / crop_pct) is the resize again (32 / 36 rounded to
        # 0.888889 would resize to 35)
        out["crop_pct"] = math.floor(crop / resize * 1e6) / 1e6 if resize else 1.0
    elif resize:
        out["image_size"], out["crop_pct"] = resize, 1.0
    resample = proc.get("resample")
    if isinstance(resample, int) and resample in _PIL_RESAMPLE:
        out["interpolation"] = _PIL_RESAMPLE[resample]
    out["image_mean"] = list(proc.get("image_mean") or out["image_mean"])
    out["image_std"] = list(proc.get("image_std") or out["image_std"])
    return out


def patchify(pixel_values: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, C, H, W) → SigLIP2's NaFlex input: patches (B, N, p·p·C), attention mask (B, N), spatial shapes (B, 2)."""
    b, c, h, w = pixel_values.shape
    gh, gw = h // patch_size, w // patch_size
    patches = pixel_values[:, :, : gh * patch_size, : gw * patch_size].reshape(b, c, gh, patch_size, gw, patch_size)
    patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch_size * patch_size * c)
    mask = torch.ones((b, gh * gw), dtype=torch.int32, device=pixel_values.device)
    shapes = torch.tensor([[gh, gw]] * b, dtype=torch.long, device=pixel_values.device)
    return patches, mask, shapes


class TransformersBackbone(nn.Module):
    """A transformers vision tower as a backbone, pooled as the tower defines it (see the module docstring).

    Args:
        hf_config: the tower's config dict (:func:`vision_config_dict`), stored in the geohf config.
        projection: CLIP only: return ``visual_projection`` of the pooled CLS (CLIP's image embedding).
        pooling: ``cls``; DINOv2: ``cls+mean`` (CLS and mean patch token, concatenated); CLIP: ``cls_prenorm``
            (the CLS token of ``last_hidden_state``, before ``post_layernorm``).
        normalize: CLIP with ``projection`` only: the image embedding as a unit vector.
    """

    def __init__(self, hf_config: dict, projection: bool = False, pooling: str = "cls", normalize: bool = False):
        super().__init__()
        import transformers
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.for_model(**hf_config)
        self.family = family_of(config.model_type)
        self.projection, self.pooling, self.normalize = bool(projection), pooling, bool(normalize)
        if projection and self.family != "clip":
            raise UserError(f"backbone option projection applies to CLIP towers only, not {type(config).__name__}")
        if normalize and not projection:
            raise UserError("backbone option normalize applies to a CLIP tower with projection: true")
        if pooling not in POOLINGS or (pooling != "cls" and self.family != _POOLING_FAMILY[pooling]):
            raise UserError(
                f"backbone option pooling={pooling!r}: DINOv2 towers take cls or cls+mean, CLIP towers cls or "
                "cls_prenorm (without projection), others cls"
            )
        if pooling == "cls_prenorm" and projection:
            raise UserError("backbone option pooling=cls_prenorm reads the tower's hidden state: not with projection")
        if self.family in _CLASSES:
            cls_name = _CLASSES[self.family][1 if projection else 0]
            self.model = getattr(transformers, cls_name)(config)
        else:
            try:
                self.model = AutoModel.from_config(config, add_pooling_layer=False)
            except TypeError:  # models without a pooling-layer switch
                self.model = AutoModel.from_config(config)
        width = getattr(config, "hidden_size", None) or config.hidden_sizes[-1]
        if projection:
            width = config.projection_dim
        self.num_features = int(width * (2 if pooling == "cls+mean" else 1))
        self.num_prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        import inspect

        # ViT, CLIP, SigLIP: position embeddings interpolated to another input grid (non-square full frames);
        # DINOv2 always interpolates, SigLIP2 takes any grid of patches
        self._interpolates = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters
        native = getattr(config, "image_size", None)
        self._native_hw = tuple(native) if isinstance(native, (list, tuple)) else (native, native)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.family == "siglip2":
            patches, mask, shapes = patchify(pixel_values, self.model.config.patch_size)
            return self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes).pooler_output
        extra = {}
        if self._interpolates and tuple(pixel_values.shape[-2:]) != self._native_hw:
            extra["interpolate_pos_encoding"] = True
        out = self.model(pixel_values=pixel_values, **extra)
        if self.projection:
            return nn.functional.normalize(out.image_embeds, dim=-1) if self.normalize else out.image_embeds
        if self.pooling == "cls_prenorm":
            return out.last_hidden_state[:, 0]
        if self.pooling == "cls+mean":
            hidden = out.last_hidden_state
            return torch.cat([hidden[:, 0], hidden[:, self.num_prefix_tokens :].mean(1)], dim=-1)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        return hidden[:, 0] if hidden.ndim == 3 else hidden.mean((2, 3))

    def blocks(self) -> nn.ModuleList:
        """The tower's transformer blocks (or stages), in order."""
        encoder = getattr(getattr(self.model, "vision_model", self.model), "encoder", None)
        for attr in ("layers", "layer", "stages"):
            found = getattr(encoder, attr, None)
            if isinstance(found, nn.ModuleList):
                return found
        raise UserError(f"cannot find the blocks of the {type(self.model).__name__} tower to unfreeze")


def _keys(info: dict) -> set[str]:
    """The keys a loading report says were not filled from the checkpoint (missing or of another shape)."""
    mismatched = {str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or []}
    return set(info.get("missing_keys") or []) | mismatched


def load_tower_weights(backbone: TransformersBackbone, name: str | os.PathLike) -> str:
    """Load a checkpoint's weights into the tower with transformers' own loader (key renames included): a full
    CLIP/SigLIP checkpoint's vision part (and its ``visual_projection`` when the tower has one), a vision-only
    one, or a task model's backbone. Returns a description of the source."""
    from transformers.utils import logging as hf_logging

    cls = type(backbone.model)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the report lists a full checkpoint's text tower as unexpected keys
    try:
        loaded, info = cls.from_pretrained(str(name), config=backbone.model.config, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    # the loaded model may carry layers the tower leaves out (a ViT's pooler): the tower's own keys must all come
    source = loaded.state_dict()
    target = backbone.model.state_dict()
    unfilled = _keys(info)
    missing = [key for key in target if key not in source or key in unfilled]
    if missing:
        raise ValueError(f"weights of {name} do not cover the {cls.__name__} tower: missing {missing[:5]}")
    backbone.model.load_state_dict({key: source[key] for key in target})
    return f"{name} (transformers, {cls.__name__})"
