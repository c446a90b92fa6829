"""Dataset and model cards from the Jinja templates in ``dataset_card/`` and ``model_card/``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np


def template_path(kind: str) -> str:
    """Path of the ``dataset_card`` or ``model_card`` template: the source checkout's own when this module
    runs from one (so a worktree never renders another checkout's template), else the installed copy."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / kind / "template.md").is_file():
        return str(checkout / kind / "template.md")
    return str(resources.files(f"geohf.hub.{kind}").joinpath("template.md"))


@dataclass(frozen=True)
class DatasetCardFields:
    """What a dataset card says besides the counts a build measures: its name and prose, provenance, how it was
    built. A build or import fills them from its source; ``to fill`` marks what only the publisher can say."""

    pretty_name: str
    description: str = ""
    license: str = "other"
    license_text: str = "to fill"
    source: str = "to fill: where the images come from"
    collection: str = "to fill"
    personal_data: str = "to fill"
    limitations: str = "to fill"
    tags: tuple[str, ...] = ()
    command: str = ""  # the command line that built the folder
    images_note: str = ""  # how the images are stored (re-encoded, shrunk, tiles...)
    repo_id: str = "<org>/<name>"  # shown in the card's loading example
    split_note: str = ""
    boundaries: str = ""  # the boundary set the labels come from
    max_distance_km: float = 25  # the labeller's reach for coastal points
    column_meanings: Mapping[str, str] = field(default_factory=dict)  # a source's own columns
    skipped_file: str = ""  # skipped.csv when the build skipped or fixed inputs
    shard: str = ""  # "K/N" for one part of a build run in parts

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(self.tags))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DatasetCardFields:
        """From :meth:`to_dict`'s JSON (a saved plan's ``card``); an unknown field is a ``TypeError``."""
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (what :meth:`from_dict` reads back)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "tags": list(self.tags), "column_meanings": dict(self.column_meanings)}


def render_dataset_card(card_data: dict[str, Any], **values: Any) -> str:
    """README.md text of a dataset folder: YAML metadata (``configs``, ``dataset_info``...) + body."""
    from huggingface_hub import DatasetCard, DatasetCardData  # here: the build's block writers import this module

    data = DatasetCardData(**card_data)
    return str(DatasetCard.from_template(data, template_path=template_path("dataset_card"), **values))


CARD_TRAINING_ARGS = (
    "learning_rate",
    "weight_decay",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "num_train_epochs",
    "lr_scheduler_type",
    "warmup_steps",
    "bf16",
    "fp16",
    "seed",
)
CARD_METRICS = (
    ("eval_median_km", "median error (km)"),
    ("eval_mean_km", "mean error (km)"),
    ("eval_geoscore", "GeoScore"),
    ("eval_within_1km", "within 1 km (%)"),
    ("eval_within_25km", "within 25 km (%)"),
    ("eval_within_200km", "within 200 km (%)"),
    ("eval_within_750km", "within 750 km (%)"),
    ("eval_within_2500km", "within 2500 km (%)"),
    ("eval_top1_accuracy", "top-1 accuracy, primary head (%)"),
    ("eval_top5_accuracy", "top-5 accuracy (%)"),
    ("eval_country_accuracy", "country accuracy (%)"),
    ("eval_country_balanced_accuracy", "country balanced accuracy (%)"),
    ("eval_region_accuracy", "region accuracy (%)"),
    ("eval_region_balanced_accuracy", "region balanced accuracy (%)"),
)


