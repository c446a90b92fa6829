"""geohf models: a timm backbone, pooled embeddings, and geolocation heads."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .backbones import backbone_width, create_backbone, depthwise_convs_in_fp32, load_backbone_weights
from .configuration_geohf import GeoConfig
from .finetuning import (
    add_lora,
    enable_gradient_checkpointing,
    has_lora,
    merge_lora_state_dict,
    parameter_counts,
    unfreeze_last_n_blocks,
)
from .fusion import AttentionPool, check_view_mask, masked_mean
from .heads import GeoHead, build_head
from .remote_code import MODEL_AUTO_MAP, write_remote_code


@dataclass
class GeoEmbeddingOutput(ModelOutput):
    """Pooled image embeddings, (batch, dim), or (batch, views, dim) for multi-view input."""

    embeddings: torch.Tensor | None = None


@dataclass
class GeoModelOutput(ModelOutput):
    """Output of :class:`GeoModelForImageGeolocation`.

    Attributes:
        loss: weighted sum of the head losses (when labels are given).
        logits: the primary head's class logits (what image-classification pipelines read).
        coordinates: (batch, 2) predicted latitude, longitude in degrees.
        logits_per_head: every head's whole output by head name (multi-head models; a hybrid head's
            holds its per-cell offsets after the class logits).
        embeddings: pooled (view-fused) embeddings, when asked for.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    coordinates: torch.Tensor | None = None
    logits_per_head: dict[str, torch.Tensor] | None = None
    embeddings: torch.Tensor | None = None


