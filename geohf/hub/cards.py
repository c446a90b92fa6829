"""Dataset and model cards from the Jinja templates in ``dataset_card/`` and ``model_card/``."""

from __future__ import annotations

from importlib import resources
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData


def template_path(kind: str) -> str:
    """Path of the ``dataset_card`` or ``model_card`` template."""
    return str(resources.files(f"geohf.hub.{kind}").joinpath("template.md"))


def render_dataset_card(card_data: dict[str, Any], **fields: Any) -> str:
    """README.md text of a dataset folder: YAML metadata (``configs``, ``dataset_info``...) + body."""
    data = DatasetCardData(**card_data)
    return str(DatasetCard.from_template(data, template_path=template_path("dataset_card"), **fields))