def model_card_data(config, metrics: dict, dataset: str, repo_id: str | None):
    """``ModelCardData`` with a model-index (``EvalResult`` per metric) so the Hub shows the numbers."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(
            task_type="image-geolocation",
            task_name="Image geolocation",
            dataset_type=dataset,
            dataset_name=dataset,
            metric_type=key.removeprefix("eval_"),
            metric_name=label,
            metric_value=round(float(metrics[key]), 3),
        )
        for key, label in CARD_METRICS
        if key in metrics
    ]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["geolocation", "geohf", "image-geolocation", config.backbone.replace("/", "-")],
        datasets=[dataset] if "/" in dataset and not Path(dataset).exists() else None,
        model_name=repo_id or "geohf-model",
        eval_results=results or None,
        license="apache-2.0",
    )


def write_model_card(
    folder,
    config,
    metrics: dict,
    training_args=None,
    dataset: str = "",
    repo_id: str | None = None,
    error_curve: str | None = None,
    metrics_note: str | None = None,
) -> Path:
    """Render ``model_card/template.md`` into ``folder/README.md``, from ``config`` as it is now (call it again
    when the config changes, e.g. after :func:`~geohf.evaluation.tune_coordinate_rule`).

    ``metrics_note`` says where the metrics come from (split, when, with which coordinate rule).
    """
    from huggingface_hub import ModelCard

    folder = Path(folder)
    repo_id = repo_id or getattr(training_args, "hub_model_id", None)
    n_params = _parameter_count(folder) if (folder / "model.safetensors").is_file() else 0
    heads = [
        {"name": h["name"], "type": h["type"], "n_classes": len(h.get("labels") or []), "tau_km": h.get("tau_km")}
        for h in config.heads
    ]
    rule = coordinate_rule_text(config)
    card = ModelCard.from_template(
        model_card_data(config, metrics, dataset, repo_id),
        template_path=template_path("model_card"),
        model_name=repo_id or folder.name,
        repo_id=repo_id or str(folder),
        backbone=config.backbone,
        n_params=f"{n_params / 1e6:.1f}M",
        finetuning=finetuning_text(config),
        pretrained_source=config.pretrained_source,
        heads=heads,
        primary_head=config.primary_head,
        coordinate_rule=rule,
        image_size=config.image_size if isinstance(config.image_size, int) else "{}x{}".format(*config.input_hw),
        resize_mode=getattr(config, "resize_mode", "crop"),
        interpolation=config.interpolation,
        crop_pct=config.crop_pct,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        dataset=(Path(dataset).name if Path(dataset).exists() else dataset) or "not recorded",
        metrics_table=[(label, f"{metrics[key]:,.2f}") for key, label in CARD_METRICS if key in metrics],
        error_curve=error_curve,
        metrics_note=metrics_note or "",
        training=[(k, getattr(training_args, k)) for k in CARD_TRAINING_ARGS if training_args is not None],
    )
    path = folder / "README.md"
    card.save(path)
    return path


def finetuning_text(config) -> str:
    """Which part of the backbone trained and how many parameters that was, in words, from ``config.finetuning``."""
    info = getattr(config, "finetuning", None) or {}
    mode = info.get("mode")
    if mode is None:
        return ""
    if mode == "full":
        words = "full (every backbone parameter)"
    elif mode == "frozen":
        words = "linear probe (backbone frozen, heads only)"
    elif mode == "last_n_blocks":
        words = (
            f"the backbone's last {info.get('unfrozen_blocks')} of {info.get('depth')} blocks "
            "(and the norm / projection after them), the rest frozen"
        )
    elif mode == "lora":
        words = (
            f"LoRA r = {info.get('lora_r')}, α = {info.get('lora_alpha')} on the backbone's "
            f"{info.get('adapted_layers')} attention projections, merged into the weights at save"
        )
    else:
        words = str(mode)
    if info.get("trainable_params") is not None and info.get("total_params"):
        trainable, total = info["trainable_params"], info["total_params"]
        words += f"; {trainable:,} of {total:,} parameters trained ({100 * trainable / total:.2f} %)"
    if info.get("augmentations"):
        words += "; training augmentations: " + ", ".join(f"{k} {v:g}" for k, v in info["augmentations"].items())
    return words


def coordinate_rule_text(config) -> str:
    """How the model turns cell probabilities into coordinates, in words, from ``config``."""
    answer = {
        "point": "; country and region: where those coordinates lie (moved to the nearest land when at sea)",
        "hierarchical": "; answered country first (the most probable by summed cell probability), then its "
        "region, the point placed inside that region",
        "cell": "; country and region: the most probable cell's majority ones",
    }.get(getattr(config, "answer", "point"), "")
    if config.coordinate_method == "argmax":
        return "the centroid of the most probable cell" + answer
    radius = config.coordinate_radius_km
    return (
        f"probability-weighted mean of the top {config.coordinate_top_k} cells"
        + (f" within {radius:,.0f} km of the most probable one" if radius else "")
        + answer
    )


def _parameter_count(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", framework="np") as f:
        return sum(int(np.prod(f.get_slice(key).get_shape())) for key in f.keys())  # noqa: SIM118 (not a dict)