class GeoPreTrainedModel(PreTrainedModel):
    config: GeoConfig
    config_class = GeoConfig
    base_model_prefix = "geo"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    accepts_loss_kwargs = False
    _no_split_modules = ["GeoModel"]
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """Initialise heads only: backbones keep timm's own init (or their pretrained weights)."""
        # transformers calls this per module and skips custom modules without direct parameters,
        # so the layers to initialise carry their scheme themselves
        scheme = getattr(module, "geohf_init", None)
        if scheme == "head":
            init.trunc_normal_(module.weight, std=0.01)
            init.zeros_(module.bias)
        elif scheme == "zeros":  # attention pooling starts as the plain mean of the views
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, GeoHead):
            module.init_buffers()
        elif hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As transformers', but a checkpoint that does not fit the config names the tensors and the fix."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except RuntimeError as err:
            if "ignore_mismatched_sizes" not in str(err):
                raise
            raise RuntimeError(_mismatch_message(cls, pretrained_model_name_or_path, kwargs)) from err

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs):
        """``--gradient_checkpointing`` / ``--activation_checkpointing``: the backbone recomputes its activations
        in the backward, through transformers' or timm's own mechanism (the heads are small)."""
        enable_gradient_checkpointing(self.backbone, activation_checkpointing_kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights and config, plus the model code and ``auto_map`` for ``trust_remote_code`` users,
        and the cell partitions the model carries (``cells/<name>.parquet``, for maps and true cells).

        LoRA adapters are merged into the saved weights (the model in memory keeps them): the folder is a
        plain model that loads without peft. Trainer's checkpoints keep them unmerged (``_lora_unmerged``),
        so that ``--resume_from_checkpoint`` and ``load_best_model_at_end`` load them back into the adapters."""
        self.config.auto_map = dict(MODEL_AUTO_MAP)
        for head in getattr(self, "heads", {}).values():
            head.prepare_save()  # a GeoCLIP head's gallery embeddings, for the weights being saved
        if has_lora(self) and not getattr(self, "_lora_unmerged", False):
            kwargs["state_dict"] = merge_lora_state_dict(self, kwargs.get("state_dict") or self.state_dict())
        if kwargs.get("push_to_hub") or not kwargs.get("is_main_process", True):
            super().save_pretrained(save_directory, *args, **kwargs)
            return
        # written into a hidden folder inside save_directory and renamed in once whole: a full disk or a
        # kill part-way leaves no truncated model.safetensors beside a config that looks complete
        final = Path(save_directory)
        final.mkdir(parents=True, exist_ok=True)
        stage = final / f".save-partial-{uuid.uuid4().hex[:8]}"
        try:
            super().save_pretrained(stage, *args, **kwargs)
            write_remote_code(stage)
            for name, partition in getattr(self, "cell_partitions", {}).items():
                (stage / "cells").mkdir(parents=True, exist_ok=True)
                partition.save(stage / "cells" / f"{name}.parquet")
            if (stage / "cells").is_dir():
                (final / "cells").mkdir(exist_ok=True)
                for path in (stage / "cells").iterdir():
                    os.replace(path, final / "cells" / path.name)
            for path in sorted(stage.iterdir(), key=lambda p: p.name == "config.json"):  # config last
                if path.is_file():
                    os.replace(path, final / path.name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _mismatch_message(cls, source, kwargs) -> str:
    """Which tensors of the checkpoint at ``source`` differ in shape from the model its config builds."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    config = kwargs.get("config") or cls.config_class.from_pretrained(source, revision=kwargs.get("revision"))
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
    lines = []
    try:
        with safe_open(cached_file(source, "model.safetensors", revision=kwargs.get("revision")), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = tuple(f.get_slice(key).get_shape())
                if key in expected and expected[key] != shape:
                    lines.append(f"  {key}: checkpoint {list(shape)}, config {list(expected[key])}")
    except OSError:
        lines.append("  (the checkpoint file could not be read to list them)")
    return (
        f"the checkpoint at {source} does not fit this config: tensor shapes differ\n" + "\n".join(lines) + "\n"
        "The heads' labels and cells must be those the checkpoint was trained with (load its own config.json), "
        "or pass ignore_mismatched_sizes=True to re-initialise these layers and fine-tune them."
    )


class GeoModel(GeoPreTrainedModel):
    """The backbone alone: images → pooled embeddings."""

    def __init__(self, config: GeoConfig):
        super().__init__(config)
        self.backbone = create_backbone(config.backbone, **config.backbone_kwargs)
        if config.depthwise_fp32:
            depthwise_convs_in_fp32(self.backbone)
        if config.embed_dim is None:
            config.embed_dim = backbone_width(self.backbone)
        self.post_init()

    def load_pretrained_backbone(self, pretrained: str) -> str:
        """Load backbone weights (``"offline"``, ``"hub"`` or a file); records the source in the config."""
        source = load_backbone_weights(self.backbone, self.config.backbone, pretrained)
        self.config.pretrained_source = source
        return source

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> GeoEmbeddingOutput:
        views = pixel_values.shape[1] if pixel_values.ndim == 5 else None
        if views is not None:
            pixel_values = pixel_values.flatten(0, 1)
        embeddings = self.backbone(pixel_values)
        if views is not None:
            embeddings = embeddings.unflatten(0, (-1, views))
        return GeoEmbeddingOutput(embeddings=embeddings)


class GeoModelForImageGeolocation(GeoPreTrainedModel):
    """Backbone + geolocation heads (cells, classes, coordinates), multi-view aware.

    ``pixel_values`` is (batch, 3, H, W) or (batch, views, 3, H, W); views of one place
    are fused by averaging each head's logits (``fusion="mean"``, an ensemble over views) or
    by attention pooling over the view embeddings (``fusion="attention"``). A model trained on
    places (``config.views`` > 1, see :class:`~geohf.data.transforms.ViewGroups`) learns either.
    """

    def __init__(self, config: GeoConfig):
        super().__init__(config)
        if not config.heads:
            raise ValueError("GeoConfig.heads is empty: declare at least one head")
        self.geo = GeoModel(config)
        self.heads = nn.ModuleDict(
            {spec.name: build_head(spec, config.embed_dim, config.dropout) for spec in config.head_specs}
        )
        self.fusion = AttentionPool(config.embed_dim) if config.fusion == "attention" else None
        self.cell_partitions: dict = {}  # name → CellPartition (polygons), saved to cells/<name>.parquet
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """As transformers', plus the cell partitions saved beside the weights (``cells/<name>.parquet`` of a
        folder or Hub repo) in :attr:`cell_partitions`; a partition not published with the model is left out
        (maps then draw the cells' centroids)."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        hub = {k: kwargs[k] for k in CELL_FILE_KWARGS if k in kwargs}
        for spec in model.config.head_specs:
            if spec.is_geocell and spec.partition not in model.cell_partitions:
                partition = load_cell_partition(pretrained_model_name_or_path, spec.partition, **hub)
                if partition is not None:
                    model.cell_partitions[spec.partition] = partition
        return model

    @property
    def backbone(self) -> nn.Module:
        return self.geo.backbone

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Linear probe: no gradients into the backbone, its BatchNorm statistics fixed."""
        self._backbone_frozen = frozen
        for p in self.geo.parameters():
            p.requires_grad_(not frozen)
        self.config.finetuning = {"mode": "frozen"} if frozen else {"mode": "full"}
        self.train(self.training)

    def unfreeze_last_n_blocks(self, n: int) -> None:
        """Train only the backbone's last ``n`` blocks (and the norm / projection after them), as PIGEON and
        OSV-5M fine-tune CLIP; the frozen part's BatchNorm statistics stay fixed."""
        self._backbone_frozen = False
        depth = unfreeze_last_n_blocks(self.backbone, n, self.config.backbone)
        self.config.finetuning = {"mode": "last_n_blocks", "unfrozen_blocks": n, "depth": depth}
        self.train(self.training)

    def add_lora(self, r: int, alpha: float | None = None, dropout: float = 0.0) -> None:
        """LoRA adapters of rank ``r`` on the backbone's attention projections, the rest of it frozen
        (see :mod:`geohf.modeling.finetuning`); ``save_pretrained`` merges them into the weights."""
        self._backbone_frozen = False
        alpha = float(2 * r if alpha is None else alpha)
        layers = add_lora(self.backbone, r, alpha, dropout, self.config.backbone)
        self.config.finetuning = {
            "mode": "lora",
            "lora_r": r,
            "lora_alpha": alpha,
            "lora_dropout": dropout,
            "adapted_layers": layers,
        }
        self.train(self.training)

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters of the whole model (heads included)."""
        return parameter_counts(self)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "_backbone_frozen", False):
            self.geo.eval()
        elif mode:  # partial fine-tuning: normalisation layers whose parameters are all frozen keep their statistics
            for module in self.geo.modules():
                params = list(module.parameters(recurse=False))
                if (
                    isinstance(module, nn.modules.batchnorm._NormBase)
                    and params
                    and not any(p.requires_grad for p in params)
                ):
                    module.eval()
        return self

    def set_class_weights(self, head: str, weights: list[float]) -> None:
        """Per-class loss weights for ``head`` (inverse frequency, say), kept in the config."""
        for spec in self.config.heads:
            if spec["name"] == head:
                spec["class_weights"] = list(weights)
        module = self.heads[head]
        module._class_weights = list(weights)
        module.init_buffers()

    def coordinate_head(self) -> GeoHead | None:
        """The head that provides ``outputs.coordinates``: the primary head if it can, else the first that can."""
        primary = self.heads[self.config.primary_head] if self.config.primary_head else None
        if primary is not None and primary.has_coordinates:
            return primary
        return next((h for h in self.heads.values() if h.has_coordinates), None)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | dict[str, torch.Tensor] | None = None,
        coordinates: torch.Tensor | None = None,
        output_embeddings: bool = False,
        augmented_views: bool = False,
        view_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> GeoModelOutput:
        r"""
        labels: the primary head's targets (batch,), or a dict of targets by head name; other
            heads' targets may also come as ``labels_<head name>`` keyword arguments.
        coordinates: (batch, 2) true latitude, longitude in degrees (haversine, regression and GeoCLIP losses).
        output_embeddings: also return the pooled embeddings.
        augmented_views: (batch, views, 3, H, W) are test-time augmented views of one image each (flips,
            crops): every head's views fuse by the mean of their class log-probabilities, never by ``fusion``.
        view_mask: (batch, views) bool for (batch, views, 3, H, W) input: False marks a padded view (a
            place with fewer views than the batch's), which neither the mean nor the attention counts.
        """
        check_view_mask(pixel_values, view_mask)
        embeddings = self.geo(pixel_values).embeddings
        if embeddings.ndim == 3 and self.fusion is not None and not augmented_views:
            embeddings = self.fusion(embeddings, view_mask)  # attention over the real views, then the heads
        multiview = embeddings.ndim == 3
        head_inputs = embeddings  # per view: a contrastive (GeoCLIP) loss averages its views' logits
        logits_per_head = {}
        for name, head in self.heads.items():
            out = head(embeddings)
            if multiview:  # mean of per-view logits (places), or of log-probabilities (augmented views)
                out = head.fuse_augmented(out) if augmented_views else head.fuse(out, view_mask)
            logits_per_head[name] = out
        if multiview:
            embeddings = masked_mean(embeddings, view_mask)

        loss = None
        targets = dict(labels) if isinstance(labels, dict) else {}
        if labels is not None and not isinstance(labels, dict):
            targets[self.config.primary_head] = labels
        targets.update({k[len("labels_") :]: v for k, v in kwargs.items() if k.startswith("labels_")})
        if targets or coordinates is not None:
            losses = []
            for name, head in self.heads.items():
                head_loss = head.head_loss(logits_per_head[name], head_inputs, targets.get(name), coordinates)
                if head_loss is not None:
                    losses.append(head.weight * head_loss)
            loss = torch.stack(losses).sum() if losses else None

        coord_head = self.coordinate_head()
        coords = None
        if coord_head is not None:
            coords = coord_head.coordinates(
                logits_per_head[coord_head.name],
                self.config.coordinate_method,
                self.config.coordinate_top_k,
                self.config.coordinate_radius_km,
            )
        primary = self.config.primary_head
        return GeoModelOutput(
            loss=loss,
            logits=self.heads[primary].class_logits(logits_per_head[primary]) if primary else None,
            coordinates=coords,
            logits_per_head=logits_per_head if len(self.heads) > 1 else None,
            embeddings=embeddings if output_embeddings else None,
        )


CELL_FILE_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
"""``from_pretrained`` arguments that also locate the model's ``cells/`` files."""


def load_cell_partition(source, name: str, **kwargs):
    """The cell partition ``cells/<name>.parquet`` of a model folder or Hub repo, or ``None`` without one."""
    from transformers.utils import cached_file

    try:  # absolute: the model code saved beside the weights runs without geohf, and then without polygons
        from geohf.geo.cells import CellPartition
    except ImportError:
        return None
    path = cached_file(
        source,
        f"cells/{name}.parquet",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **kwargs,
    )
    return None if path is None else CellPartition.load(path)


def build_model(config: GeoConfig, pretrained: str | None = "offline") -> GeoModelForImageGeolocation:
    """A fresh model whose backbone starts from ``pretrained`` weights (``None``: random init)."""
    model = GeoModelForImageGeolocation(config)
    if pretrained:
        model.geo.load_pretrained_backbone(pretrained)
    return model


# Registered when geohf's own module is imported (a model folder's copy: through config.json's auto_map), with the
# config and the image processor, so ``AutoModel*.from_pretrained`` / ``AutoImageProcessor`` load a geohf folder.
if __name__.startswith("geohf."):
    from transformers import AutoModel, AutoModelForImageClassification

    from . import image_processing_geohf  # noqa: F401  (registers the image processor)

    AutoModel.register(GeoConfig, GeoModel, exist_ok=True)
    AutoModelForImageClassification.register(GeoConfig, GeoModelForImageGeolocation, exist_ok=True)
